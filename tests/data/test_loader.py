import numpy as np
import pytest
import torch

from hax_ssm.data import RecallLoader, load_split
from hax_ssm.data.commands import describe
from hax_ssm.data.joint_recall import draw_samples, inquiry_key_mask
from hax_ssm.data.storage import FEATURES
from hax_ssm.data.tokens import PAD, REFERENCE_SCHEME, sequence_length

datasets = pytest.importorskip("datasets")  # an extra on GPU machines without it


def _stored_rows(path, split):
    ds = datasets.load_from_disk(str(path))[split]
    return [np.array(r["inputs"]) for r in ds], [np.array(r["mask"]) for r in ds]


def test_batches_are_the_stored_rows_trimmed(jr_dir):
    inputs, masks = _stored_rows(jr_dir, "train")
    loader = RecallLoader(jr_dir, "train", batch_size=16, seed=1)
    for step in range(4):
        batch = loader.batch_at(step)
        assert batch.input_ids.dtype == torch.int64 and batch.loss_mask.dtype == torch.bool
        assert batch.attention_mask.dtype == torch.bool and batch.sizes.shape == (16, 2)
        real = [sequence_length(tuple(s)) for s in batch.sizes.tolist()]
        assert batch.input_ids.shape[1] == max(real), "trimmed to the longest real row"
        assert batch.attention_mask.sum(1).tolist() == real
        for b, row in enumerate(batch.rows.tolist()):
            width = batch.input_ids.shape[1]
            assert batch.input_ids[b].tolist() == inputs[row][:width].tolist()
            assert batch.loss_mask[b].tolist() == masks[row][:width].astype(bool).tolist()
            n_c, n_k = batch.sizes[b].tolist()
            assert int(masks[row].sum()) == n_c * n_k


def test_resume_and_purity(jr_dir):
    full = RecallLoader(jr_dir, "train", batch_size=8, seed=5)
    steps = [b for _, b in zip(range(2 * len(full) + 3), full, strict=False)]  # crosses two epochs
    resumed = RecallLoader(jr_dir, "train", batch_size=8, seed=5, start_step=len(full) + 1)
    for expected, got in zip(steps[len(full) + 1 :], resumed, strict=False):
        assert got.step == expected.step and torch.equal(got.input_ids, expected.input_ids)
        assert torch.equal(got.rows, expected.rows)
    other_seed = RecallLoader(jr_dir, "train", batch_size=8, seed=6)
    assert not torch.equal(other_seed.batch_at(0).rows, steps[0].rows)


def test_an_epoch_visits_rows_once(jr_dir):
    n = len(load_split(jr_dir, "train"))
    loader = RecallLoader(jr_dir, "train", batch_size=7, seed=2, drop_last=False)
    rows = torch.cat([loader.batch_at(s).rows for s in range(len(loader))])
    assert sorted(rows.tolist()) == list(range(n))
    dropped = RecallLoader(jr_dir, "train", batch_size=7, seed=2)
    assert len(dropped) == n // 7


@pytest.mark.parametrize("bucket", [False, True])
def test_shards_partition_the_global_batch(jr_dir, bucket):
    world = 3
    whole = RecallLoader(jr_dir, "train", batch_size=12, seed=3, bucket_by_length=bucket)
    ranks = [
        RecallLoader(jr_dir, "train", batch_size=4, seed=3, rank=r, world_size=world, bucket_by_length=bucket)
        for r in range(world)
    ]
    for step in (0, 5, len(whole) + 2):
        parts = [r.rows_at(step) for r in ranks]
        assert all(len(p) == 4 for p in parts)
        assert np.array_equal(np.concatenate(parts), whole.rows_at(step))


def test_bucketing_cuts_padding(jr_dir):
    def padding(loader):
        total = 0
        for s in range(len(loader)):
            b = loader.batch_at(s)
            total += int((~b.attention_mask).sum())
        return total

    plain = RecallLoader(jr_dir, "train", batch_size=8, seed=0)
    bucketed = RecallLoader(jr_dir, "train", batch_size=8, seed=0, bucket_by_length=True, bucket_window=8)
    assert padding(bucketed) < padding(plain) / 2
    rows = np.concatenate([bucketed.rows_at(s) for s in range(len(bucketed))])
    assert len(np.unique(rows)) == len(rows)


