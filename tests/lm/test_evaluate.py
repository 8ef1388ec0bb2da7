"""The harness end to end with stand-in models: an oracle that answers right, adversaries that do not."""

import json
from pathlib import Path

import numpy as np
import pytest

from hax_ssm.cli import main
from hax_ssm.errors import HaxError
from hax_ssm.lm import longbench
from hax_ssm.lm.evaluate import (
    evaluate_longbench,
    evaluate_ruler,
    perplexity_by_position,
    plot_ruler,
    write_results,
)
from hax_ssm.lm.ruler import RulerGenerator, RulerText

LONGBENCH = Path(__file__).parent / "fixtures" / "longbench.jsonl"
TASKS = ["niah_single_1", "niah_multivalue", "vt", "fwe", "qa_wiki"]


@pytest.fixture(scope="module")
def text(built_corpus, tiny_tokenizer):
    return RulerText.from_corpus(built_corpus, tiny_tokenizer, split="train")


def oracle_for(samples_by_prompt, tokenizer, reply):
    """A generate_fn that recognises each prompt and answers with reply(sample)."""
    seen = []

    def generate(prompt_ids, max_new_tokens):
        sample = samples_by_prompt[tuple(prompt_ids)]
        assert max_new_tokens == sample.max_new_tokens
        assert len(prompt_ids) + max_new_tokens == sample.length <= sample.target_length
        seen.append(sample)
        return [*tokenizer.encode(reply(sample)), tokenizer.eot_id, *tokenizer.encode(" junk after the end")]

    return generate, seen


def ruler_run(text, tokenizer, reply):
    generator = RulerGenerator(tokenizer, text, seed=1)
    samples = [s for t in TASKS for n in (2500, 3000) for s in generator.generate(t, n, 2)]
    by_prompt = {tuple(tokenizer.encode(s.prompt)): s for s in samples}
    generate, seen = oracle_for(by_prompt, tokenizer, reply)
    results = evaluate_ruler(generate, tokenizer, TASKS, (2500, 3000), text=text, num_samples=2, seed=1, progress=False)
    assert len(seen) == len(samples)
    return results


def test_ruler_oracle_scores_100(text, tiny_tokenizer):
    results = ruler_run(text, tiny_tokenizer, lambda s: " " + ", ".join(s.outputs))
    assert all(r["score"] == 1.0 for r in results["records"])
    assert results["summary"]["average_by_length"] == {"2500": 100.0, "3000": 100.0}
    assert set(results["summary"]["by_depth"]) == {"niah_single_1", "niah_multivalue", "niah (all)"}


