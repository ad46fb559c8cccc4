"""Inference cost of teacher and students on CPU (PyTorch, onnxruntime), and how much faster a student is.

Per model, at --size (320, the paper's input) and on random input (cost does not depend on content):
  - parameters, GFLOPs of one forward pass (torch's FlopCounterMode: 2 per multiply-add), weights size;
  - PyTorch latency at batch 1 and throughput at batch --throughput-batch: medians after warm-up, under
    inference_mode, of the network as prediction runs it (batch norm folded, channels-last:
    dbdgan.inference.model_cost), beside the unfolded NCHW training network at batch 1;
  - GFLOP/s = GFLOPs / latency (or x throughput): how much of the CPU a network uses;
  - onnxruntime latency at batch 1 (CPU provider, as many threads as torch, idle threads sleeping unless
    --ort-spinning): the model is exported to a temp dir with export_onnx (which verifies the graph against
    PyTorch), then onnxruntime and PyTorch are timed back to back on the same input, with their largest
    logit difference at --size; for --int8 models also the static int8 (QDQ) file's latency;
  - student/teacher ratios for the pairs the project trains (mobile and efficientunet_b3 against
    teacher_paper; the CPU profile's pair lite0_unet/teacher_lite2 (ImageNet encoders), the from-scratch
    profile's and the default pipeline's pairs when both are measured).
teacher_paper costs seconds per forward on a CPU, so models in --heavy get --heavy-runs timed runs.
On a machine busier than its cores, torch's 2 OpenMP threads can be many times slower than 1 (spin-waiting
threads steal the core from the one doing work): compare --threads 1 or --omp-wait-policy passive.

Usage: python benchmarks/bench_inference.py [--models mobile teacher_paper] [--tiny] [--runs 10] [--no-onnx]
       python benchmarks/bench_inference.py --threads 2 --omp-wait-policy passive   # the issue-17 figures
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    add_common_args,
    apply_runtime_env,
    finish,
    machine_info,
    markdown_table,
    set_threads,
    timed_median,
)

CUHK_STUDENT = ROOT.parent / "runs-cuhk/real/models/student.pt"  # the lead's CUHK profile run
INT8_MAX_F_LOSS = 0.005  # issue 17: int8 is kept only if it costs less max-F than this
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

    from dbdgan.inference import model_cost
    from dbdgan.models import create_model
    from dbdgan.models.info import measure_ms

    torch.manual_seed(0)
    model = create_model(name).eval()
    heavy = name in args.heavy
    runs = min(args.runs, args.heavy_runs) if heavy else args.runs
    throughput_runs = 1 if heavy else args.throughput_runs
    start = time.perf_counter()
    eff = model_cost(
        model, size=args.size, warmup=args.warmup, runs=runs,
        throughput_batch=args.throughput_batch, throughput_runs=throughput_runs,
    )
    row: dict[str, Any] = {
        "model": name,
        "params_m": eff["params_m"],
        "gflops": eff["gflops"],
        "size_mb": eff["size_mb"],
        "torch_latency_ms_b1": eff["latency_ms_b1"],
        "torch_gflop_s_b1": eff["gflop_s_b1"],
        "torch_throughput_img_s": eff["throughput_img_s"],
        "torch_gflop_s_batch": eff["gflops"] * eff["throughput_img_s"],
        "throughput_batch": eff["throughput_batch"],
        "latency_runs": runs,
        "throughput_runs": throughput_runs,
        "warmup": args.warmup,
    }
    if args.plain:  # the training network as it is (batch norm unfolded, NCHW): what the speed-ups are against
        row["torch_plain_latency_ms_b1"] = measure_ms(model, 1, args.size, warmup=args.warmup, runs=runs)
        row["fast_speedup_over_plain"] = row["torch_plain_latency_ms_b1"] / row["torch_latency_ms_b1"]
    if args.onnx:
        row.update(onnx_row(model, name, args, runs))
        row["ort_gflop_s_b1"] = row["gflops"] * 1e3 / row["ort_latency_ms_b1"]
    row["bench_s"] = time.perf_counter() - start
    return row


def onnx_row(model: Any, name: str, args: argparse.Namespace, runs: int) -> dict[str, Any]:
    """Export (verified by export_onnx), then time onnxruntime and PyTorch back to back on one input, each
    with the same thread count, so their ratio is fair even when the machine's load drifts."""
    import numpy as np
    import torch

    from dbdgan.inference import prepare_network
    from dbdgan.inference_onnx import INPUT_NAME, export_onnx, ort_session

    threads = args.ort_threads or torch.get_num_threads()
    fast = prepare_network(model)
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp, warnings.catch_warnings():
        # tracing warns about the input-shape check in every model; export_onnx verifies the graph anyway
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        path = export_onnx(model, Path(tmp) / f"{name}.onnx")
        session = ort_session(path, threads=threads, spinning=args.ort_spinning)
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        feed = {INPUT_NAME: x.numpy()}
        with torch.inference_mode():
            ort_s, _ = timed_median(lambda: session.run(None, feed), args.warmup, runs)
            torch_s, _ = timed_median(lambda: fast(x), args.warmup, runs)
            diff = float(np.abs(session.run(None, feed)[0] - model(x).numpy()).max())
        row = {
            "onnx_mb": path.stat().st_size / 1e6,
            "ort_threads": threads,
            "ort_latency_ms_b1": ort_s * 1e3,
            "torch_latency_ms_b1_paired": torch_s * 1e3,
            "ort_speedup_over_torch": torch_s / ort_s,
            "onnx_max_abs_diff": diff,
        }
        if name in args.int8:
            row.update(int8_latency(path, Path(tmp), args, runs, threads, ort_s))
        return row


