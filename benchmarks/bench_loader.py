"""DataLoader throughput on prepared data vs. the student's training step.

The issue's bar: the loader must deliver batches at least 5x faster than the student's training step
consumes them, with the default worker count. Measured here:
  - loader images/s (train split, augmentation on) for synthetic data and, when present, CUHK, at the
    pipeline's default input size and at 320, for the default worker count (params.yaml) and for 2;
  - one student training step (forward + backward + Adam step at the same size and batch): a lower bound
    on the real distillation step, which also runs the teacher and the discriminators, so the reported
    ratio is conservative.
Writes benchmarks/results/loader.json. Usage: python benchmarks/bench_loader.py [--sizes 96 320] ...
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import cuhk_subset
from torch.utils.data import DataLoader

from dbdgan.data.dataset import DBDDataset
from dbdgan.data.prepare import prepare_dataset
from dbdgan.io_utils import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
SHARED_CUHK = ROOT.parent / "shared/data/cuhk-dbd"
TARGET_RATIO = 5.0


def pipeline_defaults() -> dict[str, Any]:
    """Input size, batch, workers and student of the default pipeline (params.yaml), with fallbacks."""
    try:
        from dbdgan.config import load_params

        params = load_params(ROOT / "params.yaml")
        cfg = params.distill_student
        return {
            "size": cfg.image_size,
            "batch": cfg.batch_size,
            "workers": cfg.num_workers,
            "student": params.model.student,
        }
    except Exception as exc:  # the benchmark must still run on a checkout without a valid params.yaml
        print(f"params.yaml not usable ({exc}); using built-in defaults", file=sys.stderr)
        return {"size": 96, "batch": 8, "workers": 0, "student": "mobile_tiny"}


def loader_rate(data_dir: Path, size: int, batch: int, workers: int, batches: int) -> dict[str, float]:
    """Images/s over `batches` batches after the first (which pays for worker start-up)."""
    dataset = DBDDataset(data_dir, "train", size=size, augment=True, seed=0)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    seen, epoch, start = -1, 0, 0.0
    while seen < batches:
        dataset.set_epoch(epoch)
        for _ in loader:
            seen += 1
            if seen == 0:
                start = time.perf_counter()
            if seen == batches:
                break
        epoch += 1
    elapsed = time.perf_counter() - start
    return {"images_per_s": batches * batch / elapsed, "batch_s": elapsed / batches}


def student_step_s(name: str, size: int, batch: int, steps: int) -> float:
    """Median seconds of one student training step (forward, BCE, backward, Adam)."""
    from dbdgan.models import create_model

    torch.manual_seed(0)
    model = create_model(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(batch, 3, size, size)
    masks = (torch.rand(batch, 1, size, size) > 0.5).float()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), masks)
        loss.backward()
        optimizer.step()
        if step:  # the first step pays for allocation and kernel selection
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    defaults = pipeline_defaults()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted({defaults["size"], 320}))
    parser.add_argument("--batch-size", type=int, default=defaults["batch"])
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({defaults["workers"], 2}))
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--synthetic-images", type=int, default=96)
    parser.add_argument("--cuhk", type=Path, default=Path(os.environ.get("DBDGAN_SHARED_DATA", SHARED_CUHK)))
    parser.add_argument("--cuhk-images", type=int, default=96)
    parser.add_argument("--student", default=defaults["student"], help="model name; 'none' skips the step")
    parser.add_argument("--student-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/loader.json")
    args = parser.parse_args()

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "allocator": {k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "LD_PRELOAD")},
            "load_average_at_start": os.getloadavg(),
        },
        "settings": {**vars(args), "out": str(args.out), "cuhk": str(args.cuhk)},
        "loader": [],
        "student_step": [],
        "ratios": [],
    }
    scratch = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        datasets: dict[str, dict[int, Path]] = {"synthetic": {}}
        for size in args.sizes:
            start = time.perf_counter()
            datasets["synthetic"][size] = scratch / f"synthetic_{size}"
            prepare_dataset(
                "synthetic",
                datasets["synthetic"][size],
                seed=0,
                synthetic={"num_images": args.synthetic_images, "size": size},
            )
            print(
                f"prepared {args.synthetic_images} synthetic images at {size}px in "
                f"{time.perf_counter() - start:.1f}s"
            )
        if (args.cuhk / "images").is_dir():
            prepared = scratch / "cuhk"
            prepare_dataset(
                "cuhk",
                prepared,
                input_dir=cuhk_subset(args.cuhk, scratch / "cuhk_raw", args.cuhk_images),
                seed=0,
            )
            datasets["cuhk"] = {size: prepared for size in args.sizes}
        else:
            print(f"CUHK not found at {args.cuhk}; synthetic only")

        for name, by_size in datasets.items():
            for size, data_dir in by_size.items():
                for workers in args.workers:
                    rate = loader_rate(data_dir, size, args.batch_size, workers, args.batches)
                    row = {
                        "dataset": name,
                        "size": size,
                        "batch_size": args.batch_size,
                        "workers": workers,
                        **rate,
                    }
                    report["loader"].append(row)
                    print(
                        f"loader {name:9s} {size:4d}px workers={workers}: {rate['images_per_s']:7.1f} img/s "
                        f"({rate['batch_s'] * 1e3:.0f} ms/batch)"
                    )

        if args.student != "none":
            for size in args.sizes:
                step = student_step_s(args.student, size, args.batch_size, args.student_steps)
                report["student_step"].append(
                    {"model": args.student, "size": size, "batch_size": args.batch_size, "step_s": step}
                )
                print(f"student {args.student} {size}px batch {args.batch_size}: {step * 1e3:.0f} ms/step")
                for row in (r for r in report["loader"] if r["size"] == size):
                    ratio = step / row["batch_s"]
                    report["ratios"].append(
                        {
                            "dataset": row["dataset"],
                            "size": size,
                            "workers": row["workers"],
                            "loader_speedup_over_step": ratio,
                            "meets_5x": ratio >= TARGET_RATIO,
                        }
                    )
                    print(
                        f"  {row['dataset']:9s} workers={row['workers']}: "
                        f"loader is {ratio:.1f}x faster than the step"
                    )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
