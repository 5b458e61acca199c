"""The editing measures on drawn images with known answers."""

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from studio import metrics


def square(colour=(220, 40, 40), offset=0, size=64):
    image = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(image).rectangle([16 + offset, 16, 40 + offset, 40], fill=colour)
    return image


def test_identical_images_score_perfectly():
    image = square()
    assert metrics.psnr(image, image) == math.inf
    assert metrics.ssim(image, image) == pytest.approx(1.0)
    assert metrics.canny_ssim(image, image) == pytest.approx(1.0)


def test_a_uniform_offset_gives_the_analytic_psnr():
    a = np.full((32, 32, 3), 0.5)
    assert metrics.psnr(a, a + 0.1) == pytest.approx(20.0)


def test_ssim_of_flat_images_is_the_luminance_term():
    # No variance and no covariance: SSIM reduces to (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1)
    assert metrics.ssim(np.full((16, 16), 0.5), np.full((16, 16), 0.6)) == pytest.approx(expected)


def test_images_bytes_and_floats_measure_alike():
    source, result = square(), square(colour=(40, 80, 220))
    as_bytes = [np.asarray(image) for image in (source, result)]
    as_floats = [array / 255.0 for array in as_bytes]
    for measure in (metrics.psnr, metrics.ssim):
        expected = pytest.approx(measure(source, result))
        assert measure(*as_bytes) == expected and measure(*as_floats) == expected


def test_changes_inside_the_mask_leave_the_background_perfect():
    source = square()
    noisy = np.asarray(source).copy()
    mask = np.zeros((64, 64), bool)
    mask[16:41, 16:41] = True
    noisy[mask] = np.random.default_rng(0).integers(0, 255, (mask.sum(), 3))
    result = Image.fromarray(noisy)
    assert math.isfinite(metrics.psnr(source, result))
    assert metrics.background_psnr(source, result, mask) == math.inf
    # SSIM's window reaches 5 pixels past the change; away from it the background is untouched.
    assert metrics.background_ssim(source, result, metrics.dilate(mask, 6)) == pytest.approx(1.0)
    assert metrics.background_ssim(source, result, mask) < 1.0
    # A 0/1 mask means the same as a boolean one.
    as_bytes = mask.astype(np.uint8)
    assert metrics.background_ssim(source, result, as_bytes) == metrics.background_ssim(source, result, mask)


def test_canny_ssim_tells_recolouring_from_moving():
    source = square()
    assert metrics.canny_ssim(source, square(colour=(40, 80, 220))) > 0.9
    assert metrics.canny_ssim(source, square(offset=6)) < 0.8


def test_ssim_falls_with_blur():
    from PIL import ImageFilter

    image = square()
    blurred = image.filter(ImageFilter.GaussianBlur(3))
    assert 0 < metrics.ssim(image, blurred) < metrics.ssim(image, image)


def test_dilate_grows_by_the_asked_pixels():
    mask = np.zeros((9, 9), bool)
    mask[4, 4] = True
    assert metrics.dilate(mask, 2).sum() == 25 and metrics.dilate(mask, 0).sum() == 1


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="differ in size"):
        metrics.psnr(square(), square(size=32))
    with pytest.raises(ValueError, match="mask is"):
        metrics.background_psnr(square(), square(), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="mask is"):
        metrics.background_ssim(square(), square(), np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="differ in size"):
        metrics.canny_ssim(square(), square(size=32))
    with pytest.raises(ValueError, match="no pixel"):
        metrics.background_psnr(square(), square(), np.ones((64, 64), bool))
