"""Conditional discriminators D1/D2/D3: judge a blur map given its image.

"patch": PatchGAN (one logit per receptive-field patch). "unet": per-pixel hourglass (one logit per pixel).
Spectral normalisation on every conv by default, with no normalisation layers (the usual SN-GAN setup);
without it, PatchGAN uses InstanceNorm (batch statistics are unreliable at the small batches used here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .blocks import crop_to, pad_to_multiple, upsample2x


def _conv_factory(use_sn: bool) -> Callable[..., nn.Module]:
    def make(*args: Any, **kwargs: Any) -> nn.Module:
        conv = nn.Conv2d(*args, **kwargs)
        return _spectral_norm(conv) if use_sn else conv

    return make


class _ConditionalInput(nn.Module):
    """Shared input handling: check shapes, concatenate image and map, rescale [0,1] -> [-1,1]."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        self.in_channels = in_channels

    def forward(self, image: Tensor, prob_map: Tensor) -> Tensor:
        if prob_map.ndim != 4 or image.ndim != 4 or image.shape[-2:] != prob_map.shape[-2:]:
            raise ValueError(
                f"discriminator needs image [B,C,H,W] and map [B,1,H,W] of the same size, got "
                f"{tuple(image.shape)} and {tuple(prob_map.shape)}"
            )
        x = prob_map if self.in_channels == prob_map.shape[1] else torch.cat([image, prob_map], dim=1)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"discriminator built for in_channels={self.in_channels} got image {tuple(image.shape)} and "
                f"map {tuple(prob_map.shape)} ({x.shape[1]} channels)"
            )
        return x * 2.0 - 1.0


class PatchDiscriminator(nn.Module):
    """pix2pix-style PatchGAN: n_layers stride-2 4x4 convs, then two stride-1 4x4 convs to one logit map."""

    def __init__(
        self, in_channels: int = 4, width: int = 64, n_layers: int = 3, spectral_norm: bool = True
    ) -> None:
        super().__init__()
        conv = _conv_factory(spectral_norm)

        def norm(c: int) -> nn.Module:
            return nn.Identity() if spectral_norm else nn.InstanceNorm2d(c, affine=True)

        self.input = _ConditionalInput(in_channels)
        self.min_size = 3 * 2**n_layers  # smallest input that still leaves a 1x1 logit map
        layers: list[nn.Module] = [conv(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for i in range(1, n_layers):
            out = width * min(2**i, 8)
            layers += [conv(ch, out, 4, 2, 1), norm(out), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        out = width * min(2**n_layers, 8)
        layers += [conv(ch, out, 4, 1, 1), norm(out), nn.LeakyReLU(0.2, inplace=True), conv(out, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, image: Tensor, prob_map: Tensor) -> Tensor:
        x = self.input(image, prob_map)
        h, w = x.shape[-2:]
        if h < self.min_size or w < self.min_size:
            pad_h, pad_w = max(0, self.min_size - h), max(0, self.min_size - w)
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.net(x)


class UNetDiscriminator(nn.Module):
    """Per-pixel hourglass discriminator: strided encoder, bilinear decoder with skips, full-size logits."""

    def __init__(
        self, in_channels: int = 4, width: int = 64, n_layers: int = 3, spectral_norm: bool = True
    ) -> None:
        super().__init__()
        conv = _conv_factory(spectral_norm)
        self.input = _ConditionalInput(in_channels)
        self.multiple = 2**n_layers
        widths = [width * min(2**i, 8) for i in range(n_layers + 1)]
        self.stem = conv(in_channels, widths[0], 3, 1, 1)
        self.down = nn.ModuleList(conv(widths[i], widths[i + 1], 4, 2, 1) for i in range(n_layers))
        self.up = nn.ModuleList(
            conv(widths[i + 1] + widths[i], widths[i], 3, 1, 1) for i in reversed(range(n_layers))
        )
        self.head = conv(widths[0], 1, 1)
        self.act = nn.LeakyReLU(0.2, inplace=False)

    def forward(self, image: Tensor, prob_map: Tensor) -> Tensor:
        x = self.input(image, prob_map)
        h, w = x.shape[-2:]
        y = self.act(self.stem(pad_to_multiple(x, self.multiple)))
        skips = []
        for down in self.down:
            skips.append(y)
            y = self.act(down(y))
        for up, skip in zip(self.up, reversed(skips), strict=True):
            y = self.act(up(torch.cat([upsample2x(y), skip], dim=1)))
        return crop_to(self.head(y), h, w)


DISCRIMINATORS: dict[str, type[nn.Module]] = {"patch": PatchDiscriminator, "unet": UNetDiscriminator}


def create_discriminator(
    kind: str = "patch", in_channels: int = 4, width: int = 64, n_layers: int = 3, spectral_norm: bool = True
) -> nn.Module:
    """Build a conditional discriminator; forward(image [B,3,H,W], prob_map [B,1,H,W]) -> logits [B,1,h,w].

    Both inputs are in [0, 1] (the raw image, not mean/std normalised). in_channels = 3 + 1 conditions on
    the image; in_channels = 1 judges the map alone. "unet" returns h, w = H, W; "patch" about
    H / 2**n_layers - 2 (inputs smaller than 3 * 2**n_layers are edge-padded up to that).
    """
    if kind not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator kind {kind!r}; choose one of {sorted(DISCRIMINATORS)}")
    if width < 1 or n_layers < 1:
        raise ValueError(
            f"discriminator width and n_layers must be >= 1, got width={width}, n_layers={n_layers}"
        )
    return DISCRIMINATORS[kind](
        in_channels=in_channels, width=width, n_layers=n_layers, spectral_norm=spectral_norm
    )
