"""Kernels of the masked path of the Triton op, for short sequences with an LSH or key-selection part
(launchers in attention.py).

At the paper's shape (L = 1058) the gathered O(L * k) path is latency-bound: about 70 small launches of
sorting, top-k and work lists, then kernels whose tiles wait on index loads. Here every query block instead
walks all its causal key tiles, contiguous in memory, and keeps pairs by an O(1) predicate that covers
every part of the union at once (so there is no second kernel and no merge):

  kernel-1 parts as in the gathered path (window, sink, dilated, full, packed[j] >= T_i for key selection)
  | LSH: k_bucket[j] == q_bucket[i] and k_rank[j] > q_count[i] - k_c (the k_c newest of the bucket).

The work is O(L^2 / 2) tile steps; no L x L tensor is stored, and memory stays O(L). The predicate's
per-token metadata (packed scores and thresholds, q_count and k_rank) comes from two parallel launches
instead of the gathered path's ~30 launches of scans and sorts: ``index_blocks`` summarises each block (its
keys sorted by score, its per-bucket key counts), then ``index_rows`` combines the earlier blocks' summaries
per block (one sort of their best keys, a sum of their counts). A chain of merges through the blocks, one
program per sequence, was 5x slower on an H100 (0.29 against 0.05 ms at the paper's shape): each of its 17
dependent steps paid the latency of a whole tile of work. The backward is one launch of dQ programs (per
query block) and dK/dV programs (per key tile, over the later query blocks): every output row has one
writer, so it is deterministic, and gradients are stored in the inputs' dtype with no fp32 buffers.

``attention.MASKED_MAX_LENGTH`` is where this path stops paying (``benchmarks/attention.py`` measures the
crossover).
"""

from __future__ import annotations

import triton
import triton.language as tl

from hax_ssm.ops.attention.triton.kernels import (
    INT64_MIN,
    _dkdv_step,
    _dq_step,
    _kernel,
    _kernel1_allowed,
    _load_key_tile,
    _load_query_grads,
    _load_rows,
    _softmax_step,
    _store_output,
    _store_rows,
    _threshold_rows,
)

# ---------------------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _pack_scores(x, t, real):
    """Twin of index.pack_scores: (fp32 bits as a monotone integer) * 2**32 + (2**32 - 1 - t), INT64_MIN for
    padding."""
    x = tl.where(x == 0.0, 0.0, x)  # -0.0 -> +0.0: equal scores must pack equal
    bits = x.to(tl.int32, bitcast=True)
    order = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
    return tl.where(real, order * 4294967296 + (4294967295 - t.to(tl.int64)), INT64_MIN)


@triton.jit
def _count_earlier(KB, MASK, z, n, s, qb, kb, BQ: tl.constexpr):
    """Real keys before position s in each row's query bucket (qb) and key bucket (kb), by scanning them."""
    q_before = tl.zeros([BQ], tl.int32)
    k_before = tl.zeros([BQ], tl.int32)
    for s0 in range(0, s, BQ):
        j = s0 + tl.arange(0, BQ)
        kb_j = tl.load(KB + z * n + j)
        real_j = tl.load(MASK + z * n + j) != 0
        q_before += tl.sum(((kb_j[None, :] == qb[:, None]) & real_j[None, :]).to(tl.int32), 1)
        k_before += tl.sum(((kb_j[None, :] == kb[:, None]) & real_j[None, :]).to(tl.int32), 1)
    return q_before, k_before


@triton.jit
def _block(MASK, z, n, b, BQ: tl.constexpr):
    t = b * BQ + tl.arange(0, BQ)
    ok = t < n
    return t, ok, ok & (tl.load(MASK + z * n + t, mask=ok, other=0) != 0)


