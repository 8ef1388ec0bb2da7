"""On-disk format: a Hugging Face ``DatasetDict`` directory, written and read with pyarrow only.

``DIR/dataset_dict.json`` lists the splits; each ``DIR/<split>/`` holds Arrow IPC stream files
(``data-*.arrow``, columns ``inputs`` list<int32> and ``mask`` list<int8>), ``state.json`` and
``dataset_info.json``: the files ``datasets.save_to_disk`` writes, so
``datasets.load_from_disk(DIR)`` loads it. ``DIR/hax_data.json`` adds what we know about the
data (task, parameters, id scheme, counts and a content hash per split). Reading needs neither
``datasets`` nor the metadata file, so the reference's published dataset reads the same way.

Writing streams: generated rows go to a writer thread (Arrow, through :class:`DirectFile`, which
bypasses the page cache) and a hasher thread, in order, so memory stays bounded and the disk, the
hash and the generator work at the same time.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from hax_ssm.errors import HaxError, require
from hax_ssm.utils.io import atomic_write_json

SPLITS = ("train", "validation", "test")
METADATA_FILE = "hax_data.json"
DATA_FILE = "data-00000-of-00001.arrow"
# the "Sequence" spelling is read by datasets 3.x (the reference's) and by later versions alike
FEATURES = {
    "inputs": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "Sequence"},
    "mask": {"feature": {"dtype": "int8", "_type": "Value"}, "_type": "Sequence"},
}
SCHEMA = pa.schema(
    [pa.field("inputs", pa.list_(pa.int32())), pa.field("mask", pa.list_(pa.int8()))],
    metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})},
)
# Record batches of about a million tokens, expanded into a small pool of reused buffers.
_BATCH_ELEMENTS = 1 << 20
_POOLED_BUFFERS = 12  # batch buffers in flight between the writer and the hasher


class ContentHash:
    """sha256 of a split's content, independent of how the rows are cut into files and batches:
    sha256 over the digests of (all inputs as int32 LE, all masks as int8, row lengths as int64 LE)."""

    def __init__(self) -> None:
        self._parts = [hashlib.sha256() for _ in range(3)]

    def update(self, inputs: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> None:
        for part, array in zip(
            self._parts, (inputs.astype("<i4", copy=False), mask, lengths.astype("<i8")), strict=True
        ):
            part.update(memoryview(np.ascontiguousarray(array)).cast("B"))

    def hexdigest(self) -> str:
        return hashlib.sha256(b"".join(p.digest() for p in self._parts)).hexdigest()


class _Stage:
    """One background thread applying ``fn`` to queued items in order; errors surface on put/close."""

    def __init__(self, fn: Callable[[Any], None], name: str, depth: int = 8) -> None:
        self._fn, self._queue, self._error = fn, queue.Queue(maxsize=depth), None
        self._aborted = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None and not self._aborted.is_set():
                try:
                    self._fn(item)
                except BaseException as err:  # re-raised in the producer's thread
                    self._error = err

    def put(self, item: Any) -> None:
        while True:
            self._raise()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise()

    def abort(self) -> None:
        self._aborted.set()
        self._queue.put(None)  # the thread drains the rest without work
        self._thread.join(timeout=60)


@dataclass
class _SplitFile:
    path: Path
    sink: pa.PythonFile
    writer: pa.ipc.RecordBatchStreamWriter
    hash: ContentHash = field(default_factory=ContentHash)
    rows: int = 0


class DatasetWriter:
    """Streams rows of every split into a dataset directory; use as a context manager.

    ``add(split, tokens, mask)`` takes rows of one length (tokens ``[n, L]`` of any integer type,
    mask ``[L]`` shared by all rows or ``[n, L]``); rows are padded with ``pad_id`` to ``row_width``
    (None: no padding). ``finish()`` closes and fsyncs the files, writes the JSON side files and
    returns per split ``{"rows", "sha256", "arrow_bytes"}``.
    """

    def __init__(self, root: Path, pad_id: int, row_width: int | None, splits: tuple[str, ...] = SPLITS):
        self.root, self.pad_id, self.row_width = Path(root), pad_id, row_width
        self._files: dict[str, _SplitFile] = {}
        for split in splits:
            (self.root / split).mkdir(parents=True)
            path = self.root / split / DATA_FILE
            sink = pa.PythonFile(DirectFile(path), mode="w")
            self._files[split] = _SplitFile(path, sink, pa.ipc.new_stream(sink, SCHEMA))
        self._free: queue.Queue = queue.Queue()
        for _ in range(_POOLED_BUFFERS):
            self._free.put(None)  # allocated on first use
        self._hasher = _Stage(self._hash, "hax-data-hash")
        self._writer = _Stage(self._write, "hax-data-write")

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._writer.abort()
            self._hasher.abort()
            for f in self._files.values():
                f.sink.close()

    def add(self, split: str, tokens: np.ndarray, mask: np.ndarray) -> None:
        rows_per_batch = max(1, _BATCH_ELEMENTS // max(1, self.row_width or tokens.shape[1]))
        for start in range(0, len(tokens), rows_per_batch):
            end = start + rows_per_batch
            self._writer.put((split, tokens[start:end], mask if mask.ndim == 1 else mask[start:end]))

    def _buffers(self, n: int, width: int) -> tuple[np.ndarray, np.ndarray, Any]:
        """``[n, width]`` int32 and int8 arrays from the pool (the hasher hands them back): reusing
        them spares the kernel zeroing fresh pages, which cost more than the copying itself."""
        if n * width > _BATCH_ELEMENTS:  # a single row longer than a batch: not pooled
            return np.empty((n, width), np.int32), np.empty((n, width), np.int8), None
        while True:
            try:
                pooled = self._free.get(timeout=0.1)
                break
            except queue.Empty:
                if self._writer.aborted:
                    raise RuntimeError("writer aborted") from None
        if pooled is None:
            pooled = (np.empty(_BATCH_ELEMENTS, np.int32), np.empty(_BATCH_ELEMENTS, np.int8))
        inputs, masks = (b[: n * width].reshape(n, width) for b in pooled)
        return inputs, masks, pooled

    def _write(self, item: tuple[str, np.ndarray, np.ndarray]) -> None:
        split, tokens, mask = item
        n, length = tokens.shape
        width = self.row_width or length
        inputs, masks, pooled = self._buffers(n, width)
        inputs[:, :length] = tokens
        inputs[:, length:] = self.pad_id
        masks[:, :length] = mask
        masks[:, length:] = 0
        offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
        batch = pa.RecordBatch.from_arrays(
            [_list_array(offsets, inputs.reshape(-1), pa.int32()), _list_array(offsets, masks.reshape(-1), pa.int8())],
            schema=SCHEMA,
        )
        f = self._files[split]
        f.writer.write_batch(batch)
        f.rows += n
        self._hasher.put((f.hash, inputs, masks, np.full(n, width, np.int64), pooled))

    def _hash(self, item: tuple[ContentHash, np.ndarray, np.ndarray, np.ndarray, Any]) -> None:
        content_hash, inputs, masks, lengths, pooled = item
        content_hash.update(inputs, masks, lengths)
        if pooled is not None:
            self._free.put(pooled)

    def finish(self) -> dict[str, dict[str, Any]]:
        self._writer.close()
        self._hasher.close()
        infos = {}
        for split, f in self._files.items():
            f.writer.close()
            f.sink.close()  # writes the tail and fsyncs
            digest = f.hash.hexdigest()
            _write_split_json(self.root / split, digest)
            infos[split] = {"rows": f.rows, "sha256": digest, "arrow_bytes": f.path.stat().st_size}
        atomic_write_json(self.root / "dataset_dict.json", {"splits": list(self._files)})
        return infos


def _list_array(offsets: np.ndarray, values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """A list array over numpy buffers without copying them."""
    child = pa.Array.from_buffers(value_type, len(values), [None, pa.py_buffer(values)])
    return pa.Array.from_buffers(
        pa.list_(value_type), len(offsets) - 1, [None, pa.py_buffer(offsets)], children=[child]
    )


class DirectFile:
    """A write-only file that bypasses the page cache (``O_DIRECT``) where the system allows it.

    Bytes are staged in a page-aligned buffer and written in whole 32 MiB chunks; ``close`` writes
    the padded tail, truncates to the true size and fsyncs. Going around the page cache saves the
    kernel's copy (a CPU-second per ~1-2 GB here) and leaves the cache to the other users of the
    machine. Where ``O_DIRECT`` is missing or refused (tmpfs, macOS) it is an ordinary file.
    """

    CHUNK = 32 << 20
    ALIGN = 4096

    def __init__(self, path: str | os.PathLike):
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        self._direct = hasattr(os, "O_DIRECT")
        try:
            self._fd = os.open(path, flags | (os.O_DIRECT if self._direct else 0), 0o644)
        except OSError:
            self._direct = False
            self._fd = os.open(path, flags, 0o644)
        self._buffer = mmap.mmap(-1, self.CHUNK)  # anonymous maps are page-aligned
        self._fill = self._size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            take = min(len(view), self.CHUNK - self._fill)
            self._buffer[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self.CHUNK:
                self._write_out(self.CHUNK)
        self._size += size
        return size

    def _write_out(self, length: int) -> None:
        try:
            written = os.write(self._fd, memoryview(self._buffer)[:length])
        except OSError as err:
            if not self._direct or err.errno != errno.EINVAL:
                raise
            # the filesystem refuses O_DIRECT after all: carry on through the page cache
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self._direct = False
            written = os.write(self._fd, memoryview(self._buffer)[:length])
        if written != length:
            raise OSError(f"short write: {written} of {length} bytes")
        self._fill = 0

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self._fill:
                tail = self._fill
                self._write_out(-(-tail // self.ALIGN) * self.ALIGN if self._direct else tail)
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._buffer.close()
            self.closed = True


def _write_split_json(split_dir: Path, digest: str) -> None:
    """The two small files ``datasets.load_from_disk`` expects next to the Arrow data."""
    atomic_write_json(
        split_dir / "state.json",
        {
            "_data_files": [{"filename": DATA_FILE}],
            "_fingerprint": digest[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        },
    )
    atomic_write_json(
        split_dir / "dataset_info.json",
        {"citation": "", "description": "", "features": FEATURES, "homepage": "", "license": ""},
    )


# ---------------------------------------------------------------------------------------------
# reading


@dataclass
class StoredSplit:
    """One split, memory-mapped: row ``i`` is ``inputs[file_of_row[i]][input_start[i] : + row_length[i]]``
    (and likewise for ``mask``). Nothing is read until rows are gathered."""

    path: Path
    metadata: dict[str, Any] | None
    inputs: list[np.ndarray]  # per data file, an int32 view of the whole file
    masks: list[np.ndarray]  # per data file, an int8 view of the whole file
    file_of_row: np.ndarray
    input_start: np.ndarray
    mask_start: np.ndarray
    row_length: np.ndarray

    def __len__(self) -> int:
        return len(self.row_length)

    def gather(self, rows: np.ndarray, width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows as ``inputs`` int32 ``[b, width]`` and ``mask`` int8 ``[b, width]``: cut at ``width``,
        padded with ``pad_id`` / 0 beyond their stored length. No Python loop over rows."""
        return self._gather(self.inputs, self.input_start, rows, width, pad_id), self.gather_mask(rows, width)

    def gather_mask(self, rows: np.ndarray, width: int) -> np.ndarray:
        return self._gather(self.masks, self.mask_start, rows, width, 0)

    def _gather(
        self, views: list[np.ndarray], starts: np.ndarray, rows: np.ndarray, width: int, fill: int
    ) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        cols = np.arange(width, dtype=np.int64)
        out = np.full((len(rows), width), fill, views[0].dtype)
        files = self.file_of_row[rows]
        for f in np.unique(files):  # a loop over data files, not rows
            sel = np.flatnonzero(files == f)
            inside = cols < self.row_length[rows[sel], None]
            out[sel] = np.where(inside, views[f].take(np.where(inside, starts[rows[sel], None] + cols, 0)), fill)
        return out

    def _runs(self) -> Iterator[tuple[int, int, int]]:
        """(file, first row, end row) of each run of rows stored back to back (a record batch or more)."""
        ends = self.input_start + self.row_length
        breaks = np.flatnonzero(
            (self.file_of_row[1:] != self.file_of_row[:-1])
            | (self.input_start[1:] != ends[:-1])
            | (self.mask_start[1:] != self.mask_start[:-1] + self.row_length[:-1])
        )
        bounds = [0, *(breaks + 1).tolist(), len(self)]
        for a, b in itertools.pairwise(bounds):
            if a < b:
                yield int(self.file_of_row[a]), a, b

    def _mask_run(self, f: int, a: int, b: int) -> np.ndarray:
        return self.masks[f][self.mask_start[a] : self.mask_start[b - 1] + self.row_length[b - 1]]

    def content_hash(self) -> str:
        """The :class:`ContentHash` of the stored rows (compare with the metadata's ``sha256``)."""
        digest = ContentHash()
        for f, a, b in self._runs():
            inputs = self.inputs[f][self.input_start[a] : self.input_start[b - 1] + self.row_length[b - 1]]
            digest.update(inputs, self._mask_run(f, a, b), self.row_length[a:b])
        return digest.hexdigest()

    def useful_lengths(self) -> np.ndarray:
        """Per row, the last position with mask 1, + 2 (the stored length where the mask is all 0).

        One pass over the mask column, run by run: the positions of the ones, then a binary search
        of each row's end among them (``hax_ssm.data.loader.useful_lengths`` is the plain version)."""
        out = np.empty(len(self), np.int64)
        for f, a, b in self._runs():
            ones = np.flatnonzero(self._mask_run(f, a, b))
            starts = self.mask_start[a:b] - self.mask_start[a]
            last = np.searchsorted(ones, starts + self.row_length[a:b]) - 1  # last one before each row's end
            pos = ones[np.maximum(last, 0)] if len(ones) else np.zeros_like(last)
            has = (last >= 0) & (pos >= starts)
            out[a:b] = np.where(has, np.minimum(pos - starts + 2, self.row_length[a:b]), self.row_length[a:b])
        return out


