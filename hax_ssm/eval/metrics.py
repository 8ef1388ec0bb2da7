"""The task's loss and accuracy (PAPER.md section 1), computed without host syncs.

Position t of ``loss_mask`` is 1 when the NEXT token, ``input_ids[:, t + 1]``, is an inquiry
value. The loss is the cross-entropy of those predictions averaged over all masked positions of
the batch (token mean); the accuracy is the fraction of correct argmax values per sample,
averaged over samples. Everything stays on the device: callers read numbers only when they log.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CHANCE_ACCURACY = 1 / 16  # n_value = 16 values, uniform


def next_token_targets(input_ids: torch.Tensor) -> torch.Tensor:
    """targets[:, t] = input_ids[:, t + 1]; the last column (never masked) is a copy of itself."""
    return torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)


@dataclass
class RecallScores:
    """Per-sample sums of one batch (device tensors of shape [B])."""

    ce_sum: torch.Tensor  # summed cross-entropy over the sample's masked positions
    correct: torch.Tensor  # number of masked positions whose argmax is the target
    count: torch.Tensor  # number of masked positions

    @property
    def sample_accuracy(self) -> torch.Tensor:
        return self.correct / self.count.clamp_min(1)


def score_recall(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> RecallScores:
    """Per-sample cross-entropy sums, correct counts and masked counts; fp32, no host sync.

    The cross-entropy runs on every position and is then masked (a boolean gather would need the
    number of masked positions on the host).
    """
    targets = next_token_targets(input_ids)
    mask = loss_mask.to(torch.float32)
    logits = logits.float()
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(mask)
    correct = (logits.argmax(dim=-1) == targets).to(torch.float32) * mask
    return RecallScores(ce_sum=(ce * mask).sum(dim=1), correct=correct.sum(dim=1), count=mask.sum(dim=1))


def mean_accuracy(scores: RecallScores) -> torch.Tensor:
    """The paper's accuracy of one batch: per-sample fraction of correct values, averaged over samples."""
    return scores.sample_accuracy.mean()
