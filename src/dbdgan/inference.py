"""Photo in, blur map out: the one prediction path shared by evaluation, `dbdgan predict`, the MLflow pyfunc
and the ONNX parity check.

A model comes with the input size it was validated at in training, stored in its model file (which a
registered model carries as its checkpoint artifact): the one source of that size. Images are resized to it
for the network (bilinear, antialiased, on the 8-bit pixels as training's loader does: 6x cheaper than in
float) and the maps resized back to each image's own resolution.

The network runs as `prepare_network` makes it: a folded, channels-last torch copy or the ONNX backend
(`dbdgan.inference_onnx`). `model_cost` measures what that costs, for `dbdgan model-info` and evaluation alike.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dbdgan import runtime_policy
from dbdgan.checkpoint import model_from_payload, read_model_file
from dbdgan.inference_onnx import CALIBRATION_IMAGES, OnnxModel, onnx_bytes
from dbdgan.models.fusion import fold_batchnorm, inference_copy
from dbdgan.models.info import count_flops, count_parameters, measure_ms, model_device, state_dict_bytes
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
    device = model_device(model)
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


def calibration_inputs(images: Sequence[np.ndarray], input_size: InputSize) -> list[np.ndarray]:
    """Network inputs for static int8 quantisation (`inference_onnx.quantize_onnx`) from uint8 HxWx3 photos,
    preprocessed as prediction does."""
    return [network_input(image, input_size).contiguous().numpy() for image in images]


def calibration_from_files(paths: Sequence[str | Path], input_size: InputSize,
                           limit: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Calibration inputs from the first `limit` of `paths` (photos like those the model will see, e.g. its
    training split), read and preprocessed as prediction does."""
    from dbdgan.data.imageio import load_rgb

    chosen = list(paths)[:limit]
    if not chosen:
        raise ValueError("static int8 quantisation needs calibration photos; none were given")
    return calibration_inputs([load_rgb(path) for path in chosen], input_size)


def prepare_network(model: nn.Module, backend: Backend = "torch", threads: int | None = None) -> nn.Module:
    """The network as prediction runs it; same inputs, same maps up to float rounding.

    torch: a copy with batch norm folded into the convolutions and channels-last weights (`inference_copy`);
    onnx: that copy exported (verified against PyTorch) and run by onnxruntime with `threads` threads
    (default torch's). Resizing and normalisation stay shared: the network's input is [0, 1] RGB either way.
    """
    if backend == "torch":
        if next(model.parameters(), None) is None:  # onnxruntime wrappers, parameter-free baselines: as they are
            return model
        return inference_copy(model, channels_last=model_device(model).type == "cpu")
    if backend == "onnx":
        cpu = fold_batchnorm(model).cpu()  # idle onnxruntime threads sleep: decoding and writing need the cores
        return OnnxModel(onnx_bytes(cpu), threads=threads or torch.get_num_threads(), spinning=False)
    raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


def model_cost(
    model: nn.Module,
    size: int = 320,
    *,
    warmup: int = 2,
    runs: int = 10,
    throughput_batch: int = 8,
    throughput_runs: int | None = None,
    budget_s: float | None = None,
) -> dict[str, float | int | str]:
    """What a model costs: parameters, FLOPs (batch 1), weights size, CPU latency (batch 1) and throughput
    (batch `throughput_batch`), with the threads, OpenMP wait policy and allocator the timings ran with.

    The one measurement `dbdgan model-info` and the evaluate step report. Parameters, FLOPs and size are the
    model's; the timings are of the network as prediction runs it on a CPU (`prepare_network`: batch norm
    folded, channels-last), so the caller's model is left as it was. Latency is the median of `runs` timed
    passes after `warmup` untimed ones on a random [1,3,size,size] input; throughput = batch / median batch
    time over `throughput_runs` passes (default: half of `runs`, at least 1); ``gflop_s_b1`` = FLOPs /
    latency. `budget_s` bounds the warm-up and the timing of each (at least one timed pass: see
    `models.info.timed_runs`). Timings depend on threads, OpenMP's wait policy and the memory allocator
    (`dbdgan.runtime_policy`), so the result records all three.
    """
    cpu_model = model if model_device(model).type == "cpu" else copy.deepcopy(model).to("cpu")
    flops = count_flops(cpu_model, size)
    n_bytes = state_dict_bytes(cpu_model)
    fast = prepare_network(cpu_model)
    latency = measure_ms(fast, 1, size, warmup=warmup, runs=runs, budget_s=budget_s)
    batch_ms = measure_ms(fast, throughput_batch, size, warmup=warmup,
                          runs=max(1, runs // 2) if throughput_runs is None else throughput_runs, budget_s=budget_s)
    params = count_parameters(cpu_model)
    return {
        "params": params,
        "params_m": params / 1e6,
        "flops": flops,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
        "size_bytes": n_bytes,
        "size_mb": n_bytes / 1e6,
        "input_size": size,
        "latency_ms_b1": latency,
        "gflop_s_b1": flops / 1e6 / latency,
        "throughput_batch": throughput_batch,
        "throughput_img_s": throughput_batch * 1000.0 / batch_ms,
        **runtime_policy.describe(),
    }


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


def stored_input_size(payload: dict[str, Any], legacy: str | Path | None = None) -> InputSize:
    """The input size a read model file stores (None: native resolution).

    Only for a file that stores none: the size in `legacy`, the `inference.json` artifact that versions
    registered before the size was read from the model file carry (newer versions have no such artifact).
    """
    metadata = payload.get("metadata") or {}
    if "input_size" not in metadata and legacy is not None and Path(legacy).is_file():
        return _size(json.loads(Path(legacy).read_text()).get("input_size"))
    return _size(metadata.get("input_size"))


def predictor_from_file(path: str | Path, source: str | None = None,
                        legacy: str | Path | None = None) -> LoadedModel:
    """A model file's network (eval mode, weights only) with the input size it stores (see stored_input_size)."""
    payload = read_model_file(path)
    return LoadedModel(model_from_payload(payload, path), source=source or str(path),
                       input_size=stored_input_size(payload, legacy))


def checkpoint_from_mlflow_dir(model_dir: Path) -> tuple[Path, Path | None]:
    """The model file inside a downloaded dbdgan pyfunc model directory, and the legacy `inference.json` of a
    version registered before the input size was read from the model file (None for newer versions)."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        raise ValueError(f"{model_dir} is not an MLflow model directory (no MLmodel file)")
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    artifacts = flavor.get("artifacts") or {}
    if "checkpoint" not in artifacts:
        raise ValueError(f"{mlmodel} has no 'checkpoint' artifact: not a dbdgan model")
    legacy = model_dir / artifacts["inference"]["path"] if "inference" in artifacts else None
    return model_dir / artifacts["checkpoint"]["path"], legacy


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
        return predictor_from_file(text)  # with the whole-image size it was validated at in training
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
        checkpoint, legacy = checkpoint_from_mlflow_dir(local)
        return predictor_from_file(checkpoint, source=text, legacy=legacy)
