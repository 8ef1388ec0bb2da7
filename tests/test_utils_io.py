import json

import pytest

from hax_ssm.errors import HaxError
from hax_ssm.utils.io import atomic_output_dir, atomic_write_json


def test_atomic_write_json_round_trip(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"a": 1})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(out) as tmp:
        (tmp / "part").write_text("half")
        raise KeyboardInterrupt
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_dir_refuses_non_empty_without_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(HaxError, match="--overwrite"), atomic_output_dir(out):
        pass
    assert (out / "keep").read_text() == "old"
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
