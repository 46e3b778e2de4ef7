"""The token head on real tokens only (``xsearch.models.token_head``) against the library's padded forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xsearch.models.token_head import run_token_head


def head_and_batch(layers: int = 2, width: int = 24, norm: bool = False, seed: int = 0):
    """A pre-norm head as ``TextEncoder`` builds it, a ``16 -> width`` projection, and a padded batch of 5 captions
    (lengths 7, 3, 1, 7, 5)."""
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(width, 4, width, dropout=0.0, batch_first=True, norm_first=True)
    head = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width) if norm else None, enable_nested_tensor=False)
    project = nn.Linear(16, width)
    lengths = torch.tensor([7, 3, 1, 7, 5])
    mask = (torch.arange(7)[None, :] < lengths[:, None]).long()
    return head, project, torch.randn(5, 7, 16), mask


def library(head: nn.TransformerEncoder, project: nn.Module, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return head(project(states), src_key_padding_mask=mask == 0) * mask[..., None]


@pytest.mark.parametrize("layers, norm", [(1, False), (2, False), (2, True)])
def test_outputs_and_gradients_equal_the_library_padded_forward(layers, norm):
    head, project, states, mask = head_and_batch(layers, norm=norm)
    parameters = list(head.parameters()) + list(project.parameters())
    ours = run_token_head(head, project, states, mask)
    theirs = library(head, project, states, mask)
    assert ours.shape == (5, 7, 24)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert ours[mask == 0].abs().max() == 0  # zeros at padding
    weights = torch.randn(5, 7, 24)  # a loss that weighs every real token differently
    for mine, reference in zip(torch.autograd.grad((ours * weights).sum(), parameters),
                               torch.autograd.grad((theirs * weights).sum(), parameters)):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-4)


def test_padding_values_do_not_reach_the_real_tokens():
    head, project, states, mask = head_and_batch()
    noisy = states + 100.0 * torch.randn_like(states) * (mask == 0)[..., None]
    torch.testing.assert_close(run_token_head(head, project, noisy, mask), run_token_head(head, project, states, mask))


def test_a_caption_alone_equals_it_in_a_padded_batch():
    head, project, states, mask = head_and_batch()
    alone = run_token_head(head, project, states[1:2, :3], mask[1:2, :3])
    torch.testing.assert_close(run_token_head(head, project, states, mask)[1:2, :3], alone, atol=1e-6, rtol=1e-5)


def test_export_tracing_takes_the_library_forward(monkeypatch):
    head, project, states, mask = head_and_batch()
    packed = run_token_head(head, project, states, mask)
    calls = []
    forward = nn.TransformerEncoder.forward
    monkeypatch.setattr(nn.TransformerEncoder, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    torch.testing.assert_close(run_token_head(head, project, states, mask), packed, atol=1e-5, rtol=1e-5)
    assert calls == [1]


def test_a_post_norm_layer_is_refused():
    layer = nn.TransformerEncoderLayer(24, 4, 24, dropout=0.0, batch_first=True, norm_first=False)
    head = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
    _, project, states, mask = head_and_batch()
    with pytest.raises(ValueError, match="norm_first=True, dropout=0"):
        run_token_head(head, project, states, mask)
