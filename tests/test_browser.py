"""A person's path through the page: type a prompt, click Generate, see the image; then recolour
that image in the colour-editing tab."""

import os
from pathlib import Path

import numpy as np
import pytest
from support import serve

from studio.cli import create_studio, parse_args
from tabs.app import build_app

CHROMIUM = Path("/usr/bin/chromium")
# On a developer's machine without Chromium the browser tests say so and step aside; under CI
# (where `make test` installs it first) a missing browser is a failure, never a silent skip.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian chromium is not installed (scripts/ensure-chromium.sh)",
    ),
]


def test_chromium_is_there_under_ci():
    assert CHROMIUM.exists(), "CI runs the browser tests: install Chromium (scripts/ensure-chromium.sh)"


BROWSER_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def studio_browser(tmp_path, free_port, request):
    """The studio served offline (shared mode when the test is marked so) and a Chromium; yields
    (browser, url)."""
    from playwright.sync_api import sync_playwright

    flags = ["--offline", "--default-model", "shapes-flux", "--output-dir", str(tmp_path)]
    shared = request.node.get_closest_marker("shared") is not None
    login = request.node.get_closest_marker("login")
    demo = build_app(create_studio(parse_args(flags + (["--shared"] if shared else []))))
    try:
        url = serve(
            demo, free_port, allowed_paths=[] if shared else [str(tmp_path)], auth=[login.args] if login else None
        )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=BROWSER_FLAGS)
            yield browser, url
            browser.close()
    finally:
        demo.close()


@pytest.fixture
def page(studio_browser):
    browser, url = studio_browser
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    return page


def wait_for_image(page, fragment: str) -> None:
    page.locator(f"img[src*='{fragment}']").first.wait_for(timeout=120_000)
    page.wait_for_function(f"() => document.querySelector('img[src*=\"{fragment}\"]').naturalWidth > 0")


def has_text_box(text: str) -> str:
    """A page function: true once some text box holds exactly `text`."""
    visible = "[...document.querySelectorAll('textarea, input')].filter(e => e.offsetParent)"
    return f"() => {visible}.some(e => e.value === {text!r})"


def has_text_box_containing(text: str) -> str:
    visible = "[...document.querySelectorAll('textarea, input')].filter(e => e.offsetParent)"
    return f"() => {visible}.some(e => e.value.includes({text!r}))"


def generate(page) -> None:
    page.get_by_label("Prompt", exact=True).fill("a large red circle on the left, gray background")
    page.get_by_role("button", name="Generate").click()
    wait_for_image(page, "shapes-flux")


def test_type_a_prompt_click_generate_and_see_the_image(page, tmp_path, artifacts):
    generate(page)
    assert page.get_by_text("seed 0").first.is_visible()
    page.screenshot(path=str(artifacts / "text-to-image.png"), full_page=True)
    assert len(list(tmp_path.glob("*shapes-flux*.png"))) == 1


def test_recolour_the_last_result(page, tmp_path, artifacts):
    generate(page)
    page.get_by_role("tab", name="Colour editing").click()
    page.get_by_role("button", name="Use the last text-to-image result").click()
    # The source prompt comes from the last result, the target prompt from the object and colour.
    page.wait_for_function(has_text_box("a large red circle on the left, gray background"), timeout=30_000)
    page.get_by_label("Object to recolour (a word of the source prompt)", exact=True).fill("circle")
    page.wait_for_function(has_text_box("a large blue circle on the left, gray background"), timeout=30_000)
    page.get_by_role("button", name="Recolour").click()
    wait_for_image(page, "colour-shapes-flux")
    # The before/after divider starts over the circle on the left, not in the middle.
    clip = "() => document.querySelector('.slider-wrap img.fixed').style.clipPath"
    page.wait_for_function(f"() => ({clip})().includes('%')", timeout=30_000)
    divider = float(page.evaluate(clip).split()[-1].rstrip("%)"))
    assert 10 < divider < 45
    page.screenshot(path=str(artifacts / "colour-editing.png"), full_page=True)
    assert len(list(tmp_path.glob("*colour-shapes-flux-0-*.png"))) == 1


