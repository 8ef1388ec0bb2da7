"""Mamba's selective scan: a diagonal linear recurrence with input-dependent dt, B and C.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t        (per channel d and state n)
    y_t = C_t . h_t + D * x_t,   then   y_t *= silu(z_t)      (when z is given)

Two implementations behind :func:`selective_scan`:
- :func:`selective_scan_ref`, the recurrence above as a loop over time. It is the oracle, and
  also the fastest plain-torch path on a CPU (DESIGN.md: a loop beat chunked and associative
  scans on 2 cores at L=1024), so ``impl="auto"`` uses it there.
- :func:`selective_scan_chunked`, a log-depth (Hillis-Steele) scan inside chunks, run for all
  chunks at once, then a short loop carrying the state across chunks. It needs about
  ``4 log2(chunk) + 2 L / chunk`` kernel launches instead of ``~3 L``: the GPU path.
  Every factor it multiplies is a decay <= 1, so it is stable for any dt (a cumsum of log
  decays followed by ``exp(-cumsum)`` would overflow once a chunk decays by more than e^88).

All maths is in fp32 whatever the input dtype; ``y`` comes back in ``x.dtype``. A Triton
kernel can replace the internals later behind the same signature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ScanResult = tuple[torch.Tensor, torch.Tensor | None]
SCAN_IMPLS = ("auto", "ref", "chunked")


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
    b, length, d = x.shape
    decay, inp = _discretize(x, dt, A, B)
    chunk = max(1, min(chunk_size, length))
    pad = -length % chunk
    # padded steps decay by 1 and add nothing, so the final state is the one at `length`
    decay = F.pad(decay, (0, 0, 0, 0, 0, pad), value=1.0).view(b, -1, chunk, *A.shape)
    inp = F.pad(inp, (0, 0, 0, 0, 0, pad)).view(b, -1, chunk, *A.shape)

    # inclusive scan of (decay, inp) under (a1, h1) then (a2, h2) = (a1 a2, a2 h1 + h2), in every chunk
    offset = 1
    while offset < chunk:
        inp = inp + decay * _shift(inp, offset, 0.0)
        decay = decay * _shift(decay, offset, 1.0)
        offset *= 2

    # carry the state across chunks: entering[c] is the state before chunk c
    h = _initial(x, A, initial_state)
    entering = []
    for c in range(decay.shape[1]):
        entering.append(h)
        h = decay[:, c, -1] * h + inp[:, c, -1]
    states = inp + decay * torch.stack(entering, dim=1).unsqueeze(2)

    C = F.pad(C.float(), (0, 0, 0, pad)).view(b, -1, chunk, C.shape[-1])
    y = torch.einsum("bctdn,bctn->bctd", states, C).reshape(b, -1, d)[:, :length]
    return _finish(y, x, D, z), h if return_final_state else None


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
        impl: ``"auto"`` (loop on CPU, chunked elsewhere), ``"ref"`` or ``"chunked"``.

    Returns:
        ``(y [b, l, d] in x.dtype, final_state [b, d, n] fp32 or None)``.
    """
    if impl == "auto":
        impl = "ref" if x.device.type == "cpu" else "chunked"
    if impl == "ref":
        return selective_scan_ref(x, dt, A, B, C, D, z, initial_state, return_final_state)
    if impl == "chunked":
        return selective_scan_chunked(x, dt, A, B, C, D, z, initial_state, return_final_state)
    raise ValueError(f"impl {impl!r}: allowed: {', '.join(SCAN_IMPLS)}")
