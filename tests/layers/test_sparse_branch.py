import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hax_ssm.errors import HaxError
from hax_ssm.layers.sparse_branch import SparseBranch
from hax_ssm.ops.patterns import PATTERNS, parse_sparse_arch

ARCHS = (*PATTERNS, "sliding_window+dilated", "sliding_window+sink", "hax", "argmax_lsh+key_selection")
ARCHS = (*ARCHS, "sliding_window+sink+dilated+sign_bin_lsh+key_selection")
D_INNER, D_STATE = 6, 4


def make_branch(arch, keys_per_part=3, impl="auto", **kwargs):
    n_parts = len(parse_sparse_arch(arch, sparse_keys=60).parts)
    kwargs = {"num_hash": 2, "data_max_length": 64, **kwargs}
    spec = parse_sparse_arch(arch, sparse_keys=keys_per_part * n_parts, **kwargs)
    return SparseBranch(D_INNER, D_STATE, spec, impl=impl)


def padded_batch(n=40, dtype=torch.float32):
    x = torch.randn(2, n, D_INNER, dtype=dtype)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, 30:] = False  # right padding
    mask[1, 11] = False  # and a hole
    return x, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_step_by_step_and_prefill_equal_forward(arch):
    torch.manual_seed(0)
    branch = make_branch(arch).double().eval()
    x, mask = padded_batch(dtype=torch.float64)
    full, loss = branch(x, mask)
    assert loss is None  # eval
    state = branch.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(x.shape[1]):
        out, state = branch.step(x[:, t], state, mask[:, t])
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-12, atol=1e-12)
    for split in (2, 17):  # a prompt shorter than k_c, and a longer one
        head, _, state = branch.prefill(x[:, :split], mask[:, :split])
        tail = []
        for t in range(split, x.shape[1]):
            out, state = branch.step(x[:, t], state, mask[:, t])
            tail.append(out)
        torch.testing.assert_close(torch.cat([head, torch.stack(tail, 1)], 1), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_at_branch_level(arch):
    torch.manual_seed(1)
    branch = make_branch(arch).eval()
    x, mask = padded_batch()
    t = 23
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 3
    mask2 = mask.clone()
    mask2[:, t + 1 :] = True
    out, _ = branch(x, mask)
    out2, _ = branch(x2, mask2)
    torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)


def test_sequence_centring_leaks_the_future_and_refuses_decoding():
    torch.manual_seed(0)
    branch = make_branch("sign_bin_lsh", lsh_center="sequence").eval()
    x, _ = padded_batch()
    x2 = x.clone()
    x2[:, 24:] += 5.0
    assert not torch.allclose(branch(x2)[0][:, :24], branch(x)[0][:, :24])
    with pytest.raises(HaxError, match="lsh_center='sequence'"):
        branch.step(x[:, 0], branch.init_state(2))


def test_left_padding_does_not_change_hax():
    """LSH and KS depend on order, not position; padding is neither key nor part of any mean."""
    torch.manual_seed(0)
    branch = make_branch("hax").eval()
    x = torch.randn(1, 30, D_INNER)
    padded = torch.cat([torch.randn(1, 9, D_INNER), x], 1)
    mask = torch.arange(39)[None] >= 9
    torch.testing.assert_close(branch(padded, mask)[0][:, 9:], branch(x)[0], rtol=1e-5, atol=1e-6)


def test_hash_redrawn_in_training_fixed_in_eval_and_saved():
    torch.manual_seed(0)
    branch = make_branch("sign_bin_lsh", keys_per_part=2, num_hash=4)
    x = torch.randn(2, 40, D_INNER)
    assert "hash_proj" in branch.state_dict()
    branch.eval()
    assert torch.equal(branch(x)[0], branch(x)[0])
    reloaded = make_branch("sign_bin_lsh", keys_per_part=2, num_hash=4).eval()
    reloaded.load_state_dict(branch.state_dict())
    assert torch.equal(reloaded(x)[0], branch(x)[0])
    branch.train()
    torch.manual_seed(5)
    first = branch(x)[0]
    torch.manual_seed(5)
    assert torch.equal(branch(x)[0], first)  # drawn from the global RNG
    assert not torch.equal(branch(x)[0], first)  # a new draw


