"""Attention-layer benchmark: forward+backward time and peak memory of every sparse pattern on one GPU.

One head, d_k 16, d_v 128, bf16, k = 64 keys per query, B * L = 2**20 tokens at every length L in
{1K, 4K, 16K, 64K, 256K, 1M}. Methods: our Triton path, the plain-torch ``sparse`` path, the dense
``reference`` (until it runs out of memory), full causal attention through torch SDPA's FlashAttention
backend (q, k zero-padded to d_v: flash needs equal head sizes), and FlexAttention for the patterns it
expresses with block masks (sliding window, sink, both). Plus the paper's shape (B=64, L=1058, HAX):
Triton against the dense reference, and the targets of issue 5.

    timeout 600 python benchmarks/attention.py --check      # full run, < 8 min on an H100
    timeout 120 python benchmarks/attention.py --quick      # smoke run, ~1 min
    timeout 120 python benchmarks/attention.py --profile    # Triton HAX kernels by time, paper shape and 1M tokens
    timeout 400 python benchmarks/attention.py --tiles      # Triton HAX time under other tile sizes / warps
    python benchmarks/attention.py --plot-only              # redraw the PNG from the JSON (no GPU needed)

Prints one table; writes results/attention_benchmark.json (with provenance) and results/attention_benchmark.png.
Cells predicted to exceed --cell-cap seconds per call, or past the --budget deadline, are skipped and
recorded as such; a baseline that fails (OOM, FlexAttention errors) is recorded, never fatal. A failing
--check or an error of our Triton path exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hax_ssm.ops.attention import sparse_attention
from hax_ssm.ops.patterns import parse_sparse_arch
from hax_ssm.utils.io import atomic_write_bytes, atomic_write_json
from hax_ssm.utils.profiling import cuda_ms, kernel_breakdown
from hax_ssm.utils.provenance import provenance

DK, DV, KEYS, NUM_HASH = 16, 128, 64, 8
DTYPE = torch.bfloat16
DEVICE = "cuda"
PATTERNS = (
    "full",
    "sliding_window",
    "sink",
    "dilated",
    "sign_bin_lsh",
    "argmax_lsh",
    "key_selection",
    "sliding_window+dilated",
    "sliding_window+sink",
    "hax",
    "argmax_lsh+key_selection",
)
FLEX_PATTERNS = ("sliding_window", "sink", "sliding_window+sink")
QUADRATIC = {"reference", "sdpa_flash"}  # cost grows with L at fixed B * L (and "full" in every method)
FULL_LENGTHS = (1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20)
QUICK_LENGTHS = (1 << 10, 1 << 14)
QUICK_PATTERNS = ("full", "sliding_window+sink", "hax")
RESERVE_S = {"flex": 60.0}  # a FlexAttention cell may compile for a minute: start it only with that much left
SPARSE_MAX_LENGTH = 1 << 12  # the plain-torch path is timed up to this length
CROSSOVER_LENGTHS = (1024, 1536, 2048, 2560, 3072, 4096)  # masked against gathered Triton path, HAX
CROSSOVER_TOKENS = 1 << 16


class Skip(Exception):
    """A cell that is not run (predicted too slow, past the budget, after an OOM at a smaller L)."""


# ---------------------------------------------------------------------------------------------------------
# inputs and methods


def spec_for(arch: str, n: int):
    """k = 64 keys per query split between the parts (60 for the 5-part union), 8 hashes, dilation over L."""
    keys = KEYS - KEYS % len(parse_sparse_arch(arch, sparse_keys=60).parts)
    return parse_sparse_arch(arch, sparse_keys=keys, num_hash=NUM_HASH, data_max_length=max(n, 2048))


def make_case(arch: str, n: int, b: int, seed: int = 0) -> tuple:
    spec = spec_for(arch, n)
    gen = torch.Generator(DEVICE).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=DEVICE) * scale).to(DTYPE).requires_grad_()

    q, k, v = randn(b, n, DK), randn(b, n, DK, scale=DK**-0.5), randn(b, n, DV)
    buckets = max(spec.num_buckets, 1)
    extra = {
        "q_buckets": torch.randint(0, buckets, (b, n), generator=gen, device=DEVICE),
        "k_buckets": torch.randint(0, buckets, (b, n), generator=gen, device=DEVICE),
        "key_scores": torch.randn(b, n, generator=gen, device=DEVICE),
    }
    grad = torch.randn(b, n, DV, generator=gen, device=DEVICE).to(DTYPE)
    return spec, q, k, v, extra, grad


# A method builds (run, leaves): run() computes the attention output, leaves are the tensors to differentiate.


def forced(path: str):
    """force_path(path) of the Triton path (imported only here: --plot-only needs no triton)."""
    if path == "auto":
        return contextlib.nullcontext()
    from hax_ssm.ops.attention.triton.attention import force_path

    return force_path(path)


def op_method(impl: str, path: str = "auto") -> Callable:
    """Our op; path forces the Triton path's gathered (O(L * k)) or masked (every causal tile) kernels."""

    def build(spec, q, k, v, extra):
        def run():
            with forced(path):
                return sparse_attention(q, k, v, spec, impl=impl, **extra)

        return run, (q, k, v)

    return build


