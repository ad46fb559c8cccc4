"""Distill-DBDGAN teacher: SE-ResNeXt encoder (no stem max-pool), DenseASPP + self-attention, U-Net."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from .blocks import (
    DBDNet,
    DenseASPP,
    Encoder,
    SelfAttention2d,
    SEResNeXtBottleneck,
    init_weights,
    upsample2x,
)
from .efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite


class SEResNeXtEncoder(Encoder):
    """SE-ResNeXt with the stem max-pool removed, so everything runs at twice the usual resolution.

    Outputs (strides): stem (2), layer1 (2), layer2 (4), layer3 (8), layer4 (16). Key names follow
    Cadene's `se_resnext101_32x4d` (layer0.conv1, layer1.0.se_module.fc1, ...), minus `last_linear`.
    """

    def __init__(
        self,
        stem_channels: int,
        stem_kernel: int,
        planes: tuple[int, ...],
        layers: tuple[int, ...],
        groups: int,
        base_width: int,
        se_reduction: int,
    ) -> None:
        super().__init__()
        if len(planes) != 4 or len(layers) != 4:
            raise ValueError(f"planes and layers need 4 entries, got planes={planes}, layers={layers}")
        self.layer0 = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(3, stem_channels, stem_kernel, 2, stem_kernel // 2, bias=False),
                bn1=nn.BatchNorm2d(stem_channels),
                relu1=nn.ReLU(inplace=True),
            )
        )
        in_ch = stem_channels
        stages = []
        for i, (p, n) in enumerate(zip(planes, layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(SEResNeXtBottleneck(in_ch, p, groups, base_width, stride, se_reduction))
                in_ch = p * SEResNeXtBottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_strides = [2, 2, 4, 8, 16]
        self.out_channels = [stem_channels] + [p * SEResNeXtBottleneck.expansion for p in planes]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = [self.layer0(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            outs.append(layer(outs[-1]))
        return outs


class ContextBlock(nn.Module):
    """DenseASPP (multi-scale) and self-attention (non-local) in parallel, outputs concatenated."""

    def __init__(
        self, channels: int, aspp_mid: int, aspp_growth: int, dilations: tuple[int, ...], aspp_dropout: float
    ) -> None:
        super().__init__()
        self.aspp = DenseASPP(channels, aspp_mid, aspp_growth, dilations, aspp_dropout)
        self.attention = SelfAttention2d(channels)
        self.out_channels = self.aspp.out_channels + channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.aspp(x), self.attention(x)], dim=1)


class TeacherDecoder(nn.Module):
    """U-Net decoder: per stage conv3x3-BN-ReLU, bilinear x2, concat the encoder skips; dropout; 1x1 head.

    The context features of the deepest stride are brought back to stride 1 by one stage per x2; after each
    up-sampling the encoder features at the new stride (all of them, concatenated) join; a last conv stage
    runs at stride 1. The SE-ResNeXt (strides 2, 2, 4, 8, 16) takes 5 stages, an EfficientNet-Lite (2-32) 6.
    """

    def __init__(self, encoder_strides: list[int], encoder_channels: list[int], context: ContextBlock,
                 channels: tuple[int, ...], drop_rate: float) -> None:
        super().__init__()
        deepest = encoder_strides[-1]
        self.ups = int(math.log2(deepest))
        if 2**self.ups != deepest or len(channels) != self.ups + 1:
            raise ValueError(f"teacher decoder_channels needs {self.ups + 1} entries for an encoder of stride "
                             f"{deepest}, got {channels}")
        self.skip_strides = [deepest // 2 ** (i + 1) for i in range(self.ups)]
        skip_channels = [sum(c for s, c in zip(encoder_strides[:-1], encoder_channels[:-1], strict=True) if s == t)
                         for t in self.skip_strides]
        self.context = context
        ins = [context.out_channels] + [c + s for c, s in zip(channels[:-1], skip_channels, strict=True)]
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(ins[i], channels[i], 3, padding=1, bias=False),
                nn.BatchNorm2d(channels[i]),
                nn.ReLU(inplace=True),
            )
            for i in range(len(channels))
        )
        self.dropout = nn.Dropout2d(drop_rate)
        self.head = nn.Conv2d(channels[-1], 1, 1)
        self._strides = list(encoder_strides)

    def forward(self, feats: list[Tensor], x: Tensor) -> Tensor:
        y = self.context(feats[-1])
        for stage, stride in zip(self.stages[:-1], self.skip_strides, strict=True):
            y = upsample2x(stage(y))
            skips = [f for f, s in zip(feats[:-1], self._strides[:-1], strict=True) if s == stride]
            if skips:
                y = torch.cat([y, *skips], dim=1)
        y = self.stages[-1](y)
        return self.head(self.dropout(y))


def build_teacher(
    *,
    stem_channels: int = 64,
    stem_kernel: int = 7,
    planes: tuple[int, ...] = (64, 128, 256, 512),
    layers: tuple[int, ...] = (3, 4, 23, 3),
    groups: int = 32,
    base_width: int = 4,
    se_reduction: int = 16,
    aspp_mid: int = 1024,
    aspp_growth: int = 128,
    aspp_dilations: tuple[int, ...] = (2, 4, 6, 8),
    aspp_dropout: float = 0.1,
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    drop_rate: float = 0.2,
) -> DBDNet:
    """Teacher of any width/depth; the defaults are the paper's SE-ResNeXt-101 32x4d layout."""
    encoder = SEResNeXtEncoder(
        stem_channels, stem_kernel, tuple(planes), tuple(layers), groups, base_width, se_reduction
    )
    context = ContextBlock(
        encoder.out_channels[-1], aspp_mid, aspp_growth, tuple(aspp_dilations), aspp_dropout
    )
    decoder = TeacherDecoder(encoder.out_strides, encoder.out_channels, context, tuple(decoder_channels), drop_rate)
    init_weights(encoder)
    init_weights(decoder)
    return DBDNet(encoder, decoder, pad_multiple=16)


