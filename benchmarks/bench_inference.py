"""Inference cost of teacher and students on CPU (PyTorch, onnxruntime), and how much faster a student is.

Per model, at --size (320, the paper's input) and on random input (cost does not depend on content):
  - parameters, GFLOPs of one forward pass (torch's FlopCounterMode: 2 per multiply-add), weights size;
  - PyTorch latency at batch 1 and throughput at batch --throughput-batch: medians after warm-up, in eval
    mode under inference_mode (dbdgan.evaluation.efficiency.model_efficiency);
  - onnxruntime latency at batch 1 (CPU provider, as many threads as torch): the model is exported to a
    temp dir with export_onnx (which verifies the graph against PyTorch), then onnxruntime and PyTorch are
    timed back to back on the same input, with their largest logit difference at --size;
  - student/teacher ratios for the pairs the project trains (mobile and efficientunet_b3 against
    teacher_paper; the CPU profile's pair lite0_unet/teacher_lite2 (ImageNet encoders), the from-scratch
    profile's and the default pipeline's pairs when both are measured).
teacher_paper costs seconds per forward on a CPU, so models in --heavy get --heavy-runs timed runs.
On a machine busier than its cores, torch's 2 OpenMP threads can be many times slower than 1 (spin-waiting
threads steal the core from the one doing work): compare --threads 1 or --omp-wait-policy passive.

Usage: python benchmarks/bench_inference.py [--models mobile teacher_paper] [--tiny] [--runs 10] [--no-onnx]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from common import (
    add_common_args,
    apply_runtime_env,
    finish,
    machine_info,
    markdown_table,
    set_threads,
    timed_median,
)

DEFAULT_MODELS = ["teacher_paper", "teacher_lite2", "teacher_small", "efficientunet_b3", "lite0_unet", "mobile",
                  "mobile_small"]
TINY_MODELS = ["teacher_tiny", "mobile_tiny"]
# (student, teacher): the paper's pair and ours, the real-data CPU profile's, the default pipeline's.
PAIRS = [
    ("mobile", "teacher_paper"),
    ("efficientunet_b3", "teacher_paper"),
    ("lite0_unet", "teacher_lite2"),
    ("mobile_small", "teacher_small"),
    ("mobile_tiny", "teacher_tiny"),
]


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dbdgan.evaluation.efficiency import model_efficiency
    from dbdgan.models import create_model

    torch.manual_seed(0)
    model = create_model(name).eval()
    heavy = name in args.heavy
    runs = min(args.runs, args.heavy_runs) if heavy else args.runs
    throughput_runs = 1 if heavy else args.throughput_runs
    start = time.perf_counter()
    eff = model_efficiency(
        model, size=args.size, warmup=args.warmup, runs=runs,
        throughput_batch=args.throughput_batch, throughput_runs=throughput_runs,
    )
    row: dict[str, Any] = {
        "model": name,
        "params_m": eff["params_m"],
        "gflops": eff["gflops"],
        "size_mb": eff["size_mb"],
        "torch_latency_ms_b1": eff["latency_ms_b1"],
        "torch_throughput_img_s": eff["throughput_img_s"],
        "throughput_batch": eff["throughput_batch"],
        "latency_runs": runs,
        "throughput_runs": throughput_runs,
        "warmup": args.warmup,
    }
    if args.onnx:
        row.update(onnx_row(model, name, args, runs))
    row["bench_s"] = time.perf_counter() - start
    return row


def onnx_row(model: Any, name: str, args: argparse.Namespace, runs: int) -> dict[str, Any]:
    """Export (verified by export_onnx), then time onnxruntime and PyTorch back to back on one input, each
    with the same thread count, so their ratio is fair even when the machine's load drifts."""
    import numpy as np
    import torch

    from dbdgan.evaluation.onnx_export import INPUT_NAME, export_onnx, ort_session

    threads = args.ort_threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp, warnings.catch_warnings():
        # tracing warns about the input-shape check in every model; export_onnx verifies the graph anyway
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        path = export_onnx(model, Path(tmp) / f"{name}.onnx")
        session = ort_session(path, threads=threads)
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        feed = {INPUT_NAME: x.numpy()}
        with torch.inference_mode():
            ort_s, _ = timed_median(lambda: session.run(None, feed), args.warmup, runs)
            torch_s, _ = timed_median(lambda: model(x), args.warmup, runs)
            diff = float(np.abs(session.run(None, feed)[0] - model(x).numpy()).max())
        return {
            "onnx_mb": path.stat().st_size / 1e6,
            "ort_threads": threads,
            "ort_latency_ms_b1": ort_s * 1e3,
            "torch_latency_ms_b1_paired": torch_s * 1e3,
            "ort_speedup_over_torch": torch_s / ort_s,
            "onnx_max_abs_diff": diff,
        }


