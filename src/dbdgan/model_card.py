"""What a reviewer reads before promoting a registered version: its description and its model card (Markdown).

Both are built from what the register step already holds (the model file, the evaluation JSONs of the model
and of the baselines, the prepared manifest, the params) and from the current champion's metric tags, so a
version explains itself in the MLflow UI without opening a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbdgan.data import manifest as manifest_file
from dbdgan.lineage import Lineage

KEY_METRICS = (("infocus_max_f", "in-focus max-F", "higher"), ("max_f", "blurred max-F", "higher"),
               ("mae", "MAE", "lower"), ("infocus_mean_f", "in-focus mean F", "higher"))
BASELINE_NAMES = {"baseline_laplacian": "Laplacian-energy sharpness map", "baseline_all_blurred": "all-blurred map"}
# What a split scored beside the main one is (evaluate.extra_splits); any other label is an extra dataset
_SPLIT_NOTES = {"train": "the training split: seen in training", "test": "the test split",
                "val": "the validation split: it chose the recipe and the kept epoch, or a final fit trained on it, "
                       "so it flatters"}
_LIMITS = {
    "synthetic": "Trained on generated defocus scenes only: the pipeline's smoke-test model. It has not seen real "
                 "photos and is not meant for them.",
    "cuhk": "Trained on CUHK defocus photos (mostly one sharp subject against a blurred background, 1 = blurred). "
            "It may fail on motion blur (not modelled), photos that are all sharp or all blurred, night and "
            "noisy images, and sizes far from its input size.",
    "dut": "Trained on DUT-DBD photos. It may fail on motion blur, photos that are all sharp or all blurred, "
           "night and noisy images, and sizes far from its input size.",
}


@dataclass
class CardFacts:
    """Everything the description and the card say, gathered once by the register step."""

    name: str
    role: str
    arch: str
    data_source: str
    manifest: Path
    manifest_sha256: str
    metrics: dict[str, float]
    protocol: dict[str, Any]
    input_size: Any = None
    teacher_arch: str | None = None
    teacher_source: str = ""  # an imported teacher's registry version or URI ("" = trained in the same run)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    champion: dict[str, Any] | None = None  # {"version": int, "metrics": {key: value}} of the current champion
    lineage: Lineage = field(default_factory=Lineage)  # the code, image and pipeline run that made it


def _code_lines(lineage: Lineage) -> list[str]:
    """The card's lineage bullets: commit (and uncommitted changes), image and Kubeflow run when known."""
    lines = [f"- code: git commit `{lineage.commit}`{' with uncommitted changes' if lineage.dirty else ''}"]
    if lineage.image:
        lines.append(f"- image: `{lineage.image}`")
    if lineage.pipeline_run_id:
        lines.append(f"- Kubeflow pipeline run: `{lineage.pipeline_run_id}`")
    return lines


def split_counts(manifest: Path) -> dict[str, int]:
    """Images per split in a prepared manifest (dbdgan.data.manifest.split_counts)."""
    return manifest_file.split_counts(manifest)


