"""The paper's 2-layer construction for multi-query joint recall (PAPER.md section 6), built from
the library's own ops with weights set by hand: no training.

Embedding. With W levels (W=2: context, key), every block holds a code of b = O(log n) numbers:
a level-l item i embeds as ``[0, .., code_l(i), .., 0 | value 0 | -1]`` and a value v as
``[0, .., 0 | code_V(v) | +1]``; other tokens (BOS, SEP, PAD) embed as zeros. A code is
``+-1/sqrt(b)`` with ``b = 4 ceil(log2 ids)``: the binary digits of the id (so distinct ids
differ in at least one of the b signs: their dot product is at most ``1 - 2/b``) followed by
random signs (so most pairs of codes are nearly orthogonal, which keeps LSH buckets small).

Layer 1, the SSM (:func:`hax_ssm.ops.scan.selective_scan`, one state per channel, one channel
per embedding dimension). ``dt`` is the selection: ``DT_WRITE`` on the channels of every block
the token writes (its non-zero blocks, the sign channel included) and 0 elsewhere, with
``A = -1``, ``B = 1/DT_WRITE`` and ``C = 1``: a written block is overwritten
(``h = e^-30 h + x``), the others are kept (``h = h``). So after a value token the state is
``[c, k, v, +1]`` and after an inquiry key ``[c, k, v_prev, -1]``: the inquiry key knows its
context from the preceding context token. State: ``sum_l b_l + b_V + 1 = O(W log n)`` numbers.

Layer 2, LSH attention (:func:`hax_ssm.ops.attention.sparse_attention`, pattern
``sign_bin_lsh``, buckets from :func:`hax_ssm.ops.lsh.bucketize`). On the state ``[a, v, s]``
(a = the W address blocks): query ``beta [a, 1]``, key ``[a, s]``, value ``[v, 1]``. A token's
bucket, as query and as key, is the sign pattern of its address under a Gaussian projection:
queries and keys hash the very same numbers. (Hashing q and k themselves would be the same in
exact arithmetic, but their different scales once flipped a sign bit sitting at 1e-8 in a
million-token sample.) Why every value is right:

1. The query and its answer (the information part's value token of the same address) have the
   same address, hence the same bucket, always (no randomness).
2. Softmax. The answer scores ``beta (W + 1)``. A token of the same address that is not a value
   scores ``beta (W - 1)``; a value token of another address differs in some block, so it scores
   at most ``beta (W + 1 - 2 / b_max)``; value-like tokens of the same address (SEP right after
   it) carry the same value. With ``beta = b_max (ln k_c + SOFTMAX_MARGIN) / 2`` all wrong keys
   together weigh at most ``e^-SOFTMAX_MARGIN``: the nearest value code is the answer.
3. The only way to fail: the answer drops out of the k_c most recent keys of the query's bucket.
   Keys of the same address newer than it are at most W + 1 (SEP, the inquiry part's W - 1
   context tokens whose stale blocks happen to match, the query itself), so with
   ``k_c = W + 2 + s`` it needs at least ``s + 1`` tokens of other addresses that collide.
   Addresses x != y with angle theta share all h sign bits with probability
   ``(1 - theta / pi) ** h``; each address is held by at most ``2W + 3`` tokens, so by Markov and
   a union bound over the queries ``P(some query fails) <= (2W + 3) S_h / (s + 1)`` with
   ``S_h = sum_{x != y} (1 - theta_xy / pi) ** h``. :func:`lsh_failure_bound` computes this
   exactly from the codes (a histogram of per-level Hamming distances, never n^2 pairs) and
   the model takes the smallest h that brings it under ``failure_target``, or 63 (the library's
   sign-bin limit) where none does; the bound is then reported as it is. It is loose: it counts
   colliding tokens in expectation, while a failure needs s + 1 of them in one window
   (:func:`measure_construction` reports the fullest bucket any query saw). Tokens whose state
   still has empty blocks come before every answer, so they never count.

Cost per sample with L ~ 4n tokens: the scan O(L d), hashing O(L d h), the bucket sort
O(L log L) and the attention O(L k_c d) with d, k_c = O(log n) and h = O(log n) (the bound
needs h ~ 2 log2 n + const): O(n log^2 n) time, and an SSM state of O(W log n) numbers (the
attention keeps its keys, as any attention does).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hax_ssm.data.joint_recall import draw_samples, inquiry_key_mask
from hax_ssm.data.tokens import FIRST_VALUE_ID, JointRecallScheme
from hax_ssm.errors import require
from hax_ssm.ops.attention import sparse_attention
from hax_ssm.ops.lsh import bucketize, lsh_candidates
from hax_ssm.ops.patterns import MAX_SIGN_BIN_HASHES, parse_sparse_arch
from hax_ssm.ops.scan import selective_scan

DT_WRITE = 30.0  # a written channel keeps e^-30 of its old content
SOFTMAX_MARGIN = 20.0  # all wrong keys of a query weigh at most e^-20 together
CODE_REDUNDANCY = 4  # code length per bit of the id range
FAILURE_TARGET = 1e-3  # bound on P(some answer leaves its query's LSH window), per sample


def code_length(n_ids: int) -> int:
    """b: numbers per block for ``n_ids`` ids (``CODE_REDUNDANCY`` per bit of the id, at least one bit)."""
    return CODE_REDUNDANCY * max(1, math.ceil(math.log2(n_ids)))


def id_codes(n_ids: int, generator: torch.Generator) -> Tensor:
    """Unit codes ``[n_ids, b]`` of entries ``+-1/sqrt(b)``: the id's binary digits, then random signs."""
    b, bits = code_length(n_ids), max(1, math.ceil(math.log2(n_ids)))
    signs = torch.randint(0, 2, (n_ids, b), generator=generator)
    signs[:, :bits] = (torch.arange(n_ids)[:, None] >> torch.arange(bits)) & 1
    return (2 * signs.float() - 1) / math.sqrt(b)


