import math

import torch

from hax_ssm.eval.metrics import mean_accuracy, next_token_targets, score_recall

V = 100


def _logits_predicting(predictions: list[list[int]]) -> torch.Tensor:
    """Logits whose argmax at [b, t] is predictions[b][t] (margin 5 over the 99 others, which are 0)."""
    logits = torch.zeros(len(predictions), len(predictions[0]), V)
    for b, row in enumerate(predictions):
        for t, token in enumerate(row):
            logits[b, t, token] = 5.0
    return logits


def test_targets_are_the_next_tokens():
    ids = torch.tensor([[1, 7, 8, 9]])
    assert next_token_targets(ids)[0, :3].tolist() == [7, 8, 9]


def test_accuracy_is_per_sample_then_averaged_not_per_token():
    # sample 0: 2 masked positions, both right; sample 1: 3 masked positions, 1 right
    ids = torch.tensor([[1, 30, 12, 31, 13, 3], [1, 30, 14, 31, 15, 32]])
    mask = torch.tensor([[0, 1, 0, 1, 0, 0], [1, 1, 0, 1, 0, 0]], dtype=torch.bool)
    #                  position:  0   1   2   3   4  5
    predicted = [[99, 12, 99, 13, 99, 99], [30, 11, 99, 11, 99, 99]]
    scores = score_recall(_logits_predicting(predicted), ids, mask)
    assert scores.correct.tolist() == [2.0, 1.0]
    assert scores.count.tolist() == [2.0, 3.0]
    assert math.isclose(mean_accuracy(scores).item(), (1.0 + 1 / 3) / 2, rel_tol=1e-6)  # token mean would be 3/5


def test_loss_counts_only_masked_positions():
    ids = torch.tensor([[1, 30, 12, 31, 13]])
    mask = torch.tensor([[0, 1, 0, 1, 0]], dtype=torch.bool)
    logits = _logits_predicting([[99, 12, 99, 50, 99]])
    logits[0, 0] = 1e4  # an unmasked position with absurd logits must not count
    scores = score_recall(logits, ids, mask)
    right = -5.0 + math.log(math.exp(5.0) + V - 1)  # target holds the 5.0
    wrong = math.log(math.exp(5.0) + V - 1)  # target is one of the zeros
    assert math.isclose(scores.ce_sum.item(), right + wrong, rel_tol=1e-5)


def test_bf16_logits_are_scored_in_fp32():
    ids = torch.tensor([[1, 30, 12]])
    mask = torch.tensor([[0, 1, 0]], dtype=torch.bool)
    scores = score_recall(_logits_predicting([[99, 12, 99]]).bfloat16(), ids, mask)
    assert scores.ce_sum.dtype == torch.float32 and scores.correct.item() == 1.0
