"""Reading a built corpus: memory-mapped shards, whole documents, and packed training windows.

Training samples windows of ``seq_len`` tokens that lie inside one document (documents shorter than a
window are never used), uniformly over all such windows of the split, from an RNG seeded by
(seed, step, rank): a resumed run at step s draws exactly the batch it would have drawn. For
next-token training ask for ``context + 1`` tokens and shift.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from hax_ssm.errors import HaxError, require
from hax_ssm.lm.corpus.build import FORMAT, SPLITS


class CorpusSplit:
    """One split of a corpus: ``len()`` documents, ``document(i)`` as a read-only uint16 view."""

    def __init__(self, root: Path, name: str, info: dict):
        self.root, self.name, self.info = root, name, info
        index = np.load(root / f"{name}.index.npy")
        self.shard_ids, self.offsets, self.lengths = index[:, 0], index[:, 1], index[:, 2]
        self._shards: list[np.ndarray | None] = [None] * len(info["shards"])
        self._windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_tokens(self) -> int:
        return int(self.lengths.sum())

    @cached_property
    def metadata(self) -> list[dict]:
        """{"source", "title"} of every document, in index order."""
        return [json.loads(line) for line in (self.root / f"{self.name}.docs.jsonl").read_text().splitlines()]

    def _shard(self, k: int) -> np.ndarray:
        if self._shards[k] is None:
            self._shards[k] = np.memmap(self.root / self.info["shards"][k]["file"], dtype="<u2", mode="r")
        return self._shards[k]

    def document(self, i: int) -> np.ndarray:
        require(0 <= i < len(self), f"document {i}: split {self.name!r} has {len(self)} documents")
        start = int(self.offsets[i])
        return self._shard(int(self.shard_ids[i]))[start : start + int(self.lengths[i])]

    def documents(self, min_tokens: int = 0, sources: set[str] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """(index, tokens) of the documents with at least ``min_tokens`` tokens (from ``sources`` if given)."""
        for i in np.flatnonzero(self.lengths >= min_tokens):
            if sources is None or self.metadata[i]["source"] in sources:
                yield int(i), self.document(int(i))

    def _window_table(self, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Documents long enough for a window and the cumulative count of windows they hold."""
        if seq_len not in self._windows:
            require(seq_len >= 1, f"window length {seq_len}: must be at least 1")
            eligible = np.flatnonzero(self.lengths >= seq_len)
            if len(eligible) == 0:
                longest = int(self.lengths.max()) if len(self) else 0
                raise HaxError(
                    f"context of {seq_len} tokens is longer than every document of split "
                    f"{self.name!r} (longest: {longest} tokens)"
                )
            self._windows[seq_len] = eligible, np.cumsum(self.lengths[eligible] - seq_len + 1)
        return self._windows[seq_len]

    def sample_windows(self, seq_len: int, batch_size: int, *, seed: int, step: int, rank: int = 0) -> np.ndarray:
        """int64 [batch_size, seq_len]: windows drawn uniformly over every in-document window of the split."""
        eligible, cumulative = self._window_table(seq_len)
        rng = np.random.default_rng([seed, step, rank])
        picks = rng.integers(0, int(cumulative[-1]), size=batch_size)
        which = np.searchsorted(cumulative, picks, side="right")
        starts = picks - np.concatenate([[0], cumulative[:-1]])[which]
        out = np.empty((batch_size, seq_len), dtype=np.int64)
        for row, (doc, start) in enumerate(zip(eligible[which], starts, strict=False)):
            out[row] = self.document(int(doc))[start : start + seq_len]
        return out


class TokenCorpus:
    """A corpus directory written by ``hax corpus build``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        require(manifest.is_file(), f"{self.root} is not a corpus directory (no manifest.json)")
        self.manifest = json.loads(manifest.read_text())
        require(
            self.manifest.get("format") == FORMAT,
            f"{manifest}: format {self.manifest.get('format')!r}, this version reads {FORMAT!r}",
        )
        self._splits: dict[str, CorpusSplit] = {}

    @property
    def eot_id(self) -> int:
        return int(self.manifest["tokenizer"]["eot_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    def split(self, name: str) -> CorpusSplit:
        require(name in SPLITS, f"split {name!r}: allowed are {', '.join(SPLITS)}")
        if name not in self._splits:
            self._splits[name] = CorpusSplit(self.root, name, self.manifest["splits"][name])
        return self._splits[name]
