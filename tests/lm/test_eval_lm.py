"""hax eval-lm on a tiny trained model: structure, bounds and determinism of the results; the model seams;
bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hax_ssm.cli import main
from hax_ssm.lm import eval_lm
from hax_ssm.lm.eval_lm import ModelRunner, load_lm
from hax_ssm.lm.train import LMTrainer
from tests.lm.lm_runs import tiny_lm_config

LONGBENCH = Path(__file__).parent / "fixtures" / "longbench.jsonl"
PPL_DOCS = 3


@pytest.fixture(scope="module")
def run_dir(built_corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "run"
    LMTrainer(tiny_lm_config(built_corpus, path, steps=8)).fit()
    return path


@pytest.fixture(scope="module")
def ranks(tiny_tokenizer):
    return str(tiny_tokenizer.path)


def eval_flags(run_dir, ranks, out, *extra):
    return [
        "eval-lm",
        str(run_dir),
        "--out",
        str(out),
        "--tokenizer",
        ranks,
        "--ppl-length",
        "512",
        "--ppl-docs",
        str(PPL_DOCS),
        "--ruler-split",
        "train",
        "--no-progress",
        *extra,
    ]


def test_eval_lm_end_to_end_is_bounded_and_deterministic(run_dir, ranks, tmp_path):
    ruler = ["--tasks", "niah_single_1,qa_wiki", "--lengths", "768", "--samples", "1"]
    longbench = ["--longbench", str(LONGBENCH), "--longbench-datasets", "hotpotqa,passage_count"]
    assert main(eval_flags(run_dir, ranks, tmp_path / "a", *ruler, *longbench)) == 0
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["model"]["sparse_arch"] == "argmax_lsh+key_selection" and results["model"]["step"] == 8
    assert {"device", "git_commit", "command"} <= set(results["provenance"])

    ppl = results["perplexity"]
    assert ppl["documents"] == PPL_DOCS and ppl["overall"]["tokens"] == PPL_DOCS * 511
    assert sum(b["tokens"] for b in ppl["buckets"]) == ppl["overall"]["tokens"]
    assert 1 < ppl["overall"]["ppl"] < 320 * 2  # better than twice uniform over the vocabulary, never below 1
    assert np.isclose(ppl["overall"]["ppl"], np.exp(ppl["overall"]["nll"]))

    records = results["ruler"]["records"]
    assert [r["task"] for r in records] == ["niah_single_1", "qa_wiki"] and all(r["length"] == 768 for r in records)
    assert all(0 <= r["score"] <= 1 for r in records)
    assert set(results["ruler"]["summary"]["by_task"]) == {"niah_single_1", "qa_wiki"}
    assert (tmp_path / "a" / "ruler.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(r["dataset"] for r in results["longbench"]["records"]) == ["hotpotqa", "passage_count"]
    assert all(0 <= r["score"] <= 1 for r in results["longbench"]["records"])

    assert main(eval_flags(run_dir, ranks, tmp_path / "b", *ruler, *longbench)) == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    for key in ("perplexity", "ruler", "longbench", "model"):
        assert again[key] == results[key], key


def test_greedy_generation_with_the_cache_equals_recomputing_the_whole_sequence(run_dir):
    model = load_lm(run_dir, torch.device("cpu")).model  # Mamba with the HAX branch, in eval mode
    runner = ModelRunner(model, torch.device("cpu"), "fp32")
    prompt = torch.randint(0, 271, (40,)).tolist()
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    continuation = ids[len(prompt) :]
    assert runner.generate(prompt, 6) == continuation
    stop = continuation[-1]
    assert runner.generate(prompt, 6, stop_id=stop) == continuation[: continuation.index(stop) + 1]


def test_logprobs_in_head_chunks_equal_the_full_forward(run_dir, monkeypatch):
    monkeypatch.setattr(eval_lm, "HEAD_CHUNK", 7)
    model = load_lm(run_dir, torch.device("cpu")).model
    ids = np.random.default_rng(0).integers(0, 271, 30)
    with torch.no_grad():
        full = model(torch.tensor(ids)[None]).logits[0].log_softmax(-1)
    expected = full[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].double().numpy()
    np.testing.assert_allclose(ModelRunner(model, torch.device("cpu"), "fp32").logprobs(ids), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "niah_single_1,nope"], "unknown RULER task 'nope'"),
        (["--tasks", "none", "--ppl-length", "100000"], "--ppl-length 100000: longer than every document"),
        (["--tasks", "none", "--ppl-split", "dev"], "split 'dev': allowed are train, val, test"),
        (["--ruler-file", "x.jsonl", "--lengths", "512"], "--ruler-file: its samples are run as they are"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(run_dir, ranks, tmp_path, capsys, extra, message):
    assert main(eval_flags(run_dir, ranks, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hax: error: ") and "\n" not in err and message in err
    assert not (tmp_path / "out").exists()


def test_no_checkpoint_and_empty_corpus_are_refused(run_dir, ranks, tmp_path, capsys, tiny_tokenizer, source_trees):
    from hax_ssm.lm.corpus.build import build_corpus
    from tests.lm.helpers import build_options

    assert main(["eval-lm", str(tmp_path), "--tasks", "none"]) == 2
    assert "no checkpoints/best.pt or checkpoints/last.pt" in capsys.readouterr().err
    books_free = tmp_path / "qa_only"
    build_corpus(build_options(books_free, tiny_tokenizer, source_trees, names=["wikipedia"]))
    flags = eval_flags(run_dir, ranks, tmp_path / "out", "--corpus", str(books_free), "--tasks", "none")
    assert main([*flags, "--ppl-split", "train"]) == 2
    assert "split 'train' holds no documents" in capsys.readouterr().err
