"""One figure for section 6 of the paper, drawn from the JSON files the theory commands write."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from hax_ssm.theory.bounds import exact_recall_bound, value_accuracy_bound
from hax_ssm.utils.io import atomic_write_bytes

CONSTRUCT_JSON = "construct.json"
BOUND_JSON = "bound.json"
FIGURE = "theory.png"


def _construction_panels(axes: Any, construct: dict[str, Any]) -> None:
    acc_exact, acc_value, state, time_ax = axes
    for levels in sorted({r["levels"] for r in construct["rows"]}):
        rows = [r for r in construct["rows"] if r["levels"] == levels]
        n = np.array([r["entries"] for r in rows])
        marker = "o" if levels == 2 else "^"
        for ax, key in ((acc_exact, "exact_match"), (acc_value, "value_accuracy")):
            label = f"construction, W={levels}, |V|={rows[0]['n_values']}"
            ax.plot(n, [r[key] for r in rows], color="k", marker=marker, ms=4, label=label)
        state.plot(n, [r["state_dim"] for r in rows], marker=marker, label=f"SSM state, W={levels}")
        state.plot(
            n, [r["part_keys"] for r in rows], marker=marker, ls="--", ms=3, label=f"keys per query k_c, W={levels}"
        )
        seconds = np.array([r["seconds_per_sample"]["total"] for r in rows])
        time_ax.plot(n, seconds, marker=marker, label=f"measured, W={levels}")
        ref = n * np.log2(n) ** 2
        time_ax.plot(
            n, ref * seconds[-1] / ref[-1], ":", color="grey", label="n log² n (scaled)" if levels == 2 else None
        )
    state.set(xlabel="table entries n", ylabel="numbers", title="construction: state and keys per query")
    time_ax.set(xlabel="table entries n", ylabel="seconds per sample", title="construction: run time (CPU)")
    time_ax.set_yscale("log")


def _fixed_state_panels(axes: Any, bound: dict[str, Any], n_max: int) -> None:
    acc_exact, acc_value = axes
    n_values = bound["experiment"]["n_values"]
    grid = np.unique(np.geomspace(2, n_max, 200).astype(int))
    for i, model in enumerate(bound["models"]):
        color = f"C{i}"
        rows = model["by_entries"]
        n = [r["entries"] for r in rows]
        label = f"{model['name']} ({model['state_bits']:,} bits), |V|={n_values}"
        acc_exact.plot(n, [r["exact_match"] for r in rows], "o-", color=color, ms=3, label=label)
        acc_value.plot(n, [r["value_accuracy"] for r in rows], "o-", color=color, ms=3, label=label)
        bits = model["state_bits"]
        acc_exact.plot(grid, [exact_recall_bound(bits, int(g), n_values) for g in grid], "--", color=color, lw=0.8)
        acc_value.plot(grid, [value_accuracy_bound(bits, int(g), n_values) for g in grid], "--", color=color, lw=0.8)
    acc_value.axhline(bound["chance"], color="grey", lw=0.8, ls=":", label=f"chance (|V|={n_values})")


def load_results(out_dir: str | Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The construct and bound JSON files in ``out_dir`` (None where missing)."""
    paths = (Path(out_dir) / CONSTRUCT_JSON, Path(out_dir) / BOUND_JSON)
    construct, bound = (json.loads(p.read_text()) if p.is_file() else None for p in paths)
    return construct, bound


def plot_theory(out_dir: str | Path, construct: dict[str, Any] | None, bound: dict[str, Any] | None) -> Path:
    """Accuracy against n (exact match, per value; dashed: the fixed-state bounds), and the
    construction's state size and run time against n. Writes ``out_dir/theory.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (acc_exact, acc_value), (state, time_ax) = axes
    n_max = 16
    if construct is not None:
        _construction_panels((acc_exact, acc_value, state, time_ax), construct)
        n_max = max(r["entries"] for r in construct["rows"])
    if bound is not None:
        _fixed_state_panels(
            (acc_exact, acc_value), bound, max(n_max, 4 * max(m["state_bits"] for m in bound["models"]))
        )
    acc_exact.set(title="whole table recalled exactly (dashed: 2^b / |V|^n)", ylabel="exact match")
    acc_value.set(title="per-value accuracy (dashed: Fano bound of a b-bit state)", ylabel="accuracy")
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("table entries n")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in (acc_exact, acc_value):
        ax.set_ylim(-0.03, 1.03)
    fig.suptitle("Joint recall: hand-built SSM + LSH attention vs. trained fixed-state models", fontsize=11)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    path = Path(out_dir) / FIGURE
    atomic_write_bytes(path, buffer.getvalue())
    return path
