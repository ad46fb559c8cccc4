"""Adversarial distillation: a frozen teacher, the student, D2 (student vs ground truth), D3 (student vs teacher)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbdgan.checkpoint import init_weights_from, load_model_file
from dbdgan.config import Params
from dbdgan.data import manifest
from dbdgan.io_utils import file_sha256
from dbdgan.models import create_model
from dbdgan.tracking import Tracking
from dbdgan.training.engine import TrainingJob, build_scheduler, fingerprint, fit, make_loaders
from dbdgan.training.gan import DistillationGAN
from dbdgan.training.runtime import init_runtime, seed_everything, shutdown


def distill_student(params: Params, dataset: Path, teacher: Path, out: Path, checkpoints: Path,
                    tracking: Tracking, init: Path | None = None) -> dict[str, Any]:
    """Distil the student from the frozen teacher file; writes the best student (by `best_metric`) to `out`.

    init: a model file of the same student network to start from (synthetic pre-training).
    """
    cfg = params.distill_student
    runtime = init_runtime(params.device)
    try:
        seed_everything(params.seed, params.deterministic)
        frozen = load_model_file(teacher, runtime.device)
        teacher_sha = file_sha256(teacher)
        arch_kwargs = dict(params.model.student_kwargs)
        student = create_model(params.model.student, pretrained=params.model.student_pretrained, **arch_kwargs)
        init_sha = file_sha256(init) if init else None
        if init:
            init_weights_from(student, params.model.student, init)
        gan = DistillationGAN(frozen, student, params, runtime)
        train_loader, val_loader = make_loaders(dataset, cfg, params.seed, runtime)
        total_steps = cfg.epochs * len(train_loader)
        job = TrainingJob(
            stage="distill_student", params=params, runtime=runtime, tracking=tracking,
            best_metric=cfg.best_metric, ema_decay=cfg.ema_decay,
            modules=gan.modules, optimizers=gan.optimizers,
            schedulers={name: build_scheduler(opt, cfg.optim, total_steps) for name, opt in gan.optimizers.items()},
            train_step=gan.step, exported=student, arch=params.model.student, arch_kwargs=arch_kwargs,
            train_loader=train_loader, val_loader=val_loader, epochs=cfg.epochs,
            checkpoint_dir=Path(checkpoints), out_path=Path(out),
            run_fingerprint=fingerprint(params.seed, params.model.model_dump(mode="json"),
                                        cfg.model_dump(mode="json", exclude={"epochs"}),
                                        manifest.sha256(dataset), teacher_sha,
                                        runtime.world_size, init_sha),
            extra_metadata={"teacher_sha256": teacher_sha,
                            **({"init_from_sha256": init_sha} if init_sha else {})},
        )
        return fit(job)
    finally:
        shutdown(runtime)
