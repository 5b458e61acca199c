"""Control images for ControlNet, made with OpenCV: canny edges, soft edge / scribble (from a
photo, or straight from strokes drawn on a canvas), and depth through a transformers model from
the hub when it is available.

Every function takes a PIL image and returns an RGB image of the same size: white structure on
black, as the ControlNets were trained on.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from studio.errors import InvalidRequest

DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


def _grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"))


def _rgb(single: np.ndarray) -> Image.Image:
    return Image.fromarray(single.astype(np.uint8)).convert("RGB")


def canny(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """Canny edges between the two hysteresis thresholds (0-255)."""
    if not 0 <= low <= high <= 255:
        raise InvalidRequest("Canny thresholds: 0 <= low <= high <= 255.")
    return _rgb(cv2.Canny(_grey(image), low, high))


def soft_edge(image: Image.Image, width: int = 3) -> Image.Image:
    """Scribble-like soft edges of a photo: edges of a smoothed image, thickened and blurred, so
    the ControlNet gets the outline without the texture."""
    smooth = cv2.GaussianBlur(_grey(image), (5, 5), 1.5)
    edges = cv2.Canny(smooth, 50, 150)
    thick = cv2.dilate(edges, np.ones((width, width), np.uint8))
    return _rgb(cv2.GaussianBlur(thick, (0, 0), max(0.5, width / 3)))


def scribble(strokes: Image.Image, threshold: int = 128) -> Image.Image:
    """Strokes drawn on a canvas as white on black, whichever way round they were drawn: the
    minority value (the strokes) becomes white. Transparent pixels of an RGBA canvas are empty."""
    if strokes.mode == "RGBA":
        alpha = np.asarray(strokes)[..., 3]
        if alpha.min() < 255:
            return _rgb(np.where(alpha > threshold, 255, 0))
    ink = _grey(strokes) < threshold
    if ink.mean() > 0.5:  # light strokes on a dark canvas
        ink = ~ink
    return _rgb(np.where(ink, 255, 0))


def depth(image: Image.Image, offline: bool) -> Image.Image:
    """Relative depth (near is bright) from Depth Anything V2 Small, or a clear message when the
    model is not in the local cache and the studio is offline."""
    from transformers import pipeline

    try:
        estimator = pipeline(
            "depth-estimation", model=DEPTH_MODEL, model_kwargs={"local_files_only": offline}, use_fast=True
        )
    except Exception:
        raise InvalidRequest(
            f"Depth needs {DEPTH_MODEL}, which is not in the local cache"
            + (" and the studio is offline" if offline else "")
            + f"; fetch it once with `hf download {DEPTH_MODEL}`."
        ) from None
    return estimator(image.convert("RGB"))["depth"].convert("RGB").resize(image.size)
