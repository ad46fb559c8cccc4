"""Networks: any input size, features, dropout, preset sizes, pretrained loading, discriminators."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dbdgan.models import (
    DBDNet,
    PretrainedWeightsError,
    count_parameters,
    create_discriminator,
    create_model,
    list_models,
)
from dbdgan.models.blocks import DenseASPP, SelfAttention2d, crop_to, pad_to_multiple
from dbdgan.models.info import count_flops, eval_mode, model_device, timed_runs

TINY = ["teacher_tiny", "mobile_tiny", "efficientunet_tiny"]


def test_registry_lists_every_preset() -> None:
    expected = {"teacher_paper", "teacher_small", "teacher_tiny", "efficientunet_b3", "efficientunet_tiny"}
    expected |= {"mobile", "mobile_small", "mobile_tiny"}
    assert expected <= set(list_models())


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [(33, 47), (64, 80), (5, 3)])
def test_output_matches_input_size_and_features(name: str, size: tuple[int, int]) -> None:
    model = create_model(name).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        logits, feats = model.forward_with_features(x)
    assert isinstance(model, DBDNet)
    assert logits.shape == (2, 1, *size)
    assert torch.isfinite(logits).all()
    assert set(feats) == set(model.feature_channels)
    for stride, f in feats.items():
        assert f.shape[1] == model.feature_channels[stride]
        padded = [math.ceil(s / model.pad_multiple) * model.pad_multiple for s in size]
        assert f.shape[-2:] == tuple(p // stride for p in padded)


@pytest.mark.parametrize("name", ["teacher_small", "mobile_small"])
def test_small_presets_run(name: str) -> None:
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 33, 47)).shape == (1, 1, 33, 47)


@pytest.mark.parametrize("name", TINY)
def test_train_step_reaches_encoder_and_head(name: str) -> None:
    model = create_model(name, drop_rate=0.1).train()
    logits = model(torch.rand(2, 3, 40, 40))
    logits.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["decoder.head.weight"] is not None and grads["decoder.head.weight"].abs().sum() > 0
    stem = next(n for n in grads if n.startswith("encoder."))
    assert grads[stem] is not None and torch.isfinite(grads[stem]).all()


def test_dropout_only_in_training() -> None:
    model = create_model("teacher_tiny", drop_rate=0.5)
    x = torch.rand(1, 3, 48, 48)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


def test_teacher_topology() -> None:
    model = create_model("teacher_tiny")
    assert model.encoder.out_strides == [2, 2, 4, 8, 16]  # no stem max-pool
    assert model.pad_multiple == 16
    assert model.decoder.context.attention.gamma.item() == 0.0
    assert [u.conv2.dilation[0] for u in model.decoder.context.aspp.units] == [2, 4, 6, 8]


def test_overrides_and_arch_record() -> None:
    model = create_model("teacher_tiny", decoder_channels=[16, 16, 8, 8, 8])
    assert model.arch == "teacher_tiny"
    assert model.arch_kwargs == {"decoder_channels": [16, 16, 8, 8, 8]}
    assert model.decoder.head.in_channels == 8
    assert "mean" not in model.state_dict()  # normalisation constants are not weights
    with pytest.raises(ValueError, match="does not accept \\['widht'\\]"):
        create_model("mobile_tiny", widht=2)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")


def test_paper_presets_sizes() -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost, FLOPs still counted
        teacher = create_model("teacher_paper").eval()
        student = create_model("efficientunet_b3").eval()
        mobile = create_model("mobile").eval()
        x = torch.rand(1, 3, 320, 320)
        flops = {}
        for name, model in (("teacher", teacher), ("mobile", mobile)):
            with FlopCounterMode(display=False) as counter:
                model(x)
            flops[name] = counter.get_total_flops()
    assert 75e6 < count_parameters(teacher) < 85e6
    assert 19e6 < count_parameters(student) < 23e6
    assert count_parameters(mobile) <= 4e6
    assert flops["teacher"] >= 20 * flops["mobile"]


def test_pretrained_encoder_loads(tmp_path) -> None:
    source = create_model("teacher_tiny")
    path = tmp_path / "enc.pt"
    torch.save(source.encoder.state_dict(), path)
    model = create_model("teacher_tiny", pretrained=str(path))
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)
    assert "pretrained" not in model.arch_kwargs


def test_pretrained_mismatch_is_clear(tmp_path) -> None:
    path = tmp_path / "mobile_enc.pt"
    torch.save(create_model("mobile_tiny").encoder.state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="mobile_enc.pt.*missing key.*layer0.conv1.weight"):
        create_model("teacher_tiny", pretrained=path)
    wide = tmp_path / "wide.pt"
    torch.save(create_model("teacher_tiny", stem_channels=8).encoder.state_dict(), wide)
    with pytest.raises(PretrainedWeightsError, match=r"mismatch.*layer0.conv1.weight: file \(8, 3, 3, 3\)"):
        create_model("teacher_tiny", pretrained=wide)
    junk = tmp_path / "junk.pt"
    torch.save([1, 2], junk)
    with pytest.raises(PretrainedWeightsError, match="junk.pt is not a state_dict"):
        create_model("teacher_tiny", pretrained=junk)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        create_model("teacher_tiny", pretrained=tmp_path / "absent.pt")


@pytest.mark.parametrize("kind", ["patch", "unet"])
@pytest.mark.parametrize("spectral_norm", [True, False])
@pytest.mark.parametrize("size", [(32, 32), (33, 47)])
def test_discriminator_shapes(kind: str, spectral_norm: bool, size: tuple[int, int]) -> None:
    disc = create_discriminator(kind, width=8, n_layers=3, spectral_norm=spectral_norm)
    image = torch.rand(2, 3, *size)
    prob = torch.rand(2, 1, *size, requires_grad=True)
    out = disc(image, prob)
    assert out.shape[:2] == (2, 1) and min(out.shape[-2:]) >= 1
    if kind == "unet":
        assert out.shape[-2:] == size
    out.mean().backward()
    assert prob.grad is not None and prob.grad.abs().sum() > 0


def test_discriminator_errors() -> None:
    with pytest.raises(ValueError, match="unknown discriminator kind 'gan'"):
        create_discriminator("gan")
    disc = create_discriminator("patch", width=4)
    with pytest.raises(ValueError, match="in_channels=4"):
        disc(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    unconditional = create_discriminator("patch", in_channels=1, width=4)
    assert unconditional(torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32)).shape == (1, 1, 2, 2)


def test_model_cost_times_the_prepared_network_and_leaves_the_model_as_it_was() -> None:
    from dbdgan.inference import model_cost

    model = create_model("mobile_tiny").train()
    cost = model_cost(model, 64, warmup=1, runs=2, throughput_batch=2)
    assert cost["params"] == count_parameters(model)  # the model's, not the folded copy's
    assert cost["flops"] == count_flops(model, 64) > 0 and cost["latency_ms_b1"] > 0
    assert cost["throughput_img_s"] > 0 and cost["input_size"] == 64
    assert {"torch_threads", "omp_wait_policy", "allocator"} <= set(cost)  # what the timings ran with
    assert model.training and all(p.requires_grad for p in model.parameters())  # left as it was


def test_torch_helpers() -> None:
    model = create_model("mobile_tiny").train()
    with eval_mode(model):
        assert not model.training
    assert model.training  # mode restored
    assert model_device(model).type == "cpu" and model_device(torch.nn.Identity()).type == "cpu"
    assert count_parameters(model, trainable_only=True) == count_parameters(model)
    assert len(timed_runs(lambda: None, 1, 3)) == 3
    assert len(timed_runs(lambda: None, 5, 5, budget_s=0.0)) == 1  # time budget: at least one timed call


def test_blocks() -> None:
    x = torch.rand(1, 2, 33, 47)
    padded = pad_to_multiple(x, 16)
    assert padded.shape[-2:] == (48, 48)
    assert torch.equal(crop_to(padded, 33, 47), x)
    aspp = DenseASPP(8, 8, 4, (2, 4, 6, 8))
    assert aspp(torch.rand(1, 8, 6, 6)).shape == (1, aspp.out_channels, 6, 6) and aspp.out_channels == 24
    attn = SelfAttention2d(16)
    y = torch.rand(2, 16, 5, 7)
    assert torch.equal(attn(y), y)  # gamma starts at 0: identity
