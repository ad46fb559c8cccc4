"""Losses: hand-computed values on tiny tensors, gradient flow, error messages, feature constraint."""

from __future__ import annotations

import math

import pytest
import torch

from dbdgan.losses import (
    ADVERSARIAL_KINDS,
    FeatureConstraint,
    consistency_loss,
    content_loss,
    discriminator_loss,
    generator_adversarial_loss,
)
from dbdgan.models import create_model

LN2 = math.log(2.0)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_content_bce_and_dice_values() -> None:
    # BCE: target 1 at logit 0 -> ln 2; target 0 at logit ln 3 (p = 3/4) -> ln 4.
    assert content_loss(_t(0.0, math.log(3.0)), _t(1.0, 0.0)).item() == pytest.approx(1.5 * LN2)
    # p = 0.5 everywhere, target all ones (4 px): Dice = (2*2 + 1) / (2 + 4 + 1) = 5/7.
    value = content_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), kind="bce_dice").item()
    assert value == pytest.approx(LN2 + 2 / 7)


def test_content_errors() -> None:
    with pytest.raises(ValueError, match="unknown content loss kind 'iou'"):
        content_loss(_t(0.0), _t(1.0), kind="iou")
    with pytest.raises(ValueError, match="shapes differ"):
        content_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))


def test_lsgan_values() -> None:
    assert discriminator_loss("lsgan", _t(1.0, 0.0), _t(0.0, 1.0)).item() == pytest.approx(0.5)
    assert generator_adversarial_loss("lsgan", _t(0.0, 1.0)).item() == pytest.approx(0.5)


def test_vanilla_values() -> None:
    assert discriminator_loss("vanilla", _t(0.0), _t(0.0)).item() == pytest.approx(LN2)
    assert generator_adversarial_loss("vanilla", _t(0.0)).item() == pytest.approx(LN2)


def test_hinge_values() -> None:
    # real: relu(1-2)=0, relu(1-0)=1 -> 0.5; fake: relu(1-2)=0, relu(1+0)=1 -> 0.5; averaged -> 0.5.
    assert discriminator_loss("hinge", _t(2.0, 0.0), _t(-2.0, 0.0)).item() == pytest.approx(0.5)
    assert generator_adversarial_loss("hinge", _t(-2.0, 0.0)).item() == pytest.approx(1.0)


def test_ragan_values_and_needs_real() -> None:
    real, fake = _t(1.0, 1.0), _t(0.0, 0.0)
    # D: BCE(1 - 0, 1) = BCE(0 - 1, 0) = softplus(-1); G: both terms softplus(1).
    assert discriminator_loss("ragan", real, fake).item() == pytest.approx(math.log1p(math.exp(-1)))
    assert generator_adversarial_loss("ragan", fake, real).item() == pytest.approx(math.log1p(math.e))
    with pytest.raises(ValueError, match="'ragan' needs real_logits"):
        generator_adversarial_loss("ragan", fake)
    with pytest.raises(ValueError, match="unknown adversarial loss kind 'wgan'"):
        discriminator_loss("wgan", real, fake)


@pytest.mark.parametrize("kind", ADVERSARIAL_KINDS)
def test_adversarial_gradients_flow(kind: str) -> None:
    real = torch.randn(2, 1, 3, 3, requires_grad=True)
    fake = torch.randn(2, 1, 3, 3, requires_grad=True)
    d_loss = discriminator_loss(kind, real, fake)
    d_loss.backward()
    assert real.grad is not None and fake.grad is not None
    assert torch.isfinite(real.grad).all() and fake.grad.abs().sum() > 0
    fake.grad = None
    g_loss = generator_adversarial_loss(kind, fake, real.detach())
    g_loss.backward()
    assert fake.grad.abs().sum() > 0 and g_loss.ndim == 0


def test_consistency_values_and_teacher_detached() -> None:
    student = _t(0.2, 0.8).requires_grad_(True)
    teacher = _t(0.0, 1.0).requires_grad_(True)
    assert consistency_loss(student, teacher, "l1").item() == pytest.approx(0.2)
    loss = consistency_loss(student, teacher, "l2")
    assert loss.item() == pytest.approx(0.04)
    loss.backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match="unknown consistency loss kind 'kl'"):
        consistency_loss(student, teacher, "kl")


def test_feature_constraint_adapters_and_values() -> None:
    fc = FeatureConstraint({4: 3, 8: 5}, {4: 6, 8: 7, 16: 9}, strides=[4, 8])
    assert fc.adapters["4"].weight.shape == (6, 3, 1, 1)
    assert fc.adapters["8"].weight.shape == (7, 5, 1, 1)
    student = {4: torch.randn(2, 3, 8, 8, requires_grad=True), 8: torch.randn(2, 5, 3, 3, requires_grad=True)}
    teacher = {4: torch.randn(2, 6, 8, 8, requires_grad=True), 8: torch.randn(2, 7, 4, 4)}  # 8: sizes differ
    loss = fc(student, teacher)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert fc.adapters["4"].weight.grad is not None and student[8].grad is not None
    assert teacher[4].grad is None  # teacher features are targets only

    same = FeatureConstraint({4: 3}, {4: 3}, strides=[4])
    with torch.no_grad():
        same.adapters["4"].weight.copy_(2.0 * torch.eye(3).view(3, 3, 1, 1))  # scale is normalised away
    feats = torch.randn(2, 3, 5, 5)
    assert same({4: feats}, {4: feats}).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_constraint_errors() -> None:
    with pytest.raises(ValueError, match="stride 32 not available"):
        FeatureConstraint({4: 3}, {4: 3, 32: 4}, strides=[32])
    fc = FeatureConstraint({4: 3}, {4: 3}, strides=[4])
    with pytest.raises(KeyError, match="stride 4 missing"):
        fc({}, {4: torch.zeros(1, 3, 2, 2)})


def test_feature_constraint_between_real_networks() -> None:
    teacher = create_model("teacher_tiny").eval()
    student = create_model("mobile_tiny").train()
    strides = [4, 8, 16]
    fc = FeatureConstraint(student.feature_channels, teacher.feature_channels, strides)
    x = torch.rand(2, 3, 48, 48)  # 48: teacher pads to 48, student to 64 -> resized inside
    with torch.no_grad():
        _, t_feats = teacher.forward_with_features(x)
    logits, s_feats = student.forward_with_features(x)
    loss = fc(s_feats, t_feats) + consistency_loss(torch.sigmoid(logits), torch.rand(2, 1, 48, 48))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in fc.parameters())
