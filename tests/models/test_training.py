"""Each model trains: the loss falls on a small joint recall set, on a CPU, in seconds."""

import numpy as np
import pytest
import torch

from hax_ssm.models import build_model

joint_recall = pytest.importorskip("hax_ssm.data.joint_recall")

SHAPE = (2, 2)  # 2 contexts x 2 keys: 22 tokens
VALUES = 4


def _batch(task, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and labels: position t is scored on token t + 1 where the task's mask marks t."""
    tokens, mask = task.draw(SHAPE, n, rng)
    ids = torch.as_tensor(tokens, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    scored = torch.as_tensor(mask[:-1], dtype=torch.bool)
    labels[:, 1:][:, scored] = ids[:, 1:][:, scored]
    return ids, labels


@pytest.mark.parametrize(
    ("preset", "arch", "lr"),
    [
        ("mamba", None, 1e-2),
        ("mamba2", None, 1e-2),
        ("samba", None, 5e-3),
        ("mamba", "hax", 1e-2),
        ("mamba2", "hax", 1e-2),
    ],
)
def test_loss_falls_on_joint_recall(preset, arch, lr):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    task = joint_recall.joint_recall_task(sizes="2,2", values=VALUES, train_per_pair=1000, eval_per_pair=10)
    model = build_model(preset, sparse_arch=arch, sparse_keys=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(60):
        ids, labels = _batch(task, 16, rng)
        out = model(ids, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.lm_loss.item())
        if arch == "hax":
            assert out.gate_loss is not None and torch.isfinite(out.gate_loss)
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    # from ~ln(100) towards ln(4): the model learns the task's answers (chance among values: ln 4)
    assert last < 0.5 * first, (first, last)
