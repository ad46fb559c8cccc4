"""Model files and training states: plain tensors and builtins only, so they load with weights_only=True."""

from __future__ import annotations

import hashlib
import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dbdgan.io_utils import atomic_torch_save

MODEL_FILE_VERSION = 1
_PACKAGE = Path(__file__).resolve().parent
# What each part of a resume key stands for, in the message that says why a checkpoint is not resumed.
_KEY_PARTS = {"inputs": "params, data, teacher or init weights", "epochs": "epochs (so the learning-rate schedule)",
              "code": "training code"}


def save_model_file(path: str | Path, arch: str, arch_kwargs: dict[str, Any], model: nn.Module,
                    metadata: dict[str, Any] | None = None) -> None:
    """A self-describing model file: the registry name and kwargs rebuild the network before loading weights."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format_version": MODEL_FILE_VERSION, "arch": arch, "arch_kwargs": dict(arch_kwargs),
                       "state_dict": state, "metadata": dict(metadata or {})}, path)


def read_model_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message is a page of advice around one line of reason
        raise ValueError(f"refusing to load model file {path}: it holds objects other than tensors and "
                         f"builtins ({_unpickling_reason(exc)})") from exc
    except Exception as exc:  # a truncated or foreign file: say which one
        raise ValueError(f"cannot read model file {path}: {_first_line(exc)}") from exc
    missing = {"arch", "arch_kwargs", "state_dict"} - set(payload) if isinstance(payload, dict) else {"arch"}
    if missing:
        raise ValueError(f"{path} is not a dbdgan model file (missing keys: {sorted(missing)})")
    for key, kind in (("arch", str), ("arch_kwargs", dict), ("state_dict", dict), ("metadata", dict)):
        if key in payload and not isinstance(payload[key], kind):
            raise ValueError(f"{path} is not a dbdgan model file ({key!r} is a {type(payload[key]).__name__}, "
                             f"expected a {kind.__name__})")
    return payload


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """The line of torch's weights-only refusal that names what the file holds (e.g. a blocked GLOBAL)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or [type(exc).__name__])[0]


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network named in the file and load its weights strictly; returned in eval mode."""
    return model_from_payload(read_model_file(path), path, device)


def model_from_payload(payload: dict[str, Any], path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The network of an already read model file (`path` only names it in errors)."""
    from dbdgan.models import create_model

    kwargs = {k: v for k, v in payload["arch_kwargs"].items() if k != "pretrained"}
    model = create_model(payload["arch"], **kwargs)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights in {path} do not fit {payload['arch']}: {exc}") from exc
    return model.to(device).eval()


def init_weights_from(model: nn.Module, arch: str, path: str | Path) -> None:
    """Start training from another run's weights (e.g. synthetic pre-training); the architecture must match."""
    payload = read_model_file(path)
    if payload["arch"] != arch:
        raise ValueError(f"init_from {path} holds a {payload['arch']!r} model, but this run trains {arch!r}")
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights in {path} do not fit {arch}: {exc}") from exc


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read training checkpoint {path}: {exc}") from exc


@lru_cache(maxsize=8)
def code_version(package: Path = _PACKAGE) -> str:
    """sha256 of the library's Python sources (paths and bytes): any module may change what a step computes.

    Computed once per process, so a run keeps the version it started with even if files change meanwhile.
    """
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def resume_key(inputs: str, epochs: int) -> dict[str, Any]:
    """What must be equal for a checkpoint to be resumed: the run would then be the same run."""
    return {"inputs": inputs, "epochs": int(epochs), "code": code_version()}


def resume_mismatch(saved: Any, current: dict[str, Any]) -> list[str]:
    """Why a checkpoint with key `saved` must not be resumed by a run with key `current` ([] = it may)."""
    if not isinstance(saved, dict):
        return ["checkpoint format (written by an older version)"]
    return [_KEY_PARTS.get(part, part) for part, value in current.items() if saved.get(part) != value]
