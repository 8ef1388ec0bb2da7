"""Tiny language-model runs on the fixture corpus, shared by the train-lm, eval-lm and e2e tests."""

from __future__ import annotations

from pathlib import Path

from hax_ssm.lm.train_config import LMTrainConfig

# the tiny presets on 64-token windows; HAX (argmax LSH redraws, gate-loss sampling) makes resume a hard case
TINY_RUN = dict(
    size="tiny",
    sparse_arch="hax",
    sparse_keys=8,
    context=64,
    steps=24,
    hold_steps=2,
    warmup_steps=4,
    batch_size=8,
    eval_every=8,
    eval_windows=8,
    log_every=4,
    lr=3e-3,
    device="cpu",
    progress=False,
)


def tiny_lm_config(corpus: Path, save_dir: Path, **overrides) -> LMTrainConfig:
    return LMTrainConfig(data_dir=str(corpus), save_dir=str(save_dir), **{**TINY_RUN, **overrides}).validate()


def cli_flags(corpus: Path, save_dir: Path, **overrides) -> list[str]:
    """The same run as ``hax train-lm`` flags."""
    values = {**TINY_RUN, **overrides}
    flags = ["train-lm", "--data-dir", str(corpus), "--save-dir", str(save_dir)]
    for key, value in values.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + name[2:])
        else:
            flags += [name, str(value)]
    return flags
