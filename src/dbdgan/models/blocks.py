"""Building blocks shared by the teacher, the students and the discriminators.

Attribute names inside the encoder blocks follow the layouts of the common public implementations
(Cadene's SE-ResNeXt, torchvision's MobileNetV2, timm's EfficientNet) so that a user who has such a
weights file can convert it to an encoder state_dict with little more than dropping the classifier.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad bottom/right by edge replication so H and W become multiples of `multiple`.

    Replication (not zeros) keeps the padded border statistically like the image, so it does not look
    like a sharp edge to the network; padding only bottom/right makes cropping back a plain slice.
    Always padding (even by 0) keeps the traced/ONNX graph valid for every input size.
    """
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % multiple, 0, (-h) % multiple), mode="replicate")


def crop_to(x: Tensor, height: int, width: int) -> Tensor:
    """Undo `pad_to_multiple`: keep the top-left `height` x `width` window."""
    return x[..., :height, :width]


def upsample2x(x: Tensor) -> Tensor:
    """Bilinear x2 up-sampling (align_corners=False, exports cleanly to ONNX)."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ConvBNAct(nn.Sequential):
    """Conv -> BatchNorm -> activation; keys `0`, `1` match torchvision's Conv2dNormActivation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, each with BN and ReLU: the cheap conv of the light decoders."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, 3, groups=in_channels),
            ConvBNAct(in_channels, out_channels, 1),
        )


class DoubleConv(nn.Sequential):
    """Two conv3x3-BN-ReLU: the classic U-Net decoder stage body."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNAct(in_channels, out_channels, 3), ConvBNAct(out_channels, out_channels, 3))


class SEModule(nn.Module):
    """Squeeze-excitation with 1x1 convs (Cadene naming `fc1`/`fc2`): channel re-weighting."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def gate(self, x: Tensor) -> Tensor:
        """The per-channel weights [B,C,1,1] in (0, 1)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)), inplace=True)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class SqueezeExcite(nn.Module):
    """EfficientNet flavour of SE (timm naming `conv_reduce`/`conv_expand`, SiLU inside)."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.conv_expand(F.silu(self.conv_reduce(s))))


