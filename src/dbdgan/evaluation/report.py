"""The evaluate step: models -> accuracy beside the baselines, efficiency, ONNX parity, one JSON per model."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dbdgan.checkpoint import read_model_file
from dbdgan.config import Params
from dbdgan.data.imageio import load_rgb
from dbdgan.evaluation.baselines import AllBlurred, LaplacianSharpness
from dbdgan.evaluation.evaluate import evaluate_models, read_split
from dbdgan.evaluation.extra import EXTRA_DIR
from dbdgan.evaluation.scores import score_files, write_scores
from dbdgan.inference import (
    InputSize,
    calibration_inputs,
    is_model_uri,
    load_predictor,
    model_cost,
    predict_probability,
)
from dbdgan.inference_onnx import CALIBRATION_IMAGES, OnnxModel, check_onnx, export_onnx, quantize_onnx
from dbdgan.model_runs import training_run_id
from dbdgan.tracking import Tracking, configure

log = logging.getLogger(__name__)

BASELINES: dict[str, type[nn.Module]] = {"baseline_all_blurred": AllBlurred, "baseline_laplacian": LaplacianSharpness}


@dataclass(frozen=True)
class Beside:
    """Samples scored beside the main split, with the same models and protocol: another split of the same
    prepared folder, or an extra dataset prepared whole. Their numbers go under `<label>.` in each model's
    details (so the registry tags them `metric.<label>.*`); their files to `out_dir` (None: numbers only)."""

    label: str
    data_dir: Path
    split: str
    out_dir: Path | None = None


def _onnx_parity(model: nn.Module, path: Path, size: int, input_size: InputSize) -> dict[str, float]:
    """Export with dynamic H/W (unless this evaluation already did) and compare onnxruntime with PyTorch:
    on logits (check_onnx), and on the blur maps both give through the one prediction path at the model's
    input size (what a phone would show)."""
    import torch

    if not path.is_file():
        export_onnx(model, path)
    sample = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    torch_map = predict_probability(model.eval(), sample.to(device), input_size).cpu()
    onnx_map = predict_probability(OnnxModel(path), sample, input_size)
    return {"file": str(path), **check_onnx(model, path, sample),
            "map_max_abs_diff": float((torch_map - onnx_map).abs().max())}


def _int8_models(models: dict[str, nn.Module], sizes: dict[str, InputSize], data_dir: Path,
                 out_dir: Path) -> dict[str, nn.Module]:
    """Static int8 ONNX copies calibrated on training photos (read once for all models), scored beside the
    float models to show what int8 costs."""
    photos = [load_rgb(sample.image) for sample in read_split(data_dir, "train")[:CALIBRATION_IMAGES]]
    onnx_dir = out_dir / "onnx"
    quantised = {}
    for name, model in models.items():
        float_path = export_onnx(model, onnx_dir / f"{name}.onnx")
        calibration = calibration_inputs(photos, sizes[name])
        quantised[f"{name}_int8"] = OnnxModel(quantize_onnx(float_path, onnx_dir / f"{name}.int8.onnx", calibration))
    return quantised


def _log_to_training_run(params: Params, tracking: Tracking, source: str | Path, out_dir: Path, name: str,
                         beside: Sequence[Beside] = ()) -> None:
    """Attach the evaluation to the MLflow run that trained the model, when that run is in this store."""
    if is_model_uri(str(source)):
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    configure(tracking, params.register.service_timeout_s)
    client = MlflowClient()
    run_id = training_run_id(client, source, read_model_file(source)["metadata"])
    if not run_id:
        log.info("no run in this tracking store trained %s; evaluation not attached", source)
        return
    try:
        client.get_run(run_id)
    except MlflowException:
        log.info("training run %s of %s is not in this tracking store; evaluation not attached", run_id, source)
        return
    files = [*score_files(out_dir, name),
             *(path for one in beside if one.out_dir for path in score_files(one.out_dir, name))]
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=str(Path("evaluation") / path.parent.relative_to(out_dir)))
    for png in ("curves.png", "grid.png"):
        if (out_dir / "plots" / png).is_file():
            client.log_artifact(run_id, str(out_dir / "plots" / png), artifact_path="evaluation")


def _score_beside(models: dict[str, nn.Module], sizes: dict[str, InputSize], results: dict[str, dict[str, Any]],
                  beside: Sequence[Beside], params: Params) -> None:
    """Score `models` on each of `beside` and put the numbers (settings left out) under its label in `results`."""
    ev = params.evaluate
    for one in beside:
        clash = sorted(name for name, row in results.items() if one.label in row)
        if clash:
            raise ValueError(f"label {one.label!r} of a set scored beside the main split is already a key of "
                             f"the scores of {clash}: choose another")
        with tempfile.TemporaryDirectory(prefix="dbdgan-beside-") as tmp:
            scored = evaluate_models(models, one.data_dir, one.split, one.out_dir or Path(tmp), beta2=ev.beta2,
                                     adaptive_factor=ev.adaptive_factor, thresholds=ev.thresholds,
                                     grid_samples=ev.grid_samples, flip_tta=ev.flip_tta, input_size=sizes,
                                     max_pixels=params.data.max_pixels)
        for name, row in scored.items():
            results[name][one.label] = {key: value for key, value in row.items() if key != "settings"}


def evaluate_files(model_files: dict[str, str | Path], data_dir: Path, out_dir: Path, split: str,
                   params: Params, tracking: Tracking, beside: Sequence[Beside] = ()) -> dict[str, dict[str, Any]]:
    """Score each model (file or MLflow URI) and the two baselines on `split`; add efficiency and ONNX parity.

    Each network runs at the input size stored with it (its model file or registered model): one source.
    Each of `beside` is scored with the same models and settings (see Beside).
    """
    ev = params.evaluate
    loaded = {name: load_predictor(source, tracking.resolved_uri) for name, source in model_files.items()}
    models: dict[str, nn.Module] = {name: item.model for name, item in loaded.items()}
    baselines = {name: cls() for name, cls in BASELINES.items()}
    # Stale files from an earlier evaluation must not stand in for this one's export; the folder exists even
    # when it stays empty (evaluate.onnx and int8 off), since the step table declares it as an output.
    shutil.rmtree(out_dir / "onnx", ignore_errors=True)
    (out_dir / "onnx").mkdir(parents=True)
    shutil.rmtree(out_dir / EXTRA_DIR, ignore_errors=True)  # nor an extra dataset that this one does not score
    quantised = (_int8_models(models, {name: item.input_size for name, item in loaded.items()}, data_dir, out_dir)
                 if ev.int8 else {})
    # Networks see images at the size they were trained on; the baselines work at native resolution.
    sizes = {name: loaded[name.removesuffix("_int8")].input_size for name in [*models, *quantised]}
    results = evaluate_models({**models, **quantised, **baselines}, data_dir, split, out_dir, beta2=ev.beta2,
                              adaptive_factor=ev.adaptive_factor, thresholds=ev.thresholds,
                              grid_samples=ev.grid_samples, flip_tta=ev.flip_tta, input_size=sizes,
                              max_pixels=params.data.max_pixels)
    if beside:
        _score_beside({**models, **quantised, **baselines}, sizes, results, beside, params)
        for name in [*quantised, *baselines]:  # the networks' files are written below, with their efficiency
            write_scores(out_dir, name, results[name])
    for name, model in models.items():
        results[name]["efficiency"] = model_cost(model, ev.efficiency_size, runs=ev.efficiency_runs)
        if ev.onnx:
            results[name]["onnx"] = _onnx_parity(model, out_dir / "onnx" / f"{name}.onnx", ev.efficiency_size,
                                                 loaded[name].input_size)
        results[name]["model"] = str(model_files[name])
        if f"{name}_int8" in results:
            results[name]["int8_delta"] = {key: results[f"{name}_int8"][key] - results[name][key]
                                           for key in ("max_f", "mae", "infocus_max_f")}
        write_scores(out_dir, name, results[name])
        if ev.log_to_mlflow:
            _log_to_training_run(params, tracking, model_files[name], out_dir, name, beside)
    return results
