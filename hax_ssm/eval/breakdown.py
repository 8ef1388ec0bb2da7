"""Write an evaluation as JSON (with provenance) and a picture of accuracy per task size.

Two size names (joint recall: n_c x n_k) give a heatmap; one (associative recall, MQAR pairs)
gives a bar chart; more levels give the JSON only.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from hax_ssm.eval.evaluation import EvalResult
from hax_ssm.eval.metrics import CHANCE_ACCURACY
from hax_ssm.utils.io import atomic_write_bytes, atomic_write_json
from hax_ssm.utils.provenance import provenance


def size_grid(result: EvalResult) -> tuple[list[int], list[int], np.ndarray]:
    """Rows (first size), columns (second size) and accuracy in % (NaN where no sample)."""
    rows = sorted({k[0] for k in result.by_size})
    cols = sorted({k[1] for k in result.by_size})
    grid = np.full((len(rows), len(cols)), np.nan)
    for (r, c), (acc, _) in result.by_size.items():
        grid[rows.index(r), cols.index(c)] = 100 * acc
    return rows, cols, grid


def plot_breakdown(result: EvalResult, title: str) -> bytes | None:
    """PNG bytes of the per-size accuracy, or None when there is no picture for this shape."""
    if not result.by_size or len(result.size_names) not in (1, 2):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(result.size_names) == 2:
        rows, cols, grid = size_grid(result)
        fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(cols), 0.8 + 0.4 * len(rows)))
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", origin="lower", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                if not np.isnan(grid[i, j]):
                    color = "black" if grid[i, j] > 60 else "white"
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(cols)), [str(c) for c in cols])
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel(result.size_names[1])
        ax.set_ylabel(result.size_names[0])
        fig.colorbar(image, ax=ax, label="accuracy (%)")
    else:
        keys = sorted(result.by_size)
        fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(keys)), 3.0))
        ax.bar([str(k[0]) for k in keys], [100 * result.by_size[k][0] for k in keys])
        ax.axhline(100 * CHANCE_ACCURACY, color="gray", linestyle="--", linewidth=1, label="chance")
        ax.set_xlabel(result.size_names[0])
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend()
    ax.set_title(f"{title}: {100 * result.accuracy:.1f}% overall", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_eval_files(out_dir: str | Path, split: str, result: EvalResult, title: str, **extra: object) -> list[Path]:
    """``<split>.json`` and, when there is a picture, ``<split>.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    written = [out_dir / f"{split}.json"]
    atomic_write_json(written[0], {"split": split, **extra, **result.to_json(), "provenance": provenance()})
    png = plot_breakdown(result, title)
    if png is not None:
        written.append(out_dir / f"{split}.png")
        atomic_write_bytes(written[1], png)
    return written
