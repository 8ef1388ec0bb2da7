"""The trainer's side of the data engine's batches: micro-batches for accumulation, pinned copies.

The loader (``hax_ssm.data.RecallLoader``) owns reading, shuffling, sharding and trimming; its
``batch_size`` is per rank, ours is global.
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from hax_ssm.data.batch import Batch


def micro_batches(batch: Batch, n: int) -> list[Batch]:
    """``n`` equal slices of the rows, each cut to its own longest real row (host tensors)."""
    if n == 1:
        return [batch]
    out = []
    rows = len(batch.input_ids)
    for i in range(n):
        part = slice(i * rows // n, (i + 1) * rows // n)
        width = int(batch.attention_mask[part].sum(dim=1).max())
        out.append(
            replace(
                batch,
                input_ids=batch.input_ids[part, :width],
                loss_mask=batch.loss_mask[part, :width],
                attention_mask=batch.attention_mask[part, :width],
                sizes=batch.sizes[part],
                rows=batch.rows[part],
            )
        )
    return out


def pin_memory(batch: Batch) -> Batch:
    """Page-locked copies, so that ``.to(cuda, non_blocking=True)`` really is asynchronous."""
    values = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return replace(batch, **{k: v.pin_memory() for k, v in values.items() if isinstance(v, torch.Tensor)})
