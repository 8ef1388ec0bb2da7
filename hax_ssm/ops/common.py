"""Small helpers shared by the ops."""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
from torch import Tensor


def acc_dtype(x: Tensor) -> torch.dtype:
    """The precision scores, softmax and hashing run in: fp32 for half types, fp64 stays fp64."""
    return torch.promote_types(x.dtype, torch.float32)


def prefix_sum(x: Tensor, dim: int = 1) -> Tensor:
    """x.cumsum(dim), scanned with dim innermost. CUDA scans a non-last dim with one thread per column
    walking the whole length (0.14 ms for [64, 1058, 64] on an H100); over the last dim it is a parallel scan."""
    return x.movedim(dim, -1).cumsum(-1).movedim(-1, dim)


@functools.cache
def triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_unsupported(x: Tensor) -> str | None:
    """Why a Triton kernel cannot run on ``x``'s device (None: it can). TRITON_INTERPRET=1 runs the
    kernels on CPU tensors in Triton's interpreter (slow; for tests)."""
    if not triton_importable():
        return "triton is not installed (pip install 'hax-ssm[gpu]')"
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return f"needs CUDA tensors, got {x.device.type} (TRITON_INTERPRET=1 runs it in Triton's CPU interpreter)"
    return None


def use_triton(x: Tensor) -> bool:
    """What ``impl="auto"`` of the sequence ops means: Triton for CUDA tensors when triton imports."""
    return x.is_cuda and triton_importable()


def patch_triton_interpreter() -> None:
    """Make triton 3.6's CPU interpreter run kernels with runtime loop bounds under numpy >= 2.3.

    The interpreter turns a bound's 1-element array into an int with ``int()``, which newer numpy
    refuses; ``.item()`` works on every numpy. Idempotent; call it only when TRITON_INTERPRET=1.
    """
    import triton.runtime.interpreter as interpreter

    if getattr(interpreter, "_hax_index_patch", False):
        return
    patch_tensor = interpreter._patch_lang_tensor

    def _patch_lang_tensor(tensor: Any, scope: Any) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = _patch_lang_tensor
    interpreter._hax_index_patch = True
