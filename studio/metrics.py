"""The image-editing measures of ColorCtrl and its baselines: structure kept (Canny-SSIM between
source and result) and background kept (PSNR and SSIM outside the edited region)."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

# SSIM as Wang et al. (2004): an 11-tap Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, range 1.
_C1, _C2 = 0.01**2, 0.03**2


def _unit(image: Image.Image | np.ndarray) -> np.ndarray:
    """Float [0, 1] pixels of a PIL image, an integer (0-255) array or a float array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    array = np.asarray(image)
    return array / 255.0 if np.issubdtype(array.dtype, np.integer) else array.astype(np.float64)


def _checked(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """The mask as booleans, after checking that it and the images fit together."""
    if a.shape != b.shape:
        raise ValueError(f"the images differ in size: {a.shape} and {b.shape}")
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != a.shape[:2]:
        raise ValueError(f"the mask is {mask.shape}, the images {a.shape[:2]}")
    if not mask.any():
        raise ValueError("the mask selects no pixel to measure")
    return mask


def _blur(x: np.ndarray) -> np.ndarray:
    # Reflected borders give every pixel a full window, so a mask may reach the image's edge.
    return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of two [0, 1] float images (HxW or HxWxC), averaged over channels."""
    mean_a, mean_b = _blur(a), _blur(b)
    var_a, var_b = _blur(a * a) - mean_a**2, _blur(b * b) - mean_b**2
    covariance = _blur(a * b) - mean_a * mean_b
    value = ((2 * mean_a * mean_b + _C1) * (2 * covariance + _C2)) / (
        (mean_a**2 + mean_b**2 + _C1) * (var_a + var_b + _C2)
    )
    return value.mean(axis=-1) if value.ndim == 3 else value


def ssim(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM of two images, over the pixels where `mask` (HxW) is true if one is given."""
    a, b = _unit(a), _unit(b)
    mask = _checked(a, b, mask)
    values = ssim_map(a, b)
    return float(values.mean() if mask is None else values[mask].mean())


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB over the (masked) pixels of [0, 1] images; infinite for identical ones."""
    a, b = _unit(a), _unit(b)
    mask = _checked(a, b, mask)
    error = (a - b) ** 2
    mse = float(error.mean() if mask is None else error[mask].mean())
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def canny_ssim(source: Image.Image, result: Image.Image, low: int = 100, high: int = 200) -> float:
    """SSIM between the two images' Canny edge maps: how much of the structure the edit kept."""
    edges = [cv2.Canny(np.asarray(image.convert("L")), low, high) / 255.0 for image in (source, result)]
    return ssim(*edges)


def background_psnr(source: Image.Image, result: Image.Image, edit_mask: np.ndarray) -> float:
    """PSNR outside the edited region (`edit_mask` true where the edit may change pixels)."""
    return psnr(source, result, ~np.asarray(edit_mask, dtype=bool))


def background_ssim(source: Image.Image, result: Image.Image, edit_mask: np.ndarray) -> float:
    """SSIM outside the edited region; windows near its border still see the edit."""
    return ssim(source, result, ~np.asarray(edit_mask, dtype=bool))


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by `pixels` in every direction (a square neighbourhood)."""
    mask = np.asarray(mask, dtype=bool)
    if pixels <= 0:
        return mask
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
