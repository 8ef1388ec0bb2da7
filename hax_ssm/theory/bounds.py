"""What a model with a fixed state of b bits can recall of a uniform multi-query joint recall
table of n entries over |V| values (PAPER.md section 6), and how big such a state is.

Both bounds hold with teacher forcing. Fix the orders of both parts (they are independent of the
table). Each inquiry prediction is a function of the state S after the information part and of
the inquiry tokens before it, which hold the true values recalled so far.

- Whole table (:func:`exact_recall_bound`): for each value of S the first prediction is fixed,
  then, given it was right, the second, and so on, so at most one table per state is recalled
  without a mistake: ``P(exact) <= 2^b / |V|^n``.
- Per value (:func:`value_accuracy_bound`): by the chain rule
  ``sum_j H(V_j | S, V_<j) = H(V | S) >= n log|V| - b``; Fano bounds each term by
  ``h(e_j) + e_j log(|V| - 1)`` (e_j: error rate of prediction j), and concavity gives, for the
  mean error e, ``h(e) + e log(|V| - 1) >= log|V| - b / n``. So the per-value accuracy is at most
  ``1 - e*`` with e* the smallest such e. At b = 0 this is chance, ``1 / |V|``.

They bound different quantities: compare exact match with the first, per-value accuracy with the
second.
"""

from __future__ import annotations

import math
from typing import Any

from hax_ssm.errors import require

BITS_PER_NUMBER = 32  # fp32 states (CPU training)


def exact_recall_bound(state_bits: float, entries: int, n_values: int) -> float:
    """``min(1, 2^b / |V|^n)``: the best probability of recalling every entry of the table."""
    require(entries >= 1 and n_values >= 2, f"entries={entries}, n_values={n_values}: need >= 1 and >= 2")
    log2_bound = state_bits - entries * math.log2(n_values)
    return 1.0 if log2_bound >= 0 else 2.0**log2_bound


def _fano(error: float, n_values: int) -> float:
    """``h(e) + e log2(|V| - 1)`` in bits."""
    if error <= 0:
        return 0.0
    entropy = -error * math.log2(error) - (1 - error) * math.log2(1 - error) if error < 1 else 0.0
    return entropy + error * math.log2(n_values - 1)


def value_accuracy_bound(state_bits: float, entries: int, n_values: int) -> float:
    """The best per-value accuracy (the mean over entries) of a b-bit state (Fano, see the module docstring)."""
    require(entries >= 1 and n_values >= 2, f"entries={entries}, n_values={n_values}: need >= 1 and >= 2")
    missing = math.log2(n_values) - state_bits / entries  # bits per entry the state cannot hold
    if missing <= 0:
        return 1.0
    lo, hi = 0.0, 1 - 1 / n_values  # _fano rises from 0 to log2|V| on this interval
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _fano(mid, n_values) >= missing else (mid, hi)
    return 1 - hi


def recurrent_state_numbers(config: Any) -> int:
    """Numbers a Mamba model (``hax_mamba`` config) carries from token to token: per layer the
    SSM state, the conv's last ``conv_kernel - 1`` inputs and, with a sliding-window branch, the
    keys and values of the window's other ``k - 1`` tokens. Other branches grow with the sequence."""
    require(
        getattr(config, "model_type", None) == "hax_mamba",
        f"model_type {getattr(config, 'model_type', None)!r}: state sizes are implemented for hax_mamba",
    )
    arch = config.sparse_arch or "none"
    require(
        arch in ("none", "sliding_window"),
        f"sparse_arch {arch!r}: its state grows with the sequence; fixed states: none, sliding_window",
    )
    d_inner = config.intermediate_size
    per_layer = d_inner * config.state_size + d_inner * (config.conv_kernel - 1)
    if arch == "sliding_window":
        per_layer += (config.sparse_keys - 1) * (config.state_size + d_inner)
    return config.num_hidden_layers * per_layer
