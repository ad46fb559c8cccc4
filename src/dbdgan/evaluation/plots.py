"""Evaluation artefacts a person or DVC looks at: curve CSVs, a PR + F-vs-threshold PNG, a qualitative grid.

Matplotlib is used through its object API on the Agg canvas (no pyplot state, no display needed); the grid is
composed with PIL so its pixel size is exact and predictable. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dbdgan.io_utils import atomic_write_bytes, atomic_write_text

GRID_PAD = 4
GRID_HEADER = 18
GRID_LEGEND = 22  # the strip under the grid that says how to read the maps
GRID_FRAME = (120, 120, 120)  # the line around each panel
LEGEND_TEXT = "maps: white = blurred (1), black = in focus (0)"


def _csv_text(header: Sequence[str], columns: Sequence[np.ndarray]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in zip(*columns, strict=True):
        writer.writerow([f"{float(v):.6f}" for v in row])
    return buffer.getvalue()


def write_curve_csvs(curves: Mapping[str, np.ndarray], plots_dir: Path, name: str) -> tuple[Path, Path]:
    """Write ``pr_<name>.csv`` (threshold, precision, recall + infocus_ columns) and ``f_<name>.csv``
    (threshold, f, infocus_f): one row per threshold, for ``dvc plots`` (x: recall, y: precision / x:
    threshold, y: f)."""
    pr_path, f_path = plots_dir / f"pr_{name}.csv", plots_dir / f"f_{name}.csv"
    pr_cols = ["threshold", "precision", "recall", "infocus_precision", "infocus_recall"]
    f_cols = ["threshold", "f", "infocus_f"]
    key = {"threshold": "thresholds"}
    atomic_write_text(pr_path, _csv_text(pr_cols, [curves[key.get(c, c)] for c in pr_cols]))
    atomic_write_text(f_path, _csv_text(f_cols, [curves[key.get(c, c)] for c in f_cols]))
    return pr_path, f_path


def plot_curves(curves: Mapping[str, Mapping[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """One PNG, two panels: precision-recall and F-beta vs threshold, one line per model (blurred positive);
    each model's max-F point is marked. The PR panel leaves out thresholds with mean recall 0 (nothing
    predicted in any image: precision there is the 0 of the convention, not a measurement)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_pr, ax_f = fig.subplots(1, 2)
    for name, c in curves.items():
        best = int(np.argmax(c["f"]))
        measured = c["recall"] > 0
        (line,) = ax_pr.plot(c["recall"][measured], c["precision"][measured], label=name)
        ax_pr.plot(c["recall"][best], c["precision"][best], "o", color=line.get_color())
        ax_f.plot(c["thresholds"], c["f"], color=line.get_color(), label=f"{name} (max F {c['f'][best]:.3f})")
        ax_f.plot(c["thresholds"][best], c["f"][best], "o", color=line.get_color())
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall")
    ax_f.set(xlabel="threshold", ylabel="F-beta", xlim=(0, 1), ylim=(0, 1.02), title="F-beta vs threshold")
    for ax in (ax_pr, ax_f):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


@dataclass
class GridRow:
    """One sample of the qualitative grid: uint8 RGB image [H,W,3], gt [H,W] in {0,1}, maps [H,W] in [0,1]."""

    sample_id: str
    image: np.ndarray
    gt: np.ndarray
    maps: dict[str, np.ndarray] = field(default_factory=dict)


def grid_size(n_rows: int, n_cols: int, cell: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid with ``n_rows`` samples and ``n_cols`` columns of ``cell`` px."""
    return n_cols * cell + (n_cols + 1) * GRID_PAD, GRID_HEADER + n_rows * (cell + GRID_PAD) + GRID_PAD + GRID_LEGEND


def draw_legend(draw: ImageDraw.ImageDraw, left: int, top: int, text: str = LEGEND_TEXT,
                colour: tuple[int, int, int] = (0, 0, 0)) -> None:
    """A black-to-white ramp labelled with what the ends mean, so no one has to guess the maps' polarity."""
    ramp_w, ramp_h = 64, 10
    for x in range(ramp_w):
        level = round(255 * x / (ramp_w - 1))
        draw.line([(left + x, top), (left + x, top + ramp_h)], fill=(level, level, level))
    draw.rectangle([left, top, left + ramp_w, top + ramp_h], outline=(128, 128, 128))
    draw.text((left + ramp_w + 6, top - 1), text, fill=colour)


def _fit(array: np.ndarray, cell: int) -> Image.Image:
    """Letterbox an image/map into a cell x cell square (aspect kept, grey bars)."""
    if array.ndim == 2:
        image = Image.fromarray(np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    else:
        image = Image.fromarray(array.astype(np.uint8))
    scale = cell / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (cell, cell), (96, 96, 96))
    canvas.paste(image, ((cell - size[0]) // 2, (cell - size[1]) // 2))
    return canvas


def thumbnail(array: np.ndarray, cell: int) -> np.ndarray:
    """Shrink an image/map so its long side is at most ``cell`` (keeps grid memory small while streaming)."""
    scale = cell / max(array.shape[:2])
    if scale >= 1:
        return array
    size = (max(1, round(array.shape[1] * scale)), max(1, round(array.shape[0] * scale)))
    if array.ndim == 2:
        small = Image.fromarray(array.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
        return np.asarray(small, dtype=np.float32)
    return np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BILINEAR))


def save_grid(rows: Sequence[GridRow], model_names: Sequence[str], path: Path, cell: int = 160) -> Path:
    """Grid PNG: one row per sample; columns image, ground truth, then each model's map; a legend under it
    (white = blurred).
    Size is exactly ``grid_size(len(rows), 2 + len(model_names), cell)``."""
    columns = ["image", "ground truth", *model_names]
    width, height = grid_size(len(rows), len(columns), cell)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(columns):
        draw.text((GRID_PAD + j * (cell + GRID_PAD) + 2, 3), title, fill=(0, 0, 0))
    for i, row in enumerate(rows):
        top = GRID_HEADER + i * (cell + GRID_PAD)
        panels = [row.image, row.gt.astype(np.float32), *(row.maps[name] for name in model_names)]
        for j, panel in enumerate(panels):
            left = GRID_PAD + j * (cell + GRID_PAD)
            canvas.paste(_fit(panel, cell), (left, top))
            # a frame in the padding: an all-blurred (white) map stays visible on the white page
            draw.rectangle((left - 1, top - 1, left + cell, top + cell), outline=GRID_FRAME)
        draw.text((GRID_PAD + 3, top + 2), row.sample_id, fill=(255, 255, 0))
    draw_legend(draw, GRID_PAD, height - GRID_LEGEND + 5)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
