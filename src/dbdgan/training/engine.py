"""The epoch loop shared by teacher training and distillation: resume, validate, keep the best, checkpoint."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from dbdgan.checkpoint import (
    load_training_state,
    read_model_file,
    resume_key,
    resume_mismatch,
    save_model_file,
    save_training_state,
)
from dbdgan.config import OptimParams, Params, TrainingParams
from dbdgan.data.dataset import DBDDataset
from dbdgan.evaluation.metrics import MAE, FBetaCurve
from dbdgan.io_utils import atomic_torch_save
from dbdgan.model_runs import tag_training_run
from dbdgan.progress import progress
from dbdgan.tracking import Tracking, stage_run
from dbdgan.training.runtime import Runtime, barrier

log = logging.getLogger(__name__)

StepFn = Callable[[dict[str, torch.Tensor], int, int], dict[str, float]]


class NonFiniteLossError(RuntimeError):
    """Training diverged; raised before the bad step touches any weights or checkpoints."""


def check_finite(losses: dict[str, torch.Tensor], epoch: int, step: int) -> None:
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(
                f"loss term {name!r} is {value.item()} at epoch {epoch + 1}, step {step + 1}; "
                "the run stops here and no checkpoint was overwritten"
            )


def fingerprint(*parts: Any) -> str:
    """Identifies a run's inputs, so a rerun resumes only a checkpoint made with the same ones."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(flag)


def build_optimizer(module: nn.Module, lr: float, optim: OptimParams) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay); parameters of any `encoder` submodule get lr * encoder_lr_mult.

    A pretrained encoder wants a smaller step than a decoder that starts from random weights.
    """
    encoder, rest = [], []
    for name, parameter in module.named_parameters():
        (encoder if ".encoder." in f".{name}" else rest).append(parameter)
    groups = [{"params": rest, "lr": lr}]
    if encoder:
        groups.append({"params": encoder, "lr": lr * optim.encoder_lr_mult})
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimParams,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: cosine to zero, poly decay, or constant."""
    total = max(total_steps, 1)
    if optim.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if optim.schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - min(s, total) / total) ** optim.poly_power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


def make_loader(data_dir: str | Path, splits: Sequence[str], size: int, batch_size: int, num_workers: int,
                seed: int, runtime: Runtime, train: bool, *, crop_scale: tuple[float, float]) -> DataLoader:
    """Shuffling is seeded per epoch (see `start_epoch`), so a resumed run sees the same batches."""
    parts = [DBDDataset(Path(data_dir), split, size=size, augment=train, seed=seed, scale=crop_scale)
             for split in splits]
    for split, part in zip(splits, parts, strict=True):
        if len(part) == 0:
            raise ValueError(f"split {split!r} of {data_dir} is empty")
    dataset: Dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    sampler = None
    if runtime.distributed and train:
        sampler = DistributedSampler(dataset, num_replicas=runtime.world_size, rank=runtime.rank, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=num_workers, drop_last=train and len(dataset) >= batch_size,
                      generator=generator, pin_memory=runtime.use_cuda, persistent_workers=False)


def make_loaders(data_dir: str | Path, cfg: TrainingParams, seed: int,
                 runtime: Runtime) -> tuple[DataLoader, DataLoader]:
    """The augmented train loader and the plain validation loader of a training stage."""
    return (make_loader(data_dir, cfg.train_splits, cfg.image_size, cfg.batch_size, cfg.num_workers, seed, runtime,
                        train=True, crop_scale=cfg.crop_scale),
            make_loader(data_dir, ["val"], cfg.val_size or cfg.image_size, cfg.batch_size, cfg.num_workers, seed,
                        runtime, train=False, crop_scale=cfg.crop_scale))


def start_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)
    for dataset in getattr(loader.dataset, "datasets", [loader.dataset]):  # a ConcatDataset's parts
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)


