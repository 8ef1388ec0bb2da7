"""The configuration of ``hax train-lm``: the trainer's config with the language-model protocol.

PAPER.md section 5: context 2,048, documents at least one context long, cosine schedule (200 steps at
lr 0, 800 warm-up, max lr 3e-4 at 130M / 1.5e-4 at 790M, min lr 1e-5), k = 128 and argmax LSH with
num_hash = k; the best checkpoint is the one of lowest validation loss. Importing this module does not
load torch (``hax --help`` builds the flags from these defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hax_ssm.errors import require
from hax_ssm.train.config import RESUMABLE_CHANGES, TrainConfig

LM_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "lm"
LM_SIZES = ("tiny", "small")  # configs/lm/<base>_<size>.json: tiny for CPU tests, small (~27M) for one GPU
LANGUAGE_HAX = "argmax_lsh+key_selection"  # what 'hax' means here (PAPER.md section 5)
SIGN_BIN_NUM_HASH = 8  # the synthetic study's sign-bin LSH default
VOCAB_MULTIPLE = 64


def language_sparse_arch(arch: str) -> str:
    """``arch`` with every ``hax`` replaced by the language setting, argmax LSH + key selection."""
    parts = [p.strip() for p in arch.split("+")]
    return "+".join(LANGUAGE_HAX if p.lower() == "hax" else p for p in parts)


@dataclass
class LMTrainConfig(TrainConfig):
    """TrainConfig with the language-model protocol's defaults (PAPER.md section 5) and fields."""

    base_arch: str = "mamba"
    size: str = "small"
    context: int = 2048
    init_from: str = ""  # a Mamba checkpoint directory in the HF layout (continual pre-training)
    sparse_keys: int = 128
    num_hash: int = 0  # 0: k for argmax LSH (the paper's setting), 8 for sign-bin LSH
    lr: float = 3e-4  # the paper's 130M value; 1.5e-4 for 790M
    min_lr: float = 1e-5
    hold_steps: int = 200
    warmup_steps: int = 800
    steps: int = 50_000
    batch_size: int = 64
    eval_every: int = 1000
    eval_batch_size: int = 8
    eval_windows: int = 64
    val_split: str = "val"
    test_split: str = "test"

    # steps is the cosine's horizon: changing it on resume would change the schedule already run
    resumable_changes = RESUMABLE_CHANGES - {"steps"}
    best_by = "loss"

    @property
    def preset(self) -> str:
        return str(LM_CONFIG_DIR / f"{self.base_arch}_{self.size}.json")

    def model_kwargs(self) -> dict[str, Any]:
        return {"data_max_length": self.context, **super().model_kwargs()}

    def lr_at(self, step: int) -> float:
        from hax_ssm.train.schedule import hold_warmup_cosine_lr  # (torch is not loaded by `hax --help`)

        return hold_warmup_cosine_lr(step, self.lr, self.min_lr, self.steps, self.warmup_steps, self.hold_steps)

    def validate(self) -> LMTrainConfig:
        require(self.size in LM_SIZES, f"--size {self.size!r}: allowed: {', '.join(LM_SIZES)}")
        require(self.width == "1x", f"--width {self.width!r}: language models set their size with --size")
        require(isinstance(self.sparse_arch, str), f"--sparse-arch {self.sparse_arch!r}: must be a pattern name")
        self.sparse_arch = language_sparse_arch(self.sparse_arch)
        if self.num_hash == 0:
            self.num_hash = self.sparse_keys if "argmax_lsh" in self.sparse_arch else SIGN_BIN_NUM_HASH
        super().validate()
        require(_is_int(self.context, 2), f"--context {self.context!r}: must be an integer of at least 2")
        require(_is_int(self.eval_windows, 1), f"--eval-windows {self.eval_windows!r}: must be a positive integer")
        require(_is_int(self.hold_steps, 0), f"--hold-steps {self.hold_steps!r}: must be a non-negative integer")
        require(0 <= self.min_lr <= self.lr, f"--min-lr {self.min_lr}: must be in [0, --lr {self.lr}]")
        require(
            not self.init_from or self.base_arch == "mamba",
            f"--init-from loads Mamba checkpoints: --base-arch {self.base_arch!r} must be 'mamba'",
        )
        return self


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least
