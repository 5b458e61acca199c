"""Settings carried inside PNG files (a JSON text chunk), so any result can be remade."""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image, PngImagePlugin

from studio.errors import InvalidRequest
from studio.generation import GeneratedImage, GenerationSettings

PNG_KEY = "dit-studio"


def save_png(result: GeneratedImage, directory: Path) -> Path:
    payload = {**result.settings.to_dict(), "seconds": round(result.seconds, 3)}
    return save_image(result.image, payload, directory, f"{result.settings.model}-{result.settings.seed}")


def save_image(image: Image.Image, payload: dict, directory: Path, name: str) -> Path:
    """Save `image` as a new PNG in `directory` with `payload` in its text chunk."""
    directory.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_KEY, json.dumps(payload))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{stamp}-{name}.png"
    counter = 1
    while path.exists():
        path = directory / f"{stamp}-{name}-{counter}.png"
        counter += 1
    image.save(path, pnginfo=info)
    return path


def read_settings(path: str | Path) -> GenerationSettings:
    """The settings stored in a studio PNG, or InvalidRequest if the file carries none."""
    try:
        with Image.open(path) as image:
            text = image.text.get(PNG_KEY) if hasattr(image, "text") else None
    except (OSError, ValueError) as error:
        raise InvalidRequest("That file is not an image the studio can read.") from error
    if not text:
        raise InvalidRequest("That image carries no DiT Studio settings (only PNGs saved by the studio do).")
    try:
        data = json.loads(text)
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
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise InvalidRequest("The settings in that image are damaged and cannot be reused.") from error
