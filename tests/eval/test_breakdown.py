import json
from types import SimpleNamespace

import pytest
import torch

from hax_ssm.data import Batch
from hax_ssm.eval.breakdown import size_grid, write_eval_files
from hax_ssm.eval.evaluation import EvalResult, evaluate, group_accuracy


def test_group_accuracy_averages_per_size():
    sizes = torch.tensor([[5, 5], [5, 5], [5, 6]])
    got = group_accuracy(sizes, torch.tensor([1.0, 0.5, 0.25]))
    assert got == {(5, 5): (0.75, 2), (5, 6): (0.25, 1)}


class _Oracle(torch.nn.Module):
    """Predicts the next token exactly on rows whose first size is even, token 0 elsewhere (not causal:
    it only serves to check the bookkeeping of evaluate)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.sizes = None

    def forward(self, input_ids, attention_mask=None):
        nxt = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)
        logits = torch.nn.functional.one_hot(nxt, 100).float()
        wrong = (self.sizes[:, 0] % 2 == 1).view(-1, 1, 1)
        logits = torch.where(wrong, torch.nn.functional.one_hot(torch.zeros_like(nxt), 100).float(), logits)
        return SimpleNamespace(logits=logits, gate_loss=None)


def _batch(sizes):
    b = len(sizes)
    ids = torch.randint(10, 60, (b, 9))
    mask = torch.zeros(b, 9, dtype=torch.bool)
    mask[:, 2:8:2] = True
    ones = torch.ones(b, 9, dtype=torch.bool)
    return Batch(ids, mask, ones, torch.tensor(sizes), torch.arange(b), ("n_contexts", "n_keys"), step=0)


def test_evaluate_breaks_accuracy_down_by_table_shape():
    model = _Oracle()
    batches = [_batch([[2, 3], [3, 3]]), _batch([[2, 3], [3, 4]])]

    def with_sizes():
        for b in batches:
            model.sizes = b.sizes
            yield b

    model.train()
    result = evaluate(model, with_sizes(), torch.device("cpu"), "fp32")
    assert model.training  # mode restored
    assert result.samples == 4 and result.accuracy == pytest.approx(0.5)
    assert result.by_size == {(2, 3): (1.0, 2), (3, 3): (0.0, 1), (3, 4): (0.0, 1)}
    rows, cols, grid = size_grid(result)
    assert rows == [2, 3] and cols == [3, 4] and grid[0, 0] == 100 and grid[1, 0] == 0
    assert torch.isnan(torch.tensor(grid[0, 1]))  # (2, 4) has no sample


SHAPES = [(("n_contexts", "n_keys"), True), (("pairs",), True), (("a", "b", "c"), False)]


@pytest.mark.parametrize(("names", "png"), SHAPES)
def test_eval_files(tmp_path, names, png):
    keys = [(5,) * len(names), (6,) * len(names)]
    result = EvalResult(0.5, 1.2, 20, names, {keys[0]: (0.25, 10), keys[1]: (0.75, 10)})
    written = write_eval_files(tmp_path, "test", result, title="t", step=7)
    saved = json.loads((tmp_path / "test.json").read_text())
    assert saved["step"] == 7 and saved["accuracy"] == 0.5 and "provenance" in saved
    assert saved["by_size"][1] == {**dict.fromkeys(names, 6), "accuracy": 0.75, "samples": 10}
    assert ((tmp_path / "test.png") in written) == png and (tmp_path / "test.png").exists() == png