@_kernel
def index_blocks(
    SCORES, MASK, KB, PACKED, SORTED, HIST, n, nb, n_hist,
    ks: tl.constexpr, lsh: tl.constexpr, BQ: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    """Per block of BQ tokens, what later blocks need of it. Key selection: the packed scores (PACKED) and
    the block's packed keys in descending order (SORTED). LSH: how many of its real keys fall in each
    bucket below n_hist (HIST, [n_hist] per block)."""
    b = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    t, ok, real = _block(MASK, z, n, b, BQ)
    if ks:
        own = _pack_scores(tl.load(SCORES + z * n + t, mask=ok, other=0.0).to(tl.float32), t, real)
        tl.store(PACKED + z * n + t, own, mask=ok)
        tl.store(SORTED + (z * nb + b) * BQ + tl.arange(0, BQ), tl.sort(own, descending=True))
    if lsh:
        hist = HIST + (z * nb + b) * n_hist
        for h in range(0, n_hist, BH):
            tl.store(hist + h + tl.arange(0, BH), 0, mask=h + tl.arange(0, BH) < n_hist)
        tl.debug_barrier()  # zeros stored before any count lands
        kb = tl.load(KB + z * n + t, mask=ok, other=0)
        tl.atomic_add(hist + kb, 1, mask=real & (kb >= 0) & (kb < n_hist))  # integer adds: deterministic


@_kernel
def index_rows(
    MASK, QB, KB, PACKED, SORTED, HIST, THRESH, QCOUNT, KRANK, n, nb, k_c, n_hist,
    ks: tl.constexpr, lsh: tl.constexpr, BQ: tl.constexpr, KCP: tl.constexpr, G: tl.constexpr,
):  # fmt: skip
    """Per block, its rows' metadata from index_blocks' summaries of the earlier blocks. Key selection: the
    KCP best earlier keys, sorted out of the earlier blocks' lists, give each row's threshold
    (THRESH, as ks_threshold_kernel). LSH: per-bucket counts of the earlier blocks plus the block's own
    give q_count and k_rank (see lsh.LshCandidates); a block with a bucket outside [0, n_hist) scans the
    earlier keys instead (exact for any integer buckets)."""
    b = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)  # key selection and LSH run in programs of their own (concurrently)
    t, ok, real = _block(MASK, z, n, b, BQ)
    a = tl.arange(0, BQ)
    if ks and part == 0:  # best: the KCP best earlier keys, the top of one sort of best and G - 1 earlier lists
        c = tl.arange(0, KCP)[None, :]
        g = tl.arange(0, G)[:, None]
        best = tl.full([KCP], INT64_MIN, tl.int64)
        for e0 in range(0, b, G - 1):
            e = e0 + g - 1
            lists = tl.load(SORTED + (z * nb + e) * BQ + c, mask=(g > 0) & (e < b) & (c < BQ), other=INT64_MIN)
            lists = tl.where(g == 0, best[None, :], lists)
            top = tl.reshape(tl.sort(tl.reshape(lists, [G * KCP]), descending=True), [G, KCP])
            best = tl.max(tl.where(g == 0, top, INT64_MIN), 0)
        own = tl.load(PACKED + z * n + t, mask=ok, other=INT64_MIN)
        tl.store(THRESH + z * n + t, _threshold_rows(best, own, a, k_c), mask=ok)
    if lsh and part == ks:
        qb = tl.load(QB + z * n + t, mask=ok, other=0)
        kb = tl.load(KB + z * n + t, mask=ok, other=0)
        listed = ((qb >= 0) & (qb < n_hist) & (kb >= 0) & (kb < n_hist)) | ~ok
        if tl.min(listed.to(tl.int32), 0) == 0:
            q_before, k_before = _count_earlier(KB, MASK, z, n, b * BQ, qb, kb, BQ)
        else:  # sum the tables of G earlier blocks per step
            q_before = tl.zeros([BQ], tl.int32)
            k_before = tl.zeros([BQ], tl.int32)
            for e0 in range(0, b, G):
                e = e0 + tl.arange(0, G)[:, None]
                hist = HIST + (z * nb + e) * n_hist
                earlier = (e < b) & ok[None, :]
                q_before += tl.sum(tl.load(hist + qb[None, :], mask=earlier, other=0), 0)
                k_before += tl.sum(tl.load(hist + kb[None, :], mask=earlier, other=0), 0)
        upto = real[None, :] & (a[None, :] <= a[:, None])  # [row, key a] of the block
        q_count = q_before + tl.sum(((kb[None, :] == qb[:, None]) & upto).to(tl.int32), 1)
        k_rank = k_before + tl.sum(((kb[None, :] == kb[:, None]) & upto).to(tl.int32), 1)
        tl.store(QCOUNT + z * n + t, q_count, mask=ok)
        tl.store(KRANK + z * n + t, tl.where(real, k_rank, 0), mask=ok)


@triton.jit
def _allowed(query, key, k_c, r, full, sw, sink, dil, ks, lsh):
    """[BQ, BK]: query i attends to key j through some part of the union (causal, real keys only)."""
    i, t_i, qb_i, q_count = query
    j, real, packed, kb_j, k_rank = key
    allowed = _kernel1_allowed(i, j, real, packed, t_i, k_c, r, full, sw, sink, dil, ks)
    if lsh:  # j is among the k_c newest real keys <= i of i's bucket
        recent = (kb_j[None, :] == qb_i[:, None]) & (k_rank[None, :] > (q_count - k_c)[:, None])
        allowed = allowed | (recent & (j[None, :] <= i[:, None]) & real[None, :])
    return allowed


@triton.jit
def _query(THRESH, QB, QCOUNT, z, n, i, ok, ks, lsh):
    """Rows i: what the predicate needs of them (threshold, LSH bucket and count)."""
    t_i = tl.load(THRESH + z * n + i, mask=ok & (ks != 0), other=0)
    qb_i = tl.load(QB + z * n + i, mask=ok & (lsh != 0), other=0)
    q_count = tl.load(QCOUNT + z * n + i, mask=ok & (lsh != 0), other=0)
    return i, t_i, qb_i, q_count


@triton.jit
def _query_grads(
    Q, DO, LSE, DELTA, THRESH, QB, QCOUNT, z, n, i, sqb, sql, ks, lsh,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
):  # fmt: skip
    """Rows i of Q and dO, their LSE and delta, and what the predicate needs of them."""
    ok = i < n
    q, do, lse, delta, _ = _load_query_grads(Q, DO, LSE, DELTA, THRESH, z, n, i, ok, sqb, sql, 0, DK, DV, DKP, DVP)
    return q, do, lse, delta, _query(THRESH, QB, QCOUNT, z, n, i, ok, ks, lsh)


