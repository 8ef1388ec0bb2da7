"""Pieces shared by the Mamba and Mamba2 mixers: padding, SSM initialisation, the branch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hax_ssm.layers.sparse_branch import SparseBranch, SparseBranchState
from hax_ssm.ops.patterns import SparseSpec


def zero_padding(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero ``x [B, L, ...]`` at padding positions, so they add nothing to conv or SSM states
    (HF's Mamba does the same). With left padding the state stays exactly zero until the first
    real token."""
    if attention_mask is None:
        return x
    return x * attention_mask.view(*attention_mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)


@torch.no_grad()
def init_linear_(module: nn.Module, std: float) -> None:
    """Every Linear inside ``module`` (the branch's too) ~ N(0, std), biases zero: the init of the
    reference models (flash-linear-attention's ``_init_weights``)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@torch.no_grad()
def init_dt_bias_(bias: torch.Tensor, dt_min: float, dt_max: float, dt_floor: float) -> None:
    """``softplus(bias) = dt`` with dt log-uniform in [dt_min, dt_max] (at least dt_floor)."""
    log_dt = torch.rand(bias.shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus


def softplus_dt(dt: torch.Tensor) -> torch.Tensor:
    return F.softplus(dt.float())


def make_branch(d_inner: int, d_state: int, spec: SparseSpec | None, impl: str) -> SparseBranch | None:
    return None if spec is None else SparseBranch(d_inner, d_state, spec, impl=impl)


def run_branch(
    branch: SparseBranch,
    x: torch.Tensor,
    attention_mask: torch.Tensor | None,
    use_cache: bool,
    state: SparseBranchState | None,
) -> tuple[torch.Tensor, torch.Tensor | None, SparseBranchState | None]:
    """The branch's ``(E * O, gate_loss, state)``: a plain forward without a cache, a prefill to
    start one, else token-by-token steps that continue the cached state."""
    if not use_cache:
        out, loss = branch(x, attention_mask)
        return out, loss, None
    if state is None:
        return branch.prefill(x, attention_mask)
    outs = []
    for t in range(x.shape[1]):
        out_t, state = branch.step(x[:, t], state, None if attention_mask is None else attention_mask[:, t])
        outs.append(out_t)
    return torch.stack(outs, dim=1), None, state
