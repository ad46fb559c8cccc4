"""Mobile-class student: MobileNetV2 inverted residual encoder + light depthwise-separable U-Net decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import ConvBNAct, DBDNet, DepthwiseSeparable, Encoder, InvertedResidual, init_weights, upsample2x
from .efficientnet_lite import LITE_MEAN, LITE_STD, EfficientNetLite

# MobileNetV2 settings: (expand_ratio, out_channels, repeats, stride)
V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of `divisor` without dropping more than 10% (MobileNet rule)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class MobileNetV2Encoder(Encoder):
    """MobileNetV2 feature trunk in torchvision's key layout (`features.N`), without the 1280-ch last conv.

    Outputs the last block at strides 2, 4, 8, 16 and 32. `depth_mult` < 1 trims repeats for tiny presets.
    """

    def __init__(self, width_mult: float, depth_mult: float = 1.0, expand_ratio: int = 6) -> None:
        super().__init__()
        in_ch = make_divisible(32 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(3, in_ch, 3, 2, act=nn.ReLU6)]
        self.out_strides, self.out_channels = [], []
        self._taps: list[int] = []
        stride = 2
        for i, (t, c, n, s) in enumerate(V2_SETTINGS):
            out_ch = make_divisible(c * width_mult)
            repeats = max(1, round(n * depth_mult))
            for j in range(repeats):
                layers.append(
                    InvertedResidual(in_ch, out_ch, s if j == 0 else 1, t if t == 1 else expand_ratio)
                )
                in_ch = out_ch
            stride *= s
            last_at_stride = i + 1 == len(V2_SETTINGS) or V2_SETTINGS[i + 1][3] == 2
            if last_at_stride:
                self._taps.append(len(layers) - 1)
                self.out_strides.append(stride)
                self.out_channels.append(out_ch)
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                outs.append(x)
        return outs


class LightDecoder(nn.Module):
    """Per stage: bilinear x2, concat the skip, depthwise-separable conv; input concat at full resolution.

    Depthwise-separable convs keep the decoder a small fraction of the FLOPs even at stride 2 and 1;
    `full_convs` stages (counted from the deepest) use a full 3x3 conv instead, where resolution is low.
    With 4 `channels` the decoder stops at stride 2 and the logits are up-sampled: the full-resolution stage
    is the costliest part of a light decoder on a CPU (memory-bound), and defocus maps are smooth at that scale.
    """

    def __init__(self, encoder_channels: list[int], channels: tuple[int, ...], drop_rate: float,
                 full_convs: int = 0) -> None:
        super().__init__()
        if len(channels) not in (4, 5):
            raise ValueError(f"mobile decoder_channels needs 5 entries (4 to stop at stride 2), got {channels}")
        skips = (list(reversed(encoder_channels[:-1])) + [3])[: len(channels)]  # strides 16, 8, 4, 2, input
        ins = [encoder_channels[-1]] + list(channels[:-1])
        self.convs = nn.ModuleList(
            ConvBNAct(i + s, o, 3) if k < full_convs else DepthwiseSeparable(i + s, o)
            for k, (i, s, o) in enumerate(zip(ins, skips, channels, strict=True))
        )
        self.dropout = nn.Dropout2d(drop_rate)
        self.head = nn.Conv2d(channels[-1], 1, 1)

    def forward(self, feats: list[Tensor], x: Tensor) -> Tensor:
        skips = list(reversed(feats[:-1])) + [x]
        y = feats[-1]
        for conv, skip in zip(self.convs, skips, strict=False):
            y = conv(torch.cat([upsample2x(y), skip], dim=1))
        logits = self.head(self.dropout(y))
        return logits if len(self.convs) == 5 else upsample2x(logits)


def build_mobile(
    *,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    expand_ratio: int = 6,
    decoder_channels: tuple[int, ...] = (128, 96, 64, 48, 32),
    drop_rate: float = 0.0,
) -> DBDNet:
    """MobileNetV2 U-Net; the defaults are the full-width MobileNetV2 trunk."""
    encoder = MobileNetV2Encoder(width_mult, depth_mult, expand_ratio)
    decoder = LightDecoder(encoder.out_channels, tuple(decoder_channels), drop_rate)
    init_weights(encoder)
    init_weights(decoder)
    return DBDNet(encoder, decoder, pad_multiple=32)


MOBILE_PRESETS: dict[str, dict] = {
    "mobile": {},
    "mobile_small": dict(width_mult=0.5, decoder_channels=(48, 32, 24, 16, 12)),
    "mobile_tiny": dict(
        width_mult=0.35, depth_mult=0.5, expand_ratio=4, decoder_channels=(32, 24, 16, 12, 8)
    ),
}


def build_lite_student(
    *,
    variant: str = "lite0",
    drop_path_rate: float = 0.1,
    decoder_channels: tuple[int, ...] = (96, 64, 48, 32),
    full_convs: int = 1,
    drop_rate: float = 0.0,
) -> DBDNet:
    """Phone-class student: an ImageNet EfficientNet-Lite encoder and the light U-Net decoder.

    The default stops at stride 2, with a full 3x3 conv at stride 16 only: 2.0 GFLOPs at 320x320, a third of
    its teacher's; a full-resolution depthwise stage alone would add ~60 ms on one CPU thread.
    """
    encoder = EfficientNetLite(variant, drop_path_rate)
    decoder = LightDecoder(encoder.out_channels, tuple(decoder_channels), drop_rate, full_convs)
    init_weights(encoder)
    init_weights(decoder)
    return DBDNet(encoder, decoder, pad_multiple=32, mean=LITE_MEAN, std=LITE_STD)


LITE_STUDENT_PRESETS: dict[str, dict] = {
    "lite0_unet": {},
    "lite_unet_tiny": dict(decoder_channels=(32, 24, 16, 12, 8), full_convs=0),
}
