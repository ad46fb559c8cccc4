"""The MLflow pyfunc around a dbdgan model file: images as arrays or encoded bytes in, blur maps out.

Accepted inputs (Python or `mlflow models serve` JSON):
- a uint8 array [H,W,3] or [N,H,W,3] (JSON: `{"inputs": [[[[r, g, b], ...]]]}`);
- a sequence of images of different sizes, each an array or encoded file bytes (PNG, JPEG, TIFF ...), or the
  base64 text of those bytes as JSON carries them (JSON: `{"inputs": ["iVBORw0..."]}`);
- a DataFrame with an `image` column of encoded bytes or base64 text (JSON: `dataframe_split`).

Inference parameters (declared in the model signature, JSON: `"params": {"output": "uint8"}`):
- `output`: `png` (default): the map as the base64 text of an 8-bit greyscale PNG (255 = blurred), the file
  `dbdgan predict` writes; `uint8`: the same grey levels as an [H,W] array; `float`: probabilities in [0,1].
  A map costs about 0.1-0.5 byte per pixel as PNG, 4-20 as JSON numbers: PNG is the one for photos.
- `max_side`: 0 (default) predicts at the photo's resolution; N > 0 predicts on a copy whose longer side is
  at most N pixels (JPEGs are decoded at the reduced scale directly) and returns the map at that size.

Output: one record per image, in input order: `map`, `output`, the map's `width` and `height`, the photo's
`photo_width` and `photo_height` (EXIF orientation applied), and `downscaled` (true when `max_side` shrank it).
A bad request is answered with HTTP 400 and a one-line reason (`ServingError`), never a trace; one request
may hold up to MAX_REQUEST_PIXELS pixels (as predicted on), about eight 12-megapixel photos. A parameter of
the wrong JSON type is refused by MLflow itself, with its own message.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types.schema import ParamSchema, ParamSpec

log = logging.getLogger(__name__)

MAX_SERVED_PIXELS = 40_000_000  # one image
MAX_REQUEST_PIXELS = 100_000_000  # all images of one request, as predicted on: bounds a request's memory
BATCH_SIZE = 8  # same-size images per network batch, as in `dbdgan predict`
OUTPUTS = ("png", "uint8", "float")
PARAMS = ParamSchema([ParamSpec("output", "string", "png"), ParamSpec("max_side", "long", 0)])


class ServingError(MlflowException):
    """A failed request, answered with exactly this one-line message (400 for a bad input by default).

    MLflow's scoring server rewrites the message of any MlflowException a model raises into "Failed to predict
    data '<the whole request>'. Error: ..." (mlflow.pyfunc.scoring_server.invocations), which would send
    megabytes of base64 back in the error; this message is fixed when the error is made.
    """

    def __init__(self, reason: str, error_code: int = INVALID_PARAMETER_VALUE) -> None:
        self._reason = " ".join(reason.split())
        super().__init__(self._reason, error_code=error_code)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, _rewritten: str) -> None:
        """Ignore the scoring server's rewrite (see the class docstring)."""


def decode_image(value: bytes | bytearray | str, max_pixels: int = MAX_SERVED_PIXELS,
                 max_side: int = 0) -> np.ndarray:
    """Encoded bytes (or their base64 text) -> uint8 HxWx3; greyscale, alpha and 16-bit are converted.

    max_side > 0: the image shrunk (antialiased) so that its longer side is at most `max_side`.
    """
    return _decode(value, max_pixels, max_side)[0]


