"""Which whole-photo size to validate and evaluate at: the same model files scored at several input sizes.

A network trained on crops sees defocus at the scale of its training crops; squashing the whole photo to a
size it was not trained at changes what it sees. For each model file (--model LABEL=PATH, repeatable) and each
--sizes entry, the evaluator scores the --split of the prepared dataset (the real-data run's
runs/real/data/prepared) with the photo resized to that square for the network and the map scored at the
photo's own resolution, flip TTA as the CUHK profile evaluates. Reported: in-focus max-F, blurred-positive
max-F and MAE per model and size. Nothing is trained here.

Usage: python benchmarks/bench_input_size.py --model student=runs/real/models/student.pt
                                             [--model LABEL=PATH ...] [--sizes 320 384 448]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, add_common_args, finish, labelled_path, machine_info, markdown_table, set_threads

DEFAULT_DATA = ROOT / "runs/real/data/prepared"
METRICS = ("infocus_max_f", "max_f", "mae")


def score(label: str, path: Path, model: Any, data: Path, split: str, size: int,
          flip_tta: bool) -> dict[str, Any]:
    from dbdgan.evaluation.evaluate import evaluate_models

    with tempfile.TemporaryDirectory() as out:
        result = evaluate_models({"model": model}, data, split, Path(out), flip_tta=flip_tta, input_size=size)
    row = {"model": label, "file": str(path), "size": size, "n_images": result["model"]["n_images"]}
    return row | {key: result["model"][key] for key in METRICS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=labelled_path, action="append", required=True,
                        help="LABEL=PATH (relative to the repository root)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset (default: %(default)s)")
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 352, 384, 416, 448])
    parser.add_argument("--no-flip-tta", dest="flip_tta", action="store_false")
    add_common_args(parser, "input-size", timing=False)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    missing = [str(path) for _, path in args.model if not path.is_file()]
    if missing or not (args.data / "manifest.csv").is_file():
        print(f"missing: {', '.join(missing) or args.data / 'manifest.csv'}; run `make train-real` first",
              file=sys.stderr)
        return 2
    set_threads(args.threads)
    from dbdgan.inference import load_predictor

    rows = []
    for label, path in args.model:
        model = load_predictor(path).model
        for size in args.sizes:
            rows.append(score(label, path, model, args.data, args.split, size, args.flip_tta))
            print(f"{label} at {size}: " + ", ".join(f"{k} {rows[-1][k]:.4f}" for k in METRICS), flush=True)
    columns = [("model", "model", ""), ("size", "input size", "d"), ("infocus_max_f", "max-F (in focus +)", ".4f"),
               ("max_f", "max-F (blurred +)", ".4f"), ("mae", "MAE", ".4f")]
    files = "\n".join(f"- `{label}`: `{path}`" for label, path in args.model)
    intro = (f"{args.split} split of `{args.data}` ({rows[0]['n_images']} photos), maps scored at the photo's "
             f"resolution, flip TTA {'on' if args.flip_tta else 'off'}; the photo is resized to the input size "
             f"(square) for the network. Model files:\n{files}")
    report = {"machine": machine_info(), "split": args.split, "data": str(args.data), "flip_tta": args.flip_tta,
              "rows": rows}
    finish("input-size", report, [intro, markdown_table(columns, rows)], args.out_dir, timing=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
