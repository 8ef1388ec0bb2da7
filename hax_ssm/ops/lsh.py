"""LSH buckets of the sparse branch and the per-query candidate keys they select.

Hashing (PAPER.md section 3): centre each token, L2-normalise it, project it with a Gaussian
H [d_state, num_hash]; ``sign_bin`` packs the num_hash sign bits into one int64 (2**num_hash
buckets), ``argmax`` takes the index of the largest projection (num_hash buckets).

Centring ``causal`` subtracts the mean of the real tokens up to and including the token, so no
future token can move a past bucket; ``sequence`` subtracts the mean over the whole sequence's
real tokens, which is what the reference code does (it leaks the future into the past).

Selection: query i keeps the k_c most recent real keys j <= i with k_bucket[j] == q_bucket[i].
:func:`lsh_candidates` finds them in O(L log L) by sorting keys by (bucket, position);
:func:`lsh_mask_dense` is the L x L oracle.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from hax_ssm.ops.common import acc_dtype, prefix_sum

HASH_KINDS = {"sign_bin_lsh": "sign_bin", "argmax_lsh": "argmax"}


def center(x: Tensor, key_mask: Tensor | None, mode: str = "causal") -> Tensor:
    """x [B, L, d] minus the mean of the real tokens (prefix mean if causal, whole sequence if sequence)."""
    x = x.to(acc_dtype(x))
    m = torch.ones_like(x[..., :1]) if key_mask is None else key_mask[..., None].to(x.dtype)
    if mode == "causal":
        mean = prefix_sum(x * m) / prefix_sum(m).clamp_min(1)
    elif mode == "sequence":
        mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)
    else:
        raise ValueError(f"lsh centring {mode!r}: allowed: causal, sequence")
    return x - mean


def bucketize(centred: Tensor, proj: Tensor, kind: str) -> Tensor:
    """Buckets (int64, [...]) of already-centred tokens [..., d] under the projection proj [d, num_hash]."""
    z = torch.nn.functional.normalize(centred, dim=-1) @ proj.to(centred.dtype)
    if kind == "sign_bin":
        weights = 2 ** torch.arange(proj.shape[1], device=z.device, dtype=torch.int64)
        return ((z > 0).to(torch.int64) * weights).sum(-1)  # at most 2**63 - 1 for 63 hashes: no overflow
    if kind == "argmax":
        return z.argmax(-1)
    raise ValueError(f"hash kind {kind!r}: allowed: sign_bin, argmax")


def hash_buckets(x: Tensor, proj: Tensor, kind: str, key_mask: Tensor | None = None, mode: str = "causal") -> Tensor:
    """Buckets [B, L] (int64) of the tokens x [B, L, d]. kind: 'sign_bin' or 'argmax'."""
    return bucketize(center(x, key_mask, mode), proj, kind)


class LshCandidates(NamedTuple):
    """Per-query LSH keys and the O(1) membership metadata a kernel can use instead.

    idx/valid [B, L, k_c]: the kept keys, most recent first. q_count [B, L]: real keys j <= i in
    query i's bucket. k_rank [B, L]: 1-based rank of real key j among the real keys <= j of its
    bucket (0 for padding). Key j is kept by query i iff j is real, j <= i,
    k_bucket[j] == q_bucket[i] and k_rank[j] > q_count[i] - k_c.
    """

    idx: Tensor
    valid: Tensor
    q_count: Tensor
    k_rank: Tensor


def lsh_candidates(q_buckets: Tensor, k_buckets: Tensor, key_mask: Tensor, k_c: int) -> LshCandidates:
    """The k_c most recent real same-bucket keys j <= i of every query i, without any L x L tensor."""
    b, n = k_buckets.shape
    pos = torch.arange(n, device=k_buckets.device)
    # Bucket ids reach 2**63 - 1, so map them to compact ids first; then (id, position) packs into one int64.
    _, compact = torch.unique(torch.stack([q_buckets, k_buckets]), return_inverse=True)
    qid, kid = compact[0], compact[1]
    num_ids = int(compact.max()) + 1
    # Padding keys sort after every real key, so searches over real (id, position) pairs never see them.
    key_code = torch.where(key_mask, kid * n + pos, num_ids * n + pos)
    sorted_code, perm = key_code.sort(dim=1)
    end = torch.searchsorted(sorted_code, qid * n + pos, right=True)  # one past the last real key <= (qid, i)
    start = torch.searchsorted(sorted_code, qid * n)  # first real key of bucket qid
    slots = end[..., None] - 1 - torch.arange(k_c, device=pos.device)
    valid = slots >= start[..., None]
    idx = perm.gather(1, slots.clamp_min(0).view(b, -1)).view(b, n, k_c)
    slot_of_key = torch.empty_like(perm).scatter_(1, perm, pos.expand(b, n).contiguous())
    k_start = torch.searchsorted(sorted_code, kid * n)
    k_rank = torch.where(key_mask, slot_of_key - k_start + 1, 0)
    return LshCandidates(idx, valid, end - start, k_rank)


def lsh_mask_dense(q_buckets: Tensor, k_buckets: Tensor, key_mask: Tensor, k_c: int) -> Tensor:
    """Oracle [B, L, L]: allowed[b, i, j] iff j is among the k_c most recent real keys <= i of i's bucket."""
    n = k_buckets.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=k_buckets.device).tril()
    match = (q_buckets[:, :, None] == k_buckets[:, None, :]) & causal & key_mask[:, None, :]
    newer_or_same = match.flip(-1).cumsum(-1).flip(-1)  # matches at positions >= j (all <= i)
    return match & (newer_or_same <= k_c)


def recent_same_bucket(q_bucket: Tensor, k_buckets: Tensor, key_mask: Tensor, k_c: int) -> tuple[Tensor, Tensor]:
    """Decoding: the k_c most recent real keys of all past keys [B, T] in the bucket of one query [B].

    Returns idx, valid [B, 1, min(k_c, T)]; O(T) per step.
    """
    match = (k_buckets == q_bucket[:, None]) & key_mask
    pos = torch.arange(k_buckets.shape[1], device=k_buckets.device)
    latest = torch.where(match, pos, -1).topk(min(k_c, len(pos)), dim=1).values
    return latest.clamp_min(0)[:, None], (latest >= 0)[:, None]
