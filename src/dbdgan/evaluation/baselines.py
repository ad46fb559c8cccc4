"""Reference maps scored by the same evaluator as the models: the floor a trained model must clear."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AllBlurred(nn.Module):
    """Predicts 'blurred' everywhere (sigmoid(12) > 0.99999)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 12.0)


class LaplacianSharpness(nn.Module):
    """Blur probability from local Laplacian energy: low high-frequency energy -> blurred.

    The energy is averaged over a window, log-compressed and rescaled per image to [0, 1]; no learning.
    """

    def __init__(self, window: int = 15) -> None:
        super().__init__()
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("kernel", kernel.view(1, 1, 3, 3))
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.mean(dim=1, keepdim=True)
        energy = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), self.kernel).square()
        energy = F.avg_pool2d(energy, self.window, stride=1, padding=self.window // 2, count_include_pad=False)
        sharp = torch.log1p(energy * 1e3)
        low = sharp.amin(dim=(2, 3), keepdim=True)
        high = sharp.amax(dim=(2, 3), keepdim=True)
        blur_prob = 1.0 - (sharp - low) / (high - low).clamp_min(1e-6)
        return torch.logit(blur_prob.clamp(1e-4, 1 - 1e-4))
