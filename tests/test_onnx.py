"""ONNX export round trip: one file, any height/width, onnxruntime matches PyTorch within 1e-4."""

from __future__ import annotations

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dbdgan.inference import model_cost
from dbdgan.inference_onnx import OnnxExportError, OnnxModel, check_onnx, export_onnx, quantize_onnx

# PadCropNet's shape branch makes the tracer warn; the exports below are verified numerically instead
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


class PadCropNet(nn.Module):
    """DBDNet-shaped: pads to stride 4, encodes at strides 2 and 4, upsamples, crops back to H, W."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.down2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Conv2d(16 + 3, 1, 3, padding=1)
        self.drop = nn.Dropout2d(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % 4, (-w) % 4
        # a Python branch on the shape, as the real models have: tracing freezes whichever branch it saw
        xp = x if pad_h == 0 and pad_w == 0 else F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        f = self.down2(torch.relu(self.bn(self.down1(xp))))
        up = F.interpolate(f, size=xp.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.drop(torch.cat([up, xp], 1)))[..., :h, :w]


@pytest.fixture
def model() -> PadCropNet:
    torch.manual_seed(0)
    net = PadCropNet()
    with torch.no_grad():  # non-trivial BN statistics, so eval vs train mode would show
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.train()  # export must switch to eval itself and restore the mode


def test_export_round_trip_dynamic_hw(model, tmp_path):
    path = export_onnx(model, tmp_path / "model.onnx")
    assert model.training, "export must restore train mode"
    onnx.checker.check_model(str(path))
    dims = [
        d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    ]
    assert dims == ["batch", 3, "height", "width"]
    torch.manual_seed(1)
    for shape in [(1, 3, 48, 48), (2, 3, 37, 61)]:  # neither is the traced size (67 x 93)
        report = check_onnx(model, path, torch.rand(*shape), warmup=1, runs=2)
        assert report["max_abs_diff"] < 1e-4, (shape, report)
        assert report["ort_latency_ms"] > 0 and report["torch_latency_ms"] > 0
    assert model.training
    assert not list(tmp_path.glob(".*tmp")), "no temp files left behind"


def test_export_traced_at_a_multiple_of_the_stride_is_caught(model, tmp_path):
    """Traced at 64 x 64 the pad branch is dropped; the built-in verification must refuse the file."""
    with pytest.raises(OnnxExportError, match=r"input \(1, 3, 75, 101\)"):
        export_onnx(model, tmp_path / "bad.onnx", sample_hw=(64, 64))
    assert not (tmp_path / "bad.onnx").exists()


def test_static_int8_is_calibrated_and_runs_as_qlinear(model, tmp_path):
    """Static quantisation uses the calibration inputs' ranges and leaves int8 convolutions (QDQ) in the file."""
    path = export_onnx(model, tmp_path / "model.onnx")
    generator = torch.Generator().manual_seed(3)
    calibration = [torch.rand(1, 3, 40, 52, generator=generator).numpy() for _ in range(4)]
    qpath = quantize_onnx(path, tmp_path / "model.qdq.onnx", calibration)
    ops = {node.op_type for node in onnx.load(qpath).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = torch.from_numpy(calibration[0])
    with torch.no_grad():
        expected = torch.sigmoid(model.eval()(x))
    assert (torch.sigmoid(OnnxModel(qpath)(x)) - expected).abs().max().item() < 0.05
    with pytest.raises(ValueError, match="at least one calibration input"):
        quantize_onnx(path, tmp_path / "none.onnx", [])


def test_model_cost_tiny(model):
    report = model_cost(model, size=32, warmup=1, runs=2, throughput_batch=2, throughput_runs=1)
    assert report["params"] == sum(p.numel() for p in model.parameters())
    # down1: 16x16 outputs x 8 ch x 27 MACs; down2: 8x8 x 16 x 72; head: 32x32 x 1 x 171 (x2 FLOPs per MAC)
    assert report["flops"] == 2 * (16 * 16 * 8 * 27 + 8 * 8 * 16 * 72 + 32 * 32 * 171)
    assert report["size_bytes"] > 4 * report["params"]
    assert report["latency_ms_b1"] > 0 and report["throughput_img_s"] > 0
    assert model.training
