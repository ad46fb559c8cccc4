"""What a user feels: end-to-end images/s of `dbdgan predict` on full-size photos, beside the network alone.

For each backend (PyTorch; onnxruntime on the same inputs) with and without overlays, `dbdgan predict` runs
as a user runs it (a subprocess, --threads threads) on the first --images photos of the shared CUHK folder
(640 px JPEGs). Its summary gives the wall time, the time spent loading and preparing the network and the
seconds spent in each stage (decode, preprocess, network, postprocess, write; summed over threads: decoding
and writing overlap with the network). End-to-end rate = images / the time on the images (preparation left
out: it is paid once per command, and the table shows it). The network-only rate is the same prepared
network on batches of the same size and input size, timed here (random input: cost does not depend on it)
just before each command; each row runs --repeats times and shows the run with the median ratio, since
on a shared machine the network's own rate moves by 20-30 % from one minute to the next.

Goals (issue 17): end-to-end >= 80 % of the network-only rate, and >= 3x the 4 images/s measured before
for the CUHK profile's student.

Usage: python benchmarks/bench_predict.py [--model runs-cuhk/real/models/student.pt] [--images 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    SHARED_CUHK,
    add_common_args,
    apply_runtime_env,
    finish,
    machine_info,
    markdown_table,
    set_threads,
    timed_median,
)

MODEL_CANDIDATES = (ROOT.parent / "runs-cuhk/real/models/student.pt", ROOT / "runs/real/models/student.pt")
BEFORE_COMMIT = "93f0524"
BEFORE_IMG_S = 4.0  # issue 17: 100 CUHK photos in 27 s with the CUHK profile's student, before this work
STAGES = ("decode", "preprocess", "network", "postprocess", "write")


def default_model() -> Path | None:
    return next((path for path in MODEL_CANDIDATES if path.is_file()), None)


def stand_in_model(folder: Path, preset: str, size: int) -> Path:
    """An untrained `preset` model file storing `size` as its input size: throughput does not need weights."""
    import torch

    from dbdgan.checkpoint import save_model_file
    from dbdgan.models import create_model

    torch.manual_seed(0)
    path = folder / f"{preset}-untrained.pt"
    save_model_file(path, preset, {}, create_model(preset), {"input_size": size})
    return path


def photo_folder(folder: Path, count: int) -> list[Path]:
    """Links to the first `count` CUHK photos (sorted by name) in `folder`."""
    photos = sorted((SHARED_CUHK / "images").iterdir())[:count]
    folder.mkdir(parents=True)
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    return photos


def run_predict(photos: Path, model: Path, out: Path, backend: str, overlays: bool,
                args: argparse.Namespace) -> dict[str, Any]:
    """`dbdgan predict` in a subprocess; its summary (without the per-image list) and the command's wall."""
    command = [sys.executable, "-m", "dbdgan.cli", "predict", str(photos), "--model", str(model), "-o", str(out),
               "--no-progress", "--json", "--backend", backend, "--batch-size", str(args.batch_size),
               "--workers", str(args.workers)]
    if not overlays:
        command.append("--no-overlay")
    summary, wall = timed_command(command, args, "dbdgan predict")
    summary.pop("outputs")
    return {**summary, "command_wall_s": wall}


