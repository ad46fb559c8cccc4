"""Physically plausible synthetic defocus data, so that pre-training on it teaches real defocus cues.

A scene is a stack of depth layers (a full-frame background, optionally a slanted plane, and textured
occluding shapes in front). Each layer's circle of confusion (CoC) follows a thin-lens model: the signed
CoC is linear in inverse depth, c = K * (1/d - 1/d_focus), so the layers are ordered by their signed CoC
and the in-focus layers form one contiguous depth band. Rendering works in linear light:

- textures are dead-leaves images (occluding disks and polygons with power-law sizes, which gives the
  1/f^2 spectrum and scale invariance of natural images) with fine 1/f grain and a few bright highlights
  that turn into bokeh discs, or crops of real photos when a folder of them is given;
- each layer's premultiplied colour and its alpha are blurred together by a disk (pillbox) PSF of the
  layer's CoC radius, then layers are composited back to front ("over"), which is occlusion-aware:
  no halos, and a blurred occluder spreads over a sharp background as a real lens does;
- sensor noise (signal-dependent shot noise plus read noise) is added in linear light, then the image is
  gamma-encoded and JPEG-compressed.

The mask is derived exactly from the layers: 1 where the visible (front-most opaque) layer's CoC radius
exceeds `coc_threshold`. Discrete layers keep a margin (sharp <= threshold < min_blur_radius <= blurred),
so their labels are unambiguous; a slanted plane crosses the threshold continuously.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dbdgan.data.imageio import DEFAULT_MAX_PIXELS, load_rgb

RADIUS_STEP = 0.5  # CoC radii are quantised to this grid so disk kernels and their FFTs are cached
GAMMA = 2.2
_TO_LINEAR = (torch.arange(256, dtype=torch.float32) / 255.0).pow(GAMMA)  # sRGB uint8 -> linear lookup
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class SyntheticOptions:
    """Knobs of the generator; every range is (low, high), radii in pixels at the output size."""

    num_images: int = 1000
    size: int = 320
    coc_threshold: float = 1.0  # mask = 1 where the visible layer's CoC radius is above this
    min_blur_radius: float = 2.0  # blurred layers get radii in [min_blur_radius, max_blur_radius]
    max_blur_radius: float = 10.0
    min_layers: int = 2
    max_layers: int = 4
    all_sharp_fraction: float = 0.1
    all_blurred_fraction: float = 0.1
    slanted_fraction: float = 0.3  # share of scenes whose background is a slanted plane (continuous CoC)
    noise_std: tuple[float, float] = (0.0005, 0.008)  # Gaussian read noise, linear [0, 1] units
    shot_noise: tuple[float, float] = (0.0, 0.004)  # variance gain per unit signal (photon noise)
    jpeg_quality: tuple[int, int] = (70, 95)
    texture_dir: str | None = None  # folder of all-in-focus photos used as layer textures
    photo_fraction: float = 0.5  # share of layers textured from photos when texture_dir is set

    def __post_init__(self) -> None:
        for name in ("noise_std", "shot_noise", "jpeg_quality"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.texture_dir is not None:
            object.__setattr__(self, "texture_dir", str(self.texture_dir))
        problems = []
        if self.num_images < 1:
            problems.append(f"num_images={self.num_images} must be >= 1")
        if self.size < 16:
            problems.append(f"size={self.size} must be >= 16")
        if not 0 <= self.coc_threshold < self.min_blur_radius <= self.max_blur_radius:
            problems.append(
                "need 0 <= coc_threshold < min_blur_radius <= max_blur_radius, got "
                f"{self.coc_threshold}, {self.min_blur_radius}, {self.max_blur_radius}"
            )
        if not 2 <= self.min_layers <= self.max_layers:
            problems.append(f"need 2 <= min_layers <= max_layers, got {self.min_layers}, {self.max_layers}")
        fractions = (
            self.all_sharp_fraction,
            self.all_blurred_fraction,
            self.slanted_fraction,
            self.photo_fraction,
        )
        if any(not 0 <= f <= 1 for f in fractions) or self.all_sharp_fraction + self.all_blurred_fraction > 1:
            problems.append("fractions must lie in [0, 1] and all_sharp + all_blurred <= 1")
        for name in ("noise_std", "shot_noise", "jpeg_quality"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                problems.append(f"{name}={getattr(self, name)} must be an increasing non-negative range")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            problems.append(f"jpeg_quality={self.jpeg_quality} must lie in [1, 100]")
        if problems:
            raise ValueError("invalid SyntheticOptions: " + "; ".join(problems))

    @classmethod
    def from_any(cls, value: SyntheticOptions | dict[str, Any] | None) -> SyntheticOptions:
        """Accept an instance, a plain dict (e.g. from params.yaml) or None (defaults); unknown keys raise."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown synthetic option(s) {unknown}; known: {sorted(known)}")
        return cls(**value)


