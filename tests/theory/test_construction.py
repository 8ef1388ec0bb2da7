"""The hand-built SSM + LSH model recalls every value, with an O(log n) state, at any table size."""

import math

import numpy as np
import pytest
import torch

from hax_ssm.data.joint_recall import draw_samples, inquiry_key_mask
from hax_ssm.data.tokens import FIRST_VALUE_ID
from hax_ssm.errors import HaxError
from hax_ssm.theory.construction import (
    RecallConstruction,
    construction_scheme,
    id_codes,
    lsh_failure_bound,
    measure_construction,
)


@pytest.mark.parametrize(
    "shape",
    [
        (4, 4),
        (5, 7),  # sides that are not powers of two
        (1, 40),  # one context, more keys than the reference's 16
        (24, 24),  # 576 entries: beyond the reference's 16 x 16
        (48, 3),
    ],
)
def test_recalls_every_value_of_random_tables(shape):
    row = measure_construction(shape, samples=4, seed=1)
    assert row["value_accuracy"] == 1.0
    assert row["exact_match"] == 1.0
    assert row["max_bucket_keys"] <= row["part_keys"]  # no answer was pushed out of its window


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 17), (2, 2, 2, 3), (50,)])
def test_multi_level_and_associative_recall(shape):
    row = measure_construction(shape, samples=3, seed=2)
    assert row["levels"] == len(shape)
    assert row["exact_match"] == 1.0


def test_state_grows_logarithmically():
    dims = {n: RecallConstruction(construction_scheme((n, n))).settings.state_dim for n in (4, 16, 64)}
    # n = 16, 256, 4096 entries: log2 n = 4, 8, 12, so the dims must be equally spaced
    assert dims[16] - dims[4] == dims[64] - dims[16] > 0
    slope = (dims[16] - dims[4]) / 4  # numbers per doubling of n
    assert dims[64] == pytest.approx(dims[4] + slope * (12 - 4))
    assert dims[64] <= 8 * math.log2(64 * 64)  # far below n = 4096


def _expected_states(tokens: list[int], model: RecallConstruction) -> torch.Tensor:
    """Slow reference of the SSM layer: every block a token writes (non-zero) replaces the state's block."""
    state = torch.zeros(model.settings.state_dim)
    states = []
    for token in tokens:
        row = model.embedding[token]
        for start, end in _blocks(model):
            if row[start:end].abs().sum() > 0:
                state[start:end] = row[start:end]
        states.append(state.clone())
    return torch.stack(states)


def _blocks(model: RecallConstruction) -> list[tuple[int, int]]:
    bounds = np.cumsum([0, *model.settings.code_lengths, 1])
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)])
def test_ssm_layer_overwrites_the_blocks_a_token_writes(shape):
    scheme = construction_scheme(shape)
    model = RecallConstruction(scheme, scan_impl="ref")
    tokens = torch.from_numpy(draw_samples(shape, 2, scheme, np.random.default_rng(0)).astype(np.int64))
    states = model.ssm(model.embed(tokens))
    for row, got in zip(tokens, states, strict=True):
        torch.testing.assert_close(got, _expected_states(row.tolist(), model), atol=1e-5, rtol=0)
    chunked = RecallConstruction(scheme, scan_impl="chunked").ssm(model.embed(tokens))
    torch.testing.assert_close(chunked, states, atol=1e-5, rtol=0)


def test_inquiry_key_state_holds_its_context_and_key():
    shape = (3, 4)
    scheme = construction_scheme(shape)
    model = RecallConstruction(scheme)
    tokens = torch.from_numpy(draw_samples(shape, 1, scheme, np.random.default_rng(3)).astype(np.int64))
    states = model.ssm(model.embed(tokens))[0]
    keys = np.flatnonzero(inquiry_key_mask(shape))
    (ctx_start, ctx_end), (key_start, key_end), *_ = _blocks(model)
    ctx_ids = torch.arange(scheme.level_offset(0), scheme.level_offset(0) + shape[0])
    for t in keys:
        context = tokens[0, :t][torch.isin(tokens[0, :t], ctx_ids)][-1]  # the last context token before it
        torch.testing.assert_close(states[t, ctx_start:ctx_end], model.embedding[context, ctx_start:ctx_end])
        torch.testing.assert_close(states[t, key_start:key_end], model.embedding[tokens[0, t], key_start:key_end])
        assert states[t, -1] == pytest.approx(-1.0)


