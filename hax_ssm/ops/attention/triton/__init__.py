"""The Triton path of the sparse-attention op: O(L * k) work, tensor-core tiles, deterministic backward.

Registered as ``impl="triton"``; ``impl="auto"`` picks it for CUDA tensors when triton imports (see
:func:`supports`). triton is imported lazily: CPU installs never need it. With ``TRITON_INTERPRET=1`` the
same kernels run on CPU tensors in Triton's interpreter (slow; used by the tests).

Two paths: sequences up to ``attention.MASKED_MAX_LENGTH`` with an LSH or key-selection part run on the
masked path (``masked.py``: every causal tile, the whole union as one O(1) predicate, a few launches); the
rest run on the gathered O(L * k) path described here. ``attention.force_path`` picks one for tests and
benchmarks.

Design of the gathered path (one head, d_k 16-128, d_v <= 256 per launch (a wider V runs in slices of 256
channels), fp16/bf16/fp32 in, fp32 scores and accumulators; heads folded into B; padding via the key mask; a
query without keys outputs 0):

Index work (``index.py``, torch, no L x L tensor, static shapes, no host sync):
  - key selection: key j packs into one int64, (fp32 score bits mapped to a monotone integer) * 2**32 +
    (2**32 - 1 - j), so "score desc, then earlier key" is one comparison; padding packs to INT64_MIN.
    Per query block of BQ keys a top-k_c, then an exclusive Hillis-Steele scan over blocks (log2(#blocks)
    torch.topk calls) gives P_b, the best k_c keys before each block. The threshold T_i (k_c-th best real
    key <= i) comes from P_b and the block's own keys (kernel ``ks_threshold_kernel``); query i keeps real
    key j <= i iff packed[j] >= T_i. T is monotone in i.
  - LSH: queries and keys are sorted by (dense bucket id, position), padding keys last. Query i's kept keys
    are then the sorted keys [lo_t, end_t) of its sorted slot t, with lo and end monotone in t.

Forward (two kernels, disjoint key sets, exact merge):
  1. ``kernel1_fwd``: per block of BQ consecutive queries, the non-LSH parts. Candidate tiles: one
     contiguous key range [lo, end) (the window, the block itself for key selection, or all keys for
     ``full``), then the sink keys before lo, the dilated keys before lo (strided, computed), and the prefix
     list P_b; every key is listed once. Row i keeps key j by an O(1) predicate: causal, real, and
     (i - j < k_c | j < k_c | j % r == r - 1 | packed[j] >= T_i | full). Online softmax -> O, LSE.
  2. ``lsh_fwd``: per block of BQ consecutive *sorted* queries the keys form one range of sorted keys
     (monotone lo/end); the loop jumps over gaps no query of the block needs. Keys that kernel 1 already
     holds for that query are dropped by the same predicate, so the two sets are disjoint and
     (O, LSE) merge exactly (merging overlapping sets would count keys twice). The merge is done in
     place on kernel 1's output.
  Query blocks of >= 16 rows share each key tile, so tl.dot runs on tensor cores despite the single head.

Backward (every part uses the final LSE and delta = rowsum(dO * O), so the gradient of the union is
exact; no atomics, so it is deterministic: each output row is written by one program per launch and
launches run in a fixed order):
  - dQ: the forward's loops again, per query block (kernel 1) and per sorted query block (LSH, adding).
  - dK, dV of kernel 1 split the pairs (i, j) at nlo(b) = min(lo(b), start of b's chunk of ``chunk``
    query blocks). Near pairs (j >= nlo): per tile of BK consecutive keys, the few consecutive query
    blocks that can hold them (``near_dkdv``). Far pairs (j < nlo) are sink, dilated or key-selection
    keys from earlier chunks: per (chunk, slot) partial sums, where the slots are the sink/dilated keys and
    the prefix list of the chunk's first block, which contains every far key-selection key of the chunk
    (``far_dkdv``). Sink/dilated slots are summed over chunks in torch; key-selection slots are sorted by
    key and summed in chunk order (``segment_reduce``).
  - dK, dV of LSH: the sorted queries that see sorted key u are contiguous, so per tile of BK sorted keys
    the work is one range of sorted-query blocks, cut into items of <= ``item`` blocks (parallelism when
    many queries share few keys, e.g. padding queries). A tile's single item adds into dK/dV; a tile with
    several writes partials that ``item_reduce`` adds in item order. The item list has a static bound
    (each query needs <= (k_c - 1) // BK + 2 key tiles), so no host sync.

No host sync anywhere (static shapes, device-side asserts only), so forward+backward can be captured in a
CUDA graph. Key-selection scores are compared in fp32 (exact for fp16/bf16/fp32 scores).

Costs: forward reads each query block's <= (BQ + ~3 k_c) candidates; the backward re-reads them about
twice. Everything is linear in L except ``full`` (the quadratic baseline). One compiled kernel per
(pattern, dtype, head sizes): lengths, batch sizes and k_c are runtime arguments. Tile sizes are fixed
defaults (``attention.choose_blocks``), no autotuning; a launch that runs out of shared memory is retried
once with ``num_stages=1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hax_ssm.errors import HaxError
from hax_ssm.ops.common import triton_unsupported
from hax_ssm.ops.patterns import SparseSpec

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_DK = 128
MAX_DV = 256
MAX_BATCH = 65535


def unsupported(q: Tensor, v: Tensor) -> str | None:
    """Why the Triton path cannot run these inputs (None: it can)."""
    reason = triton_unsupported(q)
    if reason is not None:
        return reason
    if q.dtype not in DTYPES or v.dtype not in DTYPES:
        return f"dtype {q.dtype}/{v.dtype} not supported; allowed: float16, bfloat16, float32"
    if q.shape[0] > MAX_BATCH:
        return f"batch {q.shape[0]} (heads folded in) exceeds {MAX_BATCH}, the CUDA grid limit of its axis"
    if q.shape[-1] > MAX_DK:
        return f"d_k={q.shape[-1]} not supported; allowed: d_k <= {MAX_DK}"
    return None


def supports(q: Tensor, v: Tensor) -> bool:
    """Whether impl="auto" runs the Triton path: CUDA tensors, triton importable, supported dtype and sizes."""
    return q.is_cuda and unsupported(q, v) is None


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
    """The op's contract (see :func:`hax_ssm.ops.attention.sparse_attention`), on the Triton kernels."""
    reason = unsupported(q, v)
    if reason is not None:
        raise HaxError(f"impl='triton': {reason}")
    from hax_ssm.ops.attention.triton.attention import triton_sparse_attention

    d_v = v.shape[-1]
    if d_v <= MAX_DV:
        return triton_sparse_attention(q, k, v, spec, key_mask, q_buckets, k_buckets, key_scores)
    # Wider values (a language model's d_inner of 768-3072) run in slices of MAX_DV channels: the softmax
    # weights do not depend on V, so each slice is exact; only the small QK work is repeated.
    slices = [v[..., s : s + MAX_DV].contiguous() for s in range(0, d_v, MAX_DV)]
    outs = [triton_sparse_attention(q, k, part, spec, key_mask, q_buckets, k_buckets, key_scores) for part in slices]
    return torch.cat(outs, dim=-1)


__all__ = ["supports", "triton_attention", "unsupported"]