class SEResNeXtBottleneck(nn.Module):
    """ResNeXt bottleneck (grouped 3x3, stride on the 3x3) with SE before the residual sum."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        groups: int,
        base_width: int,
        stride: int = 1,
        se_reduction: int = 16,
    ) -> None:
        super().__init__()
        width = (planes * base_width // 64) * groups
        if width <= 0:
            raise ValueError(f"bottleneck width is {width} for planes={planes}, base_width={base_width}")
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se_module = SEModule(out_channels, se_reduction)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        nn.init.zeros_(self.bn3.weight)  # residual branch starts as identity: trains well from scratch

    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))  # what fold_batchnorm may fold

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        # SE re-weighting and the residual sum in one pass over the activations: shortcut + out * gate
        return F.relu(torch.addcmul(shortcut, out, self.se_module.gate(out)), inplace=True)


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (ReLU6, linear bottleneck), torchvision key layout (`conv.N`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample (scaled to keep the expectation)."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow's "same" padding: output = ceil(input / stride), the extra pixel padded after.

    The EfficientNet-Lite weights were trained that way; PyTorch's symmetric padding shifts every stride-2
    layer by a pixel. The pad is computed from the input size with traced integer arithmetic (no Python
    branch), so it is right at any size, also in an exported ONNX graph.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 bias: bool = True) -> None:
        if kernel_size < stride:
            raise ValueError(f"same padding needs kernel_size >= stride, got {kernel_size} < {stride}")
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, groups=groups, bias=bias)

    def same_pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zeros that TF's "same" adds to an input of this size."""
        k, s = self.kernel_size[0], self.stride[0]
        pad_h = k - s + (-height) % s
        pad_w = k - s + (-width) % s
        return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if s == 1 and k % 2 == 1:  # "same" is symmetric then: the conv pads itself, no padded copy of x
            return F.conv2d(x, self.weight, self.bias, 1, k // 2, self.dilation, self.groups)
        return super().forward(F.pad(x, self.same_pads(x.shape[-2], x.shape[-1])))

    def conv2d_unpadded(self, x: Tensor) -> Tensor:
        """The convolution of an input that already carries its "same" padding."""
        return super().forward(x)


class MBConv(nn.Module):
    """EfficientNet MBConv (expand 1x1, depthwise kxk, SE, project 1x1), timm key layout.

    With expand_ratio 1 it is timm's DepthwiseSeparableConv (conv_dw, bn1, se, conv_pw, bn2). EfficientNet
    uses SiLU and SE; EfficientNet-Lite uses ReLU6, no SE (`se_ratio=0`) and "same" padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand_ratio: int,
        se_ratio: float = 0.25,
        drop_path_rate: float = 0.0,
        act: type[nn.Module] = nn.SiLU,
        same_padding: bool = False,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.expand = expand_ratio != 1
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_path_rate = drop_path_rate
        mid = in_channels * expand_ratio
        reduced = max(1, round(in_channels * se_ratio))
        if same_padding:
            depthwise = Conv2dSame(mid, mid, kernel_size, stride, groups=mid, bias=False)
        else:
            depthwise = nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid, bias=False)
        self.act = act(inplace=True) if act in (nn.ReLU, nn.ReLU6) else act()  # in place: one pass less
        if self.expand:
            self.conv_pw = nn.Conv2d(in_channels, mid, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid, eps=bn_eps)
            self.conv_dw = depthwise
            self.bn2 = nn.BatchNorm2d(mid, eps=bn_eps)
            self.se = SqueezeExcite(mid, reduced) if se_ratio > 0 else nn.Identity()
            self.conv_pwl = nn.Conv2d(mid, out_channels, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out_channels, eps=bn_eps)
        else:
            self.conv_dw = depthwise
            self.bn1 = nn.BatchNorm2d(in_channels, eps=bn_eps)
            self.se = SqueezeExcite(in_channels, reduced) if se_ratio > 0 else nn.Identity()
            self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_channels, eps=bn_eps)

    @property
    def conv_bn_pairs(self) -> tuple[tuple[str, str], ...]:
        """(conv, the batch norm right after it) names, for fold_batchnorm."""
        if self.expand:
            return ("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")
        return ("conv_dw", "bn1"), ("conv_pw", "bn2")

    def forward(self, x: Tensor) -> Tensor:
        if self.expand:
            if self._pads_before_expanding():
                out = self.act(self.bn2(self.conv_dw.conv2d_unpadded(self._expand_padded(x))))
            else:
                out = self.act(self.bn2(self.conv_dw(self.act(self.bn1(self.conv_pw(x))))))
            out = self.bn3(self.conv_pwl(self.se(out)))
        else:
            out = self.act(self.bn1(self.conv_dw(x)))
            out = self.bn2(self.conv_pw(self.se(out)))
        if self.has_skip:
            out = drop_path(out, self.drop_path_rate, self.training) + x
        return out

    def _pads_before_expanding(self) -> bool:
        """Under inference_mode (not tracing) through a padding depthwise conv: see `_expand_padded`."""
        return (isinstance(self.conv_dw, Conv2dSame) and self.conv_dw.stride[0] > 1
                and torch.is_inference_mode_enabled() and not torch.jit.is_tracing())

    def _expand_padded(self, x: Tensor) -> Tensor:
        """The expanded activations with the depthwise conv's "same" zeros around them, padded before expanding.

        The expansion (1x1 conv, BN, activation) is per pixel, so expanding the padded input and zeroing the
        border afterwards gives exactly the padded expansion, at 1/expand_ratio of the copy: the pad of the
        expanded tensor is the costliest memory pass of a stride-2 block. In-place zeroing would break
        autograd and does not export cleanly, hence only under inference_mode (what prediction runs in; FLOP
        counts, which run under no_grad, see the plain path).
        """
        left, right, top, bottom = self.conv_dw.same_pads(x.shape[-2], x.shape[-1])
        out = self.act(self.bn1(self.conv_pw(F.pad(x, (left, right, top, bottom)))))
        height, width = out.shape[-2:]
        out[..., :top, :] = 0
        out[..., height - bottom:, :] = 0
        out[..., :, :left] = 0
        out[..., :, width - right:] = 0
        return out


class DenseASPPUnit(nn.Sequential):
    """BN-ReLU-1x1 (to `mid`) then BN-ReLU-3x3 dilated (to `growth`), dropout: one DenseASPP layer."""

    def __init__(self, in_channels: int, mid: int, growth: int, dilation: int, dropout: float) -> None:
        super().__init__(
            OrderedDict(
                bn1=nn.BatchNorm2d(in_channels),
                relu1=nn.ReLU(inplace=False),
                conv1=nn.Conv2d(in_channels, mid, 1, bias=False),
                bn2=nn.BatchNorm2d(mid),
                relu2=nn.ReLU(inplace=True),
                conv2=nn.Conv2d(mid, growth, 3, padding=dilation, dilation=dilation, bias=False),
                drop=nn.Dropout2d(dropout),
            )
        )


class DenseASPP(nn.Module):
    """Densely connected atrous pyramid: each unit sees the input and all previous units' outputs.

    Output is the concatenation of the input and every unit output (in + len(dilations) * growth channels),
    giving a dense set of receptive fields on the deepest features.
    """

    def __init__(
        self,
        in_channels: int,
        mid: int,
        growth: int,
        dilations: tuple[int, ...] = (2, 4, 6, 8),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            DenseASPPUnit(in_channels + i * growth, mid, growth, d, dropout) for i, d in enumerate(dilations)
        )
        self.out_channels = in_channels + len(dilations) * growth

    def forward(self, x: Tensor) -> Tensor:
        feats = x
        for unit in self.units:
            feats = torch.cat([feats, unit(feats)], dim=1)
        return feats


class SelfAttention2d(nn.Module):
    """SAGAN non-local block: softmax(Q^T K) over positions, output gamma * attn(V) + x, gamma = 0 at init.

    gamma starting at 0 means the block is an identity at first and the network learns how much
    global context to mix in.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B, N, C'
        k = self.key(x).flatten(2)  # B, C', N
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # B, N(query), N(key)
        v = self.value(x).flatten(2)  # B, C, N
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return self.gamma * out + x


def init_weights(module: nn.Module) -> None:
    """Kaiming init for convs (the from-scratch default: no ImageNet weights offline).

    BatchNorm keeps PyTorch's defaults, so blocks that zero their last BN (residual branches) keep it.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """Base for encoders: forward returns features shallow-to-deep, as listed in out_strides/out_channels."""

    out_strides: list[int]
    out_channels: list[int]


class DBDNet(nn.Module):
    """Blur-map network: normalise, pad to the stride, encode, decode, crop back to the input size.

    The normalisation (mean/std of the encoder's pre-training, ImageNet's by default) lives in the network, so
    training, evaluation, predict, the pyfunc, serving and the ONNX file all see the same input: RGB in [0, 1].

    forward(x in [0,1], [B,3,H,W]) -> logits [B,1,H,W] for any H, W. `forward_with_features` also returns
    the encoder features keyed by stride (on the padded grid; the deeper one wins where two share a stride),
    which is what the feature constraint of distillation compares.
    """

    def __init__(self, encoder: Encoder, decoder: nn.Module, pad_multiple: int,
                 mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.pad_multiple = pad_multiple
        # the encoder's own input normalisation, part of the network: every caller feeds [0, 1] RGB
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.feature_channels: dict[int, int] = dict(
            zip(encoder.out_strides, encoder.out_channels, strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch [B,3,H,W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        x = pad_to_multiple((x - self.mean) / self.std, self.pad_multiple)
        feats = self.encoder(x)
        logits = self.decoder(feats, x)
        return crop_to(logits, h, w), dict(zip(self.encoder.out_strides, feats, strict=True))