def hamming_histogram(codes: Tensor, chunk_elements: int = 1 << 24) -> Tensor:
    """Counts ``[b + 1]`` of the sign differences d over all ordered pairs of rows of ``codes``."""
    b = codes.shape[1]
    signs = (codes > 0).float()
    counts = torch.zeros(b + 1, dtype=torch.float64)
    rows_per_chunk = max(1, chunk_elements // len(signs))  # a [rows, n_ids] block at a time
    for start in range(0, len(signs), rows_per_chunk):
        chunk = signs[start : start + rows_per_chunk]
        agree = chunk @ signs.T + (1 - chunk) @ (1 - signs).T
        counts += torch.bincount((b - agree).round().long().flatten(), minlength=b + 1).double()
    return counts


def lsh_failure_bound(level_codes: list[Tensor], num_hash: int | np.ndarray, slack: int) -> np.ndarray:
    """The bound of step 3 of the module docstring, for one sample (one value per ``num_hash``).

    ``level_codes``: the W address codes ``[n_l, b_l]``; ``slack`` = s = k_c - (W + 2).
    """
    hashes = np.atleast_1d(np.asarray(num_hash, dtype=np.float64))
    levels = len(level_codes)
    # dot products of all ordered address pairs, as a histogram over the per-level distances
    dots, counts = np.zeros(1), np.ones(1)
    for codes in level_codes:
        b = codes.shape[1]
        level_hist = hamming_histogram(codes).numpy()
        dots = (dots[:, None] + (1 - 2 * np.arange(b + 1) / b)[None, :]).ravel()
        counts = (counts[:, None] * level_hist[None, :]).ravel()
    cos = np.clip(dots / levels, -1.0, 1.0)
    other = cos < 1 - 1e-9  # distinct codes: cos 1 only for the address itself
    collide = 1 - np.arccos(cos[other]) / math.pi
    total = (counts[other][None, :] * collide[None, :] ** hashes[:, None]).sum(1)
    return (2 * levels + 3) * total / (slack + 1)


@dataclass(frozen=True)
class ConstructionSettings:
    """What the construction chose for a scheme (see the module docstring)."""

    code_lengths: tuple[int, ...]  # b per block: the W levels, then the values
    state_dim: int  # SSM state numbers: sum of code lengths + the sign channel
    part_keys: int  # k_c
    num_hash: int  # h
    beta: float  # inverse softmax temperature
    failure_bound: float  # per sample, at this h


class RecallConstruction(nn.Module):
    """Hand-set SSM + LSH-attention model for (multi-level) joint recall tables of ``scheme``.

    ``forward(tokens [B, L])`` returns value logits ``[B, L, n_values]`` (value codes against the
    attention output's value block): at an inquiry key the argmax is the recalled value.
    """

    def __init__(
        self,
        scheme: JointRecallScheme,
        *,
        seed: int = 0,
        failure_target: float = FAILURE_TARGET,
        scan_impl: str = "auto",
        attention_impl: str = "auto",
    ):
        super().__init__()
        require(0 < failure_target < 1, f"failure_target={failure_target}: must lie in (0, 1)")
        self.scheme, self.scan_impl, self.attention_impl = scheme, scan_impl, attention_impl
        generator = torch.Generator().manual_seed(seed)
        level_codes = [id_codes(n, generator) for n in scheme.max_sizes]
        value_codes = id_codes(scheme.n_values, generator)
        lengths = [c.shape[1] for c in [*level_codes, value_codes]]
        levels, state_dim = scheme.levels, sum(lengths) + 1
        self.address_dim = sum(lengths[:levels])
        self.register_buffer("value_codes", value_codes)
        self.register_buffer("embedding", self._embedding_table(level_codes, value_codes, state_dim))
        # block of every channel: the W levels, the values, then the sign channel as a block of its own
        self.register_buffer(
            "channel_block", torch.repeat_interleave(torch.arange(len(lengths) + 1), torch.tensor([*lengths, 1]))
        )

        n = math.prod(scheme.max_sizes)
        slack = max(1, math.ceil(math.log2(n)))
        part_keys = levels + 2 + slack
        bounds = lsh_failure_bound(level_codes, np.arange(1, MAX_SIGN_BIN_HASHES + 1), slack)
        met = np.flatnonzero(bounds <= failure_target)
        num_hash = int(met[0]) + 1 if len(met) else MAX_SIGN_BIN_HASHES
        self.spec = parse_sparse_arch("sign_bin_lsh", sparse_keys=part_keys, num_hash=num_hash)
        self.register_buffer("hash_proj", torch.randn(self.address_dim, num_hash, generator=generator))
        self.settings = ConstructionSettings(
            code_lengths=tuple(lengths),
            state_dim=state_dim,
            part_keys=part_keys,
            num_hash=num_hash,
            beta=max(lengths[:levels]) * (math.log(part_keys) + SOFTMAX_MARGIN) / 2,
            failure_bound=float(bounds[num_hash - 1]),
        )

    def _embedding_table(self, level_codes: list[Tensor], value_codes: Tensor, state_dim: int) -> Tensor:
        """Rows ``[ids_needed, state_dim]``: level items and values as in the module docstring, zeros elsewhere."""
        table = torch.zeros(self.scheme.ids_needed, state_dim)
        start = 0
        for level, codes in enumerate(level_codes):
            ids = self.scheme.level_offset(level) + torch.arange(len(codes))
            table[ids, start : start + codes.shape[1]] = codes
            table[ids, -1] = -1.0
            start += codes.shape[1]
        ids = FIRST_VALUE_ID + torch.arange(len(value_codes))
        table[ids, start : start + value_codes.shape[1]] = value_codes
        table[ids, -1] = 1.0
        return table

    def embed(self, tokens: Tensor) -> Tensor:
        require(
            int(tokens.max()) < len(self.embedding),
            f"token id {int(tokens.max())}: the construction's scheme holds ids < {len(self.embedding)}",
        )
        return self.embedding[tokens]

    def ssm(self, x: Tensor) -> Tensor:
        """States ``[B, L, state_dim]``: each block of x that is non-zero overwrites its block of the state."""
        written = torch.zeros(*x.shape[:2], int(self.channel_block.max()) + 1, dtype=x.dtype, device=x.device)
        written.index_add_(2, self.channel_block, (x != 0).to(x.dtype))  # non-zero numbers per block
        dt = DT_WRITE * (written[..., self.channel_block] > 0).to(x.dtype)
        ones = x.new_ones(*x.shape[:2], 1)
        A = -x.new_ones(x.shape[-1], 1)
        states, _ = selective_scan(x, dt, A, ones / DT_WRITE, ones, impl=self.scan_impl)
        return states

    def query_key_value(self, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q = beta [a, 1], k = [a, s], v = [v, 1] of the states [a, v, s] (a: the address blocks)."""
        address, sign = states[..., : self.address_dim], states[..., -1:]
        one = torch.ones_like(sign)
        q = self.settings.beta * torch.cat([address, one], -1)
        k = torch.cat([address, sign], -1)
        v = torch.cat([states[..., self.address_dim : -1], one], -1)
        return q, k, v

    def buckets(self, states: Tensor) -> Tensor:
        """Sign-bin bucket ``[B, L]`` of every token's address: its bucket as a query and as a key."""
        return bucketize(states[..., : self.address_dim], self.hash_proj, "sign_bin")

    def attend(self, states: Tensor) -> Tensor:
        """LSH attention over the SSM states: ``[B, L, b_V + 1]`` (the recalled value code, then the weight sum)."""
        q, k, v = self.query_key_value(states)
        buckets = self.buckets(states)
        return sparse_attention(q, k, v, self.spec, q_buckets=buckets, k_buckets=buckets, impl=self.attention_impl)

    def value_logits(self, attended: Tensor) -> Tensor:
        """Nearest value code: logits ``[B, L, n_values]``."""
        return attended[..., :-1] @ self.value_codes.T

    @torch.no_grad()
    def forward(self, tokens: Tensor) -> Tensor:
        return self.value_logits(self.attend(self.ssm(self.embed(tokens))))


def construction_scheme(shape: tuple[int, ...], n_values: int = 16) -> JointRecallScheme:
    """The id scheme of tables of exactly ``shape`` (ids beyond the reference's 100-token vocabulary as needed)."""
    require(len(shape) >= 1 and all(n >= 1 for n in shape), f"table shape {shape}: every side must be >= 1")
    require(n_values >= 2, f"n_values={n_values}: need at least 2 values")
    ids = JointRecallScheme(n_values, tuple(shape)).ids_needed
    return JointRecallScheme(n_values, tuple(shape), vocab_size=ids)


@torch.no_grad()
def time_stages(model: RecallConstruction, tokens: Tensor) -> dict[str, float]:
    """Wall-clock seconds of the SSM layer (with the embedding), the attention layer (with the
    hashing and the decoding) and both, on ``tokens``."""
    start = time.perf_counter()
    states = model.ssm(model.embed(tokens))
    scanned = time.perf_counter()
    model.value_logits(model.attend(states))
    done = time.perf_counter()
    return {"ssm": scanned - start, "attention": done - scanned, "total": done - start}


def measure_construction(
    shape: tuple[int, ...], samples: int, *, n_values: int = 16, seed: int = 0, scan_impl: str = "chunked"
) -> dict[str, Any]:
    """Build the construction for ``shape``, run it on ``samples`` random tables from the data
    engine's generator and report accuracy, its settings and the time of each stage on one sample."""
    scheme = construction_scheme(shape, n_values)
    tokens_np = draw_samples(tuple(shape), samples, scheme, np.random.default_rng([seed, *shape]))
    tokens = torch.from_numpy(tokens_np.astype(np.int64))
    scored = torch.from_numpy(inquiry_key_mask(tuple(shape))[:-1]).bool()  # next token is an answer
    model = RecallConstruction(scheme, seed=seed, scan_impl=scan_impl)
    model(tokens[:1, :256])  # warm-up: the first calls of some ops are slow
    seconds = time_stages(model, tokens[:1])
    with torch.no_grad():
        states = model.ssm(model.embed(tokens))
        logits = model.value_logits(model.attend(states))
        buckets = model.buckets(states)
    answers = tokens[:, 1:][:, scored] - FIRST_VALUE_ID
    correct = logits[:, :-1][:, scored].argmax(-1) == answers
    # the largest number of keys any inquiry key found in its bucket (the window keeps part_keys)
    load = lsh_candidates(buckets, buckets, torch.ones_like(tokens, dtype=torch.bool), 1).q_count
    return {
        "levels": len(shape),
        "shape": list(shape),
        "entries": math.prod(shape),
        "n_values": n_values,
        "sequence_length": tokens.shape[1],
        "samples": samples,
        "value_accuracy": correct.float().mean(1).mean().item(),
        "exact_match": correct.all(1).float().mean().item(),
        **asdict(model.settings),
        "max_bucket_keys": int(load[:, :-1][:, scored].max()),
        "seconds_per_sample": seconds,
    }


def scaling_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """How state and time grow over rows of one W: state numbers per doubling of n (a line in
    log2 n fits exactly when the state is O(log n)), and the exponent p of time ~ n^p between the
    two largest tables, next to that of n log^2 n over the same range."""
    rows = sorted(rows, key=lambda r: r["entries"])
    log_n = np.log2([r["entries"] for r in rows])
    slope, intercept = np.polyfit(log_n, [r["state_dim"] for r in rows], 1)
    (n0, t0), (n1, t1) = ((r["entries"], r["seconds_per_sample"]["total"]) for r in rows[-2:])
    reference = math.log((n1 * math.log2(n1) ** 2) / (n0 * math.log2(n0) ** 2)) / math.log(n1 / n0)
    return {
        "state_per_doubling": float(slope),
        "state_at_one_entry": float(intercept),
        "time_exponent": math.log(t1 / t0) / math.log(n1 / n0),
        "n_log2_n_exponent": reference,
    }