def int8_latency(path: Path, tmp: Path, args: argparse.Namespace, runs: int, threads: int,
                 float_s: float) -> dict[str, Any]:
    """Static int8 (QDQ) latency at batch 1; calibrated on random inputs here (latency does not depend on
    the ranges; the accuracy section calibrates on training photos)."""
    import numpy as np

    from dbdgan.inference_onnx import INPUT_NAME, ort_session, quantize_onnx

    rng = np.random.default_rng(0)
    calibration = [rng.random((1, 3, args.size, args.size), dtype=np.float32) for _ in range(2)]
    quantised = quantize_onnx(path, tmp / "int8.onnx", calibration)
    session = ort_session(quantised, threads=threads, spinning=args.ort_spinning)
    feed = {INPUT_NAME: calibration[0]}
    int8_s, _ = timed_median(lambda: session.run(None, feed), args.warmup, runs)
    return {"int8_latency_ms_b1": int8_s * 1e3, "int8_speedup_over_ort": float_s / int8_s}


def int8_accuracy(args: argparse.Namespace) -> dict[str, Any] | None:
    """Float vs static int8 onnxruntime on the validation split of a prepared dataset, for a trained model.

    Calibrated on --int8-calibration training photos preprocessed as prediction does; both files scored by
    evaluate_models at the model's input size with flip TTA, as the CUHK profile evaluates; latency at
    batch 1 on one 320x320 input. Kept only if neither max-F (blurred or in focus positive) drops by
    INT8_MAX_F_LOSS or more.
    """
    import numpy as np
    import torch

    from dbdgan.evaluation.evaluate import evaluate_models, read_split
    from dbdgan.inference import calibration_from_files, load_predictor
    from dbdgan.inference_onnx import INPUT_NAME, OnnxModel, export_onnx, quantize_onnx

    if args.int8_model is None or not args.int8_model.is_file() or not (args.int8_data / "manifest.csv").is_file():
        print(f"int8 accuracy skipped: no model file {args.int8_model} or no prepared data in {args.int8_data}")
        return None
    loaded = load_predictor(args.int8_model)
    train = [sample.image for sample in read_split(args.int8_data, "train")]
    threads = args.ort_threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        float_path = export_onnx(loaded.model, Path(tmp) / "float.onnx")
        calibration = calibration_from_files(train, loaded.input_size, args.int8_calibration)
        int8_path = quantize_onnx(float_path, Path(tmp) / "int8.onnx", calibration)
        models = {name: OnnxModel(path, threads, spinning=args.ort_spinning)
                  for name, path in (("float", float_path), ("int8", int8_path))}
        scores = evaluate_models(models, args.int8_data, "val", Path(tmp) / "metrics", flip_tta=True,
                                 input_size=loaded.input_size, grid_samples=0)
        x = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
        latency = {name: timed_median(lambda m=m: m.session.run(None, {INPUT_NAME: x}), args.warmup,
                                      args.runs)[0] * 1e3 for name, m in models.items()}
    keys = ("max_f", "infocus_max_f", "mae")
    rows = [{"model": name, **{key: scores[name][key] for key in keys}, "latency_ms_b1": latency[name],
             "n_images": scores[name]["n_images"]} for name in models]
    loss = max(scores["float"][key] - scores["int8"][key] for key in ("max_f", "infocus_max_f"))
    return {"model_file": str(args.int8_model), "arch": getattr(loaded.model, "arch", None),
            "data": str(args.int8_data), "calibration_images": len(calibration), "input_size": loaded.input_size,
            "rows": rows, "max_f_loss": loss, "kept": loss < INT8_MAX_F_LOSS,
            "speedup": latency["float"] / latency["int8"]}


