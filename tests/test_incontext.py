"""The in-context toolkit: grids, tags, the sets' presets, group and conditioned generation."""

import math
import threading
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from studio.errors import Cancelled, InvalidRequest
from studio.methods.incontext import (
    ImageSet,
    SetRequest,
    cells_latent_mask,
    cells_mask,
    check_set,
    compose,
    generate_set,
    grid_shape,
    load_set_defaults,
    load_sets,
    panel_tags,
    set_canvas,
    split,
    write_panels,
)

SETS = load_sets()


def panels(count, size=(24, 16)):
    rng = np.random.default_rng(count)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("count", range(1, 13))
def test_compose_then_split_returns_the_panels(count):
    rows, columns = grid_shape(count)
    assert rows * columns >= count and abs(rows - columns) <= 1 and columns >= rows
    made = panels(count)
    back = split(compose(made, rows, columns), rows, columns)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(made, back))
    assert all(np.all(np.asarray(cell) == 127) for cell in back[count:])  # unused cells stay grey


@pytest.mark.parametrize("set_id", sorted(SETS))
def test_every_set_validates_and_round_trips(set_id):
    image_set = SETS[set_id]
    cell = (image_set.width // image_set.columns, image_set.height // image_set.rows)
    made = panels(image_set.count, cell)
    grid = compose(made, image_set.rows, image_set.columns)
    assert grid.size == (image_set.width, image_set.height)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(made, split(grid, image_set.rows, image_set.columns))
    )
    prompt = image_set.prompt(image_set.caption, image_set.panels)
    assert all(tag in prompt for tag in image_set.tags) and prompt.startswith(image_set.intro)


def test_ten_official_sets_and_the_shapes_worlds_own():
    official = [s for s in SETS.values() if not s.model]
    assert len(official) == 10 and {s.repo for s in official} == {"ali-vilab/In-Context-LoRA"}
    assert SETS["film-storyboard"].file == "storyboard.safetensors"
    shapes = [s for s in SETS.values() if s.model]
    assert {s.id for s in shapes} == {"shapes-recolour", "shapes-move", "shapes-four-colours"}
    assert {s.adapter_name for s in shapes} == {"shapes-incontext"}  # one LoRA, one adapter


def test_panel_tags_and_bad_grids():
    assert panel_tags(1, 2) == ["[LEFT]", "[RIGHT]"] and panel_tags(2, 1) == ["[TOP]", "[BOTTOM]"]
    assert panel_tags(2, 2) == ["[TOP-LEFT]", "[TOP-RIGHT]", "[BOTTOM-LEFT]", "[BOTTOM-RIGHT]"]
    assert panel_tags(1, 3) == ["[PANEL-1]", "[PANEL-2]", "[PANEL-3]"]
    for wrong in (0, 13):
        with pytest.raises(InvalidRequest, match="Between 1 and 12 panels"):
            grid_shape(wrong)
    with pytest.raises(InvalidRequest, match="same size"):
        compose([Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9))], 1, 2)


def test_a_broken_set_file_is_refused(tmp_path):
    broken = tmp_path / "sets.toml"
    broken.write_text(
        '[[set]]\nid = "x"\nlabel = "x"\nrepo = "r"\nfile = "f.safetensors"\nwidth = 1000\n'
        'height = 512\nrows = 1\ncolumns = 2\nintro = ""\ntags = ["[LEFT]", "[RIGHT]"]\n'
        'caption = "c"\npanels = ["a", "b"]\n'
    )
    with pytest.raises(InvalidRequest, match="^sets.toml: Set x: width and height must be multiples of 16"):
        load_sets(broken)


