import math
import re

import pytest
import torch

from hax_ssm.errors import HaxError
from hax_ssm.train.config import TrainConfig, merge_for_resume
from hax_ssm.train.schedule import build_adamw, warmup_constant_lr


def _cfg(**kw):
    return TrainConfig(data_dir="d", save_dir="s", **kw)


def test_defaults_are_the_papers_protocol():
    c = _cfg().validate()
    assert (c.sparse_keys, c.num_hash, c.lr, c.gate_loss_weight) == (64, 8, 2e-3, 0.1)
    assert (c.steps, c.warmup_steps, c.eval_every, c.batch_size) == (400_000, 5_000, 500, 64)


def test_hax_alias_and_width_pick_the_preset():
    c = _cfg(base_arch="mamba2", sparse_arch="hax", width="2x").validate()
    assert c.sparse_arch == "sign_bin_lsh+key_selection" and c.preset == "mamba2_2x"
    assert _cfg(base_arch="mamba").validate().preset == "mamba"  # no sparse pattern: still 1x


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"base_arch": "mamba3"}, "--base-arch 'mamba3': allowed: mamba, mamba2, samba"),
        ({"sparse_arch": "sliding_windoe"}, "unknown pattern 'sliding_windoe'"),
        ({"width": "3x"}, "--width '3x'"),
        ({"base_arch": "samba", "width": "2x"}, "no double-width Samba"),
        ({"batch_size": 0}, "--batch-size 0: must be a positive integer"),
        ({"steps": -5}, "--steps -5: must be a positive integer"),
        ({"steps": 2.5}, "--steps 2.5"),
        ({"lr": math.nan}, "--lr nan"),
        ({"sparse_arch": "hax", "sparse_keys": 63}, "does not split evenly"),
        ({"cuda_graphs": True, "grad_accum": 2}, "--cuda-graphs with --grad-accum 2"),
    ],
)
def test_bad_values_name_themselves(kw, message):
    with pytest.raises(HaxError, match=re.escape(message)):
        _cfg(**kw).validate()


def test_batch_must_split_over_ranks_and_accumulation():
    assert _cfg(batch_size=64, grad_accum=4).check_batch_split(2) == 8
    with pytest.raises(HaxError, match="use a multiple of 6"):
        _cfg(batch_size=64, grad_accum=3).check_batch_split(2)


def test_resume_keeps_the_config_and_allows_only_harmless_changes():
    stored = _cfg(lr=1e-3, steps=100).validate()
    assert merge_for_resume(stored, {"steps": 200, "device": "cpu", "lr": 1e-3}).steps == 200
    with pytest.raises(HaxError, match=r"--lr 0\.003 differs from the run.s 0\.001"):
        merge_for_resume(stored, {"lr": 3e-3})


def test_warmup_then_constant():
    lrs = [warmup_constant_lr(s, 1.0, 4) for s in range(6)]
    assert lrs == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_constant_lr(0, 2e-3, 0) == 2e-3


def test_weight_decay_skips_vectors_and_ssm_dynamics():
    model = torch.nn.Module()
    model.proj = torch.nn.Linear(4, 4)
    model.A_log = torch.nn.Parameter(torch.zeros(4, 4))  # Mamba's A_log is a matrix
    opt = build_adamw(model, 1e-3, 0.1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.proj.weight)}
