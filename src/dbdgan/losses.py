"""Training signals of Distill-DBDGAN: content, adversarial, consistency and feature-constraint losses.

Conventions: networks output logits; maps compared with each other are probabilities in [0, 1].
Discriminator losses average their real and fake terms (the pix2pix convention), so every kind has the
same scale (0.5 * (real term + fake term)); generator losses have a single term (two halves for RaGAN).
All losses are means over every element, so patch and per-pixel discriminators weigh the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONTENT_KINDS = ("bce", "bce_dice")
ADVERSARIAL_KINDS = ("lsgan", "vanilla", "hinge", "ragan")
CONSISTENCY_KINDS = ("l1", "l2")


def _check_kind(kind: str, allowed: tuple[str, ...], what: str) -> None:
    if kind not in allowed:
        raise ValueError(f"unknown {what} loss kind {kind!r}; choose one of {list(allowed)}")


def _check_same_shape(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice on the blurred class, per image then averaged: 1 - (2|P.T| + s) / (|P| + |T| + s)."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    tgt = target.float().flatten(1)
    inter = (prob * tgt).sum(1)
    dice = (2 * inter + smooth) / (prob.sum(1) + tgt.sum(1) + smooth)
    return (1 - dice).mean()


def content_loss(logits: Tensor, target: Tensor, kind: str = "bce") -> Tensor:
    """Supervised loss against the ground-truth mask (1 = blurred): BCE, or BCE + Dice."""
    _check_kind(kind, CONTENT_KINDS, "content")
    _check_same_shape(logits, target, "content loss logits and target")
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    if kind == "bce_dice":
        loss = loss + dice_loss(logits, target)
    return loss


def _bce(logits: Tensor, value: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, value))


def discriminator_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Loss for a discriminator that sees real (ground truth / teacher) and fake (generated) maps.

    lsgan: 0.5*(E(D(r)-1)^2 + E D(f)^2); vanilla: BCE against 1/0;
    hinge: 0.5*(E relu(1-D(r)) + E relu(1+D(f)));
    ragan (relativistic average, BCE form): real judged against the mean fake and vice versa.
    Pass `fake_logits` computed on detached generator outputs.
    """
    _check_kind(kind, ADVERSARIAL_KINDS, "adversarial")
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "lsgan":
        return 0.5 * (((real - 1) ** 2).mean() + (fake**2).mean())
    if kind == "vanilla":
        return 0.5 * (_bce(real, 1.0) + _bce(fake, 0.0))
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    return 0.5 * (_bce(real - fake.mean(), 1.0) + _bce(fake - real.mean(), 0.0))


def generator_adversarial_loss(kind: str, fake_logits: Tensor, real_logits: Tensor | None = None) -> Tensor:
    """Adversarial loss for the generator (teacher or student) given the discriminator's logits.

    lsgan: E(D(f)-1)^2; vanilla: non-saturating BCE(D(f), 1); hinge: -E D(f);
    ragan: 0.5*(BCE(D(r) - E D(f), 0) + BCE(D(f) - E D(r), 1)), which needs `real_logits`.
    """
    _check_kind(kind, ADVERSARIAL_KINDS, "adversarial")
    fake = fake_logits.float()
    if kind == "lsgan":
        return ((fake - 1) ** 2).mean()
    if kind == "vanilla":
        return _bce(fake, 1.0)
    if kind == "hinge":
        return -fake.mean()
    if real_logits is None:
        raise ValueError("adversarial loss kind 'ragan' needs real_logits for the generator loss")
    real = real_logits.float()
    return 0.5 * (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0))


def consistency_loss(student_prob: Tensor, teacher_prob: Tensor, kind: str = "l1") -> Tensor:
    """L1 or L2 distance between student and (detached) teacher probability maps: soft targets."""
    _check_kind(kind, CONSISTENCY_KINDS, "consistency")
    _check_same_shape(student_prob, teacher_prob, "consistency loss student and teacher maps")
    diff = student_prob.float() - teacher_prob.detach().float()
    return diff.abs().mean() if kind == "l1" else (diff**2).mean()


def _standardise(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance per sample over (C, H, W): compares feature patterns, not their scale."""
    x = x.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


class FeatureConstraint(nn.Module):
    """MSE between standardised teacher features and 1x1-adapted student features at chosen strides.

    The adapters are trainable: optimise them together with the student. Teacher features are detached.
    If a student map's size differs from the teacher's (different padding multiples), it is resized
    bilinearly to the teacher's size. The loss is the mean over the chosen strides.
    """

    def __init__(
        self, student_channels: dict[int, int], teacher_channels: dict[int, int], strides: list[int]
    ) -> None:
        super().__init__()
        if not strides:
            raise ValueError("FeatureConstraint needs at least one stride")
        for s in strides:
            if s not in student_channels or s not in teacher_channels:
                raise ValueError(
                    f"feature stride {s} not available: student has {sorted(student_channels)}, "
                    f"teacher has {sorted(teacher_channels)}"
                )
        self.strides = [int(s) for s in strides]
        self.adapters = nn.ModuleDict(
            {str(s): nn.Conv2d(student_channels[s], teacher_channels[s], 1, bias=False) for s in self.strides}
        )

    def forward(self, student_feats: dict[int, Tensor], teacher_feats: dict[int, Tensor]) -> Tensor:
        losses = []
        for s in self.strides:
            if s not in student_feats or s not in teacher_feats:
                raise KeyError(
                    f"feature stride {s} missing: student gave {sorted(student_feats)}, teacher gave "
                    f"{sorted(teacher_feats)}"
                )
            student = self.adapters[str(s)](student_feats[s])
            teacher = teacher_feats[s].detach()
            if student.shape[-2:] != teacher.shape[-2:]:
                student = F.interpolate(
                    student, size=teacher.shape[-2:], mode="bilinear", align_corners=False
                )
            losses.append(F.mse_loss(_standardise(student), _standardise(teacher)))
        return torch.stack(losses).mean()