TEACHER_PRESETS: dict[str, dict] = {
    # SE-ResNeXt-101 32x4d: ~80 M parameters with the context block and decoder.
    "teacher_paper": {},
    # CPU-sized: a few million parameters, same topology.
    "teacher_small": dict(
        stem_channels=32,
        stem_kernel=3,
        planes=(16, 32, 64, 128),
        layers=(2, 2, 3, 2),
        groups=8,
        base_width=8,
        se_reduction=8,
        aspp_mid=128,
        aspp_growth=32,
        decoder_channels=(96, 64, 32, 16, 16),
    ),
    # Tests and the default CPU pipeline at 64-96 px.
    "teacher_tiny": dict(
        stem_channels=16,
        stem_kernel=3,
        planes=(8, 16, 24, 32),
        layers=(1, 1, 1, 1),
        groups=4,
        base_width=16,
        se_reduction=8,
        aspp_mid=32,
        aspp_growth=16,
        decoder_channels=(32, 24, 16, 8, 8),
    ),
}


def build_lite_teacher(
    *,
    variant: str = "lite2",
    drop_path_rate: float = 0.1,
    aspp_mid: int = 256,
    aspp_growth: int = 64,
    aspp_dilations: tuple[int, ...] = (1, 2, 3, 4),
    aspp_dropout: float = 0.1,
    decoder_channels: tuple[int, ...] = (160, 128, 96, 64, 32, 16),
    drop_rate: float = 0.2,
) -> DBDNet:
    """The paper's teacher structure (DenseASPP + self-attention, U-Net) on an ImageNet EfficientNet-Lite.

    The context block runs at stride 32 here (16 in the paper's SE-ResNeXt), so the dilations are halved.
    """
    encoder = EfficientNetLite(variant, drop_path_rate)
    context = ContextBlock(encoder.out_channels[-1], aspp_mid, aspp_growth, tuple(aspp_dilations), aspp_dropout)
    decoder = TeacherDecoder(encoder.out_strides, encoder.out_channels, context, tuple(decoder_channels), drop_rate)
    init_weights(encoder)
    init_weights(decoder)
    return DBDNet(encoder, decoder, pad_multiple=32, mean=LITE_MEAN, std=LITE_STD)


LITE_TEACHER_PRESETS: dict[str, dict] = {
    # CPU teacher on the ImageNet EfficientNet-Lite2 (pretrained: true in params)
    "teacher_lite2": {},
    # tests: the same structure on Lite0 with a narrow decoder
    "teacher_lite_tiny": dict(variant="lite0", aspp_mid=32, aspp_growth=16, decoder_channels=(32, 24, 16, 12, 8, 8)),
}
