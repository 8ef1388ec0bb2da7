import os

import pytest

from hax_ssm.errors import HaxError
from hax_ssm.lm.tokenizer import GPT2_RANKS_SHA256, Tokenizer, gpt2_ranks_path


def test_round_trip_is_exact(tiny_tokenizer):
    text = "Th\u00e9 caf\u00e9 \u2014 naïve 'quotes' and\ttabs\n\n  spaces, emoji \U0001f600, <|endoftext|> as text."
    ids = tiny_tokenizer.encode(text)
    assert tiny_tokenizer.decode(ids) == text
    assert max(ids) < tiny_tokenizer.eot_id  # the special token is never produced from plain text
    assert [tiny_tokenizer.decode(b) for b in tiny_tokenizer.encode_batch(["a b", "the end"])] == ["a b", "the end"]


def test_merges_apply(tiny_tokenizer):
    assert len(tiny_tokenizer.encode(" the")) == 1 < len(b" the")


def test_bad_ranks_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64 at all\n")
    with pytest.raises(HaxError, match=r"bad\.tiktoken:1"):
        Tokenizer(bad)
    with pytest.raises(HaxError, match="does not exist"):
        Tokenizer(tmp_path / "missing.tiktoken")


def test_gpt2_gives_the_published_ids(tmp_path_factory):
    """The real ranks file, fetched from PyPI (openai-whisper sdist) into a cache; CI reaches PyPI."""
    try:
        path = gpt2_ranks_path()
    except HaxError as err:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PyPI not reachable here: {err}")
    tok = Tokenizer(path, name="gpt2")
    assert tok.sha256 == GPT2_RANKS_SHA256
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
