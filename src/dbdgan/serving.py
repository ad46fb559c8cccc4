"""The MLflow pyfunc around a dbdgan model file: images as arrays or encoded bytes in, blur maps out.

Accepted inputs (Python or `mlflow models serve` JSON):
- a uint8 array [H,W,3] or [N,H,W,3] (JSON: `{"inputs": [[[[r, g, b], ...]]]}`);
- a sequence of images of different sizes, each an array or encoded file bytes (PNG, JPEG, TIFF ...), or the
  base64 text of those bytes as JSON carries them (JSON: `{"inputs": ["iVBORw0..."]}`);
- a DataFrame with an `image` column of encoded bytes or base64 text (JSON: `dataframe_split`).
Output: float32 [N,H,W] maps in [0,1] (1 = blurred) at each input's resolution; a list of [H,W] maps when the
inputs differ in size.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

MAX_SERVED_PIXELS = 40_000_000
BATCH_SIZE = 8  # same-size images per network batch, as in `dbdgan predict`


def decode_image(value: bytes | bytearray | str, max_pixels: int = MAX_SERVED_PIXELS) -> np.ndarray:
    """Encoded bytes (or their base64 text) -> uint8 HxWx3; greyscale, alpha and 16-bit are converted."""
    from PIL import Image, UnidentifiedImageError

    from dbdgan.data.imageio import image_to_rgb, upright

    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"image text is not valid base64: {exc}") from exc
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"expected encoded image bytes or base64 text, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(value)) as img:
            if img.width * img.height > max_pixels:
                raise ValueError(f"image of {img.width}x{img.height} exceeds the {max_pixels} pixel limit")
            img.load()
            return np.ascontiguousarray(image_to_rgb(upright(img)))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image ({len(value)} bytes): {exc}") from exc
    except OSError as exc:
        raise ValueError(f"truncated or corrupt image data ({len(value)} bytes): {exc}") from exc


def _pixels(value: Any) -> np.ndarray:
    """An array-like image -> uint8 HxWx3, refusing values outside 0..255 rather than wrapping them."""
    array = np.asarray(value)
    if array.dtype == object:
        array = np.asarray(array.tolist())
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image array [H,W,3], got shape {array.shape}")
    if array.dtype == np.uint8:
        return np.require(array, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    if array.dtype.kind not in "iu":
        raise ValueError(f"expected integer pixel values 0..255, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"pixel values must lie in 0..255, got {array.min()}..{array.max()}")
    return array.astype(np.uint8)


def _one_image(value: Any, max_pixels: int) -> np.ndarray:
    return decode_image(value, max_pixels) if isinstance(value, bytes | bytearray | str) else _pixels(value)


def as_images(model_input: Any, max_pixels: int = MAX_SERVED_PIXELS) -> list[np.ndarray]:
    """Normalise every accepted input form to a list of uint8 HxWx3 arrays."""
    if isinstance(model_input, pd.DataFrame):
        if "image" not in model_input.columns:
            raise ValueError(f"input DataFrame needs an 'image' column, got {list(model_input.columns)}")
        values = list(model_input["image"])
    elif isinstance(model_input, dict):
        if "image" not in model_input:
            raise ValueError(f"input mapping needs an 'image' key, got {sorted(model_input)}")
        values = list(np.atleast_1d(np.asarray(model_input["image"], dtype=object)))
    elif isinstance(model_input, bytes | bytearray | str):
        values = [model_input]
    else:
        array = model_input if isinstance(model_input, np.ndarray) else np.asarray(model_input, dtype=object)
        if array.dtype != object and array.ndim == 3:
            return [_pixels(array)]
        if array.dtype != object and array.ndim == 4:
            return [_pixels(img) for img in array]
        if array.dtype == object and array.ndim == 1:
            values = list(array)
        elif array.dtype == object and array.ndim in (3, 4):  # nested lists parsed from JSON
            return as_images(np.asarray(array.tolist()), max_pixels)
        else:
            raise ValueError(f"expected images [H,W,3], [N,H,W,3] or a list of images, got {array.shape}")
    if not values:
        raise ValueError("no images in the input")
    return [_one_image(value, max_pixels) for value in values]


class BlurMapModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint artifact with torch.load(weights_only=True); see the module docstring for I/O."""

    def load_context(self, context: Any) -> None:
        import json

        from dbdgan.checkpoint import load_model_file
        from dbdgan.inference import prepare_network

        self.model = prepare_network(load_model_file(context.artifacts["checkpoint"]))  # as predict runs it
        with open(context.artifacts["inference"]) as handle:
            size = json.load(handle).get("input_size")
        self.input_size = tuple(size) if isinstance(size, list) else size

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
        from dbdgan.inference import blur_maps

        maps = blur_maps(self.model, as_images(model_input), self.input_size, BATCH_SIZE)
        if all(m.shape == maps[0].shape for m in maps):
            return np.stack(maps).astype(np.float32)
        return maps
