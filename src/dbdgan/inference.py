"""Photo in, blur map out: the one prediction path shared by evaluation, `dbdgan predict` and the MLflow pyfunc."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

InputSize = int | tuple[int, int] | None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float [1,3,H,W] in [0,1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got dtype {image.dtype} shape {image.shape}")
    return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def size_tuple(input_size: InputSize) -> tuple[int, int] | None:
    if input_size is None:
        return None
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input_size must be None, an int or (height, width) >= 1, got {input_size!r}")
    return size


def _probability(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    if logits.shape != (x.shape[0], 1, *x.shape[-2:]):
        raise ValueError(f"model output shape {tuple(logits.shape)}, expected {(x.shape[0], 1, *x.shape[-2:])}")
    return torch.sigmoid(logits.float())


@torch.no_grad()
def predict_probability(model: nn.Module, image: torch.Tensor, input_size: InputSize = None,
                        flip_tta: bool = False) -> torch.Tensor:
    """Blur probability [B,1,H,W] at the input's own resolution.

    With `input_size` (an int or (height, width)), the image is resized (bilinear, antialiased) to that size for
    the network and the map resized back bilinearly, so a model sees images at the scale it was trained on.
    With `flip_tta`, the maps of the image and of its mirror image (flipped back) are averaged.
    """
    height, width = image.shape[-2:]
    net_input = image
    size = size_tuple(input_size)
    if size is not None and (height, width) != size:
        net_input = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    prob = _probability(model, net_input)
    if flip_tta:
        prob = 0.5 * (prob + _probability(model, net_input.flip(-1)).flip(-1))
    if prob.shape[-2:] != (height, width):
        prob = F.interpolate(prob, size=(height, width), mode="bilinear", align_corners=False)
    return prob.clamp_(0.0, 1.0)
