"""Launchers and the autograd.Function of the Triton path (imports triton: load it through the package)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import triton
from torch import Tensor

from hax_ssm.ops.attention.triton import kernels as kn
from hax_ssm.ops.attention.triton import masked as mk
from hax_ssm.ops.attention.triton.index import (
    Blocks,
    KeySelectionIndex,
    LshIndex,
    Parts,
    cdiv,
    far_key_segments,
    key_selection_index,
    lsh_index,
    lsh_items,
)
from hax_ssm.ops.common import patch_triton_interpreter
from hax_ssm.ops.patterns import SparseSpec

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if INTERPRET:
    patch_triton_interpreter()
BLOCKS_OVERRIDE: Blocks | None = None  # set through tile_sizes()
SEGMENT_ROWS = 16  # partial rows summed per step of segment_reduce
# Sequences up to this length with an LSH or key-selection part run on the masked path (masked.py): every
# causal tile with the pattern as a predicate beats the gathered path's index work there. Measured on an
# H100 (HAX fwd+bwd, B * L = 64K tokens, graphed): masked 0.88 vs gathered 0.98 ms at L 2560, 1.02 vs
# 0.98 ms at L 3072 (benchmarks/attention.py, "crossover" in results/attention_benchmark.json).
MASKED_MAX_LENGTH = 2816
PATHS = ("auto", "gathered", "masked")
PATH_OVERRIDE = "auto"  # set through force_path()
# The masked index counts LSH buckets below this in per-block tables (n_hist int32 per block: 32 bytes per token at
# 512 buckets, BQ 64); a block with a larger (or negative) bucket id scans the earlier keys instead.
HIST_SIZE = 512
INDEX_CHUNK = 8  # earlier blocks whose key lists (and bucket tables) masked.index_rows takes per step


def padded(d: int) -> int:
    """Head sizes are padded to a power of two >= 16 (tl.dot's minimum), with masked loads."""
    return max(16, triton.next_power_of_2(d))


@contextlib.contextmanager
def tile_sizes(blocks: Blocks) -> Iterator[None]:
    """Run the kernels with other tiles: small ones make short test sequences span many blocks, chunks
    and items; the benchmark's --tiles sweep times the candidates for the defaults."""
    global BLOCKS_OVERRIDE
    old, BLOCKS_OVERRIDE = BLOCKS_OVERRIDE, blocks
    try:
        yield
    finally:
        BLOCKS_OVERRIDE = old


@contextlib.contextmanager
def force_path(path: str) -> Iterator[None]:
    """Run every pattern on one path ("gathered": O(L * k), "masked": every causal tile) or the default
    choice ("auto", see :func:`uses_masked`): for tests and to time both paths at one length."""
    global PATH_OVERRIDE
    if path not in PATHS:
        raise ValueError(f"path {path!r}: allowed: {', '.join(PATHS)}")
    old, PATH_OVERRIDE = PATH_OVERRIDE, path
    try:
        yield
    finally:
        PATH_OVERRIDE = old


def uses_masked(parts: Parts, n: int) -> bool:
    if PATH_OVERRIDE != "auto":
        return PATH_OVERRIDE == "masked"
    return bool(parts.lsh or parts.ks) and n <= MASKED_MAX_LENGTH


def choose_blocks(dvp: int, dtype: torch.dtype) -> Blocks:
    """Fixed defaults that fit an H100's shared memory and registers without autotuning. At d_v 128 bf16,
    4 warps without pipelining beat 8 warps with 2 stages by 1.4x (paper shape) to 1.6x (1M tokens):
    ``benchmarks/attention.py --tiles``, results/attention_tiles.json."""
    if BLOCKS_OVERRIDE is not None:
        return BLOCKS_OVERRIDE
    if dvp >= 256:
        return Blocks(k=32, warps=8, stages=1 if dtype == torch.float32 else 2)
    return Blocks(warps=4, stages=1)


def precision(dtype: torch.dtype) -> int:
    if dtype == torch.float32:
        return 1
    return 2 if INTERPRET and dtype == torch.bfloat16 else 0


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, blocks: Blocks, **meta: Any) -> None:
    """Launch; if the compiled kernel does not fit (shared memory), retry once without pipelining."""
    if min(grid) == 0:
        return
    try:
        kernel[grid](*args, num_warps=blocks.warps, num_stages=blocks.stages, **meta)
    except triton.runtime.errors.OutOfResources:
        kernel[grid](*args, num_warps=blocks.warps, num_stages=1, **meta)