def sdpa_flash(spec, q, k, v, extra):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pad = DV - DK
    q4, k4 = (F.pad(x.detach(), (0, pad))[:, None].requires_grad_() for x in (q, k))
    v4 = v.detach()[:, None].requires_grad_()

    def run():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=1.0)[:, 0]

    return run, (q4, k4, v4)


_FLEX = {}


def _flex_parts(arch: str):
    """mask_mod (one function object per pattern: a new closure would recompile) and kv blocks per q block."""
    if arch in _FLEX:
        return _FLEX[arch]
    spec = parse_sparse_arch(arch, sparse_keys=KEYS)
    k_c, sw, sink = spec.part_keys, spec.has("sliding_window"), spec.has("sink")

    def mask_mod(b, h, q_idx, kv_idx):
        keep = (q_idx - kv_idx < k_c) if sw else (kv_idx < k_c)
        if sw and sink:
            keep = keep | (kv_idx < k_c)
        return keep & (kv_idx <= q_idx)

    _FLEX[arch] = (mask_mod, sw, sink)
    return _FLEX[arch]


def flex(spec, q, k, v, extra):
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if "compiled" not in _FLEX:
        for name in ("recompile_limit", "cache_size_limit"):  # one compile per pattern and shape
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        _FLEX["compiled"] = torch.compile(flex_attention)
    mask_mod, sw, sink = _flex_parts(spec.name)
    n = q.shape[1]
    block = 128  # n >= 3 * block: the benchmark's lengths start at 1024
    m = torch.arange(math.ceil(n / block), device=DEVICE, dtype=torch.int32)
    # kv blocks of q block m (k_c <= 128): window -> {m-1, m}; sink -> {0}; both -> {0, m-1, m}; causal
    if sw and sink:
        idx = torch.stack([torch.zeros_like(m), (m - 1).clamp_min(1), m], -1)
        count = torch.where(m == 0, 1, torch.where(m == 1, 2, 3))
    elif sw:
        idx, count = torch.stack([(m - 1).clamp_min(0), m], -1), torch.where(m == 0, 1, 2)
    else:
        idx, count = torch.zeros_like(m)[:, None], torch.ones_like(m)
    # from_kv_blocks wants one column per kv block (it scatters into a dense [q blocks, kv blocks] map)
    idx = F.pad(idx, (0, len(m) - idx.shape[-1]))
    mask = BlockMask.from_kv_blocks(
        count.to(torch.int32)[None, None], idx.to(torch.int32)[None, None].contiguous(), BLOCK_SIZE=block,
        mask_mod=mask_mod, seq_lengths=(n, n),
    )  # fmt: skip
    q4, k4, v4 = (x.detach()[:, None].requires_grad_() for x in (q, k, v))
    return (lambda: _FLEX["compiled"](q4, k4, v4, block_mask=mask, scale=1.0)[:, 0]), (q4, k4, v4)


