"""A grid of training runs with one step budget: expand, skip finished, resume unfinished, run N at once.

Sweep file (JSON)::

    {
      "data_dir": "data/jr",                        # may be given or overridden with --data-dir
      "train": {"steps": 20000, "warmup_steps": 250}, # TrainConfig fields common to every run
      "cells": [{"base_arch": "mamba"}, {"base_arch": "mamba2", "width": "2x"}],   # optional
      "grid": {"sparse_arch": ["none", "hax"], "lr": [0.003, 0.001], "seed": [0, 1]}  # optional
    }

Runs = cells x cross product of the grid (each value list crossed with every cell); a run's config
is the defaults, then ``train``, then its cell, then its grid point. Every run is validated before
any starts. Layout of SWEEP_DIR: ``sweep.json`` (the spec), ``runs/<name>/`` (run directories),
``configs/<name>.json`` (each run's full config), ``logs/<name>.log`` (its output).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

import hax_ssm
from hax_ssm.errors import HaxError, require
from hax_ssm.train.config import TrainConfig
from hax_ssm.train.run_dir import RunDir
from hax_ssm.utils.io import atomic_write_json

SWEEP_KEYS = ("data_dir", "train", "cells", "grid")
# where a run is and what this sweep does with it
NEW, UNFINISHED, FINISHED = "new", "unfinished", "finished"


@dataclass(frozen=True)
class SweepRun:
    name: str
    config: TrainConfig

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.config.save_dir)

    @property
    def status(self) -> str:
        if self.run_dir.is_finished() and json.loads(self.run_dir.results.read_text())["steps"] >= self.config.steps:
            return FINISHED
        return UNFINISHED if self.run_dir.has_checkpoint() else NEW


def load_sweep(path: str | Path, data_dir: str | None = None) -> dict[str, Any]:
    from hax_ssm.train.commands import read_json_object

    spec = read_json_object(Path(path), "sweep file")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise HaxError(f"sweep file {path}: unknown key {unknown[0]!r}; allowed: {', '.join(SWEEP_KEYS)}")
    if data_dir is not None:
        spec["data_dir"] = data_dir
    require(bool(spec.get("data_dir")), f"sweep file {path}: no data_dir (set it there or pass --data-dir)")
    require(isinstance(spec.get("train", {}), dict), f"sweep file {path}: 'train' must be an object")
    require(isinstance(spec.get("grid", {}), dict), f"sweep file {path}: 'grid' must be an object of lists")
    cells = spec.get("cells", [{}])
    require(
        isinstance(cells, list) and cells and all(isinstance(c, dict) for c in cells),
        f"sweep file {path}: 'cells' must be a non-empty list of objects",
    )
    for key, values in spec.get("grid", {}).items():
        require(isinstance(values, list) and values, f"sweep file {path}: grid[{key!r}] must be a non-empty list")
    return spec


def run_name(config: TrainConfig, varying: list[str]) -> str:
    parts = [config.base_arch, config.sparse_arch, config.width, f"lr{config.lr:g}", f"seed{config.seed}"]
    named = ("base_arch", "sparse_arch", "width", "lr", "seed")
    parts += [f"{k}={getattr(config, k)}" for k in varying if k not in named]
    return "-".join(str(p).replace("/", "_").replace(" ", "") for p in parts)


def expand_sweep(spec: dict[str, Any], sweep_dir: Path) -> list[SweepRun]:
    """Every run of the sweep with its validated config; refuses unknown fields and duplicates."""
    grid = spec.get("grid", {})
    cells = spec.get("cells", [{}])
    varying = sorted(set(grid) | {k for c in cells for k in c})
    runs: dict[str, SweepRun] = {}
    for cell in cells:
        clash = sorted(set(cell) & set(grid))
        if clash:
            raise HaxError(f"sweep: {clash[0]!r} is set both in a cell and in the grid")
        for point in itertools.product(*grid.values()):
            values = {**spec.get("train", {}), **cell, **dict(zip(grid, point, strict=True))}
            values["data_dir"] = str(spec["data_dir"])
            values["save_dir"] = ""
            probe = TrainConfig.from_dict(values, "sweep file")
            probe.save_dir = "-"  # validated before the name is known
            probe.validate()
            name = run_name(probe, varying)
            require(name not in runs, f"sweep: two runs share the name {name!r} (a repeated grid value?)")
            probe.save_dir = str(sweep_dir / "runs" / name)
            probe.progress = False
            runs[name] = SweepRun(name, probe)
    return list(runs.values())


def _child_command(run: SweepRun, config_path: Path, time_limit: float | None) -> list[str]:
    cmd = [sys.executable, "-m", "hax_ssm.cli", "train", "--config", str(config_path)]
    cmd += ["--resume"] if run.status == UNFINISHED else ["--overwrite"]
    if time_limit is not None:
        cmd += ["--time-limit", f"{max(time_limit, 1.0):.0f}"]
    return cmd


def _child_env(parallel: int, device: str) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(hax_ssm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    uses_cpu = device == "cpu" or (device == "auto" and not _cuda_available())
    if uses_cpu:  # share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_sweep(
    spec: dict[str, Any],
    sweep_dir: str | Path,
    parallel: int = 1,
    time_limit: float | None = None,
    dry_run: bool = False,
) -> dict[str, list[str]]:
    """Run every unfinished run (``parallel`` subprocesses at a time); returns names by outcome.

    SIGTERM/SIGINT stop the children gracefully (they write a checkpoint); rerunning the same
    command resumes them. ``time_limit`` bounds the whole sweep: runs still going at the end
    stop with a checkpoint and no new one starts.
    """
    require(isinstance(parallel, int) and parallel >= 1, f"--parallel {parallel}: must be a positive integer")
    sweep_dir = Path(sweep_dir)
    runs = expand_sweep(spec, sweep_dir)
    todo = [r for r in runs if r.status != FINISHED]
    print(f"sweep {sweep_dir}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run")
    if dry_run:
        for r in runs:
            print(f"  {r.status:10s} {r.name}")
        return {"finished": [r.name for r in runs if r.status == FINISHED], "todo": [r.name for r in todo]}
    _check_data(spec["data_dir"])
    atomic_write_json(sweep_dir / "sweep.json", spec)
    for r in runs:
        atomic_write_json(sweep_dir / "configs" / f"{r.name}.json", r.config.to_dict())
    (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    remaining = lambda: None if time_limit is None else time_limit - (time.monotonic() - started)
    outcome: dict[str, list[str]] = {"finished": [], "stopped": [], "failed": []}
    active: dict[str, tuple[subprocess.Popen, Any]] = {}
    queue = list(todo)
    stop = {"signal": False}
    signalled: set[str] = set()
    previous = {s: signal.signal(s, lambda *_: stop.update(signal=True)) for s in (signal.SIGTERM, signal.SIGINT)}
    env = _child_env(parallel, runs[0].config.device if runs else "auto")
    bar = tqdm(total=len(todo), desc="sweep", unit="run")
    try:
        while queue or active:
            left = remaining()
            out_of_time = left is not None and left <= 0
            while queue and len(active) < parallel and not stop["signal"] and not out_of_time:
                run = queue.pop(0)
                log = (sweep_dir / "logs" / f"{run.name}.log").open("a")
                cmd = _child_command(run, sweep_dir / "configs" / f"{run.name}.json", left)
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                active[run.name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
            if (stop["signal"] or out_of_time) and not active:
                break
            if stop["signal"]:  # each child once: it finishes its step, checkpoints and exits
                for name, (proc, _) in active.items():
                    if name not in signalled and proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                        signalled.add(name)
            time.sleep(0.2)
            for name in [n for n, (p, _) in active.items() if p.poll() is not None]:
                proc, log = active.pop(name)
                log.close()
                run = next(r for r in todo if r.name == name)
                if run.status == FINISHED:
                    status = "finished"
                elif proc.returncode == 0 or name in signalled:
                    status = "stopped"
                else:
                    status = "failed"
                outcome[status].append(name)
                bar.update(1)
                if status == "failed":
                    log_path = sweep_dir / "logs" / f"{name}.log"
                    tqdm.write(f"run {name} failed (exit {proc.returncode}); see {log_path}")
    finally:
        bar.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    outcome["not_started"] = [r.name for r in queue]
    print(
        f"sweep {sweep_dir}: {len(outcome['finished'])} finished now, {len(outcome['stopped'])} stopped with a "
        f"checkpoint, {len(outcome['failed'])} failed, {len(queue)} not started; "
        f"rerun the same command to continue; hax report {sweep_dir} for the table"
    )
    return outcome


def _check_data(data_dir: str) -> None:
    """Fail once, before any run starts, when the data directory is not a dataset."""
    from hax_ssm.data import load_split

    load_split(data_dir, "train")
