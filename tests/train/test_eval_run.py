"""``hax eval`` on the checkpoints of a run."""

from __future__ import annotations

import json

import pytest

from hax_ssm.cli import main
from hax_ssm.train.trainer import Trainer


def test_eval_a_run_on_any_split(tiny_config, tmp_path, capsys):
    cfg = tiny_config(steps=4)
    results = Trainer(cfg).fit()
    out = tmp_path / "eval_out"
    assert main(["eval", cfg.save_dir, "--split", "test", "--out", str(out), "--device", "cpu"]) == 0
    saved = json.loads((out / "test.json").read_text())
    # the run directory means its best checkpoint: the same numbers as the run's own test
    assert saved["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert saved["by_size"] == results["test"]["by_size"] and (out / "test.png").is_file()
    ckpt = f"{cfg.save_dir}/checkpoints/last.pt"
    assert main(["eval", ckpt, "--split", "validation", "--out", str(out), "--batch-size", "5"]) == 0
    assert json.loads((out / "validation.json").read_text())["samples"] == 12
    assert "validation accuracy" in capsys.readouterr().out


def test_demo_generates_trains_and_reports(tmp_path, capsys):
    # the real demo takes minutes; two steps check the wiring (data summary, training, per-shape table)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "joint_recall at" in out and "rows: train 22,500, validation 450, test 450" in out
    assert "test accuracy per table shape (n_c x n_k):" in out and "  4 x 4:" in out
    assert "demo: test accuracy" in out
    assert (tmp_path / "demo" / "run" / "results.json").is_file()
