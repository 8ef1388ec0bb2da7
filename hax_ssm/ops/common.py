"""Small helpers shared by the ops."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import Tensor


def acc_dtype(x: Tensor) -> torch.dtype:
    """The precision scores, softmax and hashing run in: fp32 for half types, fp64 stays fp64."""
    return torch.promote_types(x.dtype, torch.float32)


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_unsupported(x: Tensor) -> str | None:
    """Why a Triton kernel cannot run on ``x``'s device (None: it can). TRITON_INTERPRET=1 runs the
    kernels on CPU tensors in Triton's interpreter (slow; for tests)."""
    if not triton_installed():
        return "triton is not installed (pip install 'hax-ssm[gpu]')"
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"needs CUDA tensors, got {x.device.type} (TRITON_INTERPRET=1 runs it in Triton's CPU interpreter)"
    return None


def use_triton(x: Tensor) -> bool:
    """What ``impl="auto"`` of the sequence ops means: Triton for CUDA tensors when triton is installed."""
    return x.is_cuda and triton_installed()
