"""1x1 convolutions as a matrix product on channels-last CPU tensors: the library's outputs and gradients."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xsearch.models.pointwise import PointwiseConv2d, replaceable


def test_one_pixel_is_the_weight_matrix_times_its_channels():
    conv = PointwiseConv2d(nn.Conv2d(2, 3, 1))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]]).view(3, 2, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
    x = torch.tensor([2.0, 4.0]).view(1, 2, 1, 1).contiguous(memory_format=torch.channels_last)
    assert torch.equal(conv(x).flatten(), torch.tensor([2.0 + 8.0 + 0.5, -4.0, 6.0 + 2.0 - 1.0]))


@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_gradients_equal_the_convolution(bias):
    torch.manual_seed(0)
    library = nn.Conv2d(24, 40, 1, bias=bias)
    ours = PointwiseConv2d(library)
    x = torch.randn(8, 24, 6, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    with mock.patch("xsearch.models.pointwise.F.linear", wraps=F.linear) as linear:
        out = ours(x)
    assert linear.call_count == 1 and out.is_contiguous(memory_format=torch.channels_last)
    reference = F.conv2d(x, library.weight, library.bias)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(out)
    parameters = [x, library.weight] + ([library.bias] if bias else [])
    for mine, theirs in zip(torch.autograd.grad((out * weights).sum(), parameters),
                            torch.autograd.grad((reference * weights).sum(), parameters)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_a_contiguous_input_takes_the_library_kernel():
    ours = PointwiseConv2d(nn.Conv2d(4, 5, 1))
    x = torch.randn(2, 4, 3, 3)
    with mock.patch("xsearch.models.pointwise.F.linear") as linear:
        assert torch.equal(ours(x), F.conv2d(x, ours.weight, ours.bias))
    assert linear.call_count == 0


@pytest.mark.parametrize("conv, expected", [
    (nn.Conv2d(4, 8, 1), True),
    (nn.Conv2d(4, 8, 1, stride=2), False),
    (nn.Conv2d(4, 8, 1, groups=2), False),
    (nn.Conv2d(4, 8, 1, padding=1), False),
    (nn.Conv2d(4, 8, 3), False),
])
def test_only_stride_1_ungrouped_unpadded_1x1_convolutions_are_replaced(conv, expected):
    assert replaceable(conv) == expected
