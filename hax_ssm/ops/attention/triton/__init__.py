"""Triton path of the sparse-attention op (design notes to follow)."""

from __future__ import annotations

from torch import Tensor

from hax_ssm.ops.patterns import SparseSpec


def triton_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: SparseSpec,
    key_mask: Tensor,
    q_buckets: Tensor | None = None,
    k_buckets: Tensor | None = None,
    key_scores: Tensor | None = None,
) -> Tensor:
    from hax_ssm.ops.attention.triton.attention import triton_sparse_attention

    return triton_sparse_attention(q, k, v, spec, key_mask, q_buckets, k_buckets, key_scores)