def test_sparse_attention_path_matches_the_dense_reference():
    shape = (4, 6)
    scheme = construction_scheme(shape)
    tokens = torch.from_numpy(draw_samples(shape, 2, scheme, np.random.default_rng(4)).astype(np.int64))
    fast = RecallConstruction(scheme, attention_impl="sparse")(tokens)
    dense = RecallConstruction(scheme, attention_impl="reference")(tokens)
    torch.testing.assert_close(fast, dense, atol=1e-4, rtol=1e-4)
    scored = torch.from_numpy(inquiry_key_mask(shape)[:-1]).bool()
    answers = tokens[:, 1:][:, scored] - FIRST_VALUE_ID
    assert torch.equal(dense[:, :-1][:, scored].argmax(-1), answers)


def test_codes_are_distinct_and_unit():
    codes = id_codes(300, torch.Generator().manual_seed(0))
    assert codes.shape == (300, 4 * 9)
    torch.testing.assert_close(codes.norm(dim=1), torch.ones(300))
    dots = codes @ codes.T - 2 * torch.eye(300)
    assert dots.max() <= 1 - 2 / codes.shape[1] + 1e-6  # distinct ids differ in a sign


def test_lsh_failure_bound_by_hand():
    # two ids at a right angle: each of h hyperplanes separates them with probability 1/2;
    # 2 ordered pairs, 2W + 3 = 5 tokens per address, slack 1: 5 * 2 * 2^-h / 2
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2)
    assert lsh_failure_bound([codes], 3, slack=1)[0] == pytest.approx(5 * 2 * 0.125 / 2)
    # two levels: pairs differing in one level have cos 1/2 (angle pi/3, collide w.p. 2/3 per hash)
    bound = lsh_failure_bound([codes, codes], np.array([1, 2]), slack=3)
    expected = [7 * (8 * (2 / 3) ** h + 4 * 0.5**h) / 4 for h in (1, 2)]
    np.testing.assert_allclose(bound, expected)


def test_chosen_hash_count_meets_the_target_when_it_can():
    model = RecallConstruction(construction_scheme((8, 8)), failure_target=1e-3)
    assert model.settings.failure_bound <= 1e-3
    assert model.settings.num_hash < 63


def test_bad_input_is_refused():
    scheme = construction_scheme((2, 2))
    with pytest.raises(HaxError, match="token id"):
        RecallConstruction(scheme).embed(torch.tensor([[scheme.ids_needed]]))
    with pytest.raises(HaxError, match="every side"):
        construction_scheme((0, 3))
    with pytest.raises(HaxError, match="failure_target"):
        RecallConstruction(scheme, failure_target=0)


def test_tokens_of_one_address_share_a_bucket_as_queries_and_keys():
    shape = (6, 5)
    scheme = construction_scheme(shape)
    model = RecallConstruction(scheme)
    tokens = torch.from_numpy(draw_samples(shape, 2, scheme, np.random.default_rng(5)).astype(np.int64))
    states = model.ssm(model.embed(tokens))
    address = states[..., : model.address_dim]
    buckets = model.buckets(states)
    same_address = (address[:, :, None] == address[:, None, :]).all(-1)
    same_bucket = buckets[:, :, None] == buckets[:, None, :]
    assert same_bucket[same_address].all()
    assert same_bucket[~same_address].float().mean() < 0.01  # distinct addresses rarely collide
