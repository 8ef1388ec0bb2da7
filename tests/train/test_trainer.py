"""The training loop on the real data engine and the real Mamba2 + HAX: exact resume, files, NaN stop."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hax_ssm.train.run_dir import RunDir, load_checkpoint
from hax_ssm.train.trainer import Diverged, Trainer

TIMING_KEYS = ("steps_per_s",)


def _metrics(run: RunDir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in run.read_metrics()]


def _weights(run: RunDir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run.last_checkpoint)["model"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_and_resume_gives_the_same_weights_and_metrics(tiny_config):
    straight = tiny_config("straight")
    Trainer(straight).fit()

    # stopped at step 3 (between log lines: the open metric window travels in the checkpoint),
    # then everything rebuilt from disk
    halves = tiny_config("halves")
    assert Trainer(halves).fit(stop_at=3) is None
    assert load_checkpoint(RunDir(halves.save_dir).last_checkpoint)["step"] == 3
    Trainer(tiny_config("halves"), resume=True).fit()

    a, b = RunDir(straight.save_dir), RunDir(halves.save_dir)
    assert _same_weights(_weights(a), _weights(b))
    assert _metrics(a) == _metrics(b)
    ra, rb = (json.loads(r.results.read_text()) for r in (a, b))
    assert ra["test"] == rb["test"] and ra["best"] == rb["best"]


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no checkpoint, no cleanup that writes)."""


def test_resume_after_a_hard_kill_drops_the_lines_written_after_the_checkpoint(tiny_config, monkeypatch):
    straight = tiny_config("straight", checkpoint_every=4)
    Trainer(straight).fit()

    killed = tiny_config("killed", checkpoint_every=4)
    trainer = Trainer(killed)
    original = trainer.model.forward

    def dies_at_step_6(*args, **kwargs):
        if trainer.step == 6:
            raise _Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", dies_at_step_6)
    with pytest.raises(_Killed):
        trainer.fit()
    run = RunDir(killed.save_dir)
    assert load_checkpoint(run.last_checkpoint)["step"] == 4
    assert max(r["step"] for r in run.read_metrics()) == 6  # a line the resumed run will write again
    with run.metrics.open("a") as f:
        f.write('{"step": 7, "split": "tr')  # and a line cut short by the kill

    Trainer(tiny_config("killed", checkpoint_every=4), resume=True).fit()
    assert _same_weights(_weights(RunDir(straight.save_dir)), _weights(run))
    assert _metrics(RunDir(straight.save_dir)) == _metrics(run)


def test_run_directory_contents(tiny_config):
    cfg = tiny_config()
    results = Trainer(cfg).fit()
    run = RunDir(cfg.save_dir)
    stored = json.loads(run.config.read_text())
    assert stored["train"]["sparse_arch"] == "sign_bin_lsh+key_selection" and stored["parameters"] > 0
    assert stored["model"]["hidden_size"] == 16 and "provenance" in stored
    best = load_checkpoint(run.best_checkpoint)
    assert best["step"] == results["best"]["step"] in (4, 8)
    assert results["test"]["samples"] == 4 * 3 and results["test"]["size_names"] == ["n_c", "n_k"]
    assert {(e["n_c"], e["n_k"]) for e in results["test"]["by_size"]} == {(2, 2), (2, 3), (3, 2), (3, 3)}
    assert (run.eval_dir / "test.json").is_file() and (run.eval_dir / "test.png").is_file()
    lines = run.read_metrics()
    assert [r["step"] for r in lines if r["split"] == "train"] == [2, 4, 6, 8]
    assert [r["step"] for r in lines if r["split"] == "validation"] == [4, 8]
    assert [r["lr"] for r in lines if r["split"] == "train"][:2] == pytest.approx([2e-3, 3e-3])
    assert all(0 <= r["accuracy"] <= 1 and math.isfinite(r["loss"]) for r in lines)
    assert all(r["gate_loss"] > 0 for r in lines if r["split"] == "train")  # key selection trains its scorer


def test_gradient_accumulation_computes_the_same_update(tiny_config):
    # no LSH (its hash redraw differs per micro-batch): accumulation must then be exact up to rounding
    one = tiny_config("one", sparse_arch="sliding_window", steps=3, eval_every=3)
    two = tiny_config("two", sparse_arch="sliding_window", steps=3, eval_every=3, grad_accum=2)
    Trainer(one).fit()
    Trainer(two).fit()
    a, b = _weights(RunDir(one.save_dir)), _weights(RunDir(two.save_dir))
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config(checkpoint_every=2)
    trainer = Trainer(cfg)
    original = trainer.model.forward

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        if trainer.step >= 3:  # the update that takes the model from step 3 to 4
            out.logits = out.logits * float("nan")
        return out

    monkeypatch.setattr(trainer.model, "forward", poisoned)
    with pytest.raises(Diverged, match=r"loss became nan between steps 3 and 4.*last good checkpoint"):
        trainer.fit()
    run = RunDir(cfg.save_dir)
    state = load_checkpoint(run.last_checkpoint)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not run.is_finished()


def test_sigterm_stops_at_the_end_of_the_step_with_a_checkpoint(tiny_config, monkeypatch):
    import os
    import signal

    cfg = tiny_config()
    trainer = Trainer(cfg)
    original = trainer.model.forward

    def terminated_during_step_3(*args, **kwargs):
        if trainer.step == 2 and trainer.model.training:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer.model, "forward", terminated_during_step_3)
    before = signal.getsignal(signal.SIGTERM)
    assert trainer.fit() is None
    assert signal.getsignal(signal.SIGTERM) == before  # our handler is gone again
    run = RunDir(cfg.save_dir)
    assert load_checkpoint(run.last_checkpoint)["step"] == 3 and not run.is_finished()
