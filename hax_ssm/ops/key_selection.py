"""Key selection (KS): a learned score per key, a prefix top-k per query, and the gate loss.

Score x_j = MLP([K_j, normalize(sum_{p<=j} Q_p)]) on detached inputs (sums over real tokens).
Query i keeps the k_c best real keys j <= i, ranked by (score desc, position asc): on equal scores
the earlier key wins. Equivalently j is kept iff (x_j, -j) >= (tau_i, -pos_i), where (tau_i, pos_i)
is the k_c-th best of the prefix (tau_i = -inf when the prefix has fewer than k_c real keys).

:func:`prefix_topk` computes the selection block by block in O(L * (k_c + block)): the best k_c of
a prefix plus the block's own keys hold every key a query of the block can keep.
:func:`prefix_topk_mask_dense` is the L x L oracle.

Gate loss: per sequence sample k_c real keys; the target of key j is y_j = sum over real queries
i >= j of sigmoid(Q_i . K_j) (detached); a pairwise logistic ranking loss ties the scores to the
targets' order (label 0.5 on ties). O(L * k_c).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from hax_ssm.ops.common import acc_dtype, prefix_sum


class KeyScorer(nn.Module):
    """The KS scorer: 2*d_state -> 2*d_state -> 2*d_state -> 1 with ReLU, on detached inputs."""

    def __init__(self, d_state: int):
        super().__init__()
        width = 2 * d_state
        self.net = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1)
        )

    def forward(self, k: Tensor, q_prefix_sum: Tensor) -> Tensor:
        """Scores [...] of keys k [..., d_state] given the running sums of the real queries up to them."""
        features = torch.cat([k.detach(), nn.functional.normalize(q_prefix_sum.detach(), dim=-1)], dim=-1)
        return self.net(features.to(self.net[0].weight.dtype)).squeeze(-1)


def prefix_query_sum(q: Tensor, key_mask: Tensor | None) -> Tensor:
    """sum_{p <= j, p real} Q_p for every j: [B, L, d], accumulated in fp32 (or fp64)."""
    q = q.to(acc_dtype(q))
    return prefix_sum(q if key_mask is None else q * key_mask[..., None].to(q.dtype))


class KeySelection(NamedTuple):
    """idx/valid [B, Lq, k_c]: kept keys, best first. tau/tau_pos [B, Lq]: the k_c-th best (score, position)."""

    idx: Tensor
    valid: Tensor
    tau: Tensor
    tau_pos: Tensor


def select_best(cand_pos: Tensor, cand_score: Tensor, cand_valid: Tensor, query_pos: Tensor, k_c: int) -> KeySelection:
    """For each query position, the k_c best valid candidates at or before it.

    cand_* [B, W] (any order, positions of valid candidates distinct), query_pos [Lq] -> [B, Lq, k_c].
    """
    # Order candidates by (score desc, position asc): sort by position, then stably by score.
    cand_pos, order = cand_pos.sort(dim=1, stable=True)
    cand_score, cand_valid = cand_score.gather(1, order), cand_valid.gather(1, order)
    cand_score, order = cand_score.sort(dim=1, descending=True, stable=True)
    cand_pos, cand_valid = cand_pos.gather(1, order), cand_valid.gather(1, order)
    width = cand_pos.shape[1]
    ok = cand_valid[:, None, :] & (cand_pos[:, None, :] <= query_pos[None, :, None])  # [B, Lq, W]
    keep = ok & (ok.cumsum(-1) <= k_c)
    rank = torch.where(keep, torch.arange(width, device=ok.device), width)
    rank = rank.topk(min(k_c, width), dim=-1, largest=False, sorted=True).values
    if rank.shape[-1] < k_c:  # fewer candidates than k_c: pad with empty slots
        rank = torch.cat([rank, rank.new_full((*rank.shape[:2], k_c - rank.shape[-1]), width)], dim=-1)
    valid = rank < width
    rank = rank.clamp_max(width - 1)
    b, lq = rank.shape[:2]
    idx = cand_pos.gather(1, rank.view(b, -1)).view(b, lq, k_c)
    kth_score = cand_score.gather(1, rank[..., -1])
    full = valid[..., -1]
    tau = torch.where(full, kth_score, torch.full_like(kth_score, -float("inf")))
    tau_pos = torch.where(full, idx[..., -1], torch.iinfo(torch.int64).max)
    return KeySelection(idx, valid, tau, tau_pos)


def prefix_topk(scores: Tensor, key_mask: Tensor, k_c: int, block: int = 128) -> KeySelection:
    """The k_c best real keys j <= i of every query i (tie: earlier key), blockwise, no L x L tensor."""
    b, n = scores.shape
    device = scores.device
    top_pos = torch.zeros(b, k_c, dtype=torch.int64, device=device)
    top_valid = torch.zeros(b, k_c, dtype=torch.bool, device=device)
    parts: list[KeySelection] = []
    for s in range(0, n, block):
        block_pos = torch.arange(s, min(s + block, n), device=device)
        cand_pos = torch.cat([top_pos, block_pos.expand(b, -1)], dim=1)
        cand_valid = torch.cat([top_valid, key_mask[:, s : s + block]], dim=1)
        sel = select_best(cand_pos, scores.gather(1, cand_pos), cand_valid, block_pos, k_c)
        parts.append(sel)
        top_pos, top_valid = sel.idx[:, -1], sel.valid[:, -1]  # the last query's keys: the best of the prefix
    return KeySelection(*(torch.cat(field, dim=1) for field in zip(*parts, strict=True)))


def prefix_topk_mask_dense(scores: Tensor, key_mask: Tensor, k_c: int) -> Tensor:
    """Oracle [B, L, L]: allowed[b, i, j] iff fewer than k_c real keys j' <= i beat key j."""
    n = scores.shape[1]
    pos = torch.arange(n, device=scores.device)
    x_better, x_other = scores[:, :, None], scores[:, None, :]  # [B, j', j]
    beats = (x_better > x_other) | ((x_better == x_other) & (pos[:, None] < pos[None, :]))
    beaten_by = (beats & key_mask[:, :, None]).cumsum(1)  # [B, i, j]: real keys j' <= i that beat j
    causal = pos[None, :] <= pos[:, None]
    return causal & key_mask[:, None, :] & (beaten_by < k_c)


