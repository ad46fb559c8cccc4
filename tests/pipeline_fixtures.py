"""Tiny-config helpers shared by the training and pipeline tests (imported by name, not a conftest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dbdgan import graph, steps
from dbdgan.config import Params, load_params
from dbdgan.tracking import Tracking

REPO = Path(__file__).resolve().parents[1]
# The one tiny config of the suite (and of benchmarks/bench_pipeline.py): params.yaml overlaid by this profile
TINY_PROFILE = REPO / "profiles" / "tiny.yaml"
TINY_FILES = [REPO / "params.yaml", TINY_PROFILE]


def _dotted(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """A params overlay as `--set` overrides (key.sub=value), in the file's order."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _dotted(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


# profiles/tiny.yaml as overrides, for the command lines that take `--set` only (kfp_fixtures.TINY)
TINY_OVERRIDES = _dotted(yaml.safe_load(TINY_PROFILE.read_text()))


def merged_tree(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` merged into `base` key by key (as load_params merges its files), the base's order kept."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged_tree(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def tiny_tree() -> dict[str, Any]:
    """params.yaml with profiles/tiny.yaml merged in, shaped as params.yaml: a temporary repo's params.yaml."""
    return merged_tree(yaml.safe_load((REPO / "params.yaml").read_text()),
                       yaml.safe_load(TINY_PROFILE.read_text()))


def tiny_params(extra: list[str] | None = None) -> Params:
    """params.yaml + profiles/tiny.yaml (+ `extra` overrides): a whole pipeline runs in well under a minute."""
    return load_params(TINY_FILES, list(extra or []))


def tiny_tracking(root: Path, experiment: str = "dbdgan") -> Tracking:
    """A sqlite MLflow store with its artifacts under `root`."""
    return Tracking(uri=f"sqlite:///{root}/mlflow/mlflow.db", experiment=experiment,
                    artifact_location=str(root / "mlflow" / "artifacts"))


def artifact(root: Path, name: str) -> Path:
    """Where the CLI would put artifact `name` for `--root root`."""
    return root / graph.ARTIFACTS[name].path


def run_step(root: Path, name: str, params: Params, **given: Any) -> Any:
    """Step `name` with every path under `root` (as `dbdgan <step> --root root`), `given` ones replacing them."""
    one = graph.step(name)
    paths: dict[str, Any] = {inp: artifact(root, inp) for inp in one.inputs}
    paths.update({"out": artifact(root, one.output), "tracking": tiny_tracking(root)})
    paths.update({arg: root / default for arg, default in one.scratch})
    return steps.call(one, params, **{**paths, **given})
