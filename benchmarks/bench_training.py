"""Training speed: images/s of one full adversarial step, and whether the data loader keeps up with it.

For each params profile (default: params.yaml, teacher_tiny/mobile_tiny at 96 px; cuhk-cpu:
profiles/cuhk-cpu.yaml, teacher_small/mobile_small at 160 px), with that profile's batch size, input size,
discriminator, losses, loss weights and optimisers:
  - teacher step: dbdgan.training.gan.TeacherGAN.step, the object training runs (teacher forward, D1
    update, content + adversarial loss, teacher backward and optimiser step);
  - distillation step: dbdgan.training.gan.DistillationGAN.step (frozen teacher forward with features,
    student forward with the feature constraint, D2 and D3 updates, content + consistency + feature + two
    adversarial terms, backward, optimiser step); the teacher is freshly initialised (its weights do not
    change the cost);
  - DataLoader images/s with the profile's batch and workers, on a small synthetic set prepared in a temp dir
    with prepare_dataset (and, for cuhk-cpu when the CUHK folder exists, on a CUHK subset): the steady rate
    over one long pass, and the first batch of an epoch separately (worker start-up, paid every epoch);
  - ratio = loader images/s / step images/s (> 1: the loader is faster than the step).
Step times are medians of --steps steps after --warmup, on one batch from the loader (loading excluded), in
a process set up by dbdgan.training.runtime.init_runtime as the training stages are.
teacher_paper steps are not run here: seconds per image on a CPU; see profiles/paper-gpu.yaml.

Usage: python benchmarks/bench_training.py [--profiles default cuhk-cpu] [--steps 10] [--real-images 0]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    SHARED_CUHK,
    add_common_args,
    apply_runtime_env,
    cuhk_subset,
    finish,
    machine_info,
    markdown_table,
    set_threads,
    timed_median,
)

PROFILES = {
    "default": ["params.yaml"],
    "cuhk-cpu": ["params.yaml", "profiles/cuhk-cpu.yaml"],
    "synthetic-pretrain": ["params.yaml", "profiles/synthetic-pretrain.yaml"],
}
REAL_DATA_PROFILES = {"cuhk-cpu"}


def load_profile(name: str) -> Any:
    """The profile's params; data.source is forced to synthetic (only the data folder differs here)."""
    from dbdgan.config import load_params

    return load_params([ROOT / p for p in PROFILES[name]], overrides=["data.source=synthetic"])


def teacher_step(params: Any, batch: dict[str, Any], runtime: Any) -> tuple[Any, int]:
    """One teacher update (dbdgan.training.gan.TeacherGAN.step, as training runs it) on `batch`, and the
    teacher's parameter count."""
    from dbdgan.models import create_model
    from dbdgan.training.gan import TeacherGAN

    teacher = create_model(params.model.teacher, **params.model.teacher_kwargs).train()
    gan = TeacherGAN(teacher, params, runtime)
    return lambda: gan.step(batch, 0, 0), sum(p.numel() for p in teacher.parameters())


def distill_step(params: Any, batch: dict[str, Any], runtime: Any) -> tuple[Any, int]:
    """One distillation update (dbdgan.training.gan.DistillationGAN.step) on `batch`, and the student's
    parameter count; the teacher is freshly initialised (its weights do not change the cost)."""
    from dbdgan.models import create_model
    from dbdgan.training.gan import DistillationGAN

    teacher = create_model(params.model.teacher, **params.model.teacher_kwargs)
    student = create_model(params.model.student, **params.model.student_kwargs).train()
    gan = DistillationGAN(teacher, student, params, runtime)
    for module in gan.modules.values():
        module.train()
    return lambda: gan.step(batch, 0, 0), sum(p.numel() for p in student.parameters())