METHODS = {
    "triton": op_method("triton"),
    "triton_gathered": op_method("triton", "gathered"),
    "triton_masked": op_method("triton", "masked"),
    "sparse": op_method("sparse"),
    "reference": op_method("reference"),
    "sdpa_flash": sdpa_flash,
    "flex": flex,
}


# ---------------------------------------------------------------------------------------------------------
# measurement


def _graphed(step: Callable) -> Callable:
    """step captured in a CUDA graph (no launch overhead); returns its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def measure(
    method: tuple[Callable, tuple[Tensor, ...]], grad: Tensor, per_cell_s: float, with_forward: bool, graph: bool
) -> dict:
    """Forward+backward time (ms, after one warm-up call), peak memory (GB), optionally forward time."""
    fwd, leaves = method

    def step():
        torch.autograd.grad(fwd(), leaves, grad)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()  # warm-up: compiles; its peak memory is the cell's
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 1e9
    if graph:
        step = _graphed(step)
    first = cuda_ms(step, 1)
    reps = max(1, min(10, int(per_cell_s * 1e3 / max(first, 1e-3))))
    result = {"fwd_bwd_ms": cuda_ms(step, reps) if reps > 1 else first, "peak_gb": peak}
    if with_forward:
        with torch.no_grad():
            fwd()
            result["fwd_ms"] = cuda_ms(fwd, reps)
    return result


class Runner:
    def __init__(self, budget_s: float, cell_cap_s: float, per_cell_s: float):
        self.deadline = time.monotonic() + budget_s
        self.cell_cap_s, self.per_cell_s = cell_cap_s, per_cell_s
        self.cells: list[dict] = []
        self.last: dict[tuple[str, str], tuple[int, int, float]] = {}  # (method, pattern) -> (L, B, seconds)
        self.failed: set[tuple[str, str]] = set()
        self.errors: list[str] = []

    def predicted_s(self, method: str, arch: str, n: int, b: int) -> float | None:
        """Seconds per call, scaled from the last measured cell of this method and pattern."""
        if (method, arch) not in self.last:
            return None
        n0, b0, seconds = self.last[(method, arch)]
        quadratic = method in QUADRATIC or arch == "full"
        return seconds * (n * b) / (n0 * b0) * (n / n0 if quadratic else 1.0)

    def run(self, method: str, arch: str, n: int, b: int, with_forward: bool = False, graph: bool = False) -> dict:
        """One cell; graph=True times replays of a CUDA graph of forward+backward (method name + '+graph')."""
        base = method
        method = f"{method}+graph" if graph else method
        cell = {"method": method, "pattern": arch, "L": n, "B": b}
        try:
            if time.monotonic() > self.deadline - RESERVE_S.get(base, 0.0):
                raise Skip("time budget")
            if (method, arch) in self.failed:
                raise Skip("failed at a smaller L")
            predicted = self.predicted_s(method, arch, n, b)
            if predicted is not None and predicted > self.cell_cap_s:
                raise Skip(f"predicted {predicted:.1f} s per call")
            spec, q, k, v, extra, grad = make_case(arch, n, b)
            build = METHODS[base](spec, q, k, v, extra)
            cell.update(measure(build, grad, self.per_cell_s, with_forward, graph))
            cell["status"] = "ok"
            self.last[(method, arch)] = (n, b, cell["fwd_bwd_ms"] / 1e3)
        except Skip as why:
            cell["status"] = f"skipped: {why}"
        except torch.cuda.OutOfMemoryError:
            cell["status"] = "OOM"
            self.failed.add((method, arch))
        except Exception as err:  # a baseline may fail; ours may not (reported, exit status 1)
            cell["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            self.failed.add((method, arch))
            if base.startswith("triton"):
                self.errors.append(f"{arch} L={n}: {traceback.format_exc()}")
        finally:
            torch.cuda.empty_cache()
        self.cells.append(cell)
        shown = f"{cell['fwd_bwd_ms']:.2f} ms, {cell['peak_gb']:.2f} GB" if cell["status"] == "ok" else cell["status"]
        print(f"  {method:>10} {arch:<26} L={n:>8} B={b:>5}: {shown}", flush=True)
        return cell


# ---------------------------------------------------------------------------------------------------------
# checks, bandwidth, report


def check_correctness() -> list[str]:
    """Triton against the dense reference (bf16 inputs) at a few shapes; returns failures."""
    failures = []
    for path, arch, n, b in (
        ("auto", "hax", 1058, 4),
        ("gathered", "hax", 1058, 4),
        ("auto", "sliding_window+sink+dilated+sign_bin_lsh+key_selection", 4099, 2),
        ("masked", "sliding_window+sink+dilated+sign_bin_lsh+key_selection", 2047, 2),
        ("auto", "full", 257, 2),
        ("auto", "dilated", 1000, 2),
        ("auto", "argmax_lsh+key_selection", 3000, 2),
    ):
        spec, q, k, v, extra, grad = make_case(arch, n, b, seed=1)
        b, n = q.shape[:2]
        lengths = torch.tensor([n, n // 2] + [n] * (b - 2), device=DEVICE)
        mask = torch.arange(n, device=DEVICE)[None] < lengths[:, None]
        results = []
        for impl in ("triton", "reference"):
            with forced(path):
                out = sparse_attention(q, k, v, spec, impl=impl, attention_mask=mask, **extra)
            results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
        for name, a, e in zip(("out", "dq", "dk", "dv"), *results, strict=True):
            err = (a.float() - e.float()).abs().max().item() / max(1.0, e.float().abs().max().item())
            ok = bool(torch.isfinite(a).all()) and err < 3e-2
            print(f"  check {path:<8} {arch:<26} L={n:>5} {name}: relative error {err:.1e} {'ok' if ok else 'FAIL'}")
            if not ok:
                failures.append(f"{path} {arch} L={n} {name}: {err:.2e}")
    return failures


def copy_bandwidth_gbps() -> float:
    """Achievable HBM bandwidth: a 1 GiB device-to-device copy (read + write)."""
    src = torch.empty(1 << 29, dtype=torch.bfloat16, device=DEVICE)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ms = cuda_ms(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * 2 / (ms * 1e-3) / 1e9


def floor_bytes(tokens: int) -> dict[str, int]:
    """Each tensor touched once (DESIGN.md): forward reads q, k, v and writes o; backward reads q, k, v, o,
    do and writes dq, dk, dv."""
    fwd = tokens * 2 * (DK + DK + DV + DV)
    bwd = tokens * 2 * (DK + DK + DV + DV + DV + DK + DK + DV)
    return {"fwd": fwd, "fwd_bwd": fwd + bwd}


def table(cells: list[dict], lengths: tuple[int, ...]) -> str:
    rows = {}
    for c in cells:
        rows.setdefault((c["pattern"], c["method"]), {})[c["L"]] = c
    head = f"{'pattern':<26} {'method':<10} " + " ".join(f"{'L=' + _k(n):>17}" for n in lengths)
    lines = [head, "-" * len(head)]
    for (arch, method), by_n in rows.items():
        parts = []
        for n in lengths:
            c = by_n.get(n)
            if c is None:
                parts.append(f"{'':>17}")
            elif c["status"] == "ok":
                parts.append(f"{c['fwd_bwd_ms']:>8.2f}ms {c['peak_gb']:>5.1f}G")
            else:
                parts.append(f"{c['status'].split(':')[0][:17]:>17}")
        lines.append(f"{arch:<26} {method:<10} " + " ".join(parts))
    return "\n".join(lines)


def _k(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K" if n >= 1 << 10 else str(n)


# What the plot shows (the JSON has every cell): pattern -> colour; method -> line style
PLOT_PATTERNS = {"hax": "C3", "key_selection": "C1", "sign_bin_lsh": "C2", "sliding_window+sink": "C0", "full": "C7"}
PLOT_STYLES = {"triton": "-", "flex": "-.", "reference": ":", "sparse": "--"}


def plot(cells: list[dict], tokens: int, device: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    series = {}
    for c in cells:
        if c["status"] == "ok" and c["B"] * c["L"] == tokens:
            series.setdefault((c["method"], c["pattern"]), []).append((c["L"], c["fwd_bwd_ms"], c["peak_gb"]))
    for (method, arch), points in sorted(series.items()):
        if method == "sdpa_flash":
            label, style, color = "SDPA flash: full causal", "-", "black"
        elif arch in PLOT_PATTERNS and method in PLOT_STYLES and (method == "triton" or arch != "full"):
            label, style, color = f"{method}: {arch}", PLOT_STYLES[method], PLOT_PATTERNS[arch]
        else:
            continue
        points.sort()
        xs = [p[0] for p in points]
        for ax, column in ((left, 1), (right, 2)):
            ax.plot(xs, [p[column] for p in points], style, marker="o", ms=3, label=label, color=color)
    for ax, ylabel in ((left, f"fwd+bwd ms per {_k(tokens)} tokens"), (right, "peak memory (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L (B * L fixed)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    fig.suptitle(f"sparse attention, one head, d_k={DK}, d_v={DV}, bf16, k={KEYS} ({device})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def profile(arch: str = "hax") -> None:
    """Which kernels the Triton path's forward+backward spends its time in (both paths at the paper's shape)."""
    for method, n, b in (("triton_masked", 1058, 64), ("triton_gathered", 1058, 64), ("triton", 1 << 14, 64)):
        spec, q, k, v, extra, grad = make_case(arch, n, b)
        fwd, leaves = METHODS[method](spec, q, k, v, extra)
        step = lambda _, fwd=fwd, leaves=leaves, grad=grad: torch.autograd.grad(fwd(), leaves, grad)
        step(0)
        print(kernel_breakdown(step, steps=10).table(f"\n{method} {arch} B={b} L={n}"))


# (queries per block, keys per tile, warps, pipeline stages); the 4th is the default at d_v <= 128, the 1st the former
TILE_CONFIGS = (
    (64, 64, 8, 2), (64, 64, 4, 2), (64, 64, 8, 1), (64, 64, 4, 1), (64, 64, 4, 3), (64, 32, 4, 2),
    (32, 64, 4, 2), (32, 32, 4, 2), (32, 64, 2, 2), (128, 64, 8, 2), (128, 32, 8, 2), (16, 64, 2, 2),
)  # fmt: skip


def sweep_tiles(arch: str = "hax") -> list[dict]:
    """Graphed forward+backward of the Triton path under each tile config, at the paper's shape and 1M tokens."""
    from hax_ssm.ops.attention.triton.attention import tile_sizes
    from hax_ssm.ops.attention.triton.index import Blocks

    rows = []
    for bq, bk, warps, stages in TILE_CONFIGS:
        row = {"q": bq, "k": bk, "warps": warps, "stages": stages}
        for n, b in ((1058, 64), (1 << 14, 64)):
            spec, q, k, v, extra, grad = make_case(arch, n, b)
            try:
                with tile_sizes(Blocks(q=bq, k=bk, warps=warps, stages=stages)):
                    timed = measure(op_method("triton")(spec, q, k, v, extra), grad, 0.3, False, True)
                row[f"L{n}_ms"] = timed["fwd_bwd_ms"]
            except Exception as err:  # a config that does not compile or fit is reported, not fatal
                row[f"L{n}_ms"] = None
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
        print("  " + "  ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                               for key, value in row.items()), flush=True)  # fmt: skip
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 lengths, 3 patterns, ~1 min")
    parser.add_argument("--check", action="store_true", help="validate Triton against the reference first")
    parser.add_argument("--profile", action="store_true", help="only print the Triton HAX kernel breakdown")
    parser.add_argument("--tiles", action="store_true", help="only time the Triton HAX path under other tile sizes")
    parser.add_argument("--plot-only", action="store_true", help="only redraw the PNG of an existing --out JSON")
    parser.add_argument("--budget", type=float, default=None, help="seconds before remaining cells are skipped")
    parser.add_argument("--cell-cap", type=float, default=2.0, help="skip cells predicted slower (s per call)")
    parser.add_argument("--out", type=Path, default=Path("results/attention_benchmark.json"))
    args = parser.parse_args(argv)
    if args.plot_only:
        result = json.loads(args.out.read_text())
        png = plot(result["cells"], result["config"]["tokens"], result["provenance"]["device"])
        atomic_write_bytes(args.out.with_suffix(".png"), png)
        return 0
    if not torch.cuda.is_available():
        print("attention benchmark: needs a CUDA device", file=sys.stderr)
        return 2
    if args.profile:
        profile()
        return 0
    if args.tiles:
        rows = sweep_tiles()
        atomic_write_json(args.out.with_name("attention_tiles.json"), {"provenance": provenance(), "rows": rows})
        return 0
    lengths = QUICK_LENGTHS if args.quick else FULL_LENGTHS
    patterns = QUICK_PATTERNS if args.quick else PATTERNS
    tokens = 1 << (17 if args.quick else 20)
    budget = args.budget or (60.0 if args.quick else 420.0)
    t0 = time.monotonic()
    failures = check_correctness() if args.check else []
    if failures:
        print("check FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    bandwidth = copy_bandwidth_gbps()
    print(f"device {torch.cuda.get_device_name()}, copy bandwidth {bandwidth:.0f} GB/s")
    runner = Runner(budget - (time.monotonic() - t0), args.cell_cap, per_cell_s=0.3 if args.quick else 0.5)

    print("paper shape: B=64, L=1058, HAX")
    paper_methods = ("triton", "triton_gathered", "reference")
    paper = {m: runner.run(m, "hax", 1058, 64, with_forward=m.startswith("triton")) for m in paper_methods}
    paper.update({f"{m}+graph": runner.run(m, "hax", 1058, 64, graph=True) for m in paper_methods})
    print(f"crossover of the Triton paths: HAX, B * L = {CROSSOVER_TOKENS} tokens, graphed")
    crossover = [runner.run(m, "hax", n, CROSSOVER_TOKENS // n, graph=True) for n in CROSSOVER_LENGTHS
                 for m in ("triton_masked", "triton_gathered")]  # fmt: skip
    grid = [(m, a, n) for m in ("triton",) for n in lengths for a in patterns]
    grid += [(m, "full", n) for m in ("sdpa_flash",) for n in lengths]
    grid += [("reference", a, n) for n in lengths for a in patterns]
    # its compiles are slow (one per pattern and shape): one pattern at a time
    grid += [("flex", a, n) for a in reversed(FLEX_PATTERNS) if a in patterns for n in lengths]
    # last: the plain-torch path is the CPU reference, not a GPU path (about 1 s per call at 1M tokens)
    grid += [("sparse", a, n) for n in lengths if n <= SPARSE_MAX_LENGTH for a in patterns]
    print(f"grid: B * L = {tokens} tokens")
    cells = {}
    for m, a, n in grid:
        try:
            cells[(m, a, n)] = runner.run(m, a, n, tokens // n, with_forward=m in ("triton", "sdpa_flash"))
        except RuntimeError as err:  # the CUDA context is lost (e.g. a device-side assert): keep what was measured
            print(f"  {m} {a} L={n}: CUDA context lost, grid stopped: {str(err).splitlines()[0]}", flush=True)
            runner.errors.append(f"{m} {a} L={n}: {err}")
            break

    def ok(c):
        return c is not None and c["status"] == "ok"

    from hax_ssm.ops.attention.triton.attention import MASKED_MAX_LENGTH

    report = {"paper_shape": dict(paper), "crossover": crossover, "masked_max_length": MASKED_MAX_LENGTH,
              "targets": {}, "speedups": {}, "bandwidth": {"copy_GBps": bandwidth, "cells": []}}  # fmt: skip
    for method in ("triton", "triton_gathered"):
        for suffix in ("", "+graph"):
            fast, slow = paper[f"{method}{suffix}"], paper[f"reference{suffix}"]
            if ok(fast) and ok(slow):
                name = f"paper_speedup_{method}{suffix.replace('+', '_')}_vs_reference"
                # the target is the op as users run it (auto path); the gathered path's figure is for reference
                group = "targets" if method == "triton" else "speedups"
                report[group][name + (">=20" if group == "targets" else "")] = slow["fwd_bwd_ms"] / fast["fwd_bwd_ms"]
    long_n, mid_n = lengths[-1], (1 << 14)
    long_, mid = cells.get(("triton", "hax", long_n)), cells.get(("triton", "hax", mid_n))
    if ok(long_):
        report["targets"][f"hax_peak_gb_at_L={long_n}<8"] = long_["peak_gb"]
    if ok(long_) and ok(mid) and long_n > mid_n:
        report["targets"][f"hax_time_per_token_growth_{_k(mid_n)}_to_{_k(long_n)}<=1.5"] = (
            long_["fwd_bwd_ms"] / mid["fwd_bwd_ms"]
        )
    floor = floor_bytes(tokens)
    for c in [*paper.values(), *cells.values()]:
        if ok(c) and c["method"].startswith("triton"):
            n_tokens = c["B"] * c["L"]
            f = floor_bytes(n_tokens)
            entry = {"method": c["method"], "pattern": c["pattern"], "L": c["L"], "B": c["B"]}
            for key, ms in (("fwd", c.get("fwd_ms")), ("fwd_bwd", c["fwd_bwd_ms"])):
                if ms:
                    achieved = f[key] / (ms * 1e-3) / 1e9
                    entry[f"{key}_GBps"] = achieved
                    entry[f"{key}_fraction_of_copy"] = achieved / bandwidth
                    entry[f"{key}_floor_ms"] = f[key] / (bandwidth * 1e9) * 1e3
            report["bandwidth"]["cells"].append(entry)

    print()
    print(table(list(cells.values()), lengths))
    print()
    for key, value in report["targets"].items():
        print(f"target {key}: {value:.2f}")
    for key, value in report["speedups"].items():
        print(f"{key}: {value:.2f}")
    for entry in report["bandwidth"]["cells"]:
        if entry["pattern"] == "hax":
            print(
                f"bandwidth {entry['method']} hax L={entry['L']}: fwd {entry.get('fwd_GBps', 0):.0f} GB/s "
                f"({entry.get('fwd_fraction_of_copy', 0):.0%} of copy), fwd+bwd {entry['fwd_bwd_GBps']:.0f} GB/s "
                f"({entry['fwd_bwd_fraction_of_copy']:.0%}); floor {entry['fwd_bwd_floor_ms']:.3f} ms"
            )
    result = {
        "provenance": provenance(),
        "config": {"d_k": DK, "d_v": DV, "keys": KEYS, "num_hash": NUM_HASH, "dtype": str(DTYPE), "tokens": tokens,
                   "lengths": list(lengths), "quick": args.quick, "floor_bytes": floor},
        "cells": [*paper.values(), *cells.values()],
        **report,
        "wall_s": time.monotonic() - t0,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    atomic_write_bytes(args.out.with_suffix(".png"), plot(list(cells.values()), tokens, torch.cuda.get_device_name()))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} in {time.monotonic() - t0:.0f} s")
    if runner.errors:
        print("Triton path errors:\n" + "\n".join(runner.errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
