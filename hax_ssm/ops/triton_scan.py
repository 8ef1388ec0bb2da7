"""Mamba's selective scan (and Mamba2's SSD through it) as Triton kernels, forward and backward.

The recurrence of :mod:`hax_ssm.ops.scan`, per channel d and state n (fp32 maths):

    a_t = exp(dt_t A),   h_t = a_t h_{t-1} + dt_t B_t x_t,   y_t = (C_t . h_t + D x_t) * silu(z_t)

Work split: one program per (block of BLOCK_D channels, batch row, time segment). A program walks
its segment step by step with the state [BLOCK_D, N] in registers; there is no L x d x n tensor
anywhere. Time is cut into chunks of CHUNK steps; the forward saves the state entering every chunk
([b, L / CHUNK, d, n], fp32) for the backward.

Segments give parallelism over time when batch x channel blocks cannot fill the GPU (long
sequences, small batches). With S > 1 segments the forward runs in three steps: every segment from
a zero state (its end state and sum of dt), a short loop over segments that carries the true
entering states (the decay over a whole segment is exp(A * sum dt)), then every segment again from
its entering state, writing y. At the paper's shape (batch 64) S = 1 and only the last step runs.

Everything is a plain loop over time, not ``tl.associative_scan``: the backward needs a reverse scan
of a non-commutative operator, which Triton has computed wrongly (triton-lang/triton#4362), and the
loop needs no L x d x n intermediate either.

Backward, per chunk from last to first: recompute the chunk's states from its saved entering state
(into a per-program scratch of CHUNK x BLOCK_D x N, which stays in L2), then run the reverse
recurrence of the state gradient G_t = dL/dh_t = C_t gy1_t + a_{t+1} G_{t+1}, with
gy1 = gy * silu(z), and read off

    dx_t  = dt_t sum_n G_t B_t + D gy1_t            ddt_t = sum_n G_t (B_t x_t + A a_t h_{t-1})
    dB_t  = sum_d G_t dt_t x_t                      dC_t  = sum_d gy1_t h_t
    dA   += G_t a_t h_{t-1} dt_t                    dD   += gy1_t x_t
    dz_t  = gy_t (C_t . h_t + D x_t) silu'(z_t)     dh_{-1} = a_0 G_0

Sums over channels (dB, dC) and over time and batch (dA, dD) are written as per-program partials and
summed by torch afterwards: deterministic, no atomics. The gradient entering a segment from the
future is carried like the forward state (a gradient-only pass per segment, a loop over segments).

Mamba2's SSD (one scalar decay per head, B and C per group) is the same recurrence with channel
d = (head, p): dt and A are repeated over p, which :func:`ssd_triton` does in torch so autograd sums
their gradients back per head.

This module imports triton; load it through :func:`hax_ssm.ops.scan.selective_scan` /
:func:`hax_ssm.ops.ssd.ssd` with ``impl="triton"`` (or ``"auto"`` on CUDA).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from hax_ssm.ops.common import patch_triton_interpreter

if os.environ.get("TRITON_INTERPRET") == "1":
    patch_triton_interpreter()

CHUNK = 32  # steps between saved states; also the backward's scratch depth
MAX_BLOCK_D = 16
# Time is split into segments while fewer than this many programs per SM would run. Each step of a
# program waits on its loads, so a program's time is about its number of steps; segments trade a
# second pass over the inputs for shorter programs.
# Measured on an H100 at batch 64: 512 programs run S=4 in 4.1 ms against 5.5 ms for S=1 (they get S=3);
# 1024 programs were slower with S=2 and S=4 (they keep S=1).
PROGRAMS_PER_SM = 15
MIN_SEGMENT_CHUNKS = 4  # shorter segments cost more in extra passes than they save
# Tests set these to force small chunks and several segments on short sequences.
CHUNK_OVERRIDE: int | None = None
SEGMENTS_OVERRIDE: int | None = None


@triton.jit
def _scan_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, h0_ptr,  # inputs
    y_ptr, states_ptr, hend_ptr, dtsum_ptr,  # outputs
    length, n_batch, chunks_per_seg, channels_per_group, DIM, N,
    sx_b, sx_l, sx_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d,
    sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n, sA_d, sA_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_H0: tl.constexpr, WRITE_Y: tl.constexpr,
):  # fmt: skip
    """One (channel block, batch row, segment): the recurrence over the segment.

    WRITE_Y: write y and the chunk-entering states. Always: the segment's end state and sum of dt.
    """
    pid_d, pid_b, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < DIM, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // channels_per_group
    b64 = pid_b.to(tl.int64)
    x_ptrs = x_ptr + b64 * sx_b + offs_d * sx_d
    dt_ptrs = dt_ptr + b64 * sdt_b + offs_d * sdt_d
    B_ptrs = B_ptr + b64 * sB_b + group * sB_g + offs_n * sB_n
    C_ptrs = C_ptr + b64 * sC_b + group * sC_g + offs_n * sC_n
    y_ptrs = y_ptr + b64 * length * DIM + offs_d
    if HAS_Z:
        z_ptrs = z_ptr + b64 * sz_b + offs_d * sz_d
    seg_row = pid_s.to(tl.int64) * n_batch + pid_b  # row of [segments, batch, ...] outputs
    dn_offs = offs_d[:, None] * N + offs_n[None, :]  # [DIM, N] row-major blocks

    A = tl.load(A_ptr + offs_d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + seg_row * DIM * N + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dtsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    n_chunks = tl.cdiv(length, CHUNK)
    first_chunk = pid_s.to(tl.int64) * chunks_per_seg  # int64 time offsets: no overflow at any length
    for ci in range(chunks_per_seg):
        chunk = first_chunk + ci
        if WRITE_Y:
            keep = mask_dn & (chunk < n_chunks)
            tl.store(states_ptr + (b64 * n_chunks + chunk) * DIM * N + dn_offs, h, mask=keep)
        for i in range(CHUNK):
            t = chunk * CHUNK + i
            live = t < length  # steps past the end load dt = 0: decay 1, no input
            md, mn = mask_d & live, mask_n & live
            x = tl.load(x_ptrs + t * sx_l, mask=md, other=0.0).to(tl.float32)
            dt = tl.load(dt_ptrs + t * sdt_l, mask=md, other=0.0).to(tl.float32)
            Bt = tl.load(B_ptrs + t * sB_l, mask=mn, other=0.0).to(tl.float32)
            h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
            dtsum += dt
            if WRITE_Y:
                Ct = tl.load(C_ptrs + t * sC_l, mask=mn, other=0.0).to(tl.float32)
                y = tl.sum(h * Ct[None, :], axis=1)
                if HAS_D:
                    y += Dv * x
                if HAS_Z:
                    z = tl.load(z_ptrs + t * sz_l, mask=md, other=0.0).to(tl.float32)
                    y *= z / (1.0 + tl.exp(-z))  # silu
                tl.store(y_ptrs + t * DIM, y, mask=md)
    tl.store(hend_ptr + seg_row * DIM * N + dn_offs, h, mask=mask_dn)
    tl.store(dtsum_ptr + seg_row * DIM + offs_d, dtsum, mask=mask_d)


@triton.jit
def _scan_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, gy_ptr, states_ptr, gin_ptr,  # inputs
    dx_ptr, ddt_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, gout_ptr, scratch_ptr,  # outputs, scratch
    length, n_batch, chunks_per_seg, channels_per_group, DIM, N,
    sx_b, sx_l, sx_d, sdt_b, sdt_l, sdt_d, sz_b, sz_l, sz_d, sg_b, sg_l, sg_d,
    sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n, sA_d, sA_n,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_GIN: tl.constexpr, CARRY_ONLY: tl.constexpr,
):  # fmt: skip
    """One (channel block, batch row, segment): the backward over the segment, chunks last to first.

    CARRY_ONLY: only the state gradient, from zero at the segment end; writes what leaves its start.
    Otherwise every gradient (see the module docstring), starting from gin (the gradient entering
    the segment's last step from the future) when HAS_GIN.
    """
    pid_d, pid_b, pid_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_dblocks = tl.num_programs(0)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d, mask_n = offs_d < DIM, offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // channels_per_group
    b64 = pid_b.to(tl.int64)
    x_ptrs = x_ptr + b64 * sx_b + offs_d * sx_d
    dt_ptrs = dt_ptr + b64 * sdt_b + offs_d * sdt_d
    gy_ptrs = gy_ptr + b64 * sg_b + offs_d * sg_d
    B_ptrs = B_ptr + b64 * sB_b + group * sB_g + offs_n * sB_n
    C_ptrs = C_ptr + b64 * sC_b + group * sC_g + offs_n * sC_n
    out_offs = b64 * length * DIM + offs_d  # dx, ddt, dz: contiguous [b, L, DIM]
    if HAS_Z:
        z_ptrs = z_ptr + b64 * sz_b + offs_d * sz_d
    part_offs = (pid_d.to(tl.int64) * n_batch + pid_b) * length * BLOCK_N + offs_n  # [n_dblocks, b, L, BLOCK_N]
    seg_row = pid_s.to(tl.int64) * n_batch + pid_b
    dn_offs = offs_d[:, None] * N + offs_n[None, :]
    scratch_ptrs = (
        scratch_ptr
        + (seg_row * n_dblocks + pid_d) * CHUNK * BLOCK_D * BLOCK_N
        + tl.arange(0, BLOCK_D)[:, None] * BLOCK_N
        + offs_n[None, :]
    )

    A = tl.load(A_ptr + offs_d[:, None] * sA_d + offs_n[None, :] * sA_n, mask=mask_dn, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_GIN:
        G = tl.load(gin_ptr + seg_row * DIM * N + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        G = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD = tl.zeros([BLOCK_D], dtype=tl.float32)
    n_chunks = tl.cdiv(length, CHUNK)
    first_chunk = pid_s.to(tl.int64) * chunks_per_seg
    for cj in range(chunks_per_seg):
        chunk = first_chunk + chunks_per_seg - 1 - cj
        if not CARRY_ONLY:
            # recompute the chunk's states; scratch[i] = the state before step i
            h = tl.load(
                states_ptr + (b64 * n_chunks + chunk) * DIM * N + dn_offs, mask=mask_dn & (chunk < n_chunks), other=0.0
            )
            for i in range(CHUNK):
                t = chunk * CHUNK + i
                live = t < length
                md, mn = mask_d & live, mask_n & live
                tl.store(scratch_ptrs + i * BLOCK_D * BLOCK_N, h)
                x = tl.load(x_ptrs + t * sx_l, mask=md, other=0.0).to(tl.float32)
                dt = tl.load(dt_ptrs + t * sdt_l, mask=md, other=0.0).to(tl.float32)
                gy = tl.load(gy_ptrs + t * sg_l, mask=md, other=0.0).to(tl.float32)
                Bt = tl.load(B_ptrs + t * sB_l, mask=mn, other=0.0).to(tl.float32)
                h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bt[None, :]
                if HAS_Z:
                    z = tl.load(z_ptrs + t * sz_l, mask=md, other=0.0).to(tl.float32)
                    sig = 1.0 / (1.0 + tl.exp(-z))
                    silu, dsilu = z * sig, sig * (1.0 + z * (1.0 - sig))
                    Ct = tl.load(C_ptrs + t * sC_l, mask=mn, other=0.0).to(tl.float32)
                    y = tl.sum(h * Ct[None, :], axis=1) + Dv * x
                    tl.store(dz_ptr + out_offs + t * DIM, gy * y * dsilu, mask=md)
                    gy = gy * silu
                tl.store(dC_ptr + part_offs + t * BLOCK_N, tl.sum(gy[:, None] * h, axis=0), mask=mn)
                dD += gy * x
            tl.debug_barrier()  # scratch written by all threads before any reads it
        for i in range(CHUNK):
            k = CHUNK - 1 - i
            t = chunk * CHUNK + k
            live = t < length
            md, mn = mask_d & live, mask_n & live
            dt = tl.load(dt_ptrs + t * sdt_l, mask=md, other=0.0).to(tl.float32)
            gy = tl.load(gy_ptrs + t * sg_l, mask=md, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptrs + t * sC_l, mask=mn, other=0.0).to(tl.float32)
            if HAS_Z:
                z = tl.load(z_ptrs + t * sz_l, mask=md, other=0.0).to(tl.float32)
                gy = gy * z / (1.0 + tl.exp(-z))
            G += gy[:, None] * Ct[None, :]  # now dL/dh_t in full
            a = tl.exp(dt[:, None] * A)
            if not CARRY_ONLY:
                x = tl.load(x_ptrs + t * sx_l, mask=md, other=0.0).to(tl.float32)
                Bt = tl.load(B_ptrs + t * sB_l, mask=mn, other=0.0).to(tl.float32)
                ah = a * tl.load(scratch_ptrs + k * BLOCK_D * BLOCK_N)  # a_t h_{t-1}
                tl.store(dx_ptr + out_offs + t * DIM, dt * tl.sum(G * Bt[None, :], axis=1) + Dv * gy, mask=md)
                ddt = tl.sum(G * (x[:, None] * Bt[None, :] + A * ah), axis=1)
                tl.store(ddt_ptr + out_offs + t * DIM, ddt, mask=md)
                tl.store(dB_ptr + part_offs + t * BLOCK_N, tl.sum(G * (dt * x)[:, None], axis=0), mask=mn)
                dA += G * ah * dt[:, None]
            G = a * G  # what step t passes to h_{t-1}
        if not CARRY_ONLY:
            tl.debug_barrier()  # reads of this chunk's scratch done before the next chunk overwrites it
    tl.store(gout_ptr + seg_row * DIM * N + dn_offs, G, mask=mask_dn)
    if not CARRY_ONLY:
        tl.store(dA_ptr + seg_row * DIM * N + dn_offs, dA, mask=mask_dn)
        tl.store(dD_ptr + seg_row * DIM + offs_d, dD, mask=mask_d)


@dataclass(frozen=True)
class _Plan:
    """How a call is split: channel blocks, chunk length, segments of whole chunks."""

    block_d: int
    block_n: int
    chunk: int
    segments: int
    chunks_per_seg: int
    warps: int


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: plan as for an H100
    return torch.cuda.get_device_properties(device).multi_processor_count


def _plan(batch: int, length: int, dim: int, n: int, channels_per_group: int, device: torch.device) -> _Plan:
    # a channel block must stay inside one group of B/C
    block_d = min(MAX_BLOCK_D, channels_per_group & -channels_per_group, triton.next_power_of_2(dim))
    block_n = triton.next_power_of_2(n)
    chunk = CHUNK_OVERRIDE or CHUNK
    n_chunks = triton.cdiv(length, chunk)
    if SEGMENTS_OVERRIDE is not None:
        segments = SEGMENTS_OVERRIDE
    else:
        programs = batch * triton.cdiv(dim, block_d)
        segments = min(PROGRAMS_PER_SM * _sm_count(device) // programs, n_chunks // MIN_SEGMENT_CHUNKS)
    segments = max(1, min(segments, n_chunks))
    chunks_per_seg = triton.cdiv(n_chunks, segments)
    segments = triton.cdiv(n_chunks, chunks_per_seg)
    warps = 4 if block_d * block_n >= 512 else 2
    return _Plan(block_d, block_n, chunk, segments, chunks_per_seg, warps)


def _launch_args(plan: _Plan, *tensors: Tensor | None, **flags: bool) -> tuple[list[int], dict[str, Any]]:
    """Sizes and strides (an absent ``z`` gets zeros), then the compile-time meta-parameters."""
    x, B = tensors[0], tensors[-3]
    b, length, dim = x.shape
    sizes = [length, b, plan.chunks_per_seg, dim // B.shape[2], dim, B.shape[-1]]  # runtime: one kernel for all
    strides = [s for t in tensors for s in ((0, 0, 0) if t is None else t.stride())]
    meta = {"BLOCK_D": plan.block_d, "BLOCK_N": plan.block_n, "CHUNK": plan.chunk, "num_warps": plan.warps}
    return sizes + strides, meta | flags


def _decay_over(A: Tensor, dtsum: Tensor) -> Tensor:
    """exp(A * sum dt): the decay over a whole segment, [b, d, n] from dtsum [b, d]."""
    return torch.exp(dtsum[..., None] * A.float())


def _carry_forward(h0: Tensor | None, hend: Tensor, dtsum: Tensor, A: Tensor) -> Tensor:
    """States entering each segment [S, b, d, n] from each segment's end state started at zero."""
    h = torch.zeros_like(hend[0]) if h0 is None else h0.float()
    entering = []
    for s in range(hend.shape[0]):
        entering.append(h)
        h = _decay_over(A, dtsum[s]) * h + hend[s]
    return torch.stack(entering)


def _carry_backward(g_final: Tensor | None, gout: Tensor, dtsum: Tensor, A: Tensor) -> Tensor:
    """State gradients entering each segment's last step from the future [S, b, d, n]."""
    g = torch.zeros_like(gout[0]) if g_final is None else g_final.float()
    entering = [g]
    for s in range(gout.shape[0] - 1, 0, -1):
        g = gout[s] + _decay_over(A, dtsum[s]) * g
        entering.append(g)
    return torch.stack(entering[::-1])


def _scan_forward(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None, h0: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, _Plan]:
    """y [b, L, d] (x.dtype), chunk-entering states, final state [b, d, n] fp32, segment dt sums, plan."""
    b, length, dim = x.shape
    n, groups = B.shape[-1], B.shape[2]
    plan = _plan(b, length, dim, n, dim // groups, x.device)
    n_chunks = triton.cdiv(length, plan.chunk)
    grid = (triton.cdiv(dim, plan.block_d), b, plan.segments)
    y = torch.empty(b, length, dim, device=x.device, dtype=x.dtype)
    states = torch.empty(b, n_chunks, dim, n, device=x.device, dtype=torch.float32)
    hend = torch.empty(plan.segments, b, dim, n, device=x.device, dtype=torch.float32)
    dtsum = torch.empty(plan.segments, b, dim, device=x.device, dtype=torch.float32)
    args, meta = _launch_args(plan, x, dt, z, B, C, A, HAS_D=D is not None, HAS_Z=z is not None)
    entering = h0
    if plan.segments > 1:
        _scan_fwd_kernel[grid](
            x, dt, A, B, C, D, z, None, y, states, hend, dtsum, *args, HAS_H0=False, WRITE_Y=False, **meta
        )
        entering = _carry_forward(h0, hend, dtsum, A)
    _scan_fwd_kernel[grid](
        x, dt, A, B, C, D, z, entering, y, states, hend, dtsum, *args,
        HAS_H0=entering is not None, WRITE_Y=True, **meta,
    )  # fmt: skip
    return y, states, hend[-1], dtsum if plan.segments > 1 else None, plan


def _scan_backward(
    saved: tuple[Tensor | None, ...], gy: Tensor, g_final: Tensor | None, plan: _Plan
) -> tuple[Tensor, ...]:
    x, dt, A, B, C, D, z, states, dtsum = saved
    b, length, dim = x.shape
    n, groups = B.shape[-1], B.shape[2]
    n_dblocks = triton.cdiv(dim, plan.block_d)
    grid = (n_dblocks, b, plan.segments)
    dev = x.device
    dx = torch.empty(b, length, dim, device=dev, dtype=x.dtype)
    ddt = torch.empty(b, length, dim, device=dev, dtype=dt.dtype)
    dz = torch.empty(b, length, dim, device=dev, dtype=z.dtype) if z is not None else None
    dB_part = torch.empty(n_dblocks, b, length, plan.block_n, device=dev)  # every live row is written
    dC_part = torch.empty(n_dblocks, b, length, plan.block_n, device=dev)
    dA_part = torch.empty(plan.segments, b, dim, n, device=dev)
    dD_part = torch.empty(plan.segments, b, dim, device=dev)
    gout = torch.empty(plan.segments, b, dim, n, device=dev)
    scratch = torch.empty(plan.segments * b * n_dblocks * plan.chunk * plan.block_d * plan.block_n, device=dev)
    args, meta = _launch_args(plan, x, dt, z, gy, B, C, A, HAS_D=D is not None, HAS_Z=z is not None)
    outs = (dx, ddt, dz, dB_part, dC_part, dA_part, dD_part, gout, scratch)
    gin = None if g_final is None else g_final.float().unsqueeze(0).contiguous()
    if plan.segments > 1:
        _scan_bwd_kernel[grid](
            x, dt, A, B, C, D, z, gy, states, None, *outs, *args, HAS_GIN=False, CARRY_ONLY=True, **meta
        )
        gin = _carry_backward(g_final, gout, dtsum, A).contiguous()
    _scan_bwd_kernel[grid](
        x, dt, A, B, C, D, z, gy, states, gin, *outs, *args, HAS_GIN=gin is not None, CARRY_ONLY=False, **meta
    )
    per_group = n_dblocks // groups

    def channel_sum(part: Tensor, like: Tensor) -> Tensor:
        """[n_dblocks, b, L, BLOCK_N] partials -> [b, L, g, n] sums over each group's channels."""
        summed = part[..., :n].reshape(groups, per_group, b, length, n).sum(1)
        return summed.permute(1, 2, 0, 3).to(like.dtype)

    dA = dA_part.sum((0, 1)).to(A.dtype)
    dD = dD_part.sum((0, 1)).to(D.dtype) if D is not None else None
    return dx, ddt, dA, channel_sum(dB_part, B), channel_sum(dC_part, C), dD, dz, gout[0]


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x, dt, A, B, C, D, z, h0):
        y, states, h_final, dtsum, plan = _scan_forward(x, dt, A, B, C, D, z, h0)
        ctx.save_for_backward(x, dt, A, B, C, D, z, states, dtsum)
        ctx.plan, ctx.h0_dtype = plan, None if h0 is None else h0.dtype
        ctx.set_materialize_grads(False)
        return y, h_final

    @staticmethod
    def backward(ctx: Any, gy: Tensor | None, g_final: Tensor | None):
        x = ctx.saved_tensors[0]
        if gy is None:
            gy = torch.zeros_like(x)
        dx, ddt, dA, dB, dC, dD, dz, dh0 = _scan_backward(ctx.saved_tensors, gy, g_final, ctx.plan)
        dh0 = None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype)
        return dx, ddt, dA, dB, dC, dD, dz, dh0