def test_set_file_errors_name_the_file_the_set_and_the_field(tmp_path):
    whole = (
        '[[set]]\nid = "x"\nlabel = "x"\nrepo = "r"\nfile = "f.safetensors"\nwidth = 128\nheight = 64\n'
        'rows = 1\ncolumns = 2\nintro = ""\ntags = ["[LEFT]", "[RIGHT]"]\ncaption = "c"\npanels = ["a", "b"]\n'
    )
    sets_file = tmp_path / "sets.toml"
    sets_file.write_text('[[set]]\nid = "x"\nlabel = "x"\n')
    with pytest.raises(InvalidRequest, match="^sets.toml: set 'x', field 'caption': missing.$"):
        load_sets(sets_file)
    sets_file.write_text(whole + '[[set]]\nlabel = "y"\n')  # an unnamed set: by its number
    with pytest.raises(InvalidRequest, match="^sets.toml: set '#2', field 'caption': missing.$"):
        load_sets(sets_file)
    sets_file.write_text(whole.replace('label = "x"', 'label = "x"\ncolour = "red"'))
    with pytest.raises(InvalidRequest, match="^sets.toml: set 'x', field 'colour': unknown.$"):
        load_sets(sets_file)
    sets_file.write_text("[[set]\n")
    with pytest.raises(InvalidRequest, match="^sets.toml: cannot be read as TOML: "):
        load_sets(sets_file)
    sets_file.write_text("[defaults]\nsteps = 12\nstepz = 3\n")
    with pytest.raises(InvalidRequest) as refused:
        load_set_defaults(sets_file)
    assert str(refused.value) == (
        "sets.toml: [defaults], field 'stepz': not a default (there are base_model, guidance, lora_scale, steps)."
    )
    sets_file.write_text("[defaults]\nsteps = 12\n")
    assert load_set_defaults(sets_file).steps == 12


def test_the_set_requests_defaults_are_the_files():
    defaults = load_set_defaults()
    request = SetRequest(model="m", prompt="p", rows=1, columns=2)
    assert (request.steps, request.guidance) == (defaults.steps, defaults.guidance)


def test_mask_covers_exactly_the_generated_cells():
    mask = np.asarray(cells_mask(2, 2, (8, 4), [1, 2]))
    assert mask.shape == (8, 16)
    assert (mask[:4, 8:] == 255).all() and (mask[4:, :8] == 255).all()
    assert (mask[:4, :8] == 0).all() and (mask[4:, 8:] == 0).all()


def set_request(**changes) -> SetRequest:
    defaults = {"model": "tiny-flux-dev", "prompt": "[LEFT] a red circle [RIGHT] a blue square", "rows": 1,
                "columns": 2, "width": 128, "height": 64, "steps": 2}  # fmt: skip
    return SetRequest(**(defaults | changes))


def test_group_generation_splits_the_set_into_its_cells(registry):
    result = generate_set(registry, set_request(rows=2, columns=2, width=128, height=128))
    assert result.image.size == (128, 128) and result.mask is None
    whole = np.asarray(result.image)
    cells = [whole[:64, :64], whole[:64, 64:], whole[64:, :64], whole[64:, 64:]]  # row by row
    assert all(np.array_equal(np.asarray(panel), cell) for panel, cell in zip(result.panels, cells, strict=True))


@pytest.mark.parametrize(("rows", "columns", "given"), [(1, 2, 0), (1, 2, 1), (2, 2, 2), (2, 2, 1)])
def test_conditioned_generation_returns_each_reference_in_its_own_cell(registry, rows, columns, given):
    """A reference comes back pixel for pixel in its cell (not a transposed one); the others are drawn."""
    reference = panels(1, (64, 64))[0]
    result = generate_set(
        registry,
        set_request(rows=rows, columns=columns, width=64 * columns, height=64 * rows, references={given: reference}),
    )
    assert np.array_equal(np.asarray(result.panels[given]), np.asarray(reference))
    row, column = divmod(given, columns)
    mask = np.asarray(result.mask)
    assert (mask[row * 64 : (row + 1) * 64, column * 64 : (column + 1) * 64] == 0).all()
    assert (mask == 255).sum() == 64 * 64 * (rows * columns - 1)
    for index, panel in enumerate(result.panels):
        if index != given:  # generated, not left grey
            assert np.abs(np.asarray(panel, float) - 127).mean() > 2
    with pytest.raises(InvalidRequest, match="at least one"):
        generate_set(registry, set_request(rows=1, columns=1, width=64, height=64, references={0: reference}))


