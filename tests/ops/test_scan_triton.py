"""The Triton selective scan (and SSD through it) against the loop references: outputs and gradients.

GPU tests (``pytest -m gpu -n 0 tests/ops/test_scan_triton.py``) run the compiled kernels at
real sizes, up to the paper's length 1058 and a 16K sequence split into segments. The same checks run
on CPU tensors in Triton's interpreter, with small chunks and channel blocks so that short sequences
still span several chunks, segments and channel blocks, when triton is installed and
TRITON_INTERPRET=1 (``TRITON_INTERPRET=1 pytest -n 0 tests/ops/test_scan_triton.py``); a CI run
without triton skips both.
"""

import contextlib
import os

import pytest
import torch

from hax_ssm.errors import HaxError
from hax_ssm.ops.common import triton_importable
from hax_ssm.ops.scan import selective_scan, selective_scan_chunked, selective_scan_ref
from hax_ssm.ops.ssd import ssd, ssd_ref

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interpreter = pytest.mark.skipif(
    not (triton_importable() and INTERPRET),
    reason="needs triton and TRITON_INTERPRET=1 (kernels in the CPU interpreter)",
)
ON_INTERPRETER = pytest.param("cpu", marks=interpreter, id="interpreter")
ON_GPU = pytest.param("cuda", marks=pytest.mark.gpu, id="gpu")
OPTIONS = ("D", "z", "initial_state")


@contextlib.contextmanager
def plan(chunk=None, segments=None, block_d=None):
    """Run the kernels with other chunk / segment / channel-block sizes."""
    import hax_ssm.ops.triton_scan as ts

    old = ts.CHUNK_OVERRIDE, ts.SEGMENTS_OVERRIDE, ts.MAX_BLOCK_D
    ts.CHUNK_OVERRIDE, ts.SEGMENTS_OVERRIDE = chunk, segments
    ts.MAX_BLOCK_D = block_d or old[2]
    try:
        yield
    finally:
        ts.CHUNK_OVERRIDE, ts.SEGMENTS_OVERRIDE, ts.MAX_BLOCK_D = old


def small_plan(device, segments=None):
    """Small chunks and channel blocks in the interpreter; the real defaults on a GPU."""
    return plan(chunk=8, segments=segments, block_d=2) if device == "cpu" else plan(segments=segments)


def _leaf(t, dtype, device):
    return t.to(device=device, dtype=dtype).requires_grad_()


def scan_inputs(length, device, dtype=torch.float32, batch=2, d=4, n=4, options=OPTIONS, groups=None):
    """Random inputs with a wide dt range (some steps decay by more than e^-88 over a chunk)."""
    g = torch.Generator().manual_seed(length * 7 + d)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    bc_shape = (batch, length, n) if groups is None else (batch, length, groups, n)
    inputs = {
        "x": _leaf(rand(batch, length, d), dtype, device),
        "dt": _leaf(torch.exp(rand(batch, length, d) * 2), dtype, device),
        "A": _leaf(-torch.rand(d, n, generator=g) * 8 - 0.1, torch.float32, device),
        "B": _leaf(rand(*bc_shape), dtype, device),
        "C": _leaf(rand(*bc_shape), dtype, device),
        "D": _leaf(rand(d), torch.float32, device),
        "z": _leaf(rand(batch, length, d), dtype, device),
        "initial_state": _leaf(rand(batch, d, n), torch.float32, device),
    }
    return {k: v for k, v in inputs.items() if k not in OPTIONS or k in options}


def ssd_inputs(length, device, batch=2, heads=4, head_dim=2, groups=2, n=4):
    g = torch.Generator().manual_seed(length)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    return {
        "x": _leaf(rand(batch, length, heads, head_dim), torch.float32, device),
        "dt": _leaf(torch.exp(rand(batch, length, heads) * 2), torch.float32, device),
        "A": _leaf(-torch.rand(heads, generator=g) * 8 - 0.1, torch.float32, device),
        "B": _leaf(rand(batch, length, groups, n), torch.float32, device),
        "C": _leaf(rand(batch, length, groups, n), torch.float32, device),
        "D": _leaf(rand(heads), torch.float32, device),
        "initial_state": _leaf(rand(batch, heads, head_dim, n), torch.float32, device),
    }