def test_gate_loss_only_with_key_selection_in_training():
    x, mask = padded_batch()
    assert make_branch("sliding_window").train()(x, mask)[1] is None
    branch = make_branch("hax").train()
    out, loss = branch(x, mask)
    assert out.shape == x.shape and loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert branch.xx_proj.weight.grad is None  # the scorer's inputs are detached
    assert all(p.grad is not None for p in branch.scorer.parameters())


def test_reference_and_sparse_branches_train_alike():
    torch.manual_seed(0)
    sparse = make_branch("hax", impl="sparse").train()
    reference = make_branch("hax", impl="reference").train()
    reference.load_state_dict(sparse.state_dict())
    x, mask = padded_batch()
    grads = []
    for branch in (sparse, reference):
        torch.manual_seed(3)  # same hash draw and same gate-loss sample
        out, loss = branch(x, mask)
        (out.square().mean() + loss).backward()
        grads.append({name: p.grad for name, p in branch.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-5, atol=1e-6)


def test_gate_e_scales_the_output():
    branch = make_branch("sink")
    x, mask = padded_batch()
    with torch.no_grad():
        branch.E.zero_()
    assert torch.equal(branch(x, mask)[0], torch.zeros_like(x))


def test_init_kq_from_ssm():
    branch = make_branch("hax")
    b_weight, c_weight = torch.randn(D_STATE, D_INNER), torch.randn(D_STATE, D_INNER)
    branch.init_kq_from_ssm(b_weight, c_weight)
    x = torch.randn(1, 5, D_INNER)
    k, q = branch.project(x)
    torch.testing.assert_close(k, x @ b_weight.T / D_STATE**0.5)
    torch.testing.assert_close(q, x @ c_weight.T)
    with pytest.raises(HaxError, match="b_weight"):
        branch.init_kq_from_ssm(torch.randn(D_STATE, D_INNER + 1), c_weight)


def test_dilated_refuses_lengths_beyond_data_max_length():
    branch = make_branch("dilated", data_max_length=16)
    with pytest.raises(HaxError, match="data_max_length"):
        branch(torch.randn(1, 17, D_INNER))
    state = branch.init_state(1)
    for _ in range(16):
        _, state = branch.step(torch.randn(1, D_INNER), state)
    with pytest.raises(HaxError, match="data_max_length"):
        branch.step(torch.randn(1, D_INNER), state)


MEMORY_PROBE = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from hax_ssm.layers.sparse_branch import SparseBranch
from hax_ssm.ops.patterns import parse_sparse_arch
n = int(sys.argv[1])
spec = parse_sparse_arch("hax", sparse_keys=64, num_hash=8, data_max_length=n)
branch = SparseBranch(128, 16, spec).train()
x = torch.randn(1, n, 128, requires_grad=True)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out, loss = branch(x)
(out.square().mean() + loss).backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline": baseline * 1024, "peak": peak * 1024}))
"""


def test_hax_branch_at_32k_never_holds_an_l_by_l_tensor():
    """Forward+backward of one HAX branch at L=32768: an L x L bool mask alone would be 1.07 GB."""
    n = 32768
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(n)], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    rss = json.loads(result.stdout.strip().splitlines()[-1])
    grown = rss["peak"] - rss["baseline"]
    assert grown < 0.6 * n * n, f"grew {grown / 2**20:.0f} MiB: more than 60% of one L x L bool mask"
    assert rss["peak"] < 1.5 * 2**30, f"peak RSS {rss['peak'] / 2**20:.0f} MiB"