def ratios(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """How many times cheaper/faster each measured student is than its teacher."""
    out = []
    for student, teacher in PAIRS:
        if student not in rows or teacher not in rows:
            continue
        s, t = rows[student], rows[teacher]
        ratio = {
            "student": student,
            "teacher": teacher,
            "params_ratio": t["params_m"] / s["params_m"],
            "flops_ratio": t["gflops"] / s["gflops"],
            "torch_latency_speedup": t["torch_latency_ms_b1"] / s["torch_latency_ms_b1"],
            "torch_throughput_speedup": s["torch_throughput_img_s"] / t["torch_throughput_img_s"],
        }
        if "ort_latency_ms_b1" in s and "ort_latency_ms_b1" in t:
            ratio["ort_latency_speedup"] = t["ort_latency_ms_b1"] / s["ort_latency_ms_b1"]
        out.append(ratio)
    return out


def model_columns(batch: int) -> list[tuple[str, str, str]]:
    return [
        ("model", "model", ""),
        ("params_m", "params (M)", ".2f"),
        ("gflops", "GFLOPs", ".2f"),
        ("torch_latency_ms_b1", "torch b1 latency (ms)", ".1f"),
        ("torch_throughput_img_s", f"torch b{batch} throughput (img/s)", ".2f"),
        ("ort_latency_ms_b1", "ORT b1 latency (ms)", ".1f"),
        ("torch_latency_ms_b1_paired", "torch b1, paired with ORT (ms)", ".1f"),
        ("ort_speedup_over_torch", "ORT speed-up", ".2f"),
        ("onnx_max_abs_diff", "ORT max abs diff", ".1e"),
        ("latency_runs", "runs", "d"),
    ]


RATIO_COLUMNS = [
    ("student", "student", ""),
    ("teacher", "teacher", ""),
    ("params_ratio", "params ratio", ".1f"),
    ("flops_ratio", "FLOPs ratio", ".1f"),
    ("torch_latency_speedup", "torch b1 speed-up", ".1f"),
    ("torch_throughput_speedup", "torch batch speed-up", ".1f"),
    ("ort_latency_speedup", "ORT b1 speed-up", ".1f"),
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="model presets (list_models())")
    parser.add_argument("--tiny", action="store_true", help=f"also measure {' and '.join(TINY_MODELS)}")
    parser.add_argument("--size", type=int, default=320, help="square input side (default 320)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5, help="timed batch-1 runs (median)")
    parser.add_argument("--throughput-batch", type=int, default=8)
    parser.add_argument("--throughput-runs", type=int, default=2, help="timed batch runs (median)")
    parser.add_argument("--heavy", nargs="*", default=["teacher_paper"],
                        help="models timed with --heavy-runs runs and one throughput run")
    parser.add_argument("--heavy-runs", type=int, default=3)
    parser.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip the onnxruntime export")
    parser.add_argument("--ort-threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: the same as torch's)")
    add_common_args(parser, "inference")
    args = parser.parse_args()
    apply_runtime_env(args.allocator, args.omp_wait_policy)
    set_threads(args.threads)

    from dbdgan.models import list_models

    models = list(dict.fromkeys(args.models + (TINY_MODELS if args.tiny else [])))
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {list_models()}")

    report: dict[str, Any] = {
        "machine": machine_info(), "settings": {**vars(args), "out_dir": str(args.out_dir)}
    }
    if args.onnx:
        import onnxruntime

        report["machine"]["onnxruntime"] = onnxruntime.__version__
    rows: dict[str, dict[str, Any]] = {}
    for name in models:
        rows[name] = measure(name, args)
        r = rows[name]
        ort = f", ORT {r['ort_latency_ms_b1']:.0f} ms" if "ort_latency_ms_b1" in r else ""
        print(f"{name}: {r['gflops']:.2f} GFLOPs, torch b1 {r['torch_latency_ms_b1']:.0f} ms, "
              f"b{r['throughput_batch']} {r['torch_throughput_img_s']:.2f} img/s{ort} ({r['bench_s']:.0f}s)",
              flush=True)
    report["models"] = list(rows.values())
    report["ratios"] = ratios(rows)

    sections = [
        f"Input {args.size}x{args.size}, random; PyTorch eval mode under inference_mode; latency = median "
        f"of the stated runs at batch 1 after {args.warmup} warm-up; throughput = batch "
        f"{args.throughput_batch} / median batch time; ORT = onnxruntime CPU provider with as many threads "
        "as torch, timed back to back with PyTorch on the same input (the paired column), max abs diff on "
        "the logits. "
        "GFLOPs count 2 per multiply-add.",
        markdown_table(model_columns(args.throughput_batch), report["models"]),
    ]
    if report["ratios"]:
        sections += ["Student vs teacher (teacher cost / student cost; > 1 = student cheaper):",
                     markdown_table(RATIO_COLUMNS, report["ratios"])]
    finish("inference", report, sections, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
