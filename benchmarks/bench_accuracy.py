"""Accuracy of the real-data run: teacher, student and the two baselines on the held-out test split, the
validation split and other datasets, and the student/teacher gap.

Reads the scores the evaluate step wrote for the real-data profile (`make train-real
DATA=../shared/data/cuhk-dbd`, outputs in runs/real/metrics/, read back with dbdgan.evaluation.scores):
teacher, student, baseline_all_blurred (every pixel blurred) and baseline_laplacian (a Laplacian-energy
sharpness map), all scored by the same evaluator at the ground truth's native resolution on the profile's
evaluate split (test: no choice of recipe, epoch or size has seen it), and beside it on the validation split
(`val.*`) and on each extra dataset the run scored whole (`szu.*`: the SZU-BD sample, never trained on).
Reported per model: max-F over 256 thresholds and adaptive-threshold F (beta^2 = 0.3) with blurred as the
positive class and with in focus as the positive class (how most DBD papers score), and MAE; then student
minus teacher, and the goals (GOAL: CUHK test in-focus max-F >= 0.88 and MAE <= 0.08, SZU sample >= 0.87 and
<= 0.075, within 0.01 in-focus max-F of the teacher, at least 3x fewer FLOPs). Published SZU-BD numbers
(PUBLISHED_SZU: the dataset authors' BD_EFPN and two classic methods, on the full release's 659 other
defocus photos, scored with this definition) are shown beside the SZU sample as anchors, not as a
same-photos comparison.
With --ablation ROOT it adds the ablation (benchmarks/bench_ablation.py: one training per row at the same
budget): per row in-focus and blurred-positive max-F, MAE on the test split and the SZU sample, params,
FLOPs and CPU latency, beside the baselines; rows trained with a second seed are shown with the spread of the
seeds.
Nothing is trained or evaluated here: without a finished run the script says so and exits with status 2.

Usage: python benchmarks/bench_accuracy.py [--run real=runs/real/metrics] [--run pretrain=DIR ...]
                                           [--ablation runs/ablation]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common import ROOT, add_common_args, finish, labelled_path, machine_info, markdown_table

MODELS = ["teacher", "student"]
BASELINES = ["baseline_all_blurred", "baseline_laplacian"]
METRICS = ["max_f", "adaptive_f", "mean_f", "infocus_max_f", "infocus_adaptive_f", "infocus_mean_f", "mae"]
GOAL = {"infocus_max_f": 0.88, "mae": 0.08, "szu.infocus_max_f": 0.87, "szu.mae": 0.075, "teacher_gap": 0.01,
        "flops_ratio": 3.0}
BESIDE = ["val", "szu"]  # sets scored beside the main split, when the run scored them
PUBLISHED_SZU = [  # in-focus max-F, MAE on SZU-BD's other 659 defocus photos (the issue's anchors)
    {"model": "BD_EFPN (SZU-BD authors)", "szu.infocus_max_f": 0.858, "szu.mae": 0.079},
    {"model": "EHS", "szu.infocus_max_f": 0.793, "szu.mae": 0.130},
    {"model": "LBP", "szu.infocus_max_f": 0.690, "szu.mae": 0.184},
]
ABLATION_METRICS = ["infocus_max_f", "max_f", "infocus_mean_f", "mean_f", "mae"]
HOW_TO_RUN = "make train-real DATA=../shared/data/cuhk-dbd"


def read_run(label: str, metrics_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per model and baseline found; the list of missing baseline files (models are required)."""
    from dbdgan.evaluation.scores import read_scores

    missing = [p for p in (metrics_dir / f"{name}.json" for name in MODELS) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"run {label!r}: {', '.join(str(p) for p in missing)} not found: the real-data run has not "
            f"finished yet. Run `{HOW_TO_RUN}` first (about an hour on 2 cores), then this script again."
        )
    rows, absent = [], []
    for name in MODELS + BASELINES:
        path = metrics_dir / f"{name}.json"
        data = read_scores(metrics_dir, name)
        if data is None:
            absent.append(str(path))
            continue
        try:
            row = {key: float(data[key]) for key in METRICS}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not an evaluate-step metrics file ({exc!r})") from exc
        beside = {f"{set_}.{key}": float(data[set_][key]) for set_ in BESIDE if isinstance(data.get(set_), dict)
                  for key in ("infocus_max_f", "max_f", "mae", "n_images") if key in data[set_]}
        settings = data.get("settings", {})
        efficiency = data.get("efficiency", {})
        rows.append({
            "run": label, "model": name, **row, **beside,
            "n_images": data.get("n_images"), "split": settings.get("split"),
            "flip_tta": settings.get("flip_tta"), "input_size": settings.get("input_size"),
            "input": _size_text(settings.get("input_size")),
            "latency_ms_b1": efficiency.get("latency_ms_b1"), "efficiency_size": efficiency.get("input_size"),
            "params_m": efficiency.get("params_m"), "gflops": efficiency.get("gflops"),
            "file": str(path),
        })
    return rows, absent


