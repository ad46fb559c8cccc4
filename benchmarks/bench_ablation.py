"""What each part of Distill-DBDGAN buys on real photos: one training per row, all at the same budget.

Rows (the CUHK profile, profiles/cuhk-cpu.yaml, with one thing changed each):
  teacher rows, each a teacher training (then scored alone):
    teacher-d1          pretrained Lite2 teacher, content loss + D1 (the profile's recipe)
    teacher-no-d1       the same without the adversarial term (train_teacher.w_adv = 0)
    teacher-scratch     the same network from random weights (model.teacher_pretrained = false)
  student rows, each a distillation from the same teacher (--teacher, default the real run's), scored alone:
    student-alone       pretrained Lite0 student on the labels only (no consistency, feature, D2 or D3 term)
    student-distilled   + consistency to the teacher's map and the feature constraint (w_adv = w_distill = 0)
    student-d2-d3       + D2 and D3 (the profile's recipe)
    student-scratch     student-d2-d3 from random weights (model.student_pretrained = false)
  student rows of the recipe's CPU choices, each student-d2-d3 with one choice undone:
    student-crops-224   224 px training crops, validated and evaluated at 384 (the recipe: 256 / 416)
    student-train-only  trained on the train split alone, the kept epoch chosen on validation (the recipe:
                        the final fit on train + val, the last epoch kept)
    student-fp32        fp32 and contiguous tensors (the recipe: bf16 autocast and channels-last)
Every row trains for --teacher-epochs / --student-epochs (the same for all rows of a kind; shorter than the
profile, so that all rows fit an afternoon) with the same seed, data split and evaluation (as the evaluate
step: the test split at native resolution, flip TTA, and the SZU-BD sample with --szu, never trained on).
A row is one command, `--row NAME`; `--all` runs the rows whose metrics are missing. Outputs:
ROOT/<row>/{models,metrics}/; bench_accuracy.py --ablation ROOT turns them into the table. Tracking goes
to ROOT/mlflow.db (experiment dbdgan-ablation), not the team's store.

Usage: python benchmarks/bench_ablation.py --row student-alone [--seed 1] [--root runs/ablation]
       python benchmarks/bench_ablation.py --all [--data ../shared/data/cuhk-dbd]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, apply_runtime_env, machine_info, set_threads

PROFILE = [ROOT / "params.yaml", ROOT / "profiles" / "cuhk-cpu.yaml"]
NO_DISTILLATION = ["distill_student.w_consistency=0", "distill_student.w_feature=0",
                   "distill_student.w_adv=0", "distill_student.w_distill=0"]


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # teacher | student: which network the row trains and scores
    overrides: tuple[str, ...]
    what: str


ROWS = {row.name: row for row in (
    Row("teacher-d1", "teacher", (), "pretrained, content + D1"),
    Row("teacher-no-d1", "teacher", ("train_teacher.w_adv=0",), "pretrained, content only"),
    Row("teacher-scratch", "teacher", ("model.teacher_pretrained=false",), "from scratch, content + D1"),
    Row("student-alone", "student", tuple(NO_DISTILLATION), "pretrained, labels only"),
    Row("student-distilled", "student", ("distill_student.w_adv=0", "distill_student.w_distill=0"),
        "pretrained, + consistency + features"),
    Row("student-d2-d3", "student", (), "pretrained, + consistency + features + D2 + D3"),
    Row("student-scratch", "student", ("model.student_pretrained=false",), "from scratch, + all terms"),
    Row("student-crops-224", "student", ("distill_student.image_size=224", "distill_student.val_size=384"),
        "recipe, 224 px crops (val 384)"),
    Row("student-train-only", "student", ("distill_student.train_splits=[train]",
                                          "distill_student.best_metric=val_score"),
        "recipe, train split only, epoch kept on val"),
    Row("student-fp32", "student", ("distill_student.cpu_bf16=false", "distill_student.channels_last=false"),
        "recipe, fp32 contiguous"),
)}


def row_dir(root: Path, row: Row, seed: int) -> Path:
    return root / (row.name if seed == 0 else f"{row.name}-seed{seed}")


def run_row(row: Row, args: argparse.Namespace) -> Path:
    """Train the row's network, score it as the evaluate step does (and on --szu); returns its metrics folder."""
    from dbdgan import steps
    from dbdgan.config import load_params
    from dbdgan.evaluation.extra import ExtraDataset
    from dbdgan.tracking import Tracking

    out = row_dir(args.root, row, args.seed)
    budget = [f"train_teacher.epochs={args.teacher_epochs}", f"distill_student.epochs={args.student_epochs}",
              f"seed={args.seed}"]
    params = load_params(PROFILE, [*budget, *row.overrides])
    tracking = Tracking(uri=f"sqlite:///{(args.root / 'mlflow.db').resolve()}", experiment="dbdgan-ablation")
    dataset = prepared_dataset(args)
    start = time.perf_counter()
    if row.kind == "teacher":
        model = out / "models" / "teacher.pt"
        steps.train_teacher(params, dataset=dataset, out=model, checkpoints=out / "checkpoints", tracking=tracking)
    else:
        if not args.teacher.is_file():
            raise FileNotFoundError(f"student rows distil from --teacher {args.teacher}: not found (run "
                                    "`make train-real` first, or pass --teacher runs/ablation/teacher-d1/models/"
                                    "teacher.pt)")
        model = out / "models" / "student.pt"
        steps.distill_student(params, dataset=dataset, teacher=args.teacher, out=model,
                              checkpoints=out / "checkpoints", tracking=tracking)
    train_s = time.perf_counter() - start
    scores = out / "metrics"
    extra = [ExtraDataset("szu", "szu", args.szu)] if args.szu else []
    steps.evaluate(params, dataset=dataset, out=scores, models={row.kind: model}, tracking=tracking, extra=extra)
    (out / "row.txt").write_text(f"{row.name}\n{row.what}\noverrides: {' '.join(row.overrides) or '-'}\n"
                                 f"budget: {' '.join(budget)}\nrecipe: {recipe(load_params(PROFILE))}\n"
                                 f"train_s: {train_s:.0f}\n"
                                 f"teacher: {args.teacher if row.kind == 'student' else '-'}\n"
                                 f"machine: {machine_info()}\n")
    print(f"bench_ablation: {row.name} (seed {args.seed}) trained in {train_s / 60:.1f} min -> {scores}")
    return scores