@dataclass
class SyntheticSample:
    image: np.ndarray  # uint8 [H, W, 3], exactly the pixels of `encoded`
    mask: np.ndarray  # uint8 [H, W] in {0, 1}, 1 = blurred
    encoded: bytes  # the JPEG file
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- PSF


@lru_cache(maxsize=128)
def disk_kernel(radius: float) -> np.ndarray:
    """Pillbox PSF of a given CoC radius: flat inside the disk, area-weighted at its rim, sums to 1."""
    if radius <= 0:
        return np.ones((1, 1), dtype=np.float32)
    half = math.ceil(radius)
    sub = 8  # supersampling per pixel axis for the rim coverage
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    grid = np.arange(-half, half + 1)
    fine = (grid[:, None] + offsets[None, :]).reshape(-1)
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius**2
    coverage = inside.reshape(2 * half + 1, sub, 2 * half + 1, sub).mean(axis=(1, 3))
    kernel = (coverage / coverage.sum()).astype(np.float32)
    kernel.setflags(write=False)
    return kernel


def quantise_radius(radius: float) -> float:
    return round(radius / RADIUS_STEP) * RADIUS_STEP


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT sizes that pocketfft handles fastest."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


_KERNEL_FFT: dict[tuple[float, int, int], torch.Tensor] = {}


def _kernel_fft(radius: float, rows: int, cols: int) -> torch.Tensor:
    key = (radius, rows, cols)
    cached = _KERNEL_FFT.get(key)
    if cached is None:
        kernel = torch.from_numpy(disk_kernel(radius).copy())
        half = kernel.shape[0] // 2
        frame = torch.zeros(rows, cols)
        frame[: kernel.shape[0], : kernel.shape[1]] = kernel
        frame = torch.roll(frame, shifts=(-half, -half), dims=(0, 1))  # centre the PSF on the origin
        cached = torch.fft.rfft2(frame)
        if len(_KERNEL_FFT) > 256:
            _KERNEL_FFT.clear()
        _KERNEL_FFT[key] = cached
    return cached


def disk_blur_many(channels: torch.Tensor, radii: list[float]) -> torch.Tensor:
    """Convolve [C, H, W] with the disk PSF of each radius -> [len(radii), C, H, W].

    Reflect padding (no dark frame border, no wrap-around) and one forward FFT shared by all radii.
    """
    _, height, width = channels.shape
    biggest = max(radii)
    if biggest <= 0:
        return channels[None].expand(len(radii), *channels.shape)
    reach = math.ceil(biggest) + 1
    pad = min(reach, height - 1, width - 1)  # reflect padding cannot exceed the frame
    padded = F.pad(channels[None], (pad, pad, pad, pad), mode="reflect")[0]
    # FFT frames long enough that circular wrap-around only ever reads the zero tail.
    rows = _fast_len(max(height + pad + reach, 2 * reach))
    cols = _fast_len(max(width + pad + reach, 2 * reach))
    spectrum = torch.fft.rfft2(padded, s=(rows, cols))
    kernels = torch.stack([_kernel_fft(r, rows, cols) for r in radii])[:, None]
    out = torch.fft.irfft2(spectrum[None] * kernels, s=(rows, cols))
    return out[:, :, pad : pad + height, pad : pad + width]


