import pytest

from hax_ssm.cli import main

SMALL = ["--train-per-pair", "4", "--eval-per-pair", "2", "--no-progress", "--workers", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-side", "0"], "--min-side 0: a table side must be at least 1"),
        (["--max-keys", "3"], "--max-keys 3: must be >= --min-side 5"),
        (["--max-contexts", "4", "--min-side", "5"], "--max-contexts 4: must be >= --min-side 5"),
        (["--sizes", "0-3,2"], "--sizes level 1 minimum 0"),
        (["--sizes", "4-2,2"], "--sizes level 1 range 4-2: the minimum is above the maximum"),
        (["--sizes", "2-x"], "--sizes '2-x': expected comma-separated ranges"),
        (["--sizes", "2,2", "--levels", "3"], "--levels 3: --sizes gives 2 level ranges"),
        (["--levels", "0"], "--levels 0: must be at least 1"),
        (["--values", "1"], "--values 1: need at least 2 distinct values"),
        (
            ["--max-keys", "60", "--max-contexts", "20"],
            "raise --vocab-size to at least 106 or lower --values, --max-keys",
        ),
        (["--sizes", "1,1", "--values", "2"], "table shape (1, 1) has only 2 distinct samples but 8 are requested"),
        (["--seed", "-1"], "--seed -1: must be >= 0"),
        (["--workers", "0"], "--workers 0: must be at least 1"),
    ],
)
def test_joint_recall_bad_input_is_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "d"
    assert main(["data", "joint-recall", "--out", str(out), *SMALL, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hax: error:") and message in err[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seq-len", "30", "--pairs", "8"], "--seq-len 30: 8 pairs need at least 32 tokens"),
        (["--seq-len", "33", "--pairs", "2"], "--seq-len 33: must be even"),
        (["--pairs", "40", "--seq-len", "256", "--vocab-size", "64"], "raise --vocab-size to at least 82"),
        (["--seq-len", "64,x"], "--seq-len '64,x': expected comma-separated integers"),
        (
            ["--seq-len", "8", "--pairs", "2", "--vocab-size", "6", "--no-random-fill", "--train-per-config", "30"],
            "has only 24 distinct samples but 34",
        ),
    ],
)
def test_mqar_bad_input_is_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "m"
    small = ["--train-per-config", "10", "--eval-per-config", "2", "--no-progress", "--workers", "1"]
    assert main(["data", "mqar", "--out", str(out), *small, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hax: error:") and message in err[0], err
    assert not out.exists()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["data", "joint-recall", "--out", str(out), "--sizes", "2,2", *SMALL]
    assert main(args) == 0
    before = (out / "hax_data.json").read_text()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not empty: pass --overwrite" in err[0]
    assert (out / "hax_data.json").read_text() == before
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert (out / "hax_data.json").read_text() != before


def test_generate_and_info(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "mqar",
                "--out",
                str(tmp_path / "m"),
                "--seq-len",
                "16",
                "--pairs",
                "2",
                "--vocab-size",
                "32",
                "--train-per-config",
                "20",
                "--eval-per-config",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "rows: train 20, validation 4, test 4" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "m")]) == 0
    assert "mqar at" in capsys.readouterr().out
