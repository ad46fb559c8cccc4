"""Safe image and mask loading: every failure is an ImageError that names the file and the reason.

The rules are the same for everyone who reads a dataset: prepare (raw pairs), training and evaluation
(`open_image`, `load_mask`) and validation, which calls `inspect_image` / `inspect_mask`: the same checks in
report mode, where a problem is returned in a `FileReport` instead of raised, so that every file of a
dataset can be judged in one pass.

Datasets are read as stored: EXIF orientation is ignored on purpose, because dataset masks are annotated on
the stored pixel grid (prepare records the tag, validation reports it). Prediction reads photos the way a
viewer shows them (`upright`), so a map lies over the photo as a person sees it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
POLARITIES = ("blurred-white", "sharp-white")
# Greyscale/16-bit/float modes whose values must be rescaled rather than clipped by PIL's convert("RGB").
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ORIENTATION_TAG = 0x0112


class ImageError(ValueError):
    """An image or mask file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def open_image(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, *, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Open and fully decode `path`, refusing decompression bombs and truncated or unreadable files.

    The size check runs on the header, before any pixel is decoded, so a bomb costs nothing.
    PIL's own global limit (Image.MAX_IMAGE_PIXELS) is left untouched; if it fires first it is reported
    the same way. `draft_size` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (in the DCT domain, so
    properly low-passed) while staying at least that large: much faster when the caller downsizes anyway.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "file not found")
    return _decode(path, path, max_pixels, draft_size)


