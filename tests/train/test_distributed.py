"""``hax train`` under torchrun: 2 CPU processes (gloo) compute what 1 process with 2 accumulation
steps computes, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from hax_ssm.train.run_dir import RunDir, load_checkpoint
from hax_ssm.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]


def _flags(cfg) -> list[str]:
    flags = []
    for key in ("data_dir", "save_dir", "base_arch", "sparse_arch", "sparse_keys", "steps", "warmup_steps",
                "batch_size", "eval_every", "eval_batch_size", "log_every", "lr", "device"):  # fmt: skip
        flags += ["--" + key.replace("_", "-"), str(getattr(cfg, key))]
    for key, value in cfg.model_overrides.items():
        flags += ["--model-override", f"{key}={json.dumps(value)}"]
    return [*flags, "--no-progress"]


def test_two_ranks_match_one_process_with_accumulation(tiny_config):
    # sliding window: no random hash, so the two runs must agree up to the order of float sums
    ddp = tiny_config("ddp", sparse_arch="sliding_window", steps=4, eval_every=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "hax_ssm.cli", "train", *_flags(ddp)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("test accuracy") == 1  # rank 0 reports, rank 1 stays quiet

    single = tiny_config("single", sparse_arch="sliding_window", steps=4, eval_every=2, grad_accum=2)
    Trainer(single).fit()

    a, b = RunDir(ddp.save_dir), RunDir(single.save_dir)
    assert json.loads(a.config.read_text())["world_size"] == 2
    wa, wb = load_checkpoint(a.last_checkpoint), load_checkpoint(b.last_checkpoint)
    assert len(wa["rng"]) == 2  # each rank's RNG streams, for an exact resume
    assert all(torch.allclose(wa["model"][k], wb["model"][k], atol=1e-5, rtol=1e-4) for k in wb["model"])
    ma, mb = a.read_metrics(), b.read_metrics()
    assert [(r["step"], r["split"]) for r in ma] == [(r["step"], r["split"]) for r in mb]
    for ra, rb in zip(ma, mb, strict=True):
        assert abs(ra["loss"] - rb["loss"]) < 1e-4 and abs(ra["accuracy"] - rb["accuracy"]) < 1e-6
    assert json.loads(a.results.read_text())["test"]["samples"] == 12