def loader_rate(data_dir: Path, params: Any, batches: int) -> dict[str, Any]:
    """Steady images/s of the pipeline's loader settings, and the first batch's latency in an epoch.

    The steady rate reads `batches` batches after the first from one long pass (a sampler that draws
    several epochs' worth of indices), so that a short test split's prefetched batches do not inflate it.
    The first batch comes from make_loader exactly as training builds it: worker start-up, paid each epoch.
    """
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from dbdgan.training.engine import make_loader, start_epoch
    from dbdgan.training.runtime import init_runtime

    cfg = params.train_teacher
    loader = make_loader(data_dir, "train", cfg.image_size, cfg.batch_size, cfg.num_workers, params.seed,
                         init_runtime("cpu"), train=True, crop_scale=cfg.crop_scale)
    firsts = []
    for epoch in range(3):
        start_epoch(loader, params.seed, epoch)
        start = time.perf_counter()
        next(iter(loader))
        firsts.append(time.perf_counter() - start)
    dataset = loader.dataset
    sampler = RandomSampler(dataset, num_samples=(batches + 1) * cfg.batch_size,
                            generator=torch.Generator().manual_seed(params.seed))
    long_pass = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                           drop_last=True)
    images, start = 0, 0.0
    for index, batch in enumerate(long_pass):
        if index == 0:
            start = time.perf_counter()
        else:
            images += len(batch["id"])
    return {
        "train_images": len(dataset),
        "workers": cfg.num_workers,
        "images_per_s": images / (time.perf_counter() - start),
        "first_batch_s": statistics.median(firsts),
    }


def prepare_sets(name: str, params: Any, scratch: Path, args: argparse.Namespace) -> dict[str, Path]:
    from dbdgan.data.prepare import prepare_dataset

    size = params.train_teacher.image_size
    sets = {"synthetic": scratch / f"{name}_synthetic"}
    start = time.perf_counter()
    synthetic = {**params.data.synthetic, "num_images": args.images, "size": size}
    prepare_dataset("synthetic", sets["synthetic"], seed=params.seed, split=params.data.split.model_dump(),
                    synthetic=synthetic)
    took = time.perf_counter() - start
    print(f"[{name}] prepared {args.images} synthetic images at {size}px in {took:.0f}s", flush=True)
    if name in REAL_DATA_PROFILES and args.real_images > 0:
        if (args.cuhk / "images").is_dir():
            sets["cuhk"] = scratch / f"{name}_cuhk"
            raw = cuhk_subset(args.cuhk, scratch / f"{name}_cuhk_raw", args.real_images)
            prepare_dataset("cuhk", sets["cuhk"], input_dir=raw, seed=params.seed,
                            split=params.data.split.model_dump())
        else:
            print(f"[{name}] no CUHK folder at {args.cuhk}: synthetic data only", flush=True)
    return sets


def projected_minutes(params: Any, teacher_s: float, distill_s: float, n_images: int) -> float:
    """Minutes of training steps alone (no validation, no loading) over the profile's epochs."""
    train = round(n_images * params.data.split.train)
    t, s = params.train_teacher, params.distill_student
    steps = t.epochs * math.floor(train / t.batch_size) * teacher_s
    steps += s.epochs * math.floor(train / s.batch_size) * distill_s
    return steps / 60.0