@torch.no_grad()
def validation_scores(model: nn.Module, loader: DataLoader, device: torch.device, beta2: float) -> dict[str, float]:
    """Validation MAE, max F-beta with blurred and with in-focus positive, and val_score at the training size.

    val_score = in-focus max-F - MAE: the blurred-positive max-F saturates (most CUHK pixels are blurred, so
    an all-blurred map already scores 0.71), while in-focus F and MAE are what the goals measure.
    Runs on rank 0 only, so the metrics must not try to gather from the other ranks.
    """
    was_training = model.training
    model.eval()
    mae = MAE(sync_on_compute=False)
    blurred, sharp = (FBetaCurve(beta2=beta2, sync_on_compute=False) for _ in range(2))
    for batch in loader:
        prob = torch.sigmoid(model(batch["image"].to(device))).float().cpu()
        mae.update(prob, batch["mask"])
        blurred.update(prob, batch["mask"])
        sharp.update(1.0 - prob, 1.0 - batch["mask"])
    model.train(was_training)
    row = {"val_mae": float(mae.compute()), "val_max_f": float(blurred.compute()["max_f"]),
           "val_max_f_sharp": float(sharp.compute()["max_f"])}
    return {**row, "val_score": row["val_max_f_sharp"] - row["val_mae"]}


_VAL_LABELS = {"val_max_f_sharp": "in-focus max-F", "val_max_f": "blurred max-F", "val_mae": "MAE",
               "val_score": "score"}


def epoch_line(stage: str, epoch: int, epochs: int, row: dict[str, float], kept: bool, seconds: float) -> str:
    """One readable line per epoch: losses, validation numbers, whether it is the kept model, time taken."""
    losses = ", ".join(f"{key.removeprefix('loss_')} {value:.4f}" for key, value in row.items()
                       if key.startswith("loss_"))
    val = ", ".join(f"{label} {row[key]:.3f}" for key, label in _VAL_LABELS.items() if key in row)
    return (f"{stage} epoch {epoch}/{epochs} ({seconds:.0f} s): loss {losses or '-'} | val {val}"
            f"{' | kept (best so far)' if kept else ''}")


def metrics_line(epoch: int, row: dict[str, float]) -> str:
    """`epoch=3 val_score=0.81 val_max_f_sharp=0.88 ...`: the epoch's numbers as name=value pairs, validation
    first, then the loss terms; the form Katib's default StdOut metrics collector, a DVC sweep's or an Optuna
    objective's regex reads from the log. Non-finite values are left out: they would not parse as numbers."""
    first = ("val_score", "val_max_f_sharp", "val_max_f", "val_mae")
    ordered = [*(key for key in first if key in row), *(key for key in row if key not in first)]
    return " ".join([f"epoch={epoch}", *(f"{key}={row[key]:.6g}" for key in ordered if math.isfinite(row[key]))])


def selection_score(row: dict[str, float], metric: str, epoch: int) -> float:
    """Higher is better: the validation number that picks the kept epoch (MAE counts negated), or the epoch."""
    if metric == "last":
        return float(epoch)
    return -row[metric] if metric == "val_mae" else row[metric]


@dataclass
class TrainingJob:
    """Everything the epoch loop needs; the stage-specific part is `train_step`."""

    stage: str
    params: Params
    runtime: Runtime
    tracking: Tracking
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    train_step: StepFn
    exported: nn.Module
    arch: str
    arch_kwargs: dict[str, Any]
    train_loader: DataLoader
    val_loader: DataLoader
    epochs: int
    checkpoint_dir: Path
    out_path: Path
    run_fingerprint: str
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    best_metric: str = "val_score"
    ema_decay: float | None = None  # validate and keep a moving average of `exported`'s weights


def moving_average(module: nn.Module, decay: float | None) -> AveragedModel | None:
    """A per-step exponential moving average of the weights and batch-norm statistics (None: no averaging).

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (as TensorFlow's moving averages):
    with the full decay from the first step, the random start of a decoder lingers in the average for epochs.
    """
    if decay is None:
        return None

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor | int) -> None:
        if not averaged[0].is_floating_point():  # batch-norm step counters: follow the network
            torch._foreach_copy_(averaged, current)
            return
        n = int(updates)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))

    return AveragedModel(module, multi_avg_fn=update, use_buffers=True)


