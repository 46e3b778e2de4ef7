"""1x1 convolutions of channels-last CPU tensors run as a matrix product over the channels.

A 1x1 convolution with stride 1 maps each pixel's channels linearly: on a channels-last ``(N, C, H, W)`` tensor (in
memory ``(N, H, W, C)``) it is ``F.linear`` of the ``(N, H, W, C)`` view, with no copy in or out. On CPU the matrix
products (forward, input and weight gradients) are faster than oneDNN's convolution kernels on the small maps of
EfficientNet's late blocks (``benchmarks/quickstart_levers.py``). Outputs and gradients equal the convolution's to
float rounding; other devices and layouts keep the library's kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xsearch.models.module_swap import replace_modules


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped ``nn.Conv2d`` run as ``F.linear`` on channels-last CPU inputs. Same parameters and
    state-dict keys as the convolution it replaces."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None, device="meta")
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` -> ``(N, C_out, H, W)``, channels-last when the input is."""
        if x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        out = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)  # (N, H, W, C_out)
        return out.permute(0, 3, 1, 2)


def replaceable(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` that :class:`PointwiseConv2d` can run: 1x1 kernel, stride 1, one group, no padding."""
    return (type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.groups == 1 and module.padding in ((0, 0), "valid"))


def use_matmul_pointwise(model: nn.Module) -> int:
    """Replace every :func:`replaceable` convolution of ``model`` by a :class:`PointwiseConv2d` sharing its
    parameters; returns how many were replaced."""
    return replace_modules(model, replaceable, PointwiseConv2d)
