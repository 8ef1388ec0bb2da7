"""Batches for training and evaluation, gathered straight from the memory-mapped Arrow columns.

* A batch is cut to its longest *useful* row: everything up to the last answer. A row's useful
  length is the last position of its mask + 2 (the scored key, then its answer); for joint
  recall that is exactly the unpadded length ``2 + 2 n_c (1 + 2 n_k)``. A causal model's outputs
  at scored positions never depend on later tokens, so nothing is lost.
* The order is a pure function of ``(seed, step)``: epoch e is a permutation drawn from
  ``(seed, e)``, so a run resumed at step s sees exactly the batches it would have seen.
* Data parallel: every step has one global batch of ``batch_size * world_size`` rows; rank r
  takes the r-th slice, so the ranks partition it.
* Length bucketing (optional): within windows of ``bucket_window`` global batches of the
  shuffled order rows are sorted by length before cutting batches, then the batches are shuffled.

Works on the reference's published dataset too: nothing here needs our metadata file (without it
the reference's token ids are assumed for recovering table sizes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import numpy as np
import torch

from hax_ssm.data.batch import Batch
from hax_ssm.data.storage import StoredSplit, open_split
from hax_ssm.data.tokens import PAD, REFERENCE_SCHEME, JointRecallScheme, table_sizes
from hax_ssm.errors import require


class RecallSplit:
    """One stored split plus what its rows mean (task, pad id, how to read table sizes)."""

    def __init__(self, stored: StoredSplit):
        self.stored = stored
        meta = stored.metadata or {}
        self.task: str = meta.get("task", "joint_recall")
        self.pad_id: int = meta.get("pad_id", PAD)
        self.scheme = JointRecallScheme.from_json(meta["scheme"]) if "scheme" in meta else REFERENCE_SCHEME
        self.size_names: tuple[str, ...] = tuple(meta.get("size_names", ("n_c", "n_k")))

    def __len__(self) -> int:
        return len(self.stored)

    @cached_property
    def useful_lengths(self) -> np.ndarray:
        """Useful length of every row (int64 [N]): one pass over the mask column, on first use."""
        return self.stored.useful_lengths()

    def arrays(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Rows cut to their longest useful length, as numpy arrays (see :class:`Batch`)."""
        rows = np.asarray(rows, np.int64)
        stored_len = self.stored.row_length[rows]
        width = int(stored_len.max()) if len(rows) else 0
        inputs, mask = self.stored.gather(rows, width, self.pad_id)
        lengths = useful_lengths(mask, stored_len)
        width = int(lengths.max()) if len(rows) else 0
        inputs, mask = inputs[:, :width], mask[:, :width]
        if self.task == "mqar":
            sizes = np.stack([stored_len, mask.sum(1, dtype=np.int64)], 1)
        else:
            sizes = table_sizes(inputs, self.scheme).astype(np.int64)
        return {
            "input_ids": inputs,
            "loss_mask": mask.astype(bool),
            "attention_mask": np.arange(width) < lengths[:, None],
            "sizes": sizes,
            "rows": rows,
        }


def useful_lengths(mask: np.ndarray, stored_length: np.ndarray) -> np.ndarray:
    """Last masked position + 2 per row of ``mask`` ``[B, T]`` (the stored length for a row with
    an empty mask), capped at the stored length."""
    scored = mask != 0
    last = mask.shape[1] - 1 - np.argmax(scored[:, ::-1], axis=1)
    return np.where(scored.any(1), np.minimum(last + 2, stored_length), stored_length).astype(np.int64)


def load_split(root: str | os.PathLike, split: str) -> RecallSplit:
    """Memory-map ``split`` of a dataset directory (ours, or the reference's ``save_to_disk`` output)."""
    return RecallSplit(open_split(root, split))


class RecallLoader:
    """Deterministic, resumable, shardable batches of one split.

    ``shuffle=True`` (training): an endless stream over epochs starting at ``start_step``;
    ``drop_last`` defaults to True so every step has a full global batch. ``shuffle=False``
    (evaluation): one pass in stored order (sorted by length with ``bucket_by_length``), the last
    batch possibly smaller; a rank whose share of that last batch is empty gets no batch.
    ``batch_at(step)`` returns the batch of any step directly.
    """

    def __init__(
        self,
        dir_or_split: str | os.PathLike | RecallSplit,
        split: str = "train",
        batch_size: int = 64,
        seed: int = 0,
        start_step: int = 0,
        bucket_by_length: bool = False,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool | None = None,
        bucket_window: int = 64,
    ):
        require(batch_size >= 1, f"batch_size {batch_size}: must be at least 1")
        require(world_size >= 1, f"world_size {world_size}: must be at least 1")
        require(0 <= rank < world_size, f"rank {rank}: must be in [0, {world_size})")
        require(start_step >= 0, f"start_step {start_step}: must be >= 0")
        require(bucket_window >= 1, f"bucket_window {bucket_window}: must be at least 1")
        self.data = dir_or_split if isinstance(dir_or_split, RecallSplit) else load_split(dir_or_split, split)
        self.batch_size, self.seed, self.start_step = batch_size, seed, start_step
        self.bucket_by_length, self.bucket_window = bucket_by_length, bucket_window
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.drop_last = shuffle if drop_last is None else drop_last
        self.global_batch = batch_size * world_size
        n = len(self.data)
        require(n > 0, f"split {split!r} has no rows")
        self.steps_per_epoch = n // self.global_batch if self.drop_last else -(-n // self.global_batch)
        require(
            self.steps_per_epoch > 0,
            f"split of {n} rows is smaller than one global batch of {self.global_batch}: "
            "lower batch_size or set drop_last=False",
        )
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    @property
    def size_names(self) -> tuple[str, ...]:
        return self.data.size_names

    def __len__(self) -> int:
        """Steps in one epoch."""
        return self.steps_per_epoch

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches (row indices) of one epoch."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        n, g = len(self.data), self.global_batch
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucket_by_length:
            lengths = self.data.useful_lengths
            window = g * self.bucket_window if self.shuffle else n
            for start in range(0, n, window):  # a loop over windows, not rows
                chunk = order[start : start + window]
                order[start : start + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
        used = self.steps_per_epoch * g if self.drop_last else n
        batches = [order[i : i + g] for i in range(0, used, g)]
        if self.bucket_by_length and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._epoch = (epoch, batches)
        return batches

    def rows_at(self, step: int) -> np.ndarray:
        """Row indices of this rank's batch at global ``step``."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return np.array_split(self._epoch_batches(epoch)[index], self.world_size)[self.rank]

    def batch_at(self, step: int) -> Batch:
        arrays = self.data.arrays(self.rows_at(step))
        tensors: dict[str, Any] = {k: torch.from_numpy(v) for k, v in arrays.items()}
        tensors["input_ids"] = tensors["input_ids"].long()
        return Batch(**tensors, size_names=self.size_names, step=step)

    def __iter__(self) -> Iterator[Batch]:
        step = self.start_step
        while self.shuffle or step < self.steps_per_epoch:
            if len(self.rows_at(step)):
                yield self.batch_at(step)
            step += 1
