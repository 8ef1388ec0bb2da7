import itertools

import numpy as np
import pytest

from hax_ssm.data.mqar import distinct_draws, mqar_task, power_law_slots


@pytest.mark.parametrize("config", [(16, 4), (64, 8), (24, 6), (40, 3)])
@pytest.mark.parametrize("random_fill", [True, False])
def test_mqar_invariants(config, random_fill):
    seq_len, pairs = config
    vocab = 64
    task = mqar_task(
        seq_len=seq_len, pairs=pairs, vocab_size=vocab, train_per_config=1, eval_per_config=1, random_fill=random_fill
    )
    tokens, mask = task.draw(config, 200, np.random.default_rng(0))
    assert tokens.shape == mask.shape == (200, seq_len)
    keys, values = tokens[:, 0 : 2 * pairs : 2], tokens[:, 1 : 2 * pairs : 2]
    assert ((keys >= 1) & (keys < vocab // 2)).all() and ((values >= vocab // 2) & (values < vocab)).all()
    for row, row_mask, k, v in zip(tokens, mask, keys, values, strict=True):
        assert len(set(k.tolist())) == pairs and len(set(v.tolist())) == pairs
        queries = np.flatnonzero(row_mask)
        assert len(queries) == pairs and (queries >= 2 * pairs).all() and ((queries - 2 * pairs) % 2 == 0).all()
        answer = dict(zip(k.tolist(), v.tolist(), strict=True))
        assert sorted(row[queries].tolist()) == sorted(answer), "every key is asked exactly once"
        assert all(row[q + 1] == answer[row[q]] for q in queries), "the token after a query is its value"
        if not random_fill:
            other = np.ones(seq_len, bool)
            other[: 2 * pairs] = False
            other[queries] = other[queries + 1] = False
            assert (row[other] == 0).all()


def test_first_key_gets_the_first_slot_drawn():
    # zoology assigns the i-th slot drawn to the i-th key: key 1 is asked in slot 0 with p = w_0 / sum(w)
    seq_len, pairs, power_a, n = 24, 2, 0.01, 20_000
    task = mqar_task(
        seq_len=seq_len,
        pairs=pairs,
        vocab_size=64,
        train_per_config=1,
        eval_per_config=1,
        power_a=power_a,
        random_fill=False,
    )
    tokens, _ = task.draw((seq_len, pairs), n, np.random.default_rng(2))
    w = np.arange(1, (seq_len - 2 * pairs) // 2 + 1) ** (power_a - 1)
    p = w[0] / w.sum()
    observed = np.mean(tokens[:, 2 * pairs] == tokens[:, 0])
    assert abs(observed - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_distinct_draws_are_uniform_ordered_choices():
    draws = distinct_draws(np.random.default_rng(0), 48_000, 2, 3, 7)
    assert ((draws >= 3) & (draws < 7)).all() and (draws[:, 0] != draws[:, 1]).all()
    counts = {}
    for pair in map(tuple, draws.tolist()):
        counts[pair] = counts.get(pair, 0) + 1
    assert sorted(counts) == sorted(itertools.permutations(range(3, 7), 2))
    assert all(abs(c - 4_000) < 320 for c in counts.values())  # ~5 sigma


def test_power_law_slots_follow_successive_sampling():
    slots, power_a, n = 4, 0.3, 40_000
    w = np.arange(1, slots + 1) ** (power_a - 1.0)
    draws = power_law_slots(np.random.default_rng(1), n, 2, slots, power_a)
    assert (draws[:, 0] != draws[:, 1]).all()
    for a, b in itertools.permutations(range(slots), 2):
        p = w[a] / w.sum() * w[b] / (w.sum() - w[a])  # numpy choice(replace=False, p=w/sum)
        observed = np.mean((draws[:, 0] == a) & (draws[:, 1] == b))
        assert abs(observed - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-4, (a, b, observed, p)


def test_mqar_validation():
    with pytest.raises(ValueError, match="--seq-len 30: 8 pairs need at least 32"):
        mqar_task(seq_len=30, pairs=8)
    with pytest.raises(ValueError, match="must be even"):
        mqar_task(seq_len=33, pairs=2)
    with pytest.raises(ValueError, match="raise --vocab-size to at least 20"):
        mqar_task(seq_len=64, pairs=9, vocab_size=16)
    with pytest.raises(ValueError, match="--seq-len has 2 values and --pairs 3"):
        mqar_task(seq_len=[16, 32], pairs=[2, 3, 4])
    with pytest.raises(ValueError, match="distinct samples"):
        mqar_task(seq_len=8, pairs=2, vocab_size=6, random_fill=False, train_per_config=100)
    assert mqar_task(seq_len=64, pairs=[4, 8]).configs == ((64, 4), (64, 8))
