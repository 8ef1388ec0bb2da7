"""Triton kernels of the sparse-attention branch (the design is in the package docstring).

Conventions: one program handles BQ query rows (a block of consecutive queries, or of sorted queries for
LSH) or BK key rows; ``z`` is the batch row (heads folded into B). Q, K, V are read through (batch, row)
strides with a contiguous last dim; every other buffer is contiguous and owned by the launcher. The pattern
arrives as compile-time flags (full, sw, sink, dil, ks): each pattern compiles its own kernels, whose
predicates hold only its parts (a runtime flag left the unused parts' integer work, e.g. j % r, in every tile).
k_c, r, lengths and batch sizes stay runtime arguments. Scores, softmax and accumulators are fp32.

Kernel 1 (positional + key selection) works on a query block's candidate tiles: a contiguous key range
[lo, end) (window, own block, or everything for ``full``), the sink keys before it, the dilated keys
before it, and the block's prefix top-k list; each candidate is listed once and kept for row i by the
O(1) predicate ``_kernel1_allowed``. The LSH kernel walks each sorted query's contiguous run of sorted
keys and drops the keys kernel 1 already holds, so the two key sets are disjoint and merge exactly.
"""

from __future__ import annotations

import inspect

import triton
import triton.language as tl

INT64_MIN: tl.constexpr = tl.constexpr(-(2**63))


# Strides stay specialised (divisible by 16 or not): it lets loads of a row vectorise.
STRIDES = ("sqb", "sql", "skb", "skl", "svb", "svl")


def _kernel(fn):
    """triton.jit that does not specialise on the values of integer arguments (lengths, k_c, r) other than
    strides: every length and batch size shares one compiled kernel per pattern, dtype and head size."""
    params = inspect.signature(fn).parameters
    ints = [
        name
        for name, p in params.items()
        if name[0].islower() and p.annotation is inspect.Parameter.empty and name not in STRIDES
    ]
    return triton.jit(do_not_specialize=ints)(fn)


# ---------------------------------------------------------------------------------------------------------
# helpers


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """PREC 0: native tensor-core dot (bf16/fp16 in, fp32 out); 1: exact fp32; 2: upcast to fp32 first
    (only for the CPU interpreter, whose bf16 dot is wrong)."""
    if PREC == 2:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif PREC == 1:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _load_rows(ptr, rows, ok, stride, D: tl.constexpr, DP: tl.constexpr):
    cols = tl.arange(0, DP)
    offs = rows[:, None].to(tl.int64) * stride + cols[None, :]
    return tl.load(ptr + offs, mask=ok[:, None] & (cols < D)[None, :], other=0.0)


@triton.jit
def _store_rows(ptr, rows, ok, stride, x, D: tl.constexpr, DP: tl.constexpr):
    cols = tl.arange(0, DP)
    offs = rows[:, None].to(tl.int64) * stride + cols[None, :]
    tl.store(ptr + offs, x, mask=ok[:, None] & (cols < D)[None, :])


@triton.jit
def _add_rows(ptr, rows, ok, stride, x, D: tl.constexpr, DP: tl.constexpr):
    """ptr[rows] += x for rows that no other program of this launch touches (no atomics needed)."""
    cols = tl.arange(0, DP)
    offs = rows[:, None].to(tl.int64) * stride + cols[None, :]
    mask = ok[:, None] & (cols < D)[None, :]
    tl.store(ptr + offs, tl.load(ptr + offs, mask=mask, other=0.0) + x, mask=mask)


@triton.jit
def _add_row(ptr, ok, x, D: tl.constexpr, DP: tl.constexpr):
    cols = tl.arange(0, DP)
    mask = ok & (cols < D)
    tl.store(ptr + cols, tl.load(ptr + cols, mask=mask, other=0.0) + x, mask=mask)


@triton.jit
def _block_range(b, n, k_c, full, sw, ks, BQ: tl.constexpr):
    """Query block b covers [start, end); kernel 1 reads its keys [lo, end) as one contiguous range."""
    start = b * BQ
    end = min(start + BQ, n)
    lo = end
    if ks != 0:
        lo = start
    if sw != 0:
        lo = max(start - k_c + 1, 0)
    if full != 0:
        lo = start * 0
    return start, end, lo


