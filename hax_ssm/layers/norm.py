"""RMSNorm and Mamba2's gated RMSNorm, computed in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``. The output takes the weight's dtype, so an fp32 residual stream
    can feed bf16 layers."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(self.weight.dtype)


class GatedRMSNorm(RMSNorm):
    """Mamba2's output norm: ``RMSNorm(y * silu(z))`` (gate before norm), normalised per group of
    ``size // n_groups`` channels."""

    def __init__(self, size: int, n_groups: int = 1, eps: float = 1e-5):
        super().__init__(size, eps)
        self.n_groups = n_groups

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gated = y.float() * F.silu(z.float())
        grouped = gated.unflatten(-1, (self.n_groups, -1))
        normed = grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight.float()).to(self.weight.dtype)
