"""ONNX export for phones/servers, checked against PyTorch with onnxruntime, plus optional int8 quantisation.

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

from dbdgan.evaluation.efficiency import eval_mode, median_ms, model_device
from dbdgan.io_utils import atomic_write_bytes

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


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
    """Export ``model`` (image [B,3,H,W] in [0,1] -> logits [B,1,H,W]) to ``path``, verified, atomically.

    Batch is always dynamic; height and width are too when ``dynamic_hw`` (then ``verify_hw`` sizes are
    checked as well as the traced ``sample_hw``; batch 2 at the sample size). The model is traced in eval
    mode and its train/eval mode restored. Raises ``OnnxExportError`` if onnxruntime fails or its logits
    differ from PyTorch's by more than ``atol`` times the largest logit magnitude (at least 1) at any checked
    size; nothing is written then. The scale matters for trained networks: float32 rounding grows with the
    activations (a trained teacher's logits reach tens), while a tracing error is off by whole units.
    """
    path = Path(path)
    device = model_device(model)
    sample = torch.rand(1, 3, *sample_hw, device=device)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    buffer = io.BytesIO()
    with eval_mode(model):
        with warnings.catch_warnings():
            # the legacy exporter is chosen on purpose (see module docstring); its deprecation notes are noise
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*feature will be removed.*")
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
                    f"{path}: exported graph fails at input {tuple(x.shape)}: {error}"
                ) from error
            if diff > atol * max(1.0, scale):
                raise OnnxExportError(
                    f"{path}: onnxruntime logits differ from PyTorch by {diff:.3g} > atol {atol:g} x "
                    f"max(1, largest |logit| {scale:.3g}) at input {tuple(x.shape)} (a shape-dependent Python "
                    "branch frozen by tracing?)"
                )
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _max_abs_diff(model: nn.Module, session, x: Tensor) -> tuple[float, float]:
    """Max |onnxruntime - PyTorch| on the logits for CPU input ``x`` (model in eval mode, any device), and
    the largest |logit| PyTorch gave."""
    with torch.inference_mode():
        expected = model(x.to(model_device(model))).float().cpu().numpy()
    got = session.run(None, {INPUT_NAME: x.numpy()})[0]
    if got.shape != expected.shape:
        raise OnnxExportError(f"onnxruntime output shape {got.shape} != PyTorch {expected.shape}")
    return float(np.abs(got - expected).max()), float(np.abs(expected).max())


def ort_session(model: str | Path | bytes, threads: int | None = None):
    """A CPU onnxruntime session for an ONNX file or its bytes (threads=None: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
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


def quantize_onnx(path: str | Path, out_path: str | Path) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised on the fly) of an ONNX file.

    Needs no calibration data; conv and matmul weights become int8 (ConvInteger/MatMulInteger). The graph
    first goes through onnxruntime's quantisation pre-processing (graph optimisation: it folds the Identity
    nodes the exporter leaves on shared weights, which the quantiser rejects; symbolic shape inference is
    skipped, as it cannot follow the dynamic H/W). Measure the accuracy it costs by scoring
    ``OnnxModel(out_path)`` with ``evaluate_models`` beside the float model.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    path = Path(path).resolve()
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp, contextlib.chdir(tmp):
        # onnxruntime's quantiser drops scratch files in the working directory: keep them in tmp.
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "quantised.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(quantised), weight_type=QuantType.QInt8)
        atomic_write_bytes(out_path, quantised.read_bytes())
    return out_path


class OnnxModel(nn.Module):
    """An ONNX file behind the DBDNet call signature, so evaluation code can score it like a torch model."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = ort_session(self.path, threads)

    def forward(self, x: Tensor) -> Tensor:
        out = self.session.run(None, {INPUT_NAME: x.detach().to("cpu", torch.float32).numpy()})[0]
        return torch.from_numpy(out).to(x.device)
