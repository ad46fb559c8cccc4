"""The two adversarial updates, one object each (in the style of pix2pix's `optimize_parameters`).

`TeacherGAN`: the teacher against D1 (image, map) pairs. `DistillationGAN`: the student against D2 (student vs
ground truth) and D3 (student vs the frozen teacher's map), with consistency and feature terms. Each has one
method per update (`update_discriminators`, `update_generator`) and `step(batch)` doing a whole iteration;
`training.engine.fit` calls `step`, and so does benchmarks/bench_training.py, so the benchmark measures the
real thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dbdgan.config import DistillParams, ModelParams, Params, TrainingParams
from dbdgan.losses import (
    FeatureConstraint,
    consistency_loss,
    content_loss,
    discriminator_loss,
    generator_adversarial_loss,
)
from dbdgan.models import create_discriminator
from dbdgan.training.amp import Precision
from dbdgan.training.engine import build_optimizer, check_finite, set_requires_grad
from dbdgan.training.runtime import Runtime

Batch = dict[str, torch.Tensor]


def build_discriminator(model: ModelParams) -> nn.Module:
    """A conditional discriminator on (RGB image, blur map): 4 input channels."""
    return create_discriminator(kind=model.discriminator, in_channels=4, width=model.discriminator_width,
                                n_layers=model.discriminator_layers, spectral_norm=model.spectral_norm)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def wrap(module: nn.Module, runtime: Runtime) -> nn.Module:
    """On the runtime's device; in DistributedDataParallel when the run has several processes."""
    module = module.to(runtime.device)
    if not runtime.distributed:
        return module
    device_ids = [runtime.device.index] if runtime.use_cuda else None
    return DistributedDataParallel(module, device_ids=device_ids)


