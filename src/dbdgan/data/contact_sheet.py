"""A contact sheet of image/mask pairs, so a person can check a prepared dataset at a glance."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dbdgan.evaluation.plots import draw_legend
from dbdgan.io_utils import atomic_write_bytes

_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)
_CAPTION = 14
_LEGEND = 22


def _fit(image: Image.Image, tile: int, resample: Image.Resampling) -> Image.Image:
    scale = tile / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, resample)


def render_contact_sheet(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    captions: Sequence[str] | None = None,
    *,
    tile: int = 160,
    columns: int = 4,
) -> Image.Image:
    """Grid of (image | mask) cells and a legend under them: masks white = blurred, the project's convention."""
    if not pairs:
        raise ValueError("contact sheet needs at least one image/mask pair")
    columns = max(1, min(columns, len(pairs)))
    rows = math.ceil(len(pairs) / columns)
    cell_w, cell_h = 2 * tile + 6, tile + _CAPTION + 6
    sheet = Image.new("RGB", (max(columns * cell_w, 360), rows * cell_h + _LEGEND), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, (image, mask) in enumerate(pairs):
        x0, y0 = (index % columns) * cell_w + 2, (index // columns) * cell_h + 2
        picture = _fit(Image.fromarray(np.asarray(image, dtype=np.uint8)), tile, Image.Resampling.BILINEAR)
        label = _fit(
            Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255), tile, Image.Resampling.NEAREST
        )
        sheet.paste(picture, (x0, y0 + _CAPTION))
        sheet.paste(label.convert("RGB"), (x0 + tile + 2, y0 + _CAPTION))
        if captions is not None:
            draw.text((x0, y0), captions[index], fill=_TEXT)
    draw_legend(draw, 4, rows * cell_h + 6, "masks: white = blurred (1), black = in focus (0)", _TEXT)
    return sheet


def save_contact_sheet(
    path: str | Path,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    captions: Sequence[str] | None = None,
    *,
    tile: int = 160,
    columns: int = 4,
) -> Path:
    """Render the sheet and write it as PNG atomically."""
    sheet = render_contact_sheet(pairs, captions, tile=tile, columns=columns)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=False)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)
