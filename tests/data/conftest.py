"""Small datasets shared by the data tests (generated once per session) and an independent parser."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest

from hax_ssm.data import generate_joint_recall, generate_mqar
from hax_ssm.data.tokens import BOS, FIRST_VALUE_ID, PAD, SEP, JointRecallScheme

JR_ARGS = dict(sizes="2-4,2-3", values=4, train_per_pair=60, eval_per_pair=8, seed=3, workers=1, progress=False)
MQAR_ARGS = dict(
    seq_len=[16, 32, 32],
    pairs=[2, 4, 7],
    vocab_size=40,
    train_per_config=80,
    eval_per_config=10,
    workers=1,
    progress=False,
)


@pytest.fixture
def jr_args():
    return dict(JR_ARGS)


@pytest.fixture
def mqar_args():
    return dict(MQAR_ARGS)


@pytest.fixture(scope="session")
def jr_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("jr") / "data"
    generate_joint_recall(path, **JR_ARGS)
    return path


@pytest.fixture(scope="session")
def mqar_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mqar") / "data"
    generate_mqar(path, **MQAR_ARGS)
    return path


def parse_joint_recall(row: Sequence[int], mask: Sequence[int], scheme: JointRecallScheme):
    """Read a sample back into its table, independently of the generator.

    Returns (sizes, info table {path: value}, inquiry [(path, value, key position)], real length).
    Asserts the layout on the way: BOS, information part, SEP, inquiry part, then PAD only.
    """
    row, mask = list(map(int, row)), list(map(int, mask))
    assert row[0] == BOS and mask[0] == 0

    def level_of(token: int) -> int | None:  # None: a value
        if FIRST_VALUE_ID <= token < FIRST_VALUE_ID + scheme.n_values:
            return None
        for level in range(scheme.levels):
            lo = scheme.level_offset(level)
            if lo <= token < lo + scheme.max_sizes[level]:
                return level
        raise AssertionError(f"token {token} is no value and no level item")

    def read_part(pos: int):
        entries, path, opened = [], [], [0] * scheme.levels
        while pos < len(row) and row[pos] not in (SEP, PAD):
            level = level_of(row[pos])
            if level is None:
                assert len(path) == scheme.levels and level_of(row[pos - 1]) == scheme.key_level
                entries.append((tuple(path), row[pos] - FIRST_VALUE_ID, pos - 1))
            else:
                assert len(path) >= level, "a level opened without its parent"
                path = [*path[:level], row[pos] - scheme.level_offset(level)]
                opened[level] += 1
            pos += 1
        return entries, opened, pos

    info, info_opened, pos = read_part(1)
    assert row[pos] == SEP
    inquiry, inquiry_opened, end = read_part(pos + 1)
    assert info_opened == inquiry_opened
    sizes = [info_opened[0]] + [b // a for a, b in itertools.pairwise(info_opened)]
    table = {path: value for path, value, _ in info}
    assert len(table) == len(info) == int(np.prod(sizes)), "a cell is listed twice"
    assert set(table) == set(np.ndindex(*sizes)), "cells must be items 0..n-1 of every level"
    assert all(row[i] == PAD and mask[i] == 0 for i in range(end, len(row)))
    return tuple(sizes), table, inquiry, end


@pytest.fixture
def parse_jr():
    """The parser above, as a fixture (test modules here are not a package)."""
    return parse_joint_recall
