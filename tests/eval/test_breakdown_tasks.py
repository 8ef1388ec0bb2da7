"""The per-size breakdown follows each task family's size slices (multi-level joint recall, MQAR)."""

from __future__ import annotations

import pytest
import torch

from hax_ssm.data import RecallLoader, generate_joint_recall, generate_mqar
from hax_ssm.eval.evaluation import evaluate
from hax_ssm.models import build_model


@pytest.fixture(scope="module")
def other_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    generate_joint_recall(root / "ml", sizes="2-3,2,2-3", values=4, train_per_pair=4, eval_per_pair=2, workers=1,
                          progress=False)  # fmt: skip
    generate_mqar(root / "mqar", seq_len=[16, 32], pairs=[2, 4], vocab_size=60, train_per_config=4,
                  eval_per_config=3, workers=1, progress=False)  # fmt: skip
    return root


@pytest.mark.parametrize(("task", "levels", "groups", "per_group"), [("ml", 3, 4, 2), ("mqar", 2, 2, 3)])
def test_breakdown_follows_the_datasets_size_slices(other_tasks, task, levels, groups, per_group):
    torch.manual_seed(0)
    model = build_model("mamba2", hidden_size=16, num_heads=2, head_dim=16, state_size=8, num_hidden_layers=1)
    loader = RecallLoader(other_tasks / task, "test", batch_size=3, shuffle=False)
    result = evaluate(model, loader, torch.device("cpu"), "fp32")
    assert len(result.size_names) == levels == len(next(iter(result.by_size)))
    assert len(result.by_size) == groups and {n for _, n in result.by_size.values()} == {per_group}
    assert result.samples == groups * per_group
