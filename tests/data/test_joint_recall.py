import itertools
import math

import numpy as np
import pytest
import torch

from hax_ssm.data.joint_recall import (
    draw_samples,
    inquiry_key_mask,
    joint_recall_task,
    layout,
    random_permutations,
    reference_layout,
)
from hax_ssm.data.tokens import (
    BOS,
    REFERENCE_SCHEME,
    SEP,
    JointRecallScheme,
    count_distinct_samples,
    sequence_length,
    table_sizes,
)


def test_reference_ids_and_length():
    # PAPER.md section 1: value v -> 10+v, key j -> 26+j, context i -> 42+i, fixed length 1058
    assert REFERENCE_SCHEME.level_offset(1) == 26 and REFERENCE_SCHEME.level_offset(0) == 42
    assert REFERENCE_SCHEME.fixed_length == 2 * 16 * (2 * 16 + 1) + 2 == 1058
    for n_c, n_k in [(5, 5), (7, 12), (16, 16)]:
        assert sequence_length((n_c, n_k)) == 2 + 2 * n_c * (1 + 2 * n_k)


@pytest.mark.parametrize("shape", [(3,), (1,), (2, 3), (4, 1), (2, 1, 3), (2, 2, 1, 2)])
def test_vectorised_layout_matches_nested_loops(shape):
    scheme = JointRecallScheme(5, tuple(s + 2 for s in shape), 100)
    rng = np.random.default_rng(sum(shape))
    n = 7
    table = rng.integers(0, scheme.n_values, (n, math.prod(shape)), dtype=np.uint8)
    parts = [[random_permutations(rng, n * math.prod(shape[:lv]), s) for lv, s in enumerate(shape)] for _ in range(2)]
    tokens = layout(shape, table, parts, scheme)

    def orders_of(part, i):  # sample i's orders, level by level
        return [o.reshape(n, -1, o.shape[1])[i] for o in part]

    for i in range(n):
        expected = reference_layout(shape, table[i], orders_of(parts[0], i), orders_of(parts[1], i), scheme)
        assert tokens[i].tolist() == expected


@pytest.mark.parametrize("shape", [(4,), (3, 5), (2, 3, 2)])
def test_samples_parse_back_to_their_table(shape, parse_jr):
    scheme = JointRecallScheme(6, tuple(s + 1 for s in shape), 100)
    tokens = draw_samples(shape, 30, scheme, np.random.default_rng(0))
    mask = inquiry_key_mask(shape)
    assert tokens.shape[1] == len(mask) == 2 + 2 * (len(mask) - 2) // 2
    for row in tokens:
        sizes, table, inquiry, end = parse_jr(row, mask, scheme)
        assert sizes == shape and end == len(row)
        assert sorted(path for path, _, _ in inquiry) == sorted(table), "the inquiry lists every cell once"
        assert all(value == table[path] for path, value, _ in inquiry), "an answer differs from the information"
        assert np.flatnonzero(mask).tolist() == sorted(pos for _, _, pos in inquiry), "mask != inquiry keys"
    assert (table_sizes(tokens, scheme) == shape).all()
    assert (table_sizes(torch.from_numpy(tokens.astype(np.int64)), scheme) == torch.tensor(shape)).all()


def test_one_level_is_associative_recall():
    scheme = JointRecallScheme(16, (8,), 100)
    row = draw_samples((5,), 1, scheme, np.random.default_rng(1))[0].tolist()
    assert row[0] == BOS and row[11] == SEP and len(row) == 22
    keys = [t - 26 for t in row[1:11:2]]
    assert sorted(keys) == list(range(5)) and all(10 <= v < 26 for v in row[2:11:2])


def test_orders_are_fresh_and_uniform():
    counts = {}
    for p in random_permutations(np.random.default_rng(0), 60_000, 3).tolist():
        counts[tuple(p)] = counts.get(tuple(p), 0) + 1
    assert sorted(counts) == sorted(itertools.permutations(range(3)))
    assert all(abs(c - 10_000) < 500 for c in counts.values())  # ~5 sigma


def test_space_count_matches_enumeration():
    # shape (2, 1) with 2 values: tables 2^2, info orders 2!, inquiry orders 2! -> 16
    assert count_distinct_samples((2, 1), 2) == 16
    scheme = JointRecallScheme(2, (2, 1), 100)
    seen = {tuple(r) for r in draw_samples((2, 1), 2_000, scheme, np.random.default_rng(0)).tolist()}
    assert len(seen) == 16
    assert count_distinct_samples((3, 2), 16) == 16**6 * (math.factorial(3) * 2**3) ** 2


def test_validation_refuses_before_generating():
    with pytest.raises(ValueError, match="has only 16 distinct samples"):
        joint_recall_task(sizes="2,1", values=2, train_per_pair=10, eval_per_pair=4)
    with pytest.raises(ValueError, match="raise --vocab-size to at least 126"):
        joint_recall_task(max_contexts=50, max_keys=50, vocab_size=100)
    assert joint_recall_task(levels=3, min_side=2, max_contexts=3, max_keys=3).size_names == ("n_1", "n_2", "n_k")
