"""Optimizer and learning-rate schedules: AdamW; linear warm-up then constant (synthetic protocol), or
hold, warm-up and cosine decay (the language-model protocol).

The learning rate is a pure function of the step, set before every update, so a resumed run needs
no scheduler state and cannot drift from a straight one.
"""

from __future__ import annotations

import math

import torch

_NO_DECAY_NAMES = frozenset({"A_log", "D", "dt_bias"})


def warmup_constant_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """lr of the update that takes the model from ``step`` to ``step + 1``.

    Linear from base_lr / warmup_steps (first update) to base_lr (update ``warmup_steps``), then
    constant. The first update is not wasted at lr 0.
    """
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


def hold_warmup_cosine_lr(
    step: int, max_lr: float, min_lr: float, total_steps: int, warmup_steps: int, hold_steps: int = 0
) -> float:
    """lr of the update from ``step`` to ``step + 1`` in PAPER.md section 5's schedule.

    0 for the first ``hold_steps`` updates (AdamW still accumulates its moments, so the real updates
    start from sensible statistics), then linear warm-up to ``max_lr`` over ``warmup_steps`` updates,
    then a cosine from ``max_lr`` down to ``min_lr`` at the last update (``total_steps - 1``).
    """
    if step < hold_steps:
        return 0.0
    step -= hold_steps
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - hold_steps - warmup_steps - 1
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        current = group["lr"]
        if not isinstance(current, torch.Tensor):
            group["lr"] = lr
            continue
        # capturable AdamW: a replayed CUDA graph reads this tensor, so it is updated in place
        device = group["params"][0].device
        if current.device != device:  # a checkpoint is loaded onto the CPU
            group["lr"] = current = current.to(device)
        current.fill_(lr)


def build_adamw(model: torch.nn.Module, lr: float, weight_decay: float, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW that decays weight matrices (projections, embeddings) only.

    Biases, norm weights, the branch gate E and the SSM's dynamics (A_log, D, dt_bias; Mamba's
    A_log is a matrix) are not decayed: pulling them towards 0 changes what the layer computes
    rather than regularising it. Parameters marked ``_no_weight_decay`` (mamba_ssm's
    convention) are skipped as well.

    ``capturable``: the update can run inside a CUDA graph (hax_ssm.utils.step_graphs); the learning
    rate is then a device tensor that :func:`set_lr` changes in place.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        keep = p.dim() < 2 or getattr(p, "_no_weight_decay", False) or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES
        (no_decay if keep else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update on CUDA (no host sync either way)
    fused = all(p.is_cuda for g in groups for p in g["params"])
    groups = [g for g in groups if g["params"]]
    if capturable:
        device = groups[0]["params"][0].device
        for g in groups:  # one tensor per group: set_lr fills each
            g["lr"] = torch.tensor(float(lr), device=device)
        return torch.optim.AdamW(groups, lr=lr, fused=fused or None, capturable=True)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)
