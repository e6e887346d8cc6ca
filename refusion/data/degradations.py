"""Seeded synthetic degradations: clean image -> degraded image, for building paired datasets.

Every function is pure: `f(image, rng, **params) -> degraded`, with `image` float32 HWC RGB in
[0, 1], `rng` a `numpy.random.Generator` (the only source of randomness) and the result float32
HWC in [0, 1] of the same size. A parameter given as a pair `(low, high)` is drawn uniformly in
that range for each call; a single number is used as it is. Pixel-scale parameters (noise sigma)
are on the 0-255 scale as in the papers.

    shadow     soft-edged darkening masks with a colour cast (cast shadows are lit by blue skylight)
    noise      additive white Gaussian noise, sigma on the 0-255 scale
    blur       Gaussian blur or linear motion blur
    haze       atmospheric scattering I*t + A*(1-t) with a smooth, spatially varying transmission t
    rain       bright rain streaks blended with a screen blend
    low_light  gamma + exposure scale + sensor noise
    sr         super-resolution input: bicubic downscale by `scale`, then bicubic upscale to the
               original size, as the official IR-SDE sisr setting feeds the network (deterministic)

Rendering tasks change the clean image on both sides of the pair and describe how (``RENDERINGS``):
`f(image, rng, **params) -> (lq, gt, metadata)`.

    bokeh      one scene through two lenses (EBB! / NTIRE 2023 style): an in-focus subject over a
               background blurred by each lens's circle of confusion; metadata = (source lens, target
               lens, disparity) as the dataset's meta.txt lists them (refusion.data.lens)
"""

from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Param = Union[float, tuple]


def _draw(rng: np.random.Generator, value: Param, name: str) -> float:
    """A number as is, or a uniform draw from a (low, high) pair."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] <= value[1]:
        return float(rng.uniform(value[0], value[1]))
    raise ValueError(f"parameter {name}={value!r}: expected a number or a (low, high) pair with low <= high")


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype.kind != "f":
        raise ValueError(f"expected a float HxWx3 image in [0, 1], got {image.dtype} array of shape {image.shape}")
    return image.astype(np.float32, copy=False)


def _finish(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _smooth_field(rng: np.random.Generator, height: int, width: int, sigma: float) -> np.ndarray:
    """Low-frequency random field rescaled to [0, 1] (white noise through a wide Gaussian)."""
    field = ndimage.gaussian_filter(rng.standard_normal((height, width)), sigma=max(sigma, 0.5), mode="wrap")
    field -= field.min()
    return field / max(field.max(), 1e-12)


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A one-pixel-wide line of the given length and angle, bilinearly splatted; peak value about 1."""
    size = int(math.ceil(length)) | 1
    kernel = np.zeros((size, size), dtype=np.float64)
    centre = (size - 1) / 2
    dx, dy = math.cos(math.radians(angle_deg)), -math.sin(math.radians(angle_deg))
    for t in np.linspace(-(length - 1) / 2, (length - 1) / 2, max(int(4 * length), 2)):
        x, y = centre + t * dx, centre + t * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for yy, xx, w in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x0 + 1, fx * (1 - fy)),
                          (y0 + 1, x0, (1 - fx) * fy), (y0 + 1, x0 + 1, fx * fy)):
            if 0 <= yy < size and 0 <= xx < size:
                kernel[yy, xx] += w
    return kernel / kernel.sum() * length


