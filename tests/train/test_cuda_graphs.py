"""--cuda-graphs: the trainer replays its step as CUDA graphs and trains as it does eagerly."""

from __future__ import annotations

import pytest
import torch

from hax_ssm.train.run_dir import RunDir
from hax_ssm.train.schedule import build_adamw, set_lr
from hax_ssm.train.trainer import Trainer


def _losses(run: RunDir) -> list[float]:
    return [r["loss"] for r in run.read_metrics() if r["split"] == "train"]


def test_capturable_adamw_takes_the_learning_rate_in_place():
    model = torch.nn.Linear(4, 4)
    opt = build_adamw(model, 1e-3, 0.1, capturable=True)
    tensors = [g["lr"] for g in opt.param_groups]
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    set_lr(opt, 5e-4)
    assert all(g["lr"] is t for g, t in zip(opt.param_groups, tensors, strict=True))  # what a graph reads
    assert all(float(t) == pytest.approx(5e-4) for t in tensors)


def test_the_flag_changes_nothing_off_cuda(tiny_config):
    plain, flagged = tiny_config("plain", steps=4), tiny_config("flagged", steps=4, cuda_graphs=True)
    Trainer(plain).fit()
    trainer = Trainer(flagged)
    trainer.fit()
    assert trainer.graphs is None
    assert _losses(RunDir(plain.save_dir)) == _losses(RunDir(flagged.save_dir))


@pytest.mark.gpu
def test_graphed_training_follows_eager_training(tiny_config):
    """No random parts (sliding window), fp32: padding to 64 and replaying graphs change only rounding."""
    common = {"device": "cuda", "precision": "fp32", "sparse_arch": "sliding_window", "steps": 12, "log_every": 2}
    eager = tiny_config("eager", **common)
    graphed = tiny_config("graphed", cuda_graphs=True, **common)
    Trainer(eager).fit()
    trainer = Trainer(graphed)
    trainer.fit()
    assert trainer.graphs.disabled_reason is None and trainer.graphs.num_graphs >= 1
    torch.testing.assert_close(_losses(RunDir(graphed.save_dir)), _losses(RunDir(eager.save_dir)), rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
def test_graphed_training_of_mamba2_hax_runs_without_host_syncs(tiny_config):
    trainer = Trainer(tiny_config("hax", device="cuda", cuda_graphs=True, steps=10))
    trainer.fit()
    assert trainer.graphs.disabled_reason is None and trainer.graphs.num_graphs >= 1
