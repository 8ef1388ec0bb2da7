"""The Mamba2 mixer (SSD, one scalar decay per head) with the optional sparse-attention branch.

    z, xBC, dt = in_proj(h);  x, B, C = silu(conv(xBC));  dt = softplus(dt + dt_bias)
    y = GatedRMSNorm(SSD(x, dt, A, B, C) + D * x + E * O, z);  out = out_proj(y)

where ``E * O`` is the branch output (PAPER.md section 3) with V = x, absent without a branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hax_ssm.layers.common import init_dt_bias_, init_linear_, make_branch, run_branch, softplus_dt, zero_padding
from hax_ssm.layers.norm import GatedRMSNorm
from hax_ssm.layers.sparse_branch import SparseBranchState
from hax_ssm.ops.conv import causal_conv1d
from hax_ssm.ops.patterns import SparseSpec
from hax_ssm.ops.ssd import ssd


@dataclass
class Mamba2State:
    """Decoding state of one Mamba2 mixer; None fields mean 'start of the sequence'."""

    conv: torch.Tensor | None = None  # [B, d_conv - 1, d_inner + 2 * n_groups * d_state]
    ssm: torch.Tensor | None = None  # [B, n_heads, head_dim, d_state] fp32
    branch: SparseBranchState | None = None


class Mamba2Mixer(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        n_heads: int = 8,
        head_dim: int = 16,
        d_state: int = 32,
        n_groups: int = 1,
        d_conv: int = 4,
        chunk_size: int = 256,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
        a_init_range: tuple[float, float] = (1.0, 16.0),
        norm_eps: float = 1e-5,
        init_std: float = 0.1,
        spec: SparseSpec | None = None,
        attention_impl: str = "auto",
        ssd_impl: str = "auto",
    ):
        super().__init__()
        self.n_heads, self.head_dim, self.d_state, self.n_groups = n_heads, head_dim, d_state, n_groups
        self.d_inner = n_heads * head_dim
        self.chunk_size, self.ssd_impl = chunk_size, ssd_impl
        self.dt_init, self.a_init_range, self.init_std = (dt_min, dt_max, dt_floor), a_init_range, init_std
        conv_dim = self.d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(hidden_size, self.d_inner + conv_dim + n_heads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        self.dt_bias = nn.Parameter(torch.empty(n_heads))
        self.A_log = nn.Parameter(torch.empty(n_heads))
        self.D = nn.Parameter(torch.empty(n_heads))
        self.norm = GatedRMSNorm(self.d_inner, n_groups, eps=norm_eps)
        self.out_proj = nn.Linear(self.d_inner, hidden_size, bias=False)
        self.branch = make_branch(self.d_inner, d_state, spec, attention_impl)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Linear ~ N(0, init_std); A = -U(a_init_range) per head; D = 1; dt_bias as in Mamba2."""
        init_linear_(self, self.init_std)
        self.conv1d.reset_parameters()
        init_dt_bias_(self.dt_bias, *self.dt_init)
        self.A_log.copy_(torch.log(torch.empty(self.n_heads).uniform_(*self.a_init_range)))
        nn.init.ones_(self.D)
        nn.init.ones_(self.norm.weight)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        state: Mamba2State | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, Mamba2State | None]:
        """``hidden_states [B, L, hidden]`` -> ``(out [B, L, hidden], gate_loss or None, state or None)``.

        With ``use_cache`` the mixer continues from ``state`` (None: start of sequence) and
        returns the state after the last token.
        """
        state = state or Mamba2State()
        b, length, _ = hidden_states.shape
        gn = self.n_groups * self.d_state
        z, xbc, dt = self.in_proj(hidden_states).split([self.d_inner, self.d_inner + 2 * gn, self.n_heads], dim=-1)
        xbc, conv_state = causal_conv1d(
            zero_padding(xbc, attention_mask),
            self.conv1d.weight[:, 0],
            self.conv1d.bias,
            activation="silu",
            initial_state=state.conv,
            return_final_state=use_cache,
        )
        x, B, C = zero_padding(xbc, attention_mask).split([self.d_inner, gn, gn], dim=-1)
        y, ssm_state = ssd(
            x.view(b, length, self.n_heads, self.head_dim),
            softplus_dt(dt + self.dt_bias),
            -torch.exp(self.A_log.float()),
            B.view(b, length, self.n_groups, self.d_state),
            C.view(b, length, self.n_groups, self.d_state),
            self.D,
            initial_state=state.ssm,
            return_final_state=use_cache,
            chunk_size=self.chunk_size,
            impl=self.ssd_impl,
        )
        y = y.reshape(b, length, self.d_inner)
        gate_loss = branch_state = None
        if self.branch is not None:
            branch_out, gate_loss, branch_state = run_branch(self.branch, x, attention_mask, use_cache, state.branch)
            y = y + branch_out
        new_state = Mamba2State(conv_state, ssm_state, branch_state) if use_cache else None
        return self.out_proj(self.norm(y, z)), gate_loss, new_state
