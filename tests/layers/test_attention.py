"""Samba's sliding-window attention against a dense softmax with an explicit band mask."""

import math

import pytest
import torch

from hax_ssm.layers.attention import SlidingWindowAttention, rotary


def _dense_reference(layer: SlidingWindowAttention, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, n, _ = h.shape
    heads = (b, n, layer.num_heads, layer.head_dim)
    pos = torch.arange(n)
    q = rotary(layer.q_proj(h).view(heads), pos, layer.rope_theta).transpose(1, 2)
    k = rotary(layer.k_proj(h).view(heads), pos, layer.rope_theta).transpose(1, 2)
    v = layer.v_proj(h).view(heads).transpose(1, 2)
    offset = pos[:, None] - pos[None, :]
    allowed = (offset >= 0) & (offset < layer.window) & mask[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) / math.sqrt(layer.head_dim)).masked_fill(~allowed, -torch.inf)
    out = torch.nan_to_num(scores.softmax(-1)) @ v  # a query with no key outputs 0
    return layer.o_proj(out.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("length", [1, 5, 23])
@pytest.mark.parametrize("window", [1, 4])
def test_layer_equals_dense_band_attention(length, window, seeded):
    layer = SlidingWindowAttention(hidden_size=24, num_heads=3, window=window, init_std=0.3)
    h = torch.randn(2, length, 24)
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, length // 2 :] = False  # right padding
    out, _, _ = layer(h, mask)
    torch.testing.assert_close(out, _dense_reference(layer, h, mask), rtol=1e-5, atol=1e-5)


def test_rotary_scores_depend_on_relative_position_only(seeded):
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        return (rotary(q, torch.tensor([i]), 10000.0) * rotary(k, torch.tensor([j]), 10000.0)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))
    assert not torch.allclose(score(7, 3), score(7, 4))
