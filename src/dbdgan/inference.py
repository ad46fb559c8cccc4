"""Photo in, blur map out: the one prediction path shared by evaluation, `dbdgan predict`, the MLflow pyfunc
and the ONNX parity check.

A model comes with the input size it was validated at in training, stored in its model file (and copied into a
registered model): the one source of that size. Images are resized to it for the network (bilinear,
antialiased) and the maps resized back to each image's own resolution.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dbdgan.checkpoint import load_model_file, model_from_payload, read_model_file

InputSize = int | tuple[int, int] | None  # None: the image's own resolution


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float [1,3,H,W] in [0,1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got dtype {image.dtype} shape {image.shape}")
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def size_tuple(input_size: InputSize) -> tuple[int, int] | None:
    if input_size is None:
        return None
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be None, an int or (height, width) >= 1, got {input_size!r}")
    return size


def _to_network(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    if size is None or tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def _back(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(prob.shape[-2:]) != tuple(size):
        prob = F.interpolate(prob, size=tuple(size), mode="bilinear", align_corners=False)
    return prob.clamp_(0.0, 1.0)


def _probability(model: nn.Module, x: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    logits = model(x)
    if logits.shape != (x.shape[0], 1, *x.shape[-2:]):
        raise ValueError(f"model output shape {tuple(logits.shape)}, expected {(x.shape[0], 1, *x.shape[-2:])}")
    prob = torch.sigmoid(logits.float())
    if flip_tta:  # the maps of the image and of its mirror image (flipped back), averaged
        prob = 0.5 * (prob + torch.sigmoid(model(x.flip(-1)).float()).flip(-1))
    return prob


@torch.no_grad()
def predict_probability(model: nn.Module, image: torch.Tensor, input_size: InputSize = None,
                        flip_tta: bool = False) -> torch.Tensor:
    """Blur probability [B,1,H,W] at the input's own resolution, the network seeing it at `input_size`."""
    return _back(_probability(model, _to_network(image, size_tuple(input_size)), flip_tta), image.shape[-2:])


@torch.no_grad()
def blur_maps(model: nn.Module, images: Sequence[np.ndarray], input_size: InputSize = None,
              batch_size: int = 4) -> list[np.ndarray]:
    """uint8 HxWx3 images of any sizes -> float32 HxW blur probabilities, `batch_size` at a time.

    With an `input_size`, images of different sizes share a batch (each resized to the network size).
    """
    size = size_tuple(input_size)
    maps: list[np.ndarray] = []
    for start in range(0, len(images), max(1, batch_size)):
        tensors = [to_tensor(img) for img in images[start:start + batch_size]]
        shapes = [tuple(t.shape[-2:]) for t in tensors]
        if size is None and len(set(shapes)) > 1:  # native resolution: sizes cannot share a batch
            probs = [_probability(model, t) for t in tensors]
        else:
            probs = list(_probability(model, torch.cat([_to_network(t, size) for t in tensors])).split(1))
        maps.extend(_back(prob, shape)[0, 0].numpy() for prob, shape in zip(probs, shapes, strict=True))
    return [m.astype(np.float32, copy=False) for m in maps]


@dataclass
class LoadedModel:
    """A network ready to run, with the input size stored with it (None: native resolution)."""

    model: nn.Module
    source: str
    input_size: InputSize = None


def is_model_uri(text: str) -> bool:
    """MLflow URIs (models:/, runs:/, s3://, ...) as opposed to a local model file."""
    return "://" in text or text.startswith(("models:/", "runs:/"))


def _size(value: object) -> InputSize:
    return tuple(value) if isinstance(value, list) else value  # type: ignore[return-value]


def checkpoint_from_mlflow_dir(model_dir: Path) -> tuple[Path, InputSize]:
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
    return checkpoint, _size(input_size)


def load_predictor(model: str | Path, tracking_uri: str | None = None) -> LoadedModel:
    """A local model file, or an MLflow model URI such as `models:/dbd-student@champion`.

    For a URI only the artifacts are downloaded; the weights are read with `torch.load(weights_only=True)`
    (never the pickled pyfunc object), so loading a registered model cannot run arbitrary code.
    """
    text = str(model)
    if not is_model_uri(text):
        payload = read_model_file(text)
        # the whole-image size it was validated at in training
        return LoadedModel(model_from_payload(payload, text), source=text,
                           input_size=_size(payload["metadata"].get("input_size")))
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
