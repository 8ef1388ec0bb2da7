import pytest
import torch

from hax_ssm.ops.lsh import center, hash_buckets, lsh_candidates, lsh_mask_dense, recent_same_bucket
from tests.ops.sparse_helpers import as_dense, right_padded


def test_causal_centring_is_the_prefix_mean_of_real_tokens():
    x = torch.randn(2, 9, 3)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    got = center(x, mask, "causal")
    for b in range(2):
        for t in range(9):
            real = x[b, : t + 1][mask[b, : t + 1]]
            mean = real.mean(0) if len(real) else torch.zeros(3)
            torch.testing.assert_close(got[b, t], x[b, t] - mean)


def test_sequence_centring_uses_the_whole_sequence():
    x = torch.randn(2, 9, 3)
    mask = right_padded([9, 5], 9)
    got = center(x, mask, "sequence")
    for b, n in ((0, 9), (1, 5)):
        torch.testing.assert_close(got[b], x[b] - x[b, :n].mean(0))


@pytest.mark.parametrize(
    ("kind", "num_hash", "buckets"), [("sign_bin", 5, 32), ("argmax", 5, 5), ("sign_bin", 63, None)]
)
def test_buckets_follow_signs_or_argmax(kind, num_hash, buckets):
    x, proj = torch.randn(2, 30, 4), torch.randn(4, num_hash)
    got = hash_buckets(x, proj, kind, None, "causal")
    assert got.dtype == torch.int64
    if buckets is not None:
        assert got.min() >= 0 and got.max() < buckets
    z = torch.nn.functional.normalize(center(x, None, "causal"), dim=-1) @ proj
    for b in range(2):
        for t in range(30):
            if kind == "sign_bin":
                expected = sum(1 << h for h in range(num_hash) if z[b, t, h] > 0)
            else:
                expected = int(z[b, t].argmax())
            assert int(got[b, t]) == expected


def test_causal_buckets_ignore_the_future_and_sequence_buckets_do_not():
    torch.manual_seed(0)
    x, proj, t = torch.randn(1, 40, 4), torch.randn(4, 3), 19
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn(1, 40 - t - 1, 4) + 3.0  # shift the later mean
    for mode, unchanged in (("causal", True), ("sequence", False)):
        before = hash_buckets(x, proj, "sign_bin", None, mode)[:, : t + 1]
        after = hash_buckets(x2, proj, "sign_bin", None, mode)[:, : t + 1]
        assert torch.equal(before, after) == unchanged


@pytest.mark.parametrize("n", [1, 7, 63, 300])
@pytest.mark.parametrize("buckets", [1, 3, 2**63 - 1])
def test_candidates_match_dense_mask_and_predicate(n, buckets):
    torch.manual_seed(n)
    k_c = 4
    mask = right_padded([n, n // 2], n)
    mask[0, n // 3] = False  # a hole in the middle
    values = torch.tensor([0, 2**63 - 1, 2**62, 7]) if buckets > 3 else torch.arange(buckets)
    qb, kb = (values[torch.randint(0, len(values), (2, n))] for _ in range(2))
    cand = lsh_candidates(qb, kb, mask, k_c)
    dense = lsh_mask_dense(qb, kb, mask, k_c)
    assert torch.equal(as_dense(cand.idx, cand.valid, n), dense)
    pos = torch.arange(n)
    predicate = (
        mask[:, None, :]
        & (pos[None, :] <= pos[:, None])
        & (kb[:, None, :] == qb[:, :, None])
        & (cand.k_rank[:, None, :] > cand.q_count[:, :, None] - k_c)
    )
    assert torch.equal(predicate, dense)
    # most recent first
    kept = torch.where(cand.valid, cand.idx, -1)
    assert (kept[..., :-1] >= kept[..., 1:]).all()


def test_decoding_selection_equals_the_batch_one():
    n, k_c = 50, 3
    qb, kb = torch.randint(0, 3, (2, n)), torch.randint(0, 3, (2, n))
    mask = right_padded([n, 31], n)
    cand = as_dense(*lsh_candidates(qb, kb, mask, k_c)[:2], n)
    for t in range(n):
        idx, valid = recent_same_bucket(qb[:, t], kb[:, : t + 1], mask[:, : t + 1], k_c)
        assert torch.equal(as_dense(idx, valid, t + 1)[:, 0], cand[:, t, : t + 1])
