"""The Triton path against the dense oracle: outputs and gradients, every pattern and union.

GPU tests (``pytest -m gpu -n 0 tests/ops/test_triton*.py``) run the compiled kernels at the
real tile sizes. The same checks run on CPU tensors in Triton's interpreter with small tiles when triton
is installed and TRITON_INTERPRET=1 (``TRITON_INTERPRET=1 pytest -n 0 tests/ops/test_triton_attention.py``);
the default CI run (no triton) skips both.
"""

import importlib.util
import os

import pytest
import torch

from hax_ssm.ops.attention import auto_impl, sparse_attention
from hax_ssm.ops.patterns import parse_sparse_arch
from tests.ops.test_sparse_attention import ARCHS, UNIONS  # the same patterns and unions as the ops tests

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interpreter = pytest.mark.skipif(
    not (HAS_TRITON and INTERPRET), reason="needs triton and TRITON_INTERPRET=1 (kernels in the CPU interpreter)"
)


PATHS = pytest.mark.parametrize("path", ["gathered", "masked"])


def on_path(path):
    """Force the gathered (O(L * k)) or the masked (every causal tile) path, whatever the pattern and length."""
    from hax_ssm.ops.attention.triton.attention import force_path

    return force_path(path)


def tiles(**sizes):
    """Run the kernels with other tile sizes (small ones give many blocks, chunks and items at small L)."""
    from hax_ssm.ops.attention.triton.attention import tile_sizes
    from hax_ssm.ops.attention.triton.index import Blocks

    return tile_sizes(Blocks(**sizes))


SMALL_TILES = {"q": 16, "k": 16, "chunk": 2, "item": 2}


def make_spec(arch, n, keys_per_part):
    n_parts = len(parse_sparse_arch(arch, sparse_keys=60).parts)
    return parse_sparse_arch(
        arch,
        sparse_keys=keys_per_part * n_parts,
        num_hash=3 if "sign_bin" in arch else 4,
        data_max_length=max(n, keys_per_part),
    )


