"""GPU timing for the benchmarks: CUDA-event timing, and torch.profiler's kernels grouped by name as a table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class KernelBreakdown:
    steps: int
    wall_ms: float  # per step, profiler overhead included
    gpu_ms: float  # per step: the sum of kernel times
    kernels_per_step: float
    top: list[tuple[str, float, float]]  # (kernel name, ms per step, calls per step), most expensive first

    def table(self, title: str) -> str:
        lines = [
            f"{title}: {self.steps} steps (profiler overhead included in wall time)",
            f"  wall per step {self.wall_ms:8.2f} ms | GPU kernel time {self.gpu_ms:8.2f} ms | kernels per step "
            f"{self.kernels_per_step:6.0f} | CPU-side overhead (wall - GPU busy) {self.wall_ms - self.gpu_ms:8.2f} ms",
            f"  {'kernel':<80} {'ms/step':>8} {'calls/step':>10} {'share':>6}",
        ]
        for name, ms, calls in self.top:
            lines.append(f"  {name[:80]:<80} {ms:8.3f} {calls:10.1f} {ms / max(self.gpu_ms, 1e-9):6.1%}")
        return "\n".join(lines)


def cuda_ms(fn: Callable[[], object], reps: int) -> float:
    """Milliseconds per call of ``fn`` on the current CUDA stream: CUDA events around ``reps`` calls."""
    import torch

    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / reps


def kernel_breakdown(step: Callable[[int], object], steps: int = 5, top: int = 20) -> KernelBreakdown:
    """Profile ``step(i)`` for i in range(steps) (already warmed up) on the current CUDA device."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        for i in range(steps):
            step(i)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - started) / steps
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.device_time_total / 1e3)
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return KernelBreakdown(
        steps=steps,
        wall_ms=wall * 1e3,
        gpu_ms=sum(e.device_time_total for e in kernels) / 1e3 / steps,
        kernels_per_step=len(kernels) / steps,
        top=[(name, sum(times) / steps, len(times) / steps) for name, times in ranked],
    )
