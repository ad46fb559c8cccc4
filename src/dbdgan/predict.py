"""`dbdgan predict`: photos (files or folders) in, a blur-map PNG and an overlay JPEG per photo out.

Every input is handled on its own: an unreadable, truncated, oversized or non-image file is reported and
skipped, the others still run, and the summary lists each failure so the caller's exit code can say so.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from dbdgan.data.imageio import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    encode_image,
    image_to_rgb,
    open_image,
    upright,
)
from dbdgan.inference import (
    Backend,
    InputSize,
    LoadedModel,
    blur_map_8bit,
    blur_maps,
    load_predictor,
    network_input,
    network_probabilities,
    prepare_network,
)
from dbdgan.io_utils import atomic_write_bytes

__all__ = ["PredictionFailed", "blur_maps", "image_files", "load_predictor", "overlay", "predict_paths"]
log = logging.getLogger(__name__)

SizeChoice = InputSize | Literal["auto"]  # what `dbdgan predict --input-size` accepts
OVERLAY_ALPHA = 0.6  # how far a surely blurred pixel goes to its dimmed grey
OVERLAY_DIM = 0.55  # brightness of that grey: blurred regions read as greyed out, whatever their colour
OVERLAY_OUTLINE = np.array([255, 220, 0], dtype=np.uint8)  # the p = 0.5 contour: yellow on colour and on grey
OVERLAY_LEGEND = "greyed: blurred   yellow line: blur edge (p = 0.5)"
OVERLAY_LEGEND_MIN_WIDTH = 400  # narrower overlays get no legend (it would cover the photo)
PNG_COMPRESS_LEVEL = 1
OVERLAY_JPEG_QUALITY = 90  # a tinted photo, for eyes: JPEG encodes it 20x faster than PNG, 7x smaller
WORKERS = 2  # threads that decode and write while the network runs (PIL and zlib release the GIL)
STAGES = ("decode", "preprocess", "network", "postprocess", "write")
_NOTES = {"L": "greyscale", "LA": "greyscale with alpha (alpha ignored)", "RGBA": "RGBA (alpha ignored)",
          "P": "palette", "CMYK": "CMYK", "1": "1-bit", "I": "32-bit integer (rescaled)",
          "I;16": "16-bit (rescaled to 8-bit)", "I;16B": "16-bit (rescaled to 8-bit)",
          "I;16L": "16-bit (rescaled to 8-bit)", "F": "floating point (rescaled)"}


class PredictionFailed(RuntimeError):
    """Some inputs could not be processed; `summary` says which and why."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        failed = summary["failed"]
        shown = "; ".join(f"{f['path']}: {f['error']}" for f in failed[:5])
        shown += " ..." if len(failed) > 5 else ""
        super().__init__(f"{len(failed)} of {summary['inputs']} inputs failed: {shown}")


def image_files(paths: Iterable[str | Path],
                exclude: Path | None = None) -> tuple[list[Path], list[str], list[dict]]:
    """Expand folders (recursively, hidden entries skipped, sorted) into files.

    Returns (files, ignored, missing): a folder's files without an image extension are ignored (not an error);
    a path that does not exist is a failure. Files named explicitly are always tried.
    """
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    files: list[Path] = []
    ignored: list[str] = []
    missing: list[dict] = []
    excluded = exclude.resolve() if exclude else None
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path).parts
                if any(part.startswith(".") for part in rel):
                    continue
                if child.is_symlink() and not child.exists():  # a loop or a dangling link: unreadable
                    missing.append({"path": str(child), "error": f"unreadable: {_stat_error(child)}"})
                    continue
                if not child.is_file():
                    continue
                if excluded and child.resolve().is_relative_to(excluded):
                    continue
                if child.suffix.lower() in extensions:
                    files.append(child)
                else:
                    ignored.append(str(child))
        elif path.is_file():
            files.append(path)
        else:
            missing.append({"path": str(path), "error": "no such file or folder"})
    return files, ignored, missing


def _stat_error(path: Path) -> str:
    """Why `path` cannot be opened (e.g. "Too many levels of symbolic links")."""
    try:
        path.stat()
    except OSError as exc:
        return exc.strerror or str(exc)
    return "not a readable file"


def _load(path: Path, max_pixels: int) -> tuple[np.ndarray, str | None]:
    """uint8 RGB pixels and a note when the file needed converting (greyscale, alpha, 16-bit ...)."""
    with open_image(path, max_pixels) as image:
        mode = image.mode
        rgb = np.ascontiguousarray(image_to_rgb(upright(image)))  # the map lies over the photo as it is shown
    note = None if mode == "RGB" else f"{_NOTES.get(mode, mode)} input converted to RGB"
    return rgb, note


