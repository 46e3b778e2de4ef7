"""Depthwise convolutions with the tap-by-tap weight gradient: the library's outputs and gradients, and where used."""
import pytest
import torch
import torch.nn.functional as F

from xsearch.models.depthwise import depthwise_conv2d, needs_tap_gradient


def test_weight_gradient_of_one_pixel_is_the_pixel_at_the_centre_tap():
    x = torch.tensor([[[[2.0]]]], requires_grad=True)    # (1, 1, 1, 1)
    weight = torch.ones(1, 1, 3, 3, requires_grad=True)
    out = depthwise_conv2d(x, weight, None, (1, 1), (1, 1), (1, 1))  # 1x1 output < 3x3 kernel: taps
    assert needs_tap_gradient(x, weight, (1, 1), (1, 1), (1, 1))
    out.sum().backward()
    expected = torch.zeros(1, 1, 3, 3)
    expected[0, 0, 1, 1] = 2.0                           # every other tap reads padding
    assert torch.equal(weight.grad, expected)
    assert torch.equal(x.grad, torch.tensor([[[[1.0]]]]))  # the centre weight


@pytest.mark.parametrize("size,kernel,stride,padding,dilation,bias,taps", [
    ((3, 2), 5, 1, 2, 1, False, True),    # EfficientNet's 5x5 on a 96x48 image's last maps
    ((9, 7), 5, 2, 0, 1, True, True),     # stride 2 after timm's 'same' padding
    ((2, 2), 3, 1, 2, 2, True, True),     # dilated: a 2x2 output
    ((12, 6), 5, 1, 2, 1, False, False),  # output larger than the kernel: the library's gradient
])
def test_outputs_and_gradients_equal_the_library(size, kernel, stride, padding, dilation, bias, taps):
    torch.manual_seed(0)
    x = torch.randn(4, 6, *size).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(6, 1, kernel, kernel, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    inputs = [t for t in (x, weight, b) if t is not None]
    geometry = (stride,) * 2, (padding,) * 2, (dilation,) * 2
    assert needs_tap_gradient(x, weight, *geometry) == taps
    out = depthwise_conv2d(x, weight, b, *geometry)
    reference = F.conv2d(x, weight, b, stride, padding, dilation, groups=6)
    assert torch.equal(out, reference)
    grad = torch.randn_like(out)
    for ours, theirs in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(reference, inputs, grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_taps_only_where_the_output_is_smaller_than_the_kernel_and_a_weight_gradient_is_wanted():
    x, weight = torch.randn(2, 4, 3, 2), torch.randn(4, 1, 5, 5, requires_grad=True)
    geometry = (1, 1), (2, 2), (1, 1)
    assert needs_tap_gradient(x, weight, *geometry)
    assert not needs_tap_gradient(torch.randn(2, 4, 6, 2), weight, *geometry)  # 6 rows out >= 5
    assert not needs_tap_gradient(x, weight.detach(), *geometry)               # frozen weight
    with torch.no_grad():
        assert not needs_tap_gradient(x, weight, *geometry)
    small_kernel = torch.randn(4, 1, 3, 3, requires_grad=True)
    assert not needs_tap_gradient(x, small_kernel, (1, 1), (1, 1), (1, 1))     # 3x2 out, 3x3 kernel: 3 rows not < 3


def test_bf16_autocast_gives_the_library_output_and_float32_gradients():
    torch.manual_seed(0)
    x, weight = torch.randn(2, 4, 3, 2, requires_grad=True), torch.randn(4, 1, 5, 5, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = depthwise_conv2d(x, weight, None, (1, 1), (2, 2), (1, 1))
        reference = F.conv2d(x, weight, None, 1, 2, 1, groups=4)
    assert out.dtype == torch.bfloat16 and torch.equal(out, reference)
    ours = torch.autograd.grad(out.float().sum(), (x, weight))
    theirs = torch.autograd.grad(reference.float().sum(), (x, weight))
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=5e-2)  # bf16 sums
