"""The batch the trainer and the evaluators consume (recall tasks and language-model windows alike).

Kept apart from the loader so that importing it needs torch only (no Arrow).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """One batch. ``loss_mask[b, t]`` is True where the model is scored on predicting
    ``input_ids[b, t + 1]`` (the inquiry keys); ``attention_mask`` is False past each row's
    useful length (padding, or an MQAR row's filler after its last answer)."""

    input_ids: torch.Tensor  # int64 [B, T]
    loss_mask: torch.Tensor  # bool [B, T]
    attention_mask: torch.Tensor  # bool [B, T]
    sizes: torch.Tensor  # int64 [B, W]: each row's table shape, named by size_names
    rows: torch.Tensor  # int64 [B]: row indices in the split
    size_names: tuple[str, ...]
    step: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return Batch(**moved, size_names=self.size_names, step=self.step)
