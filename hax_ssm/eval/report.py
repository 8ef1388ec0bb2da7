"""Turn a directory of finished runs into the paper's Table 1 layout, next to the paper's numbers.

A cell is (variant row, base column). Within a cell the learning rate is chosen by the best mean
validation accuracy over seeds (as the paper does); the cell shows the test accuracy at that lr
as mean +- sample standard deviation over seeds. Samba sits in the Mamba column, as in the paper.
"""

from __future__ import annotations

import io
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hax_ssm.errors import require
from hax_ssm.ops.patterns import LSH_PATTERNS
from hax_ssm.train.config import RESUMABLE_CHANGES, TrainConfig
from hax_ssm.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from hax_ssm.utils.provenance import provenance

PAPER_TABLE = Path(__file__).with_name("paper_table1.json")
COLUMNS = {"mamba": "Mamba", "mamba2": "Mamba2"}
PATTERN_LABELS = {
    "none": "Base",
    "dilated": "+D",
    "sliding_window": "+SW",
    "sliding_window+dilated": "+SW+D",
    "sliding_window+sink": "+A (SW+sink)",
    "sign_bin_lsh": "+LSH",
    "key_selection": "+KS",
    "sign_bin_lsh+key_selection": "+HAX",
    "full": "+full attention",
}
# fields that never define a cell: they are chosen over (lr), averaged over (seed) or only say where
_NOT_CELL_FIELDS = RESUMABLE_CHANGES | {"lr", "seed", "base_arch", "sparse_arch", "width", "eval_batch_size"}


@dataclass(frozen=True)
class RunResult:
    name: str
    config: TrainConfig
    val_accuracy: float
    test_accuracy: float
    steps: int


@dataclass
class Cell:
    row: str
    column: str
    lr: float
    test_mean: float
    test_std: float | None  # None with one seed
    seeds: int
    val_mean: float
    steps: int
    by_lr: dict[float, tuple[float, float, int]]  # lr -> (val mean, test mean, seeds)


def load_paper_table(path: Path = PAPER_TABLE) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def variant_of(config: TrainConfig) -> tuple[str, str]:
    """(row label, column) of a run in the Table 1 layout."""
    label = PATTERN_LABELS.get(config.sparse_arch, "+" + config.sparse_arch)
    if config.base_arch == "samba":
        label = "Samba" if config.sparse_arch == "none" else f"Samba {label}"
    if config.width == "2x":
        label = "Base (2x dim)" if config.sparse_arch == "none" else f"{label} (2x dim)"
    if config.lsh_center == "sequence" and any(p in config.sparse_arch for p in LSH_PATTERNS):
        label += " [sequence-centred LSH]"
    return label, ("mamba" if config.base_arch in ("mamba", "samba") else "mamba2")


def collect_runs(root: Path) -> tuple[list[RunResult], list[str]]:
    """Finished runs (a results.json) under ``root``, and the names of unfinished ones."""
    finished, unfinished = [], []
    for config_path in sorted(root.rglob("config.json")):
        run_dir = config_path.parent
        results_path = run_dir / "results.json"
        if not results_path.is_file():
            unfinished.append(str(run_dir.relative_to(root)))
            continue
        results = json.loads(results_path.read_text())
        finished.append(
            RunResult(
                name=str(run_dir.relative_to(root)),
                config=TrainConfig.from_dict(results["config"], str(results_path)),
                val_accuracy=results["best"]["val_accuracy"],
                test_accuracy=results["test"]["accuracy"],
                steps=results["steps"],
            )
        )
    return finished, unfinished


def _distinguishing_fields(runs: list[RunResult]) -> list[str]:
    """Config fields that vary across the runs and are not lr/seed/paths: they split cells."""
    values: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        for key, value in run.config.to_dict().items():
            if key not in _NOT_CELL_FIELDS:
                values[key].add(json.dumps(value, sort_keys=True))
    return sorted(k for k, v in values.items() if len(v) > 1)


def summarise(runs: list[RunResult]) -> list[Cell]:
    split_by = _distinguishing_fields(runs)
    groups: dict[tuple[str, str], list[RunResult]] = defaultdict(list)
    for run in runs:
        row, column = variant_of(run.config)
        extra = ", ".join(f"{k}={getattr(run.config, k)}" for k in split_by)
        groups[(f"{row} [{extra}]" if extra else row, column)].append(run)
    cells = []
    for (row, column), members in groups.items():
        by_lr_runs: dict[float, list[RunResult]] = defaultdict(list)
        for run in members:
            by_lr_runs[run.config.lr].append(run)
        by_lr = {
            lr: (
                statistics.fmean(r.val_accuracy for r in rs),
                statistics.fmean(r.test_accuracy for r in rs),
                len(rs),
            )
            for lr, rs in sorted(by_lr_runs.items())
        }
        best_lr = max(by_lr, key=lambda lr: (by_lr[lr][0], -lr))  # ties: the smaller lr
        tests = [r.test_accuracy for r in by_lr_runs[best_lr]]
        cells.append(
            Cell(
                row=row,
                column=column,
                lr=best_lr,
                test_mean=statistics.fmean(tests),
                test_std=statistics.stdev(tests) if len(tests) > 1 else None,
                seeds=len(tests),
                val_mean=by_lr[best_lr][0],
                steps=max(r.steps for r in members),
                by_lr=by_lr,
            )
        )
    return cells


