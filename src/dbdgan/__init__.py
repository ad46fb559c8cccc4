"""Distill-DBDGAN: defocus blur detection with an adversarial teacher and a distilled student."""

# First, before anything imports torch: the threading and allocator policy of every entry point.
from dbdgan import runtime_policy as _runtime_policy  # noqa: F401

__version__ = "0.1.0"
