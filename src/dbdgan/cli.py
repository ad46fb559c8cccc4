"""`dbdgan <step>`: the command line that DVC stages, KFP components and people call."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbdgan import steps
from dbdgan.config import ConfigError, Params, load_params

Handler = Callable[[Params, argparse.Namespace], Any]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="append", default=None, metavar="FILE",
                        help="params file (default: params.yaml); repeat to overlay a profile on it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param by dotted key, e.g. --set train_teacher.epochs=2 (repeatable)")


def _cmd_prepare(params: Params, args: argparse.Namespace) -> Any:
    manifest = steps.prepare(params, out_dir=args.out)
    return {"manifest": str(manifest)}


def _cmd_validate(params: Params, args: argparse.Namespace) -> Any:
    report = steps.validate(params, data_dir=args.data, report_dir=args.report)
    return getattr(report, "summary", str(report))


def _cmd_train_teacher(params: Params, args: argparse.Namespace) -> Any:
    result = steps.train_teacher(params, data_dir=args.data, out_path=args.out, checkpoint_dir=args.checkpoint_dir)
    return {k: v for k, v in result.items() if k != "history"}


def _cmd_distill_student(params: Params, args: argparse.Namespace) -> Any:
    result = steps.distill_student(params, teacher_path=args.teacher, data_dir=args.data, out_path=args.out,
                                   checkpoint_dir=args.checkpoint_dir)
    return {k: v for k, v in result.items() if k != "history"}


def _parse_models(values: list[str]) -> dict[str, str] | None:
    if not values:
        return None
    models = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem, value
        models[name] = path
    return models


def _cmd_evaluate(params: Params, args: argparse.Namespace) -> Any:
    return steps.evaluate(params, models=_parse_models(args.model), data_dir=args.data, out_dir=args.out,
                          split=args.split, layout=args.layout, polarity=args.polarity)


def _cmd_register(params: Params, args: argparse.Namespace) -> Any:
    return steps.register(params, metrics_dir=args.metrics, out_path=args.out, data_dir=args.data)


def _cmd_model_info(params: Params, args: argparse.Namespace) -> Any:
    from dbdgan.models import create_model
    from dbdgan.models.info import model_info

    name = args.preset or (params.model.teacher if args.model == "teacher" else params.model.student)
    info = {"name": name, **model_info(create_model(name), size=args.size)}
    if args.json:
        return info
    print(f"{name}: {info['params'] / 1e6:.2f} M parameters, {info['gflops']:.2f} GFLOPs at {args.size}x{args.size}, "
          f"CPU latency {info['latency_ms_median']:.1f} ms (median, batch 1, {info['threads']} threads)")
    return None


def _cmd_results(params: Params, args: argparse.Namespace) -> Any:
    from dbdgan.tracking import tracking_uri

    metrics_dir = Path(params.evaluate.out_dir)
    registered = Path(params.register.out)
    lines = [f"Results ({params.model.teacher} -> {params.model.student} on {params.data.source} data, "
             f"{params.evaluate.split} split):",
             f"  metrics:      {metrics_dir}/teacher.json, {metrics_dir}/student.json  (dvc metrics show)",
             f"  plots:        {metrics_dir}/plots/curves.png, {metrics_dir}/plots/grid.png  (dvc plots show)",
             f"  models:       {params.train_teacher.out}, {params.distill_student.out}"]
    if registered.is_file():
        for role, entry in json.loads(registered.read_text()).items():
            gate = entry.get("gate", {}).get("result")
            verdict = f"; gate: {gate}" if gate else ""
            lines.append(f"  registered:   {role}: {entry['model_uri']} (alias challenger{verdict})")
    uri = tracking_uri(params.register)
    lines.append(f"  MLflow UI:    mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000")
    print("\n".join(lines))
    return None


def _cmd_export_onnx(params: Params, args: argparse.Namespace) -> Any:
    import torch

    from dbdgan.checkpoint import load_model_file
    from dbdgan.evaluation.onnx_export import check_onnx, export_onnx, quantize_onnx

    model = load_model_file(args.model)
    out = export_onnx(model, args.out, opset=args.opset)
    sample = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(params.seed))
    result: dict[str, Any] = {"onnx": str(out), **check_onnx(model, out, sample)}
    if args.int8:
        result["onnx_int8"] = str(quantize_onnx(out, Path(out).with_suffix(".int8.onnx")))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbdgan", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(handler=handler)
        return p

    p = add("prepare", _cmd_prepare, "make a prepared dataset folder (images, masks, manifest.csv)")
    p.add_argument("--source", choices=["synthetic", "cuhk", "dut", "szu", "folder"], help="data.source")
    p.add_argument("--input", help="raw dataset folder (data.input)")
    p.add_argument("--polarity", choices=["blurred-white", "sharp-white"], help="mask polarity of --input")
    p.add_argument("--out", help="output folder (default: data.prepared_dir)")

    p = add("validate", _cmd_validate, "run the Great Expectations suite on a prepared dataset")
    p.add_argument("--data", help="prepared folder (default: data.prepared_dir)")
    p.add_argument("--report", help="report folder (default: data.report_dir)")

    p = add("train-teacher", _cmd_train_teacher, "train the teacher adversarially against D1")
    p.add_argument("--data")
    p.add_argument("--out", help="model file (default: train_teacher.out)")
    p.add_argument("--checkpoint-dir")

    p = add("distill-student", _cmd_distill_student, "distil the student from the frozen teacher")
    p.add_argument("--teacher", help="teacher model file (default: train_teacher.out)")
    p.add_argument("--data")
    p.add_argument("--out", help="model file (default: distill_student.out)")
    p.add_argument("--checkpoint-dir")

    p = add("evaluate", _cmd_evaluate, "score model files on a prepared split; write metrics, plots, grid")
    p.add_argument("--data", help="prepared folder (default: data.prepared_dir)")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]FILE_OR_URI",
                   help="model file or MLflow URI such as models:/dbd-student@champion (repeatable; "
                        "default: teacher and student of params)")
    p.add_argument("--split", choices=["train", "val", "test"])
    p.add_argument("--layout", choices=["cuhk", "dut", "szu", "folder"],
                   help="--data is a raw dataset of this layout (all of it is scored), not a prepared folder")
    p.add_argument("--polarity", choices=["blurred-white", "sharp-white"], help="mask polarity of a raw folder")
    p.add_argument("--out", help="output folder (default: evaluate.out_dir)")

    p = add("register", _cmd_register, "register teacher and student in the MLflow registry")
    p.add_argument("--metrics", help="metrics folder (default: evaluate.out_dir)")
    p.add_argument("--data", help="prepared folder whose manifest the versions are tagged with")
    p.add_argument("--out", help="summary JSON (default: register.out)")

    p = add("export-onnx", _cmd_export_onnx, "export a model file to ONNX (dynamic H/W), checked against PyTorch")
    p.add_argument("--model", required=True, help="dbdgan model file (.pt)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--size", type=int, default=320, help="sample size for the PyTorch/onnxruntime comparison")
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantised int8 model")

    from dbdgan.cli_models import add_commands

    add_commands(add)

    sub.add_parser("pipeline", help="Kubeflow pipeline: compile | run-local | submit (see `dbdgan pipeline -h`)",
                   add_help=False)

    add("results", _cmd_results, "say where the pipeline's metrics, plots and registered models are")

    p = add("model-info", _cmd_model_info, "parameters, FLOPs and CPU latency of a model preset")
    p.add_argument("--model", choices=["teacher", "student"], default="student")
    p.add_argument("--preset", help="registry name, e.g. teacher_paper, efficientunet_b3, mobile")
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--json", action="store_true", help="print JSON only")
    return parser


def _prepare_overrides(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if args.command == "prepare":
        for key, value in (("source", args.source), ("input", args.input), ("polarity", args.polarity)):
            if value is not None:
                overrides.append(f"data.{key}={value}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pipeline"]:
        from pipelines.cli import main as pipeline_main  # the KFP adapter; the library itself never imports kfp

        return pipeline_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "git", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        params = load_params(args.params or ["params.yaml"], _prepare_overrides(args))
        result = args.handler(params, args)
    except ConfigError as exc:
        print(f"dbdgan {args.command}: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"dbdgan {args.command}: error: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
