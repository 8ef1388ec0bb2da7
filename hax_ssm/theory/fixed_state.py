"""Fixed-state models against the information bounds: train small Mamba models (and one with a
sliding-window branch) with the library's trainer on uniform multi-query joint recall, then
measure per-value accuracy and whole-table exact match per table size n = n_c * n_k.

A demonstration sized for a 2-core CPU (about 5 minutes), not a sweep: tiny tables and |V| = 4
values so that a few hundred steps learn something. Every stage is resumable: the data set is
generated once (atomically) under ``work_dir/data``; each model trains in ``work_dir/<name>``
and a killed run continues from its last checkpoint; a finished run is only evaluated again
(or trained on, when given more steps).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hax_ssm.errors import HaxError
from hax_ssm.theory.bounds import BITS_PER_NUMBER, exact_recall_bound, recurrent_state_numbers, value_accuracy_bound


@dataclass(frozen=True)
class FixedStateModel:
    """A 2-layer Mamba (expand 2) of the given width and SSM state, optionally with a sliding window."""

    name: str
    hidden_size: int
    state_size: int
    sparse_arch: str = "none"
    sparse_keys: int = 8

    def overrides(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "state_size": self.state_size}


MODELS = (
    FixedStateModel("mamba-h8-s2", 8, 2),
    FixedStateModel("mamba-h16-s4", 16, 4),
    FixedStateModel("mamba-h32-s8", 32, 8),
    FixedStateModel("mamba-h16-s4+sw8", 16, 4, "sliding_window", 8),
)


@dataclass(frozen=True)
class BoundExperiment:
    """Data and training settings shared by every model."""

    sizes: str = "2-4,2-4"  # n_c and n_k ranges: tables of n = 4 .. 16 entries
    n_values: int = 4
    train_per_pair: int = 2000
    eval_per_pair: int = 40
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-2
    warmup_steps: int = 50
    eval_every: int = 250  # validate (keep the best weights) every so many steps and at the end
    seed: int = 0
    models: tuple[FixedStateModel, ...] = field(default=MODELS)

    def data_parameters(self) -> dict[str, Any]:
        return {
            "sizes": self.sizes,
            "values": self.n_values,
            "train_per_pair": self.train_per_pair,
            "eval_per_pair": self.eval_per_pair,
            "seed": self.seed,
        }


def prepare_data(data_dir: Path, experiment: BoundExperiment, progress: bool) -> Path:
    """Generate the data set once (atomically); refuse a directory that holds anything else."""
    from hax_ssm.data import generate_joint_recall
    from hax_ssm.data.joint_recall import joint_recall_task
    from hax_ssm.data.storage import METADATA_FILE

    wanted = experiment.data_parameters()
    if not data_dir.exists():
        generate_joint_recall(data_dir, pad=False, workers=1, progress=progress, **wanted)
        return data_dir
    meta_file = data_dir / METADATA_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    seed = wanted.pop("seed")
    task = joint_recall_task(**wanted)
    if meta.get("parameters") != task.to_json() or meta.get("seed") != seed:
        raise HaxError(f"{data_dir}: holds another data set than this experiment's; use another --work-dir")
    return data_dir


def train_config(experiment: BoundExperiment, model: FixedStateModel, data_dir: Path, save_dir: Path, progress: bool):
    from hax_ssm.train.config import TrainConfig

    return TrainConfig(
        data_dir=str(data_dir),
        save_dir=str(save_dir),
        base_arch="mamba",
        sparse_arch=model.sparse_arch,
        sparse_keys=model.sparse_keys,
        model_overrides=model.overrides(),
        lr=experiment.lr,
        steps=experiment.steps,
        warmup_steps=experiment.warmup_steps,
        batch_size=experiment.batch_size,
        eval_every=experiment.eval_every,
        eval_batch_size=256,
        log_every=50,
        seed=experiment.seed,
        device="cpu",
        precision="fp32",
        progress=progress,
    )


def train_resumable(config: Any) -> None:
    """Train to ``config.steps``: start fresh or continue from the last checkpoint (a finished
    run returns at once; one given more steps goes on)."""
    from hax_ssm.train.config import TrainConfig, merge_for_resume
    from hax_ssm.train.run_dir import RunDir
    from hax_ssm.train.trainer import Trainer

    run = RunDir(config.save_dir)
    resume = run.has_checkpoint()
    if resume:
        stored = TrainConfig.from_dict(run.read_json(run.config)["train"])
        merge_for_resume(stored, config.to_dict())  # refuses a changed experiment in the same directory
    Trainer(config, resume=resume, overwrite=not resume).fit()


@torch.no_grad()
def recall_by_entries(model: torch.nn.Module, loader: Any) -> dict[int, dict[str, float]]:
    """Per table size n: per-value accuracy (mean over samples) and whole-table exact match."""
    from hax_ssm.eval.metrics import score_recall

    model.eval()
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for batch in loader:
        scores = score_recall(
            model(batch.input_ids, attention_mask=batch.attention_mask).logits, batch.input_ids, batch.loss_mask
        )
        for n, acc, exact in zip(
            batch.sizes.prod(1).tolist(),
            scores.sample_accuracy.tolist(),
            (scores.correct == scores.count).tolist(),
            strict=True,
        ):
            sums[n][0] += acc
            sums[n][1] += exact
            sums[n][2] += 1
    return {
        n: {"value_accuracy": acc / count, "exact_match": exact / count, "samples": count}
        for n, (acc, exact, count) in sorted(sums.items())
    }


def evaluate_best(config: Any) -> tuple[dict[int, dict[str, float]], torch.nn.Module]:
    """The test split scored with the run's best-validation weights."""
    from hax_ssm.data import RecallLoader
    from hax_ssm.train.run_dir import RunDir
    from hax_ssm.train.trainer import build_model_for

    model = build_model_for(config)
    model.load_state_dict(RunDir(config.save_dir).load_checkpoint(RunDir(config.save_dir).best_checkpoint)["model"])
    loader = RecallLoader(config.data_dir, config.test_split, batch_size=256, shuffle=False)
    return recall_by_entries(model, loader), model


def run_bound_experiment(work_dir: str | Path, experiment: BoundExperiment, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) every model, then score it against both bounds; returns the JSON body."""
    work_dir = Path(work_dir)
    data_dir = prepare_data(work_dir / "data", experiment, progress)
    rows = []
    for spec in experiment.models:
        config = train_config(experiment, spec, data_dir, work_dir / spec.name, progress)
        train_resumable(config)
        by_n, model = evaluate_best(config)
        numbers = recurrent_state_numbers(model.config)
        bits = numbers * BITS_PER_NUMBER
        rows.append(
            {
                **asdict(spec),
                "state_numbers": numbers,
                "state_bits": bits,
                "parameters": sum(p.numel() for p in model.parameters()),
                "by_entries": [
                    {
                        "entries": n,
                        **scores,
                        "exact_recall_bound": exact_recall_bound(bits, n, experiment.n_values),
                        "value_accuracy_bound": value_accuracy_bound(bits, n, experiment.n_values),
                    }
                    for n, scores in by_n.items()
                ],
            }
        )
    settings = {k: v for k, v in asdict(experiment).items() if k != "models"}
    return {
        "experiment": settings,
        "bits_per_number": BITS_PER_NUMBER,
        "chance": 1 / experiment.n_values,
        "models": rows,
    }
