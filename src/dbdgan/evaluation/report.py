"""The evaluate step: model files -> accuracy beside the baselines, efficiency, one JSON per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dbdgan.checkpoint import load_model_file
from dbdgan.config import Params
from dbdgan.evaluation.baselines import AllBlurred, LaplacianSharpness
from dbdgan.evaluation.efficiency import model_efficiency
from dbdgan.evaluation.evaluate import evaluate_models
from dbdgan.io_utils import atomic_write_json

BASELINES: dict[str, type[nn.Module]] = {"baseline_all_blurred": AllBlurred, "baseline_laplacian": LaplacianSharpness}


def evaluate_files(model_files: dict[str, Path], data_dir: Path, out_dir: Path, split: str,
                   params: Params) -> dict[str, dict[str, Any]]:
    """Score each model file and the two baselines on `split`; add efficiency to each model's JSON."""
    ev = params.evaluate
    models: dict[str, nn.Module] = {name: load_model_file(path) for name, path in model_files.items()}
    baselines = {name: cls() for name, cls in BASELINES.items()}
    # Networks see images at the size they were trained on; the baselines work at native resolution.
    sizes = {name: ev.input_size for name in models}
    results = evaluate_models({**models, **baselines}, data_dir, split, out_dir, beta2=ev.beta2,
                              adaptive_factor=ev.adaptive_factor, thresholds=ev.thresholds,
                              grid_samples=ev.grid_samples, flip_tta=ev.flip_tta, input_size=sizes,
                              max_pixels=params.data.max_pixels)
    for name, model in models.items():
        results[name]["efficiency"] = model_efficiency(model, size=ev.efficiency_size, runs=ev.efficiency_runs,
                                                       throughput_runs=max(1, ev.efficiency_runs // 2))
        results[name]["model_file"] = str(model_files[name])
        atomic_write_json(out_dir / f"{name}.json", results[name])
    return results
