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
