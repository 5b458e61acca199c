"""History: the session's results with their settings, to look at again, download or delete. In
shared mode a browser sees only its own (its random owner token lives in its own storage, so a
page reload keeps the history); locally it is the output folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from studio.context import StudioContext
from studio.errors import InvalidRequest
from studio.metadata import read_payload
from tabs import common, text_to_image

# The browser keeps its owner token in its own storage (a random one the first time), so a page
# reload finds the same history; the server only checks and maps it.
OWNER_SCRIPT = """() => {
    let token = localStorage.getItem('dit-studio-owner');
    if (!token || !/^[0-9a-f]{32}$/.test(token)) {
        token = Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, '0')).join('');
        localStorage.setItem('dit-studio-owner', token);
    }
    return token;
}"""


@dataclass
class HistoryTab:
    owner: gr.Textbox
    gallery: gr.Gallery
    refresh: gr.Button
    settings: gr.JSON
    reuse: gr.Button
    target: gr.Dropdown
    send: gr.Button
    delete: gr.Button
    picked: gr.Textbox


def layout(targets: list[common.SendTarget]) -> HistoryTab:
    owner = gr.Textbox(visible=False)
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(
                label="Your results, newest first", columns=6, height="auto", object_fit="contain", elem_id="history"
            )
        with gr.Column(scale=2):
            refresh = gr.Button("Refresh", size="sm")
            settings = gr.JSON(label="Settings of the picked result")
            reuse = gr.Button("Reuse its settings in Text to image", size="sm")
            with gr.Row():
                labels = [target.label for target in targets]
                target = gr.Dropdown(labels, value=labels[0] if labels else None, label="Send the picked image to")
                send = gr.Button("Send", size="sm")
            delete = gr.Button("Delete the picked result", variant="stop", size="sm")
    # The picked result's file name: a hidden box, so API clients name it too.
    picked = gr.Textbox(visible=False)
    return HistoryTab(owner, gallery, refresh, settings, reuse, target, send, delete, picked)


def shown(studio: StudioContext, request: gr.Request | None) -> list[tuple[str, str]]:
    return [(str(entry.path), entry.caption) for entry in studio.history.entries(common.session_of(request))]


def handlers(studio: StudioContext) -> tuple[Callable, Callable, Callable, Callable]:
    def on_load(owner: str | None, request: gr.Request):
        studio.history.attach(common.session_of(request), owner)
        return shown(studio, request)

    def on_refresh(request: gr.Request):
        return shown(studio, request), None, None

    def on_select(event: gr.SelectData, request: gr.Request):
        entries = studio.history.entries(common.session_of(request))
        if not 0 <= event.index < len(entries):
            return None, None
        entry = entries[event.index]
        return entry.settings, entry.path.name

    def on_delete(name: str | None, request: gr.Request):
        with common.user_errors("Deleting"):
            studio.history.delete(common.session_of(request), name or "")
        gr.Info("Deleted.")
        return shown(studio, request), None, None

    return on_load, on_refresh, on_select, on_delete


def reuse_in_text_to_image(studio: StudioContext) -> Callable:
    """The picked result's settings into the text-to-image tab, which is then shown."""
    fill = text_to_image.reuse_handler(studio)

    def on_reuse(name: str | None, request: gr.Request):
        with common.user_errors("Reusing"):
            path = studio.history.find(common.session_of(request), name or "")
        return *fill(str(path)), gr.Tabs(selected=text_to_image.TAB_ID)

    return on_reuse


def send_to(studio: StudioContext, targets: list[common.SendTarget]) -> Callable:
    """The picked result's image into the chosen tab's components (the others left as they are),
    and that tab shown."""

    def on_send(name: str | None, label: str | None, request: gr.Request):
        chosen = next((target for target in targets if target.label == label), None)
        if chosen is None:
            raise gr.Error("Pick the tab to send the image to.")
        with common.user_errors("Sending"):
            path = studio.history.find(common.session_of(request), name or "")
            with Image.open(path) as opened:
                image = opened.convert("RGB")
            try:
                settings = read_payload(path)
            except InvalidRequest:
                settings = {}
            filled = chosen.fill(image, settings)
        updates = [
            value
            for target in targets
            for value in (filled if target is chosen else [gr.update()] * len(target.components))
        ]
        return *updates, gr.Tabs(selected=chosen.tab_id)

    return on_send


def build(
    studio: StudioContext,
    demo: gr.Blocks,
    tab: gr.Tab,
    tabs: gr.Tabs,
    text_to_image_settings: list,
    targets: list[common.SendTarget],
) -> None:
    ui = layout(targets)
    on_load, on_refresh, on_select, on_delete = handlers(studio)
    demo.load(None, None, ui.owner, js=OWNER_SCRIPT)
    ui.owner.change(on_load, ui.owner, ui.gallery, api_visibility="private")
    refreshed = [ui.gallery, ui.settings, ui.picked]
    gr.on([ui.refresh.click, tab.select], on_refresh, None, refreshed, api_name="history")
    ui.gallery.select(on_select, None, [ui.settings, ui.picked], api_visibility="private")
    ui.delete.click(on_delete, ui.picked, refreshed, api_name="history_delete")
    ui.reuse.click(reuse_in_text_to_image(studio), ui.picked, [*text_to_image_settings, tabs], api_name="history_reuse")
    filled = [component for target in targets for component in target.components]
    ui.send.click(send_to(studio, targets), [ui.picked, ui.target], [*filled, tabs], api_name="history_send")