def table_rows(page) -> list[list[str]]:
    # The Dataframe's grid rows (it also renders a hidden sizing table, not read here).
    return page.evaluate(
        "() => [...document.querySelectorAll('#layout-table [role=grid] [role=row][aria-rowindex]')]"
        ".map(r => [...r.querySelectorAll('[role=gridcell]')].map(c => c.textContent.trim()))"
        ".filter(r => r.some(c => c))"
    )


def drag(page, stage, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press at `start`, move in steps, release at `end` (fractions of the stage)."""
    stage.scroll_into_view_if_needed()
    box = stage.bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=8)
    page.mouse.up()


def test_draw_move_delete_boxes_and_generate_a_layout(page, tmp_path, artifacts):
    page.get_by_role("tab", name="Layout to image").click()
    # The tab opens on its first example's two boxes; clear them to draw one's own.
    page.wait_for_function("() => document.querySelectorAll('#layout-editor .layout-box').length == 2", timeout=30_000)
    assert len(table_rows(page)) == 2
    page.get_by_role("button", name="Clear boxes").click()
    page.wait_for_function("() => document.querySelectorAll('#layout-editor .layout-box').length == 0", timeout=30_000)
    page.get_by_label("Global caption", exact=True).fill("a large red circle on the left, gray background")
    stage = page.locator("#layout-editor .layout-stage")
    stage.wait_for(timeout=30_000)
    # Box first, caption after: the box waits as "box 1" until its caption is typed.
    drag(page, stage, (0.05, 0.2), (0.5, 0.8))
    page.wait_for_function(
        "() => [...document.querySelectorAll('#layout-table [role=gridcell]')]"
        ".some(e => e.textContent.trim() == 'box 1')",
        timeout=30_000,
    )
    caption = page.get_by_label("Caption of the next box (or of the last one drawn without one)", exact=True)
    caption.fill("a large red circle on the left, gray background")
    caption.press("Enter")
    # The box lands in the table with the caption typed for it, at the corners dragged.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#layout-table [role=gridcell]')]"
        ".some(e => e.textContent.includes('red circle on the left'))",
        timeout=30_000,
    )
    rows = table_rows(page)
    assert len(rows) == 1
    x1, y1, x2, y2 = (float(cell) for cell in rows[0][-4:])
    assert abs(x1 - 0.05) < 0.02 and abs(y1 - 0.2) < 0.02 and abs(x2 - 0.5) < 0.02 and abs(y2 - 0.8) < 0.02
    # Dragging inside the box moves it; the table follows.
    drag(page, stage, (0.25, 0.5), (0.45, 0.4))
    page.wait_for_function(
        "() => [...document.querySelectorAll('#layout-table [role=gridcell]')]"
        ".some(e => e.textContent.trim() == '0.25')",
        timeout=30_000,
    )
    x1, y1, x2, y2 = (float(cell) for cell in table_rows(page)[0][-4:])
    assert abs(x1 - 0.25) < 0.02 and abs(y1 - 0.1) < 0.02 and abs(x2 - 0.7) < 0.02 and abs(y2 - 0.7) < 0.02
    # A second box, then Delete removes the selected one.
    drag(page, stage, (0.75, 0.75), (0.95, 0.95))
    page.wait_for_function("() => document.querySelectorAll('#layout-editor .layout-box').length == 2", timeout=30_000)
    page.wait_for_function(
        "() => document.querySelectorAll('#layout-table [role=gridcell][aria-colindex=\"1\"]').length == 2",
        timeout=30_000,
    )
    page.keyboard.press("Delete")
    page.wait_for_function("() => document.querySelectorAll('#layout-editor .layout-box').length == 1", timeout=30_000)
    page.wait_for_timeout(1000)
    assert len(table_rows(page)) == 1
    page.get_by_role("button", name="Generate layout").click()
    page.locator("#layout-result img").first.wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#layout-result img').naturalWidth > 0")
    page.screenshot(path=str(artifacts / "layout-to-image.png"), full_page=True)
    assert len(list(tmp_path.glob("*layout-shapes-flux-0-*.png"))) == 1
    # CreatiLayout: the method offers the models with SiamLayout branches (offline: the built-in).
    page.get_by_label("CreatiLayout SiamLayout (SD3)").check()
    page.wait_for_function(has_text_box_containing("SiamLayout (built-in, trained branches)"), timeout=30_000)
    page.get_by_role("button", name="Generate layout").click()
    # The result's settings (JSON) name the method once the image is made.
    page.wait_for_function("() => document.body.innerText.includes('CreatiLayout SiamLayout (SD3)\"')", timeout=120_000)
    assert len(list(tmp_path.glob("*layout-shapes-sd3-siamlayout-0-*.png"))) == 1


def test_generate_an_image_set(page, tmp_path, artifacts):
    page.get_by_role("tab", name="In-context image sets").click()
    page.get_by_role("button", name="Generate set").click()
    page.locator("#image-set-result img").first.wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#image-set-result img').naturalWidth > 0")
    page.screenshot(path=str(artifacts / "image-sets.png"), full_page=True)
    # Offline the tab opens on the shapes world's own first set.
    assert len(list(tmp_path.glob("*set-shapes-recolour-shapes-flux-2-0*.png"))) == 3  # the set and its two panels
    assert len(list(tmp_path.glob("*.zip"))) == 1


def test_a_stroke_on_the_live_canvas_makes_an_image(page, artifacts):
    page.get_by_role("tab", name="Live sketch").click()
    canvas = page.locator("#live-sketch canvas").first
    canvas.wait_for(timeout=30_000)
    # Record every class the latency line's subtree takes while frames run (its busy state).
    page.evaluate(
        """() => { window.latencyClasses = new Set();
        new MutationObserver(() => document.querySelectorAll('#live-latency, #live-latency *')
            .forEach(e => e.classList.forEach(c => window.latencyClasses.add(c))))
        .observe(document.querySelector('#live-latency'), {subtree: true, childList: true, attributes: true}); }"""
    )
    # No click on the brush: the pad holds it from the start.
    box = canvas.bounding_box()
    # A stroke across the middle of the paper (the canvas element is wider than the paper).
    page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.35 + 0.03 * step), box["y"] + box["height"] * 0.5, steps=2)
    page.mouse.up()
    page.locator("#live-result img").first.wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#live-result img').naturalWidth > 0")
    page.wait_for_function(
        "() => document.querySelector('#live-latency').innerText.includes('ms per frame')", timeout=30_000
    )
    page.locator("#live-control img").first.wait_for(timeout=30_000)
    page.screenshot(path=str(artifacts / "live-sketch.png"), full_page=True)
    # While the frame ran, the latency line showed Gradio's busy state (not hidden).
    assert {"pending", "minimal"} <= set(page.evaluate("() => [...window.latencyClasses]"))


def test_a_small_result_is_shown_whole(page):
    """A 64x64 result fills its box without being cropped: the displayed image keeps the square
    aspect and lies inside the gallery, enlarged."""
    generate(page)
    shown = page.evaluate(
        """() => {
            const image = [...document.querySelectorAll('img')].find(i => i.src.includes('shapes-flux'));
            const box = image.getBoundingClientRect();
            const style = getComputedStyle(image);
            return {width: box.width, height: box.height, natural: image.naturalWidth,
                    fit: style.objectFit, rendering: style.imageRendering};
        }"""
    )
    assert shown["natural"] == 64 and shown["width"] > 64  # enlarged for the eye
    assert shown["fit"] == "contain" and shown["rendering"] == "pixelated"


def test_typing_the_object_word_raises_no_warning(page):
    page.get_by_role("tab", name="Colour editing").click()
    page.get_by_label("Source prompt", exact=True).fill("a large red circle on the left, gray background")
    page.get_by_label("Object to recolour (a word of the source prompt)", exact=True).press_sequentially(
        "circle", delay=50
    )
    page.wait_for_function(has_text_box("a large blue circle on the left, gray background"), timeout=30_000)
    assert page.locator(".toast-body").count() == 0


def test_the_model_picker_starts_with_models_that_run_here(page):
    page.get_by_label("Model", exact=True).first.click()
    options = page.get_by_role("option").all_inner_texts()
    assert options, "the picker lists models"
    assert "random weights" not in options[0] and "unavailable" not in options[0]
    ranks = [2 if "unavailable" in o or "failed" in o else 1 if "random weights" in o else 0 for o in options]
    assert ranks == sorted(ranks)


@pytest.mark.shared
def test_history_survives_a_reload_and_stays_private(studio_browser, artifacts):
    browser, url = studio_browser
    mine = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = mine.new_page()
    page.goto(url)
    generate(page)
    page.reload()
    page.get_by_role("tab", name="History").click()
    page.locator("#history img").first.wait_for(timeout=30_000)
    page.screenshot(path=str(artifacts / "history.png"), full_page=True)
    assert page.locator("#history img").count() >= 1
    theirs = browser.new_context().new_page()
    theirs.goto(url)
    theirs.get_by_role("tab", name="History").click()
    theirs.wait_for_timeout(2000)
    assert theirs.locator("#history img").count() == 0


def test_ctrl_enter_generates_and_escape_cancels(page, tmp_path):
    page.wait_for_function("() => window.studioShortcutsReady === true", timeout=30_000)
    page.get_by_label("Prompt", exact=True).fill("a large red circle on the left, gray background")
    page.get_by_label("Prompt", exact=True).press("Control+Enter")
    wait_for_image(page, "shapes-flux")
    assert len(list(tmp_path.glob("*shapes-flux-0-*.png"))) == 1
    # Eight images at 100 steps take far longer than the moment before Esc.
    for name, value in (("Steps", "100"), ("Images", "8")):
        field = page.get_by_label(f"number input for {name}", exact=True).first
        field.fill(value)
        field.press("Tab")
    page.get_by_label("Prompt", exact=True).press("Control+Enter")
    page.wait_for_timeout(1500)
    page.keyboard.press("Escape")
    page.wait_for_timeout(5000)
    stopped = len(list(tmp_path.glob("*.png")))
    page.wait_for_timeout(5000)
    assert len(list(tmp_path.glob("*.png"))) == stopped < 1 + 8  # no image was made after Esc


@pytest.mark.login("ann", "first pass")
def test_a_login_is_asked_before_the_studio_opens(studio_browser):
    browser, url = studio_browser
    page = browser.new_page()
    page.goto(url)
    page.get_by_label("username").fill("ann")
    page.get_by_label("password").fill("wrong")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Incorrect Credentials").wait_for(timeout=15_000)
    assert page.get_by_role("tab", name="Text to image").count() == 0
    page.get_by_label("username").fill("ann")
    page.get_by_label("password").fill("first pass")
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Text to image").wait_for(timeout=30_000)


def square_point(box: dict, fx: float, fy: float) -> tuple[float, float]:
    """A point at fractions of a square picture shown centred in `box` (object-fit: contain)."""
    side = min(box["width"], box["height"])
    left, top = box["x"] + (box["width"] - side) / 2, box["y"] + (box["height"] - side) / 2
    return left + fx * side, top + fy * side


def test_paint_a_region_click_handle_and_target_and_drag(page, tmp_path, artifacts):
    page.get_by_role("tab", name="Drag editing").click()
    page.get_by_label("Prompt of the image", exact=True).fill("a large red square on the left, gray background")
    page.get_by_role("button", name="Show the source image to paint on").click()
    clicks = page.locator("#drag-canvas img").first
    clicks.wait_for(timeout=120_000)
    page.wait_for_timeout(3000)  # the editor takes the picture as its background
    canvas = page.locator("#drag-regions canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    # A short stroke on the square (the brush is wide on a 64-pixel picture).
    page.mouse.move(*square_point(box, 0.2, 0.5))
    page.mouse.down()
    for step in range(1, 6):
        page.mouse.move(*square_point(box, 0.2 + 0.02 * step, 0.5), steps=2)
    page.mouse.up()
    page.wait_for_timeout(1500)
    # Handle on the square, target a third of the picture to the right.
    for fraction in (0.25, 0.61):
        clicks.scroll_into_view_if_needed()
        page.mouse.click(*square_point(clicks.bounding_box(), fraction, 0.5))
        page.wait_for_timeout(1000)
    page.get_by_role("button", name="Drag", exact=True).click()
    wait_for_image(page, "drag-shapes-flux")
    page.screenshot(path=str(artifacts / "drag-editing.png"), full_page=True)
    results = list(tmp_path.glob("*drag-shapes-flux-0-*.png"))
    assert len(results) == 1
    from PIL import Image

    from studio.toyworld.measure import centroid, colour_mask, largest_blob

    landed = centroid(largest_blob(colour_mask(Image.open(results[0]), "red")))
    assert landed is not None and landed[0] > 0.45


def test_fill_two_prompts_make_a_video_and_play_it(page, tmp_path, artifacts):
    page.get_by_role("tab", name="Multi-prompt video").click()
    cells = page.locator("#video-prompts [role=grid] [role=gridcell]")
    for index, text in (
        (0, "a blue square on the left, gray background"),
        (2, "a blue square on the right, gray background"),
    ):
        cells.nth(index).dblclick()  # the cell's editor takes the focus
        page.locator("#video-prompts textarea[aria-label='Edit cell']:focus").fill(text)
        page.keyboard.press("Enter")
    rows = "[...document.querySelectorAll('#video-plan td:first-child')].map(cell => cell.textContent.trim())"
    plan = "a blue square on the left, gray background|transition 1 → 2|a blue square on the right, gray background"
    page.wait_for_function(f"() => {rows}.join('|') === {plan!r}", timeout=30_000)
    page.get_by_role("button", name="Make the video").click()
    page.locator("#video-result video").first.wait_for(timeout=240_000)
    played = page.evaluate(
        """async () => {
            const video = document.querySelector('#video-result video');
            video.muted = true;
            await video.play();
            await new Promise(resolve => setTimeout(resolve, 800));
            return {time: video.currentTime, width: video.videoWidth, ready: video.readyState};
        }"""
    )
    page.screenshot(path=str(artifacts / "multi-prompt-video.png"), full_page=True)
    assert played["width"] == 64 and played["ready"] >= 2 and played["time"] > 0
    videos = list(tmp_path.glob("*video-*.mp4"))
    assert len(videos) == 1
    from studio.video_io import read_video

    frames, rate = read_video(videos[0])
    assert frames.shape[1:] == (64, 64, 3) and rate > 0


def test_upload_a_person_and_a_garment_and_try_it_on(page, tmp_path, artifacts):
    page.get_by_role("tab", name="Virtual try-on").click()
    page.locator("#tryon-person input[type=file]").set_input_files("assets/examples/tryon/person-2.png")
    page.locator("#tryon-garment input[type=file]").set_input_files("assets/examples/tryon/garment-2-upper.png")
    page.wait_for_timeout(4000)  # the automatic mask arrives in the editor
    page.get_by_role("button", name="Try on", exact=True).click()
    wait_for_image(page, "tryon-dressup-flux-fill")
    page.screenshot(path=str(artifacts / "virtual-try-on.png"), full_page=True)
    results = list(tmp_path.glob("*tryon-dressup-flux-fill*.png"))
    assert len(results) == 1
    from PIL import Image

    with Image.open(results[0]) as made, Image.open("assets/examples/tryon/person-2.png") as person:
        assert made.size == person.size
        assert (np.asarray(made.convert("RGB")) != np.asarray(person.convert("RGB"))).any()


def test_type_a_request_to_the_agent_and_see_the_plan_and_images(page, tmp_path, artifacts):
    page.get_by_role("tab", name="Agent").click()
    box = page.locator("#agent-message textarea").first
    box.fill("two images of a red circle on the left, gray background")
    box.press("Enter")
    page.locator("#agent-chat img").nth(1).wait_for(timeout=120_000)
    page.screenshot(path=str(artifacts / "agent.png"), full_page=True)
    assert page.get_by_text("Making 2 images").first.is_visible()
    assert len(list(tmp_path.glob("*agent-output-*.png"))) == 2


@pytest.mark.parametrize(
    ("tab", "button"),
    [
        ("Text to image", "Generate"),
        ("Colour editing", "Recolour"),
        ("Multi-prompt video", "Make the video"),
        ("Drag editing", "Drag"),
        ("Virtual try-on", "Try on"),
        ("Layout to image", "Generate layout"),
        ("In-context image sets", "Generate set"),
    ],
)
def test_each_tabs_run_button_is_above_the_fold(page, tab, button):
    """At 1400×1000 a tab's run button shows without scrolling."""
    page.get_by_role("tab", name=tab).click()
    run = page.get_by_role("button", name=button, exact=True)
    run.wait_for(timeout=30_000)
    box = run.bounding_box()
    assert box is not None and box["y"] + box["height"] <= 1000, (tab, box)
