"""Fast sequence mixers against their slow references: Mamba scan, Mamba2 SSD, causal conv."""

import pytest
import torch

from hax_ssm.ops.conv import causal_conv1d, causal_conv1d_ref
from hax_ssm.ops.scan import selective_scan, selective_scan_chunked, selective_scan_ref
from hax_ssm.ops.ssd import segsum, ssd, ssd_chunked, ssd_ref

LENGTHS = [1, 7, 63, 130]


def _leaf(*shape, dtype=torch.float32, scale=1.0, shift=0.0):
    return (torch.randn(*shape) * scale + shift).to(dtype).requires_grad_()


def _scan_inputs(length, dtype=torch.float32, batch=2, d=6, n=4):
    x, z = _leaf(batch, length, d, dtype=dtype), _leaf(batch, length, d, dtype=dtype)
    # wide dt range: some steps decay by more than e^-88 over a chunk, which breaks naive cumsum forms
    dt = torch.exp(torch.randn(batch, length, d) * 2).to(dtype).requires_grad_()
    A = (-torch.rand(d, n) * 8 - 0.1).requires_grad_()
    B, C = _leaf(batch, length, n, dtype=dtype), _leaf(batch, length, n, dtype=dtype)
    D, h0 = _leaf(d), _leaf(batch, d, n)
    return {"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": D, "z": z, "initial_state": h0}


def _ssd_inputs(length, dtype=torch.float32, batch=2, heads=4, head_dim=3, groups=2, n=5):
    return {
        "x": _leaf(batch, length, heads, head_dim, dtype=dtype),
        "dt": torch.exp(torch.randn(batch, length, heads) * 2).to(dtype).requires_grad_(),
        "A": (-torch.rand(heads) * 8 - 0.1).requires_grad_(),
        "B": _leaf(batch, length, groups, n, dtype=dtype),
        "C": _leaf(batch, length, groups, n, dtype=dtype),
        "D": _leaf(heads),
        "initial_state": _leaf(batch, heads, head_dim, n),
    }


def _conv_inputs(length, dtype=torch.float32, batch=2, d=6, k=4):
    return {
        "x": _leaf(batch, length, d, dtype=dtype),
        "weight": _leaf(d, k),
        "bias": _leaf(d),
        "initial_state": _leaf(batch, k - 1, d, dtype=dtype),
    }


def _outputs_and_grads(fn, inputs, **kwargs):
    y, state = fn(**inputs, return_final_state=True, **kwargs)
    (y.float().square().sum() + state.float().square().sum()).backward()
    grads = {name: t.grad.clone() for name, t in inputs.items()}
    for t in inputs.values():
        t.grad = None
    return y, state, grads


def _close(actual, expected, tol, what=""):
    """Tolerance relative to the largest entry: sums of large terms cancel to small ones."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, atol=tol * scale, rtol=tol, msg=what or None)


def _assert_same(a, b, tol):
    ya, sa, ga = a
    yb, sb, gb = b
    _close(ya, yb, tol)
    _close(sa, sb, tol)
    for name in ga:
        _close(ga[name], gb[name], tol, f"gradient of {name}")


CASES = {
    "scan": (_scan_inputs, selective_scan_ref, lambda **kw: selective_scan_chunked(**kw, chunk_size=16)),
    "ssd": (_ssd_inputs, ssd_ref, lambda **kw: ssd_chunked(**kw, chunk_size=16)),
    "conv": (_conv_inputs, causal_conv1d_ref, lambda **kw: causal_conv1d(**kw, activation="silu")),
}


def _ref(name):
    fn = CASES[name][1]
    return (lambda **kw: fn(**kw, activation="silu")) if name == "conv" else fn


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_fast_equals_reference_fp32(name, length, seeded):
    make, _, fast = CASES[name]
    inputs = make(length)
    _assert_same(_outputs_and_grads(fast, inputs), _outputs_and_grads(_ref(name), inputs), tol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_fast_equals_reference_bf16(name, seeded):
    make, _, fast = CASES[name]
    inputs = make(37, dtype=torch.bfloat16)
    y_fast, s_fast = fast(**inputs, return_final_state=True)
    assert y_fast.dtype == torch.bfloat16
    as_fp32 = {k: v.detach().float() for k, v in inputs.items()}
    y_ref, s_ref = _ref(name)(**as_fp32, return_final_state=True)
    _close(y_fast.float(), y_ref, 2e-2)
    _close(s_fast.float(), s_ref, 2e-2)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("impl_fn", ["ref", "fast"])
def test_state_carries_across_calls(name, impl_fn, seeded):
    """Two calls, the second starting from the first's final state, equal one call."""
    make, _, fast = CASES[name]
    fn = _ref(name) if impl_fn == "ref" else fast
    inputs = {k: v.detach() for k, v in make(29).items()}
    whole, whole_state = fn(**inputs, return_final_state=True)
    seq_keys = [k for k, v in inputs.items() if v.dim() >= 3 and v.shape[1] == 29 and k != "initial_state"]
    first = {**inputs, **{k: inputs[k][:, :11] for k in seq_keys}}
    y1, state = fn(**first, return_final_state=True)
    second = {**inputs, **{k: inputs[k][:, 11:] for k in seq_keys}, "initial_state": state}
    y2, final = fn(**second, return_final_state=True)
    _close(torch.cat([y1, y2], dim=1), whole, 1e-5)
    _close(final, whole_state, 1e-5)


def test_dispatchers_pick_and_refuse(seeded):
    inputs = {k: v.detach() for k, v in _scan_inputs(9).items()}
    auto, _ = selective_scan(**inputs)
    chunked, _ = selective_scan(**inputs, impl="chunked")
    torch.testing.assert_close(auto, chunked, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="impl 'fast'"):
        selective_scan(**inputs, impl="fast")
    ssd_inputs = {k: v.detach() for k, v in _ssd_inputs(9).items()}
    torch.testing.assert_close(ssd(**ssd_inputs)[0], ssd(**ssd_inputs, impl="ref")[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="impl 'fast'"):
        ssd(**ssd_inputs, impl="fast")


def test_segsum_sums_exactly_the_segment():
    a = torch.randn(6)
    out = segsum(a)
    for i in range(6):
        for j in range(6):
            expected = a[j + 1 : i + 1].sum() if j <= i else -torch.inf
            torch.testing.assert_close(out[i, j], torch.as_tensor(expected, dtype=out.dtype))


def test_conv_without_state_is_zero_left_padding(seeded):
    x, w = torch.randn(1, 5, 3), torch.randn(3, 4)
    y, _ = causal_conv1d(x, w)
    y0, _ = causal_conv1d(x, w, initial_state=torch.zeros(1, 3, 3))
    torch.testing.assert_close(y, y0)
    # y_0 sees only x_0, through the last tap
    torch.testing.assert_close(y[0, 0], x[0, 0] * w[:, -1])
