"""Mamba2's state-space duality (SSD): a linear recurrence with one scalar decay per head.

    h_t = exp(dt_t * A_h) * h_{t-1} + dt_t * x_t B_t^T       (h: [head_dim, d_state] per head)
    y_t = h_t C_t + D_h * x_t

Two implementations behind :func:`ssd`:
- :func:`ssd_ref`, the recurrence as a loop over time: the oracle.
- :func:`ssd_chunked`, the chunked SSD algorithm: inside each chunk the recurrence is a masked
  matmul ``(C B^T * decay) (dt x)`` whose decay matrix comes from a stable segment-sum of log
  decays (differences are summed, never subtracted from large cumulative sums); chunk states
  are carried across chunks by a short loop. Matmul-shaped, so it runs well on GPUs.

- ``impl="triton"``: the selective-scan kernels of :mod:`hax_ssm.ops.triton_scan`, one channel per
  (head, p) with the head's decay; no ``[chunk x chunk]`` matrices. What ``"auto"`` runs on CUDA
  when triton is installed: at the paper's sizes (head_dim 16-32, d_state 32) the chunked path's
  ``[b, h, chunks, T, T]`` tensors dominate its time.

Heads share B and C within a group: ``n_heads`` must be a multiple of ``n_groups``. All maths
is in fp32; ``y`` comes back in ``x.dtype``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hax_ssm.errors import HaxError
from hax_ssm.ops.common import triton_unsupported, use_triton

SsdResult = tuple[torch.Tensor, torch.Tensor | None]
SSD_IMPLS = ("auto", "ref", "chunked", "triton")


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[b, l, g, n] -> [b, l, h, n]`` (fp32): each group's B or C for each of its heads."""
    return t.float().repeat_interleave(n_heads // t.shape[2], dim=2)


def _finish(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None) -> torch.Tensor:
    if D is not None:
        y = y + D.float()[:, None] * x.float()
    return y.to(x.dtype)


def _initial(x: torch.Tensor, d_state: int, initial_state: torch.Tensor | None) -> torch.Tensor:
    if initial_state is not None:
        return initial_state.float()
    b, _, h, p = x.shape
    return x.new_zeros(b, h, p, d_state, dtype=torch.float32)


def ssd_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> SsdResult:
    """The recurrence as a loop over time (see the module docstring)."""
    h_count = x.shape[2]
    B, C = _heads(B, h_count), _heads(C, h_count)
    dt = dt.float()
    decay = torch.exp(dt * A.float())  # [b, l, h]
    xdt = x.float() * dt.unsqueeze(-1)  # [b, l, h, p]
    h = _initial(x, B.shape[-1], initial_state)
    ys = []
    for decay_t, xdt_t, b_t, c_t in zip(decay.unbind(1), xdt.unbind(1), B.unbind(1), C.unbind(1), strict=True):
        h = decay_t[:, :, None, None] * h + xdt_t[:, :, :, None] * b_t[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, c_t))
    return _finish(torch.stack(ys, dim=1), x, D), h if return_final_state else None


