"""A person's path through the page: type a prompt, click Generate, see the image."""

from pathlib import Path

import pytest

from studio.cli import create_studio, parse_args
from tabs.app import build_app

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (scripts/ensure-chromium.sh)")
def test_type_a_prompt_click_generate_and_see_the_image(tmp_path, free_port, artifacts):
    from playwright.sync_api import sync_playwright

    demo = build_app(create_studio(parse_args(["--offline", "--default-model", "shapes-flux",
                                               "--output-dir", str(tmp_path)])))
    demo.launch(server_name="127.0.0.1", server_port=free_port, prevent_thread_lock=True, inbrowser=False,
                allowed_paths=[str(tmp_path)])
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{free_port}/")
            page.get_by_label("Prompt", exact=True).fill("a large red circle on the left, gray background")
            page.get_by_role("button", name="Generate").click()
            result = page.locator("img[src*='shapes-flux']").first
            result.wait_for(timeout=120_000)
            page.wait_for_function("() => document.querySelector('img[src*=\"shapes-flux\"]').naturalWidth > 0")
            assert page.get_by_text("seed 0").first.is_visible()
            page.screenshot(path=str(artifacts / "text-to-image.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert len(list(tmp_path.glob("*shapes-flux*.png"))) == 1
