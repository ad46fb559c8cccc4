"""`dbdgan predict` and `dbdgan promote`: the commands people use on registered models.

`add_commands(add)` plugs them into the main parser; `add(name, handler, help)` is cli.py's helper, and a
handler takes (params, args) and returns a JSON-able result (or raises, which makes the exit code non-zero).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from dbdgan.config import Params

AddCommand = Callable[..., argparse.ArgumentParser]


def _input_size(text: str) -> int | str | None:
    if text == "native":
        return None
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size: integer, 'native' or 'auto', not {text!r}") from None
    if value < 16:
        raise argparse.ArgumentTypeError(f"--input-size must be >= 16, got {value}")
    return value


def _use_store(args: argparse.Namespace, params: Params) -> str:
    import mlflow

    from dbdgan.cli_common import tracking_from
    from dbdgan.store_check import require_store
    from dbdgan.tracking import bound_waits

    bound_waits(params.register.service_timeout_s)
    uri = tracking_from(args).resolved_uri
    require_store(uri)  # these commands read a registry: a missing one is an error, never created empty
    mlflow.set_tracking_uri(uri)
    return uri


def cmd_predict(params: Params, args: argparse.Namespace) -> Any:
    """Run; print the summary; raise PredictionFailed (exit 1) when any input failed."""
    # Decoding and writing run in threads beside the network: OpenMP threads that spin while idle (libgomp's
    # default) would hold the cores they need. Read when torch loads; a value the user set is kept.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from dbdgan.inference import is_model_uri, load_predictor
    from dbdgan.predict import PredictionFailed, predict_paths

    if is_model_uri(args.model):
        _use_store(args, params)
    loaded = load_predictor(args.model)
    summary = predict_paths(args.paths, loaded, args.out, batch_size=args.batch_size,
                            max_pixels=args.max_pixels or params.data.max_pixels, input_size=args.input_size,
                            progress=not args.no_progress, backend=args.backend, overlays=not args.no_overlay,
                            workers=args.workers)
    if summary["failed"]:
        if args.json:  # without it the error's one line says what failed
            print(json.dumps(summary, indent=2, default=str))
            sys.stdout.flush()
        raise PredictionFailed(summary)
    return summary


def predict_line(summary: dict[str, Any]) -> str:
    """What `dbdgan predict` prints without --json."""
    kinds = "blur maps and overlays" if any("overlay" in entry for entry in summary["outputs"]) else "blur maps"
    ignored = f", {len(summary['ignored'])} files ignored" if summary.get("ignored") else ""
    return (f"wrote {kinds} of {summary['written']} of {summary['inputs']} inputs to {summary['out_dir']} in "
            f"{summary['timings']['wall_s']:.1f} s ({summary['model']}, input size {summary['input_size']}, "
            f"{summary['backend']}){ignored}")


def promote_line(record: dict[str, Any]) -> str:
    """What `dbdgan promote` prints without --json."""
    before = record.get("champion_before")
    text = (f"{record.get('name', 'model')} version {record['version']} is champion ({record['action']}; before: "
            f"{'version ' + str(before) if before is not None else 'none'})")
    if record.get("forced"):
        failed = "; ".join(c["detail"] for c in record.get("checks", []) if not c.get("passed"))
        text += f"; forced past the gate: {failed}"
    return text


def cmd_promote(params: Params, args: argparse.Namespace) -> Any:
    from dbdgan.aliases import promote, rollback
    from dbdgan.gate import gate_params

    _use_store(args, params)
    name = args.model
    if args.rollback:
        return {"name": name, **rollback(name, reason=args.reason or "rollback", user=args.user)}
    if args.version is None:
        raise ValueError("promote needs --version N (or --rollback)")
    return {"name": name, **promote(name, args.version, reason=args.reason or "", user=args.user,
                                    gate=gate_params(params.register), force=args.force)}


def add_commands(add: AddCommand) -> None:
    from dbdgan.cli_common import add_tracking_args
    from dbdgan.tracking import ModelNames

    p = add("predict", cmd_predict, "blur maps (and overlays) for photos, files or folders, with a model")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--model", default=f"models:/{ModelNames.student}@champion",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a local .pt file "
                        "(default: %(default)s)")
    add_tracking_args(p, experiment=False)
    p.add_argument("-o", "--out", required=True, help="output folder (<stem>_blur.png, <stem>_overlay.jpg)")
    p.add_argument("--batch-size", type=int, default=8, help="same-size network inputs per batch (default 8)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",  # inference.BACKENDS, without torch
                   help="torch, or onnx: the model exported (and checked against PyTorch) and run by onnxruntime, "
                        "often faster on a CPU (default: %(default)s)")
    p.add_argument("--no-overlay", action="store_true", help="write only the blur maps, not the tinted photos")
    p.add_argument("--workers", type=int, default=2,
                   help="threads decoding photos and writing maps while the network runs (default 2)")
    p.add_argument("--max-pixels", type=int, help="skip larger images (default: data.max_pixels)")
    p.add_argument("--input-size", type=_input_size, default="auto",
                   help="network input size: an integer, 'native', or 'auto' (default: the size stored "
                        "with the model: the size it was validated at in training)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print every output and timing as JSON, not one line")
    p.set_defaults(summary_line=predict_line)

    p = add("promote", cmd_promote, "make a registered version champion by hand, or roll back")
    p.add_argument("--model", default=ModelNames.student, help="registered model name (default: %(default)s)")
    add_tracking_args(p, experiment=False)
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--version", type=int, help="version to promote")
    action.add_argument("--rollback", action="store_true", help="restore the previous champion")
    p.add_argument("--reason", help="why (required with --version; recorded on the version)")
    p.add_argument("--user", help="who decides (default: $DBDGAN_USER or the login name)")
    p.add_argument("--force", action="store_true",
                   help="promote a version that fails the promotion gate (the verdict is recorded)")
    p.add_argument("--json", action="store_true", help="print the recorded decision as JSON, not one line")
    p.set_defaults(summary_line=promote_line)
