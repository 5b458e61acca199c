"""The studio as an MCP tool server: an MCP client (the `mcp` package) lists the studio's tools and
calls them over Streamable HTTP, offline, on the shapes-world model."""

import asyncio
import base64
import io

import pytest
from PIL import Image

from studio.toyworld.colour_eval import score
from studio.toyworld.measure import centroid, colour_mask, largest_blob
from studio.toyworld.scene import POSITIONS


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory):
    import socket

    from support import serve

    from studio.cli import create_studio, parse_args
    from tabs.app import build_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = tmp_path_factory.mktemp("mcp-outputs")
    args = parse_args(["--offline", "--output-dir", str(output), "--port", str(port), "--mcp"])
    demo = build_app(create_studio(args), mcp=True)
    try:
        url = serve(demo, port, mcp_server=True)
        yield f"{url}gradio_api/mcp/"
    finally:
        demo.close()


def session(url, work):
    """Runs `work(client_session)` on a fresh MCP session to the studio."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def main():
        async with streamablehttp_client(url) as (read, write, _), ClientSession(read, write) as client:
            await client.initialize()
            return await work(client)

    return asyncio.run(main())


def image_and_text(result):
    images = [part for part in result.content if part.type == "image"]
    texts = [part.text for part in result.content if part.type == "text"]
    picture = Image.open(io.BytesIO(base64.b64decode(images[0].data))).convert("RGB") if images else None
    return picture, texts


def test_an_mcp_client_lists_the_studios_tools_described_from_their_settings(mcp_url):
    async def work(client):
        return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in session(mcp_url, work)}
    assert {"generate", "colour_edit", "layout", "drag_edit", "try_on", "image_set", "multi_prompt_video"} <= set(tools)
    # Only the tools: the page's own endpoints (cancel buttons, previews) are not offered.
    assert not any(name.startswith(("on_", "_lambda")) for name in tools)
    colour = tools["colour_edit"]
    assert "ColorCtrl" in colour.description and "Intensity of the new colour word" in colour.description
    settings = colour.inputSchema["properties"]["settings"]
    assert settings["required"] == ["source_prompt", "target_prompt", "word"]
    intensity = settings["properties"]["intensity"]
    assert (intensity["type"], intensity["minimum"], intensity["maximum"]) == ("number", 0.2, 3.0)
    assert "shapes-flux" in settings["properties"]["model"]["enum"]
    assert set(tools["try_on"].inputSchema["properties"]) == {"settings", "person", "garment", "mask"}


def test_an_mcp_client_draws_and_recolours_through_the_tools(mcp_url):
    request = {"model": "shapes-flux", "prompt": "a large red circle on the left, gray background", "seed": 3}
    edit = {
        "model": "shapes-flux",
        "source_prompt": request["prompt"],
        "target_prompt": "a large blue circle on the left, gray background",
        "word": "circle",
        "seed": 3,
        "steps": 24,
        "guidance": 3.0,
    }

    async def work(client):
        drawn = await client.call_tool("generate", {"settings": request})
        recoloured = await client.call_tool("colour_edit", {"settings": edit})
        out_of_range = await client.call_tool("generate", {"settings": {"prompt": "a red circle", "steps": 0}})
        video_model = {"prompt": "a red circle", "model": "moving-shapes-cogvideox"}
        refused = await client.call_tool("generate", {"settings": video_model})
        return drawn, recoloured, out_of_range, refused

    drawn, recoloured, out_of_range, refused = session(mcp_url, work)
    assert not drawn.isError and not recoloured.isError
    first, _ = image_and_text(drawn)
    assert first.size == (64, 64)
    blob = largest_blob(colour_mask(first, "red"))
    assert blob.sum() > 50 and abs(centroid(blob)[0] - POSITIONS["left"][0]) < 0.15
    second, _ = image_and_text(recoloured)
    measured = score(first, second, "red", "blue", "gray")
    assert measured is not None and measured.iou >= 0.85 and measured.hue_error <= 30
    # The schema's ranges are checked by the client's server before the call; a job the studio
    # refuses is an error with its sentence, no image.
    assert out_of_range.isError and "less than the minimum of 1" in out_of_range.content[0].text
    assert refused.isError and [part.type for part in refused.content] == ["text"]
    assert "video" in refused.content[0].text


def test_a_tool_job_ends_finished_failed_or_cancelled_and_says_which(running_app):
    """Through the same endpoints over HTTP: a finished job gives its image; a cancelled one an
    error saying it was cancelled and nothing was made (never an image, never 'done')."""
    import time

    client, output_dir = running_app
    finished = client.predict({"prompt": "a red circle", "steps": 2}, api_name="/tool_generate")
    assert Image.open(finished).size == (64, 64)
    (saved,) = output_dir.rglob("*generate-1-*.png")  # kept with its settings, like every tab's
    assert '"method": "tool: generate"' in Image.open(saved).info["dit-studio"]
    job = client.submit({"prompt": "a red circle", "steps": 100, "width": 512, "height": 512},
                        api_name="/tool_generate")  # fmt: skip
    time.sleep(1.0)
    client.predict(api_name="/cancel")
    with pytest.raises(Exception, match="cancelled: generate was stopped before it finished; nothing was made"):
        job.result(timeout=120)
    with pytest.raises(Exception, match="settings is not valid JSON|settings must be a JSON object"):
        client.predict("[1, 2]", api_name="/tool_generate")
