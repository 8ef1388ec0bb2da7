"""Recall-task data: joint recall (multi-level), MQAR, their storage and the training loader.

The loader imports torch; it is loaded on first use so that generating data does not.
"""

from __future__ import annotations

from typing import Any

from hax_ssm.data.build import generate_joint_recall, generate_mqar
from hax_ssm.data.storage import open_split
from hax_ssm.data.tokens import table_sizes

_FROM_LOADER = {"Batch", "RecallLoader", "RecallSplit", "load_split"}


def __getattr__(name: str) -> Any:
    if name in _FROM_LOADER:
        from hax_ssm.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'hax_ssm.data' has no attribute {name!r}")


__all__ = [
    "Batch",
    "RecallLoader",
    "RecallSplit",
    "generate_joint_recall",
    "generate_mqar",
    "load_split",
    "open_split",
    "table_sizes",
]
