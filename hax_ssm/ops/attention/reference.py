"""The oracle: dense L x L masks of every pattern and a dense masked softmax. Obvious, not fast."""

from __future__ import annotations

import torch
from torch import Tensor

from hax_ssm.ops.common import acc_dtype
from hax_ssm.ops.key_selection import prefix_topk_mask_dense
from hax_ssm.ops.lsh import lsh_mask_dense
from hax_ssm.ops.patterns import SparseSpec


def allowed_mask(
    spec: SparseSpec,
    key_mask: Tensor,
    q_buckets: Tensor | None = None,
    k_buckets: Tensor | None = None,
    key_scores: Tensor | None = None,
) -> Tensor:
    """allowed[b, i, j] [B, L, L]: query i attends to key j (the union of the parts, causal, real keys)."""
    n, k_c = key_mask.shape[1], spec.part_keys
    i = torch.arange(n, device=key_mask.device)[:, None]
    j = torch.arange(n, device=key_mask.device)[None, :]
    causal = j <= i
    parts = {
        "full": lambda: causal,
        "sliding_window": lambda: (i - j >= 0) & (i - j < k_c),
        "sink": lambda: j < k_c,
        "dilated": lambda: j % spec.dilation == spec.dilation - 1,
        "sign_bin_lsh": lambda: lsh_mask_dense(q_buckets, k_buckets, key_mask, k_c),
        "argmax_lsh": lambda: lsh_mask_dense(q_buckets, k_buckets, key_mask, k_c),
        "key_selection": lambda: prefix_topk_mask_dense(key_scores, key_mask, k_c),
    }
    union = torch.zeros(1, n, n, dtype=torch.bool, device=key_mask.device)
    for part in spec.parts:
        union = union | parts[part]()
    return union & causal & key_mask[:, None, :]


def dense_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """softmax(q k^T) v over the allowed keys [B, Lq, Lk]; a query with no allowed key outputs 0."""
    dtype = acc_dtype(q)
    scores = q.to(dtype) @ k.to(dtype).transpose(-1, -2)
    any_key = allowed.any(-1, keepdim=True)
    # Rows without keys get finite scores (so no NaN reaches the gradients), then weight 0.
    scores = scores.masked_fill(~allowed, -float("inf")).masked_fill(~any_key, 0.0)
    weights = torch.softmax(scores, dim=-1) * any_key
    return (weights @ v.to(dtype)).to(v.dtype)


def reference_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: SparseSpec,
    key_mask: Tensor,
    q_buckets: Tensor | None = None,
    k_buckets: Tensor | None = None,
    key_scores: Tensor | None = None,
) -> Tensor:
    return dense_attention(q, k, v, allowed_mask(spec, key_mask, q_buckets, k_buckets, key_scores))
