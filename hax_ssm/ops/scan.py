"""Mamba's selective scan: a diagonal linear recurrence with input-dependent dt, B and C.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t        (per channel d and state n)
    y_t = C_t . h_t + D * x_t,   then   y_t *= silu(z_t)      (when z is given)

Two implementations behind :func:`selective_scan`:
- :func:`selective_scan_ref`, the recurrence above as a loop over time. It is the oracle, and
  also the fastest plain-torch path on a CPU (DESIGN.md: a loop beat chunked and associative
  scans on 2 cores at L=1024), so ``impl="auto"`` uses it there.
- :func:`selective_scan_chunked`, a log-depth (Hillis-Steele) scan inside chunks, run for all
  chunks at once, then a short loop carrying the state across chunks; its backward is the same
  scan run backwards in time. About ``4 log2(chunk) + 2 L / chunk`` kernel launches instead of
  ``~3 L``: the GPU path. Every factor it multiplies is a decay <= 1, so it is stable for any dt
  (a cumsum of log decays then ``exp(-cumsum)`` overflows once a chunk decays by more than e^88).

- ``impl="triton"``: :mod:`hax_ssm.ops.triton_scan`, fused kernels (forward and backward) with
  the state in registers and no ``[b, l, d, n]`` tensor; what ``"auto"`` runs on CUDA when triton
  is installed.

All maths is in fp32 whatever the input dtype; ``y`` comes back in ``x.dtype``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hax_ssm.errors import HaxError
from hax_ssm.ops.common import triton_unsupported, use_triton

ScanResult = tuple[torch.Tensor, torch.Tensor | None]
SCAN_IMPLS = ("auto", "ref", "chunked", "triton")


def _discretize(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decay ``exp(dt A)`` and input ``dt B x``, both ``[b, l, d, n]`` in fp32."""
    dt = dt.float()
    decay = torch.exp(dt.unsqueeze(-1) * A.float())
    inp = (dt * x.float()).unsqueeze(-1) * B.float().unsqueeze(2)
    return decay, inp