def _decode(
    source: Path | IO[bytes], path: Path, max_pixels: int, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """open_image's checks and decoding, of `source` (the file or its bytes); errors name `path`."""
    try:
        image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageError(path, f"decompression bomb refused by PIL's pixel limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, "not a readable image (unknown or corrupt format)") from exc
    except OSError as exc:
        raise ImageError(path, f"not a readable image ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            path,
            f"decompression bomb guard: {width}x{height} = {width * height} pixels > max_pixels={max_pixels}",
        )
    if width < 1 or height < 1:
        image.close()
        raise ImageError(path, f"empty image ({width}x{height})")
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", draft_size)
    try:
        image.load()
    except Image.DecompressionBombError as exc:  # some formats only know their size once decoding starts
        image.close()
        raise ImageError(path, f"decompression bomb refused by PIL's pixel limit ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated/corrupt data: OSError ("image file is
        image.close()  # truncated ..."), and for some corrupt headers SyntaxError or ValueError
        raise ImageError(path, f"truncated or corrupt image data ({exc})") from exc
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright as stored, 2-8 = mirrored and/or rotated), 1 when absent."""
    value = image.getexif().get(_ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(image: Image.Image) -> Image.Image:
    """The image as viewers show it: its EXIF orientation applied (a new image; the same one when upright)."""
    return image if exif_orientation(image) == 1 else ImageOps.exif_transpose(image)


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to uint8 RGB; 16-bit/float data are rescaled, not clipped; alpha is dropped."""
    if image.mode in _WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            scale = 1.0 if values.size and values.max() <= 1.0 else 255.0
        elif image.mode.startswith("I;16"):
            scale = 65535.0
        else:  # 32-bit "I": 8-bit or 16-bit data stored wide; judge by range
            scale = 255.0 if values.size and values.max() <= 255 else 65535.0
        grey = np.clip(np.rint(values * (255.0 / scale)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "RGB":
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def encode_image(array: np.ndarray, **save_options: Any) -> bytes:
    """An 8-bit array as the bytes of an image file: `save_options` are PIL's (format=..., its settings)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, **save_options)
    return buffer.getvalue()


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Load any supported image as uint8 [H, W, 3]; greyscale is replicated, 16-bit is rescaled."""
    with open_image(path, max_pixels) as image:
        return np.ascontiguousarray(image_to_rgb(image))


def _mask_values(path: Path, image: Image.Image) -> tuple[np.ndarray, float, bool]:
    """Return the label channel of a mask, its full-scale value, and whether RGB channels disagreed."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.uint8), 1, False
    if mode == "P":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _WIDE_MODES:
        values = np.asarray(image)
        full = 1.0 if mode == "F" else (255 if values.size and values.max() <= 255 else 65535)
        return values, full, False
    if mode == "L":
        return np.asarray(image, dtype=np.uint8), 255, False
    if mode in ("LA", "RGB", "RGBA"):
        bands = np.asarray(image, dtype=np.uint8)
        colour = bands[:, :, :1] if mode == "LA" else bands[:, :, :3]
        alpha = bands[:, :, -1] if mode in ("LA", "RGBA") else None
        if alpha is not None and not (alpha == 255).all():
            if (colour == colour.reshape(-1, colour.shape[2])[0]).all():
                return alpha, 255, False  # label stored in the alpha channel over a constant colour
            raise ImageError(path, f"{mode} mask has both varying colour and a non-opaque alpha channel")
        first = colour[:, :, 0]
        if colour.shape[2] == 3 and not ((colour[:, :, 1] == first).all() and (colour[:, :, 2] == first).all()):
            return np.asarray(image.convert("L"), dtype=np.uint8), 255, True
        return first, 255, False
    raise ImageError(path, f"unsupported mask mode {mode!r}")


_THRESHOLD_LUMINANCE = " (pass binarize=True to threshold luminance)"
_THRESHOLD_HALF_SCALE = " (pass binarize=True to threshold at half scale)"


def _unique(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values. 8-bit data (the common case: training reads every mask every epoch) skip
    the sort: a mask holding only its minimum and maximum is told in two passes, others by a histogram."""
    if values.dtype == np.uint8:
        low, high = int(values.min()), int(values.max())
        if ((values == low) | (values == high)).all():
            return np.array(sorted({low, high}), dtype=np.uint8)
        return np.flatnonzero(np.bincount(values.ravel(), minlength=256)).astype(np.uint8)
    return np.unique(values)


def _labels(path: Path, image: Image.Image, polarity: str, binarize: bool) -> tuple[np.ndarray, str]:
    """The mask's labels in {0, 1}, 1 = blurred: (labels, "") or, when they are unusable, (empty, reason);
    the reason leaves out the advice `load_mask` adds (binarize=True). A mode no rule reads raises."""
    values, full, channels_differ = _mask_values(path, image)
    if channels_differ and not binarize:
        return np.empty((0, 0), np.uint8), "RGB mask with differing colour channels"
    present = _unique(values)
    if np.isin(present, (0, full)).all():
        mask = (values == full).astype(np.uint8)
    elif np.isin(present, (0, 1)).all():
        mask = values.astype(np.uint8)
    elif binarize:
        mask = (values >= full / 2).astype(np.uint8)
    else:
        shown = ", ".join(str(v) for v in present[:8]) + (" ..." if present.size > 8 else "")
        return np.empty((0, 0), np.uint8), f"mask is not binary: values {shown}"
    if polarity == "sharp-white":
        mask = 1 - mask
    return np.ascontiguousarray(mask), ""


def load_mask(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    polarity: str = "blurred-white",
    *,
    binarize: bool = False,
) -> np.ndarray:
    """Load a label mask as uint8 [H, W] in {0, 1} with 1 = blurred.

    Greyscale, 1-bit, palette, 16-bit and RGB/RGBA masks with identical colour channels are accepted.
    A mask with values other than {0, full scale} (or 0/1) raises unless `binarize=True`, which thresholds
    at half scale. `polarity="sharp-white"` is for datasets that paint in-focus pixels white (DUT-DBD).
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    path = Path(path)
    with open_image(path, max_pixels) as image:
        mask, problem = _labels(path, image, polarity, binarize)
    if problem:
        advice = _THRESHOLD_LUMINANCE if problem.startswith("RGB mask") else _THRESHOLD_HALF_SCALE
        raise ImageError(path, problem + advice)
    return mask


# ---------------------------------------------------------------- report mode


@dataclass(frozen=True)
class FileReport:
    """What reading one image or mask file by the rules above found: the problem, never an exception.

    `error` is why the file cannot be read or decoded (an ImageError's reason), `label_error` (masks) why
    its pixels are not a usable label; `sha256` is of the bytes that were decoded.
    """

    path: Path
    sha256: str | None = None
    error: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    label_error: str | None = None  # masks only
    blur_fraction: float | None = None  # masks only: the fraction of pixels labelled blurred

    @property
    def ok(self) -> bool:
        return self.error is None and self.label_error is None


def _inspect(path: str | Path, max_pixels: int, mask_polarity: str | None) -> FileReport:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return FileReport(path, error="file not found")
    except OSError as exc:
        return FileReport(path, error=f"unreadable file ({exc})")
    sha = hashlib.sha256(data).hexdigest()
    try:
        image = _decode(io.BytesIO(data), path, max_pixels)
    except ImageError as exc:
        return FileReport(path, sha, error=exc.reason)
    except Exception as exc:  # noqa: BLE001 - a PIL plugin may raise anything on a crafted file: report it
        return FileReport(path, sha, error=f"cannot decode ({type(exc).__name__}: {exc})")
    with image:
        facts = {"sha256": sha, "mode": image.mode, "width": image.width, "height": image.height}
        if mask_polarity is None:
            return FileReport(path, **facts)
        try:
            labels, problem = _labels(path, image, mask_polarity, binarize=False)
        except ImageError as exc:
            return FileReport(path, **facts, label_error=exc.reason)
    if problem:
        return FileReport(path, **facts, label_error=problem)
    return FileReport(path, **facts, blur_fraction=float(np.count_nonzero(labels) / labels.size))


def inspect_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileReport:
    """open_image in report mode: the file's hash, mode and size, or why open_image would refuse it."""
    return _inspect(path, max_pixels, None)


def inspect_mask(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, polarity: str = "blurred-white"
) -> FileReport:
    """load_mask (strict: binarize=False) in report mode: the file's hash, mode, size and blurred
    fraction, or why load_mask would refuse it (`error` for the file, `label_error` for its values)."""
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
    return _inspect(path, max_pixels, polarity)