# maps: PNG at zlib level 1 with run-length matching, 5-8x faster to write than PIL's default (level 6) and,
# for smooth maps, about as small as level 3; overlays: JPEG
MAP_FORMAT = {"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL, "compress_type": zlib.Z_RLE}
OVERLAY_FORMAT = {"format": "JPEG", "quality": OVERLAY_JPEG_QUALITY}


def overlay(image: np.ndarray, blur: np.ndarray) -> np.ndarray:
    """The photo with blurred regions greyed and dimmed in proportion to their blur probability (8-bit map),
    the p = 0.5 contour outlined, and a legend in the bottom-left corner (photos at least
    OVERLAY_LEGEND_MIN_WIDTH wide). A colour tint alone was ambiguous on subjects of that colour."""
    weight = (blur * np.float32(OVERLAY_ALPHA / 255.0))[:, :, None]
    grey = image.sum(axis=2, keepdims=True, dtype=np.uint16) * np.float32(OVERLAY_DIM / 3.0)
    mixed = image * (1.0 - weight) + (grey * weight + 0.5)
    out = np.clip(mixed, 0, 255, out=mixed).astype(np.uint8)
    out[_outline(blur >= 128)] = OVERLAY_OUTLINE
    if out.shape[1] >= OVERLAY_LEGEND_MIN_WIDTH:
        legend = _legend_patch()
        h, w = min(legend.shape[0], out.shape[0]), legend.shape[1]
        out[-h:, :w] = legend[-h:]
    return out


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels on either side of the mask's boundary (a 2-pixel line), from array shifts."""
    edge = np.zeros_like(mask)
    vertical = mask[1:] != mask[:-1]
    horizontal = mask[:, 1:] != mask[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge


@functools.cache
def _legend_patch() -> np.ndarray:
    """The legend strip (white text and a yellow sample line on black), drawn once."""
    from PIL import ImageDraw

    width = 40 + int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(OVERLAY_LEGEND))
    patch = Image.new("RGB", (width, 18), (0, 0, 0))
    draw = ImageDraw.Draw(patch)
    draw.rectangle((4, 5, 14, 12), fill=(90, 90, 90))
    draw.line((18, 9, 28, 9), fill=tuple(int(v) for v in OVERLAY_OUTLINE), width=2)
    draw.text((34, 3), OVERLAY_LEGEND, fill=(255, 255, 255))
    return np.asarray(patch)


def _output_stems(files: list[Path]) -> list[str]:
    """One distinct output name per input (case-insensitively, for case-insensitive file systems).

    A stem that only one input has keeps it; a repeated stem gets the first free `-N`, never one that another
    input's own stem or an earlier name already took, so no map of the same call is overwritten.
    """
    taken = {path.stem.lower() for path in files}
    used: set[str] = set()
    stems = []
    for path in files:
        name, count = path.stem, 1
        while name.lower() in used or (count > 1 and name.lower() in taken):
            count += 1
            name = f"{path.stem}-{count}"
        used.add(name.lower())
        stems.append(name)
    return stems


def _yield_to_network() -> None:
    """Run this worker thread at the lowest CPU priority (Linux: threads have their own nice value).

    On a machine with as many cores as network threads, a worker that takes a core stalls the network's
    whole parallel region; at nice 19 it runs in the network's gaps instead, with decoded photos queued ahead.
    """
    if sys.platform.startswith("linux"):
        with suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class _Timer:
    """Seconds spent per stage, summed over threads (stages overlap, so the sum can exceed the wall time)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] += time.perf_counter() - start


def _decode(path: Path, max_pixels: int, size: InputSize,
            timer: _Timer) -> tuple[np.ndarray, str | None, Any]:
    """A worker's part before the network: the photo's pixels, its note and the network's input."""
    with timer("decode"):
        rgb, note = _load(path, max_pixels)
    with timer("preprocess"):
        return rgb, note, network_input(rgb, size)


class OutputError(Exception):
    """One photo's outputs cannot be encoded (e.g. wider than JPEG's 65500 pixels): that photo's failure."""


def _encode(array: np.ndarray, what: str, options: dict[str, Any]) -> bytes:
    try:
        return encode_image(array, **options)
    except (OSError, ValueError) as exc:  # PIL's encoders; nothing has touched the disk yet
        raise OutputError(f"cannot encode its {what} as {options['format']}: {exc}") from exc


def _write(rgb: np.ndarray, blur: np.ndarray, blur_path: Path, overlay_path: Path | None,
           timer: _Timer) -> float:
    """A worker's part after the network: the 8-bit map (and overlay) written; the map's blurred fraction.

    Both are encoded before either is written, so a photo whose overlay cannot be encoded leaves no map.
    """
    with timer("write"):
        files = [(blur_path, _encode(blur, "map", MAP_FORMAT))]
        if overlay_path is not None:
            files.append((overlay_path, _encode(overlay(rgb, blur), "overlay", OVERLAY_FORMAT)))
        for path, data in files:
            atomic_write_bytes(path, data)
    return float((blur >= 128).mean())  # probability >= 0.5, as rounded to grey levels


def _finish(entry: dict[str, Any], written: Future, outputs: list[dict[str, Any]],
            failed: list[dict[str, Any]]) -> None:
    """Wait for an output's write and record what it found; a photo that cannot be encoded becomes a failure.

    A file system error (disk full, read-only folder) stops the run: every later photo would meet it too.
    """
    try:
        entry["blurred_fraction"] = written.result()
    except OutputError as exc:
        log.warning("skipped %s: %s", entry["input"], exc)
        outputs.remove(entry)
        failed.append({"path": entry["input"], "error": str(exc)})


def predict_paths(paths: Sequence[str | Path], model_uri_or_file: str | Path | LoadedModel,
                  out_dir: str | Path, batch_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS,
                  input_size: SizeChoice = "auto", *, tracking_uri: str | None = None,
                  progress: bool = True, backend: Backend = "torch", overlays: bool = True,
                  workers: int = WORKERS) -> dict[str, Any]:
    """Write `<stem>_blur.png` (8-bit, 255 = blurred) and, with `overlays`, `<stem>_overlay.jpg` per image.

    `input_size`: "auto" uses the size a registered model was stored with, or for a local file the size it
    was validated at in training (native resolution for files without one); None forces native resolution,
    an int resizes to that square for the network. Same-size network inputs share batches of `batch_size`;
    `workers` threads decode and resize the next photos, and resize back and write the last maps, while the
    network runs (`backend`: PyTorch, or onnxruntime on the same inputs). Maps are those of
    `inference.blur_maps`.
    Returns a summary; `summary["failed"]` lists every input that could not be processed, with the reason;
    `summary["timings"]`: the wall time, the part spent loading and preparing the network (`prepare_s`) and
    on the images (`images_s`), and the seconds spent in each stage.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from dbdgan.progress import progress as progress_bar

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    loaded = (model_uri_or_file if isinstance(model_uri_or_file, LoadedModel)
              else load_predictor(model_uri_or_file, tracking_uri))
    size = loaded.input_size if input_size == "auto" else input_size
    network = prepare_network(loaded.model, backend)
    prepared = time.perf_counter()
    files, ignored, failed = image_files(paths, exclude=out_dir)
    n_inputs = len(files) + len(failed)
    for path in ignored:
        log.info("%s: ignored (no image file extension)", path)
    stems = dict(zip(files, _output_stems(files), strict=True))
    outputs: list[dict[str, Any]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = _Timer()
    bar = progress_bar(total=len(files), desc="predict", unit="img", enabled=progress)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="predict", initializer=_yield_to_network)
    with logging_redirect_tqdm(), bar, pool:
        # decoding runs up to two batches ahead of the network, writing up to two batches behind it
        decoding: list[Future | None] = [pool.submit(_decode, path, max_pixels, size, timer)
                                         for path in files[:2 * batch_size]]
        writes: deque[tuple[dict[str, Any], Future]] = deque()
        for start in range(0, len(files), batch_size):
            ahead = start + 2 * batch_size
            decoding += [pool.submit(_decode, path, max_pixels, size, timer)
                         for path in files[ahead:ahead + batch_size]]
            batch: list[tuple[Path, np.ndarray, str | None]] = []
            inputs = []
            for index in range(start, min(start + batch_size, len(files))):
                path, future = files[index], decoding[index]
                decoding[index] = None  # the pixels now live only in this batch
                try:
                    rgb, note, tensor = future.result()
                except ImageError as exc:
                    log.warning("skipped %s", exc)
                    failed.append({"path": str(path), "error": exc.reason})
                    bar.update(1)
                    continue
                if note:
                    log.info("%s: %s", path, note)
                batch.append((path, rgb, note))
                inputs.append(tensor)
            if not batch:
                continue
            with timer("network"):
                probs = network_probabilities(network, inputs, batch_size)
            with timer("postprocess"):  # here, on the network's threads: in a worker it would stall them
                blurs = [blur_map_8bit(prob, rgb.shape) for (_, rgb, _), prob in zip(batch, probs, strict=True)]
            for (path, rgb, note), blur in zip(batch, blurs, strict=True):
                stem = stems[path]
                blur_path = out_dir / f"{stem}_blur.png"
                overlay_path = out_dir / f"{stem}_overlay.jpg" if overlays else None
                while writes and (writes[0][1].done() or len(writes) >= 2 * batch_size):
                    _finish(*writes.popleft(), outputs, failed)  # bounded memory; disk full ... stops here
                entry = {"input": str(path), "blur_map": str(blur_path),
                         "width": rgb.shape[1], "height": rgb.shape[0]}
                writes.append((entry, pool.submit(_write, rgb, blur, blur_path, overlay_path, timer)))
                if overlay_path is not None:
                    entry["overlay"] = str(overlay_path)
                if note:
                    entry["note"] = note
                outputs.append(entry)
                bar.update(1)
        for pending in writes:
            _finish(*pending, outputs, failed)
    finished = time.perf_counter()
    timings = {"wall_s": finished - started, "prepare_s": prepared - started, "images_s": finished - prepared,
               **{f"{k}_s": v for k, v in timer.seconds.items()}}
    return {"model": loaded.source, "input_size": size if size is not None else "native",
            "backend": backend, "out_dir": str(out_dir), "inputs": n_inputs, "written": len(outputs),
            "outputs": outputs, "failed": failed, "ignored": ignored, "timings": timings}
