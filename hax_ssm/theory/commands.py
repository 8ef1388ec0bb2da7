"""``hax theory construct``, ``bound`` and ``plot``: JSON (with provenance) and one figure under --out-dir."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from hax_ssm.errors import require

app = typer.Typer(
    name="theory", help="Section 6 of the paper: the construction and the fixed-state bound.", no_args_is_help=True
)

OUT_DIR = Path("results/theory")
_OutDir = Annotated[Path, typer.Option("--out-dir", help="where the JSON and theory.png go")]
# On a shared 2-core machine two intra-op threads made these small ops up to 7x slower than one.
_Threads = Annotated[int, typer.Option(help="torch threads")]


def _set_threads(threads: int) -> None:
    import torch

    require(threads >= 1, f"--threads {threads}: must be at least 1")
    torch.set_num_threads(threads)


def table_shapes(levels: int, max_entries: int) -> list[tuple[int, ...]]:
    """Tables of n = 16, 64, 256, ... <= max_entries entries, the log2 n bits spread evenly over the
    levels (the extra bits to the inner ones): W=2 gives 4x4, 8x8, ...; W=3 gives 2x2x4, 4x4x4, 4x8x8, ..."""
    require(levels >= 1, f"--levels {levels}: must be at least 1")
    require(max_entries >= 16, f"--max-entries {max_entries}: must be at least 16")
    shapes = []
    for bits in range(4, int(math.log2(max_entries)) + 1, 2):
        per_level = [bits // levels + (i >= levels - bits % levels) for i in range(levels)]
        shapes.append(tuple(2**b for b in per_level))
    return shapes


def _write(out_dir: Path, name: str, body: dict[str, Any]) -> None:
    from hax_ssm.utils.io import atomic_write_json
    from hax_ssm.utils.provenance import provenance

    atomic_write_json(out_dir / name, {**body, "provenance": provenance()})
    print(f"wrote {out_dir / name}")
    plot(out_dir)


@app.command()
def construct(
    max_entries: Annotated[int, typer.Option(help="largest table (n = product of the sides)")] = 65536,
    levels: Annotated[list[int], typer.Option("--levels", help="context levels W (2 = joint recall); repeat")] = [2, 3],  # noqa: B006
    entries_per_shape: Annotated[
        int, typer.Option(help="samples per table size: this many entries' worth, between 1 and 64 tables")
    ] = 65536,
    seed: Annotated[int, typer.Option(help="seed of the tables, codes and hash projections")] = 0,
    threads: _Threads = 1,
    out_dir: _OutDir = OUT_DIR,
) -> None:
    """Run the hand-built SSM + LSH-attention model on random joint recall tables of growing size."""
    require(entries_per_shape >= 1, f"--entries-per-shape {entries_per_shape}: must be at least 1")
    levels = sorted(set(levels))
    shapes = [shape for w in levels for shape in table_shapes(w, max_entries)]
    _set_threads(threads)
    from tqdm import tqdm

    from hax_ssm.theory.construction import measure_construction, scaling_summary
    from hax_ssm.theory.plot import CONSTRUCT_JSON

    rows = []
    for shape in tqdm(shapes, desc="construct", unit="table size"):
        samples = max(1, min(64, entries_per_shape // math.prod(shape)))
        row = measure_construction(shape, samples, seed=seed)
        rows.append(row)
        tqdm.write(
            f"W={row['levels']} n={row['entries']:>7} {'x'.join(map(str, shape)):>10}: value accuracy "
            f"{row['value_accuracy']:.4f}, exact {row['exact_match']:.3f}, state {row['state_dim']}, "
            f"k_c {row['part_keys']}, hashes {row['num_hash']}, {row['seconds_per_sample']['total']:.3f} s/sample"
        )
    by_levels = {w: [r for r in rows if r["levels"] == w] for w in levels}
    scaling = {f"W={w}": scaling_summary(some) for w, some in by_levels.items() if len(some) >= 2}
    for name, summary in scaling.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    _write(out_dir, CONSTRUCT_JSON, {"rows": rows, "scaling": scaling})


@app.command()
def bound(
    work_dir: Annotated[
        Path, typer.Option(help="data set and training runs (resumable: run again to continue)")
    ] = Path("runs/theory-bound"),
    steps: Annotated[int, typer.Option(help="training steps per model")] = 500,
    seed: Annotated[int, typer.Option(help="seed of the data and of the models")] = 0,
    threads: _Threads = 1,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    out_dir: _OutDir = OUT_DIR,
) -> None:
    """Train small fixed-state models (Mamba, Mamba + sliding window) and score them against the bounds."""
    from hax_ssm.theory.fixed_state import BoundExperiment, run_bound_experiment
    from hax_ssm.theory.plot import BOUND_JSON

    require(steps >= 1, f"--steps {steps}: must be at least 1")
    _set_threads(threads)
    body = run_bound_experiment(work_dir, BoundExperiment(steps=steps, seed=seed), progress=progress)
    for model in body["models"]:
        cells = ", ".join(
            f"n={r['entries']}: {r['value_accuracy']:.2f}/{r['exact_match']:.2f}" for r in model["by_entries"]
        )
        print(f"{model['name']} ({model['state_bits']} bits) value accuracy/exact match: {cells}")
    _write(out_dir, BOUND_JSON, body)


@app.command()
def plot(out_dir: _OutDir = OUT_DIR) -> None:
    """Draw theory.png from the JSON files of construct and bound found in --out-dir."""
    from hax_ssm.theory.plot import load_results, plot_theory

    construct, bound = load_results(out_dir)
    require(construct is not None or bound is not None, f"--out-dir {out_dir}: no construct.json or bound.json to plot")
    print(f"wrote {plot_theory(out_dir, construct, bound)}")
