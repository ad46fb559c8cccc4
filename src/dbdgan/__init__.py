"""Distill-DBDGAN: defocus blur detection with an adversarial teacher and a distilled student."""

__version__ = "0.1.0"
