"""Run a whole training step (forward, backward, optimizer update) as one CUDA graph per input shape.

The paper's models are tiny and launch-bound (DESIGN.md): one step at batch 64 x 1058 tokens is
about a thousand kernels of a few microseconds each, and Python issues them more slowly than the GPU
runs them. Replaying a captured graph issues them all at once.

:class:`StepGraphs` wraps a step function ``step(*tensors) -> tensor or tuple of tensors`` that

* runs on the GPU without any host sync (no ``.item()``, no data-dependent shapes),
* leaves nothing behind but updates to tensors that exist outside it (parameters, optimizer state):
  end it with ``optimizer.zero_grad(set_to_none=True)`` (pass the parameters as ``params`` and this is
  checked before each capture: a gradient left over would be accumulated into on every replay),
* uses an optimizer built with ``capturable=True`` (Adam/AdamW); a learning rate that changes must
  be a tensor updated in place.

For each new shape of the inputs it runs ``warmup`` eager steps (the last one with torch's sync
detector on), captures the step, then replays it; every call is exactly one real step. If the step
synchronises or the capture fails, it says why (``disabled_reason``) and runs eagerly from then on.
Graphs of all shapes share one memory pool, which is safe because they never run concurrently and
each consumes its inputs and produces its outputs within one replay: outputs are valid until the next
call. Pad variable lengths with :func:`pad_to_multiple` to bound the number of graphs.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

Step = Callable[..., Any]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]
    outputs: Any


class StepGraphs:
    """``graphs(*tensors)`` runs ``step(*tensors)``, from a CUDA graph once the shape is warm."""

    def __init__(self, step: Step, *, params: Iterable[Tensor] = (), warmup: int = 2, enabled: bool = True):
        self.step = step
        self.params = list(params)
        self.warmup = max(1, warmup)
        self.enabled = enabled and torch.cuda.is_available()
        self.disabled_reason: str | None = None
        self._graphs: dict[tuple, _Captured] = {}
        self._seen: Counter[tuple] = Counter()
        self._pool: Any = None
        self._stream: torch.cuda.Stream | None = None

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    def __call__(self, *inputs: Tensor) -> Any:
        if not self.enabled or self.disabled_reason is not None or not all(t.is_cuda for t in inputs):
            return self.step(*inputs)
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        captured = self._graphs.get(key)
        if captured is not None:
            for static, new in zip(captured.inputs, inputs, strict=True):
                static.copy_(new, non_blocking=True)
            captured.graph.replay()
            return captured.outputs
        self._seen[key] += 1
        if self._seen[key] <= self.warmup:
            return self._warm(inputs, check_syncs=self._seen[key] == self.warmup)
        return self._capture(key, inputs)

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _warm(self, inputs: tuple[Tensor, ...], check_syncs: bool) -> Any:
        """One eager step on the capture stream (where lazy state gets created), optionally watching for syncs."""
        stream = self._side_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            previous = torch.cuda.get_sync_debug_mode()
            if check_syncs:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                outputs = self.step(*inputs)
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.current_stream().wait_stream(stream)
        # torch's detector warns "called a synchronizing CUDA operation"; switching it on also warns that it
        # is a prototype ("Synchronization debug mode is ..."), which is no sync and is dropped.
        syncs = [str(w.message) for w in caught if "called a synchronizing" in str(w.message)]
        for w in caught:
            if "synchroniz" not in str(w.message).lower():
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if syncs:
            self.disabled_reason = f"the step synchronises with the host ({syncs[0].splitlines()[0]})"
        return outputs

    def _capture(self, key: tuple, inputs: tuple[Tensor, ...]) -> Any:
        if any(p.grad is not None for p in self.params):
            raise RuntimeError("StepGraphs: a gradient outlived the step; end it with zero_grad(set_to_none=True)")
        static = tuple(t.clone() for t in inputs)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        try:
            # thread_local: a loader thread may pin host memory meanwhile (legal there, fatal in "global" mode)
            with torch.cuda.graph(
                graph, pool=self._pool, stream=self._side_stream(), capture_error_mode="thread_local"
            ):
                outputs = self.step(*static)
        except Exception as err:  # e.g. an op that cannot be captured: run eagerly from now on
            self.disabled_reason = f"capture failed: {type(err).__name__}: {str(err).splitlines()[0]}"
            torch.cuda.synchronize()
            for p in self.params:  # gradients made during the capture were never computed
                p.grad = None
            return self.step(*inputs)
        self._graphs[key] = _Captured(graph, static, outputs)
        graph.replay()
        return outputs


def pad_to_multiple(t: Tensor, multiple: int, value: float | bool = 0) -> Tensor:
    """``t [B, L, ...]`` padded on the right of dim 1 with ``value`` up to a multiple of ``multiple``."""
    pad = -t.shape[1] % multiple
    if pad == 0:
        return t
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad), value=value)


__all__ = ["StepGraphs", "pad_to_multiple"]