def _training_state(job: TrainingJob, epoch: int, best: float, run_id: str | None,
                    averaged: AveragedModel | None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "fingerprint": resume_key(job.run_fingerprint, job.epochs),
        "epoch": epoch,
        "best_score": best,
        "mlflow_run_id": run_id or "",
        "torch_rng": torch.get_rng_state(),
        "modules": {name: module.state_dict() for name, module in job.modules.items()},
        "optimizers": {name: opt.state_dict() for name, opt in job.optimizers.items()},
        "schedulers": {name: sched.state_dict() for name, sched in job.schedulers.items()},
    }
    if averaged is not None:
        state["averaged"] = averaged.state_dict()
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def _restore(job: TrainingJob, state: dict[str, Any], averaged: AveragedModel | None) -> None:
    for name, module in job.modules.items():
        module.load_state_dict(state["modules"][name])
    for name, opt in job.optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    for name, sched in job.schedulers.items():
        sched.load_state_dict(state["schedulers"][name])
    if averaged is not None:
        averaged.load_state_dict(state["averaged"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _resume_point(job: TrainingJob, averaged: AveragedModel | None) -> tuple[int, float, str | None]:
    last = job.checkpoint_dir / "last.pt"
    if not last.is_file():
        return 0, -math.inf, None
    state = load_training_state(last)
    differ = resume_mismatch(state.get("fingerprint"), resume_key(job.run_fingerprint, job.epochs))
    if differ:
        log.warning("not resuming %s: its %s differ from this run's; training from the start", last,
                    ", ".join(differ))
        return 0, -math.inf, None
    _restore(job, state, averaged)
    log.info("resuming %s from %s after epoch %d", job.stage, last, state["epoch"])
    return int(state["epoch"]), float(state["best_score"]), state["mlflow_run_id"] or None


def _all_finite(module: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in module.state_dict().values() if p.is_floating_point())


def fit(job: TrainingJob) -> dict[str, Any]:
    """Train for the configured epochs (resuming if possible) and write the best model to `out_path`."""
    runtime, params = job.runtime, job.params
    job.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    averaged = moving_average(job.exported, job.ema_decay)
    kept_net = averaged.module if averaged is not None else job.exported  # what is validated and saved
    first_epoch, best, run_id = _resume_point(job, averaged)
    best_path = job.checkpoint_dir / "best.pt"
    history: list[dict[str, float]] = []
    with stage_run(params, job.stage, job.tracking, run_id=run_id, enabled=runtime.is_main) as run:
        run_id = run.info.run_id if run is not None else None
        for epoch in range(first_epoch, job.epochs):
            start_epoch(job.train_loader, params.seed, epoch)
            totals: dict[str, float] = {}
            started = time.monotonic()
            # a bar on a terminal; in a log file only the epoch line below
            bar = progress(job.train_loader, f"{job.stage} {epoch + 1}/{job.epochs}", unit="batch",
                           enabled=runtime.is_main, log_every_s=None)
            for step, batch in enumerate(bar):
                losses = job.train_step(batch, epoch, step)
                for sched in job.schedulers.values():
                    sched.step()
                if averaged is not None:
                    averaged.update_parameters(job.exported)
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0.0) + value
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
            row = {f"loss_{k}": v / max(len(job.train_loader), 1) for k, v in totals.items()}
            if runtime.is_main:
                row.update(validation_scores(kept_net, job.val_loader, runtime.device, params.evaluate.beta2))
                history.append({"epoch": epoch + 1, **row})
                kept = selection_score(row, job.best_metric, epoch + 1) > best
                log.info("%s", epoch_line(job.stage, epoch + 1, job.epochs, row, kept, time.monotonic() - started))
                log.info("%s", metrics_line(epoch + 1, row))
                if run is not None:
                    import mlflow

                    mlflow.log_metrics(row, step=epoch + 1)
                if not _all_finite(kept_net):
                    raise NonFiniteLossError(f"weights of {job.arch} became non-finite in epoch {epoch + 1}")
                if kept:
                    best = selection_score(row, job.best_metric, epoch + 1)
                    # input_size: the whole-image size it was validated at, which `dbdgan predict` then uses
                    save_model_file(best_path, job.arch, job.arch_kwargs, kept_net,
                                    {"epoch": epoch + 1, **row, "input_size": job.val_loader.dataset.size,
                                     **job.extra_metadata})
                save_training_state(job.checkpoint_dir / "last.pt",
                                    _training_state(job, epoch + 1, best, run_id, averaged))
            barrier(runtime)
        if runtime.is_main:
            payload = read_model_file(best_path)
            # the run is not written into the file (a new id every time would change its bytes and dvc.lock's
            # hash on every retraining): the run is tagged with the file's hash instead (dbdgan.model_runs)
            atomic_torch_save(payload, job.out_path)
            summary = {"stage": job.stage, "best_metric": job.best_metric, "best_score": best,
                       "best": payload["metadata"],
                       "mlflow_run_id": run_id, "history": history}
            if run is not None:
                import mlflow

                mlflow.log_metric(f"best_{job.best_metric}", best)
                tag_training_run(job.out_path)
                mlflow.log_artifact(str(job.out_path), artifact_path="checkpoint")
            return summary
    return {"stage": job.stage, "rank": runtime.rank}
