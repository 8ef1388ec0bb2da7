"""The resolved configuration of one training run, its defaults and its validation.

Defaults are the paper's synthetic protocol (PAPER.md section 4) and the reference's options.
Weight decay is not stated by the paper; we use AdamW's usual 0.01 on matrices only (biases,
norms, gates and SSM parameters such as A_log, D and dt_bias are not decayed) and clip the
gradient norm at 1.0. Both are options.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hax_ssm.errors import HaxError, require
from hax_ssm.ops.patterns import LSH_CENTERS, parse_sparse_arch

BASE_ARCHS = ("mamba", "mamba2", "samba")
WIDTHS = ("1x", "2x")
PRECISIONS = ("auto", "bf16", "fp32")

# Options a resumed run may change: they do not alter what is computed, only where and how it
# is logged or run (steps may grow, so a finished run can be extended).
RESUMABLE_CHANGES = frozenset(
    {"steps", "device", "log_every", "compile", "wandb", "wandb_project", "data_dir", "save_dir", "progress"}
)


@dataclass
class TrainConfig:
    data_dir: str = ""
    save_dir: str = ""
    # model
    base_arch: str = "mamba2"
    sparse_arch: str = "none"
    width: str = "1x"
    sparse_keys: int = 64
    num_hash: int = 8
    gate_loss_weight: float = 0.1
    lsh_center: str = "causal"
    attention_impl: str = "auto"  # the models' choice: sparse O(L*k), or reference (dense masks)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # optimisation
    lr: float = 2e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    steps: int = 400_000
    warmup_steps: int = 5_000
    batch_size: int = 64  # global: split over ranks and gradient-accumulation micro-batches
    grad_accum: int = 1
    seed: int = 0
    # evaluation, checkpoints, logging
    eval_every: int = 500
    eval_batch_size: int = 64
    checkpoint_every: int = 0  # 0: at every evaluation
    log_every: int = 50
    val_split: str = "validation"
    test_split: str = "test"
    bucket_by_length: bool = False
    # execution
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    cuda_graphs: bool = False
    progress: bool = True
    wandb: bool = False
    wandb_project: str = "hax-ssm"

    # what a resumed run may change, and which validation metric picks the best checkpoint
    resumable_changes: ClassVar[frozenset[str]] = RESUMABLE_CHANGES
    best_by: ClassVar[str] = "accuracy"  # higher is better; "loss": lower is better

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise HaxError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def preset(self) -> str:
        """The models' preset name: the base, with '_2x' for the double-width variant."""
        return self.base_arch + ("_2x" if self.width == "2x" else "")

    @property
    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or self.eval_every

    def lr_at(self, step: int) -> float:
        """Learning rate of the update from ``step`` to ``step + 1``: linear warm-up, then constant."""
        from hax_ssm.train.schedule import warmup_constant_lr  # (torch is not loaded by `hax --help`)

        return warmup_constant_lr(step, self.lr, self.warmup_steps)

    def model_kwargs(self) -> dict[str, Any]:
        """Overrides passed to ``build_model(self.preset, **...)``."""
        kwargs: dict[str, Any] = {
            "sparse_arch": None if self.sparse_arch == "none" else self.sparse_arch,
            "sparse_keys": self.sparse_keys,
            "num_hash": self.num_hash,
            "gate_loss_weight": self.gate_loss_weight,
            "lsh_center": self.lsh_center,
            "attention_impl": self.attention_impl,
        }
        kwargs.update(self.model_overrides)
        return kwargs

    def validate(self) -> TrainConfig:
        """Refuse bad values with one line naming the value and what is allowed; returns self."""
        _choice("--base-arch", self.base_arch, BASE_ARCHS)
        _choice("--width", self.width, WIDTHS)
        require(
            not (self.base_arch == "samba" and self.width == "2x"),
            "--width 2x: the paper has no double-width Samba; allowed for samba: 1x",
        )
        spec = parse_sparse_arch(
            self.sparse_arch, sparse_keys=self.sparse_keys, num_hash=self.num_hash, lsh_center=self.lsh_center
        )
        self.sparse_arch = spec.name if spec is not None else "none"
        _choice("--lsh-center", self.lsh_center, LSH_CENTERS)
        _choice("--precision", self.precision, PRECISIONS)
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "eval_batch_size", "log_every"):
            _positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "checkpoint_every", "seed"):
            _non_negative_int(name, getattr(self, name))
        require(_finite(self.lr) and self.lr > 0, f"--lr {self.lr}: must be a positive number")
        wd = self.weight_decay
        require(_finite(wd) and wd >= 0, f"--weight-decay {wd}: must be >= 0")
        require(_finite(self.grad_clip) and self.grad_clip >= 0, f"--grad-clip {self.grad_clip}: must be >= 0 (0: off)")
        require(
            _finite(self.gate_loss_weight) and self.gate_loss_weight >= 0,
            f"--gate-loss-weight {self.gate_loss_weight}: must be >= 0",
        )
        require(
            not self.cuda_graphs or self.grad_accum == 1,
            f"--cuda-graphs with --grad-accum {self.grad_accum}: a graph holds one micro-batch; use --grad-accum 1",
        )
        require(bool(self.data_dir), "--data-dir is required")
        require(bool(self.save_dir), "--save-dir is required")
        require(isinstance(self.model_overrides, dict), "model_overrides: must be a JSON object")
        return self

    def check_batch_split(self, world_size: int) -> int:
        """The micro-batch size: the global batch split evenly over ranks and accumulation steps."""
        parts = world_size * self.grad_accum
        require(
            self.batch_size % parts == 0,
            f"--batch-size {self.batch_size} does not split evenly into {world_size} rank(s) x "
            f"{self.grad_accum} accumulation step(s): use a multiple of {parts}",
        )
        return self.batch_size // parts


def merge_for_resume(stored: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The stored config with the options given again on the command line; refuse real changes.

    Values are compared as validated, so a spelling that resolves to the stored value is no change
    (``--sparse-arch hax`` against the stored ``sign_bin_lsh+key_selection``).
    """
    merged = type(stored).from_dict({**stored.to_dict(), **given}).validate()
    allowed = type(stored).resumable_changes
    for key, value in given.items():
        if key not in allowed and getattr(merged, key) != getattr(stored, key):
            flag = "--" + key.replace("_", "-")
            raise HaxError(
                f"{flag} {value!r} differs from the run's {getattr(stored, key)!r}: a resumed run keeps its config "
                f"(only {', '.join('--' + k.replace('_', '-') for k in sorted(allowed))} may change)"
            )
    return merged


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    require(value in allowed, f"{flag} {value!r}: allowed: {', '.join(allowed)}")


def _positive_int(name: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    require(ok, f"--{name.replace('_', '-')} {value!r}: must be a positive integer")


def _non_negative_int(name: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    require(ok, f"--{name.replace('_', '-')} {value!r}: must be a non-negative integer")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
