"""``hax demo``: the README's first command. Generate a small joint recall set, train Mamba2 + HAX
on it on the CPU, print the test accuracy (>= 90 % in under 5 minutes on 2 cores).

The settings below were chosen by measurement (see the closing numbers in the README); they keep
the paper's model (Mamba2, hidden 64, HAX) and shrink the task to tables of 2-4 contexts x 2-4
keys (length <= 74), so the key budget is smaller (k = 16: 8 LSH + 8 key selection).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from hax_ssm.train.config import TrainConfig

DEMO_SIZES = "2-4,2-4"
DEMO_TRAIN_PER_PAIR = 2500  # 22,500 rows: the 600 x 32 samples of training see each row once
DEMO_EVAL_PER_PAIR = 50
DEMO_SETTINGS = {
    "base_arch": "mamba2",
    "sparse_arch": "hax",
    "sparse_keys": 16,
    "lr": 3e-3,
    "attention_impl": "reference",  # same outputs as "sparse"; at length <= 74 dense is faster on a CPU
    "steps": 600,
    "warmup_steps": 50,
    "batch_size": 32,
    "bucket_by_length": True,  # batches of similar lengths: ~40 % less work, same accuracy (measured)
    "eval_every": 200,
    "eval_batch_size": 150,
    "log_every": 25,
    "device": "cpu",
    "precision": "fp32",
}


@contextlib.contextmanager
def _workdir(out: Path | None) -> Iterator[Path]:
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="hax-demo-") as tmp:
        yield Path(tmp)


def demo(
    out: Annotated[
        Optional[Path],  # noqa: UP045 (typer reads the annotation)
        typer.Option(help="keep the data (OUT/data) and the run (OUT/run) here [a temporary directory]"),
    ] = None,
    steps: Annotated[int, typer.Option(help="training steps")] = DEMO_SETTINGS["steps"],
    seed: Annotated[int, typer.Option(help="seed of the data and of the training")] = 0,
    threads: Annotated[
        int, typer.Option(help="CPU threads (one is fastest for this small model on a busy or 2-core machine)")
    ] = 1,
    overwrite: Annotated[bool, typer.Option(help="replace a previous demo in --out")] = False,
) -> None:
    """Generate a small joint recall set (2-4 contexts x 2-4 keys), train Mamba2 + HAX on it on the CPU,
    print the test accuracy."""
    import torch

    from hax_ssm.data import generate_joint_recall
    from hax_ssm.data.commands import describe
    from hax_ssm.errors import require
    from hax_ssm.train.commands import run_training

    require(threads >= 1, f"--threads {threads}: must be a positive integer")
    torch.set_num_threads(threads)
    started = time.perf_counter()
    with _workdir(out) as root:
        config = TrainConfig(
            **{**DEMO_SETTINGS, "steps": steps},
            seed=seed,
            data_dir=str(root / "data"),
            save_dir=str(root / "run"),
        ).validate()
        generate_joint_recall(
            root / "data",
            sizes=DEMO_SIZES,
            train_per_pair=DEMO_TRAIN_PER_PAIR,
            eval_per_pair=DEMO_EVAL_PER_PAIR,
            seed=seed,
            workers=1,
            overwrite=overwrite,
            progress=False,
        )
        print(describe(root / "data"))
        print(
            f"training Mamba2 + HAX (k={config.sparse_keys}) for {config.steps} steps of {config.batch_size} on "
            f"{torch.get_num_threads()} CPU threads"
        )
        results = run_training(config, resume=False, overwrite=overwrite, time_limit=None)
        assert results is not None  # no time limit: the run finishes
        print(_per_size_table(results["test"]))
        print(
            f"demo: test accuracy {100 * results['test']['accuracy']:.1f}% (chance 6.25%) "
            f"in {time.perf_counter() - started:.0f} s wall"
        )
        if out is None:
            print("(data and run were in a temporary directory, now removed: pass --out DIR to keep them)")


def _per_size_table(test: dict) -> str:
    names = test["size_names"]
    lines = [f"test accuracy per table shape ({' x '.join(names)}):"]
    for entry in test["by_size"]:
        shape = " x ".join(str(entry[n]) for n in names)
        lines.append(f"  {shape}: {100 * entry['accuracy']:5.1f}% ({entry['samples']} samples)")
    return "\n".join(lines)
