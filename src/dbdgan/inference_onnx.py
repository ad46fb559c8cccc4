"""The ONNX backend of prediction: export (checked against PyTorch with onnxruntime), the onnxruntime session
and the module that runs it like a torch model, the parity check and optional static int8 quantisation.

`dbdgan.inference.prepare_network(model, "onnx")` runs a network through here; `dbdgan export-onnx` writes the
file for phones and servers; the evaluate step checks parity and scores the int8 copy. Photos become network
inputs (also for calibration) in `dbdgan.inference` only: this module never resizes or normalises.

The export uses the TorchScript exporter (``dynamo=False``): torch's newer torch.export-based exporter needs
the ``onnxscript`` package, which this project does not install. That exporter traces: shape arithmetic
(pad to stride, crop back) stays dynamic, but a Python ``if`` on a shape is frozen to the branch the sample
took. So the sample has odd, unequal sides (every pad branch taken; a pad of 0 is still correct), and every
export is verified with onnxruntime at other sizes before the file is written.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dbdgan.io_utils import atomic_write_bytes
from dbdgan.models.fusion import fold_batchnorm
from dbdgan.models.info import eval_mode, median_ms, model_device

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# Photos a static int8 model is calibrated on by default (as in the int8 accuracy of benchmarks/bench_inference.py).
CALIBRATION_IMAGES = 32


class OnnxExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model (names the size and the difference)."""


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = 17,
    sample_hw: tuple[int, int] = (67, 93),
    dynamic_hw: bool = True,
    verify_hw: Sequence[tuple[int, int]] = ((64, 64), (75, 101)),
    atol: float = 1e-4,
) -> Path:
    """Write ``onnx_bytes(model, ...)`` to ``path`` atomically (nothing is written when the check fails).

    Batch norm is folded into the convolutions first (``fold_batchnorm``): the file is the network that
    prediction runs, with the same outputs up to float rounding.
    """
    path = Path(path)
    data = onnx_bytes(fold_batchnorm(model), opset=opset, sample_hw=sample_hw, dynamic_hw=dynamic_hw,
                      verify_hw=verify_hw, atol=atol, name=str(path))
    atomic_write_bytes(path, data)
    return path


def onnx_bytes(
    model: nn.Module,
    *,
    opset: int = 17,
    sample_hw: tuple[int, int] = (67, 93),
    dynamic_hw: bool = True,
    verify_hw: Sequence[tuple[int, int]] = ((64, 64), (75, 101)),
    atol: float = 1e-4,
    name: str = "ONNX export",
) -> bytes:
    """Export ``model`` (image [B,3,H,W] in [0,1] -> logits [B,1,H,W]) to ONNX bytes, verified.

    Batch is always dynamic; height and width are too when ``dynamic_hw`` (then ``verify_hw`` sizes are
    checked as well as the traced ``sample_hw``; batch 2 at the sample size). The model is traced in eval
    mode and its train/eval mode restored. Raises ``OnnxExportError`` if onnxruntime fails or its logits
    differ from PyTorch's by more than ``atol`` times the largest logit magnitude (at least 1) at any checked
    size. The scale matters for trained networks: float32 rounding grows with the
    activations (a trained teacher's logits reach tens), while a tracing error is off by whole units.
    """
    device = model_device(model)
    sample = torch.rand(1, 3, *sample_hw, device=device)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    buffer = io.BytesIO()
    with eval_mode(model):
        with warnings.catch_warnings():
            # the legacy exporter is chosen on purpose (see module docstring); its deprecation notes are noise
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
            # raised by the networks' input checks (a Python bool of a shape): the traced graph is checked
            # against PyTorch at other sizes just below, which is what the warning asks a person to do
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (sample,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                do_constant_folding=True,
            )
        session = ort_session(buffer.getvalue())
        shapes = [(2, *sample_hw)] + ([(1, *hw) for hw in verify_hw] if dynamic_hw else [])
        for batch, h, w in shapes:
            x = torch.rand(batch, 3, h, w)
            try:
                diff, scale = _max_abs_diff(model, session, x)
            except Exception as error:  # onnxruntime raises its own exception types
                raise OnnxExportError(
                    f"{name}: exported graph fails at input {tuple(x.shape)}: {error}"
                ) from error
            if diff > atol * max(1.0, scale):
                raise OnnxExportError(
                    f"{name}: onnxruntime logits differ from PyTorch by {diff:.3g} > atol {atol:g} x "
                    f"max(1, largest |logit| {scale:.3g}) at input {tuple(x.shape)} (a shape-dependent Python "
                    "branch frozen by tracing?)"
                )
    return buffer.getvalue()


def _max_abs_diff(model: nn.Module, session, x: Tensor) -> tuple[float, float]:
    """Max |onnxruntime - PyTorch| on the logits for CPU input ``x`` (model in eval mode, any device), and
    the largest |logit| PyTorch gave."""
    with torch.inference_mode():
        expected = model(x.to(model_device(model))).float().cpu().numpy()
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise OnnxExportError(f"onnxruntime output shape {got.shape} != PyTorch {expected.shape}")
    return float(np.abs(got - expected).max()), float(np.abs(expected).max())


