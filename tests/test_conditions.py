"""Control-image preprocessors on drawn images with known structure."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio import conditions
from studio.errors import InvalidRequest


def filled_square(size=64, box=(16, 16, 47, 47)):
    image = Image.new("RGB", (size, size), (30, 30, 30))
    ImageDraw.Draw(image).rectangle(box, fill=(230, 230, 230))
    return image


def test_canny_finds_the_border_and_nothing_else():
    edges = np.asarray(conditions.canny(filled_square()).convert("L")) > 0
    near_border = np.zeros_like(edges)
    near_border[14:50, 14:50] = True
    near_border[19:45, 19:45] = False
    assert edges.sum() > 4 * 25  # the outline is there...
    assert not edges[~near_border].any()  # ...and only there: nothing inside, nothing far outside
    for side in (edges[14:50, 14:19], edges[14:50, 45:50], edges[14:19, 14:50], edges[45:50, 14:50]):
        assert side.any()  # every side of the square
    with pytest.raises(InvalidRequest, match="thresholds"):
        conditions.canny(filled_square(), 200, 100)


def test_soft_edge_outlines_without_the_inside():
    soft = np.asarray(conditions.soft_edge(filled_square()).convert("L")).astype(float)
    assert soft[16, 16:48].mean() > 40  # along the top edge
    assert soft[28:36, 28:36].max() == 0 and soft[0:4, 0:4].max() == 0


@pytest.mark.parametrize("ink, paper", [((0, 0, 0), (255, 255, 255)), ((255, 255, 255), (0, 0, 0))])
def test_scribble_keeps_strokes_whichever_way_they_are_drawn(ink, paper):
    canvas = Image.new("RGB", (64, 64), paper)
    ImageDraw.Draw(canvas).line([(8, 8), (56, 56)], fill=ink, width=3)
    stroke = np.asarray(conditions.scribble(canvas).convert("L")) == 255
    drawn = np.all(np.asarray(canvas) == ink, axis=-1)
    assert np.array_equal(stroke, drawn)


def test_scribble_from_a_transparent_canvas():
    canvas = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).line([(4, 16), (28, 16)], fill=(20, 20, 20, 255), width=2)
    stroke = np.asarray(conditions.scribble(canvas).convert("L")) == 255
    assert stroke[16, 4:28].all() and stroke.sum() == np.asarray(canvas)[..., 3].astype(bool).sum()


def test_depth_offline_is_a_clear_message():
    with pytest.raises(InvalidRequest, match="hf download depth-anything"):
        conditions.depth(filled_square(), offline=True)
