"""`dbdgan predict`: photos (files or folders) in, a blur-map PNG and an overlay PNG per photo out.

Every input is handled on its own: an unreadable, truncated, oversized or non-image file is reported and
skipped, the others still run, and the summary lists each failure so the caller's exit code can say so.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dbdgan.checkpoint import load_model_file, model_from_payload, read_model_file
from dbdgan.data.imageio import DEFAULT_MAX_PIXELS, ImageError, image_to_rgb, open_image
from dbdgan.inference import predict_probability
from dbdgan.io_utils import atomic_write_bytes

log = logging.getLogger(__name__)

NetSize = int | tuple[int, int] | None
InputSize = NetSize | Literal["auto"]
OVERLAY_COLOUR = np.array([255.0, 0.0, 0.0])  # blurred pixels are tinted red
OVERLAY_ALPHA = 0.6
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


@dataclass
class LoadedModel:
    """A network ready to run, with the input size it was registered with (None: native resolution)."""

    model: nn.Module
    source: str
    input_size: NetSize = None


def is_model_uri(text: str) -> bool:
    """MLflow URIs (models:/, runs:/, s3://, ...) as opposed to a local model file."""
    return "://" in text or text.startswith(("models:/", "runs:/"))


def checkpoint_from_mlflow_dir(model_dir: Path) -> tuple[Path, NetSize]:
    """The checkpoint file and stored input size inside a downloaded dbdgan pyfunc model directory."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise ValueError(f"{model_dir} is not an MLflow model directory (no MLmodel file)")
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    artifacts = flavor.get("artifacts") or {}
    if "checkpoint" not in artifacts:
        raise ValueError(f"{mlmodel} has no 'checkpoint' artifact: not a dbdgan model")
    checkpoint = model_dir / artifacts["checkpoint"]["path"]
    input_size = None
    if "inference" in artifacts:
        input_size = json.loads((model_dir / artifacts["inference"]["path"]).read_text()).get("input_size")
        input_size = tuple(input_size) if isinstance(input_size, list) else input_size
    return checkpoint, input_size


def load_predictor(model: str | Path, tracking_uri: str | None = None) -> LoadedModel:
    """A local model file, or an MLflow model URI such as `models:/dbd-student@champion`.

    For a URI only the artifacts are downloaded; the weights are read with `torch.load(weights_only=True)`
    (never the pickled pyfunc object), so loading a registered model cannot run arbitrary code.
    """
    text = str(model)
    if not is_model_uri(text):
        payload = read_model_file(text)
        size = payload["metadata"].get("input_size")  # the whole-image size it was validated at in training
        return LoadedModel(model_from_payload(payload, text), source=text,
                           input_size=tuple(size) if isinstance(size, list) else size)
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="dbdgan-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=tmp))
        except Exception as exc:  # MlflowException, missing alias, unreachable server: name the URI
            where = mlflow.get_tracking_uri()
            raise ValueError(f"cannot download model {text!r} from {where}: {exc}") from exc
        checkpoint, input_size = checkpoint_from_mlflow_dir(local)
        return LoadedModel(load_model_file(checkpoint), source=text, input_size=input_size)


@torch.no_grad()
def blur_maps(model: nn.Module, images: Sequence[np.ndarray], input_size: NetSize = None,
              batch_size: int = 4) -> list[np.ndarray]:
    """uint8 HxWx3 images of any sizes -> float32 HxW blur probabilities, batched through predict_probability.

    With an `input_size`, images of different sizes share a batch: each is resized to the network size as
    predict_probability would, and each map is resized back to its own image.
    """
    from dbdgan.inference import to_tensor

    maps: list[np.ndarray] = []
    for start in range(0, len(images), max(1, batch_size)):
        tensors = [to_tensor(img) for img in images[start:start + batch_size]]
        sizes = [t.shape[-2:] for t in tensors]
        if all(s == sizes[0] for s in sizes):
            probs = predict_probability(model, torch.cat(tensors), input_size)
            maps.extend(p[0].numpy() for p in probs)
            continue
        if input_size is None:  # native resolution: sizes cannot share a batch
            maps.extend(predict_probability(model, t)[0, 0].numpy() for t in tensors)
            continue
        net = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        batch = torch.cat([t if tuple(t.shape[-2:]) == net else
                           F.interpolate(t, size=net, mode="bilinear", align_corners=False, antialias=True)
                           for t in tensors])
        probs = predict_probability(model, batch, input_size)
        for prob, size in zip(probs, sizes, strict=True):
            back = F.interpolate(prob[None], size=tuple(size), mode="bilinear", align_corners=False)
            maps.append(back[0, 0].clamp_(0.0, 1.0).numpy())
    return [m.astype(np.float32, copy=False) for m in maps]


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
                if not child.is_file() or any(part.startswith(".") for part in rel):
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


def _load(path: Path, max_pixels: int) -> tuple[np.ndarray, str | None]:
    """uint8 RGB pixels and a note when the file needed converting (greyscale, alpha, 16-bit ...)."""
    with open_image(path, max_pixels) as image:
        mode = image.mode
        rgb = np.ascontiguousarray(image_to_rgb(image))
    note = None if mode == "RGB" else f"{_NOTES.get(mode, mode)} input converted to RGB"
    return rgb, note


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay(image: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The photo with blurred regions tinted, in proportion to their blur probability."""
    weight = OVERLAY_ALPHA * prob[:, :, None]
    return np.clip(image * (1.0 - weight) + OVERLAY_COLOUR * weight + 0.5, 0, 255).astype(np.uint8)


def _output_stems(files: list[Path]) -> list[str]:
    """One output name per input: the stem, with a counter when two inputs share a stem."""
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}-{count + 1}")
    return stems


