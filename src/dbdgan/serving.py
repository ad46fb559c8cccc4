"""The MLflow pyfunc around a dbdgan model file: RGB arrays or encoded image bytes in, blur maps out."""

from __future__ import annotations

import base64
import io
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

MAX_SERVED_PIXELS = 40_000_000


def decode_image(value: Any) -> np.ndarray:
    """Encoded bytes (or their base64 text, as JSON carries them) -> uint8 HxWx3."""
    from PIL import Image

    if isinstance(value, str):
        value = base64.b64decode(value)
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"expected encoded image bytes or base64 text, got {type(value).__name__}")
    with Image.open(io.BytesIO(value)) as img:
        if img.width * img.height > MAX_SERVED_PIXELS:
            raise ValueError(f"image of {img.width}x{img.height} exceeds the {MAX_SERVED_PIXELS} pixel limit")
        return np.asarray(img.convert("RGB"))


class BlurMapModel(mlflow.pyfunc.PythonModel):
    """predict(): a uint8 [H,W,3] / [N,H,W,3] array -> float32 [N,H,W] maps (1 = blurred);
    a DataFrame with an `image` column of encoded bytes or base64 -> a DataFrame with a `blur_map` list column."""

    def load_context(self, context: Any) -> None:
        import json

        from dbdgan.checkpoint import load_model_file

        self.model = load_model_file(context.artifacts["checkpoint"])
        with open(context.artifacts["inference"]) as handle:
            self.input_size = json.load(handle).get("input_size")

    def _maps(self, images: list[np.ndarray]) -> list[np.ndarray]:
        from dbdgan.inference import predict_probability, to_tensor

        return [predict_probability(self.model, to_tensor(img), self.input_size)[0, 0].numpy() for img in images]

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                raise ValueError(f"input DataFrame needs an 'image' column, got {list(model_input.columns)}")
            maps = self._maps([decode_image(value) for value in model_input["image"]])
            return pd.DataFrame({"blur_map": [m.round(4).tolist() for m in maps]})
        array = np.asarray(model_input)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"expected an RGB array [H,W,3] or [N,H,W,3], got shape {array.shape}")
        return np.stack(self._maps([img.astype(np.uint8) for img in array])).astype(np.float32)
