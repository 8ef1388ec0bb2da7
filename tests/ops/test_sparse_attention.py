"""The O(L*k) sparse path against the dense L x L oracle, for every pattern and the unions."""

import pytest
import torch

import hax_ssm.ops.attention.sparse as sparse_impl
from hax_ssm.errors import HaxError
from hax_ssm.ops.attention import sparse_attention
from hax_ssm.ops.attention.sparse import GatherAttention
from hax_ssm.ops.patterns import PATTERNS, parse_sparse_arch

UNIONS = (
    "sliding_window+dilated",
    "sliding_window+sink",
    "hax",
    "argmax_lsh+key_selection",
    "sliding_window+sink+dilated+sign_bin_lsh+key_selection",
)
ARCHS = PATTERNS + UNIONS
LENGTHS = (1, 7, 63, 257, 1058)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Many query chunks even at small L, so the chunk loops and their edges are exercised."""
    monkeypatch.setattr(sparse_impl, "CHUNK_ELEMENTS", 1 << 15)


def make_spec(arch, length, keys_per_part=4):
    """Small budgets and few hashes: buckets overflow k_c and dilation spans the whole sequence."""
    n_parts = len(parse_sparse_arch(arch, sparse_keys=60).parts)
    return parse_sparse_arch(
        arch,
        sparse_keys=keys_per_part * n_parts,
        num_hash=2 if "sign_bin" in arch else 3,
        data_max_length=max(length, keys_per_part),
    )


def make_inputs(spec, length, batch=3, padding="right", dtype=torch.float32, dk=4, dv=5):
    b, n = batch, length
    q, k, v = torch.randn(b, n, dk), torch.randn(b, n, dk), torch.randn(b, n, dv)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    lengths = torch.tensor([n, max(n - 3, 0), n // 2])[:b]  # one sequence may be all padding
    pos = torch.arange(n)[None]
    mask = pos < lengths[:, None] if padding == "right" else pos >= (n - lengths)[:, None]
    buckets = min(max(spec.num_buckets, 1), 8)
    extra = {
        "q_buckets": torch.randint(0, buckets, (b, n)),
        "k_buckets": torch.randint(0, buckets, (b, n)),
        "key_scores": torch.randint(0, 5, (b, n)).float() / 2,  # quantised: many ties
        "attention_mask": mask,
    }
    return q, k, v, extra


def run(impl, spec, q, k, v, extra, grad_out):
    out = sparse_attention(q, k, v, spec, impl=impl, **extra)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return (out, *grads)


def assert_close(actual, expected, tol):
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


def compare(arch, length, padding="right", dtype=torch.float32, tol=1e-5):
    spec = make_spec(arch, length)
    q, k, v, extra = make_inputs(spec, length, padding=padding, dtype=dtype)
    grad_out = torch.randn(v.shape).to(dtype)
    expected = run("reference", spec, q, k, v, extra, grad_out)
    actual = run("sparse", spec, q, k, v, extra, grad_out)
    for a, e in zip(actual, expected, strict=True):
        assert torch.isfinite(a).all()
        assert_close(a.float(), e.float(), tol)
    return expected


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_matches_reference_fp32(arch, length):
    compare(arch, length)


@pytest.mark.parametrize("arch", ARCHS)
def test_sparse_matches_reference_bf16(arch):
    compare(arch, 257, dtype=torch.bfloat16, tol=2e-2)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padding_and_empty_queries_give_zero(arch):
    out, *_ = compare(arch, 63, padding="left")
    # the third sequence is left-padded by 32: its first queries see no real key at all
    assert torch.equal(out[2, :32], torch.zeros_like(out[2, :32]))


@pytest.mark.parametrize("arch", ("sign_bin_lsh", "hax"))
def test_sign_bin_buckets_near_2_pow_63(arch):
    spec = parse_sparse_arch(arch, sparse_keys=4 * (1 + (arch == "hax")), num_hash=63, data_max_length=64)
    q, k, v, extra = make_inputs(spec, 64)
    huge = torch.tensor([0, 1, 2**62, 2**63 - 1, 2**63 - 2])
    extra["q_buckets"] = huge[torch.randint(0, 5, (3, 64))]
    extra["k_buckets"] = huge[torch.randint(0, 5, (3, 64))]
    grad_out = torch.randn(v.shape)
    expected = run("reference", spec, q, k, v, extra, grad_out)
    for a, e in zip(run("sparse", spec, q, k, v, extra, grad_out), expected, strict=True):
        assert_close(a, e, 1e-5)


@pytest.mark.parametrize("impl", ("reference", "sparse"))
@pytest.mark.parametrize("arch", ARCHS)
def test_causal_at_op_level(arch, impl):
    n, t = 48, 29
    spec = make_spec(arch, n)
    q, k, v, extra = make_inputs(spec, n)
    out = sparse_attention(q, k, v, spec, impl=impl, **extra)
    future = torch.arange(n) > t
    q2, k2, v2 = (torch.where(future[None, :, None], torch.randn_like(x), x) for x in (q, k, v))
    extra2 = dict(extra)
    extra2["q_buckets"] = torch.where(future, torch.randint_like(extra["q_buckets"], 0, 8), extra["q_buckets"])
    extra2["k_buckets"] = torch.where(future, torch.randint_like(extra["k_buckets"], 0, 8), extra["k_buckets"])
    extra2["key_scores"] = torch.where(future, torch.randn_like(extra["key_scores"]) * 10, extra["key_scores"])
    extra2["attention_mask"] = extra["attention_mask"] | future  # future padding becomes real, too
    out2 = sparse_attention(q2, k2, v2, spec, impl=impl, **extra2)
    torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(out2[:, t + 1 :], out[:, t + 1 :])


def test_gather_attention_gradcheck_with_empty_rows_and_duplicates():
    b, n, w = 2, 6, 4
    q, k = torch.randn(b, n, 3, dtype=torch.float64), torch.randn(b, n, 3, dtype=torch.float64)
    v = torch.randn(b, n, 2, dtype=torch.float64)
    idx = torch.randint(0, n, (b, n, w))
    valid = torch.rand(b, n, w) < 0.7
    valid[0, 2] = False  # a query without keys
    inputs = [t.requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda *a: GatherAttention.apply(*a, idx, valid), inputs)
    out = GatherAttention.apply(*inputs, idx, valid)
    assert torch.equal(out[0, 2], torch.zeros(2, dtype=torch.float64))


def test_dilated_before_its_first_key():
    spec = parse_sparse_arch("dilated", sparse_keys=4, data_max_length=64)  # r = 16: no key before 15
    q, k, v, extra = make_inputs(spec, 10)
    out = sparse_attention(q, k, v, spec, attention_mask=extra["attention_mask"])
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(v.grad, torch.zeros_like(v))


def test_heads_folded_into_batch_equal_separate_calls():
    spec = parse_sparse_arch("sliding_window", sparse_keys=8)
    q, k, v = torch.randn(6, 20, 4), torch.randn(6, 20, 4), torch.randn(6, 20, 5)
    together = sparse_attention(q, k, v, spec)
    apart = torch.cat([sparse_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], spec) for i in range(6)])
    torch.testing.assert_close(together, apart)


@pytest.mark.parametrize(
    ("arch", "kwargs", "match"),
    [
        ("sink", {"impl": "triton"}, "impl='triton'"),
        ("sign_bin_lsh", {}, "q_buckets"),
        ("key_selection", {}, "key_scores"),
        ("sink", {"attention_mask": torch.ones(2, 3, dtype=torch.bool)}, "attention_mask"),
        ("sink", {"k": torch.randn(2, 8, 4)}, "k: expected"),
        ("dilated", {"q": torch.randn(2, 65, 4), "k": torch.randn(2, 65, 4), "v": torch.randn(2, 65, 5)}, "65"),
    ],
)
def test_bad_input_is_one_line_error(arch, kwargs, match):
    spec = parse_sparse_arch(arch, sparse_keys=4, data_max_length=64)
    kwargs = dict(kwargs)
    tensors = {"q": torch.randn(2, 9, 4), "k": torch.randn(2, 9, 4), "v": torch.randn(2, 9, 5)}
    tensors.update({name: kwargs.pop(name) for name in ("q", "k", "v") if name in kwargs})
    with pytest.raises(HaxError, match=match) as err:
        sparse_attention(tensors["q"], tensors["k"], tensors["v"], spec, **kwargs)
    assert "\n" not in str(err.value)
