"""Where a run executes: device, seeds, determinism and the torchrun process group."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def use_cuda(self) -> bool:
        return self.device.type == "cuda"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA when present, so one command works on a laptop and a GPU node."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch.cuda.is_available() is False")
    return torch.device("cuda", local_rank)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def init_runtime(device_name: str) -> Runtime:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU).

    Denormal floats are flushed to zero: small adversarial gradients otherwise make CPU training many times slower.
    """
    torch.set_flush_denormal(True)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` in `nproc` processes of one process group, as `torchrun --standalone
    --nproc_per_node=N` would start them; returns rank 0's result. nproc 1: in this process.

    For a step that holds N GPUs (a Kubernetes pod with an accelerator limit of N): each rank takes one
    (LOCAL_RANK) and `init_runtime` joins the group (NCCL on GPU, gloo on CPU). `fn` must be importable by
    name (the workers are spawned), its arguments picklable.
    """
    if nproc <= 1:
        return fn(*args, **kwargs)
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    results = elastic_launch(config, _call)(fn, args, kwargs)
    return results[0]


def _call(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """The workers' entry point (torch's launcher names its workers after a plain function)."""
    return fn(*args, **kwargs)
