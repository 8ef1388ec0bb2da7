"""The fixed-state experiment: trains with the library's trainer, resumes, scores exact match right."""

import json
from dataclasses import replace

import pytest
import torch

from hax_ssm.data import RecallLoader
from hax_ssm.errors import HaxError
from hax_ssm.theory.fixed_state import (
    BoundExperiment,
    FixedStateModel,
    prepare_data,
    recall_by_entries,
    run_bound_experiment,
)

TINY = BoundExperiment(
    sizes="2-2,2-3",
    train_per_pair=64,
    eval_per_pair=8,
    steps=4,
    batch_size=8,
    warmup_steps=1,
    models=(FixedStateModel("tiny", 8, 2), FixedStateModel("tiny+sw", 8, 2, "sliding_window", 4)),
)


def test_runs_scores_and_resumes(tmp_path):
    body = run_bound_experiment(tmp_path, TINY, progress=False)
    assert [m["name"] for m in body["models"]] == ["tiny", "tiny+sw"]
    for model in body["models"]:
        rows = model["by_entries"]
        assert [r["entries"] for r in rows] == [4, 6]
        assert all(r["samples"] == 8 for r in rows)
        assert all(0 <= r["exact_match"] <= r["value_accuracy"] <= 1 for r in rows)
        assert all(r["exact_recall_bound"] == 1.0 for r in rows)  # thousands of bits, a few entries
    assert body["models"][1]["state_bits"] > body["models"][0]["state_bits"]
    results = tmp_path / "tiny" / "results.json"
    stamp = results.stat().st_mtime_ns
    assert run_bound_experiment(tmp_path, TINY, progress=False) == body  # finished runs are not trained again
    assert results.stat().st_mtime_ns == stamp


def test_killed_run_continues_and_changed_runs_are_refused(tmp_path):
    short = replace(TINY, steps=2, models=TINY.models[:1])
    run_bound_experiment(tmp_path, short, progress=False)
    (tmp_path / "tiny" / "results.json").unlink()  # as if killed after its last checkpoint
    longer = replace(short, steps=4)  # more steps: a resumable change
    run_bound_experiment(tmp_path, longer, progress=False)
    assert json.loads((tmp_path / "tiny" / "results.json").read_text())["steps"] == 4
    with pytest.raises(HaxError, match="--lr"):
        run_bound_experiment(tmp_path, replace(longer, lr=1e-3), progress=False)
    with pytest.raises(HaxError, match="another data set"):
        prepare_data(tmp_path / "data", replace(longer, n_values=5), progress=False)


class _Oracle(torch.nn.Module):
    """Predicts the true next token, except the value after the first scored key when ``slip``."""

    def __init__(self, slip: bool):
        super().__init__()
        self.slip = slip

    def forward(self, input_ids, attention_mask=None):
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], 1)
        if self.slip:
            from hax_ssm.data.tokens import SEP

            sep = (input_ids == SEP).int().argmax(1)
            nxt[torch.arange(len(nxt)), sep + 2] += 1  # SEP, context, key: the first answer, off by one
        return type("Out", (), {"logits": torch.nn.functional.one_hot(nxt, 100).float()})()


def test_exact_match_needs_every_value(tmp_path):
    data = prepare_data(tmp_path / "data", TINY, progress=False)
    loader = lambda: RecallLoader(data, "test", batch_size=5, shuffle=False)
    perfect = recall_by_entries(_Oracle(False), loader())
    assert all(r["value_accuracy"] == 1 and r["exact_match"] == 1 for r in perfect.values())
    slipped = recall_by_entries(_Oracle(True), loader())
    assert slipped[4]["exact_match"] == 0 and slipped[4]["value_accuracy"] == pytest.approx(3 / 4)
    assert slipped[6]["value_accuracy"] == pytest.approx(5 / 6)
