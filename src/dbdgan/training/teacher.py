"""Adversarial teacher training: D1 judges (image, map) pairs, the teacher learns content + adversarial loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbdgan.checkpoint import init_weights_from
from dbdgan.config import Params
from dbdgan.data import manifest
from dbdgan.io_utils import file_sha256
from dbdgan.models import create_model
from dbdgan.tracking import Tracking
from dbdgan.training.engine import TrainingJob, build_scheduler, fingerprint, fit, make_loaders
from dbdgan.training.gan import TeacherGAN
from dbdgan.training.runtime import init_runtime, seed_everything, shutdown


def train_teacher(params: Params, dataset: Path, out: Path, checkpoints: Path, tracking: Tracking,
                  init: Path | None = None) -> dict[str, Any]:
    """Train the teacher against D1; writes the best model (by `best_metric` on validation) to `out`.

    init: a model file of the same network to start from (synthetic pre-training).
    """
    cfg = params.train_teacher
    runtime = init_runtime(params.device)
    try:
        seed_everything(params.seed, params.deterministic)
        arch_kwargs = dict(params.model.teacher_kwargs)
        teacher = create_model(params.model.teacher, pretrained=params.model.teacher_pretrained, **arch_kwargs)
        init_sha = file_sha256(init) if init else None
        if init:
            init_weights_from(teacher, params.model.teacher, init)
        gan = TeacherGAN(teacher, params, runtime)
        train_loader, val_loader = make_loaders(dataset, cfg, params.seed, runtime)
        total_steps = cfg.epochs * len(train_loader)
        job = TrainingJob(
            stage="train_teacher", params=params, runtime=runtime, tracking=tracking, best_metric=cfg.best_metric,
            ema_decay=cfg.ema_decay,
            modules=gan.modules, optimizers=gan.optimizers,
            schedulers={name: build_scheduler(opt, cfg.optim, total_steps) for name, opt in gan.optimizers.items()},
            train_step=gan.step, exported=teacher, arch=params.model.teacher, arch_kwargs=arch_kwargs,
            train_loader=train_loader, val_loader=val_loader, epochs=cfg.epochs,
            checkpoint_dir=Path(checkpoints), out_path=Path(out),
            run_fingerprint=fingerprint(params.seed, params.model.model_dump(mode="json"),
                                        cfg.model_dump(mode="json", exclude={"epochs"}),
                                        manifest.sha256(dataset), runtime.world_size,
                                        init_sha),
            extra_metadata={"init_from_sha256": init_sha} if init_sha else {},
        )
        return fit(job)
    finally:
        shutdown(runtime)
