import json
import re

import pytest

from hax_ssm.errors import HaxError
from hax_ssm.train.sweep import expand_sweep, load_sweep


def _write(tmp_path, spec):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(spec))
    return path


def test_cells_cross_the_grid_and_names_are_unique(tmp_path):
    spec = {
        "data_dir": "d",
        "train": {"steps": 100, "warmup_steps": 10},
        "cells": [{"base_arch": "mamba"}, {"base_arch": "mamba2", "width": "2x"}],
        "grid": {"sparse_arch": ["none", "hax"], "lr": [1e-3, 3e-3], "seed": [0, 1]},
    }
    runs = expand_sweep(load_sweep(_write(tmp_path, spec)), tmp_path / "sw")
    assert len(runs) == 2 * 2 * 2 * 2
    assert len({r.name for r in runs}) == len(runs)
    hax = [r for r in runs if r.config.base_arch == "mamba2" and r.config.sparse_arch != "none"]
    assert all(r.config.sparse_arch == "sign_bin_lsh+key_selection" and r.config.width == "2x" for r in hax)
    assert all(r.config.steps == 100 and r.config.warmup_steps == 10 for r in runs)
    assert runs[0].config.save_dir == str(tmp_path / "sw" / "runs" / runs[0].name)


def test_committed_sweep_files_expand(tmp_path):
    from pathlib import Path

    for path in sorted(Path("configs/sweeps").glob("*.json")):
        runs = expand_sweep(load_sweep(path), tmp_path)
        assert runs, path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"data_dir": "d", "gird": {}}, "unknown key 'gird'"),
        ({"data_dir": "d", "train": {"stepz": 3}}, "unknown key 'stepz'"),
        ({"data_dir": "d", "grid": {"lr": []}}, "grid['lr'] must be a non-empty list"),
        ({"data_dir": "d", "grid": {"base_arch": ["mamba3"]}}, "--base-arch 'mamba3'"),
        ({"data_dir": "d", "cells": [{"lr": 1e-3}], "grid": {"lr": [1e-3]}}, "both in a cell and in the grid"),
        ({"data_dir": "d", "grid": {"seed": [0, 0]}}, "share the name"),
        ({"train": {}}, "no data_dir"),
    ],
)
def test_bad_sweep_files_are_refused(tmp_path, spec, message):
    with pytest.raises(HaxError, match=re.escape(message)):
        expand_sweep(load_sweep(_write(tmp_path, spec)), tmp_path / "sw")
    assert not (tmp_path / "sw").exists()
