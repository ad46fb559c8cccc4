"""Score one or more models on one split of a prepared dataset and write what `dvc metrics/plots` shows.

Reads ``data_dir/manifest.csv`` (``dbdgan.data.manifest``) and the image/mask files (``dbdgan.data.imageio``),
not the training data pipeline. Per image: the RGB input is optionally resized to ``input_size``
(bilinear, antialiased), the model's logits go through a sigmoid, and the probability map is resized back
(bilinear) to the ground truth's native size; the metrics (``metrics.DBDMetrics``) compare at that size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dbdgan.data import manifest
from dbdgan.data.imageio import DEFAULT_MAX_PIXELS, load_mask, load_rgb
from dbdgan.evaluation.metrics import INFOCUS_PREFIX, DBDMetrics
from dbdgan.evaluation.plots import GridRow, plot_curves, save_grid, thumbnail, write_curve_csvs
from dbdgan.evaluation.scores import write_scores
from dbdgan.inference import InputSize, blur_maps, prepare_network, size_tuple
from dbdgan.models.info import eval_mode
from dbdgan.progress import progress

CURVE_KEYS = ("thresholds", "precision", "recall", "f")
GRID_CELL = 160
BATCH_SIZE = 8  # images read and run together (same-size network inputs share a network batch)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")



@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path


def read_split(data_dir: Path, split: str) -> list[Sample]:
    """Rows of ``manifest.csv`` in ``split`` (``dbdgan.data.manifest.read``), sorted by id (a stable order
    for the grid and reports)."""
    samples = [Sample(r["id"], Path(data_dir) / r["image"], Path(data_dir) / r["mask"])
               for r in manifest.read(data_dir, split)]
    return sorted(samples, key=lambda s: s.id)


def load_pair(sample: Sample, max_pixels: int) -> tuple[np.ndarray, Tensor]:
    """Image uint8 [H, W, 3] and mask float32 [1, H, W] in {0, 1}, through the data readers."""
    image = load_rgb(sample.image, max_pixels)
    mask = torch.from_numpy(load_mask(sample.mask, max_pixels, binarize=True)).float()[None]
    if image.shape[:2] != mask.shape[-2:]:
        raise ValueError(f"{sample.image} is {image.shape[:2]} but its mask {sample.mask} is "
                         f"{tuple(mask.shape[-2:])} (height, width)")
    return image, mask


def grid_indices(n: int, k: int) -> list[int]:
    """k indices spread evenly over 0..n-1 (all of them when k >= n): a fixed, data-independent sample set."""
    if k <= 0:
        return []
    if k >= n:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def _summary(values: Mapping[str, Tensor]) -> dict[str, float | int]:
    out: dict[str, float | int] = {}
    for key, value in values.items():
        if value.dim() != 0 or key == INFOCUS_PREFIX + "n_images":
            continue
        out[key] = int(value) if key.endswith(("n_images", "n_empty_gt")) else float(value)
    return out


def evaluate_models(
    models: Mapping[str, nn.Module],
    data_dir: Path,
    split: str,
    out_dir: Path,
    *,
    beta2: float = 0.3,
    adaptive_factor: float = 1.5,
    thresholds: int = 256,
    grid_samples: int = 6,
    device: str | torch.device = "cpu",
    flip_tta: bool = False,
    input_size: InputSize | Mapping[str, InputSize] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, dict]:
    """Score every model on ``split`` of the prepared dataset in ``data_dir``; write and return the metrics.

    Writes (atomically): ``out_dir/<name>.json`` (scalar metrics, blurred positive, plus ``infocus_*`` for
    in-focus positive, ``n_images``, ``n_empty_gt`` and the settings used), ``out_dir/plots/pr_<name>.csv``,
    ``out_dir/plots/f_<name>.csv``, ``out_dir/plots/curves.png`` (all models) and ``out_dir/plots/grid.png``
    (image, ground truth, each model's map for ``grid_samples`` fixed samples). ``input_size`` may be one
    size for all models or a mapping name -> size (missing names: native). Models are moved to
    ``device`` and run in eval mode (their previous mode is restored). Returns {name: the JSON's content}.
    """
    if not models:
        raise ValueError("evaluate_models needs at least one model")
    bad = [name for name in models if not _SAFE_NAME.match(name)]
    if bad:
        raise ValueError(f"model names must match {_SAFE_NAME.pattern} (they become file names), got {bad}")
    samples = read_split(Path(data_dir), split)
    out_dir, plots_dir = Path(out_dir), Path(out_dir) / "plots"
    meters = {
        name: DBDMetrics(thresholds=thresholds, beta2=beta2, adaptive_factor=adaptive_factor)
        for name in models
    }
    sizes = {name: (input_size.get(name) if isinstance(input_size, Mapping) else input_size) for name in models}
    grid_rows: list[GridRow] = []
    chosen = set(grid_indices(len(samples), grid_samples))
    for model in models.values():
        model.to(device)
    with torch.inference_mode(), ExitStack() as stack:
        for model in models.values():
            stack.enter_context(eval_mode(model))
        networks = {name: prepare_network(model) for name, model in models.items()}  # as predict runs them
        bar = stack.enter_context(progress(total=len(samples), desc=f"evaluate {split}", unit="img"))
        for first in range(0, len(samples), BATCH_SIZE):
            indices = range(first, min(first + BATCH_SIZE, len(samples)))
            pairs = [load_pair(samples[index], max_pixels) for index in indices]
            images = [image for image, _ in pairs]
            maps = {}
            for name, network in networks.items():
                try:
                    found = blur_maps(network, images, sizes[name], BATCH_SIZE, flip_tta)
                except ValueError as exc:
                    raise ValueError(f"model {name!r}: {exc}") from exc
                maps[name] = [torch.from_numpy(m)[None] for m in found]
                meters[name].update(maps[name], [mask for _, mask in pairs])
            for offset, index in enumerate(indices):
                if index in chosen:
                    grid_rows.append(GridRow(
                        samples[index].id, thumbnail(images[offset], GRID_CELL),
                        thumbnail(pairs[offset][1][0].numpy(), GRID_CELL),
                        {name: thumbnail(m[offset][0].numpy(), GRID_CELL) for name, m in maps.items()},
                    ))
            bar.update(len(indices))

    settings = {
        name: {
            "split": split,
            "beta2": beta2,
            "adaptive_factor": adaptive_factor,
            "thresholds": thresholds,
            "flip_tta": flip_tta,
            "input_size": list(size_tuple(sizes[name])) if sizes[name] is not None else "native",
        }
        for name in models
    }
    results: dict[str, dict] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for name, meter in meters.items():
        values = meter.compute()
        results[name] = {**_summary(values), "settings": settings[name]}
        curves[name] = {
            prefix + key: values[prefix + key].numpy()
            for prefix in ("", INFOCUS_PREFIX)
            for key in CURVE_KEYS
        }
        write_scores(out_dir, name, results[name])
        write_curve_csvs(curves[name], plots_dir, name)
    plot_curves(
        curves, plots_dir / "curves.png", title=f"{split} split, {len(samples)} images, blurred = positive"
    )
    save_grid(grid_rows, list(models), plots_dir / "grid.png", cell=GRID_CELL)
    return results