def _size_text(size: Any) -> str:
    """[256, 256] -> '256', [240, 320] -> '240x320', None -> 'native'."""
    if not size:
        return "native"
    if isinstance(size, list | tuple):
        return str(size[0]) if len(set(size)) == 1 else "x".join(str(v) for v in size)
    return str(size)


def gap(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Student minus teacher for every metric (negative F / positive MAE: the student is worse)."""
    by_model = {row["model"]: row for row in rows}
    teacher, student = by_model["teacher"], by_model["student"]
    out: dict[str, Any] = {"run": rows[0]["run"]}
    out.update({f"d_{key}": student[key] - teacher[key] for key in METRICS})
    out["infocus_max_f_kept"] = student["infocus_max_f"] / teacher["infocus_max_f"]
    if teacher.get("latency_ms_b1") and student.get("latency_ms_b1"):
        out["latency_speedup"] = teacher["latency_ms_b1"] / student["latency_ms_b1"]
    if teacher.get("gflops") and student.get("gflops"):
        out["flops_ratio"] = teacher["gflops"] / student["gflops"]
    out["student_meets_test_goal"] = bool(student["infocus_max_f"] >= GOAL["infocus_max_f"]
                                          and student["mae"] <= GOAL["mae"])
    out["student_meets_szu_goal"] = bool(student.get("szu.infocus_max_f", 0.0) >= GOAL["szu.infocus_max_f"]
                                         and student.get("szu.mae", 1.0) <= GOAL["szu.mae"])
    out["student_meets_goal"] = bool(
        out["student_meets_test_goal"] and out["student_meets_szu_goal"]
        and student["infocus_max_f"] >= teacher["infocus_max_f"] - GOAL["teacher_gap"]
        and out.get("flops_ratio", 0.0) >= GOAL["flops_ratio"]
    )
    return out


def read_ablation(root: Path) -> list[dict[str, Any]]:
    """One row per trained ablation row folder (ROOT/<row>[-seedN]/metrics/<teacher|student>.json)."""
    from dbdgan.evaluation.scores import read_scores

    rows = []
    for metrics in sorted(root.glob("*/metrics/*.json")):
        if metrics.stem not in MODELS:
            continue
        data = read_scores(metrics.parent, metrics.stem) or {}
        folder = metrics.parent.parent
        name, _, seed = folder.name.partition("-seed")
        what = (folder / "row.txt").read_text().splitlines()[1] if (folder / "row.txt").is_file() else ""
        efficiency = data.get("efficiency", {})
        rows.append({"row": name, "seed": int(seed or 0), "what": what, "model": metrics.stem,
                     **{key: float(data[key]) for key in ABLATION_METRICS},
                     **{f"szu.{key}": float(data["szu"][key]) for key in ("infocus_max_f", "mae")
                        if isinstance(data.get("szu"), dict)},
                     "params_m": efficiency.get("params_m"), "gflops": efficiency.get("gflops"),
                     "latency_ms_b1": efficiency.get("latency_ms_b1"), "n_images": data.get("n_images")})
    return rows


def ablation_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seeds of a row averaged, with the spread (max - min) of in-focus max-F when there are several."""
    table = []
    for name in dict.fromkeys(row["row"] for row in rows):
        runs = [row for row in rows if row["row"] == name]
        keys = [key for key in (*ABLATION_METRICS, "szu.infocus_max_f", "szu.mae") if all(key in r for r in runs)]
        mean = {key: sum(r[key] for r in runs) / len(runs) for key in keys}
        spread = max(r["infocus_max_f"] for r in runs) - min(r["infocus_max_f"] for r in runs)
        table.append({**runs[0], **mean, "seeds": len(runs),
                      "spread": f"{spread:.3f}" if len(runs) > 1 else "-"})
    return table


def ablation_header(root: Path, first_row: str) -> str:
    """What an ablation's rows share: its folder, budget and recipe (from a row's row.txt)."""
    lines = (root / first_row / "row.txt").read_text().splitlines() if (root / first_row / "row.txt").is_file() else []
    shared = "; ".join(line for line in lines if line.startswith(("budget:", "recipe:"))) or "budget: see row.txt"
    return (f"Ablation in `{root.name}` (benchmarks/bench_ablation.py, one training per row, same budget and seed "
            f"per kind, the test split and the SZU sample as above; {shared}). Student rows distil from one teacher. "
            "Baselines "
            "from the run above. 'spread' = max - min in-focus max-F over the seeds.")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", dest="runs", type=labelled_path, action="append",
                        help="LABEL=DIR of an evaluate step's metrics (default real=runs/real/metrics); "
                             "repeat to compare runs, e.g. with and without synthetic pre-training")
    parser.add_argument("--ablation", type=Path, action="append", default=[],
                        help="ROOT of benchmarks/bench_ablation.py rows; repeat for ablations of other recipes")
    add_common_args(parser, "accuracy", timing=False)
    args = parser.parse_args()
    runs = args.runs or [("real", ROOT / "runs/real/metrics")]

    rows: list[dict[str, Any]] = []
    gaps, absent = [], []
    try:
        for label, metrics_dir in runs:
            run_rows, run_absent = read_run(label, metrics_dir)
            rows += run_rows
            absent += run_absent
            gaps.append(gap(run_rows))
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench_accuracy: {exc}", file=sys.stderr)
        return 2
    for path in absent:
        print(f"bench_accuracy: warning: {path} not found (baselines come from the evaluate step)",
              file=sys.stderr)

    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"runs": {label: str(path) for label, path in runs}, "goal": GOAL},
        "rows": rows,
        "gaps": gaps,
    }
    first = rows[0]
    held_out = [row for row in rows if row["run"] == first["run"]]
    sections = [
        f"Run {first['run']!r}: the CUHK split {first['split']!r} ({first['n_images']} images, seen by no choice), "
        "the CUHK validation split (val.*: it chose the recipe and, unless the profile fits on train + val, the "
        "kept epoch) and the SZU-BD sample (szu.*: another dataset, never trained on), in-focus max-F and MAE; "
        "params, GFLOPs (at the efficiency size) and batch-1 CPU latency from the evaluate step.",
        markdown_table([
            ("model", "model", ""), ("input", "input", ""),
            ("infocus_max_f", "test max-F", ".3f"), ("mae", "test MAE", ".3f"),
            ("val.infocus_max_f", "val max-F", ".3f"), ("val.mae", "val MAE", ".3f"),
            ("szu.infocus_max_f", "SZU max-F", ".3f"), ("szu.mae", "SZU MAE", ".3f"),
            ("params_m", "params (M)", ".2f"), ("gflops", "GFLOPs", ".2f"), ("latency_ms_b1", "ms (batch 1)", ".0f"),
        ], held_out + [{**row, "input": "-"} for row in PUBLISHED_SZU]),
        "Published SZU-BD rows: the full release's 659 other defocus photos (not this sample), as anchors.",
        f"Split {first['split']!r} ({first['n_images']} images), scored at the ground truth's native "
        f"resolution; networks see whole photos resized to the 'input' square, flip TTA {first['flip_tta']}. "
        "F uses "
        "beta^2 = 0.3; max-F = best of 256 thresholds (per-image F averaged); adaptive F thresholds each "
        "map at 1.5 x its mean. '+' marks the positive class.",
        markdown_table([
            ("run", "run", ""), ("model", "model", ""), ("input", "input", ""),
            ("max_f", "max-F (blurred +)", ".3f"), ("adaptive_f", "adaptive F (blurred +)", ".3f"),
            ("infocus_max_f", "max-F (in focus +)", ".3f"),
            ("infocus_adaptive_f", "adaptive F (in focus +)", ".3f"),
            ("mae", "MAE", ".3f"), ("params_m", "params (M)", ".2f"), ("gflops", "GFLOPs", ".2f"),
            ("latency_ms_b1", "ms (batch 1)", ".0f"), ("n_images", "images", ""),
        ], rows),
        "Student minus teacher (negative F or positive MAE: the student is worse); 'kept' = student / "
        "teacher in-focus max-F; speed-up = teacher / student CPU latency at batch 1 from the evaluate step "
        "(at its efficiency size, with the evaluate step's threads); FLOPs ratio = teacher / student; goal = "
        f"CUHK test in-focus max-F >= {GOAL['infocus_max_f']} and MAE <= {GOAL['mae']} (test goal), SZU sample "
        f">= {GOAL['szu.infocus_max_f']} and <= {GOAL['szu.mae']} (SZU goal), both, within {GOAL['teacher_gap']} "
        f"of the teacher and >= {GOAL['flops_ratio']:g}x fewer FLOPs (all).",
        markdown_table([
            ("run", "run", ""), ("d_max_f", "d max-F (blurred +)", "+.3f"),
            ("d_adaptive_f", "d adaptive F (blurred +)", "+.3f"),
            ("d_infocus_max_f", "d max-F (in focus +)", "+.3f"),
            ("d_infocus_adaptive_f", "d adaptive F (in focus +)", "+.3f"), ("d_mae", "d MAE", "+.3f"),
            ("infocus_max_f_kept", "kept", ".1%"), ("latency_speedup", "speed-up", ".1f"),
            ("flops_ratio", "FLOPs ratio", ".1f"),
            ("student_meets_test_goal", "test goal", ""), ("student_meets_szu_goal", "SZU goal", ""),
            ("student_meets_goal", "all", ""),
        ], gaps),
    ]
    baselines = [row for row in rows if row["model"] in BASELINES and row["run"] == rows[0]["run"]]
    for root in args.ablation:
        ablation = read_ablation(root)
        if not ablation:
            print(f"bench_accuracy: no ablation rows under {root} (benchmarks/bench_ablation.py --all)",
                  file=sys.stderr)
            return 2
        table = ablation_table(ablation)
        report.setdefault("ablations", []).append({"root": str(root), "runs": ablation, "table": table})
        sections += [ablation_header(root, ablation[0]["row"]), markdown_table([
            ("row", "row", ""), ("what", "what", ""), ("infocus_max_f", "max-F (in focus +)", ".3f"),
            ("max_f", "max-F (blurred +)", ".3f"), ("mae", "MAE", ".3f"),
            ("szu.infocus_max_f", "SZU max-F (in focus +)", ".3f"), ("szu.mae", "SZU MAE", ".3f"),
            ("params_m", "params (M)", ".2f"), ("gflops", "GFLOPs", ".2f"),
            ("latency_ms_b1", "ms (batch 1)", ".0f"), ("seeds", "seeds", ""), ("spread", "spread", ""),
        ], table + [{"row": row["model"], "what": "baseline", **row, "seeds": "-", "spread": "-"}
                    for row in baselines])]
    finish("accuracy", report, sections, args.out_dir, timing=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
