"""`dbdgan <step>`: the command line that DVC stages, KFP components and people call.

The step commands are made from the step table (dbdgan.graph.STEPS): each input artifact is an option
(`--data`, `--teacher`, ...), the output is `--out`, the step's other options are its row's, and every default
lies under `--root` (default `.`: today's data/prepared, models/teacher.pt, ...). Each prints one line (its
row's summary); `--json` prints the details, `-v` logs more. The whole table runs as a DVC pipeline: `dvc repro`
here, or `dbdgan steps --dvc --root DIR` and `dvc repro` in DIR for a run folder (what `make train-real` does).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbdgan import __version__, graph, lineage, steps
from dbdgan.cli_common import add_tracking_args, tracking_from
from dbdgan.config import ConfigError, Params, load_params, params_from_dict
from dbdgan.failures import report
from dbdgan.redact import RedactingFormatter, redact
from dbdgan.tracking import ModelNames

Handler = Callable[[Params, argparse.Namespace], Any]
PLUGIN_GROUP = "dbdgan.commands"  # entry points adding top-level commands (the KFP adapter adds `pipeline`)
# Commands that work on a model alone, anywhere: without a params.yaml in the working folder they use the
# defaults of the schema (and `results` the snapshot its run folder holds).
NO_PARAMS_FILE_NEEDED = ("predict", "model-info", "export-onnx", "results")


def _common(parser: argparse.ArgumentParser) -> None:
    # also after the command (`dbdgan prepare -v`); SUPPRESS keeps a `dbdgan -v prepare` from being reset
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging, and a traceback with an error")
    parser.add_argument("--params", action="append", default=None, metavar="FILE",
                        help="params file (default: params.yaml); repeat to overlay a profile on it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param by dotted key, e.g. --set train_teacher.epochs=2 (repeatable)")


def _add_name_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher-name", default=ModelNames.teacher, help="registered teacher (default: %(default)s)")
    parser.add_argument("--student-name", default=ModelNames.student, help="registered student (default: %(default)s)")


def _path(args: argparse.Namespace, dest: str, default: str) -> Path:
    value = getattr(args, dest, None)
    return Path(value) if value else Path(args.root) / default


def step_arguments(one: graph.Step, args: argparse.Namespace) -> dict[str, Any]:
    """The arguments the step declares (graph.Step.arguments) from the flags: paths default to ROOT/<artifact
    path>; an option not given is left out (the step function's default)."""
    given = {name: _path(args, name, graph.ARTIFACTS[name].path) for name in one.inputs}
    given["out"] = _path(args, "out", graph.ARTIFACTS[one.output].path)
    given.update({arg: _path(args, arg, default) for arg, default in one.scratch})
    if one.tracked:
        given["tracking"] = tracking_from(args)
    if one.registers:
        given["names"] = ModelNames(teacher=getattr(args, "teacher_name", ModelNames.teacher),
                                    student=getattr(args, "student_name", ModelNames.student))
    for option in one.options:
        value = getattr(args, option.dest, None)
        if option.argument and value:
            given[option.argument] = _parse_models(value) if option.kind == "models" else value
    if given.get("models"):  # `evaluate --model ...` scores those; teacher and student only when named too
        for role in ("teacher", "student"):
            if role in given and not getattr(args, role, None):
                del given[role]
    return given


def _step_handler(one: graph.Step) -> Handler:
    def handler(params: Params, args: argparse.Namespace) -> Any:
        return one.brief(steps.call(one, params, **step_arguments(one, args)))

    return handler


def _parse_models(values: list[str]) -> dict[str, str] | None:
    models = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem, value
        models[name] = path
    return models or None


def _extra_arg(text: str) -> Any:
    """One --extra value as an ExtraDataset; a malformed one is argparse's usage error with our reason."""
    from dbdgan.evaluation.extra import parse_extra

    try:
        return parse_extra(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _add_option(p: argparse.ArgumentParser, option: graph.Option) -> None:
    """One option of a step's row (graph.Option), read as its kind says."""
    from dbdgan.evaluation.extra import SYNTAX

    kinds: dict[str, dict[str, Any]] = {
        "text": {}, "path": {"type": _optional_path},
        "models": {"action": "append", "default": [], "metavar": "[NAME=]FILE_OR_URI"},
        "extra": {"action": "append", "default": [], "type": _extra_arg, "metavar": SYNTAX}}
    if option.kind not in kinds:
        raise ValueError(f"option {option.flag}: unknown kind {option.kind!r}; kinds: {', '.join(kinds)}")
    p.add_argument(option.flag, dest=option.dest, help=option.help or None,
                   **({"choices": list(option.choices)} if option.choices else {}), **kinds[option.kind])


def _add_step(add: Callable[..., argparse.ArgumentParser], one: graph.Step) -> None:
    doc = (getattr(steps, one.name).__doc__ or one.name).strip().splitlines()[0]
    p = add(one.command, _step_handler(one), doc)
    p.add_argument("--root", default=".", help="folder the default paths below lie in (default: .)")
    for name in one.inputs:
        artifact = graph.ARTIFACTS[name]
        p.add_argument(artifact.flag, dest=name, help=f"{name} (default: ROOT/{artifact.path})")
    p.add_argument("--out", help=f"{one.output} to write (default: ROOT/{graph.ARTIFACTS[one.output].path})")
    for arg, default in one.scratch:
        p.add_argument(f"--{arg}", help=f"working files, resumable (default: ROOT/{default})")
    if one.tracked:
        add_tracking_args(p)
    if one.registers:
        _add_name_args(p)
    for option in one.options:
        _add_option(p, option)
    p.add_argument("--json", action="store_true", help="print the details as JSON, not one line")
    p.set_defaults(summary_line=one.summary, param_options=tuple(o for o in one.options if o.param))


def _print_results(params: Params | None, root: Path) -> None:
    from dbdgan.results import results_text

    print(results_text(root, params), flush=True)


def _cmd_results(params: Params, args: argparse.Namespace) -> Any:
    """The table of a run; its params are the --params given, else the snapshot in its folder, else none."""
    root = Path(args.root)
    if not args.params and (root / "params.yaml").is_file():
        params = load_params([root / "params.yaml"])
    elif not args.params and not Path("params.yaml").is_file():
        params = None
    _print_results(params, root)
    if args.compare:
        from dbdgan.results import compare_text

        print(compare_text(root, args.compare), flush=True)
    return None


def _cmd_steps(params: Params, args: argparse.Namespace) -> Any:
    if args.extra and not (args.dvc and args.root):
        raise ValueError("steps --extra is for a run folder's pipeline: give it with --dvc --root DIR")
    if args.dvc and args.root:
        from dbdgan.run_folder import write_run_pipeline

        names = ModelNames(teacher=args.teacher_name, student=args.student_name)
        path = write_run_pipeline(Path(args.root), params, raw=args.raw, tracking_uri=args.tracking_uri,
                                  experiment=args.experiment, names=names, until=args.until,
                                  init_from=Path(args.init_from) if args.init_from else None, extra=args.extra)
        print(f"wrote {path} (+ params.yaml, inputs.yaml); reproduce with: cd {args.root} && dvc repro")
        return None
    if args.dvc:
        from dbdgan.dvc_pipeline import dvc_file, dvc_yaml_text

        print(dvc_yaml_text(dvc_file()), end="")
        return None
    return [{"step": s.name, "command": f"dbdgan {s.command}", "inputs": list(s.inputs), "output": s.output,
             "after": list(s.after)} for s in graph.STEPS]


def _load_predictor(params: Params, args: argparse.Namespace, source: str) -> Any:
    """A network and its input size from a model file or an MLflow URI (models:/NAME@ALIAS, runs:/...),
    weights only."""
    from dbdgan.inference import is_model_uri, load_predictor
    from dbdgan.tracking import bound_waits

    uri = None
    if is_model_uri(source):
        bound_waits(params.register.service_timeout_s)
        uri = tracking_from(args).resolved_uri
    return load_predictor(source, uri)


def _load_model(params: Params, args: argparse.Namespace, source: str) -> Any:
    return _load_predictor(params, args, source).model


MODEL_INFO_BUDGET_S = 30.0  # warm-up and timing each stop after this long: paper-sized models stay quick to inspect


def _cmd_model_info(params: Params, args: argparse.Namespace) -> Any:
    """The cost the evaluate step reports (inference.model_cost, with evaluate.efficiency_size/_runs)."""
    from dbdgan.inference import model_cost
    from dbdgan.models import create_model

    if args.preset:
        name, model = args.preset, create_model(args.preset)
    elif args.model in ("teacher", "student"):
        name = params.model.teacher if args.model == "teacher" else params.model.student
        model = create_model(name)
    else:
        name, model = args.model, _load_model(params, args, args.model)
    size = args.size or params.evaluate.efficiency_size
    info = {"name": name, **model_cost(model, size, runs=params.evaluate.efficiency_runs,
                                       budget_s=MODEL_INFO_BUDGET_S)}
    if args.json:
        return info
    print(f"{name}: {info['params'] / 1e6:.2f} M parameters, {info['gflops']:.2f} GFLOPs at {size}x{size}, "
          f"CPU latency {info['latency_ms_b1']:.1f} ms (median, batch 1, {info['torch_threads']} threads, "
          f"OMP_WAIT_POLICY {info['omp_wait_policy']}, {info['allocator']})")
    return None


def _cmd_export_onnx(params: Params, args: argparse.Namespace) -> Any:
    """The float ONNX file at --out; with --int8 PHOTOS, the static int8 one there instead (the float one it was
    quantised from in a scratch folder), with how far its maps are from the float model's on those photos."""
    import tempfile

    import torch

    from dbdgan.inference import calibration_from_files
    from dbdgan.inference_onnx import CALIBRATION_IMAGES, check_onnx, export_onnx, int8_agreement, quantize_onnx
    from dbdgan.predict import image_files

    calibration_photos: list[Path] = []
    if args.int8 is not None:  # before the export, so that a bad folder fails fast and writes nothing
        calibration_photos = image_files([args.int8])[0]
        if not calibration_photos:
            raise ValueError(f"--int8 {args.int8}: not a folder or file of photos to calibrate on")
        if len(calibration_photos) < CALIBRATION_IMAGES:
            logging.getLogger(__name__).warning(
                "--int8 %s: %d photos, fewer than the %d the calibration uses; the int8 activation ranges may not "
                "cover the photos the model will see", args.int8, len(calibration_photos), CALIBRATION_IMAGES)
    loaded = _load_predictor(params, args, args.model)
    model = loaded.model
    sample = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(params.seed))
    if not calibration_photos:
        out = export_onnx(model, args.out, opset=args.opset)
        return {"onnx": str(out), **check_onnx(model, out, sample)}
    with tempfile.TemporaryDirectory(prefix="dbdgan-onnx-") as tmp:
        float_path = export_onnx(model, Path(tmp) / "float.onnx", opset=args.opset)
        parity = check_onnx(model, float_path, sample)
        calibration = calibration_from_files(calibration_photos, loaded.input_size)
        out = quantize_onnx(float_path, args.out, calibration)
        agreement = int8_agreement(float_path, out, calibration)
    return {"onnx_int8": str(out), "int8_calibration_images": len(calibration),
            "int8_vs_float_on_calibration_photos": agreement, "float_parity": parity}


def _export_line(result: dict[str, Any]) -> str:
    """What `dbdgan export-onnx` prints without --json."""
    from dbdgan import runtime_policy

    if "onnx_int8" in result:
        agree = result["int8_vs_float_on_calibration_photos"]
        return (f"wrote {result['onnx_int8']} (static int8, calibrated on {result['int8_calibration_images']} photos); "
                f"against the float model on them: map MAE {agree['map_mae']:.4f}, "
                f"{agree['agreement_at_0_5']:.1%} of pixels on the same side of 0.5")
    return (f"wrote {result['onnx']}: logits within {result['max_abs_diff']:.2g} of PyTorch; onnxruntime "
            f"{result['ort_latency_ms']:.1f} ms, PyTorch {result['torch_latency_ms']:.1f} ms per image "
            f"(OMP_WAIT_POLICY {runtime_policy.omp_wait_policy()}, {runtime_policy.allocator()})")


class _Version(argparse.Action):
    """`--version`: the version and where the code came from (asks git only when called)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog} {__version__}, {lineage.current().describe()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbdgan", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version, help="the version and the commit (and image) of this code")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(handler=handler)
        return p

    for one in graph.STEPS:
        _add_step(add, one)

    p = add("export-onnx", _cmd_export_onnx, "export a model to ONNX (dynamic H/W), checked against PyTorch")
    p.add_argument("--model", required=True,
                   help="dbdgan model file (.pt) or MLflow URI, e.g. models:/dbd-student@champion")
    add_tracking_args(p, experiment=False)
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--size", type=int, default=320, help="sample size for the PyTorch/onnxruntime comparison")
    p.add_argument("--int8", type=Path, metavar="PHOTOS",
                   help="write a static int8 model to --out instead of the float one, calibrated on the first 32 "
                        "photos of this folder (photos like the model's training data), and report how far its "
                        "maps are from the float model's on them")
    p.add_argument("--json", action="store_true", help="print the checks and timings as JSON, not one line")
    p.set_defaults(summary_line=_export_line)

    from dbdgan.cli_models import add_commands

    add_commands(add)

    for plugin in _plugins():
        sub.add_parser(plugin, help=f"{plugin} commands (see `dbdgan {plugin} -h`)", add_help=False)

    p = add("results", _cmd_results, "a run's numbers (teacher, student, baselines) and where its plots are")
    p.add_argument("--root", default=".", help="run folder (default: .)")
    p.add_argument("--compare", metavar="REV|EXP",
                   help="also set the accuracy beside a git revision's or a DVC experiment's (committed metrics)")

    p = add("steps", _cmd_steps, "the pipeline's steps with their inputs and outputs")
    p.add_argument("--dvc", action="store_true",
                   help="print the dvc.yaml they imply (`dbdgan steps --dvc > dvc.yaml`); with --root, write a "
                        "run folder's dvc.yaml, params.yaml (the merged --params and --set) and inputs.yaml")
    p.add_argument("--root", help="run folder to write the DVC pipeline into (with --dvc)")
    _add_option(p, graph.RAW)
    p.add_argument("--until", choices=[s.name for s in graph.STEPS], help="last step (default: all)")
    p.add_argument("--init-from", help="run folder whose teacher and student the trainings start from")
    _add_option(p, graph.EXTRA)
    add_tracking_args(p)
    _add_name_args(p)

    p = add("model-info", _cmd_model_info, "parameters, FLOPs and CPU latency of a model")
    p.add_argument("--model", default="student", metavar="teacher|student|FILE|URI",
                   help="the params' teacher or student preset, a model file or an MLflow URI (default: %(default)s)")
    add_tracking_args(p, experiment=False)
    p.add_argument("--preset", help="registry name, e.g. teacher_paper, efficientunet_b3, mobile")
    p.add_argument("--size", type=int, help="input side in pixels (default: evaluate.efficiency_size, 320)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    return parser


def _plugins() -> dict[str, Any]:
    """Commands other installed packages add (entry point group dbdgan.commands), loaded only when called."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}


def _overrides(args: argparse.Namespace) -> list[str]:
    """--set, then what the step's options that set a params key were given (`prepare --source cuhk`)."""
    overrides = list(args.overrides)
    for option in getattr(args, "param_options", ()):
        value = getattr(args, option.dest, None)
        if value is not None:
            overrides.append(f"{option.param}={value}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    plugins = _plugins()
    if argv[:1] and argv[0] in plugins:
        return plugins[argv[0]].load()(argv[1:])
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    for noisy in ("great_expectations", "git", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    # a retry of an unreachable server is a warning per attempt; the failure itself is the command's one line
    logging.getLogger("urllib3.connectionpool").setLevel(logging.DEBUG if args.verbose else logging.ERROR)
    try:
        if args.params is None and args.command in NO_PARAMS_FILE_NEEDED and not Path("params.yaml").is_file():
            params = params_from_dict({}, _overrides(args), source="the defaults")
        else:
            params = load_params(args.params or ["params.yaml"], _overrides(args))
        result = args.handler(params, args)
    except ConfigError as exc:
        print(f"dbdgan {args.command}: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dbdgan {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure is one line (and a traceback with -v)
        return report(f"dbdgan {args.command}", exc, args.verbose)
    if result is not None:
        line = getattr(args, "summary_line", None)  # commands with a one-line summary; --json: every detail
        print(redact(line(result) if line and not getattr(args, "json", False)
                     else json.dumps(result, indent=2, default=str)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