def _num(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def _networks(facts: CardFacts) -> str:
    params = facts.metrics.get("efficiency.params")
    gflops = facts.metrics.get("efficiency.gflops")
    size = f"{params / 1e6:.2f} M parameters" if params else "size unknown"
    size += f", {gflops:.2f} GFLOPs" if gflops else ""
    trained = (f"distilled from a {facts.teacher_arch} teacher" if facts.teacher_arch
               else "trained against its discriminator")
    if facts.teacher_source:
        trained += f" (`{facts.teacher_source}`, trained by an earlier run)"
    return f"{facts.arch} ({size}), {trained}"


def _against_champion(facts: CardFacts, key: str, digits: int = 3) -> str:
    if not facts.champion or key not in facts.champion.get("metrics", {}):
        return ""
    theirs = facts.champion["metrics"][key]
    return f" (champion v{facts.champion['version']}: {theirs:.{digits}f}, {facts.metrics[key] - theirs:+.{digits}f})"


def beside_sets(metrics: dict[str, Any]) -> list[str]:
    """Labels of the sets the evaluate step scored beside the main split (each has `<label>.n_images`):
    splits first, then extra datasets."""
    labels = {key.removesuffix(".n_images") for key in metrics if key.endswith(".n_images") and key.count(".") == 1}
    return sorted(labels, key=lambda label: (label not in _SPLIT_NOTES, label))


def _beside_note(facts: CardFacts, label: str) -> str:
    images = int(facts.metrics[f"{label}.n_images"])
    if label in _SPLIT_NOTES:
        return f"{_SPLIT_NOTES[label]} ({images} images)"
    return f"dataset {label!r}, scored whole ({images} images; not the training data)"


def description(facts: CardFacts) -> str:
    """The registered version's description: data, networks, key metrics beside the champion's."""
    counts = split_counts(facts.manifest)
    split = facts.protocol.get("split", "?")
    lines = [f"{facts.role.capitalize()} {_networks(facts)}.",
             f"Data: {facts.data_source}, prepared manifest sha256 {facts.manifest_sha256[:12]} "
             f"({', '.join(f'{n} {s}' for s, n in counts.items())} images).",
             f"Evaluated on the {split} split at the ground truth's resolution:"]
    for key, label, _ in KEY_METRICS[:3]:
        if key in facts.metrics:
            lines.append(f"- {label} {facts.metrics[key]:.3f}{_against_champion(facts, key)}")
    latency = facts.metrics.get("efficiency.latency_ms_b1")
    if latency is not None:
        compared = _against_champion(facts, "efficiency.latency_ms_b1", digits=1)
        lines.append(f"- CPU latency {latency:.1f} ms (batch 1){compared}")
    if not facts.champion and facts.role == "student":  # teachers are registered, never promoted
        lines.append("No champion yet: the gate compares against its floors.")
    for label in beside_sets(facts.metrics):
        m = facts.metrics
        lines.append(f"Beside it, {_beside_note(facts, label)}: in-focus max-F "
                     f"{_num(m.get(label + '.infocus_max_f'))}, MAE {_num(m.get(label + '.mae'))}.")
    for name, label in BASELINE_NAMES.items():
        if name in facts.baselines:
            b = facts.baselines[name]
            lines.append(f"Baseline {label}: in-focus max-F {_num(b.get('infocus_max_f'))}, MAE {_num(b.get('mae'))}.")
    lines.append("Model card: the artifact model_card.md of this version's model (and of its run).")
    return "\n".join(lines)


def _metrics_table(facts: CardFacts) -> list[str]:
    columns = [facts.arch, *(BASELINE_NAMES[n] for n in BASELINE_NAMES if n in facts.baselines)]
    if facts.champion:
        columns.append(f"champion v{facts.champion['version']}")
    rows = ["| metric | " + " | ".join(columns) + " | better |", "|" + " --- |" * (len(columns) + 2)]
    for key, label, better in KEY_METRICS:
        if key not in facts.metrics:
            continue
        cells = [_num(facts.metrics[key])]
        cells += [_num(facts.baselines[n].get(key)) for n in BASELINE_NAMES if n in facts.baselines]
        if facts.champion:
            cells.append(_num(facts.champion["metrics"].get(key)))
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {better} |")
    return rows


def _beside_table(facts: CardFacts) -> list[str]:
    """The sets scored beside the main split, with the same protocol (none: no lines)."""
    labels = beside_sets(facts.metrics)
    if not labels:
        return []
    keys = KEY_METRICS[:3]
    rows = ["", f"Beside the {facts.protocol.get('split', '?')} split, under the same protocol:", "",
            "| set | " + " | ".join(label for _, label, _ in keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for label in labels:
        cells = [_num(facts.metrics.get(f"{label}.{key}")) for key, _, _ in keys]
        rows.append(f"| {label}: {_beside_note(facts, label)} | " + " | ".join(cells) + " |")
    return rows


def model_card(facts: CardFacts) -> str:
    """Markdown: intended use, training data and its hash, metrics with baselines, efficiency, limitations."""
    counts = split_counts(facts.manifest)
    m = facts.metrics
    efficiency = [f"- parameters: {_num(m.get('efficiency.params'), ',.0f')}",
                  f"- GFLOPs at {_num(m.get('efficiency.input_size'), '.0f')} px: "
                  f"{_num(m.get('efficiency.gflops'), '.2f')}",
                  f"- CPU latency, batch 1: {_num(m.get('efficiency.latency_ms_b1'), '.1f')} ms "
                  f"({_num(m.get('efficiency.torch_threads'), '.0f')} threads); throughput "
                  f"{_num(m.get('efficiency.throughput_img_s'), '.1f')} img/s",
                  f"- onnxruntime latency, batch 1: {_num(m.get('onnx.ort_latency_ms'), '.1f')} ms "
                  f"(max |logit difference| to PyTorch {_num(m.get('onnx.max_abs_diff'), '.1e')})"]
    limits = _LIMITS.get(facts.data_source, f"Trained on {facts.data_source!r} data only; untested elsewhere.")
    others = [label for label in beside_sets(m) if label not in _SPLIT_NOTES]
    return "\n".join([
        f"# Model card: {facts.name} ({facts.role})",
        "",
        "## Intended use",
        "Defocus blur detection: for an RGB photo, the probability per pixel that it is out of focus "
        "(1 = blurred, 0 = in focus), e.g. for portrait and bokeh editing, refocusing or image-quality triage. "
        f"Input RGB in [0, 1] of any size; the network sees it at {facts.input_size or 'its native size'} and the "
        "map comes back at the photo's resolution (`dbdgan predict`, the MLflow pyfunc, the ONNX export).",
        "",
        "## Networks",
        _networks(facts) + ".",
        "",
        "## Training data",
        f"- source: {facts.data_source}",
        f"- prepared manifest: `{facts.manifest.name}`, sha256 `{facts.manifest_sha256}`",
        "- images per split: " + ", ".join(f"{s} {n}" for s, n in counts.items()),
        *_code_lines(facts.lineage),
        "",
        f"## Metrics ({facts.protocol.get('split', '?')} split, F-beta with beta^2 = "
        f"{facts.protocol.get('beta2', '?')})",
        *_metrics_table(facts),
        *_beside_table(facts),
        "",
        "## Efficiency",
        *efficiency,
        "",
        "## Limitations",
        limits,
        f"The headline metrics come from the {facts.protocol.get('split', '?')} split of the same dataset"
        + (f" (those of {', '.join(others)} from other photos)" if others else ", not from an independent benchmark")
        + "; published evaluators differ in thresholds, resolution and polarity, so compare numbers only under "
        "this protocol.",
        "",
    ])
