"""Drag editing: the geometry exactly, the optimisation's guarantees, what both modes do on the
shapes world, and every refusal."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from support import joint, pipeline_of, random_per_family

from studio.errors import Cancelled, InvalidRequest
from studio.methods.drag import (
    Drag,
    DragSettings,
    drag_edit,
    fill_from_surroundings,
    find_regions,
    non_rigid_layers,
    remade_source,
    warp,
)
from studio.toyworld import drag_eval
from studio.toyworld.measure import centroid

CAPTION = "a large red square on the left, gray background"


def settings_for(model="shapes-flux", **changes):
    base = DragSettings(
        model=model, prompt=CAPTION, drags=(), steps=12, skip_steps=3, guidance=3.0, width=64, height=64, seed=0
    )
    return replace(base, **changes)


def square_region(x0=4, y0=20, side=24):
    mask = np.zeros((64, 64), bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


# --- geometry ---------------------------------------------------------------------------------


def test_warp_is_exact_for_identity_whole_cell_moves_and_quarter_turns():
    grid = torch.randn(1, 3, 8, 8)
    assert torch.equal(warp(grid, Drag("move", ((10, 10), (10, 10))).matrix(1.0), 64, 64), grid)
    moved = warp(grid, Drag("move", ((10, 10), (26, 2))).matrix(1.0), 64, 64)  # 2 cells right, 1 up
    expected = torch.zeros_like(grid)
    expected[..., :7, 2:] = grid[..., 1:, :6]
    assert torch.allclose(moved, expected, atol=1e-6)
    turned = warp(grid, Drag("rotate", ((32, 32),), angle=90).matrix(1.0), 64, 64)
    assert torch.allclose(turned, torch.rot90(grid, k=-1, dims=(-2, -1)), atol=1e-5)  # clockwise on screen
    halfway = warp(grid, Drag("move", ((0, 0), (32, 0))).matrix(0.5), 64, 64)
    assert torch.allclose(halfway[..., 2:], grid[..., :6], atol=1e-6)


def test_scaling_about_an_anchor_grows_the_region_around_it():
    mask = torch.from_numpy(square_region(24, 24, 16))
    grown = warp(mask[None, None].float(), Drag("scale", ((32, 32),), scale=2.0).matrix(1.0), 64, 64)[0, 0] >= 0.5
    assert grown.sum() == 4 * mask.sum()
    assert grown[16:48, 16:48].all()


def test_regions_are_the_painted_parts_holding_each_handle():
    painted = square_region(4, 4, 16) | square_region(40, 40, 16)
    drags = [Drag("move", ((10, 10), (30, 10))), Drag("rotate", ((48, 48),), angle=45)]
    regions = find_regions(painted, drags, (16, 16))
    assert [int(region.sum()) for region in regions.sources] == [16, 16]
    assert regions.sources[0][1:5, 1:5].all() and regions.sources[1][10:14, 10:14].all()
    assert regions.targets(1.0)[0][1:5, 6:10].all()
    vacated = regions.vacated()
    assert vacated[1:5, 1:5].all()  # moved away whole
    assert vacated[10, 10] and not vacated[11:13, 11:13].any()  # a turned square leaves only its corners


def test_the_vacated_area_is_filled_from_its_nearest_surroundings():
    latent = torch.arange(16.0).view(1, 1, 4, 4).repeat(1, 2, 1, 1)
    hole = torch.zeros(4, 4, dtype=torch.bool)
    hole[1:3, 1:3] = True
    known = ~hole
    known[:, 0] = False  # the left column is neither hole nor known
    filled = fill_from_surroundings(latent, hole, known)
    assert torch.equal(filled[..., ~hole], latent[..., ~hole])
    assert filled[0, 0, 1, 2] in (latent[0, 0, 0, 2], latent[0, 0, 1, 3])
    for row, column in ((1, 1), (1, 2), (2, 1), (2, 2)):
        value = filled[0, 0, row, column]
        source = torch.nonzero(latent[0, 0] == value)[0]
        assert known[source[0], source[1]]
        assert abs(int(source[0]) - row) + abs(int(source[1]) - column) <= 2


class LayerNames:
    """A transformer as joint_layers sees it: only its attention processors' names."""

    def __init__(self, double: int, single: int):
        names = [f"transformer_blocks.{i}.attn.processor" for i in range(double)]
        names += [f"single_transformer_blocks.{i}.attn.processor" for i in range(single)]
        self.attn_processors = dict.fromkeys(names)


