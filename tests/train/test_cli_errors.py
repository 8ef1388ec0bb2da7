"""Bad input through ``hax``: one line on stderr, exit 2, nothing written or overwritten."""

import json

import pytest

from hax_ssm.cli import main


def _one_line_error(capsys, code: int, *needles: str) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hax: error:") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--base-arch", "mamba3"], ["--base-arch 'mamba3'", "mamba, mamba2, samba"]),
        (["--sparse-arch", "hax+sliding_windw"], ["unknown pattern 'sliding_windw'"]),
        (["--width", "4x"], ["--width '4x'", "1x, 2x"]),
        (["--batch-size", "0"], ["--batch-size 0: must be a positive integer"]),
        (["--batch-size", "many"], ["--batch-size", "integer"]),
        (["--steps", "-1"], ["--steps -1: must be a positive integer"]),
        (["--sparse-arch", "hax", "--sparse-keys", "7"], ["does not split evenly"]),
        (["--model-override", "hidden_size"], ["--model-override 'hidden_size'"]),
    ],
)
def test_bad_train_options(tmp_path, capsys, args, needles):
    save = tmp_path / "run"
    code = main(["train", "--data-dir", str(tmp_path / "data"), "--save-dir", str(save), *args])
    _one_line_error(capsys, code, *needles)
    assert not save.exists()


def _arrow_split(path, columns: dict) -> None:
    import pyarrow as pa

    path.mkdir(parents=True)
    table = pa.table({name: pa.array(values, type=pa.list_(pa.int32())) for name, values in columns.items()})
    with pa.ipc.new_stream(str(path / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)


@pytest.mark.parametrize("problem", ["missing", "empty", "wrong_columns"])
def test_data_dir_that_is_not_a_dataset(tmp_path, capsys, problem):
    data = tmp_path / "data"
    if problem == "empty":
        data.mkdir()
    if problem == "wrong_columns":
        for split in ("train", "validation", "test"):
            _arrow_split(data / split, {"input_ids": [[1, 2, 3]], "labels": [[0, 1, 0]]})
    save = tmp_path / "run"
    code = main(["train", "--data-dir", str(data), "--save-dir", str(save)])
    needle = {"missing": "does not exist", "empty": "not found", "wrong_columns": "no column 'inputs'"}[problem]
    _one_line_error(capsys, code, str(data), needle)
    assert not save.exists()


def test_resume_without_a_run(tmp_path, capsys):
    code = main(["train", "--save-dir", str(tmp_path / "nothing"), "--resume"])
    _one_line_error(capsys, code, "--resume: no run to resume")
    assert not (tmp_path / "nothing").exists()


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    save = tmp_path / "run"
    save.mkdir()
    (save / "metrics.jsonl").write_text("precious\n")
    code = main(["train", "--data-dir", str(tmp_path), "--save-dir", str(save)])
    _one_line_error(capsys, code, "already holds files")
    assert (save / "metrics.jsonl").read_text() == "precious\n"


def test_sweep_file_with_an_unknown_key(tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"data_dir": "d", "grid": {"lr": [1e-3]}, "sedes": [0]}))
    code = main(["sweep", str(path), "--sweep-dir", str(tmp_path / "sw")])
    _one_line_error(capsys, code, "unknown key 'sedes'")
    assert not (tmp_path / "sw").exists()


def test_eval_of_a_missing_checkpoint(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "none.pt")])
    _one_line_error(capsys, code, "none.pt")
