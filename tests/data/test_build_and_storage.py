import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hax_ssm.data import generate_joint_recall, generate_mqar, open_split
from hax_ssm.data.storage import DatasetWriter
from hax_ssm.data.tokens import JointRecallScheme, sequence_length, table_sizes

datasets = pytest.importorskip("datasets")  # an extra on GPU machines without it

SPLITS = ("train", "validation", "test")


def _rows(path, split):
    """Every row of a split as a tuple, read with `datasets`."""
    ds = datasets.load_from_disk(str(path))[split]
    return [(tuple(r["inputs"]), tuple(r["mask"])) for r in ds]


def test_loads_with_datasets_and_parses(jr_dir, parse_jr):
    meta = json.loads((jr_dir / "hax_data.json").read_text())
    scheme = JointRecallScheme.from_json(meta["scheme"])
    ds = datasets.load_from_disk(str(jr_dir))
    assert list(ds) == list(SPLITS)
    assert ds["train"].features["inputs"].feature.dtype == "int32"
    assert ds["train"].features["mask"].feature.dtype == "int8"
    shapes = [tuple(c["sizes"]) for c in meta["splits"]["train"]["counts"]]
    assert len(shapes) == 3 * 2
    for split, per_shape in zip(SPLITS, (60, 8, 8), strict=True):
        data = ds[split].with_format("numpy")
        inputs, masks = np.stack(data["inputs"]), np.stack(data["mask"])
        assert inputs.shape == (per_shape * len(shapes), scheme.fixed_length)
        sizes = table_sizes(inputs, scheme)
        found, counts = np.unique(sizes, axis=0, return_counts=True)
        assert sorted(map(tuple, found.tolist())) == sorted(shapes) and (counts == per_shape).all()
        for row, mask in zip(inputs, masks, strict=True):
            sample_sizes, table, inquiry, end = parse_jr(row, mask, scheme)
            assert end == sequence_length(sample_sizes)
            assert all(value == table[path] for path, value, _ in inquiry)
            assert np.flatnonzero(mask).tolist() == sorted(p for _, _, p in inquiry)
        assert open_split(jr_dir, split).content_hash() == meta["splits"][split]["sha256"]


def test_no_sequence_appears_twice(jr_dir, mqar_dir):
    for path in (jr_dir, mqar_dir):
        inputs = [r[0] for split in SPLITS for r in _rows(path, split)]
        assert len(set(inputs)) == len(inputs)


def test_same_arguments_give_identical_bytes_whatever_the_workers(tmp_path, jr_dir, jr_args):
    generate_joint_recall(tmp_path / "again", **{**jr_args, "workers": 2})
    files = sorted(p.relative_to(jr_dir) for p in jr_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for f in files:
        assert (jr_dir / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    generate_joint_recall(tmp_path / "other", **{**jr_args, "seed": 4})
    assert (tmp_path / "other/train/data-00000-of-00001.arrow").read_bytes() != (
        jr_dir / "train/data-00000-of-00001.arrow"
    ).read_bytes()


def test_exhausting_the_space_finds_every_sample(tmp_path):
    # shape (2, 1) with 2 values holds exactly 16 samples: ask for all of them
    generate_joint_recall(
        tmp_path / "d", sizes="2,1", values=2, train_per_pair=10, eval_per_pair=3, workers=1, progress=False
    )
    inputs = [r[0] for split in SPLITS for r in _rows(tmp_path / "d", split)]
    assert len(inputs) == len(set(inputs)) == 16


def test_unpadded_rows_are_the_padded_rows_cut(tmp_path, jr_dir, jr_args):
    generate_joint_recall(tmp_path / "d", **{**jr_args, "pad": False})
    for split in SPLITS:
        for (inputs, mask), (padded, padded_mask) in zip(
            _rows(tmp_path / "d", split), _rows(jr_dir, split), strict=True
        ):
            sizes = table_sizes(np.array([inputs]), JointRecallScheme(4, (4, 3), 100))[0]
            assert len(inputs) == sequence_length(tuple(sizes))
            assert padded[: len(inputs)] == inputs and padded_mask[: len(inputs)] == mask


def test_mqar_counts_and_hash(mqar_dir, mqar_args):
    meta = json.loads((mqar_dir / "hax_data.json").read_text())
    assert meta["size_names"] == ["seq_len", "pairs"]
    for split, n in zip(SPLITS, (80, 10, 10), strict=True):
        counts = {tuple(c["sizes"]): c["rows"] for c in meta["splits"][split]["counts"]}
        assert counts == {(16, 2): n, (32, 4): n, (32, 7): n}
        rows = _rows(mqar_dir, split)
        found = {}
        for inputs, mask in rows:
            key = (len(inputs), sum(mask))
            found[key] = found.get(key, 0) + 1
        assert found == counts
        assert open_split(mqar_dir, split).content_hash() == meta["splits"][split]["sha256"]
    assert mqar_args["vocab_size"] == meta["parameters"]["vocab_size"]


def test_ctrl_c_leaves_nothing(tmp_path, monkeypatch, jr_args):
    calls = []

    def interrupted(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "add", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_joint_recall(tmp_path / "d", **jr_args)
    assert list(tmp_path.iterdir()) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_kill_leaves_no_partial_dataset_and_no_workers(tmp_path):
    # a child that stalls after writing a little; SIGKILL it mid-way
    script = f"""
import time
from hax_ssm.data import generate_joint_recall
from hax_ssm.data.storage import DatasetWriter
add = DatasetWriter.add
def slow_add(self, *a):
    add(self, *a)
    print("writing", flush=True)
    time.sleep(30)
DatasetWriter.add = slow_add
generate_joint_recall({str(tmp_path / "d")!r}, sizes="2-5,2", train_per_pair=5, eval_per_pair=1, progress=False)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "writing"
    children = Path(f"/proc/{child.pid}/task/{child.pid}/children")
    workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (tmp_path / "d").exists()
    leftovers = list(tmp_path.iterdir())
    assert all(".tmp-" in p.name for p in leftovers)
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, workers)), "worker processes outlived their parent"
    generate_joint_recall(tmp_path / "d", sizes="2,2", train_per_pair=5, eval_per_pair=1, workers=1, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["d"], "a later run sweeps the leftovers"


def test_mqar_deterministic_across_workers(tmp_path, mqar_dir, mqar_args):
    generate_mqar(tmp_path / "m", **{**mqar_args, "workers": 2})
    for split in SPLITS:
        assert (tmp_path / "m" / split / "data-00000-of-00001.arrow").read_bytes() == (
            mqar_dir / split / "data-00000-of-00001.arrow"
        ).read_bytes()


@pytest.mark.parametrize("mode", ["direct", "no O_DIRECT", "refused at write"])
def test_direct_file_writes_exact_bytes(tmp_path, monkeypatch, mode):
    from hax_ssm.data.storage import DirectFile

    if mode == "no O_DIRECT":
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    if mode == "refused at write":
        real_write, calls = os.write, []

        def refuse_once(fd, data):
            calls.append(1)
            if len(calls) == 1:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", refuse_once)
    monkeypatch.setattr(DirectFile, "CHUNK", 1 << 16)
    rng = np.random.default_rng(0)
    pieces = [rng.bytes(int(n)) for n in rng.integers(0, 50_000, 40)]
    f = DirectFile(tmp_path / "f")
    assert sum(f.write(p) for p in pieces) == f.tell() == sum(map(len, pieces))
    f.close()
    assert (tmp_path / "f").read_bytes() == b"".join(pieces)