def _row_order(cells: list[Cell], paper: dict[str, Any]) -> list[str]:
    paper_rows = [r["variant"] for r in paper["rows"]]
    ours = {c.row for c in cells}
    return paper_rows + sorted(ours - set(paper_rows))


def _fmt_cell(cell: Cell | None) -> str:
    if cell is None:
        return "-"
    spread = f" ± {100 * cell.test_std:.1f}" if cell.test_std is not None else ""
    return f"{100 * cell.test_mean:.1f}{spread} (n={cell.seeds}, lr {cell.lr:g})"


def render_markdown(cells: list[Cell], paper: dict[str, Any], root: Path, unfinished: list[str]) -> str:
    index = {(c.row, c.column): c for c in cells}
    paper_values = {r["variant"]: r for r in paper["rows"]}
    steps = sorted({c.steps for c in cells})
    lines = [
        "# Multi-query joint recall: test accuracy (%), Table 1 layout",
        "",
        f"Runs under `{root}`: {sum(c.seeds for c in cells)} counted in the table, {len(unfinished)} unfinished. "
        f"Steps per run: {', '.join(map(str, steps)) or '-'} (paper: {paper['protocol']['steps']}). "
        "Ours: mean ± sample std over seeds at the lr with the best mean validation accuracy. "
        f"Paper: {paper['metric']}.",
        "",
        "| variant | " + " | ".join(f"{name} (ours) | {name} (paper)" for name in COLUMNS.values()) + " |",
        "|---|" + "---|---|" * len(COLUMNS),
    ]
    for row in _row_order(cells, paper):
        entries = []
        for column in COLUMNS:
            paper_value = paper_values.get(row, {}).get(column)
            entries += [_fmt_cell(index.get((row, column))), "-" if paper_value is None else f"{paper_value:.1f}"]
        lines.append(f"| {row} | " + " | ".join(entries) + " |")
    lines += ["", "## Per learning rate (validation / test accuracy %, mean over seeds)", ""]
    lines += ["| variant | base | lr | validation | test | seeds |", "|---|---|---|---|---|---|"]
    for cell in sorted(cells, key=lambda c: (c.column, c.row)):
        for lr, (val, test, n) in cell.by_lr.items():
            mark = " (chosen)" if lr == cell.lr else ""
            lines.append(
                f"| {cell.row} | {COLUMNS.get(cell.column, cell.column)} | {lr:g}{mark} | "
                f"{100 * val:.1f} | {100 * test:.1f} | {n} |"
            )
    if unfinished:
        lines += ["", "Unfinished runs: " + ", ".join(f"`{u}`" for u in unfinished)]
    return "\n".join(lines) + "\n"


def render_png(cells: list[Cell], paper: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _row_order(cells, paper)
    index = {(c.row, c.column): c for c in cells}
    paper_values = {r["variant"]: r for r in paper["rows"]}
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(11, 0.35 * len(rows) + 1.5), sharey=True)
    for ax, (column, name) in zip(axes, COLUMNS.items(), strict=True):
        y = range(len(rows))
        ours = [index.get((r, column)) for r in rows]
        ax.barh(
            [i - 0.2 for i in y],
            [100 * c.test_mean if c else 0 for c in ours],
            height=0.4,
            xerr=[100 * (c.test_std or 0) if c else 0 for c in ours],
            label="ours",
            color="tab:blue",
        )
        ax.barh(
            [i + 0.2 for i in y],
            [paper_values.get(r, {}).get(column) or 0 for r in rows],
            height=0.4,
            label="paper",
            color="tab:gray",
        )
        ax.axvline(100 / 16, color="black", linestyle=":", linewidth=1, label="chance")
        ax.set_title(name)
        ax.set_xlim(0, 100)
        ax.set_xlabel("test accuracy (%)")
        ax.set_yticks(list(y), rows)
        ax.invert_yaxis()
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def write_report(root: str | Path, out: str | Path | None = None) -> list[Path]:
    """report.md, report.png and report.json for the runs under ``root``; returns the paths."""
    root = Path(root)
    require(root.is_dir(), f"{root}: not a directory")
    runs, unfinished = collect_runs(root)
    require(bool(runs or unfinished), f"{root}: holds no runs (no config.json below it)")
    out = Path(out) if out else root
    paper = load_paper_table()
    cells = summarise(runs)
    paths = [out / "report.md", out / "report.png", out / "report.json"]
    atomic_write_text(paths[0], render_markdown(cells, paper, root, unfinished))
    atomic_write_bytes(paths[1], render_png(cells, paper))
    atomic_write_json(
        paths[2],
        {
            "cells": [{**c.__dict__, "by_lr": {f"{k:g}": v for k, v in c.by_lr.items()}} for c in cells],
            "unfinished": unfinished,
            "paper": paper,
            "provenance": provenance(),
        },
    )
    return paths
