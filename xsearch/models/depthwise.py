"""Depthwise convolutions whose weight gradient on small maps is computed one kernel tap at a time.

oneDNN's CPU kernel for the weight gradient of a depthwise convolution is slow when the output map is smaller than
the kernel (EfficientNet's 5x5 kernels on the 3x2 maps of a 96x48 image): 35-60 ms for 64 images of 1,152 channels on
an AVX2 processor, where the forward pass takes 0.5 ms. Written as one reduction per kernel tap,
``grad_w[c, i, j] = sum over n, y, x of grad_out[n, c, y, x] * padded_input[n, c, y*s + i*d, x*s + j*d]``, the same
gradient takes about 5 ms (``benchmarks/quickstart_levers.py``). Outputs are unchanged; gradients differ from
oneDNN's by float rounding (another summation order). GPUs and larger maps keep the library's kernel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame, pad_same
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from xsearch.models.module_swap import replace_modules

Pair = tuple[int, int]


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Length of a convolution's output along one axis."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def needs_tap_gradient(x: Tensor, weight: Tensor, stride: Pair, padding: Pair, dilation: Pair) -> bool:
    """Whether the tap-by-tap weight gradient is used: a CPU input, a weight that needs a gradient, and an output map
    smaller than the kernel along both axes (where oneDNN's kernel is slow)."""
    if x.device.type != "cpu" or not (weight.requires_grad and torch.is_grad_enabled()):
        return False
    kernel = weight.shape[-2:]
    return all(output_size(x.shape[axis - 2], kernel[axis], stride[axis], padding[axis], dilation[axis]) < kernel[axis]
               for axis in (0, 1))


def tap_weight_gradient(grad_output: Tensor, x: Tensor, kernel: Pair, stride: Pair, padding: Pair,
                        dilation: Pair) -> Tensor:
    """Weight gradient of a depthwise convolution, one reduction per kernel tap.

    Args:
        grad_output: ``(N, C, Ho, Wo)`` gradient of the convolution's output.
        x: ``(N, C, H, W)`` the convolution's input (unpadded).
    Returns:
        ``(C, 1, kh, kw)`` gradient of the weight.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    padded = F.pad(x, (pw, pw, ph, ph))
    height, width = grad_output.shape[-2:]
    grad = grad_output.new_empty(x.shape[1], kh, kw)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (height - 1) + 1, sh)
        for j in range(kw):
            window = padded[:, :, rows, j * dw : j * dw + sw * (width - 1) + 1 : sw]  # (N, C, Ho, Wo), a view
            grad[:, i, j] = (window * grad_output).sum((0, 2, 3))
    return grad.unsqueeze(1)


class _TapGradientConv(torch.autograd.Function):
    """A depthwise ``conv2d`` whose backward takes the input gradient from the library and the weight gradient from
    :func:`tap_weight_gradient`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair,
                dilation: Pair) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, padding, dilation
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups=weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        want_input, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_x = grad_bias = grad_weight = None
        if want_input or want_bias:
            grad_x, _, grad_bias = torch.ops.aten.convolution_backward(
                grad_output, x, weight, [weight.shape[0]] if ctx.has_bias else None, list(stride), list(padding),
                list(dilation), False, [0, 0], weight.shape[0], [want_input, False, want_bias])
        if want_weight:
            grad_weight = tap_weight_gradient(grad_output, x, weight.shape[-2:], stride, padding, dilation)
        return grad_x, grad_weight, grad_bias, None, None, None


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: Pair, padding: Pair,
                     dilation: Pair) -> Tensor:
    """``F.conv2d`` with ``groups`` = channels: ``(N, C, H, W)`` and a ``(C, 1, kh, kw)`` weight -> ``(N, C, Ho, Wo)``;
    the weight gradient tap by tap where :func:`needs_tap_gradient` says so."""
    if not needs_tap_gradient(x, weight, stride, padding, dilation):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups=weight.shape[0])
    if torch.is_autocast_enabled("cpu"):  # cast as autocast would cast conv2d's inputs, then run the function without it
        dtype = torch.get_autocast_dtype("cpu")
        x, weight, bias = (None if t is None else t.to(dtype) for t in (x, weight, bias))
        with torch.autocast("cpu", enabled=False):
            return _TapGradientConv.apply(x, weight, bias, stride, padding, dilation)
    return _TapGradientConv.apply(x, weight, bias, stride, padding, dilation)


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (zero padding, fixed or timm's dynamic 'same') run by :func:`depthwise_conv2d`.
    Same parameters and state-dict keys as the convolution it replaces."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, device="meta")
        self.weight, self.bias = conv.weight, conv.bias
        self.same_padding = isinstance(conv, Conv2dSame)

    def forward(self, x: Tensor) -> Tensor:
        if self.same_padding:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


def replaceable(module: nn.Module) -> bool:
    """A depthwise convolution :class:`DepthwiseConv2d` can run: ``nn.Conv2d`` or timm's ``Conv2dSame`` with
    groups = in = out channels, a kernel larger than 1x1, zero padding given as numbers."""
    return (type(module) in (nn.Conv2d, Conv2dSame) and module.groups == module.in_channels == module.out_channels
            and module.kernel_size != (1, 1) and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def use_tap_gradients(model: nn.Module) -> int:
    """Replace every :func:`replaceable` convolution of ``model`` by a :class:`DepthwiseConv2d` sharing its
    parameters; returns how many were replaced."""
    return replace_modules(model, replaceable, DepthwiseConv2d)