@triton.jit
def _kernel1_allowed(i, j, j_ok, j_packed, t_i, k_c, r, full, sw, sink, dil, ks):
    """[BQ, BK]: query i attends to key j through a non-LSH part (causal; j_ok: a real listed key)."""
    ii = i[:, None]
    jj = j[None, :]
    part = (ii - jj < k_c) & (sw != 0)
    part = part | ((jj < k_c) & (sink != 0))
    part = part | ((jj % r == r - 1) & (dil != 0))
    part = part | ((j_packed[None, :] >= t_i[:, None]) & (ks != 0))
    part = part | (full != 0)
    return part & (jj <= ii) & j_ok[None, :]


@triton.jit
def _held_by_global(j, k_c, r, sink, dil):
    """Key j is listed through a sink or dilated slot (so a key-selection slot must not list it again)."""
    return ((j < k_c) & (sink != 0)) | ((j % r == r - 1) & (dil != 0))


@triton.jit
def _kernel1_keys(w, segments, lo, end, PREFIX, k_c, r, sink, dil, BK: tl.constexpr):
    """Candidate tile w of a query block: its keys j [BK] and which of them are listed (each key once)."""
    n_range, n_sink, n_dil, n_ks, sink_hi, dil_w0, dil_w1 = segments
    offs = tl.arange(0, BK)
    if w < n_range:  # the contiguous range [lo, end)
        j = lo + w * BK + offs
        ok = j < end
    elif w < n_range + n_sink:  # sink keys before lo
        j = (w - n_range) * BK + offs
        ok = j < sink_hi
    elif w < n_range + n_sink + n_dil:  # dilated keys before lo, not sink keys
        d = dil_w0 + (w - n_range - n_sink) * BK + offs
        j = (d + 1) * r - 1
        ok = d < dil_w1
    else:  # the block's prefix top-k list, minus keys listed above
        slot = (w - n_range - n_sink - n_dil) * BK + offs
        # Triton may if-convert these branches and issue this load for every w, so its mask must keep it
        # inside the list on its own (slot >= 0) and off the 1-element placeholder without key selection.
        j = tl.load(PREFIX + slot, mask=(slot >= 0) & (slot < k_c) & (n_ks > 0), other=-1)
        ok = (j >= 0) & (j < lo) & ~_held_by_global(j, k_c, r, sink, dil)
    return tl.where(ok, j, 0), ok


@triton.jit
def _segments(b, lo, end, k_c, r, sink, dil, ks, BK: tl.constexpr):
    """Tile counts of the four candidate segments of query block b, and the segment bounds."""
    n_range = tl.cdiv(end - lo, BK)
    sink_hi = tl.where(sink != 0, min(k_c, lo), 0)
    n_sink = tl.cdiv(sink_hi, BK)
    dil_w0 = tl.where(sink != 0, (k_c + r) // r - 1, 0)  # first dilated key >= k_c when sink holds the rest
    dil_w1 = tl.where(dil != 0, lo // r, 0)  # dilated keys (d + 1) * r - 1 < lo
    n_dil = tl.cdiv(max(dil_w1 - dil_w0, 0), BK)
    n_ks = tl.where((ks != 0) & (b > 0), tl.cdiv(k_c, BK), 0)
    return n_range, n_sink, n_dil, n_ks, sink_hi, dil_w0, dil_w1


@triton.jit
def _softmax_step(m_i, l_i, acc, q, kt, vt, allowed, PREC: tl.constexpr):
    s = _dot(q, tl.trans(kt), PREC)
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows without keys yet: no inf - inf
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(vt.dtype), vt, PREC)
    return m_new, l_i, acc


@triton.jit
def _store_output(OUT, LSE, z, n, i, ok, m_i, l_i, acc, DV: tl.constexpr, DVP: tl.constexpr):
    """O = acc / l and LSE = m + log(l) of rows i after an online softmax; 0 and -inf for rows without keys."""
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    _store_rows(OUT + z * n * DV, i, ok, DV, (acc / l_safe[:, None]).to(OUT.dtype.element_ty), DV, DVP)
    tl.store(LSE + z * n + i, tl.where(l_i > 0, m_i + tl.log(l_safe), float("-inf")), mask=ok)


@triton.jit
def _merge(o1, lse1, m_i, l_i, acc):
    """Exact union of two disjoint key sets: (o1, lse1) and the unnormalised (m_i, l_i, acc)."""
    lse2 = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
    top = tl.maximum(lse1, lse2)
    top = tl.where(top == float("-inf"), 0.0, top)
    w1 = tl.exp(lse1 - top)
    w2 = tl.exp(lse2 - top) / tl.where(l_i > 0, l_i, 1.0)
    total = w1 + w2 * l_i
    out = (o1 * w1[:, None] + acc * w2[:, None]) / tl.where(total > 0, total, 1.0)[:, None]
    lse = tl.where(total > 0, top + tl.log(tl.where(total > 0, total, 1.0)), float("-inf"))
    return out, lse


@triton.jit
def _dq_step(dq, q, do, lse, delta, kt, vt, allowed, PREC: tl.constexpr):
    s = _dot(q, tl.trans(kt), PREC)
    p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
    dp = _dot(do, tl.trans(vt), PREC)
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.to(kt.dtype), kt, PREC)