def test_the_latent_cells_mask_covers_exactly_the_given_cells():
    mask = cells_latent_mask(2, 2, 8, 12, [0, 3])
    assert mask.shape == (8, 12) and mask.dtype == torch.bool
    assert mask[:4, :6].all() and mask[4:, 6:].all()
    assert not mask[:4, 6:].any() and not mask[4:, :6].any()


def reference_latents_seen(registry, monkeypatch, reference, mode):
    """The latents every step's velocity was asked for, in a 1x2 set with panel 1 given."""
    from studio.methods import incontext

    seen = []
    integrate = incontext.flow.integrate

    def recording(velocity, latents, sigmas, **options):
        def watched(state, sigma):
            seen.append(state.clone())
            return velocity(state, sigma)

        return integrate(watched, latents, sigmas, **options)

    monkeypatch.setattr(incontext.flow, "integrate", recording)
    result = generate_set(registry, set_request(steps=3, references={0: reference}, reference_mode=mode))
    return result, seen


def test_held_references_are_read_clean_in_every_step(registry, monkeypatch):
    """`reference_mode="held"` (a LoRA trained with held references): every step's velocity sees
    the reference cell as the reference's own clean latents while the other cell is denoised; the
    drawn cell depends on the reference, and the reference comes back pixel for pixel."""
    from studio import flow

    reference, other = panels(2, (64, 64))
    result, seen = reference_latents_seen(registry, monkeypatch, reference, "held")
    assert len(seen) == 3
    with registry.use("tiny-flux-dev") as pipe:
        clean = flow.encode_image(pipe, compose([reference, Image.new("RGB", (64, 64), (127,) * 3)], 1, 2), 128, 64)
    width = clean.shape[-1] // 2
    for state in seen:
        assert torch.allclose(state[..., :width], clean[..., :width], atol=1e-5)
    assert not torch.allclose(seen[0][..., width:], seen[-1][..., width:])  # the other cell moves
    assert np.array_equal(np.asarray(result.panels[0]), np.asarray(reference))
    changed, _ = reference_latents_seen(registry, monkeypatch, other, "held")
    assert not np.array_equal(np.asarray(changed.panels[1]), np.asarray(result.panels[1]))
    with pytest.raises(InvalidRequest, match="held or inpainted"):
        generate_set(registry, set_request(references={0: reference}, reference_mode="clean"))
    with pytest.raises(InvalidRequest, match="need a rectified-flow model"):
        generate_set(registry, set_request(model="tiny-pixart-sigma", references={0: reference}, reference_mode="held"))


def test_a_users_own_set_uses_its_local_lora(tmp_path):
    from test_lora import make_lora

    from studio.catalogue import Catalogue
    from studio.methods.incontext import ImageSet, set_lora
    from studio.registry import Registry

    registry = Registry(Catalogue.load(), device="cpu")
    lora = make_lora(registry, tmp_path / "mine.safetensors", 3)
    mine = ImageSet(
        id="mine",
        label="Mine",
        repo="",
        file=str(lora),
        width=128,
        height=64,
        rows=1,
        columns=2,
        intro="",
        tags=("[LEFT]", "[RIGHT]"),
        caption="c",
        panels=("a", "b"),
    )
    builtin = registry.catalogue.get("tiny-flux-dev")
    assert set_lora(registry, mine, builtin) == ()  # built-in models have no IC-LoRA
    as_if_from_the_hub = replace(builtin, builtin=None)
    assert set_lora(registry, mine, as_if_from_the_hub) == (("mine", 1.0),)
    assert registry.adapters("tiny-flux-dev") == ["mine"]