def bench_profile(name: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from dbdgan.training.engine import make_loader
    from dbdgan.training.runtime import init_runtime, seed_everything

    params = load_profile(name)
    runtime = init_runtime("cpu")  # the training stages' process settings (e.g. denormals flushed to zero)
    seed_everything(params.seed, params.deterministic)
    cfg = params.train_teacher
    student_cfg = params.distill_student
    if (cfg.batch_size, cfg.image_size) != (student_cfg.batch_size, student_cfg.image_size):
        print(f"[{name}] note: teacher and student batch/size differ; both use the teacher's", flush=True)
    sets = prepare_sets(name, params, scratch, args)
    loader = make_loader(sets["synthetic"], "train", cfg.image_size, cfg.batch_size, 0, params.seed,
                         runtime, train=True, crop_scale=cfg.crop_scale)
    batch = next(iter(loader))

    result: dict[str, Any] = {
        "profile": name,
        "teacher": params.model.teacher,
        "student": params.model.student,
        "image_size": cfg.image_size,
        "batch_size": cfg.batch_size,
        "steps": [],
        "loader": [],
        "ratios": [],
    }
    for kind, build in (("teacher", teacher_step), ("distill", distill_step)):
        step, n_params = build(params, batch, runtime)
        median_s, times = timed_median(step, args.warmup, args.steps)
        row = {"profile": name, "step": kind, "model": params.model.teacher if kind == "teacher"
               else params.model.student, "params_m": n_params / 1e6, "image_size": cfg.image_size,
               "batch_size": cfg.batch_size, "step_s": median_s, "images_per_s": cfg.batch_size / median_s,
               "step_s_all": times}
        result["steps"].append(row)
        print(f"[{name}] {kind} step: {median_s:.2f} s ({row['images_per_s']:.1f} img/s)", flush=True)
    for data, data_dir in sets.items():
        rate = {"profile": name, "data": data, **loader_rate(data_dir, params, args.loader_batches)}
        result["loader"].append(rate)
        print(f"[{name}] loader {data} workers={rate['workers']}: {rate['images_per_s']:.0f} img/s, first "
              f"batch {rate['first_batch_s']:.2f} s", flush=True)
        for step in result["steps"]:
            result["ratios"].append({"profile": name, "data": data, "step": step["step"],
                                     "loader_over_step": rate["images_per_s"] / step["images_per_s"]})
    teacher_s, distill_s = (s["step_s"] for s in result["steps"])
    n_images = params.data.synthetic.get("num_images", 240)
    if name in REAL_DATA_PROFILES and (args.cuhk / "images").is_dir():
        n_images = sum(1 for _ in (args.cuhk / "images").iterdir())
    result["projection"] = {"profile": name, "dataset_images": n_images,
                            "train_steps_minutes": projected_minutes(params, teacher_s, distill_s, n_images)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), default=["default", "cuhk-cpu"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per kind (median)")
    parser.add_argument("--images", type=int, default=48, help="synthetic images to prepare per profile")
    parser.add_argument("--real-images", type=int, default=48,
                        help="CUHK pairs for the real-data profile's loader (0: synthetic only)")
    parser.add_argument("--cuhk", type=Path, default=SHARED_CUHK)
    parser.add_argument("--loader-batches", type=int, default=30, help="timed batches per loader")
    add_common_args(parser, "training")
    args = parser.parse_args()
    apply_runtime_env(args.allocator, args.omp_wait_policy)
    set_threads(args.threads)

    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {**vars(args), "out_dir": str(args.out_dir), "cuhk": str(args.cuhk)},
        "profiles": [],
    }
    scratch = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        for name in args.profiles:
            report["profiles"].append(bench_profile(name, args, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    steps = [row for p in report["profiles"] for row in p["steps"]]
    loaders = [row for p in report["profiles"] for row in p["loader"]]
    ratios = [row for p in report["profiles"] for row in p["ratios"]]
    projections = [p["projection"] for p in report["profiles"]]
    sections = [
        f"Training steps on CPU, median of {args.steps} after {args.warmup} warm-up, one batch reused "
        "(loading excluded). teacher = teacher fwd/bwd + D1 update; distill = frozen teacher fwd + "
        "student fwd/bwd (feature constraint) + D2 and D3 updates. Each profile's own batch, size, losses "
        "and optimisers.",
        markdown_table([("profile", "profile", ""), ("step", "step", ""), ("model", "trained model", ""),
                        ("params_m", "params (M)", ".2f"), ("image_size", "px", "d"),
                        ("batch_size", "batch", "d"), ("step_s", "s/step", ".3f"),
                        ("images_per_s", "img/s", ".1f")], steps),
        f"DataLoader (train split, augmentation on, the profile's batch and workers): steady rate over "
        f"{args.loader_batches} batches after the first; the first batch of an epoch (worker start-up, paid "
        "every epoch; median of 3) separately.",
        markdown_table([("profile", "profile", ""), ("data", "data", ""),
                        ("train_images", "train images", "d"), ("workers", "workers", "d"),
                        ("images_per_s", "img/s", ".0f"),
                        ("first_batch_s", "first batch (s)", ".2f")], loaders),
        "Loader images/s over step images/s (> 1: loading is not the bottleneck; with 0 workers loading "
        "adds to the step time in the same process):",
        markdown_table([("profile", "profile", ""), ("data", "data", ""), ("step", "step", ""),
                        ("loader_over_step", "loader / step", ".1f")], ratios),
        "Projected minutes of training steps alone for the profile's epochs (no validation, loading or "
        "checkpoints; dataset size = the profile's synthetic count, or the CUHK folder for cuhk-cpu):",
        markdown_table([("profile", "profile", ""), ("dataset_images", "images", "d"),
                        ("train_steps_minutes", "minutes", ".1f")], projections),
    ]
    finish("training", report, sections, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