def _finish(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    if D is not None:
        y = y + D.float() * x.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def _initial(x: torch.Tensor, A: torch.Tensor, initial_state: torch.Tensor | None) -> torch.Tensor:
    if initial_state is not None:
        return initial_state.float()
    return x.new_zeros(x.shape[0], *A.shape, dtype=torch.float32)


def selective_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> ScanResult:
    """The recurrence as a loop over time (see the module docstring)."""
    decay, inp = _discretize(x, dt, A, B)
    h = _initial(x, A, initial_state)
    ys = []
    # unbind, not decay[:, t]: indexing a tensor every step makes its backward quadratic in L
    for decay_t, inp_t, c_t in zip(decay.unbind(1), inp.unbind(1), C.float().unbind(1), strict=True):
        h = decay_t * h + inp_t
        ys.append(torch.einsum("bdn,bn->bd", h, c_t))
    y = torch.stack(ys, dim=1)
    return _finish(y, x, D, z), h if return_final_state else None


def _shift(t: torch.Tensor, offset: int, fill: float) -> torch.Tensor:
    """``t`` moved ``offset`` steps later along dim 2 (time inside a chunk), ``fill`` in front."""
    front = t.new_full((*t.shape[:2], offset, *t.shape[3:]), fill)
    return torch.cat([front, t[:, :, :-offset]], dim=2)


@torch.no_grad()
def _blocked_states(decay: torch.Tensor, inp: torch.Tensor, h0: torch.Tensor, chunk: int) -> torch.Tensor:
    """Every state of ``h_t = decay_t * h_{t-1} + inp_t`` (``[b, l, ...]``, ``h_{-1} = h0``).

    A Hillis-Steele scan inside chunks of ``chunk`` steps, all chunks at once, then a loop over
    chunks that carries the state in.
    """
    b, length, *rest = decay.shape
    pad = -length % chunk
    tail = (0, 0) * len(rest) + (0, pad)
    # padded steps decay by 1 and add nothing
    a = F.pad(decay, tail, value=1.0).view(b, -1, chunk, *rest)
    h = F.pad(inp, tail).view(b, -1, chunk, *rest)
    # inclusive scan under (a1, h1) then (a2, h2) = (a1 a2, a2 h1 + h2)
    offset = 1
    while offset < chunk:
        h = h + a * _shift(h, offset, 0.0)
        a = a * _shift(a, offset, 1.0)
        offset *= 2
    state, entering = h0, []
    for c in range(a.shape[1]):
        entering.append(state)
        state = a[:, c, -1] * state + h[:, c, -1]
    h = h + a * torch.stack(entering, dim=1).unsqueeze(2)
    return h.view(b, -1, *rest)[:, :length]


class _LinearScan(torch.autograd.Function):
    """All states of the recurrence, with a backward that is itself a (reversed) scan.

    Autograd through the blocked scan would keep every level's tensors ([b, l, d, n] each,
    ~0.5 GB at the paper's batch); this keeps the states only.
    """

    @staticmethod
    def forward(ctx, decay: torch.Tensor, inp: torch.Tensor, h0: torch.Tensor, chunk: int) -> torch.Tensor:
        states = _blocked_states(decay, inp, h0, chunk)
        ctx.save_for_backward(decay, states, h0)
        ctx.chunk = chunk
        return states

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        decay, states, h0 = ctx.saved_tensors
        # dL/dh_t in total: G_t = grad_t + decay_{t+1} G_{t+1}, a scan run backwards in time
        next_decay = torch.cat([decay[:, 1:], torch.zeros_like(decay[:, :1])], dim=1)
        total = _blocked_states(next_decay.flip(1), grad.flip(1), torch.zeros_like(h0), ctx.chunk).flip(1)
        previous = torch.cat([h0.unsqueeze(1), states[:, :-1]], dim=1)
        return total * previous, total, decay[:, 0] * total[:, 0], None


def selective_scan_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
) -> ScanResult:
    """Blocked scan (see the module docstring); same arguments and results as the reference."""
    decay, inp = _discretize(x, dt, A, B)
    chunk = max(1, min(chunk_size, x.shape[1]))
    states = _LinearScan.apply(decay, inp, _initial(x, A, initial_state), chunk)
    y = torch.einsum("bldn,bln->bld", states, C.float())
    return _finish(y, x, D, z), states[:, -1] if return_final_state else None


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    impl: str = "auto",
) -> ScanResult:
    """Mamba's selective scan.

    Args:
        x: ``[b, l, d]`` input (after the conv and activation).
        dt: ``[b, l, d]`` positive time steps (after softplus and bias).
        A: ``[d, n]`` negative decay rates (``-exp(A_log)``).
        B, C: ``[b, l, n]`` input and output projections, shared by all channels.
        D: ``[d]`` skip connection, or None.
        z: ``[b, l, d]`` gate: ``y *= silu(z)``, or None.
        initial_state: ``[b, d, n]`` state before ``x``, or None (zeros).
        return_final_state: also return the state after the last step.
        impl: ``"auto"`` (loop on CPU; Triton on CUDA when installed, else chunked), ``"ref"``,
            ``"chunked"`` or ``"triton"``.

    Returns:
        ``(y [b, l, d] in x.dtype, final_state [b, d, n] fp32 or None)``.
    """
    if impl == "auto":
        impl = "ref" if x.device.type == "cpu" else "triton" if use_triton(x) else "chunked"
    if impl == "triton":
        reason = triton_unsupported(x)
        if reason is not None:
            raise HaxError(f"scan impl 'triton': {reason}")
        from hax_ssm.ops.triton_scan import selective_scan_triton

        return selective_scan_triton(x, dt, A, B, C, D, z, initial_state, return_final_state)
    if impl == "ref":
        return selective_scan_ref(x, dt, A, B, C, D, z, initial_state, return_final_state)
    if impl == "chunked":
        return selective_scan_chunked(x, dt, A, B, C, D, z, initial_state, return_final_state)
    raise ValueError(f"impl {impl!r}: allowed: {', '.join(SCAN_IMPLS)}")
