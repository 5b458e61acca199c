"""The studio's Blocks: one tab per module, all drawing from one registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from studio.context import StudioContext
from tabs import agent, colour_edit, drag, image_sets, layout, live, text_to_image, tools, tryon, video
from tabs import history as history_panel
from tabs.common import session_of

TITLE = "DiT Studio"
# Small results (the built-ins draw 64x64) are enlarged for the eye without blurring; every image
# is shown whole.
CSS = """
img { image-rendering: pixelated; object-fit: contain; }
"""
# Ctrl+Enter (or Cmd+Enter) runs the visible tab, Esc cancels what it runs; a sketch pad meant
# for drawing holds its brush from the start and gets it back after Clear (no tool picked).
SHORTCUTS = """
() => {
    const shown = (element) => element.offsetParent !== null;
    setInterval(() => {
        for (const pad of document.querySelectorAll('.studio-brush-first')) {
            if (!shown(pad) || pad.querySelector('button.highlight')) continue;
            const brush = pad.querySelector('button[aria-label="Brush"]');
            if (brush) brush.click();
        }
    }, 400);
    document.addEventListener('keydown', (event) => {
        let kind = null;
        if ((event.ctrlKey || event.metaKey) && event.key === 'Enter') kind = 'studio-run';
        else if (event.key === 'Escape') kind = 'studio-cancel';
        if (!kind) return;
        const button = [...document.querySelectorAll(`.${kind}`)].find(shown);
        if (button) { event.preventDefault(); button.click(); }
    });
    window.studioShortcutsReady = true;
}
"""


def launch_options() -> dict[str, Any]:
    """What `launch` needs besides the server settings: the studio's style and shortcuts, and
    Gradio's own input checks said to API clients as the sentences they are ("Expected a float,
    but the value passed was 'seven'") rather than a bare failure."""
    return {"css": CSS, "js": SHORTCUTS, "show_error": True}


def adapters_leave_with(studio: StudioContext) -> Callable[[gr.Request], None]:
    """A visitor's adapters (shared mode) leave with the visitor."""

    def on_unload(request: gr.Request) -> None:
        studio.adapters.end(session_of(request))

    return on_unload


def build_app(studio: StudioContext, mcp: bool = False) -> gr.Blocks:
    """The studio's page; `mcp`: programs (MCP clients, the API page) are offered the tools only."""
    registry = studio.registry
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nDiffusion Transformers (FLUX, SD3, PixArt, SANA; CogVideoX, Wan) on one registry · device "
            f"`{registry.device}` · {'offline' if registry.offline_only else 'online'}"
        )
        with gr.Tabs() as tabs:
            with gr.Tab("Text to image", id=text_to_image.TAB_ID):
                history, reused = text_to_image.build(studio)
            with gr.Tab("Colour editing", id=colour_edit.TAB_ID):
                to_colour = colour_edit.build(studio, history)
            with gr.Tab("Multi-prompt video"):
                video.build(studio)
            with gr.Tab("Drag editing", id=drag.TAB_ID):
                to_drag = drag.build(studio, history)
            with gr.Tab("Virtual try-on", id=tryon.TAB_ID):
                to_tryon = tryon.build(studio)
            with gr.Tab("Layout to image", id=layout.TAB_ID):
                to_layout = layout.build(studio)
            with gr.Tab("In-context image sets"):
                image_sets.build(studio)
            with gr.Tab("Live sketch", id=live.TAB_ID):
                to_live = live.build(studio)
            with gr.Tab("Agent"):
                agent.build(studio)
            with gr.Tab("History") as history_tab:
                history_panel.build(
                    studio, demo, history_tab, tabs, reused, [to_colour, to_drag, to_tryon, to_layout, to_live]
                )
        tools.build(studio)
        demo.unload(adapters_leave_with(studio))
    # Room for many visitors' jobs; the GPU slot still runs one at a time.
    if mcp:
        tools.programs_see_only_tools(demo)
    demo.queue(max_size=256, default_concurrency_limit=1)
    if studio.shared:
        limit_jobs_per_session(demo, JOBS_PER_VISITOR)
    return demo


# In a shared studio a visitor may have this many jobs in the GPU slot, running or waiting; more
# are refused when asked, so one visitor cannot fill the queue for everyone.
JOBS_PER_VISITOR = 2


def limit_jobs_per_session(demo: gr.Blocks, limit: int) -> None:
    """An admission step ahead of Gradio's queue (which has one global size only): a session's
    GPU-slot job beyond `limit` of its own waiting or running is refused with a sentence (HTTP 400,
    which the page shows as it is)."""
    from gradio import route_utils

    queue = demo._queue
    admit = queue.push

    def gpu_jobs_of(session: str) -> int:
        waiting = [event for line in queue.event_queue_per_concurrency_id.values() for event in line.queue]
        running = [event for job in queue.active_jobs if job for event in job]
        return sum(event.session_hash == session and event.fn.concurrency_id == "gpu" for event in waiting + running)

    async def push(body: Any, request: Any, username: str | None) -> Any:
        if body.fn_index is not None and body.session_hash is not None:
            fn = route_utils.get_fn(demo, None, body)
            if fn.concurrency_id == "gpu" and gpu_jobs_of(body.session_hash) >= limit:
                return (
                    False,
                    (
                        f"You have {limit} jobs running or waiting already; this shared studio takes more from you "
                        "when one of them ends (or Cancel them)."
                    ),
                    "error",
                )
        return await admit(body=body, request=request, username=username)

    queue.push = push
