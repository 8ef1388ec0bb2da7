"""The O(L * k) path in plain torch (the CPU path): per-query key lists, union, gather, softmax.

Every pattern gives each query a list of candidate key indices [B, L, W_part] with a validity
mask; the union sorts the concatenated lists and drops duplicates, so a key reached by two parts
is counted once. :class:`GatherAttention` then attends over the listed keys, query chunk by query
chunk, and recomputes the gathers in backward: peak memory is O(L * W), never O(L * W * d) (a
plain [B, L, W, d] gather at 64K was 20.5 GB, DESIGN.md). Nothing here has L x L elements; only
``full`` is O(L^2) in time (it is the dense baseline): :class:`FullAttention` does it in query chunks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hax_ssm.ops.common import acc_dtype
from hax_ssm.ops.key_selection import prefix_topk
from hax_ssm.ops.lsh import lsh_candidates
from hax_ssm.ops.patterns import SparseSpec

# Elements of one chunk's gathered keys+values (or scores, for full): bounds the working memory.
CHUNK_ELEMENTS = 1 << 22
POSITIONAL = ("full", "sliding_window", "sink", "dilated")


def positional_keys(spec: SparseSpec, part: str, query_pos: Tensor, n_keys: int) -> tuple[Tensor, Tensor]:
    """Candidate keys [Lq, W] and validity of a pattern that depends on positions only (causal)."""
    k_c, device = spec.part_keys, query_pos.device
    if part == "sliding_window":
        idx = query_pos[:, None] - torch.arange(k_c, device=device)
        return idx.clamp_min(0), idx >= 0
    if part == "sink":
        idx = torch.arange(min(k_c, n_keys), device=device)
    elif part == "dilated":
        r = spec.dilation
        idx = torch.arange(n_keys // r, device=device) * r + (r - 1)
    elif part == "full":
        idx = torch.arange(n_keys, device=device)
    else:
        raise ValueError(f"{part!r} is not a positional pattern")
    idx = idx.expand(len(query_pos), -1)
    return idx, idx <= query_pos[:, None]


def union_keys(parts: list[tuple[Tensor, Tensor]], key_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate per-part lists [B, Lq, W_i], keep real keys, count each key once: idx, valid [B, Lq, W]."""
    b, n_keys = key_mask.shape
    lq = max(idx.shape[-2] for idx, _ in parts)
    idx = torch.cat([i.expand(b, lq, -1) for i, _ in parts], dim=-1)
    valid = torch.cat([v.expand(b, lq, -1) for _, v in parts], dim=-1)
    if idx.shape[-1] == 0:  # e.g. dilated before its first key: keep one (invalid) slot
        return idx.new_zeros(b, lq, 1), valid.new_zeros(b, lq, 1)
    valid = valid & key_mask.gather(1, idx.reshape(b, -1)).view_as(valid)
    if len(parts) == 1:
        return idx, valid
    code = torch.where(valid, idx, n_keys).sort(dim=-1).values  # invalid slots sort last
    duplicate = torch.zeros_like(valid)
    duplicate[..., 1:] = code[..., 1:] == code[..., :-1]
    return code.clamp_max(n_keys - 1), (code < n_keys) & ~duplicate


