"""The fast prediction path gives the maps of the plain one: batch norm folded, channels-last, same-size
batching, overlapped decode/write, the onnxruntime backend (tiny presets, small images: seconds)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dbdgan.checkpoint import save_model_file
from dbdgan.inference import blur_maps, network_input, predict_probability, prepare_network, to_tensor
from dbdgan.models import create_model
from dbdgan.models.blocks import Conv2dSame
from dbdgan.models.fusion import fold_batchnorm, inference_copy
from dbdgan.predict import predict_paths

TINY = ["teacher_tiny", "teacher_lite_tiny", "mobile_tiny", "lite_unet_tiny", "efficientunet_tiny"]

# tracing for the onnx backend warns about the input-shape check; the export verifies the graph itself
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def trained_like(name: str) -> nn.Module:
    """A preset with batch-norm statistics and affine terms away from their defaults, so folding shows."""
    torch.manual_seed(0)
    model = create_model(name)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


def photo(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", TINY)
def test_folded_channels_last_copy_gives_the_same_logits(name):
    model = trained_like(name)
    keys = list(model.state_dict())
    fast = inference_copy(model)
    remaining = [m for m in fast.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(remaining) < sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # only the DenseASPP's pre-activation batch norms (no conv before them) are left
    assert all(type(parent).__name__ == "DenseASPPUnit" for parent in fast.modules()
               for child in parent.children() if isinstance(child, nn.BatchNorm2d))
    assert list(model.state_dict()) == keys  # the training network (what model files hold) is untouched
    x = torch.rand(2, 3, 45, 61, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x)  # the plain path
    with torch.inference_mode():
        got = fast(x)  # what prediction runs
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max().clamp(min=1)))


def test_padding_before_the_expansion_equals_padding_after_it():
    """Under inference_mode a stride-2 MBConv pads its input instead of its 6x wider expansion: the same
    logits as the plain path (no_grad, autograd), which pads the expansion itself."""
    model = trained_like("lite_unet_tiny")
    x = torch.rand(1, 3, 45, 61, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        fast = model(x)
    with torch.no_grad():
        plain = model(x)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_fold_leaves_the_model_and_its_mode_alone():
    model = trained_like("mobile_tiny").train()
    folded = fold_batchnorm(model)
    assert model.training and not folded.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (5, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize("size", [(16, 16), (15, 18)])
def test_conv2d_same_matches_tensorflow_same_padding(kernel, stride, size):
    """The stride-1 shortcut (the conv pads itself) gives what the explicit TF pad gives, at odd sizes too."""
    torch.manual_seed(0)
    conv = Conv2dSame(4, 4, kernel, stride, groups=4, bias=False)
    x = torch.rand(1, 4, *size)
    pads = [kernel - stride + (-n) % stride for n in size]  # TF: total pad per axis, the extra pixel after
    padded = F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))
    expected = F.conv2d(padded, conv.weight, None, stride, 0, 1, 4)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-2:] == tuple(-(-n // stride) for n in size)


def test_batched_maps_equal_single_image_prediction():
    """Same-size images share a batch (wherever they are in the list), others run on their own; every map
    equals the plain model's single-image prediction, at native resolution and resized."""
    model = trained_like("lite_unet_tiny")
    images = [photo(40, 56, 1), photo(33, 21, 2), photo(40, 56, 3), photo(40, 56, 4), photo(33, 21, 5)]
    fast = prepare_network(model)
    for size in (None, 48, (32, 40)):
        maps = blur_maps(fast, images, size, batch_size=2)
        for image, got in zip(images, maps, strict=True):
            expected = predict_probability(model, to_tensor(image), size)[0, 0].numpy()
            assert got.shape == image.shape[:2] and got.dtype == np.float32
            np.testing.assert_allclose(got, expected, atol=1e-5)



def test_the_8_bit_resize_is_the_float_resize_rounded():
    """Preprocessing resizes the 8-bit pixels (6x cheaper): whole grey levels, as the training loader's, within one
    of resizing in float; at the photo's own size the pixels are only scaled."""
    image = np.random.default_rng(3).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    got = network_input(image, (40, 48))
    assert got.dtype == torch.float32 and got.shape == (1, 3, 40, 48)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    in_float = F.interpolate(pixels, size=(40, 48), mode="bilinear", align_corners=False, antialias=True)
    assert (got - in_float).abs().max() <= 1.0 / 255 + 1e-6
    assert (got * 255.0 - (got * 255.0).round()).abs().max() < 1e-3  # whole grey levels, as the loader's
    np.testing.assert_array_equal(network_input(image, None)[0].permute(1, 2, 0).numpy(), image / np.float32(255.0))

