"""Photo in, blur map out: the one prediction path shared by evaluation, `dbdgan predict`, the MLflow pyfunc
and the ONNX parity check.

A model comes with the input size it was validated at in training, stored in its model file (and copied into a
registered model): the one source of that size. Images are resized to it for the network (bilinear,
antialiased, on the 8-bit pixels as training's loader does: 6x cheaper than in float) and the maps resized
back to each image's own resolution.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dbdgan.checkpoint import load_model_file, model_from_payload, read_model_file
from dbdgan.redact import redact

InputSize = int | tuple[int, int] | None  # None: the image's own resolution


Backend = Literal["torch", "onnx"]
BACKENDS: tuple[str, ...] = ("torch", "onnx")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> uint8 [1,3,H,W] (channels-last strides: the HWC pixels are not reordered)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got dtype {image.dtype} shape {image.shape}")
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0)


def size_tuple(input_size: InputSize) -> tuple[int, int] | None:
    if input_size is None:
        return None
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be None, an int or (height, width) >= 1, got {input_size!r}")
    return size


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def _to_network(image: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """[B,3,H,W] uint8 pixels or floats in [0, 1] -> floats in [0, 1] at `size`.

    8-bit pixels are resized as they are (torch's 8-bit kernel is CPU-only), then scaled.
    """
    resize = size is not None and tuple(image.shape[-2:]) != size
    if image.dtype == torch.uint8:
        if resize and image.device.type == "cpu":
            image, resize = _resize(image, size), False
        image = image.float().div_(255.0)
    return _resize(image, size) if resize else image


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


def network_input(image: np.ndarray, input_size: InputSize = None) -> torch.Tensor:
    """Preprocessing: uint8 HxWx3 -> float [1,3,h,w] in [0,1] at the network's size (bilinear, antialiased)."""
    return _to_network(to_tensor(image), size_tuple(input_size))


@torch.inference_mode()
def network_probabilities(model: nn.Module, inputs: Sequence[torch.Tensor], batch_size: int = 4,
                          flip_tta: bool = False) -> list[torch.Tensor]:
    """The network part: each [1,3,h,w] input -> its probability [1,1,h,w] (CPU), in input order.

    Inputs of the same size share batches of up to `batch_size`, whatever the order they come in.
    """
    device = _device(model)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, tensor in enumerate(inputs):
        groups.setdefault(tuple(tensor.shape[-2:]), []).append(index)
    probs: list[torch.Tensor | None] = [None] * len(inputs)
    step = max(1, batch_size)
    for indices in groups.values():
        for start in range(0, len(indices), step):
            chunk = indices[start:start + step]
            batch = torch.cat([inputs[i] for i in chunk]).to(device)
            for index, prob in zip(chunk, _probability(model, batch, flip_tta).cpu().split(1), strict=True):
                probs[index] = prob
    return probs  # type: ignore[return-value]


@torch.inference_mode()
def blur_map(prob: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Postprocessing: a probability [1,1,h,w] -> float32 HxW map in [0,1] at the image's `shape` (H, W)."""
    return _back(prob, tuple(shape[:2]))[0, 0].numpy().astype(np.float32, copy=False)


@torch.inference_mode()
def blur_map_8bit(prob: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """`blur_map` as uint8 grey levels (255 = blurred), rounded: what `dbdgan predict` writes."""
    return _back(prob, tuple(shape[:2]))[0, 0].mul(255.0).add_(0.5).to(torch.uint8).numpy()


@torch.inference_mode()
def blur_maps(model: nn.Module, images: Sequence[np.ndarray], input_size: InputSize = None,
              batch_size: int = 4, flip_tta: bool = False) -> list[np.ndarray]:
    """uint8 HxWx3 images of any sizes -> float32 HxW blur probabilities: the one prediction path.

    Preprocess each image to the network size, run same-size inputs in batches of `batch_size`, bring each
    map back to its image's resolution. `dbdgan predict` runs the same three steps, timed and overlapped
    with decoding and writing.
    """
    size = size_tuple(input_size)
    probs = network_probabilities(model, [network_input(img, size) for img in images], batch_size, flip_tta)
    return [blur_map(prob, img.shape) for prob, img in zip(probs, images, strict=True)]


def _device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def prepare_network(model: nn.Module, backend: Backend = "torch", threads: int | None = None) -> nn.Module:
    """The network as prediction runs it; same inputs, same maps up to float rounding.

    torch: a copy with batch norm folded into the convolutions and channels-last weights (`inference_copy`);
    onnx: that copy exported (verified against PyTorch) and run by onnxruntime with `threads` threads
    (default torch's). Resizing and normalisation stay shared: the network's input is [0, 1] RGB either way.
    """
    from dbdgan.models.fusion import fold_batchnorm, inference_copy

    if backend == "torch":
        if next(model.parameters(), None) is None:  # onnxruntime wrappers, parameter-free baselines: as they are
            return model
        return inference_copy(model, channels_last=_device(model).type == "cpu")
    if backend == "onnx":
        from dbdgan.evaluation.onnx_export import OnnxModel, onnx_bytes

        cpu = fold_batchnorm(model).cpu()  # idle onnxruntime threads sleep: decoding and writing need the cores
        return OnnxModel(onnx_bytes(cpu), threads=threads or torch.get_num_threads(), spinning=False)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


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


_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextmanager
def quiet_download() -> Iterator[None]:
    """No MLflow "Downloading artifacts" bar (dozens of steps per model load) unless the user set its variable."""
    if _PROGRESS_BAR in os.environ:
        yield
        return
    os.environ[_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        os.environ.pop(_PROGRESS_BAR, None)


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

    from dbdgan.failures import describe
    from dbdgan.store_check import HINT, require_store

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    where = mlflow.get_tracking_uri()
    if text.startswith(("models:/", "runs:/")):
        require_store(where)  # before MLflow would create an empty store to look in
    with tempfile.TemporaryDirectory(prefix="dbdgan-model-") as tmp, quiet_download():
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=tmp))
        except Exception as exc:  # MlflowException, missing alias, unreachable server: name the URI
            reason = describe(exc)
            if any(sign in reason for sign in ("Max retries exceeded", "Failed to establish a new connection")):
                raise ConnectionError(f"cannot reach the MLflow store {redact(where)} to load {text!r}; "
                                      f"{HINT}") from exc
            raise ValueError(f"cannot download model {text!r} from {redact(where)}: {reason}; "
                             f"if it lives elsewhere, {HINT}") from exc
        checkpoint, input_size = checkpoint_from_mlflow_dir(local)
        return LoadedModel(load_model_file(checkpoint), source=text, input_size=input_size)
