"""Adversarial teacher training: D1 judges (image, map) pairs, the teacher learns content + adversarial loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dbdgan.checkpoint import init_weights_from
from dbdgan.config import Params
from dbdgan.losses import content_loss, discriminator_loss, generator_adversarial_loss
from dbdgan.models import create_discriminator, create_model
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
    set_requires_grad,
)
from dbdgan.training.runtime import Runtime, init_runtime, seed_everything, shutdown


def build_discriminator(params: Params) -> nn.Module:
    model = params.model
    return create_discriminator(kind=model.discriminator, in_channels=4, width=model.discriminator_width,
                                n_layers=model.discriminator_layers, spectral_norm=model.spectral_norm)


def discriminate_pair(disc: nn.Module, image: torch.Tensor, real_map: torch.Tensor,
                      fake_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over real and fake together (DDP allows one forward per backward)."""
    logits = disc(torch.cat([image, image]), torch.cat([real_map, fake_map]))
    real_logits, fake_logits = logits.chunk(2)
    return real_logits, fake_logits


def update_discriminator(disc: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision, name: str,
                         image: torch.Tensor, real_map: torch.Tensor, fake_map: torch.Tensor, kind: str,
                         grad_clip: float | None, epoch: int, step: int) -> float:
    """L_D: push D(real) up and D(fake) down; the generator's map is detached."""
    with precision.autocast():
        real_logits, fake_logits = discriminate_pair(disc, image, real_map, fake_map.detach())
        loss = discriminator_loss(kind, real_logits.float(), fake_logits.float())
    check_finite({name: loss}, epoch, step)
    precision.step(name, loss, optimizer, disc, grad_clip)
    return loss.item()


def adversarial_term(disc: nn.Module, image: torch.Tensor, real_map: torch.Tensor, fake_map: torch.Tensor,
                     kind: str) -> torch.Tensor:
    """L_adv for a generator: D's parameters are frozen so only the generator gets gradients."""
    set_requires_grad(disc, False)
    try:
        real_logits, fake_logits = discriminate_pair(disc, image, real_map, fake_map)
        return generator_adversarial_loss(kind, fake_logits.float(), real_logits.float().detach())
    finally:
        set_requires_grad(disc, True)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def _wrap(module: nn.Module, runtime: Runtime) -> nn.Module:
    module = module.to(runtime.device)
    if not runtime.distributed:
        return module
    device_ids = [runtime.device.index] if runtime.use_cuda else None
    return DistributedDataParallel(module, device_ids=device_ids)


def train_teacher(params: Params, data_dir: str | Path | None = None, out_path: str | Path | None = None,
                  checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the teacher against D1; writes the best model (by validation max-F) to `out_path`."""
    cfg = params.train_teacher
    data_dir = Path(data_dir or params.data.prepared_dir)
    runtime = init_runtime(params.device)
    try:
        seed_everything(params.seed, params.deterministic)
        arch_kwargs = dict(params.model.teacher_kwargs)
        teacher = create_model(params.model.teacher, **arch_kwargs)
        init_sha = file_sha256(cfg.init_from) if cfg.init_from else None
        if cfg.init_from:
            init_weights_from(teacher, params.model.teacher, cfg.init_from)
        disc = build_discriminator(params)
        teacher_ddp, disc_ddp = _wrap(teacher, runtime), _wrap(disc, runtime)
        train_loader, val_loader = make_loaders(data_dir, cfg, params.seed, runtime)
        opt_g = build_optimizer(teacher.parameters(), cfg.optim.lr, cfg.optim)
        opt_d = build_optimizer(disc.parameters(), cfg.optim.lr_d, cfg.optim)
        total_steps = cfg.epochs * len(train_loader)
        precision = Precision(runtime.device, cfg.amp)

        def train_step(batch: dict[str, torch.Tensor], epoch: int, step: int) -> dict[str, float]:
            image = batch["image"].to(runtime.device, non_blocking=True)
            mask = batch["mask"].to(runtime.device, non_blocking=True)
            with precision.autocast():
                logits = teacher_ddp(image)
            prob = torch.sigmoid(logits.float())
            d_loss = update_discriminator(disc_ddp, opt_d, precision, "d1", image, mask, prob, cfg.adversarial_loss,
                                          cfg.optim.grad_clip, epoch, step)
            with precision.autocast():
                content = content_loss(logits.float(), mask, kind=cfg.content_loss)
                adv = adversarial_term(_unwrap(disc_ddp), image, mask, prob, cfg.adversarial_loss)
            check_finite({"content": content, "adversarial": adv}, epoch, step)
            total = cfg.w_content * content + cfg.w_adv * adv
            precision.step("teacher", total, opt_g, teacher, cfg.optim.grad_clip)
            return {"d1": d_loss, "content": content.item(), "adv": adv.item()}

        job = TrainingJob(
            stage="train_teacher", params=params, runtime=runtime,
            modules={"teacher": teacher, "d1": disc}, optimizers={"teacher": opt_g, "d1": opt_d},
            schedulers={"teacher": build_scheduler(opt_g, cfg.optim, total_steps),
                        "d1": build_scheduler(opt_d, cfg.optim, total_steps)},
            train_step=train_step, exported=teacher, arch=params.model.teacher, arch_kwargs=arch_kwargs,
            train_loader=train_loader, val_loader=val_loader, epochs=cfg.epochs,
            checkpoint_dir=Path(checkpoint_dir or cfg.checkpoint_dir), out_path=Path(out_path or cfg.out),
            run_fingerprint=fingerprint(params.seed, params.model.model_dump(mode="json"),
                                        cfg.model_dump(mode="json", exclude={"epochs", "checkpoint_dir", "out"}),
                                        file_sha256(data_dir / "manifest.csv"), runtime.world_size,
                                        init_sha),
            extra_metadata={"init_from_sha256": init_sha} if init_sha else {},
        )
        return fit(job)
    finally:
        shutdown(runtime)