def triton_thresholds(packed: Tensor, prefix: Tensor, k_c: int, bq: int) -> Tensor:
    b, n = packed.shape
    out = torch.empty_like(packed)
    grid = (cdiv(n, bq), b)
    kn.ks_threshold_kernel[grid](packed, prefix, out, n, prefix.shape[1], k_c, BQ=bq, KCP=triton.next_power_of_2(k_c))
    return out


@dataclass
class Plan:
    """Everything the kernels need besides q, k, v: sizes, flags and the index work."""

    parts: Parts
    blocks: Blocks
    n: int
    nb: int
    dims: dict[str, int]
    key_mask: Tensor  # uint8 [B, L]
    ks: KeySelectionIndex
    lsh: LshIndex
    global_keys: Tensor

    @property
    def flags(self) -> tuple[int, ...]:
        return self.parts.flags


class MaskedIndex(NamedTuple):
    """The masked path's per-token metadata, [B, L]: packed key-selection scores and thresholds (int64), LSH
    buckets (int64), q_count (real keys <= i in query i's bucket) and k_rank (rank of real key j among the
    real keys <= j of its bucket), int32."""

    packed: Tensor
    threshold: Tensor
    q_buckets: Tensor
    k_buckets: Tensor
    q_count: Tensor
    k_rank: Tensor


def masked_index(
    parts: Parts, num_buckets: int, mask: Tensor, key_scores: Tensor | None, q_buckets: Tensor | None,
    k_buckets: Tensor | None, blocks: Blocks,
) -> MaskedIndex:  # fmt: skip
    """Two launches, masked.index_blocks then masked.index_rows (none for a positional pattern); absent parts
    get stand-ins."""
    b, n = mask.shape
    nb = cdiv(n, blocks.q)
    device = mask.device
    i64 = sorted_keys = torch.zeros(1, dtype=torch.int64, device=device)
    i32 = hist = torch.zeros(1, dtype=torch.int32, device=device)
    index = MaskedIndex(i64, i64, i64, i64, i32, i32)
    n_hist = min(num_buckets, HIST_SIZE)
    if parts.ks:
        packed, threshold = torch.empty(2, b, n, dtype=torch.int64, device=device)
        index = index._replace(packed=packed, threshold=threshold)
        sorted_keys = torch.empty(b, nb, blocks.q, dtype=torch.int64, device=device)
    if parts.lsh:
        q_count, k_rank = torch.empty(2, b, n, dtype=torch.int32, device=device)
        qb, kb = (x.to(torch.int64).contiguous() for x in (q_buckets, k_buckets))
        index = index._replace(q_buckets=qb, k_buckets=kb, q_count=q_count, k_rank=k_rank)
        hist = torch.empty(b, nb, n_hist, dtype=torch.int32, device=device)
    if not (parts.ks or parts.lsh):
        return index
    flags = {"ks": parts.ks, "lsh": parts.lsh, "BQ": blocks.q, "blocks": blocks}
    scores = key_scores.contiguous() if parts.ks else i64
    launch(mk.index_blocks, (nb, b), scores, mask, index.k_buckets, index.packed, sorted_keys, hist, n, nb, n_hist,
           BH=1024, **flags)  # fmt: skip
    launch(
        mk.index_rows, (nb, b, parts.ks + parts.lsh), mask, index.q_buckets, index.k_buckets, index.packed,
        sorted_keys, hist, index.threshold, index.q_count, index.k_rank, n, nb, parts.k_c, n_hist,
        KCP=triton.next_power_of_2(parts.k_c), G=INDEX_CHUNK, **flags,
    )  # fmt: skip
    return index


