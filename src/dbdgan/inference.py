"""Photo in, blur map out: the one prediction path shared by evaluation, `dbdgan predict` and the MLflow pyfunc."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float [1,3,H,W] in [0,1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 RGB array, got dtype {image.dtype} shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


@torch.no_grad()
def predict_probability(model: nn.Module, image: torch.Tensor, input_size: int | None = None,
                        flip_tta: bool = False) -> torch.Tensor:
    """Blur probability [B,1,H,W] at the input's own resolution.

    With `input_size`, the image is resized (bilinear, antialiased) to that square size for the network and the
    map resized back bilinearly, so a model sees images at the scale it was trained on.
    """
    height, width = image.shape[-2:]
    net_input = image
    if input_size is not None and (height, width) != (input_size, input_size):
        net_input = F.interpolate(image, size=(input_size, input_size), mode="bilinear", align_corners=False,
                                  antialias=True)
    prob = torch.sigmoid(model(net_input).float())
    if flip_tta:
        prob = 0.5 * (prob + torch.sigmoid(model(net_input.flip(-1)).float()).flip(-1))
    if prob.shape[-2:] != (height, width):
        prob = F.interpolate(prob, size=(height, width), mode="bilinear", align_corners=False)
    return prob.clamp_(0.0, 1.0)
