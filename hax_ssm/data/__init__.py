"""Recall-task data: joint recall (multi-level), MQAR, their storage and the training loader.

Everything is loaded on first use: generating data does not import torch, and training on other
data (language-model windows use :class:`Batch`) does not import Arrow.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Batch": "hax_ssm.data.batch",
    "RecallLoader": "hax_ssm.data.loader",
    "RecallSplit": "hax_ssm.data.loader",
    "load_split": "hax_ssm.data.loader",
    "generate_joint_recall": "hax_ssm.data.build",
    "generate_mqar": "hax_ssm.data.build",
    "open_split": "hax_ssm.data.storage",
    "table_sizes": "hax_ssm.data.tokens",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hax_ssm.data' has no attribute {name!r}")


__all__ = sorted(_LAZY)