@pytest.fixture(scope="module")
def photos_and_model(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("speed")
    folder = root / "photos"
    folder.mkdir()
    for i, (h, w) in enumerate([(48, 64), (48, 64), (37, 50), (48, 64), (64, 48), (37, 50), (48, 64)]):
        Image.fromarray(photo(h, w, i)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    model = trained_like("lite_unet_tiny")
    path = root / "student.pt"
    save_model_file(path, model.arch, model.arch_kwargs, model, {"input_size": 40})
    return folder, path


def _written(out: Path, stem: str) -> np.ndarray:
    return np.asarray(Image.open(out / f"{stem}_blur.png"), dtype=np.float32) / 255.0


@pytest.mark.parametrize("input_size", ["auto", None])
def test_onnx_backend_writes_the_maps_pytorch_writes(tmp_path, photos_and_model, input_size):
    folder, model_file = photos_and_model
    runs = {backend: predict_paths([folder], model_file, tmp_path / backend, batch_size=3, input_size=input_size,
                                   progress=False, backend=backend, workers=2)
            for backend in ("torch", "onnx")}
    for backend, summary in runs.items():
        assert summary["backend"] == backend and summary["written"] == 7
        assert [Path(f["path"]).name for f in summary["failed"]] == ["broken.jpg"]
    for i in range(7):
        # the same map up to float rounding; 8-bit quantisation may round a pixel either way
        assert np.abs(_written(tmp_path / "onnx", f"p{i}") - _written(tmp_path / "torch", f"p{i}")).max() <= 1 / 255


def test_predict_without_overlays_times_every_stage(tmp_path, photos_and_model):
    folder, model_file = photos_and_model
    from dbdgan.checkpoint import load_model_file

    summary = predict_paths([folder], model_file, tmp_path / "out", batch_size=4, progress=False, overlays=False,
                            workers=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"p{i}_blur.png" for i in range(7)]
    assert all("overlay" not in entry for entry in summary["outputs"])
    timings = summary["timings"]
    for stage in ("decode", "preprocess", "network", "postprocess", "write"):
        assert timings[f"{stage}_s"] > 0, stage
    assert timings["prepare_s"] + timings["images_s"] == pytest.approx(timings["wall_s"])
    model = load_model_file(model_file)
    for i in (0, 2):
        image = np.asarray(Image.open(folder / f"p{i}.png"))
        expected = predict_probability(model, to_tensor(image), 40)[0, 0].numpy()
        assert np.abs(_written(tmp_path / "out", f"p{i}") - expected).max() <= 0.5 / 255 + 1e-5


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        prepare_network(create_model("mobile_tiny"), "tensorrt")  # type: ignore[arg-type]


def test_a_failed_write_fails_the_call(tmp_path, photos_and_model):
    """Writes run in threads; one that fails (here: a folder where the map should go) is not lost."""
    folder, model_file = photos_and_model
    (tmp_path / "out" / "p3_blur.png").mkdir(parents=True)
    with pytest.raises(OSError):
        predict_paths([folder], model_file, tmp_path / "out", batch_size=2, progress=False, overlays=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_workers_run_below_the_network_in_priority():
    """Decode/write threads drop to nice 19 so they fill the network's gaps; the calling thread keeps its own."""
    from concurrent.futures import ThreadPoolExecutor

    from dbdgan import predict

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with ThreadPoolExecutor(1, initializer=predict._yield_to_network) as pool:
        worker = pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    assert worker == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_written_maps_are_the_float_maps_rounded():
    """predict rounds on the network's threads; the grey levels are those of `blur_map` rounded, exactly."""
    from dbdgan.inference import blur_map, blur_map_8bit

    torch.manual_seed(0)
    for prob in (torch.rand(1, 1, 40, 50), torch.rand(1, 1, 64, 64)):
        for shape in ((97, 131, 3), (64, 64, 3)):
            expected = (blur_map(prob.clone(), shape) * 255.0 + 0.5).astype(np.uint8)
            np.testing.assert_array_equal(blur_map_8bit(prob.clone(), shape), expected)