def test_freeflux_layers_are_its_own_on_flux_dev_and_scale_to_other_depths(registry):
    full = non_rigid_layers(LayerNames(19, 38))
    assert full == {f"transformer_blocks.{i}.attn" for i in (0, 7, 8, 9, 10, 18)} | {
        f"single_transformer_blocks.{i}.attn" for i in (6, 9, 18, 23, 26, 31, 37)
    }
    half = non_rigid_layers(LayerNames(10, 19))
    assert {"transformer_blocks.0.attn", "transformer_blocks.9.attn", "single_transformer_blocks.18.attn"} <= half
    assert len(half) < 10 + 19
    built_in = non_rigid_layers(pipeline_of(registry, "shapes-flux").transformer)
    assert "transformer_blocks.0.attn" in built_in and all(name.endswith(".attn") for name in built_in)


# --- the method on models ---------------------------------------------------------------------


def test_the_optimisation_loss_falls_on_the_built_in_model(registry):
    region, drag = square_region(), Drag("move", ((16, 32), (40, 32)))
    edit = drag_edit(registry, settings_for(mode="precise", drags=(drag,), transport=12, intensify=4), region)
    assert len(edit.losses) == 16
    assert edit.losses[-1] < 0.8 * edit.losses[0]


def test_every_iteration_keeps_the_latent_outside_the_edit_bit_identical(registry, monkeypatch):
    from studio.methods import drag as method

    seen = []
    original = method.denoise_beside_source

    def spy(pipe, model, trajectory, start, regions, settings, editable, step, token_order):
        seen.append((start, trajectory.latents[0], editable))
        return original(pipe, model, trajectory, start, regions, settings, editable, step, token_order)

    monkeypatch.setattr(method, "denoise_beside_source", spy)
    region, drag = square_region(), Drag("move", ((16, 32), (40, 32)))
    for iterations in (1, 3):
        settings = settings_for(mode="precise", drags=(drag,), transport=iterations, intensify=0, steps=6, skip_steps=2)
        drag_edit(registry, settings, region)
    for start, reference, editable in seen:
        assert torch.equal(start[..., ~editable], reference[..., ~editable])
        assert not torch.equal(start[..., editable], reference[..., editable])


@pytest.mark.parametrize("mode", ["fast", "precise"])
def test_a_dragged_shape_lands_at_its_target(registry, mode):
    settings = settings_for(mode=mode, steps=25, skip_steps=6)
    source = remade_source(registry, settings)
    region = drag_eval.painted_region(source, "red")
    start = centroid(drag_eval.object_mask(source, "red"))
    assert start is not None and start[0] < 0.4
    handle = (start[0] * 64, start[1] * 64)
    drag = Drag("move", (handle, (handle[0] + 23, handle[1])))
    edit = drag_edit(registry, replace(settings, drags=(drag,)), region)
    score = drag_eval.score(source, edit.result, "red", (23, 0))
    assert score is not None
    assert score.distance < 0.15  # was 0.36 away
    assert score.background_psnr >= 28
    if mode == "fast":
        assert score.success


@pytest.mark.parametrize("model_id", random_per_family(joint))
def test_both_modes_run_on_every_joint_family_and_restore_the_processors(registry, model_id):
    originals = dict(pipeline_of(registry, model_id).transformer.attn_processors)
    region, drag = square_region(), Drag("move", ((16, 32), (40, 32)))
    for mode in ("fast", "precise"):
        changes = dict(mode=mode, drags=(drag,), steps=4, skip_steps=1, transport=2, intensify=1)
        edit = drag_edit(registry, settings_for(model_id, **changes), region)
        assert edit.result.size == (64, 64)
    assert dict(pipeline_of(registry, model_id).transformer.attn_processors) == originals


def test_an_uploaded_image_is_inverted_and_dragged(registry):
    settings = settings_for(steps=10, skip_steps=2)
    source = remade_source(registry, settings)
    region = drag_eval.painted_region(source, "red")
    start = centroid(drag_eval.object_mask(source, "red"))
    handle = (start[0] * 64, start[1] * 64)
    drag = Drag("move", (handle, (handle[0] + 20, handle[1])))
    edit = drag_edit(registry, replace(settings, drags=(drag,)), region, image=source)
    moved = centroid(drag_eval.object_mask(edit.result, "red"))
    assert moved is not None and moved[0] > start[0] + 0.15


def test_cancel_during_the_optimisation_restores_the_processors(registry):
    originals = dict(pipeline_of(registry, "shapes-flux").transformer.attn_processors)
    cancel = threading.Event()
    reached = []

    def cancel_in_optimisation(done, total):
        reached.append(done)
        if done == 14:  # 12 source steps, then the optimisation
            cancel.set()

    drag = Drag("move", ((16, 32), (40, 32)))
    with pytest.raises(Cancelled):
        drag_edit(
            registry,
            settings_for(mode="precise", drags=(drag,), transport=20),
            square_region(),
            on_step=cancel_in_optimisation,
            cancel=cancel,
        )
    assert max(reached) == 14
    assert dict(pipeline_of(registry, "shapes-flux").transformer.attn_processors) == originals


