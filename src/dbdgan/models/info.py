"""Size, cost and speed of a blur-map network: parameters, FLOPs (torch's counter) and CPU latency."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dbdgan import runtime_policy


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_info(
    model: nn.Module,
    size: int | tuple[int, int] = 320,
    batch: int = 1,
    latency_runs: int = 10,
    warmup: int = 3,
    seed: int = 0,
    max_latency_s: float = 30.0,
) -> dict[str, Any]:
    """Parameters, FLOPs of one forward pass of a [batch,3,H,W] input, and median CPU latency in eval mode.

    FLOPs come from torch.utils.flop_counter.FlopCounterMode (2 per multiply-add; convs, matmuls and
    attention, not elementwise ops). Latency is the median of up to `latency_runs` timed forwards after up
    to `warmup` untimed ones, with the current torch thread count; warm-up and timing each stop early once
    they have used `max_latency_s` (at least one timed run), so paper-sized models stay quick to inspect.
    `latency_runs=0` skips timing (None).
    """
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            with FlopCounterMode(display=False) as counter:
                model(x)
            flops = int(counter.get_total_flops())
            if latency_runs > 0:
                start = time.perf_counter()
                for _ in range(warmup):
                    if time.perf_counter() - start > max_latency_s:
                        break
                    model(x)
                while len(times) < latency_runs and (not times or sum(times) < max_latency_s * 1000.0):
                    t0 = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - t0) * 1000.0)
    finally:
        model.train(was_training)
    return {
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "params_mb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
        "flops": flops,
        "gflops": flops / 1e9,
        "input_shape": [batch, 3, h, w],
        "latency_ms_median": statistics.median(times) if times else None,
        "latency_runs": len(times),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": runtime_policy.omp_wait_policy(),
        "allocator": runtime_policy.allocator(),
    }
