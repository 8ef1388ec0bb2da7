from pathlib import Path

import pytest

from hax_ssm.errors import HaxError
from hax_ssm.lm import longbench
from hax_ssm.lm.metrics import LONGBENCH_METRICS

FIXTURE = Path(__file__).parent / "fixtures" / "longbench.jsonl"


def test_tables_cover_the_same_tasks():
    assert set(longbench.PROMPTS) == set(longbench.MAX_NEW_TOKENS) == set(LONGBENCH_METRICS)


def test_middle_truncation_keeps_both_ends():
    ids = list(range(10))
    assert longbench.truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert longbench.truncate_middle(ids, 5) == [0, 1, 8, 9]  # int(max/2) on each side, as LongBench
    assert longbench.truncate_middle(ids, 10) == ids
    with pytest.raises(HaxError):
        longbench.truncate_middle(ids, 1)


def test_reading_and_prompts():
    samples = longbench.read_longbench(FIXTURE)
    assert [s.dataset for s in samples][:3] == ["hotpotqa", "multifieldqa_en", "trec"]
    hp = samples[0].prompt()
    assert hp.startswith("Answer the question based on the given passages.") and hp.endswith(
        "Question: Which city hosted the 1896 Summer Olympics?\nAnswer:"
    )
    assert [s.dataset for s in longbench.read_longbench(FIXTURE, ["trec_e"])] == ["trec"]


def test_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"input": "q", "context": "c", "answers": ["a"], "dataset": "dureader"}\n')
    with pytest.raises(HaxError, match="unknown LongBench data set 'dureader'"):
        longbench.read_longbench(bad)
    bad = tmp_path / "hotpotqa.jsonl"
    bad.write_text('{"input": "q"}\n')
    with pytest.raises(HaxError, match=r"hotpotqa\.jsonl:1: not a LongBench record"):
        longbench.read_longbench(bad)


def test_first_line_rule_and_best_answer():
    assert (
        longbench.score_prediction(
            "trec", "Distance, linear measure\nCity", ["Distance, linear measure"], ["Distance, linear measure", "City"]
        )
        == 1.0
    )
    assert longbench.score_prediction("multifieldqa_en", "100", ["100 degrees Celsius", "100"], None) == 1.0