@pytest.mark.parametrize(
    "drags, painted, message",
    [
        ([Drag("move", ((16, 32), (40, 32)))], np.zeros((64, 64), bool), "Paint the region"),
        ([Drag("move", ((16, 32), (80, 32)))], square_region(), "outside the 64x64 image"),
        ([Drag("move", ((50, 5), (40, 32)))], square_region(), "outside every painted region"),
        ([Drag("move", ((16, 32), (16, 32)))], square_region(), "does not move anything"),
        ([Drag("rotate", ((16, 32),), angle=360)], square_region(), "does not move anything"),
        ([Drag("move", ((16, 32), (40, 32)))] * 9, square_region(), "At most 8 regions"),
        ([Drag("move", ((10, 30), (40, 32))), Drag("move", ((20, 30), (40, 40)))], square_region(), "same region"),
        ([], square_region(), "Add a drag"),
    ],
)
def test_bad_drags_are_refused_in_one_sentence(registry, drags, painted, message):
    with pytest.raises(InvalidRequest, match=message):
        drag_edit(registry, settings_for(drags=tuple(drags)), painted)


def test_bad_requests_are_refused_before_anything_runs(registry):
    drag = ("move", ((16, 32), (40, 32)))
    with pytest.raises(InvalidRequest, match="FLUX or SD3"):
        drag_edit(registry, settings_for("tiny-pixart-sigma", drags=(drag,)), square_region())
    with pytest.raises(InvalidRequest, match="precise or fast"):
        drag_edit(registry, settings_for(mode="slow", drags=(drag,)), square_region())
    with pytest.raises(InvalidRequest, match="Skip fewer"):
        drag_edit(registry, settings_for(skip_steps=12, drags=(drag,)), square_region())
    for bad in (
        ["twist", [[1, 2]]],
        ["move", [[1, 2]]],
        ["scale", [[1, 2]], 0, 9],
        "move",
        ["move", [["a", 2], [3, 4]]],
    ):
        with pytest.raises(InvalidRequest):
            Drag.parse(bad)
    assert Drag.parse(["move", [[1, 2], [3, 4]]]) == Drag("move", ((1.0, 2.0), (3.0, 4.0)))
    assert Drag.parse({"kind": "rotate", "points": [[5, 6]], "angle": 30}).angle == 30.0


def test_the_tab_reads_regions_and_fixed_area_from_the_two_brushes_and_clicks_into_drags():
    from PIL import Image

    from tabs.drag import add_point, draw_drags, painted_masks

    layer = np.zeros((64, 64, 4), np.uint8)
    layer[20:40, 5:25] = (255, 0, 200, 255)  # the region brush
    layer[50:60, 40:60] = (0, 180, 255, 255)  # the fixed-area brush
    regions, fixed = painted_masks({"background": None, "layers": [Image.fromarray(layer)], "composite": None})
    assert regions.sum() == 400 and regions[30, 10] and not regions[55, 50]
    assert fixed.sum() == 200 and fixed[55, 50]
    assert painted_masks({"background": None, "layers": [], "composite": None}) == (None, None)

    drags, pending = add_point([], None, (15, 30), "move", 0, 1)
    assert drags == [] and pending == [15, 30]
    drags, pending = add_point(drags, pending, (40, 30), "move", 0, 1)
    assert drags == [["move", [[15, 30], [40, 30]], 0.0, 1.0]] and pending is None
    drags, pending = add_point(drags, None, (50, 50), "rotate", 45, 1)
    assert drags[-1] == ["rotate", [[50, 50]], 45.0, 1.0]

    picture = Image.new("RGB", (64, 64), (128, 128, 128))
    shown = draw_drags(picture, regions, [Drag.parse(d) for d in drags], None)
    assert shown.size == (512, 512)  # enlarged to click on
    pixels = np.asarray(shown)
    assert (pixels == (255, 0, 200)).all(-1).any()  # the region's outline
    assert (pixels == (255, 230, 0)).all(-1).any()  # the arrow


@pytest.mark.parametrize("mode", ["fast", "precise"])
def test_a_fixed_area_keeps_its_pixels_even_on_the_drags_path(registry, mode):
    settings = settings_for(steps=10, skip_steps=2, mode=mode, transport=4, intensify=2)
    drag = Drag("move", ((16, 32), (40, 32)))
    fixed = np.zeros((64, 64), bool)
    fixed[24:40, 32:44] = True  # whole 4-pixel latent cells, on the way and at the target
    edit = drag_edit(registry, replace(settings, drags=(drag,)), square_region(), fixed=fixed)
    source, result = np.asarray(edit.source), np.asarray(edit.result)
    assert np.array_equal(result[fixed], source[fixed])
    assert not np.array_equal(result, source)
