"""Model registry (timm-like): presets by name, keyword overrides, optional local encoder weights."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .blocks import DBDNet
from .efficientunet import EFFICIENTUNET_PRESETS, build_efficientunet
from .mobile import MOBILE_PRESETS, build_mobile
from .teacher import TEACHER_PRESETS, build_teacher

ModelFactory = Callable[..., DBDNet]
_MODELS: dict[str, ModelFactory] = {}
_MAX_LISTED = 10


class PretrainedWeightsError(ValueError):
    """A local weights file does not fit the encoder (missing/unexpected keys or wrong shapes)."""


def register_model(fn: ModelFactory | None = None, *, name: str | None = None) -> Any:
    """Register a factory under `name` (default: the function's name). Usable as @register_model."""

    def add(factory: ModelFactory) -> ModelFactory:
        key = name or factory.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = factory
        return factory

    return add(fn) if fn is not None else add


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return sorted(_MODELS)


def _preset_factory(name: str, builder: ModelFactory, defaults: dict[str, Any]) -> ModelFactory:
    allowed = sorted(inspect.signature(builder).parameters)

    def factory(**overrides: Any) -> DBDNet:
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ValueError(
                f"model {name!r} does not accept {unknown}; it accepts {allowed} (and pretrained)"
            )
        return builder(**{**defaults, **overrides})

    factory.__name__ = name
    factory.__doc__ = f"{name}: {builder.__doc__}"
    return factory


for _presets, _builder in (
    (TEACHER_PRESETS, build_teacher),
    (EFFICIENTUNET_PRESETS, build_efficientunet),
    (MOBILE_PRESETS, build_mobile),
):
    for _name, _defaults in _presets.items():
        register_model(_preset_factory(_name, _builder, _defaults), name=_name)


def create_model(name: str, *, pretrained: str | Path | None = None, **kwargs: Any) -> DBDNet:
    """Build a registered model; kwargs override the preset; `pretrained` loads a local encoder state_dict.

    The returned model carries `arch` (the name) and `arch_kwargs` (the overrides, without `pretrained`) so
    a checkpoint can rebuild it.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")
    model = _MODELS[name](**kwargs)
    if pretrained is not None:
        load_encoder_weights(model.encoder, pretrained)
    model.arch = name
    model.arch_kwargs = dict(kwargs)
    return model


def _listed(items: list[str]) -> str:
    more = f" ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state_dict file into `encoder`, strictly: every key present, no extras, same shapes.

    The file holds `model.encoder.state_dict()` (keys without an `encoder.` prefix). Nothing is downloaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise PretrainedWeightsError(f"cannot read pretrained encoder weights {path}: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} is not a state_dict (a mapping of parameter names to tensors)")
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} shape mismatch(es): {_listed(shapes)}")
        raise PretrainedWeightsError(
            f"pretrained encoder weights {path} do not fit the {type(encoder).__name__}: "
            + "; ".join(problems)
        )
    encoder.load_state_dict(state, strict=True)
