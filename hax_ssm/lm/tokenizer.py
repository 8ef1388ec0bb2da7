"""GPT-2 byte-level BPE from a local ranks file, offline.

``tiktoken.get_encoding("gpt2")`` downloads its ranks from a site we cannot reach. The same ranks
(sha256 below, identical to tiktoken's r50k_base file) ship inside the ``openai-whisper`` source
package on PyPI, so :func:`gpt2_ranks_path` fetches that one package with ``pip download --no-deps``
into a cache and keeps only the ranks file. openai-whisper itself is never installed (it would pull
numba and triton). Any file in tiktoken's format (``base64-token rank`` per line) also works, e.g.
the tiny one in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from functools import cached_property
from pathlib import Path

from hax_ssm.errors import HaxError, require
from hax_ssm.utils.io import atomic_write_bytes

# The regex of the original GPT-2 release, in tiktoken's faster equivalent form.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_EOT = "<|endoftext|>"
WHISPER_PACKAGE = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"


def default_cache_dir() -> Path:
    """Where fetched packages and the tokenizer file live: $HAX_CACHE or ~/.cache/hax-ssm."""
    return Path(os.environ.get("HAX_CACHE") or Path.home() / ".cache" / "hax-ssm")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gpt2_ranks_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The GPT-2 ranks file, fetched once from the openai-whisper sdist on PyPI and checked by hash."""
    target = Path(cache_dir or default_cache_dir()) / "tokenizers" / "gpt2.tiktoken"
    if target.is_file() and sha256_file(target) == GPT2_RANKS_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHISPER_PACKAGE]
        run = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if run.returncode != 0 or not archives:
            last = (run.stderr.strip().splitlines() or ["no archive downloaded"])[-1]
            raise HaxError(f"cannot fetch the GPT-2 tokenizer ({' '.join(cmd[2:])}): {last}")
        with tarfile.open(archives[0]) as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith(WHISPER_MEMBER)), None)
            require(member is not None, f"{archives[0].name} has no {WHISPER_MEMBER}")
            data = tar.extractfile(member).read()
    digest = hashlib.sha256(data).hexdigest()
    require(digest == GPT2_RANKS_SHA256, f"GPT-2 ranks file has sha256 {digest}, expected {GPT2_RANKS_SHA256}")
    atomic_write_bytes(target, data)
    return target


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken ranks file: one ``base64(token) rank`` pair per line."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as err:
            raise HaxError(f"{path}:{lineno}: not a tiktoken ranks line ({err})") from None
    require(len(ranks) >= 256, f"{path}: {len(ranks)} ranks, a byte-level BPE needs at least the 256 bytes")
    return ranks


class Tokenizer:
    """Byte-level BPE over a ranks file, with the GPT-2 split regex and ``<|endoftext|>`` after the ranks."""

    def __init__(self, ranks_path: str | os.PathLike, name: str | None = None):
        try:
            import tiktoken
        except ImportError:
            raise HaxError("the lm tools need tiktoken: pip install 'hax-ssm[lm]'") from None
        self.path = Path(ranks_path)
        require(self.path.is_file(), f"tokenizer file {self.path} does not exist")
        ranks = read_ranks(self.path)
        self.name = name or self.path.stem
        self.eot_id = max(ranks.values()) + 1
        self._enc = tiktoken.Encoding(
            self.name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={GPT2_EOT: self.eot_id}
        )

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text; ``<|endoftext|>`` inside text is encoded as ordinary characters."""
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {
            "name": self.name,
            "file": self.path.name,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
        }


def load_tokenizer(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer in ``path``, or GPT-2 (fetched into the cache on first use) when ``path`` is None."""
    if path is None:
        return Tokenizer(gpt2_ranks_path(cache_dir), name="gpt2")
    return Tokenizer(path)


def corpus_tokenizer(
    corpus_dir: str | os.PathLike, path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> Tokenizer:
    """The tokenizer a corpus was built with: the file given, or GPT-2 (from the cache) for a GPT-2 corpus."""
    from hax_ssm.lm.corpus.reader import TokenCorpus

    tokenizer = TokenCorpus(corpus_dir).manifest["tokenizer"]
    require(
        path is not None or tokenizer["name"] == "gpt2",
        f"{corpus_dir} uses tokenizer {tokenizer['name']!r}: pass its file with --tokenizer",
    )
    loaded = load_tokenizer(path, cache_dir)
    require(
        loaded.sha256 == tokenizer["sha256"],
        f"tokenizer {loaded.path} is not the one {corpus_dir} was built with ({tokenizer['name']})",
    )
    return loaded
