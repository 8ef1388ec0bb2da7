"""Index work of the Triton path, in plain torch on the inputs' device: no L x L tensor, no host sync.

Everything here is O(L * k_c) or O(L log L) per sequence, has a static shape (sizes follow from B, L and
the spec only) and is tested on CPU against the helpers of :mod:`hax_ssm.ops.key_selection` and
:mod:`hax_ssm.ops.lsh`. The kernels in :mod:`.kernels` consume it; the module docstring of the package
explains the design.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from hax_ssm.ops.patterns import SparseSpec

INT64_MIN = -(2**63)
NO_KEY = 2**31 - 1
# Elements of one chunk of the torch threshold computation (bounds its working memory).
THRESHOLD_CHUNK = 1 << 22


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Blocks:
    """Tile sizes. q: queries per block; k: keys per tile; chunk: query blocks per chunk of the backward
    near/far split; item: query blocks per work item of the LSH dK/dV pass; warps, stages: launch options."""

    q: int = 64
    k: int = 64
    chunk: int = 4
    item: int = 32
    warps: int = 4
    stages: int = 2


@dataclass(frozen=True)
class Parts:
    """The non-LSH parts of a spec as the runtime flags the kernels take (one compiled kernel for all specs)."""

    k_c: int
    full: int
    sw: int
    sink: int
    dil: int
    ks: int
    lsh: int
    r: int  # dilation (1 when there is no dilated part, so j % r stays defined)

    @classmethod
    def of(cls, spec: SparseSpec) -> Parts:
        return cls(
            k_c=spec.part_keys,
            full=int(spec.has("full")),
            sw=int(spec.has("sliding_window")),
            sink=int(spec.has("sink")),
            dil=int(spec.has("dilated")),
            ks=int(spec.has("key_selection")),
            lsh=int(spec.lsh is not None),
            r=spec.dilation if spec.has("dilated") else 1,
        )

    @property
    def positional(self) -> bool:
        """Whether kernel 1 (every part but LSH) has anything to do."""
        return bool(self.full or self.sw or self.sink or self.dil or self.ks)

    @property
    def flags(self) -> tuple[int, ...]:
        """Kernel arguments, in the order the kernels declare them."""
        return (self.k_c, self.r, self.full, self.sw, self.sink, self.dil, self.ks)

    def global_keys(self, n: int, device: torch.device) -> Tensor:
        """Sink and dilated keys (each once, ascending): the keys every later query block may list."""
        keys = []
        if self.sink:
            keys.append(torch.arange(min(self.k_c, n), device=device))
        if self.dil:  # keys (w + 1) * r - 1, from the first one >= k_c when the sink holds the earlier ones
            first = ((self.k_c + self.r) // self.r - 1 if self.sink else 0) * self.r + self.r - 1
            keys.append(torch.arange(first, max(n, first), self.r, device=device))
        if not keys:
            return torch.zeros(0, dtype=torch.int32, device=device)
        return torch.cat(keys).to(torch.int32)


# ---------------------------------------------------------------------------------------------------------
# Key selection: one int64 per key orders (score desc, position asc); prefix top-k per block; thresholds.


def pack_scores(scores: Tensor, key_mask: Tensor) -> Tensor:
    """[B, L] int64, increasing with (score, -position); padding keys get INT64_MIN (below every real key).

    Scores are compared in fp32 (exact for bf16/fp16/fp32 scores). The high 32 bits are the fp32 bit
    pattern mapped to a monotone signed integer, the low 32 bits are 2**32 - 1 - position, so one integer
    comparison applies the tie rule "equal scores: the earlier key wins".
    """
    x = scores.float() + 0.0  # -0.0 -> +0.0: equal scores must pack equal
    bits = x.view(torch.int32).to(torch.int64)
    order = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    pos = torch.arange(scores.shape[1], device=scores.device)
    return torch.where(key_mask, order * 2**32 + (2**32 - 1 - pos), INT64_MIN)


def unpack_positions(packed: Tensor) -> Tensor:
    """Positions (int32) of packed keys; -1 where packed is INT64_MIN (no key)."""
    pos = 2**32 - 1 - (packed & 0xFFFFFFFF)
    return torch.where(packed == INT64_MIN, -1, pos).to(torch.int32)


def _fill(shape: tuple[int, ...], like: Tensor) -> Tensor:
    return torch.full(shape, INT64_MIN, dtype=torch.int64, device=like.device)


def _blocked(packed: Tensor, bq: int) -> Tensor:
    """[B, L] -> [B, nb, bq], padded with INT64_MIN."""
    b, n = packed.shape
    nb = cdiv(n, bq)
    return torch.cat([packed, _fill((b, nb * bq - n), packed)], dim=1).view(b, nb, bq)


def prefix_topk_blocks(packed: Tensor, k_c: int, bq: int) -> Tensor:
    """P [B, nb, k_c]: the k_c best packed keys before each block start, descending (INT64_MIN = none).

    Per-block top-k, then an exclusive Hillis-Steele scan over blocks whose combine is top-k of the union
    of two disjoint lists: ceil(log2(nb)) torch.topk calls on [B, nb, 2 k_c], no Python loop over blocks.
    """
    blocks = _blocked(packed, bq)
    b, nb, _ = blocks.shape
    top = blocks.topk(min(k_c, bq), dim=-1).values
    if k_c > bq:
        top = torch.cat([top, _fill((b, nb, k_c - bq), packed)], dim=-1)
    step = 1
    while step < nb:  # after the step with offset s, top[:, i] covers blocks (i - 2s, i]
        merged = torch.cat([top[:, step:], top[:, :-step]], dim=-1).topk(k_c, dim=-1).values
        top = torch.cat([top[:, :step], merged], dim=1)
        step *= 2
    return torch.cat([_fill((b, 1, k_c), packed), top[:, :-1]], dim=1)


def ks_thresholds(packed: Tensor, prefix: Tensor, k_c: int, bq: int) -> Tensor:
    """T [B, L] int64: the k_c-th best real key j <= i for every query i (INT64_MIN when fewer exist).

    Real key j is kept by query i iff j <= i and packed[j] >= T[i]. The candidates of a block are its
    prefix list P_b and its own keys; a candidate x available at row r is the threshold iff exactly
    k_c - 1 available candidates beat it. The plain-torch twin of the ``_ks_threshold`` kernel,
    processed in chunks of blocks to bound memory.
    """
    own = _blocked(packed, bq)
    b, nb, _ = own.shape
    rows = torch.arange(bq, device=packed.device)
    out = torch.empty(b, nb, bq, dtype=torch.int64, device=packed.device)
    step = max(1, THRESHOLD_CHUNK // (b * (k_c + bq) * bq))
    for s in range(0, nb, step):
        p, o = prefix[:, s : s + step], own[:, s : s + step]
        cand = torch.cat([p, o], dim=-1)  # [B, c, W]
        p_beats = (p[..., None, :] > cand[..., :, None]).sum(-1)  # [B, c, W]
        o_beats = (o[..., None, :] > cand[..., :, None]).cumsum(-1)  # [B, c, W, bq(r)]: own keys a <= r
        own_available = (rows[:, None] <= rows).expand(*o.shape, bq)  # own key a is available at rows r >= a
        available = torch.cat([(p != INT64_MIN)[..., None].expand(*p.shape, bq), own_available], dim=-2)
        available = available & (cand != INT64_MIN)[..., None]
        hit = available & (p_beats[..., None] + o_beats == k_c - 1)
        out[:, s : s + step] = torch.where(hit, cand[..., None], INT64_MIN).amax(-2)
    return out.view(b, -1)[:, : packed.shape[1]]


class KeySelectionIndex(NamedTuple):
    packed: Tensor  # [B, L] int64
    prefix: Tensor  # [B, nb, k_c] int64, the best packed keys before each block
    prefix_pos: Tensor  # [B, nb, k_c] int32, their positions (-1 = none)
    threshold: Tensor  # [B, L] int64


def key_selection_index(
    scores: Tensor, key_mask: Tensor, k_c: int, bq: int, threshold_fn=ks_thresholds
) -> KeySelectionIndex:
    packed = pack_scores(scores, key_mask)
    prefix = prefix_topk_blocks(packed, k_c, bq)
    return KeySelectionIndex(packed, prefix, unpack_positions(prefix), threshold_fn(packed, prefix, k_c, bq))


# ---------------------------------------------------------------------------------------------------------
# LSH: queries and keys sorted by (bucket, position); every query's keys are one contiguous run of keys.


class LshIndex(NamedTuple):
    """Sorted order of queries (qperm) and keys (kperm), int32 [B, L]: slot t holds query qperm[t].

    Sorted query t keeps exactly the sorted keys u in [lo[t], end[t]): the k_c most recent real keys
    j <= i of its bucket. lo and end are non-decreasing in t, and padding keys sort after every real one.
    """

    qperm: Tensor
    kperm: Tensor
    lo: Tensor
    end: Tensor


def lsh_index(q_buckets: Tensor, k_buckets: Tensor, key_mask: Tensor, k_c: int) -> LshIndex:
    n = k_buckets.shape[1]
    pos = torch.arange(n, device=k_buckets.device)
    # Dense ids of the bucket values of each row (ids < 2n), so (id, position) packs into one int64
    # without a host sync (torch.unique would need one).
    values, order = torch.cat([q_buckets, k_buckets], dim=1).sort(dim=1)
    new = torch.ones_like(values, dtype=torch.bool)
    new[:, 1:] = values[:, 1:] != values[:, :-1]
    ids = torch.empty_like(order).scatter_(1, order, new.to(torch.int64).cumsum(1) - 1)
    qid, kid = ids[:, :n], ids[:, n:]
    key_code = torch.where(key_mask, kid * n + pos, 2 * n * n + pos)
    sorted_keys, kperm = key_code.sort(dim=1)
    sorted_queries, qperm = (qid * n + pos).sort(dim=1)
    end = torch.searchsorted(sorted_keys, sorted_queries, right=True)
    start = torch.searchsorted(sorted_keys, sorted_queries - sorted_queries % n)
    lo = torch.maximum(start, end - k_c)
    return LshIndex(*(x.to(torch.int32).contiguous() for x in (qperm, kperm, lo, end)))


# ---------------------------------------------------------------------------------------------------------
# Backward work lists


class LshItems(NamedTuple):
    """Work items of the LSH dK/dV pass: item e handles sorted-key tile ``tile[e]`` of row ``batch[e]``
    over sorted-query blocks [qb0[e], qb1[e]); ``slot[e]`` >= 0 writes a partial sum there (the tile has
    several items), -1 adds straight into dK/dV. Per tile: ``count`` items whose partials start at ``base``.
    Sizes are static upper bounds (padding items have qb0 == qb1 and batch == -1)."""

    batch: Tensor
    tile: Tensor
    qb0: Tensor
    qb1: Tensor
    slot: Tensor
    count: Tensor  # [B * n_tiles]
    base: Tensor  # [B * n_tiles]
    num_slots: int


def lsh_items(index: LshIndex, k_c: int, blocks: Blocks) -> LshItems:
    """Split every sorted-key tile's (contiguous) range of sorted queries into items of <= blocks.item blocks.

    Query t needs key tiles lo[t] // bk ... (end[t] - 1) // bk: at most span = (k_c - 1) // bk + 2 of them,
    so the tiles' query ranges sum to <= n * span, which bounds the number of items and partial slots
    without looking at the data (no host sync).
    """
    bq, bk, per = blocks.q, blocks.k, blocks.item
    b, n = index.lo.shape
    n_tiles = cdiv(n, bk)
    device = index.lo.device
    u0 = (torch.arange(n_tiles, device=device) * bk).expand(b, -1).contiguous().to(torch.int32)
    t_lo = torch.searchsorted(index.end, u0, right=True)  # first query with end > u0
    t_hi = torch.searchsorted(index.lo, u0 + bk)  # first query with lo >= u0 + bk
    qb_lo = t_lo // bq
    n_blocks = torch.where(t_hi > t_lo, (t_hi + bq - 1) // bq - qb_lo, 0)
    count = ((n_blocks + per - 1) // per).flatten()
    span = (k_c - 1) // bk + 2
    blocks_bound = cdiv(n * span, bq) + 2 * n_tiles  # per row, >= sum of n_blocks
    max_items = b * (n_tiles + cdiv(blocks_bound, per))
    max_slots = b * cdiv(2 * blocks_bound, per)
    multi = count > 1
    base = torch.cumsum(torch.where(multi, count, 0), 0) - torch.where(multi, count, 0)
    ends = torch.cumsum(count, 0)
    torch._assert_async(ends[-1] <= max_items)
    torch._assert_async(base[-1] + count[-1] * multi[-1] <= max_slots)
    item = torch.arange(max_items, device=device)
    tile = torch.searchsorted(ends, item, right=True).clamp_max(b * n_tiles - 1)
    valid = item < ends[-1]
    chunk = item - (ends - count)[tile]
    qb0 = qb_lo.flatten()[tile] + chunk * per
    qb1 = torch.minimum(qb0 + per, (qb_lo + n_blocks).flatten()[tile])
    slot = torch.where(multi[tile], base[tile] + chunk, -1)
    i32 = torch.int32
    return LshItems(
        batch=torch.where(valid, tile // n_tiles, -1).to(i32),
        tile=(tile % n_tiles).to(i32),
        qb0=torch.where(valid, qb0, 0).to(i32),
        qb1=torch.where(valid, qb1, 0).to(i32),
        slot=torch.where(valid, slot, -1).to(i32),
        count=count.to(i32),
        base=base.to(i32),
        num_slots=max_slots,
    )


def far_key_segments(parts: Parts, prefix_pos: Tensor, n_global: int, blocks: Blocks) -> tuple[Tensor, Tensor]:
    """Group the key-selection rows of the far partial sums by key, for a deterministic reduction.

    The far pass writes one partial row per (chunk c, slot); slots n_global.. hold the prefix list of the
    chunk's first block. Returns keys [B, E] ascending (n = no key: empty, or held by a sink/dilated slot)
    and rows [B, E], the flat (c, slot) row of each, stable so equal keys keep chunk order.
    NO_KEY marks rows without a key to reduce (empty, or held by a sink/dilated slot).
    """
    b, _, k_c = prefix_pos.shape
    pos = prefix_pos[:, :: blocks.chunk].to(torch.int64)  # [B, n_chunks, k_c]
    n_chunks = pos.shape[1]
    held = pos < 0
    if parts.sink:
        held |= pos < parts.k_c
    if parts.dil:
        held |= pos % parts.r == parts.r - 1
    keys = torch.where(held, NO_KEY, pos).view(b, -1)
    n_slots = n_global + k_c
    slots = n_global + torch.arange(k_c, device=pos.device)
    rows = torch.arange(n_chunks, device=pos.device)[:, None] * n_slots + slots
    keys, order = keys.sort(dim=1, stable=True)
    return keys.to(torch.int32).contiguous(), rows.flatten()[order].to(torch.int32).contiguous()
