"""The torch index work of the Triton path (CPU, no triton needed) against the dense oracles."""

import pytest
import torch

from hax_ssm.ops.attention.triton.index import (
    INT64_MIN,
    NO_KEY,
    Blocks,
    Parts,
    far_key_segments,
    ks_thresholds,
    lsh_index,
    lsh_items,
    pack_scores,
    prefix_topk_blocks,
    unpack_positions,
)
from hax_ssm.ops.key_selection import prefix_topk_mask_dense
from hax_ssm.ops.lsh import lsh_mask_dense
from hax_ssm.ops.patterns import parse_sparse_arch
from tests.ops.sparse_helpers import right_padded


def padded_mask(n):
    mask = right_padded([n, n // 2, n], n)
    mask[0, n // 3] = False  # a hole in the middle
    mask[2, : n // 4] = False  # left padding
    return mask


def test_packing_orders_by_score_then_earlier_position():
    scores = torch.tensor([[0.0, -0.0, 1.5, -2.0, 1.5, float("inf"), -float("inf"), 3e-39, -3e-39, -2.0]])
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask[0, 7] = False
    packed = pack_scores(scores, mask)[0]
    n = scores.shape[1]
    for a in range(n):
        for b in range(n):
            if not (mask[0, a] and mask[0, b]):
                continue
            better = scores[0, a] > scores[0, b] or (scores[0, a] == scores[0, b] and a < b)
            assert bool(packed[a] > packed[b]) == better, (a, b)
    assert packed[7] == INT64_MIN and (packed[mask[0]] > INT64_MIN).all()
    assert unpack_positions(packed).tolist() == [j if mask[0, j] else -1 for j in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "k_c", "bq"), [(1, 4, 16), (7, 4, 2), (63, 4, 16), (130, 5, 16), (40, 24, 16)])
def test_thresholds_select_the_prefix_topk(n, k_c, bq, dtype):
    torch.manual_seed(n)
    scores = (torch.randint(0, 4, (3, n)).float() - 1.5).to(dtype)  # heavy ties
    mask = padded_mask(n)
    packed = pack_scores(scores, mask)
    prefix = prefix_topk_blocks(packed, k_c, bq)
    nb = prefix.shape[1]
    for blk in range(nb):  # the prefix list is the top k_c of everything before the block
        before = packed[:, : blk * bq]
        expected = torch.cat([before, torch.full((3, k_c), INT64_MIN)], 1).topk(k_c, dim=1).values
        assert torch.equal(prefix[:, blk], expected)
    threshold = ks_thresholds(packed, prefix, k_c, bq)
    pos = torch.arange(n)
    predicate = mask[:, None, :] & (pos[None, :] <= pos[:, None]) & (packed[:, None, :] >= threshold[:, :, None])
    assert torch.equal(predicate, prefix_topk_mask_dense(scores, mask, k_c))
    assert (threshold[:, 1:] >= threshold[:, :-1]).all()  # monotone: the backward binary-searches it


@pytest.mark.parametrize("n", [1, 7, 63, 300])
@pytest.mark.parametrize("values", [(0, 1, 2), (5,), (0, 2**63 - 1, 2**62, 7)])
def test_lsh_runs_are_the_recent_same_bucket_keys(n, values):
    torch.manual_seed(n)
    k_c = 4
    values = torch.tensor(values)
    qb, kb = (values[torch.randint(0, len(values), (3, n))] for _ in range(2))
    mask = padded_mask(n)
    idx = lsh_index(qb, kb, mask, k_c)
    dense = lsh_mask_dense(qb, kb, mask, k_c)
    assert (idx.lo[:, 1:] >= idx.lo[:, :-1]).all() and (idx.end[:, 1:] >= idx.end[:, :-1]).all()
    slots = torch.arange(n)
    for b in range(3):
        assert sorted(idx.qperm[b].tolist()) == list(range(n)) == sorted(idx.kperm[b].tolist())
        for t in range(n):
            run = (slots >= idx.lo[b, t]) & (slots < idx.end[b, t])
            got = torch.zeros(n, dtype=torch.bool)
            got[idx.kperm[b][run].long()] = True
            assert torch.equal(got, dense[b, idx.qperm[b, t]])


@pytest.mark.parametrize("n", [5, 63, 257])
@pytest.mark.parametrize("per", [1, 2, 32])
def test_lsh_items_cover_every_needed_tile_once(n, per):
    torch.manual_seed(n)
    k_c = 6
    blocks = Blocks(q=16, k=16, item=per)
    qb = torch.randint(0, 3, (2, n))
    qb[1, n // 2 :] = 7  # many queries whose bucket has few keys: long query ranges
    kb = torch.randint(0, 3, (2, n))
    kb[1, -3:] = 7
    idx = lsh_index(qb, kb, right_padded([n, n], n), k_c)
    items = lsh_items(idx, k_c, blocks)
    n_tiles = -(-n // blocks.k)
    covered = torch.zeros(2, n_tiles, -(-n // blocks.q), dtype=torch.int64)
    for e in range(len(items.batch)):
        if items.batch[e] >= 0:
            covered[items.batch[e], items.tile[e], items.qb0[e] : items.qb1[e]] += 1
            assert items.qb1[e] - items.qb0[e] <= per
    assert covered.max() <= 1
    for b in range(2):
        for t in range(n):
            lo, end = int(idx.lo[b, t]), int(idx.end[b, t])
            for tile in range(n_tiles):
                if lo < (tile + 1) * blocks.k and end > tile * blocks.k and end > lo:
                    assert covered[b, tile, t // blocks.q] == 1
    used = items.slot[items.slot >= 0]
    assert len(set(used.tolist())) == len(used) and (used < items.num_slots).all()
    multi = items.count > 1
    assert int(items.count[multi].sum()) == len(used)


def test_far_segments_group_prefix_rows_by_key():
    spec = parse_sparse_arch("sink+key_selection", sparse_keys=8)
    parts = Parts.of(spec)
    prefix_pos = torch.tensor([[[-1, -1, -1, -1], [9, 2, 5, -1], [9, 12, 5, 2], [12, 9, 20, 5]]], dtype=torch.int32)
    blocks = Blocks(q=16, chunk=1)
    n_global = 4  # the sink keys 0..3
    keys, rows = far_key_segments(parts, prefix_pos, n_global, blocks)
    valid = keys[0] != NO_KEY
    assert keys[0][valid].tolist() == [5, 5, 5, 9, 9, 9, 12, 12, 20]  # key 2 is a sink key: held by its slot
    flat = prefix_pos.flatten().tolist()
    for key, row in zip(keys[0][valid].tolist(), rows[0][valid].tolist(), strict=True):
        chunk, slot = divmod(row, n_global + 4)
        assert flat[chunk * 4 + slot - n_global] == key
    assert rows[0][valid][:3].tolist() == sorted(rows[0][valid][:3].tolist())  # chunk order within a key


@pytest.mark.parametrize(
    ("arch", "k_c", "max_length"), [("sink+dilated", 4, 40), ("dilated", 4, 40), ("sink+dilated", 4, 16)]
)
@pytest.mark.parametrize("n", [1, 7, 40])
def test_global_keys_are_sink_and_dilated_keys_once(arch, k_c, max_length, n):
    spec = parse_sparse_arch(arch, sparse_keys=k_c * len(arch.split("+")), data_max_length=max_length)
    parts = Parts.of(spec)
    sink = set(range(min(k_c, n))) if spec.has("sink") else set()
    dilated = {j for j in range(n) if j % spec.dilation == spec.dilation - 1}
    assert parts.global_keys(n, torch.device("cpu")).tolist() == sorted(sink | dilated)
