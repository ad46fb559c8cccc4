"""The paper's student: EfficientNet encoder + U-Net decoder with transposed-conv up-sampling.

The input image is concatenated before the head so fine, full-resolution detail reaches the output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .blocks import DBDNet, DoubleConv, Encoder, MBConv, init_weights

# EfficientNet-B0 stages: (expand_ratio, kernel, stride, repeats, out_channels)
B0_STAGES = (
    (1, 3, 1, 1, 16),
    (6, 3, 2, 2, 24),
    (6, 5, 2, 2, 40),
    (6, 3, 2, 3, 80),
    (6, 5, 1, 3, 112),
    (6, 5, 2, 4, 192),
    (6, 3, 1, 1, 320),
)


def round_filters(channels: int, width_mult: float, divisor: int = 8) -> int:
    """EfficientNet width scaling: scale, round to a multiple of `divisor`, never drop by more than 10%."""
    scaled = channels * width_mult
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth_mult: float) -> int:
    """EfficientNet depth scaling: ceil(repeats * depth_mult)."""
    return int(math.ceil(repeats * depth_mult))


class EfficientNetEncoder(Encoder):
    """EfficientNet (MBConv + SE, SiLU) with timm key names (conv_stem, bn1, blocks.i.j, conv_head, bn2).

    Outputs the last block at each stride (2, 4, 8, 16) and the head conv at stride 32.
    """

    def __init__(
        self,
        width_mult: float,
        depth_mult: float,
        drop_path_rate: float,
        stem_channels: int = 32,
        head_channels: int = 1280,
    ) -> None:
        super().__init__()
        stem = round_filters(stem_channels, width_mult)
        self.conv_stem = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        specs = [
            (e, k, s, round_repeats(r, depth_mult), round_filters(c, width_mult))
            for e, k, s, r, c in B0_STAGES
        ]
        total = sum(r for *_, r, _ in specs)
        in_ch, stride, idx = stem, 2, 0
        stages: list[nn.Sequential] = []
        self._taps: list[int] = []  # stage index whose output is tapped, one per stride 2, 4, 8, 16
        self.out_strides, self.out_channels = [], []
        for si, (e, k, s, r, c) in enumerate(specs):
            blocks = []
            for j in range(r):
                blocks.append(MBConv(in_ch, c, k, s if j == 0 else 1, e, 0.25, drop_path_rate * idx / total))
                in_ch, idx = c, idx + 1
            stages.append(nn.Sequential(*blocks))
            stride *= s
            next_stride = specs[si + 1][2] if si + 1 < len(specs) else 2
            if next_stride == 2 and stride < 32:
                self._taps.append(si)
                self.out_strides.append(stride)
                self.out_channels.append(c)
        self.blocks = nn.Sequential(*stages)
        head = round_filters(head_channels, width_mult)
        self.conv_head = nn.Conv2d(in_ch, head, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head)
        self.out_strides.append(32)
        self.out_channels.append(head)

    conv_bn_pairs = (("conv_stem", "bn1"), ("conv_head", "bn2"))  # what fold_batchnorm may fold

    def forward(self, x: Tensor) -> list[Tensor]:
        x = torch.nn.functional.silu(self.bn1(self.conv_stem(x)))
        outs = []
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in self._taps:
                outs.append(x)
        outs.append(torch.nn.functional.silu(self.bn2(self.conv_head(x))))
        return outs


class EfficientUNetDecoder(nn.Module):
    """Per stage: ConvTranspose2d x2, concat the skip, double conv; the input is the last skip; 1x1 head."""

    def __init__(self, encoder_channels: list[int], channels: tuple[int, ...], drop_rate: float) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"efficientunet decoder_channels needs 5 entries, got {channels}")
        skips = list(reversed(encoder_channels[:-1])) + [3]  # strides 16, 8, 4, 2, then the input
        ins = [encoder_channels[-1]] + list(channels[:4])
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(i, o, 2, stride=2) for i, o in zip(ins, channels, strict=True)
        )
        self.convs = nn.ModuleList(DoubleConv(o + s, o) for o, s in zip(channels, skips, strict=True))
        self.dropout = nn.Dropout2d(drop_rate)
        self.head = nn.Conv2d(channels[-1], 1, 1)

    def forward(self, feats: list[Tensor], x: Tensor) -> Tensor:
        skips = list(reversed(feats[:-1])) + [x]
        y = feats[-1]
        for up, conv, skip in zip(self.ups, self.convs, skips, strict=True):
            y = conv(torch.cat([up(y), skip], dim=1))
        return self.head(self.dropout(y))


def build_efficientunet(
    *,
    width_mult: float = 1.2,
    depth_mult: float = 1.4,
    stem_channels: int = 32,
    head_channels: int = 1280,
    decoder_channels: tuple[int, ...] = (512, 256, 128, 64, 32),
    drop_path_rate: float = 0.2,
    drop_rate: float = 0.0,
) -> DBDNet:
    """EfficientUNet of any scale; the defaults are EfficientNet-B3 (width 1.2, depth 1.4)."""
    encoder = EfficientNetEncoder(width_mult, depth_mult, drop_path_rate, stem_channels, head_channels)
    decoder = EfficientUNetDecoder(encoder.out_channels, tuple(decoder_channels), drop_rate)
    init_weights(encoder)
    init_weights(decoder)
    return DBDNet(encoder, decoder, pad_multiple=32)


EFFICIENTUNET_PRESETS: dict[str, dict] = {
    "efficientunet_b3": {},
    "efficientunet_tiny": dict(
        width_mult=0.25,
        depth_mult=0.34,
        head_channels=256,
        decoder_channels=(32, 24, 16, 12, 8),
        drop_path_rate=0.0,
    ),
}