# torch.compile runs the op as it is (a graph break) rather than tracing the launchers: nothing to
# fuse inside, and CUDA graphs (hax_ssm.utils.step_graphs) remove the launch overhead anyway.
@torch.compiler.disable
def selective_scan_triton(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """:func:`hax_ssm.ops.scan.selective_scan` on the Triton kernels (same arguments and results).

    B and C may also be ``[b, l, g, n]``: channel block ``d`` then reads group ``d // (dim / g)``
    (Mamba2's groups, see :func:`ssd_triton`).
    """
    if B.dim() == 3:
        B, C = B.unsqueeze(2), C.unsqueeze(2)
    h0 = None if initial_state is None else initial_state.contiguous()
    y, h_final = _SelectiveScan.apply(x, dt, A, B, C, D, z, h0)
    return y, h_final if return_final_state else None


def ssd_triton(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """:func:`hax_ssm.ops.ssd.ssd` on the scan kernels: channel (head, p) gets the head's dt, A and D."""
    b, length, heads, p = x.shape
    n = B.shape[-1]
    dim = heads * p
    A_channels = A.repeat_interleave(p)[:, None].expand(dim, n)
    D_channels = None if D is None else D.repeat_interleave(p)
    h0 = None if initial_state is None else initial_state.reshape(b, dim, n)
    y, h_final = selective_scan_triton(
        x.reshape(b, length, dim),
        dt.repeat_interleave(p, dim=-1),
        A_channels,
        B,
        C,
        D_channels,
        initial_state=h0,
        return_final_state=return_final_state,
    )
    return y.view(b, length, heads, p), None if h_final is None else h_final.view(b, heads, p, n)


__all__ = ["selective_scan_triton", "ssd_triton"]