@dataclass
class MaskedPlan:
    """What the masked kernels need besides q, k, v: flags (k_c, r, full, sw, sink, dil, ks, lsh), sizes,
    the key mask and the per-token metadata."""

    flags: tuple[int, ...]
    blocks: Blocks
    dims: dict[str, int]
    key_mask: Tensor  # uint8 [B, L]
    index: MaskedIndex

    @property
    def metadata(self) -> tuple[Tensor, ...]:
        return self.key_mask, *self.index


def make_plan(
    spec: SparseSpec,
    q: Tensor,
    v: Tensor,
    key_mask: Tensor,
    q_buckets: Tensor | None,
    k_buckets: Tensor | None,
    key_scores: Tensor | None,
) -> Plan | MaskedPlan:
    parts = Parts.of(spec)
    n, dk = q.shape[1:]
    dims = {"DK": dk, "DV": v.shape[-1], "DKP": padded(dk), "DVP": padded(v.shape[-1]), "PREC": precision(q.dtype)}
    blocks = choose_blocks(dims["DVP"], q.dtype)
    device = q.device
    mask = key_mask.to(torch.uint8).contiguous()
    if uses_masked(parts, n):
        index = masked_index(parts, spec.num_buckets, mask, key_scores, q_buckets, k_buckets, blocks)
        return MaskedPlan((*parts.flags, parts.lsh), blocks, dims, mask, index)
    i64 = torch.zeros(1, dtype=torch.int64, device=device)  # stands in for buffers of absent parts
    i32 = torch.zeros(1, dtype=torch.int32, device=device)
    ks = KeySelectionIndex(i64, i64, i32, i64)
    if parts.ks:
        ks = key_selection_index(key_scores, key_mask, parts.k_c, blocks.q, triton_thresholds)
    nb = cdiv(n, blocks.q)
    lsh = LshIndex(i32, i32, i32, i32)
    if parts.lsh:
        lsh = lsh_index(q_buckets, k_buckets, key_mask, parts.k_c)
    return Plan(parts, blocks, n, nb, dims, mask, ks, lsh, parts.global_keys(n, device))


def _strides(*xs: Tensor) -> list[int]:
    return [s for x in xs for s in (x.stride(0), x.stride(1))]


def _delta(out: Tensor, grad_out: Tensor, dims: dict[str, int], blocks: Blocks) -> Tensor:
    """rowsum(dO * O) [B, L] in fp32."""
    b, n = out.shape[:2]
    delta = torch.empty(b, n, dtype=torch.float32, device=out.device)
    launch(kn.delta_kernel, (cdiv(n, blocks.q), b), out, grad_out, delta, n, DV=dims["DV"], DVP=dims["DVP"],
           BQ=blocks.q, blocks=blocks)  # fmt: skip
    return delta


def forward(q: Tensor, k: Tensor, v: Tensor, plan: Plan) -> tuple[Tensor, Tensor]:
    """O [B, L, dv] (v's dtype) and the log-sum-exp [B, L] (fp32, -inf for queries without keys)."""
    b, n, _ = q.shape
    p, blocks, dims = plan.parts, plan.blocks, plan.dims
    out = torch.empty(b, n, dims["DV"], dtype=v.dtype, device=v.device)
    lse = torch.empty(b, n, dtype=torch.float32, device=v.device)
    meta = {**dims, "BQ": blocks.q, "BK": blocks.k}
    grid = (plan.nb, b)
    strides = _strides(q, k, v)
    if p.positional:
        launch(
            kn.kernel1_fwd, grid, q, k, v, out, lse, plan.key_mask, plan.ks.packed, plan.ks.threshold,
            plan.ks.prefix_pos, *strides, n, plan.nb, *plan.flags, blocks=blocks, **meta,
        )  # fmt: skip
    if p.lsh:
        launch(
            kn.lsh_fwd, grid, q, k, v, out, lse, plan.ks.packed, plan.ks.threshold, *plan.lsh,
            *strides, n, int(p.positional), *plan.flags, blocks=blocks, **meta,
        )  # fmt: skip
    return out, lse


def backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor, plan: Plan
) -> tuple[Tensor, Tensor, Tensor]:
    b, n, _ = q.shape
    p, blocks, dims = plan.parts, plan.blocks, plan.dims
    dk_, dv_ = dims["DK"], dims["DV"]
    meta = {**dims, "BQ": blocks.q, "BK": blocks.k}
    small = {key: dims[key] for key in ("DK", "DV", "DKP", "DVP")}
    grad_out = grad_out.contiguous()
    device = q.device
    delta = _delta(out, grad_out, dims, blocks)
    grid = (plan.nb, b)
    strides = _strides(q, k, v)
    common = (q, k, v, grad_out, lse, delta)
    dq = torch.empty(b, n, dk_, dtype=torch.float32, device=device)
    # kernel 1's dK/dV pass stores every row; without it the LSH pass adds into zeros
    alloc = torch.empty if p.positional else torch.zeros
    dk = alloc(b, n, dk_, dtype=torch.float32, device=device)
    dv = alloc(b, n, dv_, dtype=torch.float32, device=device)
    if p.positional:
        mask, packed, thr, prefix = plan.key_mask, plan.ks.packed, plan.ks.threshold, plan.ks.prefix_pos
        launch(
            kn.kernel1_dq, grid, *common, dq, mask, packed, thr, prefix, *strides, n, plan.nb, *plan.flags,
            blocks=blocks, **meta,
        )  # fmt: skip
        n_kb = cdiv(n, blocks.k)
        launch(
            kn.near_dkdv, (n_kb, b), *common, mask, packed, thr, dk, dv, *strides, n, plan.nb, blocks.chunk,
            *plan.flags, blocks=blocks, **meta,
        )  # fmt: skip
        if p.sink or p.dil or p.ks:
            _far_dkdv(q, k, v, grad_out, lse, delta, dk, dv, plan, strides, meta)
    if p.lsh:
        lsh = plan.lsh
        launch(
            kn.lsh_dq, grid, *common, dq, plan.ks.packed, plan.ks.threshold, *lsh, *strides, n,
            int(p.positional), *plan.flags, blocks=blocks, **meta,
        )  # fmt: skip
        items = lsh_items(lsh, p.k_c, blocks)
        part_k = torch.empty(items.num_slots * blocks.k, dk_, dtype=torch.float32, device=device)
        part_v = torch.empty(items.num_slots * blocks.k, dv_, dtype=torch.float32, device=device)
        launch(
            kn.lsh_dkdv, (len(items.batch),), *common, plan.ks.packed, plan.ks.threshold, *lsh,
            items.batch, items.tile, items.qb0, items.qb1, items.slot, dk, dv, part_k, part_v,
            *strides, n, *plan.flags, blocks=blocks, **meta,
        )  # fmt: skip
        launch(
            kn.item_reduce, (len(items.count),), lsh.kperm, items.count, items.base, part_k, part_v, dk, dv, n,
            cdiv(n, blocks.k), BK=blocks.k, blocks=blocks, **small,
        )  # fmt: skip
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _far_dkdv(
    q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor, lse: Tensor, delta: Tensor, dk: Tensor, dv: Tensor,
    plan: Plan, strides: list[int], meta: dict[str, int],
) -> None:  # fmt: skip
    """Far pairs of kernel 1: partial sums per (chunk, slot), then a deterministic reduction per key."""
    b, n, _ = q.shape
    p, blocks = plan.parts, plan.blocks
    n_chunks = cdiv(plan.nb, blocks.chunk)
    n_global = len(plan.global_keys)
    n_slots = n_global + (p.k_c if p.ks else 0)
    n_slot_tiles = cdiv(n_slots, blocks.k)
    part_k = torch.empty(b, n_chunks, n_slots, dk.shape[-1], dtype=torch.float32, device=q.device)
    part_v = torch.empty(b, n_chunks, n_slots, dv.shape[-1], dtype=torch.float32, device=q.device)
    launch(
        kn.far_dkdv, (n_chunks * n_slot_tiles, b), q, k, v, grad_out, lse, delta, plan.key_mask,
        plan.ks.packed, plan.ks.threshold, plan.global_keys, plan.ks.prefix_pos, part_k, part_v, *strides, n,
        plan.nb, blocks.chunk, n_global, n_slots, n_slot_tiles, *plan.flags, blocks=blocks, **meta,
    )  # fmt: skip
    if n_global:  # sink/dilated slots hold the same key in every chunk: a plain sum over chunks
        keys = plan.global_keys.long()
        dk[:, keys] += part_k[:, :, :n_global].sum(1)
        dv[:, keys] += part_v[:, :, :n_global].sum(1)
    if p.ks:
        keys, rows = far_key_segments(p, plan.ks.prefix_pos, n_global, blocks)
        small = {key: meta[key] for key in ("DK", "DV", "DKP", "DVP")}
        launch(
            kn.segment_reduce, (keys.shape[1], b), keys, rows, part_k, part_v, dk, dv, n, keys.shape[1],
            n_chunks * n_slots, R=SEGMENT_ROWS, blocks=blocks, **small,
        )  # fmt: skip