def shadow(image: np.ndarray, rng: np.random.Generator, *, num_masks: Param = (1, 3),
           darkness: Param = (0.25, 0.6), softness: Param = (0.01, 0.06), color_cast: Param = (0.0, 0.2)) -> np.ndarray:
    """Cast shadows: random polygons, blurred to soft edges, that attenuate the light.

    num_masks: polygons (rounded down); darkness: fraction of the light left inside a shadow;
    softness: edge blur sigma as a fraction of the short side; color_cast: how much bluer the
    shadow is than the lit area (red attenuated by 1 - cast, blue by 1 + cast, relative).
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    short = min(height, width)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(max(1, int(_draw(rng, num_masks, "num_masks")))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.25, 0.6) * short
        corners = int(rng.integers(3, 8))
        # evenly spread corners with jitter: an irregular but never degenerate (sliver) polygon
        angles = (np.arange(corners) + rng.uniform(-0.3, 0.3, corners)) * (2 * np.pi / corners) + rng.uniform(0, 2 * np.pi)
        radii = radius * rng.uniform(0.6, 1.0, corners)
        draw.polygon([(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii)], fill=255)
    mask = ndimage.gaussian_filter(np.asarray(canvas, dtype=np.float64) / 255.0,
                                   sigma=_draw(rng, softness, "softness") * short, mode="nearest")
    cast = _draw(rng, color_cast, "color_cast")
    light = np.clip(_draw(rng, darkness, "darkness") * np.array([1 - cast, 1 - cast / 2, 1 + cast]), 0.0, 0.95)
    return _finish(image * (1.0 - mask[:, :, None] * (1.0 - light)))


def noise(image: np.ndarray, rng: np.random.Generator, *, sigma: Param = (10.0, 50.0)) -> np.ndarray:
    """Additive white Gaussian noise with standard deviation `sigma` / 255, then clipped to [0, 1]."""
    image = _check_image(image)
    level = _draw(rng, sigma, "sigma") / 255.0
    return _finish(image + level * rng.standard_normal(image.shape))


def blur(image: np.ndarray, rng: np.random.Generator, *, motion_probability: float = 0.5,
         sigma: Param = (0.8, 3.0), length: Param = (5.0, 17.0)) -> np.ndarray:
    """Gaussian blur (`sigma` pixels) or, with `motion_probability`, linear motion blur of
    `length` pixels at a uniform random angle. Reflect padding keeps the mean brightness."""
    image = _check_image(image)
    if rng.uniform() < motion_probability:
        kernel = _line_kernel(max(_draw(rng, length, "length"), 1.0), rng.uniform(0.0, 180.0))
        kernel /= kernel.sum()
        channels = [ndimage.convolve(image[:, :, c].astype(np.float64), kernel, mode="reflect") for c in range(3)]
        return _finish(np.stack(channels, axis=2))
    width = _draw(rng, sigma, "sigma")
    return _finish(ndimage.gaussian_filter(image.astype(np.float64), sigma=(width, width, 0), mode="reflect"))


def haze(image: np.ndarray, rng: np.random.Generator, *, min_transmission: Param = (0.2, 0.45),
         max_transmission: Param = (0.7, 0.95), airlight: Param = (0.75, 1.0),
         smoothness: Param = (0.08, 0.2), depth_weight: Param = (0.2, 0.6)) -> np.ndarray:
    """Non-homogeneous haze: I * t + A * (1 - t) (atmospheric scattering model).

    t spans [min_transmission, max_transmission]; it is a smooth random field (Gaussian width
    `smoothness` x the short side) mixed with a linear depth ramp in a random direction
    (`depth_weight`). A: grey-white airlight with a slight random tint.
    """
    image = _check_image(image)
    height, width = image.shape[:2]
    field = _smooth_field(rng, height, width, _draw(rng, smoothness, "smoothness") * min(height, width))
    direction = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = np.cos(direction) * xx / max(width - 1, 1) + np.sin(direction) * yy / max(height - 1, 1)
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-12)
    weight = _draw(rng, depth_weight, "depth_weight")
    density = (1 - weight) * field + weight * ramp
    t_low, t_high = _draw(rng, min_transmission, "min_transmission"), _draw(rng, max_transmission, "max_transmission")
    transmission = (t_high - (t_high - t_low) * density)[:, :, None]
    light = np.clip(_draw(rng, airlight, "airlight") * (1 + rng.uniform(-0.04, 0.04, 3)), 0.0, 1.0)
    return _finish(image * transmission + light * (1 - transmission))


def rain(image: np.ndarray, rng: np.random.Generator, *, density: Param = (0.002, 0.008),
         length: Param = (10.0, 30.0), angle: Param = (-20.0, 20.0), brightness: Param = (0.5, 0.9)) -> np.ndarray:
    """Rain streaks: `density` drops per pixel, drawn as lines of `length` pixels tilted by `angle`
    degrees from vertical, peak intensity `brightness`, screen-blended onto the image."""
    image = _check_image(image)
    height, width = image.shape[:2]
    drops = np.zeros((height, width), dtype=np.float64)
    count = int(round(_draw(rng, density, "density") * height * width))
    np.add.at(drops, (rng.integers(0, height, count), rng.integers(0, width, count)), rng.uniform(0.5, 1.0, count))
    kernel = _line_kernel(max(_draw(rng, length, "length"), 1.0), 90.0 + _draw(rng, angle, "angle"))
    streaks = ndimage.gaussian_filter(ndimage.convolve(drops, kernel, mode="wrap"), sigma=0.6, mode="wrap")
    layer = np.clip(streaks, 0.0, 1.0) * _draw(rng, brightness, "brightness")
    return _finish(1.0 - (1.0 - image) * (1.0 - layer[:, :, None]))


def low_light(image: np.ndarray, rng: np.random.Generator, *, gamma: Param = (1.5, 2.5),
              exposure: Param = (0.1, 0.4), noise_sigma: Param = (1.0, 6.0)) -> np.ndarray:
    """Under-exposure: exposure * I ** gamma plus Gaussian sensor noise (`noise_sigma` on 0-255)."""
    image = _check_image(image)
    dark = _draw(rng, exposure, "exposure") * np.power(image.astype(np.float64), _draw(rng, gamma, "gamma"))
    return _finish(dark + _draw(rng, noise_sigma, "noise_sigma") / 255.0 * rng.standard_normal(image.shape))


# lenses of the NTIRE 2023 Bokeh Effect Transformation data (names as its meta.txt writes them)
BOKEH_LENSES = ("Sony50mmf16.0BS", "Sony50mmf1.8BS", "Canon50mmf1.8BS", "Canon50mmf1.4BS")
# blur radius of the background in pixels per unit of disparity / f-number at a 256-pixel short side
BOKEH_RADIUS_SCALE = 0.3


def _lens_kernel(radius: float, maker: str) -> np.ndarray:
    """The circle of confusion of a lens: a uniform disk (Sony) or a disk brighter at its rim (Canon)."""
    size = int(math.ceil(radius))
    yy, xx = np.mgrid[-size:size + 1, -size:size + 1].astype(np.float64)
    rr = np.hypot(yy, xx)
    disk = np.clip(radius + 0.5 - rr, 0.0, 1.0)          # antialiased edge
    if maker.lower() == "canon":
        disk *= 0.6 + 0.4 * (rr / max(radius, 1e-6)) ** 2
    return disk / disk.sum()


def _subject_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A soft-edged ellipse: the in-focus subject (1) in front of the background (0)."""
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.2, 0.4) * height, rng.uniform(0.2, 0.4) * width
    yy, xx = np.mgrid[0:height, 0:width]
    distance = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    return np.clip((1.1 - distance) / 0.2, 0.0, 1.0)