def test_ruler_adversaries_score_what_they_deserve(text, tiny_tokenizer):
    wrong = ruler_run(text, tiny_tokenizer, lambda s: " I do not remember anything.")
    assert all(r["score"] == 0.0 for r in wrong["records"])
    half = ruler_run(text, tiny_tokenizer, lambda s: " " + " ".join(s.outputs[: len(s.outputs) // 2 or 1]))
    by_task = half["summary"]["by_task"]
    assert by_task["niah_multivalue"]["2500"] == 50.0  # 2 of 4 values: string_match_all gives half
    assert by_task["vt"]["2500"] == 40.0  # 2 of 5 variables
    assert by_task["qa_wiki"]["2500"] == 100.0  # string_match_part: one answer is enough


def test_results_json_and_plot(text, tiny_tokenizer, tmp_path):
    results = ruler_run(text, tiny_tokenizer, lambda s: s.outputs[0])
    written = write_results(tmp_path / "r.json", results, benchmark="ruler")
    assert json.loads((tmp_path / "r.json").read_text())["provenance"] == written["provenance"]
    plot_ruler(results["summary"], tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def _longbench_generate(tokenizer, answer_for):
    samples = {
        tuple(longbench.truncate_middle(tokenizer.encode(s.prompt()), 10_000)): s
        for s in longbench.read_longbench(LONGBENCH)
    }

    def generate(prompt_ids, max_new_tokens):
        sample = samples[tuple(prompt_ids)]
        assert max_new_tokens == longbench.MAX_NEW_TOKENS[sample.dataset]
        return tokenizer.encode(answer_for(sample))

    return generate


def test_longbench_oracle_and_adversary(tiny_tokenizer):
    oracle = evaluate_longbench(
        _longbench_generate(tiny_tokenizer, lambda s: s.answers[0]),
        tiny_tokenizer,
        LONGBENCH,
        max_prompt_tokens=10_000,
        progress=False,
    )
    summary = oracle["summary"]
    assert all(d["score"] == 100.0 for d in summary["datasets"].values()) and summary["average"] == 100.0
    assert summary["datasets"]["passage_count"]["by_length"] == {"8k+": 100.0}
    wrong = evaluate_longbench(
        _longbench_generate(tiny_tokenizer, lambda s: "Paragraph 9 and 7 zzz"),
        tiny_tokenizer,
        LONGBENCH,
        max_prompt_tokens=10_000,
        progress=False,
    )
    scores = {d: v["score"] for d, v in wrong["summary"]["datasets"].items()}
    assert scores["passage_retrieval_en"] == scores["passage_count"] == scores["hotpotqa"] == 0.0
    assert 0 < scores["lcc"] < 50  # edit similarity gives partial credit, never full


def test_longbench_truncates_long_prompts(tiny_tokenizer):
    lengths = []

    def generate(prompt_ids, max_new_tokens):
        lengths.append(len(prompt_ids))
        return []

    evaluate_longbench(generate, tiny_tokenizer, LONGBENCH, max_prompt_tokens=64, progress=False)
    assert max(lengths) == 64


def test_perplexity_by_position_exact():
    # log p = -log 2 before position 2048 and -log 4 from there on: bucket NLLs are exactly log 2, log 4
    def logprob_fn(ids):
        positions = np.arange(1, len(ids))
        return np.where(positions < 2048, -np.log(2.0), -np.log(4.0))

    docs = [np.zeros(5000, dtype=np.int64), np.zeros(3000, dtype=np.int64)]
    result = perplexity_by_position(logprob_fn, docs, progress=False)
    (b0, b1, b2) = result["buckets"]
    assert (b0["start"], b0["end"], b0["tokens"]) == (0, 2048, 2 * 2047)
    assert b0["ppl"] == pytest.approx(2.0) and b1["ppl"] == pytest.approx(4.0) and b2["ppl"] == pytest.approx(4.0)
    assert (b1["tokens"], b2["tokens"]) == (2048 + 952, 5000 - 4096)
    assert result["overall"]["tokens"] == 4999 + 2999


def test_perplexity_rejects_a_wrong_shape():
    with pytest.raises(HaxError, match="expected \\(9,\\)"):
        perplexity_by_position(lambda ids: np.zeros(len(ids)), [np.zeros(10)], progress=False)


def test_cli_scores_prediction_files(tmp_path, capsys):
    rows = [json.loads(line) for line in LONGBENCH.read_text().splitlines()]
    preds = tmp_path / "pred"
    preds.mkdir()
    for row in rows:
        with open(preds / f"{row['dataset']}.jsonl", "a") as f:  # LongBench's pred/<model>/<dataset>.jsonl
            f.write(
                json.dumps(
                    {
                        "pred": row["answers"][0],
                        "answers": row["answers"],
                        "all_classes": row["all_classes"],
                        "length": row["length"],
                    }
                )
                + "\n"
            )
    assert main(["longbench", "score", str(preds), "--out", str(tmp_path / "lb.json")]) == 0
    assert json.loads((tmp_path / "lb.json").read_text())["summary"]["average"] == 100.0
    capsys.readouterr()
    (preds / "dureader.jsonl").write_text(json.dumps({"pred": "x", "answers": ["y"]}) + "\n")
    assert main(["longbench", "score", str(preds)]) == 2
    assert capsys.readouterr().err.startswith("hax: error: unknown LongBench data set 'dureader'")
