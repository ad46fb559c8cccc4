"""Where a model's scores are written: three files, so that what git and DVC compare stays readable and equal.

- `metrics/<name>.json`: the headline accuracy numbers, the DVC metrics (`dvc metrics show` fits 120 columns);
- `metrics/details/<name>.json`: every other accuracy number and the evaluation settings (committed, compared
  by plain diffs: a repro of a commit reproduces them);
- `metrics/efficiency/<name>.json`: size, timings and ONNX parity, which vary with the machine and its load, and
  with the thread and allocator policy they record; git-ignored and no DVC output, so a rerun dirties nothing.

`read_scores` puts the three back together, so the registry, the gate and `dbdgan results` see one dict (a
single file holding everything, as older runs wrote it, reads the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dbdgan.io_utils import atomic_write_json

HEADLINE = ("infocus_max_f", "infocus_adaptive_f", "max_f", "adaptive_f", "mae")
MACHINE_KEYS = ("efficiency", "onnx")  # measured, not scored
DETAILS, EFFICIENCY = "details", "efficiency"


def write_scores(out_dir: Path, name: str, result: dict[str, Any]) -> None:
    """Split one model's result over the three files (each written atomically)."""
    out_dir = Path(out_dir)
    headline = {key: result[key] for key in HEADLINE if key in result}
    machine = {key: result[key] for key in MACHINE_KEYS if key in result}
    details = {key: value for key, value in result.items() if key not in headline and key not in machine}
    atomic_write_json(out_dir / f"{name}.json", headline)
    atomic_write_json(out_dir / DETAILS / f"{name}.json", details)
    if machine:
        atomic_write_json(out_dir / EFFICIENCY / f"{name}.json", machine)


def score_files(metrics_dir: Path, name: str) -> list[Path]:
    """The files of one model's scores that exist (headline, details, efficiency)."""
    metrics_dir = Path(metrics_dir)
    paths = [metrics_dir / f"{name}.json", metrics_dir / DETAILS / f"{name}.json",
             metrics_dir / EFFICIENCY / f"{name}.json"]
    return [path for path in paths if path.is_file()]


def read_scores(metrics_dir: Path, name: str) -> dict[str, Any] | None:
    """One model's scores as one dict; None without its headline file. Invalid JSON raises ValueError."""
    files = score_files(metrics_dir, name)
    if not files or files[0] != Path(metrics_dir) / f"{name}.json":
        return None
    merged: dict[str, Any] = {}
    for path in files:
        try:
            merged.update(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"metrics file {path} is not valid JSON: {exc}") from exc
    return merged