def key_lists(
    spec: SparseSpec,
    key_mask: Tensor,
    q_buckets: Tensor | None = None,
    k_buckets: Tensor | None = None,
    key_scores: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The de-duplicated key list of every query: idx, valid [B, L, W] with W = O(k)."""
    n, k_c = key_mask.shape[1], spec.part_keys
    query_pos = torch.arange(n, device=key_mask.device)
    parts = []
    for part in spec.parts:
        if part in POSITIONAL:
            parts.append(positional_keys(spec, part, query_pos, n))
        elif part == spec.lsh:
            parts.append(lsh_candidates(q_buckets, k_buckets, key_mask, k_c)[:2])
        else:
            parts.append(prefix_topk(key_scores, key_mask, k_c)[:2])
    return union_keys(parts, key_mask)


def _flat_index(idx: Tensor, n_keys: int) -> Tensor:
    """Rows of idx [B, C, W] in a [B * n_keys, d] view."""
    return (idx + torch.arange(idx.shape[0], device=idx.device)[:, None, None] * n_keys).reshape(-1)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, N, d] at idx [B, C, W] -> [B, C, W, d] (index_select: ~10x faster than gather on CPU)."""
    b, n, d = x.shape
    return x.reshape(b * n, d).index_select(0, _flat_index(idx, n)).view(*idx.shape, d)


def _softmax_rows(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Weights and log-sum-exp of masked scores [..., W] (-inf = masked); a row with no key gets weights 0."""
    row_max = scores.amax(-1, keepdim=True)
    p = torch.exp(scores - torch.where(torch.isfinite(row_max), row_max, 0.0))
    denom = p.sum(-1, keepdim=True)
    # lse = inf on empty rows, so backward's exp(scores - lse) = exp(-inf) = 0, never NaN
    lse = torch.where(denom > 0, row_max + torch.log(denom), float("inf"))
    return p / denom.clamp_min(torch.finfo(p.dtype).tiny), lse.squeeze(-1)


def _gathered_scores(q: Tensor, k: Tensor, idx: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    keys = _gather_rows(k, idx)
    return (keys @ q[..., None]).squeeze(-1).masked_fill(~valid, -float("inf")), keys


class GatherAttention(torch.autograd.Function):
    """softmax over listed keys: q [B, L, dk], k [B, N, dk], v [B, N, dv], idx/valid [B, L, W] -> [B, L, dv].

    Chunked over queries; backward recomputes the gathers from the saved log-sum-exp and
    accumulates dK, dV with index_add (deterministic on CPU). Invalid slots weigh 0; a query
    with no valid slot outputs 0.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
        dtype = acc_dtype(q)
        qf, kf, vf = (x.to(dtype).contiguous() for x in (q, k, v))
        b, n, w = idx.shape
        ctx.chunk = max(1, CHUNK_ELEMENTS // (b * w * (q.shape[-1] + v.shape[-1])))
        out, lse = vf.new_empty(b, n, v.shape[-1]), qf.new_empty(b, n)
        for s in range(0, n, ctx.chunk):
            sl = slice(s, s + ctx.chunk)
            scores, _ = _gathered_scores(qf[:, sl], kf, idx[:, sl], valid[:, sl])
            p, lse[:, sl] = _softmax_rows(scores)
            out[:, sl] = (p[..., None, :] @ _gather_rows(vf, idx[:, sl])).squeeze(-2)
        ctx.save_for_backward(q, k, v, idx, valid, out, lse)
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, idx, valid, out, lse = ctx.saved_tensors
        dtype = out.dtype
        qf, kf, vf, go = (x.to(dtype).contiguous() for x in (q, k, v, grad_out))
        b, n, _ = idx.shape
        n_keys = k.shape[1]
        delta = (go * out).sum(-1)
        dq = torch.zeros_like(qf)
        dk = kf.new_zeros(b * n_keys, k.shape[-1])  # flat rows: one index_add_ per chunk for the whole batch
        dv = vf.new_zeros(b * n_keys, v.shape[-1])
        for s in range(0, n, ctx.chunk):
            sl = slice(s, s + ctx.chunk)
            scores, keys = _gathered_scores(qf[:, sl], kf, idx[:, sl], valid[:, sl])
            p = torch.exp(scores - lse[:, sl, None])
            dp = (_gather_rows(vf, idx[:, sl]) @ go[:, sl, :, None]).squeeze(-1)
            ds = p * (dp - delta[:, sl, None])
            dq[:, sl] = (ds[..., None, :] @ keys).squeeze(-2)
            flat = _flat_index(idx[:, sl], n_keys)
            dk.index_add_(0, flat, (ds[..., None] * qf[:, sl, None, :]).reshape(-1, k.shape[-1]))
            dv.index_add_(0, flat, (p[..., None] * go[:, sl, None, :]).reshape(-1, v.shape[-1]))
        return dq.to(q.dtype), dk.view(b, n_keys, -1).to(k.dtype), dv.view(b, n_keys, -1).to(v.dtype), None, None


def gather_attention(q: Tensor, k: Tensor, v: Tensor, idx: Tensor, valid: Tensor) -> Tensor:
    return GatherAttention.apply(q, k, v, idx, valid)


def _causal_scores(q: Tensor, k: Tensor, key_mask: Tensor, s: int, e: int) -> Tensor:
    """Scores of queries s..e-1 against keys 0..e-1 [B, e - s, e], masked causally and by padding."""
    pos = torch.arange(e, device=q.device)
    allowed = (pos[None, None, :] <= pos[None, s:e, None]) & key_mask[:, None, :e]
    return (q[:, s:e] @ k[:, :e].transpose(1, 2)).masked_fill(~allowed, -float("inf"))


class FullAttention(torch.autograd.Function):
    """Causal softmax over all real keys, in query chunks recomputed in backward: O(chunk * L) memory."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor) -> Tensor:
        dtype = acc_dtype(q)
        qf, kf, vf = (x.to(dtype).contiguous() for x in (q, k, v))
        b, n, _ = q.shape
        ctx.chunk = max(1, CHUNK_ELEMENTS // (b * n))
        out, lse = vf.new_empty(b, n, v.shape[-1]), qf.new_empty(b, n)
        for s in range(0, n, ctx.chunk):
            e = min(n, s + ctx.chunk)
            p, lse[:, s:e] = _softmax_rows(_causal_scores(qf, kf, key_mask, s, e))
            out[:, s:e] = p @ vf[:, :e]
        ctx.save_for_backward(q, k, v, key_mask, out, lse)
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, key_mask, out, lse = ctx.saved_tensors
        dtype = out.dtype
        qf, kf, vf, go = (x.to(dtype).contiguous() for x in (q, k, v, grad_out))
        n = q.shape[1]
        delta = (go * out).sum(-1)
        dq, dk, dv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
        for s in range(0, n, ctx.chunk):
            e = min(n, s + ctx.chunk)
            p = torch.exp(_causal_scores(qf, kf, key_mask, s, e) - lse[:, s:e, None])
            ds = p * (go[:, s:e] @ vf[:, :e].transpose(1, 2) - delta[:, s:e, None])
            dq[:, s:e] = ds @ kf[:, :e]
            dk[:, :e] += ds.transpose(1, 2) @ qf[:, s:e]
            dv[:, :e] += p.transpose(1, 2) @ go[:, s:e]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def sparse_attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: SparseSpec,
    key_mask: Tensor,
    q_buckets: Tensor | None = None,
    k_buckets: Tensor | None = None,
    key_scores: Tensor | None = None,
) -> Tensor:
    if spec.parts == ("full",):
        return FullAttention.apply(q, k, v, key_mask)
    idx, valid = key_lists(spec, key_mask, q_buckets, k_buckets, key_scores)
    return gather_attention(q, k, v, idx, valid)
