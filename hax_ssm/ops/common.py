"""Small helpers shared by the ops."""

from __future__ import annotations

import torch
from torch import Tensor


def acc_dtype(x: Tensor) -> torch.dtype:
    """The precision scores, softmax and hashing run in: fp32 for half types, fp64 stays fp64."""
    return torch.promote_types(x.dtype, torch.float32)
