"""Mixed precision: on CUDA bf16 where supported, else fp16 with a gradient scaler; on CPU bf16 when asked
(`cpu_bf16`: no scaler, bf16 has fp32's range). Weights and optimiser states stay fp32 either way."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn


class Precision:
    def __init__(self, device: torch.device, enabled: bool, cpu_bf16: bool = False) -> None:
        self.enabled = (enabled and device.type == "cuda") or (cpu_bf16 and device.type == "cpu")
        cuda_bf16 = device.type == "cuda" and self.enabled and torch.cuda.is_bf16_supported()
        self.dtype = torch.bfloat16 if cuda_bf16 or device.type == "cpu" else torch.float16
        self.device = device
        self._scalers: dict[str, torch.amp.GradScaler] = {}

    def autocast(self) -> AbstractContextManager:
        if not self.enabled:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _scaler(self, name: str) -> torch.amp.GradScaler:
        if name not in self._scalers:
            use_scaler = self.enabled and self.dtype == torch.float16
            self._scalers[name] = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        return self._scalers[name]

    def step(self, name: str, loss: torch.Tensor, optimizer: torch.optim.Optimizer, module: nn.Module,
             grad_clip: float | None) -> None:
        """Backward, optional gradient clipping (on unscaled grads) and the optimiser step."""
        scaler = self._scaler(name)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
