"""Training throughput of every model of the paper's Table 1 on one GPU, fast path against dense reference.

One training step = forward, masked next-token loss (+ the key-selection gate loss), backward, gradient
clipping and a fused AdamW update, at the paper's shape: batch 64, length 1058, bf16 autocast, on
synthetic joint-recall batches (hax_ssm.data when it imports, i.e. with pyarrow, else random tokens in
the same layout with the same masks). Every base x pattern of Table 1 (Mamba, Mamba2 x none, dilated, sliding_window,
sliding_window+dilated, sliding_window+sink, sign_bin_lsh, key_selection, hax, full), the 2x bases,
Samba and Samba+HAX; each model with a sparse branch also with the dense ``reference`` branch. Modes:
``eager`` (plain PyTorch) and ``graph`` (the whole step replayed as one CUDA graph,
hax_ssm.utils.step_graphs); ``compile`` (torch.compile + graph) on request.

    timeout 540 python benchmarks/train_throughput.py              # full run, < 8 min on an H100
    timeout 540 python benchmarks/train_throughput.py --ops        # plus fwd+bwd of scan / SSD / conv
    timeout 180 python benchmarks/train_throughput.py --quick      # smoke run, ~2 min
    timeout 300 python benchmarks/train_throughput.py --profile mamba2+hax   # where one step's time goes

Prints one table (and the op table with --ops); writes results/train_throughput.json (with provenance)
and results/train_throughput.png. A missing fast piece (triton not importable, a step that cannot be
captured) degrades to the torch path or to eager with a note; configs past the --budget deadline are skipped and
recorded. An error of a fast-path config, or a missed target with --check, exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hax_ssm.eval.metrics import score_recall
from hax_ssm.models import build_model
from hax_ssm.ops.common import triton_importable
from hax_ssm.train.schedule import build_adamw
from hax_ssm.utils.io import atomic_write_bytes, atomic_write_json
from hax_ssm.utils.profiling import cuda_ms, kernel_breakdown
from hax_ssm.utils.provenance import provenance
from hax_ssm.utils.step_graphs import StepGraphs

BATCH, LENGTH, PAD = 64, 1058, 3
DEVICE = "cuda"  # a CPU dry run of the plumbing sets "cpu"
TARGET = ("mamba2+hax", "graph", 50.0)  # config, mode, steps/s (issue 5)
PATTERNS = (
    None,
    "dilated",
    "sliding_window",
    "sliding_window+dilated",
    "sliding_window+sink",
    "sign_bin_lsh",
    "key_selection",
    "hax",
    "full",
)
QUICK = ("mamba2+hax", "mamba2+hax:reference", "mamba+hax", "mamba2", "samba")


@dataclass(frozen=True)
class Config:
    preset: str
    arch: str | None = None
    reference: bool = False  # the dense reference branch instead of the fast one

    @property
    def name(self) -> str:
        return self.preset + (f"+{self.arch}" if self.arch else "")

    @property
    def label(self) -> str:
        return self.name + (" [reference]" if self.reference else "")


def table1_configs() -> list[Config]:
    """The target first, then every base x pattern, the 2x bases and Samba; each model with a branch
    followed by its dense-reference twin (a run cut short by --budget still has pairs to compare)."""
    fast = [Config(base, arch) for base in ("mamba2", "mamba") for arch in PATTERNS]
    fast += [Config("mamba2_2x"), Config("mamba_2x"), Config("samba"), Config("samba", "hax")]
    fast.sort(key=lambda c: c.name != TARGET[0])
    twins = [(c, Config(c.preset, c.arch, reference=True)) if c.arch else (c,) for c in fast]
    return [config for pair in twins for config in pair]


def find_config(name: str) -> Config:
    reference = name.endswith("[reference]") or name.endswith(":reference")
    bare = name.removesuffix("[reference]").removesuffix(":reference").strip()
    for config in table1_configs():
        if config.name == bare and config.reference == (reference and config.arch is not None):
            return config
    names = sorted({c.name for c in table1_configs()})
    allowed = ", ".join(names)
    raise SystemExit(f"config {name!r}: unknown; allowed: {allowed} (append ':reference' for the dense branch)")


# ---------------------------------------------------------------------------------------------------------
# data


def _jr_rows(batch: int, gen: torch.Generator) -> tuple[list[Tensor], list[Tensor], str]:
    """Joint-recall rows (n_c, n_k uniform in 5..16): tokens and inquiry-key masks, unpadded."""
    shapes = torch.randint(5, 17, (batch, 2), generator=gen).tolist()
    try:
        import numpy as np

        from hax_ssm.data.joint_recall import draw_samples, inquiry_key_mask, joint_recall_task

        scheme = joint_recall_task().scheme
        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
        rows = [torch.from_numpy(draw_samples(tuple(s), 1, scheme, rng)[0].astype("int64")) for s in shapes]
        masks = [torch.from_numpy(inquiry_key_mask(tuple(s)).astype(bool)) for s in shapes]
        return rows, masks, "hax_ssm.data joint recall"
    except ImportError:
        pass
    rows, masks = [], []
    for n_c, n_k in shapes:  # BOS, n_c x (CTX, n_k x (KEY VAL)), SEP, the same again: random ids, same layout
        part = n_c * (1 + 2 * n_k)
        rows.append(torch.randint(10, 100, (2 + 2 * part,), generator=gen))
        mask = torch.zeros(2 + 2 * part, dtype=torch.bool)
        keys = torch.arange(n_c)[:, None] * (1 + 2 * n_k) + 1 + 2 * torch.arange(n_k)
        mask[2 + part + keys.flatten()] = True
        masks.append(mask)
    return rows, masks, "random tokens in the joint-recall layout (hax_ssm.data not installed)"


def synthetic_batches(count: int, batch: int, length: int, device: str, seed: int = 0) -> tuple[list, str]:
    """``count`` batches (input_ids, attention_mask, loss_mask), right-padded to ``length``."""
    gen = torch.Generator().manual_seed(seed)
    out, source = [], ""
    for _ in range(count):
        rows, masks, source = _jr_rows(batch, gen)
        ids = torch.full((batch, length), PAD, dtype=torch.int64)
        attn = torch.zeros(batch, length, dtype=torch.bool)
        loss_mask = torch.zeros(batch, length, dtype=torch.bool)
        for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
            n = min(len(row), length)
            ids[i, :n], attn[i, :n], loss_mask[i, :n] = row[:n], True, mask[:n]
        out.append(tuple(t.to(device) for t in (ids, attn, loss_mask)))
    return out, source


# ---------------------------------------------------------------------------------------------------------
# one training step


def build(config: Config, compile_model: bool = False) -> tuple[torch.nn.Module, Callable]:
    """The model and the trainer's step on one batch: masked recall loss (+ gate loss), backward,
    gradient clipping at 1, AdamW (the trainer's groups, fused and capturable), zero_grad."""
    torch.manual_seed(0)
    extra = {"attention_impl": "reference"} if config.reference else {}
    model = build_model(config.preset, sparse_arch=config.arch, **extra).to(DEVICE).train()
    opt = build_adamw(model, 2e-3, 0.01, capturable=DEVICE == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    forward = torch.compile(model) if compile_model else model
    gate_weight = model.config.gate_loss_weight

    def step(ids: Tensor, attn: Tensor, loss_mask: Tensor) -> Tensor:
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = forward(ids, attention_mask=attn)
        loss = score_recall(out.logits, ids, loss_mask).ce_sum.sum() / loss_mask.sum().clamp_min(1)
        if out.gate_loss is not None:
            loss = loss + gate_weight * out.gate_loss.float()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return model, step


def fallback_note() -> str | None:
    """What runs instead of the Triton kernels when they cannot (the torch paths: slower, same maths)."""
    if not triton_importable():
        return "triton does not import: plain-torch scan, SSD and attention"
    return None


@dataclass
class Result:
    config: str
    mode: str
    steps_per_s: float | None = None
    tokens_per_s: float | None = None
    step_ms: float | None = None
    peak_gb: float | None = None
    steps: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def measure(config: Config, mode: str, batches: list, args: argparse.Namespace) -> Result:
    result = Result(config.label, mode)
    note = fallback_note()
    if note:
        result.notes.append(note)
    model = step = runner = None
    try:
        torch.cuda.reset_peak_memory_stats()
        model, step = build(config, compile_model=mode == "compile")
        runner = StepGraphs(step, params=model.parameters()) if mode in ("graph", "compile") else step
        for i in range(args.warmup):  # includes the graph capture
            runner(*batches[i % len(batches)])
        torch.cuda.synchronize()
        started = time.perf_counter()
        n = 0
        while n < args.steps and (n < 3 or time.perf_counter() - started < args.time_cap):
            loss = runner(*batches[n % len(batches)])
            n += 1
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss is {loss.item()}")
        result.steps, result.steps_per_s = n, n / elapsed
        result.step_ms = 1e3 * elapsed / n
        result.tokens_per_s = result.steps_per_s * args.batch * args.length
        result.peak_gb = torch.cuda.max_memory_allocated() / 2**30
        if isinstance(runner, StepGraphs) and runner.disabled_reason:
            result.notes.append(f"eager instead of graph: {runner.disabled_reason}")
    except torch.cuda.OutOfMemoryError:
        result.error = "out of memory"
    except Exception as err:
        result.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        traceback.print_exc(file=sys.stderr)
    finally:
        del model, step, runner
        gc.collect()
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------------------
# the op table (--ops): the sequence mixers alone, forward + backward


def time_op(run: Callable[[], Any], reps: int = 10) -> tuple[float, float]:
    """Milliseconds per call (after 2 warm-up calls) and peak GB."""
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return cuda_ms(run, reps), torch.cuda.max_memory_allocated() / 2**30


@contextlib.contextmanager
def scan_segments(segments: int | None) -> Iterator[None]:
    """Force the Triton scan's number of time segments (None: its own choice)."""
    import hax_ssm.ops.triton_scan as ts

    old, ts.SEGMENTS_OVERRIDE = ts.SEGMENTS_OVERRIDE, segments
    try:
        yield
    finally:
        ts.SEGMENTS_OVERRIDE = old


def op_table(batch: int, length: int) -> list[dict[str, Any]]:
    from hax_ssm.ops.conv import causal_conv1d
    from hax_ssm.ops.scan import selective_scan
    from hax_ssm.ops.ssd import ssd

    dev, bf16 = "cuda", torch.bfloat16
    gen = torch.Generator(dev).manual_seed(0)

    def leaf(*shape, dtype=bf16, scale=1.0, shift=0.0):
        return (torch.randn(*shape, device=dev, generator=gen) * scale + shift).to(dtype).requires_grad_()

    rows = []

    def add(op: str, impl: str, fn: Callable[..., Tensor], *leaves: Tensor) -> None:
        def run() -> None:
            out = fn(*leaves)
            out.float().square().mean().backward()
            for t in leaves:
                t.grad = None

        try:
            ms, gb = time_op(run)
            rows.append({"op": op, "impl": impl, "fwd_bwd_ms": ms, "peak_gb": gb})
        except Exception as err:  # an OOM of a slow path is a result, not a failure
            rows.append({"op": op, "impl": impl, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"})
        gc.collect()
        torch.cuda.empty_cache()

    for d in (128, 256):
        x, z = leaf(batch, length, d), leaf(batch, length, d)
        dt = F.softplus(leaf(batch, length, d, dtype=torch.float32, shift=-4.0)).detach().requires_grad_()
        A = (-torch.arange(1, 17, device=dev, dtype=torch.float32)).repeat(d, 1).requires_grad_()
        B, C, D = leaf(batch, length, 16), leaf(batch, length, 16), leaf(d, dtype=torch.float32)
        args = (x, dt, A, B, C, D, z)
        add(f"mamba scan d={d} n=16", "chunked", lambda *t: selective_scan(*t, impl="chunked")[0], *args)
        for segments in (None, 1, 4):
            with scan_segments(segments):
                label = "triton" + ("" if segments is None else f"(S={segments})")
                add(f"mamba scan d={d} n=16", label, lambda *t: selective_scan(*t, impl="triton")[0], *args)
    for heads, p in ((8, 16), (8, 32)):
        x = leaf(batch, length, heads, p)
        dt = F.softplus(leaf(batch, length, heads, dtype=torch.float32, shift=-4.0)).detach().requires_grad_()
        A = (-torch.rand(heads, device=dev) * 15 - 1).requires_grad_()
        B, C, D = leaf(batch, length, 1, 32), leaf(batch, length, 1, 32), leaf(heads, dtype=torch.float32)
        args = (x, dt, A, B, C, D)
        for chunk in (256, 64):
            fn = lambda *t, chunk=chunk: ssd(*t, chunk_size=chunk, impl="chunked")[0]
            add(f"mamba2 ssd h={heads} p={p} n=32", f"chunked({chunk})", fn, *args)
        for segments in (None, 1, 4):
            with scan_segments(segments):
                label = "triton" + ("" if segments is None else f"(S={segments})")
                add(f"mamba2 ssd h={heads} p={p} n=32", label, lambda *t: ssd(*t, impl="triton")[0], *args)
    for d in (192, 256):  # Mamba2's conv (d_inner + 2 d_state) and Mamba 2x's
        x, w, bias = leaf(batch, length, d), leaf(d, 4, dtype=torch.float32), leaf(d, dtype=torch.float32)
        fn = lambda *t: causal_conv1d(*t, activation="silu")[0]
        add(f"causal conv d={d} k=4", "F.conv1d", fn, x, w, bias)
    return rows


# ---------------------------------------------------------------------------------------------------------
# --profile


def eager_breakdown(config: Config, batches: list):
    _, step = build(config)
    for i in range(3):
        step(*batches[i % len(batches)])
    return kernel_breakdown(lambda i: step(*batches[i % len(batches)]))


def profile(config: Config, batches: list, args: argparse.Namespace) -> None:
    print("\n" + eager_breakdown(config, batches).table(f"profile of {config.label}"))
    gc.collect()
    torch.cuda.empty_cache()
    graph = measure(config, "graph", batches, args)
    eager = measure(config, "eager", batches, args)
    for r in (eager, graph):
        rate = f"{r.steps_per_s:.1f} steps/s ({r.step_ms:.2f} ms)" if r.steps_per_s else r.error
        print(f"  {r.mode:<6} {rate}  {'; '.join(r.notes)}")


# ---------------------------------------------------------------------------------------------------------
# report


def print_table(results: list[Result]) -> None:
    print(f"\n{'config':<44} {'mode':<7} {'steps/s':>8} {'ms/step':>8} {'Mtok/s':>7} {'peak GB':>8}  notes")
    for r in results:
        if r.steps_per_s is None:
            print(f"{r.config:<44} {r.mode:<7} {'-':>8} {'-':>8} {'-':>7} {'-':>8}  {r.error}")
            continue
        print(
            f"{r.config:<44} {r.mode:<7} {r.steps_per_s:8.1f} {r.step_ms:8.2f} {r.tokens_per_s / 1e6:7.2f} "
            f"{r.peak_gb:8.2f}  {'; '.join(r.notes)}"
        )


def print_ops(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'op (fwd+bwd, batch 64 x 1058, bf16)':<40} {'impl':<12} {'ms':>8} {'peak GB':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['op']:<40} {r['impl']:<12} {'-':>8} {'-':>8}  {r['error']}")
        else:
            print(f"{r['op']:<40} {r['impl']:<12} {r['fwd_bwd_ms']:8.2f} {r['peak_gb']:8.2f}")


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.config.removesuffix(" [reference]") for r in results))
    series = {}
    for r in results:
        kind = ("reference" if r.config.endswith("[reference]") else "fast") + f", {r.mode}"
        series.setdefault(kind, {})[r.config.removesuffix(" [reference]")] = r.steps_per_s or 0.0
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) * max(1, len(series)) / 2 + 1.5))
    height = 0.8 / max(1, len(series))
    for i, (kind, values) in enumerate(series.items()):
        ys = [j + i * height for j in range(len(names))]
        ax.barh(ys, [values.get(n, 0.0) for n in names], height=height, label=kind)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(names))], names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(TARGET[2], color="k", linestyle="--", linewidth=0.8, label=f"target {TARGET[0]}")
    ax.set_xlabel("training steps / s (batch 64 x 1058, bf16, AdamW)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK)}, few steps")
    parser.add_argument("--profile", metavar="CONFIG", help="torch.profiler breakdown of one config, e.g. mamba2+hax")
    parser.add_argument("--ops", action="store_true", help="also time scan / SSD / conv alone (fwd+bwd)")
    parser.add_argument("--configs", help="comma-separated config names (append ':reference' for the dense twin)")
    parser.add_argument("--modes", default="eager,graph", help="eager, graph, compile (comma-separated)")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--length", type=int, default=LENGTH)
    parser.add_argument("--steps", type=int, default=30, help="most timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (graph capture included)")
    parser.add_argument("--time-cap", type=float, default=2.0, help="seconds of timed steps per measurement")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later measurements are skipped")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless {TARGET[0]} reaches the target")
    parser.add_argument("--out", default="results/train_throughput.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("train_throughput: needs a CUDA device", file=sys.stderr)
        return 2
    started = time.perf_counter()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("eager", "graph", "compile"):
            parser.error(f"--modes {args.modes!r}: unknown mode {m!r}; allowed: eager, graph, compile")
    batches, source = synthetic_batches(4, args.batch, args.length, DEVICE)
    if args.profile:
        profile(find_config(args.profile), batches, args)
        return 0
    if args.configs:
        configs = [find_config(name.strip()) for name in args.configs.split(",")]
    elif args.quick:
        configs = [find_config(name) for name in QUICK]
        args.steps, args.time_cap = min(args.steps, 10), min(args.time_cap, 1.0)
    else:
        configs = table1_configs()
    out = Path(args.out)
    results: list[Result] = []
    ops: list[dict[str, Any]] | None = None

    def save(final: bool) -> dict[str, Any]:
        """The JSON after every measurement (a killed run keeps what it measured), the PNG at the end."""
        target = next((r for r in results if r.config == TARGET[0] and r.mode == TARGET[1]), None)
        record = {
            "provenance": provenance(),
            "shape": {"batch": args.batch, "length": args.length, "dtype": "bfloat16 autocast", "optimizer": "AdamW"},
            "data": source,
            "target": {
                "config": TARGET[0],
                "mode": TARGET[1],
                "steps_per_s": TARGET[2],
                "measured": None if target is None else target.steps_per_s,
                "met": target is not None and (target.steps_per_s or 0.0) >= TARGET[2],
            },
            "complete": final,
            "results": [r.__dict__ for r in results],
            "ops": ops,
            "seconds": time.perf_counter() - started,
        }
        atomic_write_json(out, record)
        if final:
            plot(results, out.with_suffix(".png"))
        return record

    for config in configs:
        for mode in modes:
            if time.perf_counter() - started > args.budget:
                results.append(Result(config.label, mode, error="skipped: past the --budget deadline"))
                continue
            result = measure(config, mode, batches, args)
            results.append(result)
            rate = f"{result.steps_per_s:7.1f} steps/s" if result.steps_per_s else result.error
            print(f"[{time.perf_counter() - started:6.1f}s] {config.label:<44} {mode:<7} {rate}", flush=True)
            save(final=False)
    if args.ops:
        ops = op_table(args.batch, args.length)
    record = save(final=True)
    print(f"\nTraining throughput on {torch.cuda.get_device_name()}; data: {source}")
    print_table(results)
    if ops:
        print_ops(ops)
    target = record["target"]
    if target["measured"] is not None or any(r.config == TARGET[0] for r in results):
        got = f"{target['measured']:.1f}" if target["measured"] else "no measurement"
        verdict = "met" if target["met"] else "NOT met"
        print(f"\ntarget: {TARGET[0]} ({TARGET[1]}) >= {TARGET[2]:.0f} steps/s: {got} -> {verdict}")
    print(f"wrote {out} and {out.with_suffix('.png')} ({record['seconds']:.0f} s)")
    failed = [r for r in results if r.error and not r.error.startswith("skipped")]
    fast_errors = [r for r in failed if "[reference]" not in r.config]
    if fast_errors:
        print(f"{len(fast_errors)} fast-path measurement(s) failed", file=sys.stderr)
        return 1
    return 1 if args.check and not target["met"] else 0


if __name__ == "__main__":
    sys.exit(main())
