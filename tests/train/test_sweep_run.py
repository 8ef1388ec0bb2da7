"""``hax sweep`` end to end: subprocess runs, several at once, finished ones skipped, unfinished resumed."""

from __future__ import annotations

import json

from hax_ssm.cli import main
from hax_ssm.train.run_dir import RunDir
from hax_ssm.train.sweep import expand_sweep, load_sweep
from hax_ssm.train.trainer import Trainer


def test_sweep_runs_skips_and_resumes(tiny_data, tiny_model, tmp_path, capsys):
    spec = {
        "data_dir": str(tiny_data),
        "train": {
            "base_arch": "mamba2",
            "sparse_keys": 8,
            "num_hash": 4,
            "model_overrides": tiny_model,
            "steps": 4,
            "warmup_steps": 1,
            "batch_size": 8,
            "eval_every": 2,
            "log_every": 2,
            "device": "cpu",
        },
        "cells": [
            {"sparse_arch": "none", "seed": 0},
            {"sparse_arch": "hax", "seed": 0},
            {"sparse_arch": "none", "seed": 1},
        ],
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    sweep_dir = tmp_path / "sw"
    runs = expand_sweep(load_sweep(path), sweep_dir)
    assert len(runs) == 3
    # one run was killed earlier at step 2; one finished already
    Trainer(runs[0].config).fit(stop_at=2)
    Trainer(runs[1].config).fit()
    finished_before = RunDir(runs[1].config.save_dir).results.stat().st_mtime_ns

    assert main(["sweep", str(path), "--sweep-dir", str(sweep_dir), "--parallel", "2"]) == 0
    assert all(RunDir(r.config.save_dir).is_finished() for r in runs)
    assert RunDir(runs[1].config.save_dir).results.stat().st_mtime_ns == finished_before  # skipped
    assert "--resume" in (sweep_dir / "logs" / f"{runs[0].name}.log").read_text()
    steps = [r["step"] for r in RunDir(runs[0].config.save_dir).read_metrics() if r["split"] == "train"]
    assert steps == [2, 4]  # resumed, no line repeated

    capsys.readouterr()
    assert main(["sweep", str(path), "--sweep-dir", str(sweep_dir)]) == 0
    assert "3 runs, 3 finished, 0 to run" in capsys.readouterr().out
    assert main(["report", str(sweep_dir)]) == 0
    report = (sweep_dir / "report.md").read_text()
    assert "| +HAX |" in report and "(n=2, lr 0.002)" in report  # Base: 2 seeds
