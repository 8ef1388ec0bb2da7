"""Multi-query associative recall (MQAR) as in the zoology benchmark (Arora et al., 2023).

A sample of length L with P pairs: ``k_1 v_1 ... k_P v_P`` (keys distinct, drawn from
``[1, vocab/2)``; values distinct, from ``[vocab/2, vocab)``), then the query region of
``L - 2P`` tokens cut into ``(L - 2P) / 2`` two-token slots. Key ``k_i`` is asked again at the
start of slot ``g_i``; the slots ``g_1, g_2, ...`` are drawn one after another without
replacement with probability proportional to ``(g + 1) ** (power_a - 1)``, so early slots are
likely: short gaps follow a power law. Every other position holds a random token of the whole
vocabulary (zoology's ``random_non_queries``) or 0.

One difference, forced by the storage (next-token targets with a loss mask): the answer ``v_i``
sits right after its query, where zoology has a filler token, so it is fed in during training
(teacher forcing, as in joint recall). Each key is asked once, so this reveals no other answer.
The mask is 1 on the query keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hax_ssm.errors import require

Config = tuple[int, int]  # (seq_len, pairs)


@dataclass(frozen=True)
class MQARTask:
    """A validated MQAR data set description (build it with :func:`mqar_task`)."""

    configs: tuple[Config, ...]
    vocab_size: int = 8192
    train_per_config: int = 20_000
    eval_per_config: int = 1_000
    power_a: float = 0.01
    random_fill: bool = True

    name = "mqar"
    task_id = 0x4D51  # "MQ": part of every random stream's seed
    size_names = ("seq_len", "pairs")

    def counts(self) -> dict[str, int]:
        return {"train": self.train_per_config, "validation": self.eval_per_config, "test": self.eval_per_config}

    def groups(self) -> list[tuple[Config, ...]]:
        """Configs whose samples could coincide: those of one length (a filler token can be
        anything, so the number of pairs does not show in the tokens)."""
        lengths = sorted({seq_len for seq_len, _ in self.configs})
        return [tuple(sorted(c for c in self.configs if c[0] == seq_len)) for seq_len in lengths]

    def count_distinct(self, config: Config) -> int:
        """Number of distinct draws (keys, values, slots, fillers): exact for ``random_fill=False``,
        an upper bound on distinct token rows otherwise (a filler can copy a query)."""
        seq_len, pairs = config
        half = self.vocab_size // 2
        space = math.perm(half - 1, pairs) * math.perm(self.vocab_size - half, pairs)
        space *= math.perm((seq_len - 2 * pairs) // 2, pairs)
        if self.random_fill:
            space *= self.vocab_size ** (seq_len - 4 * pairs)
        return space

    def check_space(self) -> None:
        """Refuse, before generating anything, a config with fewer distinct samples than requested."""
        wanted = sum(self.counts().values())
        for config in self.configs:
            space = self.count_distinct(config)
            require(
                space >= wanted,
                f"MQAR config seq_len={config[0]} pairs={config[1]} has only {space} distinct samples but {wanted} "
                "are requested (train + validation + test): lower --train-per-config / --eval-per-config "
                "or raise --vocab-size / --seq-len",
            )

    def draw(self, config: Config, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples: tokens ``[n, L]`` and masks ``[n, L]`` (int8, 1 on the query keys)."""
        seq_len, pairs = config
        half = self.vocab_size // 2
        keys = distinct_draws(rng, n, pairs, 1, half)
        values = distinct_draws(rng, n, pairs, half, self.vocab_size)
        slots = power_law_slots(rng, n, pairs, (seq_len - 2 * pairs) // 2, self.power_a)
        dtype = np.uint16 if self.vocab_size <= 65536 else np.int32
        if self.random_fill:
            tokens = rng.integers(0, self.vocab_size, (n, seq_len), dtype=dtype)
        else:
            tokens = np.zeros((n, seq_len), dtype)
        tokens[:, 0 : 2 * pairs : 2] = keys
        tokens[:, 1 : 2 * pairs : 2] = values
        queries = 2 * pairs + 2 * slots
        np.put_along_axis(tokens, queries, keys.astype(dtype), axis=1)
        np.put_along_axis(tokens, queries + 1, values.astype(dtype), axis=1)
        mask = np.zeros((n, seq_len), np.int8)
        np.put_along_axis(mask, queries, 1, axis=1)
        return tokens, mask

    def to_json(self) -> dict[str, Any]:
        return {
            "configs": [list(c) for c in self.configs],
            "vocab_size": self.vocab_size,
            "train_per_config": self.train_per_config,
            "eval_per_config": self.eval_per_config,
            "power_a": self.power_a,
            "random_fill": self.random_fill,
        }


def _as_list(value: int | list[int] | tuple[int, ...]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


def mqar_task(
    *,
    seq_len: int | list[int] | tuple[int, ...] = (64, 128, 256, 256, 256),
    pairs: int | list[int] | tuple[int, ...] = (4, 8, 16, 32, 64),
    vocab_size: int = 8192,
    train_per_config: int = 20_000,
    eval_per_config: int = 1_000,
    power_a: float = 0.01,
    random_fill: bool = True,
) -> MQARTask:
    """Validate options into a task. ``seq_len`` and ``pairs`` pair up element-wise; a single
    value is repeated to the other's length. The defaults are zoology's training configs."""
    lengths, counts = _as_list(seq_len), _as_list(pairs)
    if len(lengths) == 1:
        lengths *= len(counts)
    if len(counts) == 1:
        counts *= len(lengths)
    require(
        len(lengths) == len(counts),
        f"--seq-len has {len(lengths)} values and --pairs {len(counts)}: give one each or equally many",
    )
    require(vocab_size >= 4, f"--vocab-size {vocab_size}: MQAR needs at least 4 (keys and values are halves)")
    require(power_a > 0, f"--power-a {power_a}: must be > 0 (1 gives uniform query slots)")
    require(train_per_config >= 0, f"--train-per-config {train_per_config}: must be >= 0")
    require(eval_per_config >= 0, f"--eval-per-config {eval_per_config}: must be >= 0")
    half = vocab_size // 2
    for length, p in zip(lengths, counts, strict=True):
        require(p >= 1, f"--pairs {p}: must be at least 1")
        require(length % 2 == 0, f"--seq-len {length}: must be even (queries sit in two-token slots)")
        require(
            length >= 4 * p, f"--seq-len {length}: {p} pairs need at least {4 * p} tokens (2 per pair, 2 per query)"
        )
        require(
            p <= half - 1,
            f"--pairs {p}: keys are distinct ids in [1, {half}) for --vocab-size {vocab_size}; "
            f"raise --vocab-size to at least {2 * (p + 1)} or lower --pairs",
        )
    configs = tuple(zip(lengths, counts, strict=True))
    require(len(set(configs)) == len(configs), f"--seq-len/--pairs: a (seq_len, pairs) config repeats: {configs}")
    task = MQARTask(configs, vocab_size, train_per_config, eval_per_config, power_a, random_fill)
    task.check_space()
    return task


def distinct_draws(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """``[n, k]``: each row k distinct integers of ``[low, high)``, every ordered choice equally likely.

    Draws with replacement, then redraws every repeat of an earlier entry of its row until none is
    left. The procedure treats all values alike, so each ordered k-tuple of distinct values is
    equally likely (any relabelling of the values maps one onto another)."""
    out = rng.integers(low, high, (n, k), dtype=np.int64)
    rows = np.arange(n)
    while rows.size:
        sub = out[rows]
        order = np.argsort(sub, axis=1, kind="stable")  # ties keep position order: later = repeat
        ranked = np.take_along_axis(sub, order, axis=1)
        repeat = np.zeros(sub.shape, bool)
        np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        sub[repeat] = rng.integers(low, high, int(repeat.sum()), dtype=np.int64)
        out[rows] = sub
        rows = rows[repeat.any(axis=1)]
    return out


def power_law_slots(rng: np.random.Generator, n: int, k: int, slots: int, power_a: float) -> np.ndarray:
    """``[n, k]``: k distinct slots of ``range(slots)`` per row, drawn one after another without
    replacement with weights ``(g + 1) ** (power_a - 1)`` (numpy ``choice(replace=False, p=...)``).

    Vectorised with exponential races: slot g gets the key ``E_g / w_g`` (E_g ~ Exp(1)); the k
    smallest keys in increasing order have exactly the distribution of successive sampling."""
    weights = np.arange(1, slots + 1, dtype=np.float64) ** (power_a - 1)
    out = np.empty((n, k), np.int64)
    chunk = max(1, (1 << 22) // slots)  # bound the [rows, slots] key matrix to 32 MB
    for start in range(0, n, chunk):
        keys = rng.standard_exponential((min(chunk, n - start), slots)) / weights
        pick = np.argpartition(keys, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(keys, pick, axis=1), axis=1)
        out[start : start + len(keys)] = np.take_along_axis(pick, order, axis=1)
    return out
