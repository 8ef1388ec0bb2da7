"""A tiny joint recall set and a tiny Mamba2 + HAX config shared by the training tests."""

from __future__ import annotations

import pytest

from hax_ssm.data import generate_joint_recall
from hax_ssm.train.config import TrainConfig

# the real model, shrunk: one Mamba2 layer with the HAX branch (LSH redraws and gate-loss sampling
# both use the RNG, so exact resume is tested on the hard case)
TINY_MODEL = {"hidden_size": 16, "num_heads": 2, "head_dim": 16, "state_size": 8, "num_hidden_layers": 1}


@pytest.fixture
def tiny_model():
    return dict(TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("jr") / "data"
    generate_joint_recall(path, sizes="2-3,2-3", train_per_pair=24, eval_per_pair=3, workers=1, progress=False)
    return path


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    def make(save: str = "run", **overrides) -> TrainConfig:
        values = dict(
            data_dir=str(tiny_data),
            save_dir=str(tmp_path / save),
            base_arch="mamba2",
            sparse_arch="hax",
            sparse_keys=8,
            num_hash=4,
            model_overrides=dict(TINY_MODEL),
            steps=8,
            warmup_steps=3,
            batch_size=8,
            eval_every=4,
            eval_batch_size=16,
            log_every=2,
            lr=3e-3,
            device="cpu",
            progress=False,
        )
        values.update(overrides)
        return TrainConfig(**values).validate()

    return make
