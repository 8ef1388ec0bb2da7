"""Where metric records go: metrics.jsonl always; TensorBoard when it is installed; W&B when asked."""

from __future__ import annotations

import hashlib
import importlib.util
from typing import Any

from hax_ssm.errors import HaxError
from hax_ssm.train.run_dir import RunDir

_NOT_SCALARS = ("step", "split")


class MetricSinks:
    """Only the main rank creates one; every record is a flat dict with 'step' and 'split'."""

    def __init__(self, run: RunDir, config: dict[str, Any], use_wandb: bool, wandb_project: str):
        self.run = run
        self.tensorboard = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run.tensorboard_dir))
        self.wandb = _start_wandb(run, config, wandb_project) if use_wandb else None

    def write(self, records: list[dict[str, Any]]) -> None:
        self.run.append_metrics(records)
        for record in records:
            scalars = {f"{record['split']}/{k}": v for k, v in record.items() if k not in _NOT_SCALARS}
            if self.tensorboard is not None:
                for key, value in scalars.items():
                    self.tensorboard.add_scalar(key, value, record["step"])
            if self.wandb is not None:
                self.wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(run: RunDir, config: dict[str, Any], project: str) -> Any:
    try:
        import wandb
    except ImportError:
        raise HaxError("--wandb: the wandb package is not installed (pip install wandb)") from None
    # one W&B run per run directory, so that --resume continues the same curves
    run_id = hashlib.sha1(str(run.path.resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=project, name=run.path.name, id=run_id, resume="allow", config=config, dir=str(run.path))
