"""How expensive a model is: parameters, FLOPs, serialised size, CPU latency and throughput.

Timings depend on threads, OpenMP's wait policy and the memory allocator (see DESIGN.md, dbdgan.runtime_policy),
so the result records all three.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dbdgan import runtime_policy


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


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


def timed_runs(fn: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Seconds of each of `runs` (at least 1) timed calls after `warmup` untimed ones (the first pays for
    allocation and kernel selection)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_ms(fn: Callable[[], object], warmup: int, runs: int) -> float:
    return statistics.median(timed_runs(fn, warmup, runs)) * 1000.0


def measure_ms(model: nn.Module, batch: int, size: int | tuple[int, int], *, warmup: int, runs: int) -> float:
    """Median wall time (ms) of a CPU forward pass on a random [batch,3,size,size] input, after warm-up."""
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(batch, 3, h, w)
    with eval_mode(model), torch.inference_mode():
        return median_ms(lambda: model(x), warmup, runs)


def model_efficiency(
    model: nn.Module,
    *,
    size: int = 320,
    warmup: int = 2,
    runs: int = 10,
    throughput_batch: int = 8,
    throughput_runs: int = 3,
) -> dict[str, float | int | str]:
    """Parameters, FLOPs (batch 1), size, CPU latency (batch 1) and throughput (batch ``throughput_batch``).

    Parameters, FLOPs and size are the model's; the timings are of the network as prediction runs it on a
    CPU (``inference.prepare_network``: batch norm folded, channels-last), so the caller's model is left as it
    was. Latency is the median of ``runs`` timed passes after ``warmup`` untimed ones; throughput = batch /
    median batch time; ``gflop_s_b1`` = FLOPs / latency.
    """
    from dbdgan.inference import prepare_network

    cpu_model = model if model_device(model).type == "cpu" else _cpu_copy(model)
    flops = count_flops(cpu_model, size)
    n_bytes = state_dict_bytes(cpu_model)
    fast = prepare_network(cpu_model)
    latency = measure_ms(fast, 1, size, warmup=warmup, runs=runs)
    batch_ms = measure_ms(fast, throughput_batch, size, warmup=warmup, runs=throughput_runs)
    return {
        "params": count_parameters(cpu_model),
        "params_m": count_parameters(cpu_model) / 1e6,
        "flops": flops,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
        "size_bytes": n_bytes,
        "size_mb": n_bytes / 1e6,
        "input_size": size,
        "latency_ms_b1": latency,
        "gflop_s_b1": flops / 1e6 / latency,
        "throughput_batch": throughput_batch,
        "throughput_img_s": throughput_batch * 1000.0 / batch_ms,
        **runtime_policy.describe(),
    }


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a module with neither)."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _cpu_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; the model's previous train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
