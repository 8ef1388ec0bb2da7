"""Fixtures of the lm tests (helpers live in tests/lm/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lm.helpers import build_options, build_source_trees, write_tiny_ranks


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from hax_ssm.lm.tokenizer import Tokenizer

    return Tokenizer(write_tiny_ranks(tmp_path_factory.mktemp("tok") / "tiny.tiktoken"))


@pytest.fixture(scope="session")
def source_trees(tmp_path_factory) -> dict[str, Path]:
    return build_source_trees(tmp_path_factory.mktemp("trees"))


@pytest.fixture(scope="session")
def built_corpus(tmp_path_factory, tiny_tokenizer, source_trees) -> Path:
    from hax_ssm.lm.corpus.build import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "corpus"
    build_corpus(build_options(out, tiny_tokenizer, source_trees))
    return out
