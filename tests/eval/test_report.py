import json

from hax_ssm.cli import main
from hax_ssm.eval.report import collect_runs, load_paper_table, summarise, variant_of
from hax_ssm.train.config import TrainConfig


def _fake_run(root, name, *, val, test, finished=True, steps=1000, **config):
    run = root / "runs" / name
    run.mkdir(parents=True)
    cfg = TrainConfig(data_dir="d", save_dir=str(run), steps=steps, **config).validate().to_dict()
    (run / "config.json").write_text(json.dumps({"train": cfg}))
    if finished:
        best = {"step": steps, "val_accuracy": val}
        results = {"config": cfg, "best": best, "test": {"accuracy": test}, "steps": steps}
        (run / "results.json").write_text(json.dumps(results))


def _fake_sweep(root):
    # Mamba2 + HAX: lr 1e-3 wins on validation although lr 3e-3 has the higher test accuracy
    _fake_run(root, "h1", base_arch="mamba2", sparse_arch="hax", lr=1e-3, seed=0, val=0.80, test=0.75)
    _fake_run(root, "h2", base_arch="mamba2", sparse_arch="hax", lr=1e-3, seed=1, val=0.70, test=0.65)
    _fake_run(root, "h3", base_arch="mamba2", sparse_arch="hax", lr=3e-3, seed=0, val=0.50, test=0.90)
    _fake_run(root, "h4", base_arch="mamba2", sparse_arch="hax", lr=3e-3, seed=1, val=0.60, test=0.90)
    _fake_run(root, "m2x", base_arch="mamba", width="2x", lr=1e-3, seed=0, val=0.3, test=0.345)
    _fake_run(root, "samba", base_arch="samba", lr=1e-3, seed=0, val=0.1, test=0.07)
    _fake_run(root, "samba-hax", base_arch="samba", sparse_arch="hax", lr=1e-3, seed=0, val=0.2, test=0.2)
    _fake_run(root, "half", base_arch="mamba", sparse_arch="key_selection", val=0, test=0, finished=False)


def test_variant_rows_follow_the_paper():
    variant = lambda **kw: variant_of(TrainConfig(data_dir="d", save_dir="s", **kw).validate())
    assert variant(base_arch="mamba", sparse_arch="sink+sliding_window") == ("+A (SW+sink)", "mamba")
    assert variant(base_arch="mamba2", width="2x") == ("Base (2x dim)", "mamba2")
    assert variant(base_arch="samba") == ("Samba", "mamba")
    rows = [r["variant"] for r in load_paper_table()["rows"]]
    assert rows[:3] == ["Base", "+D", "+SW"] and len(rows) == 10


def test_lr_is_chosen_on_validation_and_spread_is_over_seeds(tmp_path):
    _fake_sweep(tmp_path)
    runs, unfinished = collect_runs(tmp_path)
    assert unfinished == ["runs/half"]
    cells = {(c.row, c.column): c for c in summarise(runs)}
    hax = cells[("+HAX", "mamba2")]
    assert hax.lr == 1e-3 and hax.seeds == 2
    assert abs(hax.test_mean - 0.70) < 1e-9 and abs(hax.test_std - 0.0707107) < 1e-6


def test_report_table_against_a_fake_sweep(tmp_path, capsys):
    _fake_sweep(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    table = md.split("## Per learning rate")[0]
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    hax = [c.strip() for c in lines["+HAX"].split("|")[1:-1]]
    assert hax == ["+HAX", "-", "38.0", "70.0 ± 7.1 (n=2, lr 0.001)", "74.3"]
    base2x = [c.strip() for c in lines["Base (2x dim)"].split("|")[1:-1]]
    assert base2x == ["Base (2x dim)", "34.5 (n=1, lr 0.001)", "34.5", "-", "59.2"]
    assert [c.strip() for c in lines["Samba"].split("|")[1:-1]][1:3] == ["7.0 (n=1, lr 0.001)", "6.3"]
    assert "Samba +HAX" in lines  # a cell the paper could not run gets its own row
    assert "`runs/half`" in md
    assert (tmp_path / "report.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "report.json").read_text())
    assert {c["row"] for c in saved["cells"]} == {"+HAX", "Base (2x dim)", "Samba", "Samba +HAX"}


def test_report_of_an_empty_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "report.md").exists()
