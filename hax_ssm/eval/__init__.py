"""Evaluation: the task's metrics, per-size breakdowns, and the Table 1 report.

Imported lazily so that the ``hax`` command starts without loading torch.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "EvalResult": "hax_ssm.eval.evaluation",
    "evaluate": "hax_ssm.eval.evaluation",
    "score_recall": "hax_ssm.eval.metrics",
    "write_eval_files": "hax_ssm.eval.breakdown",
    "write_report": "hax_ssm.eval.report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hax_ssm.eval' has no attribute {name!r}")


__all__ = sorted(_LAZY)