def predict_paths(paths: Sequence[str | Path], model_uri_or_file: str | Path | LoadedModel,
                  out_dir: str | Path, batch_size: int = 4, max_pixels: int = DEFAULT_MAX_PIXELS,
                  input_size: InputSize = "auto", *, tracking_uri: str | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Write `<stem>_blur.png` (8-bit, 255 = blurred) and `<stem>_overlay.png` per image, at its resolution.

    `input_size`: "auto" uses the size a registered model was stored with, or for a local file the size it
    was validated at in training (native resolution for files without one); None forces native resolution,
    an int resizes to that square for the network.
    Returns a summary; `summary["failed"]` lists every input that could not be processed, with the reason.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    loaded = (model_uri_or_file if isinstance(model_uri_or_file, LoadedModel)
              else load_predictor(model_uri_or_file, tracking_uri))
    size = loaded.input_size if input_size == "auto" else input_size
    files, ignored, failed = image_files(paths, exclude=out_dir)
    n_inputs = len(files) + len(failed)
    for path in ignored:
        log.info("%s: ignored (no image file extension)", path)
    stems = dict(zip(files, _output_stems(files), strict=True))
    outputs: list[dict[str, Any]] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not progress)
    with logging_redirect_tqdm(), bar:
        for start in range(0, len(files), batch_size):
            batch: list[tuple[Path, np.ndarray, str | None]] = []
            for path in files[start:start + batch_size]:
                try:
                    rgb, note = _load(path, max_pixels)
                except ImageError as exc:
                    log.warning("skipped %s", exc)
                    failed.append({"path": str(path), "error": exc.reason})
                    bar.update(1)
                    continue
                if note:
                    log.info("%s: %s", path, note)
                batch.append((path, rgb, note))
            maps = blur_maps(loaded.model, [rgb for _, rgb, _ in batch], size, batch_size) if batch else []
            for (path, rgb, note), prob in zip(batch, maps, strict=True):
                stem = stems[path]
                blur_path, overlay_path = out_dir / f"{stem}_blur.png", out_dir / f"{stem}_overlay.png"
                atomic_write_bytes(blur_path, _png((prob * 255.0 + 0.5).astype(np.uint8)))
                atomic_write_bytes(overlay_path, _png(overlay(rgb, prob)))
                entry = {"input": str(path), "blur_map": str(blur_path), "overlay": str(overlay_path),
                         "width": rgb.shape[1], "height": rgb.shape[0],
                         "blurred_fraction": float((prob >= 0.5).mean())}
                if note:
                    entry["note"] = note
                outputs.append(entry)
                bar.update(1)
    return {"model": loaded.source, "input_size": size if size is not None else "native",
            "out_dir": str(out_dir), "inputs": n_inputs, "written": len(outputs), "outputs": outputs,
            "failed": failed, "ignored": ignored}