INT8_COLUMNS = [
    ("model", "onnxruntime", ""),
    ("max_f", "max-F (blurred +)", ".4f"),
    ("infocus_max_f", "max-F (in focus +)", ".4f"),
    ("mae", "MAE", ".4f"),
    ("latency_ms_b1", "b1 latency (ms)", ".1f"),
    ("n_images", "val photos", "d"),
]


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
        ("torch_plain_latency_ms_b1", "torch b1, unfolded NCHW (ms)", ".1f"),
        ("torch_latency_ms_b1", "torch b1 latency (ms)", ".1f"),
        ("torch_gflop_s_b1", "torch b1 GFLOP/s", ".0f"),
        ("torch_throughput_img_s", f"torch b{batch} throughput (img/s)", ".2f"),
        ("torch_gflop_s_batch", f"torch b{batch} GFLOP/s", ".0f"),
        ("ort_latency_ms_b1", "ORT b1 latency (ms)", ".1f"),
        ("ort_gflop_s_b1", "ORT b1 GFLOP/s", ".0f"),
        ("int8_latency_ms_b1", "ORT int8 b1 (ms)", ".1f"),
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
    parser.add_argument("--ort-spinning", action=argparse.BooleanOptionalAction, default=False,
                        help="let idle onnxruntime threads spin (faster on an idle machine, much slower on a "
                             "busy one; default off, as predict runs it)")
    parser.add_argument("--no-plain", dest="plain", action="store_false",
                        help="skip timing the unfolded NCHW network (the before column)")
    parser.add_argument("--int8", nargs="*", default=["lite0_unet"],
                        help="models whose static int8 ONNX latency is measured too (default lite0_unet); "
                             "with a trained --int8-model, its int8 accuracy as well (`--int8` alone: neither)")
    parser.add_argument("--int8-model", type=Path, default=CUHK_STUDENT,
                        help="trained model file for the int8 accuracy (default: the CUHK profile's student)")
    parser.add_argument("--int8-data", type=Path, default=CUHK_STUDENT.parents[1] / "data/prepared",
                        help="prepared dataset whose train split calibrates and val split scores")
    parser.add_argument("--int8-calibration", type=int, default=32, help="calibration photos (default 32)")
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
        "machine": machine_info(), "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
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
        f"Input {args.size}x{args.size}, random; PyTorch under inference_mode, the network as prediction runs "
        "it (batch norm folded into the convolutions, channels-last), beside the unfolded NCHW training "
        f"network; latency = median of the stated runs at batch 1 after {args.warmup} warm-up; throughput = "
        f"batch {args.throughput_batch} / median batch time; ORT = onnxruntime CPU provider with as many "
        f"threads as torch (spinning {'on' if args.ort_spinning else 'off'}), timed back to back with PyTorch "
        "on the same input (the paired column), max abs diff on the logits; int8 = static QDQ quantisation "
        "(per-channel int8 weights, uint8 activations). GFLOPs count 2 per multiply-add; GFLOP/s = GFLOPs / "
        "latency (batch: x throughput).",
        markdown_table(model_columns(args.throughput_batch), report["models"]),
    ]
    if report["ratios"]:
        sections += ["Student vs teacher (teacher cost / student cost; > 1 = student cheaper):",
                     markdown_table(RATIO_COLUMNS, report["ratios"])]
    report["int8"] = int8_accuracy(args) if args.int8 else None
    if report["int8"]:
        q = report["int8"]
        verdict = "kept" if q["kept"] else "not kept"
        sections += [
            f"Static int8 of `{q['arch']}` (`{q['model_file']}`), calibrated on {q['calibration_images']} "
            f"training photos, scored on the validation split of `{q['data']}` at {q['input_size']} px with "
            f"flip TTA: largest max-F loss {q['max_f_loss']:+.4f} ({verdict}: the bar is a loss under "
            f"{INT8_MAX_F_LOSS}), {q['speedup']:.2f}x the float latency.",
            markdown_table(INT8_COLUMNS, q["rows"]),
        ]
    finish("inference", report, sections, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
