"""The promotion gate as a pure policy: from a challenger's and a champion's version tags to a verdict.

No registry calls here (dbdgan.aliases runs the gate under the registry lock and moves the aliases), so
the policy is testable on plain dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from dbdgan.config import GateParams

METRIC_PREFIX = "metric."
MANIFEST_TAG = "dataset_manifest_sha256"
PROTOCOL_TAG = "eval_protocol"
MAX_F, MAE = "max_f", "mae"
PARAMS, LATENCY = "efficiency.params", "efficiency.latency_ms_b1"
COMPARED = (MAX_F, MAE, PARAMS, LATENCY)


def gate_params(register: Any) -> GateParams:
    """`register.gate` when the schema has it (a model or a mapping), the defaults otherwise."""
    raw = getattr(register, "gate", None)
    if raw is None:
        return GateParams()
    if isinstance(raw, GateParams):
        return raw
    data = raw.model_dump() if isinstance(raw, BaseModel) else dict(raw)
    try:
        return GateParams.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid register.gate params: {exc}") from None



@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class GateResult:
    passed: bool
    mode: str  # "compare" against a champion, or "floors" when there is none
    checks: list[Check]

    @property
    def failures(self) -> list[str]:
        return [c.detail for c in self.checks if not c.passed]


def tag_metrics(tags: dict[str, str]) -> dict[str, float]:
    """The compared metrics from a version's `metric.*` tags; absent or unparsable ones are left out."""
    metrics = {}
    for key in COMPARED:
        try:
            metrics[key] = float(tags[METRIC_PREFIX + key])
        except (KeyError, ValueError):
            continue
    return metrics


def _budget_checks(metrics: dict[str, float], gate: GateParams) -> list[Check]:
    checks = []
    for key, limit, unit in ((PARAMS, gate.max_params, " parameters"), (LATENCY, gate.max_latency_ms, " ms")):
        if limit is None:
            continue
        if key not in metrics:
            checks.append(Check(key, False, f"{key} is not recorded: budget {limit:g}{unit} unmet"))
        else:
            ok = metrics[key] <= limit
            sign = "<=" if ok else ">"
            checks.append(Check(key, ok, f"{key} {metrics[key]:g}{unit} {sign} budget {limit:g}"))
    return checks


def evaluate_gate(challenger_tags: dict[str, str], champion_tags: dict[str, str] | None,
                  gate: GateParams) -> GateResult:
    """Pure decision from version tags: comparisons (same evaluation set only) or floors, plus the budget."""
    ours = tag_metrics(challenger_tags)
    checks: list[Check] = []
    missing = [k for k in (MAX_F, MAE) if k not in ours]
    if missing:
        checks.append(Check("metrics", False, f"challenger has no {', '.join(missing)} metric tags"))
    if champion_tags is None:
        mode = "floors"
        if not missing:
            ok = ours[MAX_F] >= gate.min_max_f
            sign = ">=" if ok else "<"
            checks.append(Check(MAX_F, ok, f"max_f {ours[MAX_F]:.4f} {sign} floor {gate.min_max_f:g}"))
            ok = ours[MAE] <= gate.max_mae
            sign = "<=" if ok else ">"
            checks.append(Check(MAE, ok, f"mae {ours[MAE]:.4f} {sign} ceiling {gate.max_mae:g}"))
    else:
        mode = "compare"
        theirs = tag_metrics(champion_tags)
        for tag in (MANIFEST_TAG, PROTOCOL_TAG):
            a, b = challenger_tags.get(tag), champion_tags.get(tag)
            ok = a is not None and a == b
            detail = (f"same {tag}" if ok else
                      f"different evaluation set: {tag} {a or 'unrecorded'} vs the champion's "
                      f"{b or 'unrecorded'}; the metrics are not comparable (promote by hand after checking)")
            checks.append(Check(tag, ok, detail))
        gone = [k for k in (MAX_F, MAE) if k not in theirs]
        if gone:
            checks.append(Check("champion_metrics", False, f"champion has no {', '.join(gone)} metric tags"))
        if not missing and not gone:
            floor = theirs[MAX_F] - gate.max_f_margin
            ok = ours[MAX_F] >= floor
            verdict = "within" if ok else "below by more than"
            checks.append(Check(MAX_F, ok, f"max_f {ours[MAX_F]:.4f} vs champion {theirs[MAX_F]:.4f}: "
                                           f"{verdict} margin {gate.max_f_margin:g}"))
            ceiling = theirs[MAE] + gate.mae_margin
            ok = ours[MAE] <= ceiling
            verdict = "within" if ok else "worse by more than"
            checks.append(Check(MAE, ok, f"mae {ours[MAE]:.4f} vs champion {theirs[MAE]:.4f}: "
                                         f"{verdict} margin {gate.mae_margin:g}"))
    checks += _budget_checks(ours, gate)
    return GateResult(all(c.passed for c in checks), mode, checks)
