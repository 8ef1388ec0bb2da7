import json

import pytest

from hax_ssm.cli import main
from hax_ssm.errors import HaxError
from hax_ssm.lm.ruler import TASKS, RulerGenerator, RulerSample, RulerText, read_samples

LENGTHS = (2500, 8000)  # the tiny test BPE spends about a token per character


@pytest.fixture(scope="module")
def generator(built_corpus, tiny_tokenizer):
    return RulerGenerator(tiny_tokenizer, RulerText.from_corpus(built_corpus, tiny_tokenizer, split="train"))


@pytest.mark.parametrize("task", list(TASKS))
def test_answer_is_in_the_context_and_length_fits(generator, tiny_tokenizer, task):
    for length in LENGTHS:
        samples = generator.generate(task, length, 2)
        for s in samples:
            assert s.task == task and s.outputs and all(o in s.input for o in s.outputs)
            assert len(tiny_tokenizer.encode(s.prompt)) + s.max_new_tokens == s.length <= length
            assert s.length > 0.8 * length  # filled, not just short enough
            if task.startswith("niah") or task == "qa_wiki":
                assert s.depth and all(0 <= d <= 100 for d in s.depth)
        assert [s.to_json() for s in samples] == [s.to_json() for s in generator.generate(task, length, 2)]


def test_needle_depth_can_be_pinned(generator):
    for depth in (0, 50, 100):
        (sample,) = generator.generate("niah_single_1", 3000, 1, depth=depth)
        assert abs(sample.depth[0] - depth) < 5  # noise lines are the unit: about 30 of them here
        needle = sample.input.index("One of the special magic numbers")
        relative = 100 * needle / len(sample.input)
        assert abs(relative - depth) < 10


def test_bad_requests(generator):
    with pytest.raises(HaxError, match="unknown RULER task 'nope'"):
        generator.generate("nope", 1000, 1)
    with pytest.raises(HaxError, match="too short for task cwe"):
        generator.generate("cwe", 100, 1)


def test_reads_rulers_own_files(tmp_path):
    folder = tmp_path / "niah_multikey_2"
    folder.mkdir()
    record = {"index": 0, "input": "text", "outputs": ["123"], "length": 4096, "answer_prefix": " The number is"}
    (folder / "validation.jsonl").write_text(json.dumps(record) + "\n")
    (sample,) = read_samples(folder / "validation.jsonl")
    assert (sample.task, sample.metric, sample.max_new_tokens, sample.prompt) == (
        "niah_multikey_2",
        "all",
        128,
        "text The number is",
    )
    assert RulerSample.from_record({**record, "task": "qa_2"}).metric == "part"


def test_cli_make_and_unknown_task(built_corpus, tiny_tokenizer, tmp_path, capsys):
    out = tmp_path / "tasks.jsonl"
    common = ["--corpus", str(built_corpus), "--tokenizer", str(tiny_tokenizer.path), "--split", "train"]
    make = ["ruler", "make", "--out", str(out), "--lengths", "2500", "--samples", "2", *common]
    assert main([*make, "--tasks", "niah_single_2,vt"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task"] for r in rows] == ["niah_single_2"] * 2 + ["vt"] * 2
    capsys.readouterr()
    assert main([*make, "--tasks", "niah_single_2,bogus", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hax: error: unknown RULER task 'bogus'")
