"""Evaluate a model on one split: overall accuracy and loss, and accuracy per task size.

The per-size breakdown groups samples by the table shape the loader reports for each row:
(n_c, n_k) for joint recall, one size per level for multi-level joint recall, the number of
pairs for MQAR.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from hax_ssm.eval.metrics import score_recall


@dataclass
class EvalResult:
    accuracy: float  # per-sample accuracy averaged over samples
    loss: float  # cross-entropy averaged over all masked positions
    samples: int
    size_names: tuple[str, ...] = ()
    # accuracy and sample count per size tuple, e.g. {(5, 7): (0.93, 100)}
    by_size: dict[tuple[int, ...], tuple[float, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "samples": self.samples,
            "size_names": list(self.size_names),
            "by_size": [
                {**dict(zip(self.size_names, key, strict=True)), "accuracy": acc, "samples": n}
                for key, (acc, n) in sorted(self.by_size.items())
            ],
        }


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA ('auto' or 'bf16'); plain fp32 elsewhere or when asked."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def group_accuracy(sizes: torch.Tensor, sample_accuracy: torch.Tensor) -> dict[tuple[int, ...], tuple[float, int]]:
    """Mean accuracy and count per distinct row of ``sizes`` ([N, w] integers)."""
    sums: dict[tuple[int, ...], float] = defaultdict(float)
    counts: dict[tuple[int, ...], int] = defaultdict(int)
    for key, acc in zip(map(tuple, sizes.tolist()), sample_accuracy.tolist(), strict=True):
        sums[key] += acc
        counts[key] += 1
    return {key: (sums[key] / counts[key], counts[key]) for key in sums}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[Any],
    device: torch.device,
    precision: str = "auto",
    with_sizes: bool = True,
) -> EvalResult:
    """Run ``model`` in eval mode over ``batches`` (one pass); restores its train/eval mode.

    ``batches`` are :class:`hax_ssm.data.Batch` (a ``RecallLoader`` with ``shuffle=False``). Runs
    under ``torch.random.fork_rng`` so that evaluating never moves the training RNG streams.
    """
    was_training = model.training
    model.eval()
    accs, ce_sum, count, sizes = [], torch.zeros((), device=device), torch.zeros((), device=device), []
    size_names: tuple[str, ...] = ()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for raw in batches:
                batch = raw.to(device)
                with autocast_for(device, precision):
                    out = model(batch.input_ids, attention_mask=batch.attention_mask)
                scores = score_recall(out.logits, batch.input_ids, batch.loss_mask)
                accs.append(scores.sample_accuracy)
                ce_sum += scores.ce_sum.sum()
                count += scores.count.sum()
                if with_sizes:
                    sizes.append(batch.sizes.cpu())
                    size_names = batch.size_names
    finally:
        model.train(was_training)
    if not accs:
        return EvalResult(accuracy=float("nan"), loss=float("nan"), samples=0)
    sample_acc = torch.cat(accs).float().cpu()
    by_size = group_accuracy(torch.cat(sizes), sample_acc) if sizes else {}
    return EvalResult(
        accuracy=sample_acc.mean().item(),
        loss=(ce_sum / count.clamp_min(1)).item(),
        samples=sample_acc.numel(),
        size_names=size_names,
        by_size=by_size,
    )
