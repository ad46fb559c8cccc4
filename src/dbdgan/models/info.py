"""Torch helpers about a network: its parameters, device, FLOPs, weights size, and how to time its calls.

What a trained model costs as prediction runs it (all of these, on the prepared network, with the threads
and policy it ran with) is `dbdgan.inference.model_cost`: `dbdgan model-info` and the evaluate step call it.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a module with neither)."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; the model's previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, size: int | tuple[int, int], batch: int = 1) -> int:
    """FLOPs of one forward pass as FlopCounterMode counts them: 2 per multiply-add of conv/matmul-like ops
    (elementwise ops, activations and normalisation are not counted). MACs = FLOPs / 2."""
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(batch, 3, h, w, device=model_device(model))
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a checkpoint of the weights costs on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def timed_runs(fn: Callable[[], object], warmup: int, runs: int, budget_s: float | None = None) -> list[float]:
    """Seconds of each of `runs` (at least 1) timed calls after `warmup` untimed ones (the first pays for
    allocation and kernel selection).

    With `budget_s`, warm-up stops once it has taken that long, and so does timing (after at least one timed
    call): paper-sized networks stay quick to inspect.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
        fn()
    times: list[float] = []
    while len(times) < max(runs, 1) and (budget_s is None or not times or sum(times) < budget_s):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return times


def median_ms(fn: Callable[[], object], warmup: int, runs: int, budget_s: float | None = None) -> float:
    """Median milliseconds of `timed_runs`."""
    return statistics.median(timed_runs(fn, warmup, runs, budget_s)) * 1000.0


def measure_ms(model: nn.Module, batch: int, size: int | tuple[int, int], *, warmup: int, runs: int,
               budget_s: float | None = None) -> float:
    """Median wall time (ms) of a CPU forward pass in eval mode on a random [batch,3,H,W] input, after warm-up."""
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(batch, 3, h, w)
    with eval_mode(model), torch.inference_mode():
        return median_ms(lambda: model(x), warmup, runs, budget_s)