def discriminate_pair(disc: nn.Module, image: torch.Tensor, real_map: torch.Tensor,
                      fake_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over real and fake together (DDP allows one forward per backward)."""
    logits = disc(torch.cat([image, image]), torch.cat([real_map, fake_map]))
    real_logits, fake_logits = logits.chunk(2)
    return real_logits, fake_logits


@dataclass
class Critic:
    """One discriminator, its optimiser and what it tells apart: `real` maps from a generator's maps."""

    name: str
    disc: nn.Module  # wrapped (DDP) when distributed
    optimizer: torch.optim.Optimizer

    def update(self, precision: Precision, image: torch.Tensor, real_map: torch.Tensor, fake_map: torch.Tensor,
               kind: str, grad_clip: float | None, epoch: int, step: int) -> float:
        """L_D: push D(real) up and D(fake) down; the generator's map is detached."""
        with precision.autocast():
            real_logits, fake_logits = discriminate_pair(self.disc, image, real_map, fake_map.detach())
            loss = discriminator_loss(kind, real_logits.float(), fake_logits.float())
        check_finite({self.name: loss}, epoch, step)
        precision.step(self.name, loss, self.optimizer, self.disc, grad_clip)
        return loss.item()

    def adversarial_term(self, image: torch.Tensor, real_map: torch.Tensor, fake_map: torch.Tensor,
                         kind: str) -> torch.Tensor:
        """L_adv for the generator: D's parameters are frozen so only the generator gets gradients."""
        disc = unwrap(self.disc)
        set_requires_grad(disc, False)
        try:
            real_logits, fake_logits = discriminate_pair(disc, image, real_map, fake_map)
            return generator_adversarial_loss(kind, fake_logits.float(), real_logits.float().detach())
        finally:
            set_requires_grad(disc, True)


def _critic(name: str, params: Params, cfg: TrainingParams, runtime: Runtime) -> tuple[Critic, nn.Module]:
    disc = build_discriminator(params.model)
    return Critic(name, wrap(disc, runtime), build_optimizer(disc, cfg.optim.lr_d, cfg.optim)), disc


def _inputs(batch: Batch, runtime: Runtime, cfg: TrainingParams) -> tuple[torch.Tensor, torch.Tensor]:
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    return (batch["image"].to(runtime.device, non_blocking=True, memory_format=memory_format),
            batch["mask"].to(runtime.device, non_blocking=True, memory_format=memory_format))


def to_memory_format(cfg: TrainingParams, *modules: nn.Module) -> None:
    """Channels-last weights when asked, in place (Module.to keeps the Parameter objects the optimisers hold)."""
    if cfg.channels_last:
        for module in modules:
            module.to(memory_format=torch.channels_last)


class TeacherGAN:
    """The teacher and D1. `modules` / `optimizers` are what the training loop checkpoints."""

    def __init__(self, teacher: nn.Module, params: Params, runtime: Runtime) -> None:
        self.cfg, self.runtime = params.train_teacher, runtime
        self.teacher = teacher
        self.teacher_ddp = wrap(teacher, runtime)
        self.d1, d1 = _critic("d1", params, self.cfg, runtime)
        self.opt_g = build_optimizer(teacher, self.cfg.optim.lr, self.cfg.optim)
        self.precision = Precision(runtime.device, self.cfg.amp, self.cfg.cpu_bf16)
        self.modules = {"teacher": teacher, "d1": d1}
        to_memory_format(self.cfg, *self.modules.values())
        self.optimizers = {"teacher": self.opt_g, "d1": self.d1.optimizer}

    def update_discriminators(self, image: torch.Tensor, mask: torch.Tensor, prob: torch.Tensor, epoch: int,
                              step: int) -> dict[str, float]:
        cfg = self.cfg
        return {"d1": self.d1.update(self.precision, image, mask, prob, cfg.adversarial_loss, cfg.optim.grad_clip,
                                     epoch, step)}

    def update_generator(self, image: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor,
                         prob: torch.Tensor, epoch: int, step: int) -> dict[str, float]:
        cfg = self.cfg
        with self.precision.autocast():
            content = content_loss(logits.float(), mask, kind=cfg.content_loss)
            adv = self.d1.adversarial_term(image, mask, prob, cfg.adversarial_loss)
        check_finite({"content": content, "adversarial": adv}, epoch, step)
        self.precision.step("teacher", cfg.w_content * content + cfg.w_adv * adv, self.opt_g, self.teacher,
                            cfg.optim.grad_clip)
        return {"content": content.item(), "adv": adv.item()}

    def step(self, batch: Batch, epoch: int, step: int) -> dict[str, float]:
        image, mask = _inputs(batch, self.runtime, self.cfg)
        with self.precision.autocast():
            logits = self.teacher_ddp(image)
        prob = torch.sigmoid(logits.float())
        losses = self.update_discriminators(image, mask, prob, epoch, step)
        return {**losses, **self.update_generator(image, mask, logits, prob, epoch, step)}


class DistillStudent(nn.Module):
    """The student plus its feature adapters: one module, so DDP sees one forward per step."""

    def __init__(self, student: nn.Module, teacher_channels: dict[int, int], strides: list[int]) -> None:
        super().__init__()
        self.student = student
        self.constraint = (FeatureConstraint(student.feature_channels, teacher_channels, strides)
                           if strides else None)

    def forward(self, image: torch.Tensor,
                teacher_feats: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.student.forward_with_features(image)
        if self.constraint is None:
            return logits, logits.new_zeros(())
        return logits, self.constraint(feats, teacher_feats)


def feature_strides(cfg: DistillParams, student: nn.Module, teacher: nn.Module) -> list[int]:
    """The strides whose features are matched: those requested, which both networks must have."""
    if cfg.w_feature == 0 or not cfg.feature_strides:
        return []
    missing = [s for s in cfg.feature_strides
               if s not in student.feature_channels or s not in teacher.feature_channels]
    if missing:
        raise ValueError(f"distill_student.feature_strides {missing} are not strides of both networks "
                         f"(student {sorted(student.feature_channels)}, teacher {sorted(teacher.feature_channels)})")
    return list(cfg.feature_strides)


class DistillationGAN:
    """The frozen teacher, the student (with its adapters), D2 and D3."""

    def __init__(self, teacher: nn.Module, student: nn.Module, params: Params, runtime: Runtime) -> None:
        self.cfg, self.runtime = params.distill_student, runtime
        self.teacher = teacher.to(runtime.device).requires_grad_(False)
        self.distill = DistillStudent(student, teacher.feature_channels, feature_strides(self.cfg, student, teacher))
        self.distill_ddp = wrap(self.distill, runtime)
        self.d2, d2 = _critic("d2", params, self.cfg, runtime)
        self.d3, d3 = _critic("d3", params, self.cfg, runtime)
        self.opt_s = build_optimizer(self.distill, self.cfg.optim.lr, self.cfg.optim)
        self.precision = Precision(runtime.device, self.cfg.amp, self.cfg.cpu_bf16)
        self.modules = {"student": self.distill, "d2": d2, "d3": d3}
        to_memory_format(self.cfg, self.teacher, *self.modules.values())
        self.optimizers = {"student": self.opt_s, "d2": self.d2.optimizer, "d3": self.d3.optimizer}

    def update_discriminators(self, image: torch.Tensor, mask: torch.Tensor, teacher_prob: torch.Tensor,
                              prob: torch.Tensor, epoch: int, step: int) -> dict[str, float]:
        kind, clip = self.cfg.adversarial_loss, self.cfg.optim.grad_clip
        return {"d2": self.d2.update(self.precision, image, mask, prob, kind, clip, epoch, step),
                "d3": self.d3.update(self.precision, image, teacher_prob, prob, kind, clip, epoch, step)}

    def update_generator(self, image: torch.Tensor, mask: torch.Tensor, teacher_prob: torch.Tensor,
                         logits: torch.Tensor, prob: torch.Tensor, feature: torch.Tensor, epoch: int,
                         step: int) -> dict[str, float]:
        cfg = self.cfg
        with self.precision.autocast():
            terms = {
                "content": content_loss(logits.float(), mask, kind=cfg.content_loss),
                "consistency": consistency_loss(prob, teacher_prob, kind=cfg.consistency),
                "feature": feature.float(),
                "adv": self.d2.adversarial_term(image, mask, prob, cfg.adversarial_loss),
                "distill": self.d3.adversarial_term(image, teacher_prob, prob, cfg.adversarial_loss),
            }
        check_finite(terms, epoch, step)
        weights = {"content": cfg.w_content, "consistency": cfg.w_consistency, "feature": cfg.w_feature,
                   "adv": cfg.w_adv, "distill": cfg.w_distill}
        total = sum(weights[name] * value for name, value in terms.items())
        self.precision.step("student", total, self.opt_s, self.distill, cfg.optim.grad_clip)
        return {name: value.item() for name, value in terms.items()}

    def step(self, batch: Batch, epoch: int, step: int) -> dict[str, float]:
        image, mask = _inputs(batch, self.runtime, self.cfg)
        self.teacher.eval()
        with torch.no_grad(), self.precision.autocast():
            teacher_logits, teacher_feats = self.teacher.forward_with_features(image)
        teacher_prob = torch.sigmoid(teacher_logits.float())
        with self.precision.autocast():
            logits, feature = self.distill_ddp(image, teacher_feats)
        prob = torch.sigmoid(logits.float())
        losses = self.update_discriminators(image, mask, teacher_prob, prob, epoch, step)
        return {**losses, **self.update_generator(image, mask, teacher_prob, logits, prob, feature, epoch, step)}
