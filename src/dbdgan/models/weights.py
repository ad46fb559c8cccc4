"""Reading weight files safely (`weights_only=True`) and loading them strictly, with errors that name the keys."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

_MAX_LISTED = 10


class PretrainedWeightsError(ValueError):
    """A weights file does not fit the network (missing/unexpected keys or wrong shapes), or cannot be had."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state_dict from a file; nothing but tensors is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    return dict(state)


def _listed(items: list[str]) -> str:
    more = f" ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str,
                unused_prefixes: Iterable[str] = ()) -> None:
    """Load `state` into `module`: every key present, no extras, same shapes, or an error naming them.

    Keys starting with one of `unused_prefixes` (a classifier the blur-map network leaves out) are dropped.
    """
    prefixes = tuple(unused_prefixes)
    state = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatch(es): {_listed(shapes)}")
        raise PretrainedWeightsError(
            f"pretrained weights {source} do not fit the {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)