def sample_gate_keys(key_mask: Tensor, k_c: int) -> tuple[Tensor, Tensor]:
    """k_c distinct random real keys per sequence (fewer if it has fewer): indices, valid [B, min(k_c, L)]."""
    noise = torch.rand(key_mask.shape, device=key_mask.device).masked_fill(~key_mask, -1.0)
    values, idx = noise.topk(min(k_c, key_mask.shape[1]), dim=1)
    return idx, values >= 0


def gate_targets(q: Tensor, k: Tensor, key_mask: Tensor, idx: Tensor) -> Tensor:
    """y_j = sum over real queries i >= j of sigmoid(Q_i . K_j) for the sampled keys idx [B, n]: [B, n], detached."""
    with torch.no_grad():
        q, k = q.to(acc_dtype(q)), k.to(acc_dtype(k))
        keys = k.gather(1, idx[..., None].expand(-1, -1, k.shape[-1]))
        pos = torch.arange(q.shape[1], device=q.device)
        counted = (pos[None, :, None] >= idx[:, None, :]) & key_mask[:, :, None]  # [B, L, n]
        return (torch.sigmoid(q @ keys.transpose(1, 2)) * counted).sum(1)


def ranking_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean pairwise logistic loss of pred_a - pred_b against 1[t_a > t_b] (0.5 on ties), over valid pairs."""
    label = ((target[:, :, None] > target[:, None, :]).float() + (target[:, :, None] >= target[:, None, :]).float()) / 2
    diff = pred[:, :, None] - pred[:, None, :]
    pair = valid[:, :, None] & valid[:, None, :]
    losses = nn.functional.binary_cross_entropy_with_logits(diff.float(), label, reduction="none")
    return (losses * pair).sum() / pair.sum().clamp_min(1)


def gate_loss(scores: Tensor, q: Tensor, k: Tensor, key_mask: Tensor, k_c: int) -> Tensor:
    """The KS gate loss on k_c randomly sampled real keys per sequence (uses the global torch RNG)."""
    idx, valid = sample_gate_keys(key_mask, k_c)
    return ranking_loss(scores.gather(1, idx), gate_targets(q, k, key_mask, idx), valid)
