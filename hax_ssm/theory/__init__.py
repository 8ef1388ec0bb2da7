"""Section 6 of the paper made visible: a hand-built SSM + LSH-attention model that solves
multi-query joint recall with O(log n) state, and fixed-state models measured against the
information bounds. Commands: ``hax theory construct`` and ``hax theory bound``."""

from hax_ssm.theory.bounds import exact_recall_bound, recurrent_state_numbers, value_accuracy_bound

__all__ = ["exact_recall_bound", "recurrent_state_numbers", "value_accuracy_bound"]