def ort_session(model: str | Path | bytes, threads: int | None = None, spinning: bool = True):
    """A CPU onnxruntime session for an ONNX file or its bytes (threads=None: onnxruntime's default).

    `spinning=False` makes idle worker threads sleep instead of spin: what a process that decodes and writes
    in other threads meanwhile (predict) or a shared machine needs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_onnx(
    model: nn.Module,
    path: str | Path,
    sample: Tensor,
    *,
    warmup: int = 2,
    runs: int = 5,
) -> dict[str, float]:
    """Run ``sample`` through PyTorch (eval mode, CPU) and the ONNX file; report how far apart they are.

    Returns ``max_abs_diff`` (on logits), ``max_abs_logit`` (its scale), ``ort_latency_ms`` and
    ``torch_latency_ms`` (median of ``runs`` after ``warmup`` calls, same sample, same machine, on CPU).
    """
    cpu_model = model if model_device(model).type == "cpu" else copy.deepcopy(model).to("cpu")
    x = sample.detach().to("cpu", torch.float32)
    session = ort_session(path)
    feed = {INPUT_NAME: x.numpy()}
    with eval_mode(cpu_model), torch.inference_mode():
        diff, scale = _max_abs_diff(cpu_model, session, x)
        torch_ms = median_ms(lambda: cpu_model(x), warmup, runs)
    ort_ms = median_ms(lambda: session.run(None, feed), warmup, runs)
    return {"max_abs_diff": diff, "max_abs_logit": scale, "ort_latency_ms": ort_ms, "torch_latency_ms": torch_ms}


def quantize_onnx(path: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray]) -> Path:
    """Static int8 quantisation of an ONNX file (QDQ, per-channel int8 weights, uint8 activations).

    Activation ranges come from `calibration`: network inputs [1,3,H,W] float32 in [0,1], e.g.
    `dbdgan.inference.calibration_from_files` of training photos. Static int8 runs as QLinearConv,
    onnxruntime's fast int8 path; dynamic quantisation (no data needed) runs convolutions as ConvInteger,
    measured 10x slower than float for lite0_unet, so it is not offered. The graph first goes through
    onnxruntime's quantisation pre-processing (graph optimisation: it folds the Identity nodes the exporter
    leaves on shared weights, which the quantiser rejects; symbolic shape inference is skipped, as it cannot
    follow the dynamic H/W). Measure the accuracy it costs by scoring ``OnnxModel(out_path)`` with
    ``evaluate_models`` beside the float model.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("static int8 quantisation needs at least one calibration input")
    out_path = Path(out_path).resolve()  # absolute: the quantiser runs in a scratch working directory
    out_path.parent.mkdir(parents=True, exist_ok=True)
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp, contextlib.chdir(tmp):
        # onnxruntime's quantiser drops scratch files in the working directory: keep them in tmp.
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "quantised.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantised), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        atomic_write_bytes(out_path, quantised.read_bytes())
    return out_path


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over a list of network inputs."""

    def __init__(self, inputs: Sequence[np.ndarray]) -> None:
        self._feeds = iter([{INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def int8_agreement(float_model: str | Path, int8_model: str | Path, inputs: Sequence[np.ndarray]) -> dict[str, float]:
    """How far the int8 model's blur maps are from the float model's on `inputs` (the float maps as reference):
    mean absolute difference of the probabilities, the largest one, and the share of pixels on the same side of
    0.5. On the calibration photos themselves this is the quantisation error the int8 file adds, not accuracy
    against ground truth (`dbdgan evaluate` with evaluate.int8 scores that)."""
    reference, quantised = ort_session(float_model), ort_session(int8_model)
    diffs, agree, largest = [], [], 0.0
    for x in inputs:
        feed = {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}
        a = 1.0 / (1.0 + np.exp(-reference.run(None, feed)[0]))
        b = 1.0 / (1.0 + np.exp(-quantised.run(None, feed)[0]))
        diffs.append(float(np.abs(a - b).mean()))
        agree.append(float(((a >= 0.5) == (b >= 0.5)).mean()))
        largest = max(largest, float(np.abs(a - b).max()))
    return {"map_mae": float(np.mean(diffs)), "map_max_abs_diff": largest, "agreement_at_0_5": float(np.mean(agree)),
            "images": len(inputs)}


class OnnxModel(nn.Module):
    """An ONNX file (or its bytes) behind the DBDNet call signature: evaluation and predict run it like a
    torch model."""

    def __init__(self, source: str | Path | bytes, threads: int | None = None, spinning: bool = True) -> None:
        super().__init__()
        self.path = None if isinstance(source, bytes) else Path(source)
        self.session = ort_session(source if isinstance(source, bytes) else self.path, threads, spinning)

    def forward(self, x: Tensor) -> Tensor:
        pixels = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {INPUT_NAME: pixels})[0]).to(x.device)
