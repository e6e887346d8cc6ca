"""Each synthetic degradation moves the image in the physically expected direction."""

from __future__ import annotations

import numpy as np
import pytest

from refusion.data import degradations as D


def photo(size=96, seed=0) -> np.ndarray:
    """A smooth colourful test image with edges (mid-range values so clipping rarely bites)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    base = np.stack([0.5 + 0.3 * np.sin(6 * xx + 1), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0.2 * (xx > 0.5)], axis=2)
    return np.clip(base + 0.02 * rng.standard_normal(base.shape), 0, 1).astype(np.float32)


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("task", sorted(D.DEGRADATIONS))
def test_shape_range_and_determinism(task):
    image = photo()
    first = D.degrade(task, image, rng(1))
    assert first.shape == image.shape and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, D.degrade(task, image, rng(1)))
    # a random degradation depends on the generator; a deterministic one (sr) must not
    assert np.array_equal(first, D.degrade(task, image, rng(2))) == (task in D.DETERMINISTIC)
    assert np.abs(first - image).mean() > 1e-3


def test_shadow_darkens_with_bluish_cast():
    image = photo()
    out = D.shadow(image, rng(3), darkness=0.4, color_cast=0.2, softness=0.02)
    assert (out <= image + 1e-6).all()
    ratio = out / np.maximum(image, 1e-6)
    inside = ratio[:, :, 1] < 0.45  # deep inside a mask the green light left is 0.4 * 0.9
    assert inside.mean() > 0.05
    np.testing.assert_allclose(ratio[inside].mean(0), 0.4 * np.array([0.8, 0.9, 1.2]), atol=0.02)
    assert (np.abs(ratio - 1) < 1e-6).all(axis=2).mean() > 0.1  # lit area untouched
    partial = (ratio[:, :, 1] > 0.45) & (ratio[:, :, 1] < 0.99)
    assert partial.mean() > 0.01  # soft edges: a penumbra between shadow and light


def test_noise_has_the_requested_std():
    gray = np.full((192, 192, 3), 0.5, np.float32)
    out = D.noise(gray, rng(4), sigma=25)
    residual = (out - gray) * 255
    assert abs(residual.std() - 25) < 0.5 and abs(residual.mean()) < 0.3
    low, high = D.noise(gray, rng(4), sigma=(10, 10)), D.noise(gray, rng(4), sigma=(40, 40))
    assert ((high - gray).std() / (low - gray).std()) == pytest.approx(4, rel=0.03)


def test_blur_keeps_mean_and_removes_detail():
    image = photo()
    for probability in (0.0, 1.0):
        out = D.blur(image, rng(5), motion_probability=probability, sigma=2.0, length=11)
        assert abs(out.mean() - image.mean()) < 2e-3
        detail = lambda a: np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
        assert detail(out) < 0.6 * detail(image)


def test_motion_blur_spreads_a_point_into_a_line():
    dot = np.zeros((41, 41, 3), np.float32)
    dot[20, 20] = 1.0
    out = D.blur(dot, rng(6), motion_probability=1.0, length=15)[:, :, 0]
    rows, cols = np.nonzero(out > 1e-4)
    extent = np.hypot(rows.max() - rows.min(), cols.max() - cols.min())
    assert 13 <= extent <= 19
    assert out.sum() == pytest.approx(1.0, abs=1e-4)


def test_haze_is_scattering_with_varying_transmission():
    params = dict(min_transmission=0.3, max_transmission=0.8, airlight=0.9)
    black, white = np.zeros((96, 96, 3), np.float32), np.ones((96, 96, 3), np.float32)
    on_black, on_white = D.haze(black, rng(7), **params), D.haze(white, rng(7), **params)
    transmission = on_white - on_black  # I*t + A*(1-t) at I=1 minus at I=0 is t
    assert transmission.min() >= 0.3 - 1e-5 and transmission.max() <= 0.8 + 1e-5
    assert transmission.std() > 0.05  # non-homogeneous
    np.testing.assert_allclose(transmission[:, :, 0], transmission[:, :, 2], atol=1e-5)
    assert on_black.min() > 0.9 * 0.96 * 0.2 - 1e-3  # dark pixels are lifted by the airlight
    image = photo()
    out = D.haze(image, rng(7), **params)
    assert out.std() < image.std() and np.percentile(out, 2) > np.percentile(image, 2)


def test_rain_adds_bright_near_vertical_streaks():
    image = photo()
    out = D.rain(image, rng(8), density=0.004, brightness=0.8, angle=0.0, length=20)
    assert (out >= image - 1e-6).all()
    changed = (out - image > 0.05).mean()
    assert 0.02 < changed < 0.6
    layer = D.rain(np.zeros_like(image), rng(8), density=0.004, brightness=0.8, angle=0.0, length=20)[:, :, 0]
    vertical, horizontal = np.abs(np.diff(layer, axis=0)).mean(), np.abs(np.diff(layer, axis=1)).mean()
    assert vertical < 0.5 * horizontal


def test_low_light_is_gamma_and_exposure():
    image = photo()
    out = D.low_light(image, rng(9), gamma=2.0, exposure=0.25, noise_sigma=0.0)
    np.testing.assert_allclose(out, 0.25 * image.astype(np.float64) ** 2, atol=1e-6)
    noisy = D.low_light(image, rng(9))
    assert noisy.mean() < 0.35 * image.mean()


def test_parameter_and_input_validation():
    with pytest.raises(ValueError, match=r"parameter sigma=\(5, 1\)"):
        D.noise(photo(), rng(), sigma=(5, 1))
    with pytest.raises(ValueError, match="expected a float HxWx3 image"):
        D.noise((photo() * 255).astype(np.uint8), rng())
    with pytest.raises(ValueError, match="unknown degradation 'fog'"):
        D.degrade("fog", photo(), rng())


def test_sr_is_bicubic_down_then_up_and_keeps_only_low_frequencies():
    import torch
    import torch.nn.functional as F
    from PIL import Image

    image = photo(size=96)
    out = D.downscale(image, rng(0), scale=4)
    small = np.stack([np.asarray(Image.fromarray(image[:, :, c], mode="F").resize((24, 24), Image.Resampling.BICUBIC))
                      for c in range(3)], axis=2)
    expected = F.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], scale_factor=4, mode="bicubic")
    np.testing.assert_allclose(out, np.clip(expected[0].permute(1, 2, 0).numpy(), 0, 1), atol=1e-6)
    detail = lambda img: np.abs(np.diff(img, axis=1)).mean()  # noqa: E731
    assert detail(out) < 0.8 * detail(image) and abs(out.mean() - image.mean()) < 5e-3
    with pytest.raises(ValueError, match="scale=3 must be an integer >= 2 dividing the image size 95x96"):
        D.downscale(image[:, :95], rng(0), scale=3)
