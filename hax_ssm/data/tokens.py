"""Token ids and sequence layout of the (multi-level) joint recall family.

Ids are those of the reference joint-recall dataset (PAPER.md section 1), generalised to W levels
``C_1 x ... x C_{W-1} x K -> V`` whose last level holds the keys:

====================  ============================================  ==========================
token                 id                                            W=2 (the reference)
====================  ============================================  ==========================
BOS / EOS / PAD / SEP 1 / 2 (unused) / 3 / 4                        same
value v               10 + v                 (v < n_values)         10..25
level W item j (key)  10 + n_values + j      (j < max size of W)    key j: 26 + j
level l item i        10 + n_values + (max sizes of levels l+1..W)  context i: 42 + i
                      + i
====================  ============================================  ==========================

So keys come right after the values and every outer level sits above the one inside it; W=2 is the
reference layout byte for byte and W=1 is multi-query associative recall. Ids 0 and 5..9 are unused.

Layout of one sample with level sizes ``(n_1, ..., n_W)``: BOS, the information part, SEP, the
inquiry part, then PAD up to the fixed length. A part lists every level-1 item in a random order;
each item opens with its own token and then lists its level-2 items in a random order, and so on;
at the last level each key is followed by its value. The inquiry part repeats the whole table with
every level re-permuted. With block size ``s_W = 2`` and ``s_l = 1 + n_{l+1} s_{l+1}`` a part has
``n_1 s_1`` tokens and a sample ``2 + 2 n_1 s_1``; for W=2 that is ``2 + 2 n_c (1 + 2 n_k)``.
The loss mask is 1 on the inquiry keys: the positions whose next token is an answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hax_ssm.errors import require

BOS, EOS, PAD, SEP = 1, 2, 3, 4
FIRST_VALUE_ID = 10


def block_sizes(sizes: Sequence[int]) -> list[int]:
    """Tokens in one block of each level: ``s_W = 2`` (key, value), ``s_l = 1 + n_{l+1} s_{l+1}``."""
    blocks = [2]
    for n in reversed(sizes[1:]):
        blocks.append(1 + n * blocks[-1])
    return blocks[::-1]


def part_length(sizes: Sequence[int]) -> int:
    """Tokens in the information part (and in the inquiry part) of a table of these sizes."""
    return sizes[0] * block_sizes(sizes)[0]


def sequence_length(sizes: Sequence[int]) -> int:
    """Real (unpadded) length of a sample: BOS + information + SEP + inquiry."""
    return 2 + 2 * part_length(sizes)


@dataclass(frozen=True)
class JointRecallScheme:
    """Where each level's ids live, for tables with up to ``max_sizes`` items per level."""

    n_values: int = 16
    max_sizes: tuple[int, ...] = (16, 16)
    vocab_size: int = 100

    @property
    def levels(self) -> int:
        return len(self.max_sizes)

    @property
    def key_level(self) -> int:
        return self.levels - 1

    def level_offset(self, level: int) -> int:
        """Id of item 0 of ``level`` (0-based, outermost first; the last level holds the keys)."""
        return FIRST_VALUE_ID + self.n_values + sum(self.max_sizes[level + 1 :])

    @property
    def ids_needed(self) -> int:
        """Smallest vocabulary that holds every id: one past the top id of the outermost level."""
        return FIRST_VALUE_ID + self.n_values + sum(self.max_sizes)

    @property
    def fixed_length(self) -> int:
        """Length every sample is padded to: the length of the largest table."""
        return sequence_length(self.max_sizes)

    def check_vocab(self, size_flags: Sequence[str]) -> None:
        """One-line error naming the sizes to change when the ids overflow ``vocab_size``."""
        require(
            self.ids_needed <= self.vocab_size,
            f"--vocab-size {self.vocab_size}: the token ids need {self.ids_needed} "
            f"(10 + {self.n_values} values + {' + '.join(map(str, self.max_sizes))} level items); "
            f"raise --vocab-size to at least {self.ids_needed} or lower {', '.join(size_flags)}",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "bos": BOS,
            "eos": EOS,
            "pad": PAD,
            "sep": SEP,
            "first_value_id": FIRST_VALUE_ID,
            "n_values": self.n_values,
            "max_sizes": list(self.max_sizes),
            "level_offsets": [self.level_offset(level) for level in range(self.levels)],
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> JointRecallScheme:
        return cls(obj["n_values"], tuple(obj["max_sizes"]), obj["vocab_size"])


REFERENCE_SCHEME = JointRecallScheme()


def table_sizes(tokens: Any, scheme: JointRecallScheme = REFERENCE_SCHEME) -> Any:
    """Recover each row's table sizes ``[B, W]`` from raw token rows ``[B, T]`` (numpy or torch).

    Each part holds ``n_1 ... n_l`` tokens of level l, so counting a level's ids over the whole row
    (both parts) gives ``2 n_1 ... n_l``. Padding and trailing rows of other lengths do not matter.
    """
    counts = [
        ((tokens >= lo) & (tokens < lo + n)).sum(1)
        for lo, n in ((scheme.level_offset(level), scheme.max_sizes[level]) for level in range(scheme.levels))
    ]
    sizes = [counts[0] // 2] + [c // p.clip(min=1) for c, p in zip(counts[1:], counts[:-1], strict=True)]
    stack = np.stack if isinstance(tokens, np.ndarray) else __import__("torch").stack
    return stack(sizes, 1)


def count_distinct_samples(sizes: Sequence[int], n_values: int) -> int:
    """Exact number of distinct samples of one table shape (a Python int: it gets huge).

    ``n_values ** cells`` tables times the orderings of the information part times those of the
    inquiry part; a part orders the children of every node independently, so it has
    ``prod_l (n_l!) ** (n_1 ... n_{l-1})`` orderings. Ids are distinct per level, so different
    (table, orderings) give different token sequences.
    """
    orderings, parents = 1, 1
    for n in sizes:
        orderings *= math.factorial(n) ** parents
        parents *= n
    return n_values**parents * orderings**2