def _decode(value: bytes | bytearray | str, max_pixels: int, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels to predict on and the photo's own (height, width) as viewers show it.

    With `max_side`, a JPEG is decoded at the nearest larger 1/2, 1/4 or 1/8 scale (most of the decoding
    saved: a 12-megapixel photo costs a quarter of its pixels or less), then shrunk to the exact size.
    """
    from PIL import Image, UnidentifiedImageError

    from dbdgan.data.imageio import exif_orientation, image_to_rgb, upright

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
            width, height = img.size
            if exif_orientation(img) in (5, 6, 7, 8):  # shown turned by 90 degrees
                width, height = height, width
            scale = _scale(width, height, max_side)
            if scale < 1 and img.format == "JPEG":
                img.draft("RGB", (round(img.width * scale), round(img.height * scale)))
            img.load()
            pixels = np.ascontiguousarray(image_to_rgb(upright(img)))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a readable image ({len(value)} bytes): {exc}") from exc
    except OSError as exc:
        raise ValueError(f"truncated or corrupt image data ({len(value)} bytes): {exc}") from exc
    return _shrunk(pixels, max_side), (height, width)


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


def _scale(width: int, height: int, max_side: int) -> float:
    return min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0


def _shrunk(image: np.ndarray, max_side: int) -> np.ndarray:
    """`image` with its longer side at most `max_side` (0: as it is); PIL's antialiased bilinear filter."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = _scale(width, height, max_side)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _image_values(model_input: Any) -> list[Any]:
    """Every accepted input form -> a list of images, each an array-like or encoded bytes / base64 text."""
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
        if array.dtype == object and array.ndim in (3, 4):  # nested lists parsed from JSON
            array = np.asarray(array.tolist())
        if array.dtype != object and array.ndim == 3:
            values = [array]
        elif array.ndim == (1 if array.dtype == object else 4):  # a list of images, or a batch of arrays
            values = list(array)
        else:
            raise ValueError(f"expected images [H,W,3], [N,H,W,3] or a list of images, got {array.shape}")
    if not values:
        raise ValueError("no images in the input")
    return values


def _one_image(value: Any, max_pixels: int, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels to predict on and the photo's own (height, width)."""
    if isinstance(value, bytes | bytearray | str):
        return _decode(value, max_pixels, max_side)
    pixels = _pixels(value)
    return _shrunk(pixels, max_side), pixels.shape[:2]


def decode_request(values: list[Any], max_side: int = 0,
                   budget: int = MAX_REQUEST_PIXELS) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Each image's pixels to predict on and its photo's (height, width), refusing a request whose images
    hold more than `budget` pixels together (after `max_side`): one request's memory stays bounded."""
    images, total = [], 0
    for value in values:
        pixels, photo = _one_image(value, MAX_SERVED_PIXELS, max_side)
        total += pixels.shape[0] * pixels.shape[1]
        if total > budget:
            raise ValueError(f"the request's images hold more than {budget} pixels together: send fewer per "
                             f"request, or set params.max_side")
        images.append((pixels, photo))
    return images


def as_images(model_input: Any, max_pixels: int = MAX_SERVED_PIXELS) -> list[np.ndarray]:
    """Normalise every accepted input form to a list of uint8 HxWx3 arrays."""
    return [_one_image(value, max_pixels, 0)[0] for value in _image_values(model_input)]


_SCORING_SERVER_MODEL = "__pyfunc_model_path__"  # set for the process `mlflow models serve` starts
_SHOWN_CHARS = 64


def _short(value: Any) -> str:
    if isinstance(value, str | bytes) and len(value) > _SHOWN_CHARS:
        return f"<{type(value).__name__} of {len(value)} characters>"
    return repr(value)


def _short_request_in_mlflows_errors() -> None:
    """In the scoring server's process only: long strings in arrays print as their length.

    The server puts the whole request into the message of an error that MLflow itself raises, such as a
    parameter of the wrong JSON type ("Failed to predict data '<the request>'. Error: ..."); an encoded photo
    would come back as megabytes of base64. Printing is the only thing this changes, and only there.
    """
    np.set_printoptions(formatter={"object": _short, "numpystr": _short})


def _options(params: dict[str, Any] | None) -> tuple[str, int]:
    """The checked inference parameters (MLflow has filled in the defaults and converted the types)."""
    params = params or {}
    output = params.get("output") or "png"
    if output not in OUTPUTS:
        raise ValueError(f"params.output must be one of {list(OUTPUTS)}, got {output!r}")
    max_side = params.get("max_side") or 0
    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer) or max_side < 0:
        raise ValueError(f"params.max_side must be a whole number of pixels >= 0 (0: full size), got {max_side!r}")
    return output, int(max_side)


def _record(prob: Any, pixels: np.ndarray, photo: tuple[int, int], output: str) -> dict[str, Any]:
    """One image's answer: its map in the chosen form and the sizes that say what it covers."""
    from dbdgan.data.imageio import encode_image
    from dbdgan.inference import blur_map, blur_map_8bit
    from dbdgan.predict import MAP_FORMAT

    height, width = pixels.shape[:2]
    if output == "float":
        value: Any = blur_map(prob, (height, width))
    else:
        grey = blur_map_8bit(prob, (height, width))  # the grey levels `dbdgan predict` writes
        value = base64.b64encode(encode_image(grey, **MAP_FORMAT)).decode("ascii") if output == "png" else grey
    return {"map": value, "output": output, "width": width, "height": height, "photo_width": photo[1],
            "photo_height": photo[0], "downscaled": (height, width) != tuple(photo)}


class BlurMapModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint artifact with torch.load(weights_only=True); see the module docstring for I/O."""

    def load_context(self, context: Any) -> None:
        from dbdgan.inference import predictor_from_file, prepare_network

        if os.environ.get(_SCORING_SERVER_MODEL):
            _short_request_in_mlflows_errors()
        # the input size stored in the model file (older versions also carry it in an `inference` artifact)
        loaded = predictor_from_file(context.artifacts["checkpoint"], legacy=context.artifacts.get("inference"))
        self.model = prepare_network(loaded.model)  # as predict runs it
        self.input_size = loaded.input_size

    def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
        try:
            output, max_side = _options(params)
            images = decode_request(_image_values(model_input), max_side)
        except ValueError as exc:  # the request's fault: 400 with our reason
            raise ServingError(str(exc)) from None
        try:
            return self._answer(images, output)
        except Exception as exc:  # ours: 500, one line to the client, the traceback in the server's log
            log.exception("prediction failed")
            raise ServingError(f"prediction failed: {type(exc).__name__}", INTERNAL_ERROR) from None

    def _answer(self, images: list[tuple[np.ndarray, tuple[int, int]]], output: str) -> list[dict[str, Any]]:
        """Same-size images share network batches; each map is made and encoded as soon as it is ready."""
        from dbdgan.inference import network_input, network_probabilities

        inputs = [network_input(pixels, self.input_size) for pixels, _ in images]
        probs = network_probabilities(self.model, inputs, BATCH_SIZE)
        return [_record(prob, pixels, photo, output) for prob, (pixels, photo) in zip(probs, images, strict=True)]
