"""(Multi-level) joint recall: the task, its validation, and a vectorised sampler per table shape.

A sample of shape ``(n_1, ..., n_W)`` is a random table ``C_1 x ... x C_{W-1} x K -> V`` written out
twice (information part, inquiry part), each time with every level in a fresh random order; see
:mod:`hax_ssm.data.tokens` for ids and layout. W=2 is the paper's joint recall, W=1 associative
recall. :func:`draw_samples` builds all samples of one shape with numpy at once (no Python loop
per sample); :func:`reference_layout` is the slow obvious version the tests compare it against.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hax_ssm.data.tokens import (
    BOS,
    FIRST_VALUE_ID,
    SEP,
    JointRecallScheme,
    block_sizes,
    count_distinct_samples,
    part_length,
)
from hax_ssm.errors import HaxError, require

Shape = tuple[int, ...]


@dataclass(frozen=True)
class JointRecallTask:
    """A validated joint-recall data set description: shapes, counts and ids."""

    size_ranges: tuple[tuple[int, int], ...]  # (min, max) items per level, outermost first, keys last
    n_values: int = 16
    train_per_shape: int = 10_000
    eval_per_shape: int = 100
    vocab_size: int = 100

    name = "joint_recall"
    task_id = 0x4A52  # "JR": part of every random stream's seed

    @property
    def scheme(self) -> JointRecallScheme:
        return JointRecallScheme(self.n_values, tuple(hi for _, hi in self.size_ranges), self.vocab_size)

    @property
    def size_names(self) -> tuple[str, ...]:
        levels = len(self.size_ranges)
        if levels == 2:
            return ("n_c", "n_k")
        return (*(f"n_{level + 1}" for level in range(levels - 1)), "n_k")

    def shapes(self) -> list[Shape]:
        """Every table shape, outer level slowest (the reference's (n_c, n_k) order)."""
        return list(itertools.product(*(range(lo, hi + 1) for lo, hi in self.size_ranges)))

    def counts(self) -> dict[str, int]:
        return {"train": self.train_per_shape, "validation": self.eval_per_shape, "test": self.eval_per_shape}

    def groups(self) -> list[tuple[Shape, ...]]:
        """Sets of shapes whose samples could coincide: different shapes never can (their layouts
        differ), so each shape is its own group."""
        return [(shape,) for shape in self.shapes()]

    def draw(self, shape: Shape, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples of ``shape``: tokens ``[n, L]`` and the mask ``[L]`` (same for every row)."""
        return draw_samples(shape, n, self.scheme, rng), inquiry_key_mask(shape)

    def check_space(self) -> None:
        """Refuse, before generating anything, a shape with fewer distinct samples than requested."""
        wanted = sum(self.counts().values())
        for shape in self.shapes():
            space = count_distinct_samples(shape, self.n_values)
            require(
                space >= wanted,
                f"table shape {shape} has only {space} distinct samples but {wanted} are requested "
                "(train + validation + test per shape): lower --train-per-pair / --eval-per-pair "
                "or raise --values / the smallest table side",
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "levels": len(self.size_ranges),
            "size_ranges": [list(r) for r in self.size_ranges],
            "n_values": self.n_values,
            "train_per_shape": self.train_per_shape,
            "eval_per_shape": self.eval_per_shape,
            "vocab_size": self.vocab_size,
        }


def parse_size_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """``"5-16,5-16"`` -> ((5, 16), (5, 16)); a single number ``N`` means ``N-N``."""
    ranges = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?", item)
        if not match:
            raise HaxError(f"--sizes {text!r}: expected comma-separated ranges LO-HI or N per level, e.g. 2-4,5-16")
        lo = int(match.group(1))
        ranges.append((lo, int(match.group(2)) if match.group(2) is not None else lo))
    return tuple(ranges)


def joint_recall_task(
    *,
    levels: int | None = None,
    sizes: str | Sequence[tuple[int, int]] | None = None,
    max_contexts: int = 16,
    max_keys: int = 16,
    min_side: int = 5,
    values: int = 16,
    train_per_pair: int = 10_000,
    eval_per_pair: int = 100,
    vocab_size: int = 100,
) -> JointRecallTask:
    """Validate the user's options into a task (one-line HaxError naming the bad value otherwise).

    Without ``sizes`` every outer level ranges over ``min_side..max_contexts`` and the keys over
    ``min_side..max_keys``; ``sizes`` gives one ``(lo, hi)`` range per level instead.
    """
    if sizes is None:
        require(levels is None or levels >= 1, f"--levels {levels}: must be at least 1")
        levels = 2 if levels is None else levels
        require(min_side >= 1, f"--min-side {min_side}: a table side must be at least 1")
        require(max_contexts >= min_side, f"--max-contexts {max_contexts}: must be >= --min-side {min_side}")
        require(max_keys >= min_side, f"--max-keys {max_keys}: must be >= --min-side {min_side}")
        ranges = ((min_side, max_contexts),) * (levels - 1) + ((min_side, max_keys),)
        size_flags = ["--max-keys"] + (["--max-contexts"] if levels > 1 else [])
    else:
        ranges = parse_size_ranges(sizes) if isinstance(sizes, str) else tuple((int(lo), int(hi)) for lo, hi in sizes)
        require(
            levels is None or levels == len(ranges),
            f"--levels {levels}: --sizes gives {len(ranges)} level ranges; they must agree",
        )
        for level, (lo, hi) in enumerate(ranges, 1):
            require(lo >= 1, f"--sizes level {level} minimum {lo}: a table side must be at least 1")
            require(hi >= lo, f"--sizes level {level} range {lo}-{hi}: the minimum is above the maximum")
        size_flags = ["the --sizes maxima"]
    require(values >= 2, f"--values {values}: need at least 2 distinct values")
    require(train_per_pair >= 0, f"--train-per-pair {train_per_pair}: must be >= 0")
    require(eval_per_pair >= 0, f"--eval-per-pair {eval_per_pair}: must be >= 0")
    task = JointRecallTask(ranges, values, train_per_pair, eval_per_pair, vocab_size)
    task.scheme.check_vocab(["--values", *size_flags])
    task.check_space()
    return task


def random_permutations(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """``rows`` independent uniform permutations of ``range(n)``, as a ``[rows, n]`` array.

    Sorts random keys with the index packed into their low bits (a plain sort, no argsort).
    Rows where two random parts tie are redrawn, which keeps every permutation exactly equally
    likely (ties are rare: for n <= 16 about one row in two million).
    """
    bits = max(1, (n - 1).bit_length())
    dtype = np.uint32 if bits <= 8 else np.uint64
    keys = rng.bit_generator.random_raw(-(-rows * n * dtype().itemsize // 8)).view(dtype)[: rows * n]
    keys = keys.reshape(rows, n)
    keys &= dtype(~((1 << bits) - 1) & np.iinfo(dtype).max)
    keys |= np.arange(n, dtype=dtype)
    keys.sort(axis=1)
    high = keys >> dtype(bits)
    tied = high[:, 1:] == high[:, :-1]
    keys &= dtype((1 << bits) - 1)
    perms = keys.view(np.int32 if dtype == np.uint32 else np.int64)  # small values: same bits
    if tied.any():
        tied = tied.any(axis=1)
        perms[tied] = random_permutations(rng, int(tied.sum()), n)
    return perms


def draw_samples(shape: Shape, n: int, scheme: JointRecallScheme, rng: np.random.Generator) -> np.ndarray:
    """``n`` random samples of one table shape as tokens ``[n, 2 + 2 * part_length(shape)]``.

    The random draws, in this order: the table (values in row-major cell order), then for the
    information part and then the inquiry part, one permutation per node of each level.
    """
    cells = int(np.prod(shape))
    table = rng.integers(0, scheme.n_values, (n, cells), dtype=np.uint8 if scheme.n_values <= 256 else np.int32)
    parts = [[random_permutations(rng, n * int(np.prod(shape[:level])), size) for level, size in enumerate(shape)]]
    parts.append([random_permutations(rng, n * int(np.prod(shape[:level])), size) for level, size in enumerate(shape)])
    return layout(shape, table, parts, scheme)


def layout(shape: Shape, table: np.ndarray, parts: list[list[np.ndarray]], scheme: JointRecallScheme) -> np.ndarray:
    """Tokens of samples given their tables ``[n, cells]`` (row-major) and, per part and level,
    the orders ``[n * nodes of the level above, n_level]`` (samples, then parent nodes in the order
    the part lists them)."""
    n, width = table.shape[0], part_length(shape)
    dtype = np.uint8 if scheme.vocab_size <= 256 else np.uint16 if scheme.vocab_size <= 65536 else np.int32
    tokens = np.empty((n, 2 + 2 * width), dtype)
    tokens[:, 0] = BOS
    tokens[:, 1 + width] = SEP
    value_ids = table.reshape(-1).astype(dtype)
    value_ids += dtype(FIRST_VALUE_ID)
    for start, orders in ((1, parts[0]), (2 + width, parts[1])):
        _write_part(tokens[:, start : start + width], shape, orders, value_ids, scheme)
    return tokens


def _level_views(region: np.ndarray, shape: Shape) -> list[np.ndarray]:
    """``region`` ``[n, part_length]`` viewed, for each level l, as ``[n, n_1, ..., n_l, s_l]``: the
    blocks of that level in the order the part lists them. Only the last axis is ever split, so
    these are views and writing into them fills the part."""
    views, view = [], region
    for size, block in zip(shape, block_sizes(shape), strict=True):
        view = view.reshape(*view.shape[:-1], size, block)
        views.append(view)
        view = view[..., 1:]  # the children of each block follow its opening token
    return views


def _write_part(
    region: np.ndarray, shape: Shape, orders: list[np.ndarray], value_ids: np.ndarray, scheme: JointRecallScheme
) -> None:
    """Fill one part ``[n, part_length]`` in place, one strided assignment per level.

    ``value_ids`` is the flat ``[n * cells]`` table already mapped to token ids."""
    n = region.shape[0]
    # flat index of each listed node's prefix into value_ids: sample, then the row-major cell
    cell = np.arange(n, dtype=np.int64)
    for level, (size, view) in enumerate(zip(shape, _level_views(region, shape), strict=True)):
        own = orders[level].reshape(view.shape[:-1])
        cell = cell[..., None] * size + own
        ids = own.astype(region.dtype)
        ids += region.dtype.type(scheme.level_offset(level))
        view[..., 0] = ids
    view[..., 1] = value_ids.take(cell)


def inquiry_key_mask(shape: Shape) -> np.ndarray:
    """The loss mask ``[L]`` int8: 1 on the keys of the inquiry part (next token = an answer)."""
    width = part_length(shape)
    mask = np.zeros(2 + 2 * width, np.int8)
    key_positions = _level_views(np.arange(width)[None], shape)[-1][..., 0]
    mask[2 + width + key_positions.ravel()] = 1
    return mask


def reference_layout(shape: Shape, table: np.ndarray, info_orders: list, inquiry_orders: list, scheme) -> list[int]:
    """One sample built with plain nested loops (the slow obvious version of :func:`layout`).

    ``table`` has ``cells`` values in row-major order; ``*_orders[level]`` is the list of orders of
    that level's nodes, in the order the part visits them."""
    tokens = [BOS]
    for orders in (info_orders, inquiry_orders):
        cursors = [0] * len(shape)

        def visit(level: int, prefix: int, orders=orders, cursors=cursors) -> None:
            order = orders[level][cursors[level]]
            cursors[level] += 1
            for item in order:
                tokens.append(scheme.level_offset(level) + int(item))
                cell = prefix * shape[level] + int(item)
                if level == len(shape) - 1:
                    tokens.append(FIRST_VALUE_ID + int(table[cell]))
                else:
                    visit(level + 1, cell)

        visit(0, 0)
        if orders is info_orders:
            tokens.append(SEP)
    return tokens