def test_a_sets_canvas_is_its_own_on_the_hub_and_the_models_size_per_panel_built_in(catalogue):
    storyboard = SETS["film-storyboard"]
    hub = replace(catalogue.get("tiny-flux-dev"), builtin=None)
    assert set_canvas(storyboard, hub) == (storyboard.width, storyboard.height)
    for set_id in ("film-storyboard", "shapes-four-colours"):
        image_set = SETS[set_id]
        for spec in (catalogue.get("shapes-flux"), catalogue.get("tiny-sana")):
            width, height = set_canvas(image_set, spec)
            panel = (width // image_set.columns, height // image_set.rows)
            assert panel[0] * image_set.columns == width and panel[1] * image_set.rows == height
            assert panel[0] % spec.size_multiple == 0 and panel[1] % spec.size_multiple == 0
            # about the model's own pixel area per panel, in the set's proportions
            assert abs(panel[0] * panel[1] / (spec.width * spec.height) - 1) < 0.3
            assert abs(math.log((width / height) / (image_set.width / image_set.height))) < 0.2


def test_written_panels_are_pngs_beside_the_image_and_in_one_zip(tmp_path):
    made = panels(3)
    archive = write_panels(made, tmp_path / "set-7.png")
    assert archive == tmp_path / "set-7.zip"
    with zipfile.ZipFile(archive) as bundle:
        assert bundle.namelist() == [f"set-7-panel-{index}.png" for index in (1, 2, 3)]
        for index, panel in enumerate(made, start=1):
            with bundle.open(f"set-7-panel-{index}.png") as member:
                assert np.array_equal(np.asarray(Image.open(member)), np.asarray(panel))
            assert np.array_equal(np.asarray(Image.open(tmp_path / f"set-7-panel-{index}.png")), np.asarray(panel))


def test_a_sets_lora_fits_its_own_model_or_any_hub_model(catalogue):
    shapes_set, hub_set = SETS["shapes-recolour"], SETS["film-storyboard"]
    own = replace(catalogue.get("shapes-flux"), id=shapes_set.model)  # the world-2 model it was trained on
    assert own.builtin and shapes_set.lora_fits(own)
    assert not shapes_set.lora_fits(catalogue.get("tiny-flux-dev"))  # another built-in
    assert not shapes_set.lora_fits(catalogue.get("flux-dev"))  # trained on the shapes world only
    assert hub_set.lora_fits(catalogue.get("flux-dev"))
    assert not hub_set.lora_fits(catalogue.get("tiny-flux-dev"))  # built-ins never saw FLUX's LoRAs


def image_set(**changes) -> ImageSet:
    fields = {"id": "x", "label": "x", "repo": "r", "file": "f.safetensors", "width": 128, "height": 64,
              "rows": 1, "columns": 2, "intro": "", "tags": ("[LEFT]", "[RIGHT]"), "caption": "c",
              "panels": ("a", "b")}  # fmt: skip
    return ImageSet(**(fields | changes))


def numbered(count: int) -> dict:
    return {"tags": tuple(f"[PANEL-{k}]" for k in range(count)), "panels": ("p",) * count}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 136}, "Set x: width and height must be multiples of 16."),
        ({"height": 72}, "Set x: width and height must be multiples of 16."),
        ({"rows": 0, **numbered(0)}, "Set x: 1 to 12 panels."),
        ({"rows": 13, "columns": 1, "height": 13 * 16, **numbered(13)}, "Set x: 1 to 12 panels."),
        ({"width": 160, "columns": 3, **numbered(3)}, "Set x: the canvas does not divide into 1x3 cells."),
        ({"height": 160, "rows": 3, "columns": 1, **numbered(3)}, "Set x: the canvas does not divide into 3x1 cells."),
        ({"tags": ("[LEFT]",)}, "Set x: one tag and one example text per panel (2)."),
        ({"panels": ("a", "b", "c")}, "Set x: one tag and one example text per panel (2)."),
        ({"tags": ("[A]", "[A]")}, "Set x: panel tags must differ."),
        ({"references": "clean"}, "Set x: references must be one of inpaint, held."),
    ],
)
def test_a_set_is_refused_with_what_is_wrong(changes, message):
    with pytest.raises(InvalidRequest) as refused:
        check_set(image_set(**changes))
    assert str(refused.value) == message


def test_sets_of_one_to_twelve_panels_pass():
    check_set(image_set())
    check_set(image_set(width=64, columns=1, **numbered(1)))
    check_set(image_set(width=192, height=144, rows=3, columns=4, **numbered(12)))


