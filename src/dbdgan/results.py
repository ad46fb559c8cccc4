"""What a run ends with on the terminal: the numbers that matter in one table, and where to look next.

Read from the files the pipeline wrote under a run folder (metrics/*.json, reports/registered.json), so
`dbdgan results` shows the same after `make run`, `make train-real` or a KFP run copied to disk.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from dbdgan import graph
from dbdgan.evaluation.extra import EXTRA_DIR
from dbdgan.evaluation.scores import DETAILS, read_scores
from dbdgan.redact import redact
from dbdgan.tracking import Tracking

ROWS = ("teacher", "student", "baseline_laplacian", "baseline_all_blurred")
_SPLITS = ("train", "val", "test")
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


def beside_sets(metrics_dir: Path) -> dict[str, int]:
    """The sets the evaluate step scored beside the main split (evaluate.extra_splits, --extra datasets) and
    their image counts: splits first."""
    data = _scores(metrics_dir, "student") or _scores(metrics_dir, "teacher") or {}
    found = {key: value["n_images"] for key, value in data.items()
             if isinstance(value, dict) and {"n_images", "mae"} <= set(value)}
    return dict(sorted(found.items(), key=lambda item: (item[0] not in _SPLITS, item[0])))


def beside_rows(metrics_dir: Path, label: str) -> list[tuple[str, ...]]:
    """One row per model scored on the set `label`: name, in-focus max-F, max-F, MAE."""
    rows = []
    for name in ROWS:
        data = (_scores(metrics_dir, name) or {}).get(label)
        if isinstance(data, dict):
            rows.append((name.replace("_", " "), *(_cell(data.get(key), ".3f") for key, _ in _COMPARED)))
    return rows


def table(rows: list[tuple[str, ...]], header: tuple[str, ...] = _HEADER) -> str:
    """A plain aligned text table (first column left, numbers right)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def _git(cwd: Path, *args: str) -> str | None:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def resolve_revision(root: Path, rev: str) -> str:
    """The commit of a git revision or of a DVC experiment's name (a ref under refs/exps); ValueError if none."""
    commit = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if commit:
        return commit
    refs = (_git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps") or "").splitlines()
    found = [line.split()[0] for line in refs if line.endswith(f"/{rev}")]
    if len(found) == 1:
        return found[0]
    what = "several experiments are" if found else "neither a git revision nor a DVC experiment is"
    raise ValueError(f"--compare {rev}: {what} named so here (see `git log`, `dvc exp show`)")


def scores_at(root: Path, commit: str, name: str) -> dict[str, Any] | None:
    """One model's committed scores (headline and details files) at `commit`; None where it had none."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None:
        raise ValueError(f"--compare needs a git repository; {root} is not in one")
    metrics = (root / graph.ARTIFACTS["scores"].path).resolve().relative_to(Path(top).resolve())
    merged: dict[str, Any] = {}
    for rel in (metrics / f"{name}.json", metrics / DETAILS / f"{name}.json"):
        text = _git(root, "show", f"{commit}:{rel.as_posix()}")
        if text is None:
            if not merged:
                return None
            continue
        merged.update(json.loads(text))
    return merged


_COMPARED = (("infocus_max_f", "in-focus max-F"), ("max_f", "blurred max-F"), ("mae", "MAE"))


def compare_text(root: Path, rev: str) -> str:
    """This run's accuracy beside a commit's or a DVC experiment's, model by model, with the change."""
    root = Path(root)
    commit = resolve_revision(root, rev)
    metrics_dir = root / graph.ARTIFACTS["scores"].path
    header = ("model", *(cell for _, title in _COMPARED for cell in (f"{title}: now", "then", "change")))
    rows = []
    for name in ROWS:
        now, then = _scores(metrics_dir, name) or {}, scores_at(root, commit, name) or {}
        if not now and not then:
            continue
        cells = [name.replace("_", " ")]
        for key, _ in _COMPARED:
            a, b = now.get(key), then.get(key)
            change = a - b if isinstance(a, int | float) and isinstance(b, int | float) else None
            cells += [_cell(a, ".3f"), _cell(b, ".3f"), _cell(change, "+.3f")]
        rows.append(tuple(cells))
    if not rows:
        return f"Compared with {rev} ({commit[:10]}): no metrics in either"
    return "\n".join([f"Now ({metrics_dir}) and then ({rev}, commit {commit[:10]}):",
                      *("  " + text for text in table(rows, header).splitlines())])


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
    for label, images in beside_sets(metrics_dir).items():
        files = metrics_dir / EXTRA_DIR / label
        what = f"the {label} split" if label in _SPLITS else f"dataset {label}, scored whole, plots in {files}"
        lines.append(f"  Beside it, {what} ({images} images):")
        lines += ["    " + text for text in table(beside_rows(metrics_dir, label),
                                                   ("model", *(title for _, title in _COMPARED))).splitlines()]
    lines += ["  (in-focus max-F: F-beta with the in-focus pixels as positives; latency: CPU, batch 1, at "
              "evaluate.efficiency_size)" if rows else "",
              f"  plots:      {plots / 'curves.png'} (PR, F vs threshold), {plots / 'grid.png'} (maps: white = "
              "blurred); all runs: dvc plots show",
              f"  metrics:    {metrics_dir}/<model>.json, details/, efficiency/ (timings)  (dvc metrics show; "
              "dvc metrics diff; dbdgan results --compare REV|EXP)",
              "  models:     " + ", ".join(str(root / graph.ARTIFACTS[n].path) for n in ("teacher", "student"))]
    registered = _read(root / graph.ARTIFACTS["registered"].path) or {}
    for role, entry in registered.items():
        gate = (entry.get("gate") or {}).get("result")
        lines.append(f"  registered: {role}: {entry.get('model_uri')} (alias challenger"
                     f"{f'; gate: {gate}' if gate else ''})")
    lines.append(f"  MLflow UI:  mlflow ui --backend-store-uri {redact(Tracking().resolved_uri)}, then open "
                 "http://127.0.0.1:5000")
    return "\n".join(line for line in lines if line)
