import math

import pytest
import torch

from hax_ssm.ops.key_selection import (
    KeyScorer,
    gate_loss,
    gate_targets,
    prefix_query_sum,
    prefix_topk,
    prefix_topk_mask_dense,
    ranking_loss,
    sample_gate_keys,
)
from tests.ops.sparse_helpers import as_dense, right_padded


@pytest.mark.parametrize("block", [1, 5, 128])
@pytest.mark.parametrize("n", [1, 7, 63, 300])
def test_prefix_topk_matches_dense_and_threshold(n, block):
    torch.manual_seed(n)
    k_c = 4
    scores = torch.randint(0, 4, (2, n)).float()  # heavy ties
    mask = right_padded([n, n // 2], n)
    mask[0, n // 3] = False
    sel = prefix_topk(scores, mask, k_c, block=block)
    dense = prefix_topk_mask_dense(scores, mask, k_c)
    assert torch.equal(as_dense(sel.idx, sel.valid, n), dense)
    pos = torch.arange(n)
    x = scores[:, None, :]
    beyond = (x > sel.tau[..., None]) | ((x == sel.tau[..., None]) & (pos <= sel.tau_pos[..., None]))
    predicate = mask[:, None, :] & (pos[None, :] <= pos[:, None]) & beyond
    assert torch.equal(predicate, dense)


def test_tie_rule_keeps_the_earlier_key():
    scores = torch.tensor([[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]])
    sel = prefix_topk(scores, torch.ones(1, 6, dtype=torch.bool), 2)
    assert sel.idx[0, 5].tolist() == [1, 3]  # 2.0 at positions 1, 3, 5: the two earliest
    assert sel.idx[0, 2].tolist() == [1, 0]  # then 1.0 at 0 before 2
    assert sel.tau[0, 5] == 2.0 and sel.tau_pos[0, 5] == 3


def test_sampled_gate_keys_are_distinct_and_real():
    mask = right_padded([10, 3, 0], 10)
    idx, valid = sample_gate_keys(mask, 4)
    assert valid.sum(1).tolist() == [4, 3, 0]
    for b in range(3):
        chosen = idx[b][valid[b]]
        assert len(set(chosen.tolist())) == len(chosen) and mask[b, chosen].all()


def test_gate_loss_equals_a_dense_computation():
    torch.manual_seed(0)
    b, n, d, k_c = 2, 30, 4, 6
    q, k = torch.randn(b, n, d), torch.randn(b, n, d)
    scores = torch.randn(b, n, requires_grad=True)
    mask = right_padded([n, 17], n)
    torch.manual_seed(1)
    loss = gate_loss(scores, q, k, mask, k_c)
    torch.manual_seed(1)
    idx, valid = sample_gate_keys(mask, k_c)
    # dense: y_j = sum over real i >= j of sigmoid(Q_i . K_j), then all pairs of sampled keys
    pos = torch.arange(n)
    counted = (pos[:, None] >= pos[None, :]) & mask[:, :, None]
    y_all = (torch.sigmoid(q @ k.transpose(1, 2)) * counted).sum(1)
    terms = []
    for bi in range(b):
        for a in idx[bi][valid[bi]]:
            for c in idx[bi][valid[bi]]:
                label = 0.5 if y_all[bi, a] == y_all[bi, c] else float(y_all[bi, a] > y_all[bi, c])
                diff = scores[bi, a] - scores[bi, c]
                terms.append(torch.nn.functional.binary_cross_entropy_with_logits(diff, torch.tensor(label)))
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    torch.testing.assert_close(gate_targets(q, k, mask, idx), y_all.gather(1, idx))


def test_ranking_loss_is_log2_on_ties_and_zero_gradient_on_a_tie():
    pred = torch.zeros(1, 3, requires_grad=True)
    loss = ranking_loss(pred, torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6)
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(1, 3))


def test_gate_loss_trains_only_the_scorer():
    scorer = KeyScorer(4)
    q, k = torch.randn(2, 12, 4, requires_grad=True), torch.randn(2, 12, 4, requires_grad=True)
    mask = torch.ones(2, 12, dtype=torch.bool)
    scores = scorer(k, prefix_query_sum(q, mask))
    gate_loss(scores, q, k, mask, 4).backward()
    assert q.grad is None and k.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer.parameters())


def test_prefix_query_sum_skips_padding():
    q = torch.randn(1, 5, 2)
    mask = torch.tensor([[True, False, True, True, False]])
    got = prefix_query_sum(q, mask)
    torch.testing.assert_close(got[0, 4], q[0, 0] + q[0, 2] + q[0, 3])
    torch.testing.assert_close(got[0, 1], q[0, 0])
