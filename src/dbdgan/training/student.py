"""Adversarial distillation: a frozen teacher, the student, D2 (student vs ground truth), D3 (student vs teacher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dbdgan.checkpoint import init_weights_from, load_model_file
from dbdgan.config import Params
from dbdgan.losses import FeatureConstraint, consistency_loss, content_loss
from dbdgan.models import create_model
from dbdgan.training.amp import Precision
from dbdgan.training.engine import (
    TrainingJob,
    build_optimizer,
    build_scheduler,
    check_finite,
    file_sha256,
    fingerprint,
    fit,
    make_loaders,
)
from dbdgan.training.runtime import init_runtime, seed_everything, shutdown
from dbdgan.training.teacher import _unwrap, _wrap, adversarial_term, build_discriminator, update_discriminator


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


def _feature_strides(requested: list[int], student: nn.Module, teacher: nn.Module, weight: float) -> list[int]:
    if weight == 0 or not requested:
        return []
    missing = [s for s in requested if s not in student.feature_channels or s not in teacher.feature_channels]
    if missing:
        raise ValueError(f"distill_student.feature_strides {missing} are not strides of both networks "
                         f"(student {sorted(student.feature_channels)}, teacher {sorted(teacher.feature_channels)})")
    return list(requested)


def distill_student(params: Params, teacher_path: str | Path = "models/teacher.pt", data_dir: str | Path | None = None,
                    out_path: str | Path | None = None, checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """Distil the student from the frozen teacher; writes the best student (by validation max-F) to `out_path`."""
    cfg = params.distill_student
    data_dir = Path(data_dir or params.data.prepared_dir)
    runtime = init_runtime(params.device)
    try:
        seed_everything(params.seed, params.deterministic)
        teacher = load_model_file(teacher_path, runtime.device)
        teacher_sha = file_sha256(teacher_path)
        teacher.requires_grad_(False)
        arch_kwargs = dict(params.model.student_kwargs)
        student = create_model(params.model.student, **arch_kwargs)
        init_sha = file_sha256(cfg.init_from) if cfg.init_from else None
        if cfg.init_from:
            init_weights_from(student, params.model.student, cfg.init_from)
        strides = _feature_strides(cfg.feature_strides, student, teacher, cfg.w_feature)
        distill = DistillStudent(student, teacher.feature_channels, strides)
        d2, d3 = build_discriminator(params), build_discriminator(params)
        distill_ddp, d2_ddp, d3_ddp = (_wrap(m, runtime) for m in (distill, d2, d3))
        train_loader, val_loader = make_loaders(data_dir, cfg, params.seed, runtime)
        opt_s = build_optimizer(distill.parameters(), cfg.optim.lr, cfg.optim)
        opt_d2 = build_optimizer(d2.parameters(), cfg.optim.lr_d, cfg.optim)
        opt_d3 = build_optimizer(d3.parameters(), cfg.optim.lr_d, cfg.optim)
        total_steps = cfg.epochs * len(train_loader)
        precision = Precision(runtime.device, cfg.amp)

        def train_step(batch: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, float]:
            image = batch["image"].to(runtime.device, non_blocking=True)
            mask = batch["mask"].to(runtime.device, non_blocking=True)
            teacher.eval()
            with torch.no_grad(), precision.autocast():
                teacher_logits, teacher_feats = teacher.forward_with_features(image)
            teacher_prob = torch.sigmoid(teacher_logits.float())
            with precision.autocast():
                logits, feature = distill_ddp(image, teacher_feats)
            prob = torch.sigmoid(logits.float())
            grad_clip = cfg.optim.grad_clip
            d2_loss = update_discriminator(d2_ddp, opt_d2, precision, "d2", image, mask, prob, cfg.adversarial_loss,
                                           grad_clip, epoch, step)
            d3_loss = update_discriminator(d3_ddp, opt_d3, precision, "d3", image, teacher_prob, prob,
                                           cfg.adversarial_loss, grad_clip, epoch, step)
            with precision.autocast():
                terms = {
                    "content": content_loss(logits.float(), mask, kind=cfg.content_loss),
                    "consistency": consistency_loss(prob, teacher_prob, kind=cfg.consistency),
                    "feature": feature.float(),
                    "adv": adversarial_term(_unwrap(d2_ddp), image, mask, prob, cfg.adversarial_loss),
                    "distill": adversarial_term(_unwrap(d3_ddp), image, teacher_prob, prob, cfg.adversarial_loss),
                }
            check_finite(terms, epoch, step)
            weights = {"content": cfg.w_content, "consistency": cfg.w_consistency, "feature": cfg.w_feature,
                       "adv": cfg.w_adv, "distill": cfg.w_distill}
            total = sum(weights[name] * value for name, value in terms.items())
            precision.step("student", total, opt_s, distill, grad_clip)
            return {"d2": d2_loss, "d3": d3_loss, **{name: value.item() for name, value in terms.items()}}

        job = TrainingJob(
            stage="distill_student", params=params, runtime=runtime,
            modules={"student": distill, "d2": d2, "d3": d3},
            optimizers={"student": opt_s, "d2": opt_d2, "d3": opt_d3},
            schedulers={name: build_scheduler(opt, cfg.optim, total_steps)
                        for name, opt in (("student", opt_s), ("d2", opt_d2), ("d3", opt_d3))},
            train_step=train_step, exported=student, arch=params.model.student, arch_kwargs=arch_kwargs,
            train_loader=train_loader, val_loader=val_loader, epochs=cfg.epochs,
            checkpoint_dir=Path(checkpoint_dir or cfg.checkpoint_dir), out_path=Path(out_path or cfg.out),
            run_fingerprint=fingerprint(params.seed, params.model.model_dump(mode="json"),
                                        cfg.model_dump(mode="json", exclude={"epochs", "checkpoint_dir", "out"}),
                                        file_sha256(data_dir / "manifest.csv"), teacher_sha,
                                        runtime.world_size, init_sha),
            extra_metadata={"teacher_sha256": teacher_sha,
                            **({"init_from_sha256": init_sha} if init_sha else {})},
        )
        return fit(job)
    finally:
        shutdown(runtime)
