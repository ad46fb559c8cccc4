"""Networks of Distill-DBDGAN: teacher, students (EfficientUNet, mobile), discriminators, registry, info."""

from .blocks import DBDNet
from .discriminators import create_discriminator
from .info import count_parameters
from .registry import PretrainedWeightsError, create_model, list_models, load_encoder_weights, register_model

__all__ = [
    "DBDNet",
    "PretrainedWeightsError",
    "count_parameters",
    "create_discriminator",
    "create_model",
    "list_models",
    "load_encoder_weights",
    "register_model",
]
