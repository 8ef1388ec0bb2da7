"""hax train-lm: the trainer on corpus windows with the paper's schedule; loss falls, resume is exact."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from hax_ssm.cli import main
from hax_ssm.errors import HaxError
from hax_ssm.lm.corpus.build import build_corpus
from hax_ssm.lm.corpus.reader import TokenCorpus
from hax_ssm.lm.train import LMTrainer, WindowLoader
from hax_ssm.lm.train_config import LMTrainConfig
from hax_ssm.train.config import merge_for_resume
from hax_ssm.train.run_dir import RunDir, load_checkpoint
from hax_ssm.train.schedule import hold_warmup_cosine_lr
from tests.lm.helpers import build_options
from tests.lm.lm_runs import cli_flags, tiny_lm_config


def _metrics(run: RunDir) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in run.read_metrics()]


def test_loss_falls_and_a_stopped_run_resumes_exactly(built_corpus, tmp_path):
    straight = tiny_lm_config(built_corpus, tmp_path / "straight")
    results = LMTrainer(straight).fit()
    train = [r["lm_loss"] for r in RunDir(straight.save_dir).read_metrics() if r["split"] == "train"]
    assert train[-1] < train[0] - 0.5  # from ~ln(320) = 5.8 on the repetitive fixture text
    assert results["best"]["val_loss"] == min(
        r["loss"] for r in RunDir(straight.save_dir).read_metrics() if r["split"] == "val"
    )
    assert np.isclose(results["test"]["perplexity"], np.exp(results["test"]["loss"]))

    halves = tiny_lm_config(built_corpus, tmp_path / "halves")
    assert LMTrainer(halves).fit(stop_at=10) is None  # between log lines and validations
    LMTrainer(tiny_lm_config(built_corpus, tmp_path / "halves"), resume=True).fit()
    a, b = RunDir(straight.save_dir), RunDir(halves.save_dir)
    wa, wb = load_checkpoint(a.last_checkpoint)["model"], load_checkpoint(b.last_checkpoint)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _metrics(a) == _metrics(b)
    assert json.loads(a.results.read_text())["test"] == json.loads(b.results.read_text())["test"]


def test_paper_schedule():
    lrs = [hold_warmup_cosine_lr(s, 3e-4, 1e-5, total_steps=100, warmup_steps=8, hold_steps=2) for s in range(100)]
    assert lrs[:2] == [0.0, 0.0]
    assert lrs[2] == pytest.approx(3e-4 / 8) and lrs[9] == pytest.approx(3e-4)  # warm-up ends at the peak
    assert all(x >= y for x, y in itertools.pairwise(lrs[9:]))  # then never rises
    assert lrs[-1] == pytest.approx(1e-5)
    assert LMTrainConfig(data_dir="d", save_dir="s", steps=100, warmup_steps=8, hold_steps=2).lr_at(9) == 3e-4


def test_windows_lie_inside_documents_and_follow_seed_and_step(built_corpus):
    split = TokenCorpus(built_corpus).split("train")
    docs = [bytes(split.document(i).astype("<u2")) for i in range(len(split))]
    loader = WindowLoader(built_corpus, "train", 4, context=64, seed=3, start_step=5)
    first = next(iter(loader))
    again = next(iter(WindowLoader(built_corpus, "train", 4, context=64, seed=3, start_step=5)))
    other = next(iter(WindowLoader(built_corpus, "train", 4, context=64, seed=3, start_step=6)))
    assert first.step == 5 and torch.equal(first.input_ids, again.input_ids)
    assert not torch.equal(first.input_ids, other.input_ids)
    for row in first.input_ids.numpy().astype("<u2"):
        assert any(row.tobytes() in doc for doc in docs)  # one document, never across a boundary
    assert first.loss_mask[:, :-1].all() and not first.loss_mask[:, -1].any()
    evaluation = [b.input_ids for b in WindowLoader(built_corpus, "val", 3, context=64, eval_windows=7, shuffle=False)]
    assert [len(x) for x in evaluation] == [3, 3, 1]
    again = [b.input_ids for b in WindowLoader(built_corpus, "val", 3, context=64, eval_windows=7, shuffle=False)]
    assert all(torch.equal(x, y) for x, y in zip(evaluation, again, strict=True))


def test_language_setting_of_hax(built_corpus, tmp_path):
    cfg = LMTrainConfig(data_dir="d", save_dir="s", sparse_arch="hax").validate()
    assert (cfg.sparse_arch, cfg.sparse_keys, cfg.num_hash) == ("argmax_lsh+key_selection", 128, 128)
    assert LMTrainConfig(data_dir="d", save_dir="s", sparse_arch="sign_bin_lsh").validate().num_hash == 8
    trainer = LMTrainer(tiny_lm_config(built_corpus, tmp_path / "run", steps=1))
    branch = trainer.model.backbone.layers[0].mixer.branch
    assert branch.spec.lsh == "argmax_lsh" and branch.spec.num_buckets == 8  # num_hash = k = 8 here
    assert trainer.model.config.vocab_size == 320  # 271 tokens rounded up to a multiple of 64
    assert trainer.model.config.data_max_length == 64


@pytest.mark.parametrize(
    ("base", "arch", "recorded"),
    [("mamba2", "hax", "argmax_lsh+key_selection"), ("samba", "sink+sliding_window", "sliding_window+sink")],
)
def test_other_bases_train(built_corpus, tmp_path, base, arch, recorded):
    results = LMTrainer(tiny_lm_config(built_corpus, tmp_path / base, base_arch=base, sparse_arch=arch, steps=4)).fit()
    config = json.loads((tmp_path / base / "config.json").read_text())
    assert config["model"]["model_type"] == f"hax_{base}" and config["model"]["sparse_arch"] == recorded
    assert np.isfinite(results["test"]["loss"])


def test_cli_run_stops_for_time_and_resumes_with_the_same_flags(built_corpus, tmp_path, capsys):
    flags = cli_flags(built_corpus, tmp_path / "run", steps=6)  # --sparse-arch hax: stored resolved
    assert main([*flags, "--time-limit", "0"]) == 0  # one step, a checkpoint, a hint
    assert "continue with: hax train-lm --save-dir" in capsys.readouterr().out
    assert load_checkpoint(RunDir(tmp_path / "run").last_checkpoint)["step"] == 1
    assert main([*flags, "--resume"]) == 0
    assert json.loads(RunDir(tmp_path / "run").results.read_text())["steps"] == 6
    assert main([*cli_flags(built_corpus, tmp_path / "run", steps=6, lr=1e-3), "--resume"]) == 2
    assert "--lr 0.001 differs from the run's 0.003" in capsys.readouterr().err


def test_steps_cannot_change_on_resume(built_corpus, tmp_path):
    cfg = tiny_lm_config(built_corpus, tmp_path / "run")
    with pytest.raises(HaxError, match="--steps 48 differs from the run's 24"):
        merge_for_resume(cfg, {"steps": 48})
    assert merge_for_resume(cfg, {"device": "cpu", "log_every": 2}).log_every == 2


@pytest.fixture(scope="module")
def empty_train_corpus(tmp_path_factory, tiny_tokenizer, source_trees):
    """Only the QA articles: every document is in the test split, the train split is empty."""
    out = tmp_path_factory.mktemp("qa_only") / "corpus"
    build_corpus(build_options(out, tiny_tokenizer, source_trees, names=["wikipedia"]))
    return out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"context": 100_000}, "context of 100000 tokens is longer than every document of split 'train'"),
        ({"size": "huge"}, "--size 'huge': allowed: tiny, small"),
        ({"base_arch": "mamba2", "init_from": "ckpt"}, "--init-from loads Mamba checkpoints"),
        ({"sparse_arch": "nope"}, "unknown pattern 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(built_corpus, tmp_path, capsys, overrides, message):
    assert main(cli_flags(built_corpus, tmp_path / "run", **overrides)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hax: error: ") and "\n" not in err and message in err
    assert not (tmp_path / "run").exists()


def test_empty_corpus_is_refused(empty_train_corpus, tmp_path, capsys):
    assert main(cli_flags(empty_train_corpus, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert "split 'train' holds no documents" in err and "\n" not in err