def render_lens(image: np.ndarray, subject: np.ndarray, lens: str, disparity: float) -> np.ndarray:
    """``image`` seen through ``lens`` (a name of the ``<Maker>50mmf<N>`` form): the subject stays sharp,
    the background is blurred by a kernel of radius BOKEH_RADIUS_SCALE * disparity / N (at a 256-pixel
    short side); the background is blurred on its own (normalised by the blurred coverage) so the
    subject does not bleed into it."""
    from refusion.data.lens import LENS_SCALE, lens_value

    image = _check_image(image)
    f_number = abs(lens_value(lens)) / LENS_SCALE
    radius = BOKEH_RADIUS_SCALE * disparity / f_number * min(image.shape[:2]) / 256
    if radius < 0.5:
        return _finish(image)
    kernel = _lens_kernel(radius, lens[:5])
    background = (1.0 - subject)[:, :, None]
    blur = lambda a: np.stack([ndimage.convolve(a[:, :, c], kernel, mode="reflect")  # noqa: E731
                               for c in range(a.shape[2])], axis=2)
    blurred = blur(image * background) / np.maximum(blur(background), 1e-6)
    alpha = subject[:, :, None]
    return _finish(alpha * image + (1.0 - alpha) * blurred)


def bokeh(image: np.ndarray, rng: np.random.Generator, *, disparity: Param = (10.0, 60.0),
          lenses: tuple = BOKEH_LENSES) -> tuple[np.ndarray, np.ndarray, tuple[str, str, float]]:
    """The scene through a source lens (LQ) and a different target lens (GT), two of ``lenses``, at one
    ``disparity`` (rounded to an integer, as the NTIRE data lists it). Returns (lq, gt, (src, tgt, disparity))."""
    image = _check_image(image).astype(np.float64)
    if len(lenses) < 2:
        raise ValueError(f"parameter lenses={lenses!r}: expected at least two lens names")
    src, tgt = (lenses[int(i)] for i in rng.choice(len(lenses), size=2, replace=False))
    level = float(round(_draw(rng, disparity, "disparity")))
    subject = _subject_mask(rng, *image.shape[:2])
    return render_lens(image, subject, src, level), render_lens(image, subject, tgt, level), (src, tgt, level)


def downscale(image: np.ndarray, rng: np.random.Generator, *, scale: int = 4) -> np.ndarray:
    """Bicubic downscale by ``scale`` (antialiased, as MATLAB's imresize makes the official training LQ),
    then bicubic upscale back to the input size (the official sisr ``util.upscale``, i.e. torch's
    ``F.interpolate(mode="bicubic")``), so LQ and GT have one size. ``rng`` is unused: the degradation
    is deterministic."""
    import torch
    import torch.nn.functional as F

    image = _check_image(image)
    height, width = image.shape[:2]
    if not isinstance(scale, int) or scale < 2 or height % scale or width % scale:
        raise ValueError(f"downscale: scale={scale!r} must be an integer >= 2 dividing the image size {width}x{height}")
    small = np.stack([np.asarray(Image.fromarray(image[:, :, c], mode="F").resize(
        (width // scale, height // scale), Image.Resampling.BICUBIC)) for c in range(3)], axis=2)
    up = F.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], scale_factor=scale, mode="bicubic")
    return _finish(up[0].permute(1, 2, 0).numpy())


DEGRADATIONS: dict[str, Callable[..., np.ndarray]] = {
    "shadow": shadow,
    "noise": noise,
    "blur": blur,
    "haze": haze,
    "rain": rain,
    "lowlight": low_light,
    "sr": downscale,
}
# degradations that draw nothing from rng: the same image always gives the same result
DETERMINISTIC = ("sr",)


RENDERINGS: dict[str, Callable[..., tuple]] = {
    "bokeh": bokeh,
}
TASKS = (*DEGRADATIONS, *RENDERINGS)   # what tools/make_dataset.py --task takes


def degrade(task: str, image: np.ndarray, rng: np.random.Generator, **params) -> np.ndarray:
    """Apply the degradation named `task` (a key of DEGRADATIONS)."""
    if task not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {task!r}; choose from {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[task](image, rng, **params)
