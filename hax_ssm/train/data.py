"""What the trainer needs from the data engine: batches as a few named tensors.

The loader (``hax_ssm.data``) owns reading, shuffling, sharding and trimming; this module only
names the fields the trainer uses and splits a batch into accumulation micro-batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass
class RecallBatch:
    input_ids: torch.Tensor  # int64 [B, T]
    attention_mask: torch.Tensor  # bool [B, T]
    loss_mask: torch.Tensor  # bool [B, T]: 1 where the NEXT token is an inquiry value
    sizes: torch.Tensor | None = None  # int64 [B, w]: the table shape of each row
    size_names: tuple[str, ...] = ()

    def to(self, device: torch.device, non_blocking: bool = False) -> RecallBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> RecallBatch:
        """Apply ``fn`` to the three tensors the model and loss read (sizes stay on the host)."""
        return replace(
            self, input_ids=fn(self.input_ids), attention_mask=fn(self.attention_mask), loss_mask=fn(self.loss_mask)
        )

    def pin_memory(self) -> RecallBatch:
        return self._map(torch.Tensor.pin_memory)

    def chunks(self, n: int) -> list[RecallBatch]:
        """n equal micro-batches, each trimmed to its own longest real sequence (host tensors)."""
        if n == 1:
            return [self]
        out = []
        for i in range(n):
            rows = slice(i * len(self) // n, (i + 1) * len(self) // n)
            length = int(self.attention_mask[rows].sum(dim=1).max())
            out.append(
                RecallBatch(
                    self.input_ids[rows, :length],
                    self.attention_mask[rows, :length],
                    self.loss_mask[rows, :length],
                    None if self.sizes is None else self.sizes[rows],
                    self.size_names,
                )
            )
        return out

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def as_recall_batch(raw: Any) -> RecallBatch:
    """Accept the loader's batch object (or a RecallBatch) and name its fields."""
    if isinstance(raw, RecallBatch):
        return raw
    get = raw.get if isinstance(raw, dict) else lambda k, d=None: getattr(raw, k, d)
    sizes, names = get("sizes"), tuple(get("size_names", ()) or ())
    return RecallBatch(
        input_ids=get("input_ids"),
        attention_mask=get("attention_mask"),
        loss_mask=get("loss_mask"),
        sizes=sizes,
        size_names=names,
    )
