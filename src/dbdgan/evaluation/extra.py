"""Datasets that `evaluate` scores beside the main split, e.g. SZU-BD for a CUHK-trained model.

Where they are is a step argument (`dbdgan evaluate --extra szu=PATH`), never a param: params hold
hyperparameters only. Each is read whole through the readers `prepare` uses, its masks normalised to
1 = blurred, and its numbers go under `<label>.` beside the main ones (`szu.infocus_max_f`, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dbdgan.data.readers import SOURCES  # standard library only: dbdgan.graph imports this module

SYNTAX = "LABEL=[LAYOUT:[POLARITY:]]PATH"
EXTRA_DIR = "extra"  # <out>/extra/<label>/: the evaluate step's files of each extra dataset
_LABEL = re.compile(r"^[a-z][a-z0-9_-]*$")
# Keys of a model's scores that a label would collide with: the splits (evaluate.extra_splits uses them) and
# the groups the evaluate step itself writes.
RESERVED_LABELS = frozenset({"train", "val", "test", "settings", "efficiency", "onnx", "int8_delta", "model"})


@dataclass(frozen=True)
class ExtraDataset:
    """A raw dataset folder scored whole beside the main split."""

    label: str  # prefix of its numbers and its folder `<out>/extra/<label>/`
    layout: str  # a reader of dbdgan.data.readers.SOURCES
    path: Path
    polarity: str | None = None  # None: the layout's own convention

    def __post_init__(self) -> None:
        from dbdgan.data.imageio import POLARITIES

        if not _LABEL.match(self.label) or self.label in RESERVED_LABELS:
            raise ValueError(f"extra dataset label {self.label!r} must match {_LABEL.pattern} and not be one of "
                             f"{sorted(RESERVED_LABELS)}")
        if self.layout not in SOURCES:
            raise ValueError(f"extra dataset {self.label!r}: unknown layout {self.layout!r}; "
                             f"expected one of {sorted(SOURCES)}")
        if self.polarity is not None and self.polarity not in POLARITIES:
            raise ValueError(f"extra dataset {self.label!r}: polarity must be one of {POLARITIES}, "
                             f"got {self.polarity!r}")
        if (self.polarity or SOURCES[self.layout].polarity) is None:
            raise ValueError(f"extra dataset {self.label!r}: layout {self.layout!r} needs a polarity "
                             f"({SYNTAX}, e.g. {self.label}={self.layout}:blurred-white:{self.path})")

    def spec(self) -> str:
        """The `--extra` argument that reads back as this dataset (layout and polarity spelled out)."""
        polarity = f"{self.polarity}:" if self.polarity else ""
        return f"{self.label}={self.layout}:{polarity}{self.path}"


def parse_extra(text: str) -> ExtraDataset:
    """`LABEL=[LAYOUT:[POLARITY:]]PATH`: the layout defaults to the label (`szu=PATH` reads SZU-BD's layout).

    A leading `LAYOUT:` or `POLARITY:` counts only when it names one, so a PATH may hold colons.
    """
    from dbdgan.data.imageio import POLARITIES

    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise ValueError(f"--extra {text!r}: expected {SYNTAX}, e.g. szu=data/SZU-BD or "
                         "mine=folder:sharp-white:data/mine")
    layout, polarity = None, None
    head, sep, tail = rest.partition(":")
    if sep and head in SOURCES:
        layout, rest = head, tail
        head, sep, tail = rest.partition(":")
        if sep and head in POLARITIES:
            polarity, rest = head, tail
    if layout is None:
        if label not in SOURCES:
            raise ValueError(f"--extra {text!r}: label {label!r} is no layout, so name one: "
                             f"{label}=LAYOUT:{rest} with LAYOUT one of {sorted(SOURCES)}")
        layout = label
    return ExtraDataset(label, layout, Path(rest), polarity)