@triton.jit
def _keys(
    K, V, MASK, PACKED, KB, KRANK, z, n, j, skb, skl, svb, svl, ks, lsh,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
):  # fmt: skip
    """Rows j of K and V, and what the predicate needs of them."""
    ok = j < n
    kt, vt, real, packed = _load_key_tile(K, V, MASK, PACKED, z, n, j, ok, skb, skl, svb, svl, ks, DK, DV, DKP, DVP)
    kb_j = tl.load(KB + z * n + j, mask=ok & (lsh != 0), other=0)
    k_rank = tl.load(KRANK + z * n + j, mask=ok & (lsh != 0), other=0)
    return kt, vt, (j, real, packed, kb_j, k_rank)


@_kernel
def masked_fwd(
    Q, K, V, OUT, LSE, MASK, PACKED, THRESH, QB, KB, QCOUNT, KRANK,
    sqb, sql, skb, skl, svb, svl, n,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    lsh: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """O, LSE of one block of BQ consecutive queries over all its causal key tiles."""
    b = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    i = b * BQ + tl.arange(0, BQ)
    i_ok = i < n
    q = _load_rows(Q + z * sqb, i, i_ok, sql, DK, DKP)
    query = _query(THRESH, QB, QCOUNT, z, n, i, i_ok, ks, lsh)
    m_i = tl.full([BQ], float("-inf"), tl.float32)
    l_i = tl.zeros([BQ], tl.float32)
    acc = tl.zeros([BQ, DVP], tl.float32)
    for s in range(0, min(b * BQ + BQ, n), BK):
        j = s + tl.arange(0, BK)
        kt, vt, key = _keys(K, V, MASK, PACKED, KB, KRANK, z, n, j, skb, skl, svb, svl, ks, lsh, DK, DV, DKP, DVP)
        allowed = _allowed(query, key, k_c, r, full, sw, sink, dil, ks, lsh)
        m_i, l_i, acc = _softmax_step(m_i, l_i, acc, q, kt, vt, allowed, PREC)
    _store_output(OUT, LSE, z, n, i, i_ok, m_i, l_i, acc, DV, DVP)


@_kernel
def masked_bwd(
    Q, K, V, DO, LSE, DELTA, DQ, DKB, DVB, MASK, PACKED, THRESH, QB, KB, QCOUNT, KRANK,
    sqb, sql, skb, skl, svb, svl, n, nb,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    lsh: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """One launch, two kinds of program: p < nb computes dQ of query block p over its causal key tiles;
    p >= nb computes dK, dV of key tile p - nb over the query blocks at or after it. Stored in DQ's dtype."""
    p = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    if p < nb:
        i = p * BQ + tl.arange(0, BQ)
        q, do, lse, delta, query = _query_grads(
            Q, DO, LSE, DELTA, THRESH, QB, QCOUNT, z, n, i, sqb, sql, ks, lsh, DK, DV, DKP, DVP
        )
        dq = tl.zeros([BQ, DKP], tl.float32)
        for s in range(0, min(p * BQ + BQ, n), BK):
            j = s + tl.arange(0, BK)
            kt, vt, key = _keys(K, V, MASK, PACKED, KB, KRANK, z, n, j, skb, skl, svb, svl, ks, lsh, DK, DV, DKP, DVP)
            allowed = _allowed(query, key, k_c, r, full, sw, sink, dil, ks, lsh)
            dq = _dq_step(dq, q, do, lse, delta, kt, vt, allowed, PREC)
        _store_rows(DQ + z * n * DK, i, i < n, DK, dq.to(DQ.dtype.element_ty), DK, DKP)
    else:
        j = (p - nb) * BK + tl.arange(0, BK)
        kt, vt, key = _keys(K, V, MASK, PACKED, KB, KRANK, z, n, j, skb, skl, svb, svl, ks, lsh, DK, DV, DKP, DVP)
        dk = tl.zeros([BK, DKP], tl.float32)
        dv = tl.zeros([BK, DVP], tl.float32)
        for s in range((p - nb) * BK // BQ * BQ, n, BQ):
            q, do, lse, delta, query = _query_grads(
                Q, DO, LSE, DELTA, THRESH, QB, QCOUNT, z, n, s + tl.arange(0, BQ), sqb, sql, ks, lsh, DK, DV, DKP, DVP
            )
            allowed = _allowed(query, key, k_c, r, full, sw, sink, dil, ks, lsh)
            dk, dv = _dkdv_step(dk, dv, kt, vt, q, do, lse, delta, allowed, PREC)
        j_ok = j < n
        _store_rows(DKB + z * n * DK, j, j_ok, DK, dk.to(DKB.dtype.element_ty), DK, DKP)
        _store_rows(DVB + z * n * DV, j, j_ok, DV, dv.to(DVB.dtype.element_ty), DV, DVP)
