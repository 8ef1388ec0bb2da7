"""The information bounds of a fixed b-bit state, on cases computed by hand."""

import math

import pytest
import torch

from hax_ssm.errors import HaxError
from hax_ssm.models import build_model
from hax_ssm.theory.bounds import exact_recall_bound, recurrent_state_numbers, value_accuracy_bound


def test_exact_recall_bound_by_hand():
    assert exact_recall_bound(8, 2, 16) == 1.0  # 2^8 states, 16^2 tables: could hold them all
    assert exact_recall_bound(4, 2, 16) == pytest.approx(1 / 16)  # 2^4 / 2^8
    assert exact_recall_bound(0, 3, 4) == pytest.approx(1 / 64)  # no state: guess all three
    assert exact_recall_bound(100, 1000, 2) == 2.0**-900  # no overflow for big tables


def test_value_accuracy_bound_by_hand():
    assert value_accuracy_bound(0, 5, 16) == pytest.approx(1 / 16)  # no state: chance
    assert value_accuracy_bound(20, 5, 16) == 1.0  # 4 bits per entry suffice
    # |V| = 2 and half a bit per entry: accuracy 1 - e with h(e) = 1/2, e = 0.110028
    assert value_accuracy_bound(5, 10, 2) == pytest.approx(1 - 0.110028, abs=1e-6)
    accuracies = [value_accuracy_bound(b, 10, 4) for b in range(0, 21, 2)]
    assert accuracies == sorted(accuracies)  # more bits never hurt


def test_fano_bound_allows_what_one_entry_can_achieve():
    # one entry, b bits: storing the value when it is one of 2^b fixed values achieves 2^b / |V|,
    # exactly the counting bound; the per-value bound must not claim less
    for bits in (0, 1, 2):
        achievable = 2**bits / 8
        assert exact_recall_bound(bits, 1, 8) == pytest.approx(achievable)
        assert value_accuracy_bound(bits, 1, 8) >= achievable - 1e-9


def test_bounds_refuse_bad_sizes():
    with pytest.raises(HaxError, match="entries=0"):
        exact_recall_bound(8, 0, 16)
    with pytest.raises(HaxError, match="n_values=1"):
        value_accuracy_bound(8, 3, 1)


def _cache_numbers(model, length: int = 5) -> int:
    out = model(torch.randint(5, 30, (1, length)), use_cache=True)
    return sum(t.numel() for layer in out.past_key_values.layers for t in (layer.conv, layer.ssm))


def test_state_numbers_by_hand_and_against_the_decoding_cache():
    model = build_model("mamba", hidden_size=16, state_size=4)
    assert recurrent_state_numbers(model.config) == 2 * 32 * (4 + 3)  # layers x d_inner x (state + conv)
    assert recurrent_state_numbers(model.config) == _cache_numbers(model)
    window = build_model("mamba", hidden_size=16, state_size=4, sparse_arch="sliding_window", sparse_keys=8)
    assert recurrent_state_numbers(window.config) == 2 * 32 * 7 + 2 * 7 * (4 + 32)  # + 7 past keys and values
    with pytest.raises(HaxError, match="grows with the sequence"):
        recurrent_state_numbers(build_model("mamba", sparse_arch="sign_bin_lsh").config)
    with pytest.raises(HaxError, match="hax_mamba"):
        recurrent_state_numbers(build_model("mamba2").config)
    assert math.isfinite(exact_recall_bound(recurrent_state_numbers(model.config) * 32, 4096, 4))