def outputs_and_grads(fn, inputs, final=True, **kwargs):
    y, state = fn(**inputs, return_final_state=final, **kwargs)
    loss = (y.float() * torch.linspace(-1, 1, y.shape[-1], device=y.device)).square().sum()
    if final:
        loss = loss + state.float().square().sum()
    loss.backward()
    grads = {name: t.grad.clone() for name, t in inputs.items()}
    for t in inputs.values():
        t.grad = None
    return y, state, grads


def close(actual, expected, tol, what):
    """Tolerance relative to the largest entry: sums of large terms cancel to small ones."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol * scale, rtol=tol, msg=what)


def assert_same(fast, ref, tol):
    (yf, sf, gf), (yr, sr, gr) = fast, ref
    assert yf.dtype == yr.dtype
    close(yf, yr, tol, "y")
    if sr is not None:
        close(sf, sr, tol, "final state")
    for name in gr:
        assert torch.isfinite(gf[name]).all(), f"gradient of {name} not finite"
        close(gf[name], gr[name], tol, f"gradient of {name}")


@pytest.mark.parametrize("device", [ON_INTERPRETER, ON_GPU])
@pytest.mark.parametrize("length", [1, 7, 63])
@pytest.mark.parametrize("segments", [1, 3])
def test_scan_equals_reference_fp32(device, length, segments):
    inputs = scan_inputs(length, device)
    with small_plan(device, segments):
        fast = outputs_and_grads(selective_scan, inputs, impl="triton")
    assert_same(fast, outputs_and_grads(selective_scan_ref, inputs), 1e-5)


@pytest.mark.parametrize("device", [ON_INTERPRETER, ON_GPU])
@pytest.mark.parametrize("options", [(), ("D",), ("z",), ("initial_state",)], ids=lambda o: "+".join(o) or "plain")
def test_scan_options_and_no_final_state(device, options):
    inputs = scan_inputs(11, device, options=options)
    with small_plan(device):
        fast = outputs_and_grads(selective_scan, inputs, final=False, impl="triton")
        assert fast[1] is None
    assert_same(fast, outputs_and_grads(selective_scan_ref, inputs, final=False), 1e-5)


@pytest.mark.parametrize("device", [ON_INTERPRETER, ON_GPU])
def test_scan_many_segments_and_channel_blocks(device):
    """130 steps over 3 segments: the forward and backward carries between segments."""
    inputs = scan_inputs(130, device, batch=1, d=6)
    with small_plan(device, segments=3):
        fast = outputs_and_grads(selective_scan, inputs, impl="triton")
    assert_same(fast, outputs_and_grads(selective_scan_ref, inputs), 1e-5)


@pytest.mark.parametrize("device", [ON_INTERPRETER, ON_GPU])
def test_scan_bf16_follows_fp32(device):
    inputs = scan_inputs(37, device, dtype=torch.bfloat16)
    with small_plan(device):
        fast = outputs_and_grads(selective_scan, inputs, impl="triton")
    as_fp32 = {k: _leaf(v.detach(), torch.float32, device) for k, v in inputs.items()}
    ref = outputs_and_grads(selective_scan_ref, as_fp32)
    assert fast[0].dtype == torch.bfloat16 and fast[2]["x"].dtype == torch.bfloat16
    assert_same((fast[0].float(), *fast[1:]), (ref[0], *ref[1:]), 3e-2)


@pytest.mark.parametrize("device", [ON_INTERPRETER, ON_GPU])
def test_ssd_through_the_scan_equals_reference(device):
    """Mamba2: per-head decays, two groups of B/C; dt, A and D gradients summed back per head."""
    inputs = ssd_inputs(20, device)
    with small_plan(device, segments=2):
        fast = outputs_and_grads(ssd, inputs, impl="triton")
    assert_same(fast, outputs_and_grads(ssd_ref, inputs), 1e-5)


@pytest.mark.parametrize("device", [ON_INTERPRETER, ON_GPU])
def test_scan_reads_strided_inputs(device):
    """x, B and C as column slices of wider tensors (as the mixers pass them), z transposed in memory."""
    inputs = scan_inputs(9, device)
    wide = {k: torch.cat([v.detach(), v.detach()], dim=-1) for k, v in inputs.items() if k in ("x", "B", "C")}
    strided = {**inputs, **{k: v[..., : v.shape[-1] // 2].requires_grad_() for k, v in wide.items()}}
    strided["z"] = inputs["z"].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not strided["x"].is_contiguous() and not strided["z"].is_contiguous()
    with small_plan(device):
        fast = outputs_and_grads(selective_scan, strided, impl="triton")
    assert_same(fast, outputs_and_grads(selective_scan_ref, strided), 1e-5)


@pytest.mark.parametrize("device", [ON_INTERPRETER, ON_GPU])
@pytest.mark.parametrize("base", ["mamba", "mamba2"])
def test_models_train_the_same_with_the_triton_scan(device, base):
    """Tiny models with right padding: logits and every parameter gradient match the loop reference."""
    from hax_ssm.models import build_model

    sizes = {"hidden_size": 32, "state_size": 8}
    sizes |= {"time_step_rank": 4} if base == "mamba" else {"num_heads": 4, "head_dim": 16}
    impl_key = "scan_impl" if base == "mamba" else "ssd_impl"
    ids = torch.randint(5, 100, (2, 13), generator=torch.Generator().manual_seed(0)).to(device)
    mask = (torch.arange(13) < torch.tensor([[13], [9]])).to(device)
    grads = []
    for impl in ("ref", "triton"):
        torch.manual_seed(0)
        model = build_model(base, **sizes, **{impl_key: impl}).to(device).train()
        with plan(chunk=8):
            out = model(ids, attention_mask=mask, labels=ids)
            out.loss.backward()
        grads.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (ref_logits, ref_grads), (logits, fast_grads) = grads
    close(logits, ref_logits, 1e-5, "logits")
    for name, g in ref_grads.items():
        close(fast_grads[name], g, 1e-4, f"gradient of {name}")


def test_triton_impl_refuses_cpu_tensors_without_interpreter():
    if INTERPRET:
        pytest.skip("the interpreter runs CPU tensors")
    inputs = {k: v.detach() for k, v in scan_inputs(5, "cpu").items()}
    with pytest.raises(HaxError, match="scan impl 'triton'"):
        selective_scan(**inputs, impl="triton")
    # auto never picks Triton for CPU tensors
    torch.testing.assert_close(selective_scan(**inputs)[0], selective_scan_ref(**inputs)[0])


# ----------------------------------------------------------------------------------------- GPU only
gpu = pytest.mark.gpu


@gpu
@pytest.mark.parametrize("length", [130, 1058])
@pytest.mark.parametrize("d, n", [(128, 16), (256, 16)])
def test_gpu_paper_shapes_equal_reference(length, d, n):
    inputs = scan_inputs(length, "cuda", batch=3, d=d, n=n)
    fast = outputs_and_grads(selective_scan, inputs)  # auto: Triton on CUDA
    assert_same(fast, outputs_and_grads(selective_scan_ref, inputs), 1e-4)


@gpu
@pytest.mark.parametrize("groups", [1, 2])
def test_gpu_ssd_paper_shape(groups):
    inputs = ssd_inputs(1058, "cuda", batch=3, heads=8, head_dim=16, groups=groups, n=32)
    fast = outputs_and_grads(ssd, inputs)
    assert_same(fast, outputs_and_grads(ssd_ref, inputs), 1e-4)


@gpu
def test_gpu_long_sequence_uses_segments():
    """16K steps with one row: time is split into segments; checked against the chunked torch scan."""
    import hax_ssm.ops.triton_scan as ts

    inputs = scan_inputs(16384, "cuda", batch=1, d=32, n=16)
    assert ts._plan(1, 16384, 32, 16, 32, torch.device("cuda")).segments > 1
    fast = outputs_and_grads(selective_scan, inputs)
    assert_same(fast, outputs_and_grads(selective_scan_chunked, inputs), 1e-4)


@gpu
def test_gpu_backward_is_deterministic_at_paper_shape():
    inputs = scan_inputs(1058, "cuda", batch=64, d=128, n=16, dtype=torch.bfloat16)
    first = outputs_and_grads(selective_scan, inputs)[2]
    second = outputs_and_grads(selective_scan, inputs)[2]
    for name in first:
        assert torch.equal(first[name], second[name]), name


@gpu
def test_gpu_scan_is_cuda_graph_capturable():
    inputs = scan_inputs(200, "cuda", batch=2, d=32, n=16)
    expected = outputs_and_grads(selective_scan, inputs)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        outputs_and_grads(selective_scan, inputs)  # warm-up: compile outside the capture
        with torch.cuda.graph(graph):
            y, state = selective_scan(**inputs, return_final_state=True)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    close(y, expected[0], 1e-6, "y under a CUDA graph")
    close(state, expected[1], 1e-6, "final state under a CUDA graph")