def disk_blur(channels: torch.Tensor, radius: float) -> torch.Tensor:
    """Convolve [C, H, W] with the disk PSF of `radius` (radius 0 = identity)."""
    if radius <= 0:
        return channels
    return disk_blur_many(channels, [radius])[0]


# ------------------------------------------------------------------------------------------ textures


def _palette(rng: np.random.Generator) -> np.ndarray:
    """A few related base colours (sRGB, 0..1): natural scenes have limited, correlated palettes."""
    count = int(rng.integers(2, 6))
    hue = rng.random() + rng.normal(0, 0.08, count)
    sat = np.clip(rng.beta(1.5, 2.5, count) * rng.uniform(0.4, 1.0), 0, 1)
    val = np.clip(rng.beta(2.5, 2.0, count), 0.05, 1)
    hsv = np.stack([hue % 1.0, sat, val], axis=1)
    image = Image.fromarray((hsv[None] * 255).astype(np.uint8), "HSV").convert("RGB")
    return np.asarray(image, dtype=np.float32)[0] / 255.0


def _leaf_colours(rng: np.random.Generator) -> np.ndarray:
    """256 leaf colours (uint8 RGB) varied around a small palette, as a PIL palette."""
    palette = _palette(rng)
    choice = rng.integers(0, len(palette), 256)
    gain = np.exp(rng.normal(0, 0.35, 256))[:, None]
    colours = np.clip(palette[choice] * gain + rng.normal(0, 0.04, (256, 3)), 0, 1)
    return (colours * 255).astype(np.uint8)


