"""``hax theory``: table sizes, outputs, one-line errors."""

import json

import pytest

from hax_ssm.cli import main
from hax_ssm.errors import HaxError
from hax_ssm.theory.commands import table_shapes


def test_table_shapes_spread_the_bits_over_the_levels():
    assert table_shapes(2, 1024) == [(4, 4), (8, 8), (16, 16), (32, 32)]
    assert table_shapes(3, 4096) == [(2, 2, 4), (4, 4, 4), (4, 8, 8), (8, 8, 16), (16, 16, 16)]
    assert table_shapes(1, 100) == [(16,), (64,)]
    with pytest.raises(HaxError, match="--max-entries 8"):
        table_shapes(2, 8)


def test_construct_writes_json_and_figure(tmp_path, capsys):
    assert (
        main(
            ["theory", "construct", "--max-entries", "64", "--levels", "2", "--levels", "3", "--out-dir", str(tmp_path)]
        )
        == 0
    )
    body = json.loads((tmp_path / "construct.json").read_text())
    assert [(r["levels"], r["entries"]) for r in body["rows"]] == [(2, 16), (2, 64), (3, 16), (3, 64)]
    assert all(r["exact_match"] == 1.0 for r in body["rows"])
    assert "git_commit" in body["provenance"]
    assert (tmp_path / "theory.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["construct", "--max-entries", "8"], "--max-entries 8: must be at least 16"),
        (["construct", "--levels", "0"], "--levels 0: must be at least 1"),
        (["bound", "--steps", "0"], "--steps 0: must be at least 1"),
    ],
)
def test_bad_options_fail_in_one_line(tmp_path, capsys, args, message):
    assert main(["theory", *args, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hax: error: {message}"]
    assert not any(tmp_path.iterdir())


def test_plot_needs_results(tmp_path, capsys):
    assert main(["theory", "plot", "--out-dir", str(tmp_path)]) == 2
    assert "no construct.json or bound.json" in capsys.readouterr().err
