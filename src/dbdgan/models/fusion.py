"""Inference copies of a network: batch norm folded into the convolution before it, channels-last memory.

At inference a batch norm is a fixed per-channel affine map, so after a convolution it can live in that
convolution's weights and bias: one full pass over the activations less per batch norm. Channels-last lets
oneDNN run the (mostly depthwise and 1x1) convolutions without reordering every tensor. The copy is for
running only: its state_dict has conv biases and no batch norms, so model files, checkpoints and the
pretrained-weight mapping always hold the training network, with its names.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) child names where the batch norm takes exactly the conv's output.

    In a Sequential that is a Conv2d directly followed by a BatchNorm2d; other blocks say so in their
    `conv_bn_pairs` attribute (only they know their forward's data flow).
    """
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        return [(a, b) for a, b in zip(names, names[1:], strict=False)
                if isinstance(module._modules[a], nn.Conv2d) and isinstance(module._modules[b], nn.BatchNorm2d)]
    return list(getattr(module, "conv_bn_pairs", ()))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy with every foldable batch norm merged into its conv (the model is left as it was)."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        for conv_name, bn_name in conv_bn_pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return folded


def inference_copy(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """The copy predict and the benchmarks run: folded, eval mode, no gradients, channels-last on a CPU."""
    fast = fold_batchnorm(model)
    fast.requires_grad_(False)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
