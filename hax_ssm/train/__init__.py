"""Training on the recall tasks: the paper's protocol, resumable, with sweeps.

Imported lazily so that the ``hax`` command starts without loading torch.
"""

from __future__ import annotations

from typing import Any

from hax_ssm.train.config import TrainConfig

_LAZY = {"Trainer": "hax_ssm.train.trainer", "Diverged": "hax_ssm.train.trainer", "run_sweep": "hax_ssm.train.sweep"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hax_ssm.train' has no attribute {name!r}")


__all__ = ["Diverged", "TrainConfig", "Trainer", "run_sweep"]
