"""Samba's sliding-window softmax attention with rotary positions, and its SwiGLU MLP.

The attention itself is the branch's op, ``sparse_attention`` with the ``sliding_window``
pattern (query i sees keys i - window + 1 .. i), heads folded into the batch. Decoding keeps
the last ``window - 1`` keys (already rotated) and values, so memory stays O(window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hax_ssm.layers.common import init_linear_
from hax_ssm.ops.attention import sparse_attention
from hax_ssm.ops.patterns import parse_sparse_arch


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate ``x [B, L, H, d]`` by ``positions [L]`` (half-split RoPE), in fp32.

    Computed on the fly rather than from a buffer: cheap at these sizes, and nothing
    non-persistent to restore after loading a checkpoint.
    """
    half = x.shape[-1] // 2
    inv_freq = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * inv_freq  # [L, half]
    cos, sin = angles.cos()[:, None], angles.sin()[:, None]  # [L, 1, half]
    x1, x2 = x.float().split(half, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


@dataclass
class AttentionState:
    """Decoding state: the last ``window - 1`` keys and values and whether they are real tokens."""

    keys: torch.Tensor  # [B, T, H, head_dim], rotated and scaled
    values: torch.Tensor  # [B, T, H, head_dim]
    key_mask: torch.Tensor  # [B, T] bool
    position: int  # absolute position of the next token


class SlidingWindowAttention(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        window: int = 64,
        rope_theta: float = 10000.0,
        init_std: float = 0.02,
        attention_impl: str = "auto",
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.window, self.rope_theta, self.attention_impl = window, rope_theta, attention_impl
        self.spec = parse_sparse_arch("sliding_window", sparse_keys=window)
        self.init_std = init_std
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init_linear_(self, self.init_std)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        state: AttentionState | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, None, AttentionState | None]:
        """``hidden_states [B, L, hidden]`` -> ``(out, None, state or None)``; pad keys are never attended."""
        b, length, hidden = hidden_states.shape
        heads = (b, length, self.num_heads, self.head_dim)
        start = 0 if state is None else state.position
        positions = torch.arange(start, start + length, device=hidden_states.device)
        q = rotary(self.q_proj(hidden_states).view(heads), positions, self.rope_theta)
        k = rotary(self.k_proj(hidden_states).view(heads), positions, self.rope_theta) / math.sqrt(self.head_dim)
        v = self.v_proj(hidden_states).view(heads)
        mask = hidden_states.new_ones(b, length, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if state is not None:  # cached keys come first; their query rows are computed and dropped
            k, v = torch.cat([state.keys, k], dim=1), torch.cat([state.values, v], dim=1)
            mask = torch.cat([state.key_mask, mask], dim=1)
            q = torch.cat([torch.zeros_like(state.keys), q], dim=1)
        out = sparse_attention(
            _fold_heads(q),
            _fold_heads(k),
            _fold_heads(v),
            self.spec,
            attention_mask=mask.repeat_interleave(self.num_heads, dim=0),
            impl=self.attention_impl,
        )
        out = out.view(b, self.num_heads, -1, self.head_dim).transpose(1, 2)[:, -length:].reshape(b, length, hidden)
        new_state = None
        if use_cache:
            first = max(0, k.shape[1] - (self.window - 1))  # keep the last window - 1 keys (none for window 1)
            new_state = AttentionState(k[:, first:], v[:, first:], mask[:, first:], start + length)
        return self.o_proj(out), None, new_state


def _fold_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, L, H, d] -> [B * H, L, d]``."""
    b, length, h, d = x.shape
    return x.transpose(1, 2).reshape(b * h, length, d)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, intermediate_size: int, init_std: float = 0.02):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        init_linear_(self, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
