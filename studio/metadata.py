"""Settings carried inside PNG files (a JSON text chunk), so any result can be remade."""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import struct
import time
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from studio.errors import InvalidRequest
from studio.generation import GeneratedImage, GenerationSettings

PNG_KEY = "dit-studio"


def save_png(result: GeneratedImage, directory: Path) -> Path:
    payload = {**result.settings.to_dict(), "seconds": round(result.seconds, 3)}
    return save_image(result.image, payload, directory, f"{result.settings.model}-{result.settings.seed}")


def save_image(image: Image.Image, payload: dict, directory: Path, name: str) -> Path:
    """Save `image` as a new PNG in `directory` with `payload` in its text chunk. The file name
    ends in random characters (a result's address cannot be guessed from its time, model and
    seed), and the PNG is written to a temporary file first and renamed, so a crash never leaves
    half an image."""
    directory.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, json.dumps(payload))
    path = directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{secrets.token_hex(6)}.png"
    partial = path.with_name(f".{path.name}.partial")
    try:
        image.save(partial, format="PNG", pnginfo=info)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The studio's settings are a few KB; a text chunk far larger is no studio's.
MAX_TEXT_CHUNK = 1 << 20


def png_text(path: str | Path, key: str = PNG_KEY) -> str | None:
    """The text chunk `key` of a PNG, read chunk by chunk without decompressing the image (a
    236 KB PNG once cost 309 MiB to decode just to reach its text), or None."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                raise InvalidRequest("That file is not a PNG (only PNGs saved by the studio carry settings).")
            while header := handle.read(8):
                if len(header) < 8:
                    break
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"tEXt", b"iTXt") and length <= MAX_TEXT_CHUNK:
                    text = chunk_text(kind, handle.read(length), key)
                    if text is not None:
                        return text
                    handle.seek(4, 1)  # the CRC
                elif kind == b"IEND":
                    break
                else:
                    handle.seek(length + 4, 1)
    except OSError as error:
        raise InvalidRequest("That file is not an image the studio can read.") from error
    return None


def chunk_text(kind: bytes, data: bytes, key: str) -> str | None:
    """The text of a tEXt or (uncompressed) iTXt chunk whose keyword is `key`."""
    keyword, _, rest = data.partition(b"\0")
    if keyword.decode("latin-1") != key:
        return None
    if kind == b"tEXt":
        return rest.decode("latin-1")
    compressed = rest[:1] == b"\x01"
    if compressed:
        return None
    _, _, rest = rest[2:].partition(b"\0")  # language tag
    _, _, text = rest.partition(b"\0")  # translated keyword
    return text.decode("utf-8", errors="replace")


def read_settings(path: str | Path) -> GenerationSettings:
    """The settings stored in a studio PNG, or InvalidRequest if the file carries none."""
    data = read_payload(path)
    try:
        return GenerationSettings(
            model=str(data["model"]),
            prompt=str(data["prompt"]),
            negative_prompt=str(data.get("negative_prompt", "")),
            steps=int(data["steps"]),
            guidance=float(data["guidance"]),
            width=int(data["width"]),
            height=int(data["height"]),
            seed=int(data["seed"]),
            count=1,
            speed=str(data.get("speed", "off")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidRequest("The settings in that image are damaged and cannot be reused.") from error


# A mask carried in the settings: a 1-bit PNG, base64. Masks are the size of their image; a
# side beyond this is no studio image's.
MAX_MASK_SIDE = 4096


def encode_mask(mask: np.ndarray) -> str:
    """A boolean mask as text for the settings (a 1-bit PNG, base64: a few hundred bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).convert("1").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_mask(text: object, size: tuple[int, int]) -> np.ndarray:
    """A mask from the settings, checked to be a PNG of exactly `size` (width, height) before it is
    decoded; InvalidRequest otherwise."""
    try:
        data = base64.b64decode(str(text), validate=True)
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.size != tuple(size) or max(image.size) > MAX_MASK_SIDE:
                raise InvalidRequest("A mask in those settings does not match its image's size.")
            return np.asarray(image.convert("L")) > 127
    except (ValueError, OSError) as error:
        raise InvalidRequest("A mask in those settings is damaged and cannot be reused.") from error


def read_payload(path: str | Path) -> dict:
    """Everything a studio PNG's settings hold, as a dict, or InvalidRequest."""
    text = png_text(path)
    if not text:
        raise InvalidRequest("That image carries no DiT Studio settings (only PNGs saved by the studio do).")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidRequest("The settings in that image are damaged and cannot be reused.") from error
    if not isinstance(payload, dict):
        raise InvalidRequest("The settings in that image are damaged and cannot be reused.")
    return payload