@triton.jit
def _dkdv_step(dk, dv, kt, vt, q, do, lse, delta, allowed, PREC: tl.constexpr):
    s = _dot(q, tl.trans(kt), PREC)
    p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
    dv = dv + _dot(tl.trans(p).to(do.dtype), do, PREC)
    dp = _dot(do, tl.trans(vt), PREC)
    ds = p * (dp - delta[:, None])
    dk = dk + _dot(tl.trans(ds).to(q.dtype), q, PREC)
    return dk, dv


@triton.jit
def _load_lse(LSE, offs, ok):
    """The final log-sum-exp; rows without keys (-inf) become +inf so that exp(s - lse) is 0, never NaN."""
    lse = tl.load(LSE + offs, mask=ok, other=float("inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse)


@triton.jit
def _load_key_tile(
    K, V, MASK, PACKED, z, n, j, ok, skb, skl, svb, svl, ks,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
):  # fmt: skip
    """Rows j of K and V, which of them are real keys, and their packed key-selection scores."""
    real = ok & (tl.load(MASK + z * n + j, mask=ok, other=0) != 0)
    packed = tl.load(PACKED + z * n + j, mask=ok & (ks != 0), other=0)
    kt = _load_rows(K + z * skb, j, ok, skl, DK, DKP)
    vt = _load_rows(V + z * svb, j, ok, svl, DV, DVP)
    return kt, vt, real, packed


@triton.jit
def _load_query_grads(
    Q, DO, LSE, DELTA, THRESH, z, n, i, ok, sqb, sql, ks,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
):  # fmt: skip
    """Rows i of Q and dO, their final log-sum-exp, delta and key-selection threshold."""
    q = _load_rows(Q + z * sqb, i, ok, sql, DK, DKP)
    do = _load_rows(DO + z * n * DV, i, ok, DV, DV, DVP)
    lse = _load_lse(LSE, z * n + i, ok)
    delta = tl.load(DELTA + z * n + i, mask=ok, other=0.0)
    t_i = tl.load(THRESH + z * n + i, mask=ok & (ks != 0), other=0)
    return q, do, lse, delta, t_i


@triton.jit
def _kernel1_tile(
    w, segments, lo, end, PREFIX, i, t_i, K, V, MASK, PACKED, z, n, skb, skl, svb, svl,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """Candidate tile w of kernel 1: K, V rows and which (query, key) pairs of the block it holds."""
    j, ok = _kernel1_keys(w, segments, lo, end, PREFIX, k_c, r, sink, dil, BK)
    kt, vt, real, packed = _load_key_tile(K, V, MASK, PACKED, z, n, j, ok, skb, skl, svb, svl, ks, DK, DV, DKP, DVP)
    return kt, vt, _kernel1_allowed(i, j, real, packed, t_i, k_c, r, full, sw, sink, dil, ks)


@triton.jit
def _sorted_queries(QPERM, LO, END, z, n, t):
    """Sorted query slots t: their positions i and runs [lo, end) of sorted keys (empty where t >= n)."""
    ok = t < n
    i = tl.load(QPERM + z * n + t, mask=ok, other=0)
    lo = tl.load(LO + z * n + t, mask=ok, other=0)
    en = tl.load(END + z * n + t, mask=ok, other=0)
    return i, lo, en


@triton.jit
def _lsh_tile(
    u, u_end, lo, en, i, t_i, KPERM, K, V, PACKED, z, n, skb, skl, svb, svl,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """Sorted keys [u, u + BK): K, V rows and the LSH pairs of the block that kernel 1 does not hold."""
    uu = u + tl.arange(0, BK)
    ok = uu < u_end
    j = tl.load(KPERM + z * n + uu, mask=ok, other=0)
    member = (uu[None, :] >= lo[:, None]) & (uu[None, :] < en[:, None]) & ok[None, :]
    packed = tl.load(PACKED + z * n + j, mask=ok & (ks != 0), other=0)
    member = member & ~_kernel1_allowed(i, j, ok, packed, t_i, k_c, r, full, sw, sink, dil, ks)
    kt = _load_rows(K + z * skb, j, ok, skl, DK, DKP)
    vt = _load_rows(V + z * svb, j, ok, svl, DV, DVP)
    return kt, vt, member


# ---------------------------------------------------------------------------------------------------------
# index kernel


@triton.jit
def _threshold_rows(pre, own, a, k_c):
    """[BQ]: per row r of a block, the k_c-th best of the earlier candidates pre [KCP] (INT64_MIN = none)
    and the block's own packed keys a <= r; INT64_MIN if fewer. A candidate x available at row r is the
    threshold iff exactly k_c - 1 available candidates beat it (packed keys are distinct)."""
    # candidates from the earlier list: available at every row
    beats = tl.sum((pre[None, :] > pre[:, None]).to(tl.int32), 1)[:, None]
    beats = beats + tl.cumsum((own[None, :] > pre[:, None]).to(tl.int32), 1)  # [KCP, BQ(r)]
    hit = (pre[:, None] != INT64_MIN) & (beats == k_c - 1)
    best = tl.max(tl.where(hit, pre[:, None], INT64_MIN), 0)
    # candidates from the block itself: own key a is available at rows r >= a
    beats = tl.sum((pre[None, :] > own[:, None]).to(tl.int32), 1)[:, None]
    beats = beats + tl.cumsum((own[None, :] > own[:, None]).to(tl.int32), 1)  # [BQ(a), BQ(r)]
    hit = (own[:, None] != INT64_MIN) & (a[:, None] <= a[None, :]) & (beats == k_c - 1)
    return tl.maximum(best, tl.max(tl.where(hit, own[:, None], INT64_MIN), 0))


@_kernel
def ks_threshold_kernel(PACKED, PREFIX, THRESH, n, nb, k_c, BQ: tl.constexpr, KCP: tl.constexpr):
    """T[i] = the k_c-th best of (prefix list of i's block) + (own block keys <= i). Twin of
    index.ks_thresholds."""
    b = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    a = tl.arange(0, BQ)
    rows = b * BQ + a
    ok = rows < n
    own = tl.load(PACKED + z * n + rows, mask=ok, other=INT64_MIN)
    c = tl.arange(0, KCP)
    pre = tl.load(PREFIX + (z * nb + b) * k_c + c, mask=c < k_c, other=INT64_MIN)
    tl.store(THRESH + z * n + rows, _threshold_rows(pre, own, a, k_c), mask=ok)


# ---------------------------------------------------------------------------------------------------------
# forward


@_kernel
def kernel1_fwd(
    Q, K, V, OUT, LSE, MASK, PACKED, THRESH, PREFIX,
    sqb, sql, skb, skl, svb, svl, n, nb,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """O, LSE of every non-LSH part for one block of BQ consecutive queries."""
    b = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    start, end, lo = _block_range(b, n, k_c, full, sw, ks, BQ)
    i = start + tl.arange(0, BQ)
    i_ok = i < n
    q = _load_rows(Q + z * sqb, i, i_ok, sql, DK, DKP)
    t_i = tl.load(THRESH + z * n + i, mask=i_ok & (ks != 0), other=0)
    segments = _segments(b, lo, end, k_c, r, sink, dil, ks, BK)
    n_range, n_sink, n_dil, n_ks = segments[0], segments[1], segments[2], segments[3]
    prefix = PREFIX + (z * nb + b) * k_c
    m_i = tl.full([BQ], float("-inf"), tl.float32)
    l_i = tl.zeros([BQ], tl.float32)
    acc = tl.zeros([BQ, DVP], tl.float32)
    for w in range(0, n_range + n_sink + n_dil + n_ks):
        kt, vt, allowed = _kernel1_tile(
            w, segments, lo, end, prefix, i, t_i, K, V, MASK, PACKED, z, n, skb, skl, svb, svl,
            k_c, r, full, sw, sink, dil, ks, DK, DV, DKP, DVP, BK,
        )  # fmt: skip
        m_i, l_i, acc = _softmax_step(m_i, l_i, acc, q, kt, vt, allowed, PREC)
    _store_output(OUT, LSE, z, n, i, i_ok, m_i, l_i, acc, DV, DVP)


@_kernel
def lsh_fwd(
    Q, K, V, OUT, LSE, PACKED, THRESH, QPERM, KPERM, LO, END,
    sqb, sql, skb, skl, svb, svl, n, merge,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """LSH part for BQ consecutive sorted queries, minus the keys kernel 1 holds; merged into O, LSE in place.

    Sorted query t keeps the sorted keys [lo_t, end_t); lo and end are monotone in t, so the block walks
    one range of sorted keys, jumping over gaps no query of the block needs.
    """
    tb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    t = tb * BQ + tl.arange(0, BQ)
    t_ok = t < n
    i, lo, en = _sorted_queries(QPERM, LO, END, z, n, t)
    q = _load_rows(Q + z * sqb, i, t_ok, sql, DK, DKP)
    t_i = tl.load(THRESH + z * n + i, mask=t_ok & (ks != 0), other=0)
    m_i = tl.full([BQ], float("-inf"), tl.float32)
    l_i = tl.zeros([BQ], tl.float32)
    acc = tl.zeros([BQ, DVP], tl.float32)
    u = tl.min(tl.where(t_ok, lo, n), 0)
    u_end = tl.max(en, 0)
    while u < u_end:
        u = max(u, tl.min(tl.where(en > u, lo, n), 0))  # skip keys no query of the block needs
        kt, vt, member = _lsh_tile(
            u, u_end, lo, en, i, t_i, KPERM, K, V, PACKED, z, n, skb, skl, svb, svl,
            k_c, r, full, sw, sink, dil, ks, DK, DV, DKP, DVP, BK,
        )  # fmt: skip
        m_i, l_i, acc = _softmax_step(m_i, l_i, acc, q, kt, vt, member, PREC)
        u += BK
    has_first = t_ok & (merge != 0)
    o1 = _load_rows(OUT + z * n * DV, i, has_first, DV, DV, DVP).to(tl.float32)
    lse1 = tl.load(LSE + z * n + i, mask=has_first, other=float("-inf"))
    out, lse = _merge(o1, lse1, m_i, l_i, acc)
    _store_rows(OUT + z * n * DV, i, t_ok, DV, out.to(OUT.dtype.element_ty), DV, DVP)
    tl.store(LSE + z * n + i, lse, mask=t_ok)


# ---------------------------------------------------------------------------------------------------------
# backward


@_kernel
def delta_kernel(OUT, DO, DELTA, n, DV: tl.constexpr, DVP: tl.constexpr, BQ: tl.constexpr):
    """delta = rowsum(dO * O) in fp32."""
    b = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    i = b * BQ + tl.arange(0, BQ)
    ok = i < n
    o = _load_rows(OUT + z * n * DV, i, ok, DV, DV, DVP).to(tl.float32)
    do = _load_rows(DO + z * n * DV, i, ok, DV, DV, DVP).to(tl.float32)
    tl.store(DELTA + z * n + i, tl.sum(o * do, 1), mask=ok)


@_kernel
def kernel1_dq(
    Q, K, V, DO, LSE, DELTA, DQ, MASK, PACKED, THRESH, PREFIX,
    sqb, sql, skb, skl, svb, svl, n, nb,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dQ (fp32, stored) of the non-LSH parts for one query block: the forward's tiles again."""
    b = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    start, end, lo = _block_range(b, n, k_c, full, sw, ks, BQ)
    i = start + tl.arange(0, BQ)
    i_ok = i < n
    q, do, lse, delta, t_i = _load_query_grads(Q, DO, LSE, DELTA, THRESH, z, n, i, i_ok, sqb, sql, ks, DK, DV, DKP, DVP)
    segments = _segments(b, lo, end, k_c, r, sink, dil, ks, BK)
    n_range, n_sink, n_dil, n_ks = segments[0], segments[1], segments[2], segments[3]
    prefix = PREFIX + (z * nb + b) * k_c
    dq = tl.zeros([BQ, DKP], tl.float32)
    for w in range(0, n_range + n_sink + n_dil + n_ks):
        kt, vt, allowed = _kernel1_tile(
            w, segments, lo, end, prefix, i, t_i, K, V, MASK, PACKED, z, n, skb, skl, svb, svl,
            k_c, r, full, sw, sink, dil, ks, DK, DV, DKP, DVP, BK,
        )  # fmt: skip
        dq = _dq_step(dq, q, do, lse, delta, kt, vt, allowed, PREC)
    _store_rows(DQ + z * n * DK, i, i_ok, DK, dq, DK, DKP)


@_kernel
def lsh_dq(
    Q, K, V, DO, LSE, DELTA, DQ, PACKED, THRESH, QPERM, KPERM, LO, END,
    sqb, sql, skb, skl, svb, svl, n, accumulate,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dQ of the LSH part for a block of sorted queries, added to (or stored into) DQ at their rows."""
    tb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    t = tb * BQ + tl.arange(0, BQ)
    t_ok = t < n
    i, lo, en = _sorted_queries(QPERM, LO, END, z, n, t)
    q, do, lse, delta, t_i = _load_query_grads(Q, DO, LSE, DELTA, THRESH, z, n, i, t_ok, sqb, sql, ks, DK, DV, DKP, DVP)
    dq = tl.zeros([BQ, DKP], tl.float32)
    u = tl.min(tl.where(t_ok, lo, n), 0)
    u_end = tl.max(en, 0)
    while u < u_end:
        u = max(u, tl.min(tl.where(en > u, lo, n), 0))
        kt, vt, member = _lsh_tile(
            u, u_end, lo, en, i, t_i, KPERM, K, V, PACKED, z, n, skb, skl, svb, svl,
            k_c, r, full, sw, sink, dil, ks, DK, DV, DKP, DVP, BK,
        )  # fmt: skip
        dq = _dq_step(dq, q, do, lse, delta, kt, vt, member, PREC)
        u += BK
    dq += _load_rows(DQ + z * n * DK, i, t_ok & (accumulate != 0), DK, DK, DKP)
    _store_rows(DQ + z * n * DK, i, t_ok, DK, dq, DK, DKP)


@_kernel
def near_dkdv(
    Q, K, V, DO, LSE, DELTA, MASK, PACKED, THRESH, DKB, DVB,
    sqb, sql, skb, skl, svb, svl, n, nb, chunk,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dK, dV (fp32, stored) of the near pairs of BK consecutive keys: pairs (i, j) of kernel 1 with
    j >= min(lo(block of i), start of the chunk of i). Their query blocks are consecutive and few."""
    kb = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    j = kb * BK + tl.arange(0, BK)
    ok = j < n
    kt, vt, real, packed = _load_key_tile(K, V, MASK, PACKED, z, n, j, ok, skb, skl, svb, svl, ks, DK, DV, DKP, DVP)
    last = min(kb * BK + BK, n) - 1
    stop = (last // BQ // chunk + 1) * chunk  # the chunk of the last key
    if sw != 0:
        stop = max(stop, (last + k_c - 1) // BQ + 1)  # windows reaching back to the last key
    if full != 0:
        stop = nb
    dk = tl.zeros([BK, DKP], tl.float32)
    dv = tl.zeros([BK, DVP], tl.float32)
    for b in range(kb * BK // BQ, min(stop, nb)):
        start, _, lo = _block_range(b, n, k_c, full, sw, ks, BQ)
        near_lo = min(lo, b // chunk * chunk * BQ)
        i = start + tl.arange(0, BQ)
        i_ok = i < n
        q, do, lse, delta, t_i = _load_query_grads(
            Q, DO, LSE, DELTA, THRESH, z, n, i, i_ok, sqb, sql, ks, DK, DV, DKP, DVP
        )
        allowed = _kernel1_allowed(i, j, real, packed, t_i, k_c, r, full, sw, sink, dil, ks)
        allowed = allowed & (j[None, :] >= near_lo)
        dk, dv = _dkdv_step(dk, dv, kt, vt, q, do, lse, delta, allowed, PREC)
    _store_rows(DKB + z * n * DK, j, ok, DK, dk, DK, DKP)
    _store_rows(DVB + z * n * DV, j, ok, DV, dv, DV, DVP)


@_kernel
def far_dkdv(
    Q, K, V, DO, LSE, DELTA, MASK, PACKED, THRESH, GLOBAL, PREFIX, PART_K, PART_V,
    sqb, sql, skb, skl, svb, svl, n, nb, chunk, n_global, n_slots, n_slot_tiles,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Partial dK, dV of the far pairs of one chunk of query blocks, per slot: slots [0, n_global) are the
    sink/dilated keys, the next k_c the prefix list of the chunk's first block (which holds every far
    key-selection key of the chunk). Written to PART_* [B, n_chunks, n_slots, D], reduced afterwards."""
    pid = tl.program_id(0)
    c = pid // n_slot_tiles
    z = tl.program_id(1).to(tl.int64)
    slot = (pid % n_slot_tiles) * BK + tl.arange(0, BK)
    is_global = slot < n_global
    j = tl.load(GLOBAL + slot, mask=is_global, other=-1)
    ps = slot - n_global
    is_prefix = (ps >= 0) & (ps < k_c) & (ks != 0)
    j = tl.where(is_global, j, tl.load(PREFIX + (z * nb + c * chunk) * k_c + ps, mask=is_prefix, other=-1))
    ok = (j >= 0) & ~(is_prefix & _held_by_global(j, k_c, r, sink, dil))
    j = tl.where(ok, j, 0)
    kt, vt, real, packed = _load_key_tile(K, V, MASK, PACKED, z, n, j, ok, skb, skl, svb, svl, ks, DK, DV, DKP, DVP)
    dk = tl.zeros([BK, DKP], tl.float32)
    dv = tl.zeros([BK, DVP], tl.float32)
    first = c * chunk
    stop = tl.where(c > 0, min(first + chunk, nb), first)  # chunk 0 has no far pairs
    for b in range(first, stop):
        start, _, lo = _block_range(b, n, k_c, full, sw, ks, BQ)
        near_lo = min(lo, first * BQ)
        i = start + tl.arange(0, BQ)
        i_ok = i < n
        q, do, lse, delta, t_i = _load_query_grads(
            Q, DO, LSE, DELTA, THRESH, z, n, i, i_ok, sqb, sql, ks, DK, DV, DKP, DVP
        )
        allowed = _kernel1_allowed(i, j, real, packed, t_i, k_c, r, full, sw, sink, dil, ks)
        allowed = allowed & (j[None, :] < near_lo)
        dk, dv = _dkdv_step(dk, dv, kt, vt, q, do, lse, delta, allowed, PREC)
    n_chunks = tl.cdiv(nb, chunk)
    rows = (z * n_chunks + c) * n_slots + slot
    _store_rows(PART_K, rows, slot < n_slots, DK, dk, DK, DKP)
    _store_rows(PART_V, rows, slot < n_slots, DV, dv, DV, DVP)


@_kernel
def segment_reduce(
    KEYS, ROWS, PART_K, PART_V, DKB, DVB, n, n_entries, n_part_rows,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, R: tl.constexpr,
):  # fmt: skip
    """dK[key] += sum of the partial rows of its segment (keys sorted, rows in chunk order): deterministic.

    Program e starts a segment iff KEYS[e] is a key and differs from KEYS[e - 1]; it sums R rows per step.
    """
    e = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    keys = KEYS + z * n_entries
    key = tl.load(keys + e)
    head = (key < n) & (key != tl.load(keys + e - 1, mask=e > 0, other=-1))
    acc_k = tl.zeros([DKP], tl.float32)
    acc_v = tl.zeros([DVP], tl.float32)
    f = e
    more = head
    while more:
        rr = f + tl.arange(0, R)
        m = (rr < n_entries) & (tl.load(keys + rr, mask=rr < n_entries, other=-1) == key)
        rows = z * n_part_rows + tl.load(ROWS + z * n_entries + rr, mask=m, other=0)
        acc_k += tl.sum(_load_rows(PART_K, rows, m, DK, DK, DKP), 0)
        acc_v += tl.sum(_load_rows(PART_V, rows, m, DV, DV, DVP), 0)
        f += R
        more = tl.load(keys + f, mask=f < n_entries, other=-1) == key
    row = z * n + tl.where(head, key, 0)
    _add_row(DKB + row * DK, head, acc_k, DK, DKP)
    _add_row(DVB + row * DV, head, acc_v, DV, DVP)


@_kernel
def lsh_dkdv(
    Q, K, V, DO, LSE, DELTA, PACKED, THRESH, QPERM, KPERM, LO, END,
    ITEM_B, ITEM_T, ITEM_Q0, ITEM_Q1, ITEM_SLOT, DKB, DVB, PART_K, PART_V,
    sqb, sql, skb, skl, svb, svl, n,
    k_c, r, full: tl.constexpr, sw: tl.constexpr, sink: tl.constexpr, dil: tl.constexpr, ks: tl.constexpr,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr,
    BQ: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dK, dV of the LSH part: one work item = BK consecutive sorted keys over a range of sorted-query
    blocks (the queries that see a sorted key are contiguous). A tile's only item adds into DKB/DVB;
    tiles with several items write partials that item_reduce adds in item order."""
    e = tl.program_id(0)
    zb = tl.load(ITEM_B + e)
    valid = zb >= 0
    z = tl.where(valid, zb, 0).to(tl.int64)
    slot = tl.load(ITEM_SLOT + e)
    u = tl.load(ITEM_T + e) * BK + tl.arange(0, BK)
    u_ok = (u < n) & valid
    j = tl.load(KPERM + z * n + u, mask=u_ok, other=0)
    packed = tl.load(PACKED + z * n + j, mask=u_ok & (ks != 0), other=0)
    kt = _load_rows(K + z * skb, j, u_ok, skl, DK, DKP)
    vt = _load_rows(V + z * svb, j, u_ok, svl, DV, DVP)
    dk = tl.zeros([BK, DKP], tl.float32)
    dv = tl.zeros([BK, DVP], tl.float32)
    for qb in range(tl.load(ITEM_Q0 + e), tl.load(ITEM_Q1 + e)):
        t = qb * BQ + tl.arange(0, BQ)
        t_ok = t < n
        i, lo, en = _sorted_queries(QPERM, LO, END, z, n, t)
        q, do, lse, delta, t_i = _load_query_grads(
            Q, DO, LSE, DELTA, THRESH, z, n, i, t_ok, sqb, sql, ks, DK, DV, DKP, DVP
        )
        member = (u[None, :] >= lo[:, None]) & (u[None, :] < en[:, None]) & u_ok[None, :]
        member = member & ~_kernel1_allowed(i, j, u_ok, packed, t_i, k_c, r, full, sw, sink, dil, ks)
        dk, dv = _dkdv_step(dk, dv, kt, vt, q, do, lse, delta, member, PREC)
    direct = u_ok & (slot < 0)
    _add_rows(DKB + z * n * DK, j, direct, DK, dk, DK, DKP)
    _add_rows(DVB + z * n * DV, j, direct, DV, dv, DV, DVP)
    rows = tl.where(slot >= 0, slot, 0) * BK + tl.arange(0, BK)
    partial = tl.broadcast_to(valid & (slot >= 0), [BK])
    _store_rows(PART_K, rows, partial, DK, dk, DK, DKP)
    _store_rows(PART_V, rows, partial, DV, dv, DV, DVP)


@_kernel
def item_reduce(
    KPERM, COUNT, BASE, PART_K, PART_V, DKB, DVB, n, n_tiles,
    DK: tl.constexpr, DV: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """For LSH key tiles with several items: dK, dV += their partials, summed in item order."""
    g = tl.program_id(0)
    z = (g // n_tiles).to(tl.int64)
    count = tl.load(COUNT + g)
    base = tl.load(BASE + g)
    u = (g % n_tiles) * BK + tl.arange(0, BK)
    ok = (u < n) & (count > 1)
    j = tl.load(KPERM + z * n + u, mask=ok, other=0)
    dk = tl.zeros([BK, DKP], tl.float32)
    dv = tl.zeros([BK, DVP], tl.float32)
    for s in range(0, tl.where(count > 1, count, 0)):
        rows = (base + s) * BK + tl.arange(0, BK)
        dk += _load_rows(PART_K, rows, ok, DK, DK, DKP)
        dv += _load_rows(PART_V, rows, ok, DV, DV, DVP)
    _add_rows(DKB + z * n * DK, j, ok, DK, dk, DK, DKP)
    _add_rows(DVB + z * n * DV, j, ok, DV, dv, DV, DVP)