def _dead_leaves(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Dead-leaves texture, uint8 [H, W, 3]: occluding ellipses/polygons with radius density ~ r^-3.

    Leaves are drawn as palette indices ("P" mode, integer fills), which is several times faster in PIL
    than RGB fills; the palette then maps them to colours.
    """
    r_min, r_max = 2.5, max(8.0, 0.35 * max(height, width))
    mean_area = math.pi * 2 * math.log(r_max / r_min) / (r_min**-2 - r_max**-2)
    count = int(1.3 * height * width / mean_area) + 8
    u = rng.random(count)
    radii = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
    cx = rng.uniform(-r_min, width + r_min, count)
    cy = rng.uniform(-r_min, height + r_min, count)
    ink = rng.integers(1, 256, count).tolist()
    ry = radii * rng.uniform(0.5, 1.0, count)
    boxes = np.stack([cx - radii, cy - ry, cx + radii, cy + ry], axis=1).tolist()
    polygon = (rng.random(count) < 0.25).tolist()
    sides = rng.integers(3, 7, count).tolist()
    theta = rng.uniform(0, 2 * math.pi, count)[:, None] + np.arange(6)[None, :] * (2 * math.pi / 6)
    # Vertices of every leaf as a polygon with up to 6 sides (only the first `sides` are used); a
    # polygon with n sides uses angles 2*pi*k/n, so rescale the 6-step grid per leaf.
    step = 2 * math.pi / np.asarray(sides, dtype=np.float64)[:, None]
    theta = theta[:, :1] + np.arange(6)[None, :] * step
    r_poly = np.maximum(radii, 1.5)[:, None]
    xs = (cx[:, None] + r_poly * np.cos(theta)).tolist()
    ys = (cy[:, None] + r_poly * np.sin(theta)).tolist()
    canvas = Image.new("P", (width, height), 0)
    canvas.putpalette(_leaf_colours(rng).tobytes())
    draw = ImageDraw.Draw(canvas)
    for i in range(count):
        if polygon[i]:
            n = sides[i]
            draw.polygon(list(zip(xs[i][:n], ys[i][:n], strict=True)), fill=ink[i])
        else:
            draw.ellipse(boxes[i], fill=ink[i])
    return np.asarray(canvas.convert("RGB"))


def _pink_noise(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    """Zero-mean, unit-std noise with a 1/f amplitude spectrum: fine grain with natural statistics."""
    white = torch.from_numpy(rng.standard_normal((height, width), dtype=np.float32))
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    spectrum = torch.fft.rfft2(white) / torch.sqrt(fy**2 + fx**2).clamp_min(1.0 / max(height, width))
    field_ = torch.fft.irfft2(spectrum, s=(height, width))
    return (field_ - field_.mean()) / field_.std(correction=0).clamp_min(1e-6)


@lru_cache(maxsize=1)
def _photo_files(texture_dir: str) -> tuple[Path, ...]:
    root = Path(texture_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"synthetic texture_dir {root} is not a directory")
    files = tuple(sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file()))
    if not files:
        raise FileNotFoundError(f"synthetic texture_dir {root} holds no images ({', '.join(PHOTO_EXTENSIONS)})")
    return files


@lru_cache(maxsize=32)
def _photo(path: Path) -> Image.Image:
    return Image.fromarray(load_rgb(path, DEFAULT_MAX_PIXELS))


def _photo_texture(rng: np.random.Generator, height: int, width: int, texture_dir: str) -> np.ndarray | None:
    """A random crop of a real photo, downscaled (never upscaled by more than 10%, which would soften it)."""
    files = _photo_files(texture_dir)
    photo = _photo(files[int(rng.integers(len(files)))])
    scale = max(height / photo.height, width / photo.width, rng.uniform(0.35, 1.0))
    if scale > 1.1:
        return None
    new_w, new_h = max(width, round(photo.width * scale)), max(height, round(photo.height * scale))
    left, top = int(rng.integers(0, new_w - width + 1)), int(rng.integers(0, new_h - height + 1))
    box = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
    crop = photo.resize((width, height), Image.Resampling.BILINEAR, box=box)
    array = np.asarray(crop)
    return array[:, ::-1] if rng.random() < 0.5 else array


def _texture(
    rng: np.random.Generator, height: int, width: int, opts: SyntheticOptions, grain_field: torch.Tensor
) -> torch.Tensor:
    """Linear-light texture [3, H, W] (values may exceed 1 at highlights, like a real HDR scene).

    `grain_field` is the image's shared 1/f noise, at least H x W; each layer takes a random window of it.
    """
    srgb = None
    if opts.texture_dir is not None and rng.random() < opts.photo_fraction:
        srgb = _photo_texture(rng, height, width, opts.texture_dir)
    synthetic = srgb is None
    if synthetic:
        srgb = _dead_leaves(rng, height, width)
    linear = _TO_LINEAR[torch.from_numpy(np.ascontiguousarray(srgb.transpose(2, 0, 1))).long()]
    if synthetic:
        top = int(rng.integers(0, grain_field.shape[0] - height + 1))
        left = int(rng.integers(0, grain_field.shape[1] - width + 1))
        grain = float(rng.uniform(0.02, 0.12)) * grain_field[top : top + height, left : left + width]
        shading = _smooth_ramp(rng, height, width, float(rng.uniform(0, 0.5)))
        linear *= (1.0 + grain).clamp_min(0.0) * shading
    if rng.random() < 0.35:  # point highlights: after defocus they become bright disks (bokeh)
        spots = int(rng.integers(3, 25))
        ys = rng.integers(0, height, spots)
        xs = rng.integers(0, width, spots)
        linear[:, ys, xs] = torch.from_numpy(rng.uniform(2.0, 12.0, (3, spots)).astype(np.float32))
    return linear


def _smooth_ramp(rng: np.random.Generator, height: int, width: int, strength: float) -> torch.Tensor:
    """Smooth illumination falloff in [1 - strength, 1]."""
    angle = rng.uniform(0, 2 * math.pi)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    t = math.cos(angle) * xs + math.sin(angle) * ys
    t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-6)
    return 1.0 - strength * t


# -------------------------------------------------------------------------------------------- shapes


def _shape_alpha(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Anti-aliased occupancy [H, W] in [0, 1] of one occluding object: a union of 1-3 random shapes."""
    ss = 2  # supersampling for anti-aliased edges
    canvas = Image.new("L", (width * ss, height * ss), 0)
    draw = ImageDraw.Draw(canvas)
    span = min(height, width) * ss
    cx, cy = rng.uniform(0.1, 0.9) * width * ss, rng.uniform(0.1, 0.9) * height * ss
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.random()
        size = span * rng.uniform(0.12, 0.4)
        x, y = cx + rng.normal(0, 0.15 * span), cy + rng.normal(0, 0.15 * span)
        if kind < 0.45:  # star-convex blob: smooth organic outline
            theta = np.linspace(0, 2 * math.pi, 96, endpoint=False)
            radius = np.ones_like(theta)
            for harmonic in range(2, 6):
                radius += rng.normal(0, 0.25 / harmonic) * np.cos(harmonic * theta + rng.uniform(0, 2 * math.pi))
            radius = size * np.clip(radius, 0.3, None)
            points = np.stack([x + radius * np.cos(theta), y + radius * np.sin(theta)], axis=1)
            draw.polygon([tuple(p) for p in points.tolist()], fill=255)
        elif kind < 0.7:  # rotated box: man-made objects
            angle = rng.uniform(0, math.pi)
            half = np.array([size * rng.uniform(0.3, 1.0), size * rng.uniform(0.3, 1.0)])
            corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
            rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
            points = corners @ rot.T + [x, y]
            draw.polygon([tuple(p) for p in points.tolist()], fill=255)
        elif kind < 0.85:  # thin elongated structure: poles, stems, branches
            angle = rng.uniform(0, math.pi)
            length = span * rng.uniform(0.4, 1.2)
            dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
            draw.line((x - dx, y - dy, x + dx, y + dy), fill=255, width=max(2, int(size * rng.uniform(0.05, 0.2))))
        else:
            rx, ry = size, size * rng.uniform(0.4, 1.0)
            draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)
    small = canvas.reduce(ss)
    return np.asarray(small, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------- scene


def _signed_cocs(rng: np.random.Generator, layers: int, scenario: str, opts: SyntheticOptions) -> np.ndarray:
    """Signed CoC per layer, back to front (non-decreasing: nearer layers have larger inverse depth)."""
    thr, lo, hi = opts.coc_threshold, opts.min_blur_radius, opts.max_blur_radius

    def blurred(n: int) -> np.ndarray:
        return np.sort(np.exp(rng.uniform(math.log(lo), math.log(hi), n)))

    def sharp(n: int) -> np.ndarray:
        return np.sort(rng.uniform(-thr, thr, n))

    if scenario == "all-sharp":
        return sharp(layers)
    if scenario == "all-blurred":
        if rng.random() < 0.5:
            return blurred(layers)  # focus beyond the scene: nearer layers blur more
        return -blurred(layers)[::-1]  # focus in front of the scene: farther layers blur more
    first = int(rng.integers(0, layers))  # contiguous band of in-focus layers [first, last]
    last = int(rng.integers(first, layers))
    if first == 0 and last == layers - 1:  # make sure the scene is mixed
        first, last = (1, layers - 1) if rng.random() < 0.5 else (0, layers - 2)
    return np.concatenate([-blurred(first)[::-1], sharp(last - first + 1), blurred(layers - 1 - last)])


def _quantise_layer(signed: float, opts: SyntheticOptions) -> float:
    """Quantise a discrete layer's CoC radius while keeping it on its side of the label margin."""
    radius = quantise_radius(abs(signed))
    if abs(signed) <= opts.coc_threshold:
        return min(radius, math.floor(opts.coc_threshold / RADIUS_STEP) * RADIUS_STEP)
    return max(radius, math.ceil(opts.min_blur_radius / RADIUS_STEP) * RADIUS_STEP)


def _slanted_coc(rng: np.random.Generator, height: int, width: int, near: float, opts: SyntheticOptions) -> np.ndarray:
    """Signed CoC map of a slanted background plane: linear in image position (inverse depth is),
    with `near` at the bottom-ish edge and farther (more negative) values towards the top."""
    far = near - rng.uniform(0.5, 1.0) * (opts.max_blur_radius + near)
    angle = math.pi / 2 + (rng.normal(0, 0.3) if rng.random() < 0.8 else rng.uniform(-math.pi, math.pi))
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    t = math.cos(angle) * xs + math.sin(angle) * ys
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return far + (near - far) * t


def _blur_varying(layer: torch.Tensor, coc: np.ndarray, max_levels: int = 5) -> torch.Tensor:
    """Spatially varying disk blur: blur at a few radii and interpolate per pixel between neighbours."""
    radius = np.abs(coc)
    lo, hi = float(radius.min()), float(radius.max())
    steps = min(max_levels, math.ceil((hi - lo) / RADIUS_STEP) + 1)
    levels = np.unique([quantise_radius(r) for r in np.linspace(lo, hi, max(steps, 1))])
    if len(levels) == 1:
        return disk_blur(layer, float(levels[0]))
    stack = disk_blur_many(layer, levels.tolist())  # [L, C, H, W]
    position = torch.from_numpy(np.interp(radius, levels, np.arange(len(levels))).astype(np.float32))
    index = position.floor().long().clamp(max=len(levels) - 2)
    frac = (position - index)[None]
    lower = torch.gather(stack, 0, index[None, None].expand(1, *layer.shape))[0]
    upper = torch.gather(stack, 0, (index + 1)[None, None].expand(1, *layer.shape))[0]
    return lower * (1 - frac) + upper * frac


def _blur_occluder(
    colour: torch.Tensor, alpha: torch.Tensor, box: tuple[int, int, int, int], radius: float
) -> tuple[tuple[slice, slice], torch.Tensor]:
    """Blur premultiplied colour and alpha of a layer that is zero outside `box` (top, bottom, left, right).

    Only the box grown by the PSF support is transformed; beyond it the layer is zero, so reflect padding
    there adds zeros and the result equals a full-frame blur. Returns (region slices, blurred [4, h, w]).
    """
    height, width = alpha.shape[-2:]
    grow = math.ceil(radius) + 1
    top, bottom, left, right = box
    top, left = max(0, top - grow), max(0, left - grow)
    bottom, right = min(height, bottom + grow), min(width, right + grow)
    region = (slice(top, bottom), slice(left, right))
    stacked = torch.cat(
        [colour[:, region[0], region[1]] * alpha[:, region[0], region[1]], alpha[:, region[0], region[1]]]
    )
    return region, disk_blur(stacked, radius)


def _sample_scenario(rng: np.random.Generator, opts: SyntheticOptions) -> str:
    u = rng.random()
    if u < opts.all_sharp_fraction:
        return "all-sharp"
    if u < opts.all_sharp_fraction + opts.all_blurred_fraction:
        return "all-blurred"
    return "mixed"


def _to_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 16 or width < 16:
        raise ValueError(f"synthetic image size must be at least 16x16, got {height}x{width}")
    return int(height), int(width)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded: the work is many small FFTs and element-wise ops, where intra-op
    threads cost far more in wake-ups than they save (10-20x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def generate_sample(
    rng: np.random.Generator, size: int | tuple[int, int], opts: SyntheticOptions | None = None
) -> SyntheticSample:
    """Render one scene; all randomness comes from `rng`, so a seeded rng gives identical bytes."""
    with _one_torch_thread():
        return _render(rng, size, opts or SyntheticOptions())


def _render(rng: np.random.Generator, size: int | tuple[int, int], opts: SyntheticOptions) -> SyntheticSample:
    height, width = _to_hw(size)
    layers = int(rng.integers(opts.min_layers, opts.max_layers + 1))
    scenario = _sample_scenario(rng, opts)
    signed = _signed_cocs(rng, layers, scenario, opts)
    slanted = scenario == "mixed" and rng.random() < opts.slanted_fraction

    grain_field = _pink_noise(rng, height, width)
    # Background: full frame, either one depth or a slanted plane.
    background = _texture(rng, height, width, opts, grain_field)
    if slanted:
        coc_map = _slanted_coc(rng, height, width, float(signed[0]), opts)
        visible_coc = np.abs(coc_map)
        image = _blur_varying(background, coc_map)
        radii: list[Any] = [f"{visible_coc.min():.1f}-{visible_coc.max():.1f}"]
    else:
        radius = _quantise_layer(float(signed[0]), opts)
        visible_coc = np.full((height, width), radius, dtype=np.float32)
        image = disk_blur(background, radius)
        radii = [radius]

    # Occluders, back to front: blur premultiplied colour and alpha together, then composite "over".
    for signed_coc in signed[1:]:
        radius = _quantise_layer(float(signed_coc), opts)
        alpha = _shape_alpha(rng, height, width)
        rows, cols = np.nonzero(alpha.any(axis=1))[0], np.nonzero(alpha.any(axis=0))[0]
        if rows.size == 0:
            continue
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        colour = torch.zeros(3, height, width)
        colour[:, box[0] : box[1], box[2] : box[3]] = _texture(rng, box[1] - box[0], box[3] - box[2], opts, grain_field)
        (rs, cs), blurred = _blur_occluder(colour, torch.from_numpy(alpha)[None], box, radius)
        image[:, rs, cs] = blurred[:3] + (1.0 - blurred[3:].clamp(0, 1)) * image[:, rs, cs]
        visible_coc[alpha >= 0.5] = radius
        radii.append(radius)

    # Sensor: shot + read noise in linear light, then gamma encoding and JPEG.
    read = float(rng.uniform(*opts.noise_std))
    shot = float(rng.uniform(*opts.shot_noise))
    noise_gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    image = image.clamp(0, 1)
    image = image + torch.sqrt(shot * image + read**2) * torch.randn(image.shape, generator=noise_gen)
    srgb = image.clamp(0, 1).pow(1.0 / GAMMA).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    quality = int(rng.integers(opts.jpeg_quality[0], opts.jpeg_quality[1] + 1))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(srgb)).save(buffer, format="JPEG", quality=quality)
    encoded = buffer.getvalue()
    with Image.open(io.BytesIO(encoded)) as decoded:
        pixels = np.asarray(decoded.convert("RGB"))
    mask = (visible_coc > opts.coc_threshold).astype(np.uint8)
    info = {
        "scenario": scenario,
        "layers": layers,
        "radii": radii,
        "slanted": slanted,
        "jpeg_quality": quality,
    }
    return SyntheticSample(image=pixels, mask=mask, encoded=encoded, info=info)


def generate_pair(
    rng: np.random.Generator, size: int | tuple[int, int], opts: SyntheticOptions | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [H, W, 3], mask uint8 [H, W] in {0, 1}, 1 = blurred) for one random scene."""
    sample = generate_sample(rng, size, opts)
    return sample.image, sample.mask


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """Per-image generator: image i depends only on (seed, i), whatever the worker count or order."""
    return np.random.default_rng([int(seed), int(index)])