def timed_command(command: list[str], args: argparse.Namespace, what: str,
                  cwd: Path = ROOT) -> tuple[dict[str, Any], float]:
    """Run a predict command with --threads network threads; its JSON summary and its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), wall


def run_before(photos: Path, model: Path, out: Path, commit: str, folder: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    """`dbdgan predict` as it was at `commit` (its library and params.yaml from `git archive`, run in their
    folder: that CLI reads params.yaml and refuses keys added since), same photos."""
    source = folder / "before"
    source.mkdir()
    archive = subprocess.run(["git", "archive", commit, "src", "params.yaml"], cwd=ROOT, capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    code = f"import sys; sys.path.insert(0, {str(source / 'src')!r}); from dbdgan.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", code, "predict", str(photos), "--model", str(model.resolve()), "-o", str(out),
               "--no-progress"]
    summary, wall = timed_command(command, args, f"dbdgan predict at {commit}", cwd=source)
    images = summary["written"]
    return {"backend": f"torch, code of {commit}", "overlays": True, "images": images, "command_wall_s": wall,
            "command_img_s": images / wall}


def network_only(model: Path, backend: str, args: argparse.Namespace, size: tuple[int, int]) -> dict[str, Any]:
    """Images/s of the prepared network alone on [batch, 3, H, W] inputs, in this process (same threads)."""
    import numpy as np
    import torch

    from dbdgan.inference import load_predictor, network_input, prepare_network

    network = prepare_network(load_predictor(model).model, backend)
    photo = np.random.default_rng(0).integers(0, 256, (427, 640, 3), dtype=np.uint8)  # CUHK's usual size
    x = torch.cat([network_input(photo, size)] * args.batch_size)  # laid out as predict's batches are
    with torch.inference_mode():
        median, times = timed_median(lambda: network(x), args.warmup, args.runs)
    return {"network_img_s": args.batch_size / median, "network_batch_ms": median * 1e3,
            "network_runs_s": times}


def row(backend: str, overlays: bool, result: dict[str, Any], net: dict[str, Any]) -> dict[str, Any]:
    timings, images = result["timings"], result["written"]
    e2e = images / timings["images_s"]
    out = {"backend": backend, "overlays": overlays, "images": images, "e2e_img_s": e2e,
           "command_wall_s": result["command_wall_s"], "command_img_s": images / result["command_wall_s"],
           "prepare_s": timings["prepare_s"],
           "network_img_s": net["network_img_s"], "ratio": e2e / net["network_img_s"],
           "speedup_over_before": e2e / BEFORE_IMG_S, "timings": timings}
    for stage in STAGES:
        out[f"{stage}_ms"] = timings[f"{stage}_s"] / images * 1e3
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median ratio (the lower middle one for an even count), with every run's ratio."""
    middle = sorted(runs, key=lambda r: r["ratio"])[(len(runs) - 1) // 2]
    return {**middle, "runs": len(runs), "ratios": ", ".join(f"{r['ratio']:.2f}" for r in runs)}


COLUMNS = [
    ("backend", "backend", ""),
    ("overlays", "overlays", ""),
    ("images", "photos", "d"),
    ("e2e_img_s", "end to end (img/s)", ".1f"),
    ("network_img_s", "network only (img/s)", ".1f"),
    ("ratio", "end to end / network", ".2f"),
    ("ratios", "ratio, each run", ""),
    ("speedup_over_before", "x the 4 img/s before", ".1f"),
    ("prepare_s", "load + prepare (s)", ".1f"),
    ("command_wall_s", "command wall (s)", ".1f"),
    ("command_img_s", "img/s, whole command", ".1f"),
    ("decode_ms", "decode (ms/img)", ".1f"),
    ("preprocess_ms", "preprocess", ".1f"),
    ("network_ms", "network", ".1f"),
    ("postprocess_ms", "postprocess", ".1f"),
    ("write_ms", "write", ".1f"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (default: the CUHK profile's student under ../runs-cuhk/real or "
                             "runs/real; without one, an untrained --preset stand-in)")
    parser.add_argument("--preset", default="lite0_unet", help="stand-in network when there is no model file")
    parser.add_argument("--size", type=int, default=320, help="stand-in model's stored input size")
    parser.add_argument("--images", type=int, default=100, help="CUHK photos to predict (default 100)")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed network-only batches (median)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="commands per row, each after its own network-only timing; the row is the run "
                             "with the median ratio (default 3)")
    parser.add_argument("--before", default=BEFORE_COMMIT,
                        help="also run `dbdgan predict` as it was at this commit, same photos and model "
                             f"(default {BEFORE_COMMIT}, the last one before issue 17; '' skips it)")
    add_common_args(parser, "predict")
    parser.set_defaults(threads=2, omp_wait_policy="passive")
    args = parser.parse_args()
    if not (SHARED_CUHK / "images").is_dir():
        print(f"no CUHK photos at {SHARED_CUHK}/images (set DBDGAN_SHARED_DATA)", file=sys.stderr)
        return 2
    apply_runtime_env(args.allocator, args.omp_wait_policy)
    set_threads(args.threads)

    from dbdgan.inference import load_predictor, size_tuple

    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    report: dict[str, Any] = {"machine": machine_info(), "settings": settings}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        model = args.model or default_model()
        trained = model is not None
        if model is None:
            model = stand_in_model(Path(tmp), args.preset, args.size)
        loaded = load_predictor(model)
        size = size_tuple(loaded.input_size) or size_tuple(args.size)
        report["model"] = {"file": str(model), "arch": getattr(loaded.model, "arch", None), "trained": trained,
                           "input_size": list(size)}
        photos = Path(tmp) / "photos"
        report["photos"] = [p.name for p in photo_folder(photos, args.images)]
        for backend in args.backends:
            for overlays in (True, False):
                runs = []
                for repeat in range(args.repeats):  # the network alone timed just before each command
                    net = network_only(model, backend, args, size)
                    out = Path(tmp) / f"out-{backend}-{overlays}-{repeat}"
                    runs.append(row(backend, overlays, run_predict(photos, model, out, backend, overlays, args), net))
                    r = runs[-1]
                    print(f"{backend}, overlays {overlays}: {r['e2e_img_s']:.1f} img/s end to end, network alone "
                          f"{r['network_img_s']:.1f} img/s (ratio {r['ratio']:.2f})", flush=True)
                rows.append(median_run(runs))
        if args.before:
            rows.append(run_before(photos, model, Path(tmp) / "out-before", args.before, Path(tmp), args))
            print(f"before ({args.before}): {rows[-1]['command_img_s']:.1f} img/s, whole command", flush=True)
    report["rows"] = rows
    what = (f"`{report['model']['arch']}` from `{model}`" + ("" if trained else " (untrained stand-in)")
            + f", network input {size[0]}x{size[1]}")
    sections = [
        f"Model: {what}. {len(report['photos'])} CUHK photos (full size, 640 px JPEGs) through `dbdgan predict` "
        f"(a subprocess, batch {args.batch_size}, {args.workers} decode/write threads, {args.threads} threads "
        f"for the network), {args.repeats} times per row, each run right after its own network-only timing; "
        "the row shows the run with the median ratio, and every run's ratio. End to end = photos / the "
        "command's time on the images (after loading and preparing the network: BN folding, and for onnx the "
        "verified export). Network only = the same prepared network on "
        f"[{args.batch_size}, 3, {size[0]}, {size[1]}] batches made by predict's preprocessing, median of "
        f"{args.runs}. Stage columns: seconds per photo spent in each stage, summed over threads (decode and "
        "write run beside the network, so they overlap).",
        markdown_table(COLUMNS, rows),
        "Goals: end to end >= 0.80 of the network-only rate; >= 3x the 4 img/s measured before (12 img/s). "
        "The last row, when there, is the same command with the library as it was before this work (batch 4, "
        "single-threaded decode and write, PNG level 6, unfolded NCHW network): its rate is photos / the "
        "whole command, as the 4 img/s was measured; compare it with the `img/s, whole command` column.",
    ]
    finish("predict", report, sections, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