def make_inputs(spec, n, *, device, dtype, padding="right", dk=16, dv=None, batch=3, buckets=None):
    """Random q, k, v (+ buckets, scores with ties, a mask with padding) and a random output gradient.

    d_v defaults to the benchmark's 128 on GPU (the compiled kernels are shared), 32 in the interpreter.
    """
    dv = dv or (128 if device == "cuda" else 32)
    q, k, v = torch.randn(batch, n, dk), torch.randn(batch, n, dk) / dk**0.5, torch.randn(batch, n, dv)
    lengths = torch.tensor([n, max(n - 3, 0), n // 2, n // 3])[:batch]
    pos = torch.arange(n)[None]
    mask = pos < lengths[:, None] if padding == "right" else pos >= (n - lengths)[:, None]
    buckets = buckets or min(max(spec.num_buckets, 1), 8)
    extra = {
        "q_buckets": torch.randint(0, buckets, (batch, n)),
        "k_buckets": torch.randint(0, buckets, (batch, n)),
        "key_scores": torch.randint(0, 7, (batch, n)).float() / 2,  # quantised: many ties
        "attention_mask": mask,
    }
    grad = torch.randn(batch, n, dv)
    tensors = [x.to(device=device, dtype=dtype) for x in (q, k, v, grad)]
    return tensors, {name: x.to(device) for name, x in extra.items()}


def run(impl, spec, q, k, v, extra, grad):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = sparse_attention(q, k, v, spec, impl=impl, **extra)
    return (out, *torch.autograd.grad(out, (q, k, v), grad))


def oracle(spec, q, k, v, extra, grad):
    """The dense reference in float64 on the (already rounded) inputs."""
    return run("reference", spec, *(x.double() for x in (q, k, v)), extra, grad.double())


def assert_matches(actual, expected, dtype):
    for name, a, e in zip(("out", "dq", "dk", "dv"), actual, expected, strict=True):
        assert torch.isfinite(a).all(), f"{name}: not finite"
        err = (a.double() - e).abs().max().item() / max(1.0, e.abs().max().item())  # inputs are O(1)
        assert err <= TOL[dtype], f"{name}: relative error {err:.2e} > {TOL[dtype]:.0e}"


def check(arch, n, *, device, dtype=torch.float32, keys_per_part=4, path="auto", **inputs):
    spec = make_spec(arch, n, keys_per_part)
    (q, k, v, grad), extra = make_inputs(spec, n, device=device, dtype=dtype, **inputs)
    with on_path(path):
        actual = run("triton", spec, q, k, v, extra, grad)
    assert_matches(actual, oracle(spec, q, k, v, extra, grad), dtype)
    return actual


def check_causal(arch, n, t, *, device, path):
    """Changing every input after position t (tokens, buckets, scores, padding) never changes outputs <= t."""
    spec = make_spec(arch, n, 8)
    (q, k, v, _), extra = make_inputs(spec, n, device=device, dtype=torch.float32)
    with on_path(path):
        out = sparse_attention(q, k, v, spec, impl="triton", **extra)
    future = torch.arange(n, device=device) > t
    q2, k2, v2 = (torch.where(future[None, :, None], torch.randn_like(x), x) for x in (q, k, v))
    extra2 = dict(extra)
    for name in ("q_buckets", "k_buckets"):
        extra2[name] = torch.where(future, torch.randint_like(extra[name], 0, 8), extra[name])
    extra2["key_scores"] = torch.where(future, torch.randn_like(extra["key_scores"]) * 10, extra["key_scores"])
    extra2["attention_mask"] = extra["attention_mask"] | future
    with on_path(path):
        out2 = sparse_attention(q2, k2, v2, spec, impl="triton", **extra2)
    torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(out2[:, t + 1 :], out[:, t + 1 :])  # the change did reach the later outputs


def index_inputs(n, device):
    mask = torch.arange(n)[None] < torch.tensor([n, n // 2, n])[:, None]
    mask[2, : n // 3] = False  # left padding
    mask[0, n // 2] = False  # a hole
    scores = -torch.randint(-3, 4, (3, n)).float() / 2  # heavy ties, -0.0 and +0.0
    buckets = torch.randint(0, 4, (2, 3, n))
    return mask.to(device), scores.to(device), buckets.to(device)


def check_index_kernels(n, k_c, bq, *, device, dtype=torch.float32):
    """The index kernels against their torch twins: the gathered path's key-selection thresholds
    (index.ks_thresholds), and the masked path's packed scores, thresholds and LSH counts (q_count, k_rank of
    lsh.lsh_candidates), with buckets inside the count table and outside it (negative, above 2**32)."""
    from hax_ssm.ops.attention.triton.attention import masked_index, triton_thresholds
    from hax_ssm.ops.attention.triton.index import Blocks, Parts, key_selection_index, pack_scores
    from hax_ssm.ops.lsh import lsh_candidates

    mask, scores, (qb, kb) = index_inputs(n, device)
    scores = scores.to(dtype)
    actual = key_selection_index(scores, mask, k_c, bq, triton_thresholds)
    expected = key_selection_index(scores, mask, k_c, bq)
    for name, a, e in zip(expected._fields, actual, expected, strict=True):
        assert torch.equal(a, e), name
    parts = Parts.of(parse_sparse_arch("hax", sparse_keys=2 * k_c))
    outside = torch.rand(qb.shape, device=device) < 0.1
    far = torch.where(torch.rand(qb.shape, device=device) < 0.5, -qb - 1, qb + 2**40)
    for q_buckets, k_buckets in ((qb, kb), (torch.where(outside, far, qb), torch.where(outside.roll(1, 1), far, kb))):
        index = masked_index(parts, 4, mask.to(torch.uint8), scores, q_buckets, k_buckets, Blocks(q=bq))
        assert torch.equal(index.packed, pack_scores(scores, mask))
        assert torch.equal(index.threshold, expected.threshold)
        lsh = lsh_candidates(q_buckets, k_buckets, mask, k_c)
        assert torch.equal(index.q_count.long(), lsh.q_count)
        assert torch.equal(index.k_rank.long(), lsh.k_rank)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_auto_path_masks_short_sequences_with_lsh_or_key_selection():
    from hax_ssm.ops.attention.triton.attention import MASKED_MAX_LENGTH, force_path, uses_masked
    from hax_ssm.ops.attention.triton.index import Parts

    hax, window = (Parts.of(parse_sparse_arch(arch)) for arch in ("hax", "sliding_window+sink"))
    assert uses_masked(hax, MASKED_MAX_LENGTH) and not uses_masked(hax, MASKED_MAX_LENGTH + 1)
    assert not uses_masked(window, 64)
    with force_path("masked"):
        assert uses_masked(window, 1 << 20)
    with force_path("gathered"):
        assert not uses_masked(hax, 64)
    with pytest.raises(ValueError, match="allowed: auto, gathered, masked"), force_path("dense"):
        pass


# ---------------------------------------------------------------------------------------------------------
# CPU interpreter (small tiles, small sizes)


@interpreter
@pytest.mark.parametrize("n", [1, 9, 70])
@pytest.mark.parametrize("arch", ARCHS)
@PATHS
def test_interpreter_matches_reference(arch, n, path):
    torch.manual_seed(n)
    with tiles(**SMALL_TILES):
        check(arch, n, device="cpu", batch=2, path=path)


@interpreter
@PATHS
def test_interpreter_values_wider_than_one_launch(monkeypatch, path):
    """d_v above MAX_DV runs in channel slices (here 16 wide: 40 = 16 + 16 + 8), outputs and gradients exact."""
    import hax_ssm.ops.attention.triton as triton_path

    monkeypatch.setattr(triton_path, "MAX_DV", 16)
    torch.manual_seed(3)
    with tiles(**SMALL_TILES):
        check("hax", 40, device="cpu", batch=2, dv=40, path=path)


@interpreter
@pytest.mark.parametrize("arch", UNIONS)
@PATHS
def test_interpreter_budget_wider_than_tiles(arch, path):
    """k_c = 24 > 16-row tiles: windows span blocks, prefix lists span several tiles."""
    torch.manual_seed(3)
    with tiles(**SMALL_TILES):
        check(arch, 90, device="cpu", batch=2, keys_per_part=24, path=path)


@interpreter
@pytest.mark.parametrize("arch", ARCHS)
@PATHS
def test_interpreter_causal(arch, path):
    torch.manual_seed(8)
    with tiles(**SMALL_TILES):
        check_causal(arch, 40, 23, device="cpu", path=path)


@interpreter
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch", ["hax", "sliding_window+sink+dilated+sign_bin_lsh+key_selection"])
@PATHS
def test_interpreter_half_precision_and_left_padding(arch, dtype, path):
    torch.manual_seed(0)
    with tiles(**SMALL_TILES):
        check(arch, 50, device="cpu", dtype=dtype, padding="left", dk=32, dv=16, path=path)


@interpreter
@pytest.mark.parametrize("arch", ["dilated", "sink+dilated", "sliding_window+dilated"])
@PATHS
def test_interpreter_dilation_longer_than_the_sequence(arch, path):
    """r = 2048 // 4 = 512 > L: no dilated key at all (and the first queries may see nothing)."""
    spec = parse_sparse_arch(arch, sparse_keys=4 * len(arch.split("+")), data_max_length=2048)
    (q, k, v, grad), extra = make_inputs(spec, 40, device="cpu", dtype=torch.float32, batch=2)
    with tiles(**SMALL_TILES), on_path(path):
        assert_matches(run("triton", spec, q, k, v, extra, grad), oracle(spec, q, k, v, extra, grad), torch.float32)


@interpreter
@pytest.mark.parametrize(("n", "k_c", "bq"), [(1, 4, 16), (70, 4, 16), (90, 24, 16), (130, 5, 32), (300, 6, 16)])
def test_interpreter_index_kernels(n, k_c, bq):
    torch.manual_seed(n)
    check_index_kernels(n, k_c, bq, device="cpu")


@interpreter
def test_interpreter_lsh_items_with_many_queries_per_key():
    """Bucket 7 has 2 keys and ~40 queries: long sorted-query ranges split into several items."""
    torch.manual_seed(0)
    spec = parse_sparse_arch("sign_bin_lsh", sparse_keys=4, num_hash=3)
    (q, k, v, grad), extra = make_inputs(spec, 80, device="cpu", dtype=torch.float32, batch=2)
    extra["q_buckets"][:, 30:] = 7
    extra["k_buckets"][:, [3, 5]] = 7
    with tiles(**SMALL_TILES), on_path("gathered"):
        assert_matches(run("triton", spec, q, k, v, extra, grad), oracle(spec, q, k, v, extra, grad), torch.float32)


# ---------------------------------------------------------------------------------------------------------
# GPU (compiled kernels, default tiles)

gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("n", "k_c"), [(1058, 32), (2100, 24), (700, 100)])
def test_gpu_index_kernels(n, k_c, dtype):
    torch.manual_seed(n)
    check_index_kernels(n, k_c, 64, device="cuda", dtype=dtype)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 7, 63, 257, 1058, 4099])
@pytest.mark.parametrize("arch", ARCHS)
@PATHS
def test_gpu_matches_reference(arch, n, dtype, path):
    torch.manual_seed(n)
    check(arch, n, device="cuda", dtype=dtype, path=path)


@gpu
@pytest.mark.parametrize("arch", ARCHS)
@PATHS
def test_gpu_paper_budget_left_padding(arch, path):
    torch.manual_seed(1)
    keys_per_part = 64 // len(parse_sparse_arch(arch, sparse_keys=60).parts)
    check(arch, 1058, device="cuda", dtype=torch.bfloat16, keys_per_part=keys_per_part, padding="left", path=path)


@gpu
@pytest.mark.parametrize("arch", ARCHS)
@PATHS
def test_gpu_small_tiles(arch, path):
    """Many blocks, chunks and LSH items at a modest length (another kernel specialisation)."""
    torch.manual_seed(2)
    with tiles(**SMALL_TILES):
        check(arch, 257, device="cuda", dtype=torch.float32, path=path)


@gpu
@pytest.mark.parametrize(("dk", "dv"), [(16, 16), (16, 128), (32, 128), (64, 256), (32, 256)])
@pytest.mark.parametrize("arch", ["hax", "sliding_window+sink+dilated+sign_bin_lsh+key_selection"])
def test_gpu_head_sizes(arch, dk, dv):
    torch.manual_seed(dk + dv)
    check(arch, 1058, device="cuda", dtype=torch.bfloat16, dk=dk, dv=dv, keys_per_part=16)


@gpu
def test_gpu_language_model_width_runs_in_slices():
    """A language model's d_inner (768 = 3 launches of 256 channels) on the compiled kernels."""
    check("argmax_lsh+key_selection", 1058, device="cuda", dtype=torch.bfloat16, dk=16, dv=768, keys_per_part=16)


@gpu
@PATHS
def test_gpu_fp32_widest_head_fits(path):
    check("hax", 300, device="cuda", dtype=torch.float32, dk=64, dv=256, keys_per_part=16, path=path)


@gpu
@pytest.mark.parametrize("arch", ["hax", "sliding_window+sink+dilated"])
def test_gpu_fp16(arch):
    check(arch, 1058, device="cuda", dtype=torch.float16, keys_per_part=32)


@gpu
@pytest.mark.parametrize("arch", ["hax", "sliding_window+sink+dilated+sign_bin_lsh+key_selection"])
def test_gpu_long_sequence(arch):
    """One long sequence at the paper's budget: thousands of blocks, hundreds of chunks."""
    torch.manual_seed(3)
    check(arch, 16384, device="cuda", dtype=torch.bfloat16, keys_per_part=32, batch=1)


@gpu
def test_gpu_lsh_items_with_many_queries_per_key():
    """Heavy right padding and two buckets: padding queries share few keys; ranges split into items."""
    torch.manual_seed(4)
    n = 16384
    spec = parse_sparse_arch("argmax_lsh+key_selection", sparse_keys=64, num_hash=2)
    (q, k, v, grad), extra = make_inputs(spec, n, device="cuda", dtype=torch.float32, batch=1)
    extra["attention_mask"][:, n // 4 :] = False
    with on_path("gathered"):
        actual = run("triton", spec, q, k, v, extra, grad)
    assert_matches(actual, oracle(spec, q, k, v, extra, grad), torch.float32)


@gpu
@pytest.mark.parametrize("arch", ["hax", "sliding_window+sink+dilated+sign_bin_lsh+key_selection"])
@PATHS
def test_gpu_backward_is_deterministic(arch, path):
    torch.manual_seed(5)
    spec = make_spec(arch, 4099, 32)
    (q, k, v, grad), extra = make_inputs(spec, 4099, device="cuda", dtype=torch.bfloat16)
    with on_path(path):
        first = run("triton", spec, q, k, v, extra, grad)
        second = run("triton", spec, q, k, v, extra, grad)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@gpu
@pytest.mark.parametrize("arch", ["hax", "sliding_window+sink+dilated+sign_bin_lsh+key_selection"])
@PATHS
def test_gpu_forward_backward_capture_in_a_cuda_graph(arch, path):
    """No host sync anywhere (index work included): the op replays in a CUDA graph, with new inputs."""
    torch.manual_seed(7)
    spec = make_spec(arch, 1058, 32)
    (q, k, v, grad), extra = make_inputs(spec, 1058, device="cuda", dtype=torch.bfloat16)
    q, k, v = (x.requires_grad_() for x in (q, k, v))

    def step():
        with on_path(path):
            out = sparse_attention(q, k, v, spec, impl="triton", **extra)
        return (out, *torch.autograd.grad(out, (q, k, v), grad))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for name, x in extra.items():  # new data in the same buffers
        x.copy_(torch.randint_like(x, 0, 5) if name != "attention_mask" else x)
    with torch.no_grad():
        q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(captured, oracle(spec, q.detach(), k.detach(), v.detach(), extra, grad), torch.bfloat16)


@gpu
@pytest.mark.parametrize("arch", ARCHS)
@PATHS
def test_gpu_causal(arch, path):
    check_causal(arch, 300, 170, device="cuda", path=path)


@gpu
def test_gpu_auto_picks_triton_and_the_layer_trains():
    from hax_ssm.layers.sparse_branch import SparseBranch

    q = torch.randn(2, 8, 16, device="cuda")
    assert auto_impl(q, q) == "triton"
    assert auto_impl(q.double(), q.double()) == "sparse"
    torch.manual_seed(6)
    spec = parse_sparse_arch("hax", sparse_keys=64)
    layer = SparseBranch(128, 16, spec).cuda()
    reference = SparseBranch(128, 16, spec, impl="reference").cuda()
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(4, 1058, 128, device="cuda", requires_grad=True)
    mask = torch.arange(1058, device="cuda")[None] < torch.tensor([1058, 900, 1058, 500], device="cuda")[:, None]
    layer.eval()  # the fixed hash projection: both layers hash alike
    reference.eval()
    out, _ = layer(x, mask)
    expected, _ = reference(x, mask)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (grad_ref,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-3, atol=1e-3)