def test_a_sets_prompt_leaves_out_empty_panels():
    tagged = image_set(intro="A pair of panels;")
    assert tagged.prompt(" two shapes ", [" a red circle ", "  "]) == "A pair of panels; two shapes [LEFT] a red circle"
    assert image_set().prompt("", ["", "a blue square"]) == "[RIGHT] a blue square"


def test_compose_and_split_say_what_does_not_fit_and_cut_whole_pixels():
    with pytest.raises(InvalidRequest, match="^All panels must have the same size.$"):
        compose([Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9))], 1, 2)
    with pytest.raises(InvalidRequest, match="^3 panels do not fit a 1x2 grid.$"):
        compose(panels(3, (8, 8)), 1, 2)
    odd = Image.new("RGB", (50, 31))
    assert [panel.size for panel in split(odd, 2, 3)] == [(16, 15)] * 6


def test_set_requests_are_checked_before_anything_runs(registry):
    with pytest.raises(InvalidRequest, match="^Between 1 and 12 panels.$"):
        generate_set(registry, set_request(rows=13, columns=1))
    with pytest.raises(InvalidRequest, match="^Reference panels are numbered 1 to 2.$"):
        generate_set(registry, set_request(references={2: panels(1)[0]}))
    with pytest.raises(InvalidRequest, match="^Every panel has a reference: leave at least one to generate.$"):
        generate_set(registry, set_request(references={0: panels(1)[0], 1: panels(1)[0]}))


def test_twelve_panels_on_cells_of_the_asked_shape(registry):
    result = generate_set(registry, set_request(rows=3, columns=4, width=64, height=48, steps=1))
    assert len(result.panels) == 12 and result.image.size == (64, 48)
    wide = generate_set(registry, set_request(width=256, height=64, steps=1))
    assert wide.image.size == (256, 64) and {panel.size for panel in wide.panels} == {(128, 64)}
    snapped = generate_set(registry, set_request(width=132, height=66, steps=1))
    assert snapped.image.size == (128, 64)
    thirds = generate_set(registry, set_request(rows=1, columns=3, width=200, height=64, steps=1))
    assert thirds.image.size == (192, 64) and 0 < thirds.seconds < 120  # whole cells of the size multiple
    stacked = generate_set(registry, set_request(rows=3, columns=1, width=64, height=200, steps=1))
    assert stacked.image.size == (64, 192)


def test_a_reference_of_another_size_is_fitted_to_its_cell(registry):
    reference = panels(1, (100, 80))[0]
    seen = []
    result = generate_set(
        registry,
        set_request(references={1: reference}, steps=3, width=256, height=64),
        on_step=lambda done, total: seen.append((done, total)),
    )
    fitted = reference.resize((128, 64), Image.Resampling.LANCZOS)  # cells of 128 x 64
    assert np.array_equal(np.asarray(result.panels[1]), np.asarray(fitted))
    assert seen == [(done, 3) for done in range(4)]  # the other cell drawn from pure noise: every step


def test_set_generation_reports_each_step_and_stops_when_cancelled(registry):
    seen = []
    generate_set(registry, set_request(steps=3), on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(done, 3) for done in range(4)]
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        generate_set(registry, set_request(steps=3), cancel=cancel)


def test_a_sets_adapters_reach_the_model(tmp_path):
    from test_lora import make_lora

    from studio.catalogue import Catalogue
    from studio.registry import Registry

    own = Registry(Catalogue.load(), device="cpu")
    own.add_adapter("tiny-flux-dev", "mine", make_lora(own, tmp_path / "mine.safetensors", 3))
    plain = np.asarray(generate_set(own, set_request(steps=2)).image, float)
    styled = np.asarray(generate_set(own, set_request(steps=2, adapters=(("mine", 1.0),))).image, float)
    assert np.abs(styled - plain).mean() > 2


def test_a_set_request_is_saved_without_its_images():
    saved = set_request(references={1: panels(1)[0], 0: panels(1)[0]}, adapters=(("mine", 0.5),)).to_dict()
    assert "references" not in saved and saved["reference_panels"] == [0, 1]
    assert (saved["rows"], saved["columns"], saved["adapters"], saved["model"]) == (
        1,
        2,
        (("mine", 0.5),),
        "tiny-flux-dev",
    )
