"""The sparse-attention branch added to every Mamba / Mamba2 block (PAPER.md section 3).

K and Q come from the SSM input x (after conv + activation) through ``xx_proj``: the first
d_state outputs are K (scaled by 1/sqrt(d_state)), the last d_state are Q; V = x. The branch
returns E * O with a learned per-channel gate E (init 1); the block adds it:
Mamba ``y = (SSM(x) + D*x + E*O) * act(z)``, Mamba2 ``y = GatedRMSNorm(SSD(x) + D*x + E*O, z)``.

The LSH projection H is drawn from the global torch RNG on every training forward and is the
persistent buffer ``hash_proj`` (drawn at construction, saved with the model) in eval mode, in
``prefill`` and in ``step``: evaluation and decoding are deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from hax_ssm.errors import HaxError, require
from hax_ssm.ops.attention import IMPLS, sparse_attention
from hax_ssm.ops.attention.sparse import POSITIONAL, gather_attention, positional_keys, union_keys
from hax_ssm.ops.common import acc_dtype
from hax_ssm.ops.key_selection import KeyScorer, gate_loss, prefix_query_sum, select_best
from hax_ssm.ops.lsh import HASH_KINDS, bucketize, hash_buckets, recent_same_bucket
from hax_ssm.ops.patterns import SparseSpec


@dataclass
class SparseBranchState:
    """What decoding needs of the past (T tokens so far). Sums are over real tokens only."""

    keys: Tensor  # [B, T, d_state], scaled
    values: Tensor  # [B, T, d_inner]
    key_mask: Tensor  # [B, T] bool: real tokens
    k_buckets: Tensor  # [B, T] int64 (LSH; empty otherwise)
    scores: Tensor  # [B, T] key-selection scores (empty otherwise)
    top_idx: Tensor  # [B, k_c] the best real keys so far (key selection)
    top_valid: Tensor  # [B, k_c]
    q_sum: Tensor  # [B, d_state] sum of real Q (causal centring, key-selection feature)
    k_sum: Tensor  # [B, d_state] sum of real K (causal centring)
    count: Tensor  # [B, 1] real tokens so far

    @property
    def length(self) -> int:
        return self.keys.shape[1]


class SparseBranch(nn.Module):
    """forward(x [B, L, d_inner], attention_mask [B, L] | None) -> (E * O [B, L, d_inner], gate_loss | None)."""

    def __init__(self, d_inner: int, d_state: int, spec: SparseSpec, impl: str = "auto"):
        super().__init__()
        require(impl == "auto" or impl in IMPLS, f"impl={impl!r}: allowed: auto, {', '.join(IMPLS)}")
        self.d_inner, self.d_state, self.spec, self.impl = d_inner, d_state, spec, impl
        self.xx_proj = nn.Linear(d_inner, 2 * d_state, bias=False)  # [K; Q]
        self.E = nn.Parameter(torch.ones(d_inner))
        self.scorer = KeyScorer(d_state) if spec.has("key_selection") else None
        if spec.lsh:
            self.register_buffer("hash_proj", torch.randn(d_state, spec.num_hash))

    def extra_repr(self) -> str:
        return f"d_inner={self.d_inner}, d_state={self.d_state}, spec={self.spec.name}, impl={self.impl}"

    @torch.no_grad()
    def init_kq_from_ssm(self, b_weight: Tensor, c_weight: Tensor) -> None:
        """K <- the SSM's B projection, Q <- its C projection (continual pre-training, PAPER.md section 5).

        Both weights are [d_state, d_inner] (e.g. rows of a Mamba x_proj after the dt_rank rows).
        """
        shape = (self.d_state, self.d_inner)
        for name, w in (("b_weight", b_weight), ("c_weight", c_weight)):
            require(tuple(w.shape) == shape, f"{name}: expected shape {list(shape)}, got {list(w.shape)}")
        self.xx_proj.weight[: self.d_state].copy_(b_weight)
        self.xx_proj.weight[self.d_state :].copy_(c_weight)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """K (scaled by 1/sqrt(d_state)) and Q of x [..., d_inner]."""
        k, q = self.xx_proj(x).split(self.d_state, dim=-1)
        return k / math.sqrt(self.d_state), q

    def _hash_projection(self, fixed: bool) -> Tensor:
        if self.training and not fixed:
            return torch.randn(self.hash_proj.shape, device=self.hash_proj.device)
        return self.hash_proj

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        out, loss, _ = self._forward(x, attention_mask, fixed_hash=False)
        return out, loss

    def prefill(
        self, x: Tensor, attention_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, SparseBranchState]:
        """forward() on a prompt (with the fixed hash projection) plus the state to continue with step()."""
        self._check_decodable()
        return self._forward(x, attention_mask, fixed_hash=True, keep_state=True)

    def _forward(
        self, x: Tensor, attention_mask: Tensor | None, fixed_hash: bool, keep_state: bool = False
    ) -> tuple[Tensor, Tensor | None, SparseBranchState | None]:
        b, n, _ = x.shape
        key_mask = x.new_ones(b, n, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        k, q = self.project(x)
        q_buckets = k_buckets = scores = None
        if self.spec.lsh:
            proj, kind = self._hash_projection(fixed_hash), HASH_KINDS[self.spec.lsh]
            q_buckets = hash_buckets(q.detach(), proj, kind, key_mask, self.spec.lsh_center)
            k_buckets = hash_buckets(k.detach(), proj, kind, key_mask, self.spec.lsh_center)
        if self.scorer is not None:
            scores = self.scorer(k, prefix_query_sum(q, key_mask))
        out = sparse_attention(
            q,
            k,
            x,
            self.spec,
            q_buckets=q_buckets,
            k_buckets=k_buckets,
            key_scores=scores,
            attention_mask=attention_mask,
            impl=self.impl,
        )
        loss = None
        if scores is not None and self.training:
            loss = gate_loss(scores, q, k, key_mask, self.spec.part_keys)
        state = None
        if keep_state:
            state = self._state_after(k, q, x, key_mask, k_buckets, scores)
        return self.E * out, loss, state

    def _check_decodable(self) -> None:
        if self.spec.lsh and self.spec.lsh_center == "sequence":
            raise HaxError(
                "lsh_center='sequence' centres with the mean of the whole sequence, which decoding cannot know: "
                "step()/prefill() need lsh_center='causal'"
            )

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SparseBranchState:
        """The empty state before the first token."""
        dtype = dtype or self.xx_proj.weight.dtype
        acc = torch.promote_types(dtype, torch.float32)
        b, k_c = batch_size, self.spec.part_keys
        score_dtype = self.scorer.net[0].weight.dtype if self.scorer is not None else acc
        return SparseBranchState(
            keys=torch.zeros(b, 0, self.d_state, device=device, dtype=dtype),
            values=torch.zeros(b, 0, self.d_inner, device=device, dtype=dtype),
            key_mask=torch.zeros(b, 0, device=device, dtype=torch.bool),
            k_buckets=torch.zeros(b, 0, device=device, dtype=torch.int64),
            scores=torch.zeros(b, 0, device=device, dtype=score_dtype),
            top_idx=torch.zeros(b, k_c, device=device, dtype=torch.int64),
            top_valid=torch.zeros(b, k_c, device=device, dtype=torch.bool),
            q_sum=torch.zeros(b, self.d_state, device=device, dtype=acc),
            k_sum=torch.zeros(b, self.d_state, device=device, dtype=acc),
            count=torch.zeros(b, 1, device=device, dtype=acc),
        )

    def _state_after(
        self, k: Tensor, q: Tensor, x: Tensor, key_mask: Tensor, k_buckets: Tensor | None, scores: Tensor | None
    ) -> SparseBranchState:
        state = self.init_state(x.shape[0], x.device, x.dtype)
        m = key_mask[..., None].to(state.q_sum.dtype)
        n = x.shape[1]
        top_idx, top_valid = state.top_idx, state.top_valid
        if scores is not None:  # the best k_c real keys of the whole prompt: one query at the last position
            every = torch.arange(n, device=x.device).expand(x.shape[0], -1)
            last = torch.tensor([n - 1], device=x.device)
            sel = select_best(every, scores.detach(), key_mask, last, self.spec.part_keys)
            top_idx, top_valid = sel.idx[:, 0], sel.valid[:, 0]
        return replace(
            state,
            keys=k.detach(),
            values=x.detach(),
            key_mask=key_mask,
            k_buckets=state.k_buckets if k_buckets is None else k_buckets,
            scores=state.scores if scores is None else scores.detach(),
            top_idx=top_idx,
            top_valid=top_valid,
            q_sum=(q.detach() * m).sum(1),
            k_sum=(k.detach() * m).sum(1),
            count=m.sum(1),
        )

    @torch.no_grad()
    def step(
        self, x_t: Tensor, state: SparseBranchState, mask_t: Tensor | None = None
    ) -> tuple[Tensor, SparseBranchState]:
        """One decoding step: x_t [B, d_inner] -> (E * O_t [B, d_inner], new state).

        mask_t [B] marks real tokens (default: all real); a padding token is no key for later queries.
        Uses the fixed hash projection: decode in eval mode to match forward().
        """
        self._check_decodable()
        t, spec, k_c = state.length, self.spec, self.spec.part_keys
        spec.check_length(t + 1)
        real = torch.ones(x_t.shape[0], dtype=torch.bool, device=x_t.device) if mask_t is None else mask_t.bool()
        k_t, q_t = self.project(x_t)
        m = real[:, None].to(state.q_sum.dtype)
        state = replace(
            state,
            keys=torch.cat([state.keys, k_t[:, None]], dim=1),
            values=torch.cat([state.values, x_t[:, None]], dim=1),
            key_mask=torch.cat([state.key_mask, real[:, None]], dim=1),
            q_sum=state.q_sum + q_t.to(m.dtype) * m,
            k_sum=state.k_sum + k_t.to(m.dtype) * m,
            count=state.count + m,
        )
        query_pos = torch.tensor([t], device=x_t.device)
        parts = []
        for part in spec.parts:
            if part in POSITIONAL:
                parts.append(positional_keys(spec, part, query_pos, t + 1))
            elif part == spec.lsh:
                q_bucket, k_bucket = self._step_buckets(q_t, k_t, state)
                state = replace(state, k_buckets=torch.cat([state.k_buckets, k_bucket[:, None]], dim=1))
                parts.append(recent_same_bucket(q_bucket, state.k_buckets, state.key_mask, k_c))
            else:
                assert self.scorer is not None
                score = self.scorer(k_t, state.q_sum)
                scores = torch.cat([state.scores, score[:, None]], dim=1)
                cand_pos = torch.cat([state.top_idx, query_pos.expand(len(real), 1)], dim=1)
                cand_valid = torch.cat([state.top_valid, real[:, None]], dim=1)
                sel = select_best(cand_pos, scores.gather(1, cand_pos), cand_valid, query_pos, k_c)
                state = replace(state, scores=scores, top_idx=sel.idx[:, 0], top_valid=sel.valid[:, 0])
                parts.append((sel.idx, sel.valid))
        idx, valid = union_keys(parts, state.key_mask)
        out = gather_attention(q_t[:, None], state.keys, state.values, idx, valid)[:, 0]
        return self.E * out, state

    def _step_buckets(self, q_t: Tensor, k_t: Tensor, state: SparseBranchState) -> tuple[Tensor, Tensor]:
        """Buckets of the newest query and key, centred by the running means (equal to causal centring)."""
        proj, kind = self.hash_proj, HASH_KINDS[self.spec.lsh]
        count = state.count.clamp_min(1)
        q_centred = q_t.to(acc_dtype(q_t)) - state.q_sum / count
        k_centred = k_t.to(acc_dtype(k_t)) - state.k_sum / count
        return bucketize(q_centred, proj, kind), bucketize(k_centred, proj, kind)
