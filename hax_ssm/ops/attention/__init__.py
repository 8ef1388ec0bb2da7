"""Sparse attention of the HAX branch: one op, one oracle and one O(L * k) implementation.

Semantics (PAPER.md section 3): query i attends, with one softmax, to the union of the key sets
of the parts of ``spec``; every set is causal (j <= i) and holds only real keys
(``attention_mask[b, j]``). Queries are never masked; a query with no key outputs 0.
"""

from __future__ import annotations

from torch import Tensor

from hax_ssm.errors import require
from hax_ssm.ops.attention.reference import reference_attention
from hax_ssm.ops.attention.sparse import sparse_attention_forward
from hax_ssm.ops.attention.triton import supports as triton_supports
from hax_ssm.ops.attention.triton import triton_attention
from hax_ssm.ops.patterns import SparseSpec

# Every implementation: fn(q, k, v, spec, key_mask, q_buckets, k_buckets, key_scores) -> out, with inputs
# already validated (key_mask a [B, L] bool tensor, key_scores detached).
IMPLS = {"reference": reference_attention, "sparse": sparse_attention_forward, "triton": triton_attention}


def auto_impl(q: Tensor, v: Tensor) -> str:
    """What impl="auto" runs: "triton" for CUDA tensors when triton imports and supports them, else "sparse"."""
    return "triton" if triton_supports(q, v) else "sparse"


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: SparseSpec,
    *,
    q_buckets: Tensor | None = None,
    k_buckets: Tensor | None = None,
    key_scores: Tensor | None = None,
    attention_mask: Tensor | None = None,
    impl: str = "auto",
) -> Tensor:
    """Attention of q [B, L, dk] over k [B, L, dk] (already scaled), v [B, L, dv] -> [B, L, dv].

    Fold heads into B. q_buckets/k_buckets [B, L] (int64) are required by an LSH part,
    key_scores [B, L] by key_selection; none of them carries gradients (the selection is discrete);
    gradients flow to q, k and v. impl: "reference" (dense L x L oracle), "sparse" (O(L * k),
    chunked plain torch, the CPU path), "triton" (fused GPU kernels) or "auto" (see :func:`auto_impl`).
    """
    require(impl == "auto" or impl in IMPLS, f"impl={impl!r}: allowed: auto, {', '.join(IMPLS)}")
    require(q.dim() == 3 and q.shape[1] >= 1, f"q: expected [B, L, dk] with L >= 1, got {list(q.shape)}")
    b, n, _ = q.shape
    require(k.shape == q.shape, f"k: expected the shape of q {list(q.shape)}, got {list(k.shape)}")
    require(v.dim() == 3 and v.shape[:2] == q.shape[:2], f"v: expected [{b}, {n}, dv], got {list(v.shape)}")
    spec.check_length(n)
    if attention_mask is None:
        key_mask = q.new_ones(b, n, dtype=bool)
    else:
        require(
            tuple(attention_mask.shape) == (b, n),
            f"attention_mask: expected shape [{b}, {n}], got {list(attention_mask.shape)}",
        )
        key_mask = attention_mask.bool()
    if spec.lsh:
        for name, buckets in (("q_buckets", q_buckets), ("k_buckets", k_buckets)):
            require(
                buckets is not None and tuple(buckets.shape) == (b, n) and not buckets.is_floating_point(),
                f"{name}: {spec.lsh} needs an integer tensor of shape [{b}, {n}], got "
                f"{None if buckets is None else (buckets.dtype, list(buckets.shape))}",
            )
    if spec.has("key_selection"):
        require(
            key_scores is not None and tuple(key_scores.shape) == (b, n),
            f"key_scores: key_selection needs a tensor of shape [{b}, {n}], got "
            f"{None if key_scores is None else list(key_scores.shape)}",
        )
        key_scores = key_scores.detach()
    run = IMPLS[auto_impl(q, v) if impl == "auto" else impl]
    return run(q, k, v, spec, key_mask, q_buckets, k_buckets, key_scores)


__all__ = ["IMPLS", "auto_impl", "sparse_attention"]