def segsum(a: torch.Tensor) -> torch.Tensor:
    """``[..., T] -> [..., T, T]``: ``out[i, j] = a[j+1] + ... + a[i]`` for ``j <= i``, ``-inf`` above.

    Built by a cumsum over a masked copy, so each entry sums only its own terms (the difference
    of two long cumsums would lose precision).
    """
    t = a.shape[-1]
    rows = a.unsqueeze(-1).expand(*a.shape, t)  # rows[..., i, j] = a[i]
    ones = torch.ones(t, t, dtype=torch.bool, device=a.device)
    out = rows.masked_fill(~ones.tril(-1), 0.0).cumsum(dim=-2)
    return out.masked_fill(ones.triu(1), -torch.inf)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 256,
) -> SsdResult:
    """The chunked SSD algorithm (see the module docstring); same results as the reference."""
    b, length, h_count, p = x.shape
    chunk = max(1, min(chunk_size, length))
    pad = -length % chunk
    # padded steps have dt = 0: decay 1 and no input, so the final state is the one at `length`
    xdt = F.pad(x.float() * dt.float().unsqueeze(-1), (0, 0, 0, 0, 0, pad)).view(b, -1, chunk, h_count, p)
    B = F.pad(_heads(B, h_count), (0, 0, 0, 0, 0, pad)).view(b, -1, chunk, h_count, B.shape[-1])
    C = F.pad(_heads(C, h_count), (0, 0, 0, 0, 0, pad)).view(b, -1, chunk, h_count, C.shape[-1])
    log_decay = F.pad(dt.float() * A.float(), (0, 0, 0, pad)).view(b, -1, chunk, h_count).permute(0, 3, 1, 2)
    cum = log_decay.cumsum(dim=-1)  # [b, h, c, T]: log decay from the chunk start to each step

    # inside each chunk: y_i = sum_{j <= i} (C_i . B_j) exp(a_{j+1} + ... + a_i) dt_j x_j
    decay = torch.exp(segsum(log_decay))  # [b, h, c, T, T]
    y = torch.einsum("bhcls,bcshp->bclhp", torch.einsum("bclhn,bcshn->bhcls", C, B) * decay, xdt)

    # state each chunk adds from zero, then carried across chunks. The decay to the chunk end is
    # the last row of `decay`, not exp(cum[-1] - cum): that difference has a zero gradient only
    # on paper, in fp32 it leaves rounding noise as large as the state's gradient.
    to_chunk_end = decay[..., -1, :]  # [b, h, c, T]
    chunk_states = torch.einsum("bcshn,bhcs,bcshp->bchpn", B, to_chunk_end, xdt)
    chunk_decay = torch.exp(cum[..., -1])  # [b, h, c]
    state = _initial(x, B.shape[-1], initial_state)
    entering = []
    for c in range(chunk_states.shape[1]):
        entering.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_states[:, c]

    # what the entering state contributes to each output
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", C, torch.stack(entering, dim=1), torch.exp(cum))
    y = y.reshape(b, -1, h_count, p)[:, :length]
    return _finish(y, x, D), state if return_final_state else None


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 256,
    impl: str = "auto",
) -> SsdResult:
    """Mamba2's SSD.

    Args:
        x: ``[b, l, h, p]`` input per head (after the conv and activation).
        dt: ``[b, l, h]`` positive time steps (after softplus and bias).
        A: ``[h]`` negative decay rate per head (``-exp(A_log)``).
        B, C: ``[b, l, g, n]`` input and output projections per group (``h % g == 0``).
        D: ``[h]`` skip connection, or None.
        initial_state: ``[b, h, p, n]`` state before ``x``, or None (zeros).
        return_final_state: also return the state after the last step.
        chunk_size: chunk length of the chunked algorithm (does not change the result).
        impl: ``"auto"`` (Triton on CUDA when installed, else chunked), ``"ref"``, ``"chunked"`` or
            ``"triton"``.

    Returns:
        ``(y [b, l, h, p] in x.dtype, final_state [b, h, p, n] fp32 or None)``.
    """
    if impl == "auto":
        impl = "triton" if use_triton(x) else "chunked"
    if impl == "triton":
        reason = triton_unsupported(x)
        if reason is not None:
            raise HaxError(f"ssd impl 'triton': {reason}")
        from hax_ssm.ops.triton_scan import ssd_triton

        return ssd_triton(x, dt, A, B, C, D, initial_state, return_final_state)
    if impl == "chunked":
        return ssd_chunked(x, dt, A, B, C, D, initial_state, return_final_state, chunk_size)
    if impl == "ref":
        return ssd_ref(x, dt, A, B, C, D, initial_state, return_final_state)
    raise ValueError(f"impl {impl!r}: allowed: {', '.join(SSD_IMPLS)}")