def read_metadata(root: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(root) / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else None


def open_split(root: str | os.PathLike, split: str) -> StoredSplit:
    """Memory-map one split of a dataset directory (ours or any ``save_to_disk`` output with
    columns ``inputs`` and ``mask``)."""
    root = Path(root)
    require(root.is_dir(), f"dataset directory {root} does not exist")
    split_dir = root / split
    if not split_dir.is_dir():
        known = sorted(p.name for p in root.iterdir() if (p / "state.json").exists() or any(p.glob("*.arrow")))
        raise HaxError(f"split {split!r} not found in {root}: it has {known or 'no splits'}")
    state = split_dir / "state.json"
    if state.exists():
        names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    else:
        names = sorted(p.name for p in split_dir.glob("*.arrow"))
    require(bool(names), f"no Arrow files in {split_dir}")
    inputs, masks, file_of_row, input_start, mask_start, row_length = [], [], [], [], [], []
    for index, name in enumerate(names):
        whole = pa.memory_map(str(split_dir / name), "r").read_buffer()
        base = whole.address
        inputs.append(np.frombuffer(whole, np.int32, count=whole.size // 4))
        masks.append(np.frombuffer(whole, np.int8))
        for batch in pa.ipc.open_stream(whole):
            for column in ("inputs", "mask"):
                require(column in batch.schema.names, f"{split_dir / name} has no column {column!r}")
            (in_start, in_len), (m_start, m_len) = (
                _row_extents(batch, column, itemsize, base, split_dir / name)
                for column, itemsize in (("inputs", 4), ("mask", 1))
            )
            require(np.array_equal(in_len, m_len), f"{split_dir / name}: rows of inputs and mask differ in length")
            input_start.append(in_start)
            mask_start.append(m_start)
            row_length.append(in_len)
            file_of_row.append(np.full(len(in_len), index, np.int32))
    return StoredSplit(
        split_dir,
        read_metadata(root),
        inputs,
        masks,
        np.concatenate([np.empty(0, np.int32), *file_of_row]),
        *(np.concatenate([np.empty(0, np.int64), *column]) for column in (input_start, mask_start, row_length)),
    )


def _row_extents(
    batch: pa.RecordBatch, column: str, itemsize: int, base: int, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Start (in elements of the file's view) and length of every row of one list column."""
    require(column in batch.schema.names, f"{path} has no column {column!r}")
    array = batch.column(column)
    require(array.null_count == 0, f"{path}: null rows in column {column!r}")
    offsets = np.frombuffer(array.buffers()[1], np.int32)[array.offset : array.offset + len(array) + 1]
    values = array.values
    byte_start = values.buffers()[1].address - base + values.offset * itemsize
    require(byte_start % itemsize == 0, f"{path}: misaligned {column!r} buffer")
    return byte_start // itemsize + offsets[:-1].astype(np.int64), np.diff(offsets).astype(np.int64)