def masked_forward(q: Tensor, k: Tensor, v: Tensor, plan: MaskedPlan) -> tuple[Tensor, Tensor]:
    b, n, _ = q.shape
    blocks = plan.blocks
    out = torch.empty(b, n, plan.dims["DV"], dtype=v.dtype, device=v.device)
    lse = torch.empty(b, n, dtype=torch.float32, device=v.device)
    launch(
        mk.masked_fwd, (cdiv(n, blocks.q), b), q, k, v, out, lse, *plan.metadata, *_strides(q, k, v), n,
        *plan.flags, blocks=blocks, **plan.dims, BQ=blocks.q, BK=blocks.k,
    )  # fmt: skip
    return out, lse


def masked_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, grad_out: Tensor, plan: MaskedPlan
) -> tuple[Tensor, Tensor, Tensor]:
    """One launch: dQ programs (per query block), then dK/dV programs (per key tile), stored in the inputs' dtype."""
    b, n, _ = q.shape
    blocks, dims = plan.blocks, plan.dims
    grad_out = grad_out.contiguous()
    delta = _delta(out, grad_out, dims, blocks)
    dq = torch.empty(b, n, dims["DK"], dtype=q.dtype, device=q.device)
    dk = torch.empty(b, n, dims["DK"], dtype=k.dtype, device=q.device)
    dv = torch.empty(b, n, dims["DV"], dtype=v.dtype, device=q.device)
    nb = cdiv(n, blocks.q)
    launch(
        mk.masked_bwd, (nb + cdiv(n, blocks.k), b), q, k, v, grad_out, lse, delta, dq, dk, dv, *plan.metadata,
        *_strides(q, k, v), n, nb, *plan.flags, blocks=blocks, **dims, BQ=blocks.q, BK=blocks.k,
    )  # fmt: skip
    return dq, dk, dv


class TritonSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, plan: Plan | MaskedPlan) -> Tensor:
        out, lse = (masked_forward if isinstance(plan, MaskedPlan) else forward)(q, k, v, plan)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        run = masked_backward if isinstance(ctx.plan, MaskedPlan) else backward
        return (*run(q, k, v, out, lse, grad_out, ctx.plan), None)


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def triton_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    spec: SparseSpec,
    key_mask: Tensor,
    q_buckets: Tensor | None = None,
    k_buckets: Tensor | None = None,
    key_scores: Tensor | None = None,
) -> Tensor:
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)  # tl.dot wants one dtype
    q, k, w = (_last_dim_contiguous(x.to(dtype)) for x in (q, k, v))
    plan = make_plan(spec, q, w, key_mask, q_buckets, k_buckets, key_scores)
    return TritonSparseAttention.apply(q, k, w, plan).to(v.dtype)
