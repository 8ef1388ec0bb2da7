"""The Mamba mixer (selective SSM) with the optional sparse-attention branch.

    x, z = in_proj(h);  x = silu(conv(x));  dt, B, C = x_proj(x);  dt = softplus(dt_proj(dt))
    y = (scan(x, dt, A, B, C) + D * x + E * O) * silu(z);  out = out_proj(y)

where ``E * O`` is the branch output (PAPER.md section 3), absent without a branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hax_ssm.layers.common import init_dt_bias_, init_linear_, make_branch, run_branch, softplus_dt, zero_padding
from hax_ssm.layers.sparse_branch import SparseBranchState
from hax_ssm.ops.conv import causal_conv1d
from hax_ssm.ops.patterns import SparseSpec
from hax_ssm.ops.scan import selective_scan


@dataclass
class MambaState:
    """Decoding state of one Mamba mixer; None fields mean 'start of the sequence'."""

    conv: torch.Tensor | None = None  # [B, d_conv - 1, d_inner] the last conv inputs
    ssm: torch.Tensor | None = None  # [B, d_inner, d_state] fp32
    branch: SparseBranchState | None = None


class MambaMixer(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        d_inner: int,
        d_state: int = 16,
        d_conv: int = 4,
        dt_rank: int = 8,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
        dt_scale: float = 1.0,
        init_std: float = 0.1,
        spec: SparseSpec | None = None,
        attention_impl: str = "auto",
        scan_impl: str = "auto",
    ):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank, self.scan_impl = d_inner, d_state, dt_rank, scan_impl
        self.dt_init = (dt_min, dt_max, dt_floor, dt_scale)
        self.init_std = init_std
        self.in_proj = nn.Linear(hidden_size, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, hidden_size, bias=False)
        self.branch = make_branch(d_inner, d_state, spec, attention_impl)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Linear ~ N(0, init_std); S4D-real A = -[1..d_state]; D = 1; dt_proj as in Mamba."""
        init_linear_(self, self.init_std)
        self.conv1d.reset_parameters()
        dt_min, dt_max, dt_floor, dt_scale = self.dt_init
        bound = self.dt_rank**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        init_dt_bias_(self.dt_proj.bias, dt_min, dt_max, dt_floor)
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        nn.init.ones_(self.D)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        state: MambaState | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, MambaState | None]:
        """``hidden_states [B, L, hidden]`` -> ``(out [B, L, hidden], gate_loss or None, state or None)``.

        With ``use_cache`` the mixer continues from ``state`` (None: start of sequence) and
        returns the state after the last token.
        """
        state = state or MambaState()
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x, conv_state = causal_conv1d(
            zero_padding(x, attention_mask),
            self.conv1d.weight[:, 0],
            self.conv1d.bias,
            activation="silu",
            initial_state=state.conv,
            return_final_state=use_cache,
        )
        x = zero_padding(x, attention_mask)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = softplus_dt(self.dt_proj(dt))
        A = -torch.exp(self.A_log.float())
        branch_out = gate_loss = branch_state = None
        if self.branch is not None:
            branch_out, gate_loss, branch_state = run_branch(self.branch, x, attention_mask, use_cache, state.branch)
        y, ssm_state = selective_scan(
            x,
            dt,
            A,
            B,
            C,
            self.D,
            z=z if branch_out is None else None,  # with a branch, gate after adding its output
            initial_state=state.ssm,
            return_final_state=use_cache,
            impl=self.scan_impl,
        )
        if branch_out is not None:
            y = ((y + branch_out).float() * F.silu(z.float())).to(y.dtype)
        new_state = MambaState(conv_state, ssm_state, branch_state) if use_cache else None
        return self.out_proj(y), gate_loss, new_state