def recipe(params) -> str:
    """The profile's knobs (before a row's changes) that a recipe change moves: learning rates, adversarial
    weights, the weights' moving average, crop and validation sizes, the splits fitted and the precision."""
    teacher, student = params.train_teacher, params.distill_student

    def ema_and_val(cfg) -> str:
        return "".join([f", ema {cfg.ema_decay:g}" if cfg.ema_decay else "",
                        f", crops {cfg.image_size}", f", val {cfg.val_size}" if cfg.val_size else "",
                        f", fit on {'+'.join(cfg.train_splits)}", ", bf16" if cfg.cpu_bf16 else "",
                        ", channels-last" if cfg.channels_last else ""])

    return (f"teacher lr {teacher.optim.lr:g} (encoder x{teacher.optim.encoder_lr_mult:g}), w_adv {teacher.w_adv:g}"
            f"{ema_and_val(teacher)}; student lr {student.optim.lr:g} (encoder x{student.optim.encoder_lr_mult:g}), "
            f"w_adv {student.w_adv:g}, w_distill {student.w_distill:g}{ema_and_val(student)}")


def prepared_dataset(args: argparse.Namespace) -> Path:
    """The CUHK folder prepared once (same seed and split as the profile), shared by every row."""
    from dbdgan import steps
    from dbdgan.config import load_params

    dataset = args.root / "data"
    if not (dataset / "manifest.csv").is_file():
        if not args.data.is_dir():
            raise FileNotFoundError(f"--data {args.data} is not a folder (the CUHK layout)")
        steps.prepare(load_params(PROFILE), raw=args.data, out=dataset)
    return dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--row", choices=sorted(ROWS), action="append", help="row to train (repeatable)")
    which.add_argument("--all", action="store_true", help="every row whose metrics are missing")
    parser.add_argument("--root", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "cuhk-dbd")
    parser.add_argument("--teacher", type=Path, default=ROOT / "runs" / "real" / "models" / "teacher.pt",
                        help="the teacher every student row distils from")
    szu = ROOT.parent / "shared" / "data" / "szu-bd-sample"
    parser.add_argument("--szu", type=Path, default=szu if (szu / "gt").is_dir() else None,
                        help="an SZU-BD folder every row is also scored on (default: the sample in ../shared)")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--student-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="a second seed tells a real difference from noise")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (one run fills 2 cores)")
    args = parser.parse_args()
    apply_runtime_env("tuned", "passive")
    set_threads(args.threads)
    names = args.row or [name for name, row in ROWS.items()
                         if not (row_dir(args.root, row, args.seed) / "metrics" / f"{row.kind}.json").is_file()]
    try:
        for name in names:
            run_row(ROWS[name], args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench_ablation: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