def test_evaluation_pass_in_order(jr_dir):
    n = len(load_split(jr_dir, "validation"))
    loader = RecallLoader(jr_dir, "validation", batch_size=10, shuffle=False)
    batches = list(loader)
    assert torch.cat([b.rows for b in batches]).tolist() == list(range(n))
    assert len(batches[-1].rows) == n - 10 * (len(batches) - 1)
    shards = [
        list(RecallLoader(jr_dir, "validation", batch_size=5, shuffle=False, rank=r, world_size=2)) for r in range(2)
    ]
    seen = sorted(torch.cat([b.rows for shard in shards for b in shard]).tolist())
    assert seen == list(range(n))


def test_mqar_sizes_and_trim(mqar_dir):
    loader = RecallLoader(mqar_dir, "train", batch_size=32, seed=0)
    assert loader.size_names == ("seq_len", "pairs")
    batch = loader.batch_at(0)
    assert {tuple(s) for s in batch.sizes.tolist()} <= {(16, 2), (32, 4), (32, 7)}
    last = batch.loss_mask.shape[1] - 1 - batch.loss_mask.flip(1).int().argmax(1)
    assert batch.attention_mask.sum(1).tolist() == (last + 2).tolist()
    assert batch.loss_mask.sum(1).tolist() == batch.sizes[:, 1].tolist()


def test_reads_the_reference_format_without_metadata(tmp_path):
    # rows with the reference ids, padded to 1058 and written by `datasets` itself
    rng = np.random.default_rng(0)
    rows, masks, shapes = [], [], [(5, 5), (6, 9), (16, 16)]
    for shape in shapes:
        tokens = draw_samples(shape, 3, REFERENCE_SCHEME, rng).astype(np.int32)
        pad = REFERENCE_SCHEME.fixed_length - tokens.shape[1]
        rows += np.pad(tokens, ((0, 0), (0, pad)), constant_values=PAD).tolist()
        masks += [np.pad(inquiry_key_mask(shape), (0, pad)).tolist()] * 3
    features = datasets.Features.from_dict(FEATURES)
    ds = datasets.Dataset.from_dict({"inputs": rows, "mask": masks}, features=features)
    datasets.DatasetDict({"train": ds, "validation": ds, "test": ds}).save_to_disk(str(tmp_path / "ref"))
    loader = RecallLoader(tmp_path / "ref", "test", batch_size=9, shuffle=False)
    batch = next(iter(loader))
    assert [tuple(s) for s in batch.sizes.tolist()] == [s for s in shapes for _ in range(3)]
    assert batch.input_ids.shape == (9, 1058) and batch.attention_mask.sum(1).tolist()[-1] == 1058
    assert batch.input_ids[0].tolist()[: sequence_length((5, 5))] == rows[0][: sequence_length((5, 5))]
    assert load_split(tmp_path / "ref", "test").useful_lengths.tolist() == [
        sequence_length(s) for s in shapes for _ in range(3)
    ]
    summary = describe(tmp_path / "ref")
    assert "no hax metadata" in summary and "rows: train 9, validation 9, test 9" in summary and " K" in summary


def test_loader_errors(jr_dir):
    with pytest.raises(ValueError, match="rank 2: must be in"):
        RecallLoader(jr_dir, "train", rank=2, world_size=2)
    with pytest.raises(ValueError, match="split 'dev' not found"):
        RecallLoader(jr_dir, "dev")
    with pytest.raises(ValueError, match="smaller than one global batch"):
        RecallLoader(jr_dir, "validation", batch_size=1000)


def test_split_lengths_match_the_per_batch_rule(jr_dir, mqar_dir):
    from hax_ssm.data.loader import useful_lengths

    for path in (jr_dir, mqar_dir):
        split = load_split(path, "train")
        rows = np.arange(len(split))
        masks = split.stored.gather_mask(rows, int(split.stored.row_length.max()))
        masks[::7] = 0  # rows without any answer keep their stored length
        expected = useful_lengths(masks, split.stored.row_length)
        split.stored.masks = [m.copy() for m in split.stored.masks]
        for f, m in enumerate(split.stored.masks):
            sel = rows[(split.stored.file_of_row == f)][::7]
            for r in sel:  # zero those rows in the copy (a loop in the test only)
                m[split.stored.mask_start[r] : split.stored.mask_start[r] + split.stored.row_length[r]] = 0
        assert np.array_equal(split.stored.useful_lengths(), expected)
