"""What a run ends with on the terminal: the numbers that matter in one table, and where to look next.

Read from the files the pipeline wrote under a run folder (metrics/*.json, reports/registered.json), so
`dbdgan results` shows the same after `make run`, `make train-real` or a KFP run copied to disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dbdgan import graph
from dbdgan.evaluation.scores import read_scores

ROWS = ("teacher", "student", "baseline_laplacian", "baseline_all_blurred")
_HEADER = ("model", "in-focus max-F", "blurred max-F", "MAE", "params (M)", "latency b1 (ms)")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _scores(metrics_dir: Path, name: str) -> dict[str, Any] | None:
    try:
        return read_scores(metrics_dir, name)
    except (OSError, ValueError):
        return None


def _cell(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def metrics_rows(metrics_dir: Path) -> list[tuple[str, ...]]:
    """One row per model whose metrics file exists: name, in-focus max-F, max-F, MAE, params, latency."""
    rows = []
    for name in ROWS:
        data = _scores(metrics_dir, name)
        if data is None:
            continue
        efficiency = data.get("efficiency") or {}
        params = efficiency.get("params")
        rows.append((name.replace("_", " "), _cell(data.get("infocus_max_f"), ".3f"), _cell(data.get("max_f"), ".3f"),
                     _cell(data.get("mae"), ".3f"), _cell(params / 1e6 if params else None, ".2f"),
                     _cell(efficiency.get("latency_ms_b1"), ".1f")))
    return rows


def table(rows: list[tuple[str, ...]]) -> str:
    """A plain aligned text table (first column left, numbers right)."""
    widths = [max(len(row[i]) for row in [_HEADER, *rows]) for i in range(len(_HEADER))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(_HEADER), "  ".join("-" * w for w in widths), *map(line, rows)])


def _title(metrics_dir: Path, params: Any) -> str:
    settings = _scores(metrics_dir, "student") or _scores(metrics_dir, "teacher") or {}
    split = (settings.get("settings") or {}).get("split", params.evaluate.split if params else "?")
    images = settings.get("n_images")
    where = f"{split} split" + (f", {images} images" if images else "")
    if params is None:
        return f"Results ({where}):"
    return f"Results ({params.model.teacher} -> {params.model.student} on {params.data.source} data, {where}):"


def results_text(root: Path, params: Any = None) -> str:
    """The table of teacher, student and both baselines, the plots, models and registered versions of a run."""
    root = Path(root)
    metrics_dir = root / graph.ARTIFACTS["scores"].path
    rows = metrics_rows(metrics_dir)
    plots = metrics_dir / "plots"
    lines = [_title(metrics_dir, params)]
    lines += ["  " + text for text in table(rows).splitlines()] if rows else [
        f"  no metrics in {metrics_dir} yet (run the evaluate step)"]
    lines += ["  (in-focus max-F: F-beta with the in-focus pixels as positives; latency: CPU, batch 1, at "
              "evaluate.efficiency_size)" if rows else "",
              f"  plots:      {plots / 'curves.png'} (PR, F vs threshold), {plots / 'grid.png'} (maps: white = "
              "blurred); all runs: dvc plots show",
              f"  metrics:    {metrics_dir}/<model>.json  (dvc metrics show; dvc metrics diff; dvc exp show)",
              "  models:     " + ", ".join(str(root / graph.ARTIFACTS[n].path) for n in ("teacher", "student"))]
    registered = _read(root / graph.ARTIFACTS["registered"].path) or {}
    for role, entry in registered.items():
        gate = (entry.get("gate") or {}).get("result")
        lines.append(f"  registered: {role}: {entry.get('model_uri')} (alias challenger"
                     f"{f'; gate: {gate}' if gate else ''})")
    lines.append("  MLflow UI:  mlflow ui --backend-store-uri <tracking URI>, then open http://127.0.0.1:5000")
    return "\n".join(line for line in lines if line)
