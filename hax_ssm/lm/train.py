"""``hax train-lm``: Mamba / Mamba2 / Samba, with any sparse branch, as causal language models.

The synthetic trainer (:class:`hax_ssm.train.trainer.Trainer`) runs the loop, checkpoints, exact
resume, metrics and DDP; this module supplies what differs for language modelling:

- data: windows of ``context`` tokens inside one document of a token corpus (documents shorter than
  a window are never used), drawn from (seed, step, rank), in the trainer's ``Batch`` layout: every
  position but the last is scored on its next token;
- the paper's schedule (PAPER.md section 5): ``hold_steps`` at lr 0, linear warm-up, cosine to
  ``min_lr``; the best checkpoint is the one of lowest validation loss;
- the models: presets under ``configs/lm/`` with the corpus's vocabulary (rounded up to a multiple
  of 64 for the matmuls), or a Mamba checkpoint in the public HF layout (``init_from``) with the
  branch's K and Q initialised from the SSM's B and C projections;
- the paper's language setting of the branch: ``hax`` means argmax LSH + key selection with
  ``num_hash = k`` hash directions (buckets) and k = 128 by default.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hax_ssm.data.batch import Batch
from hax_ssm.errors import require
from hax_ssm.lm.corpus.reader import TokenCorpus
from hax_ssm.lm.train_config import VOCAB_MULTIPLE, LMTrainConfig
from hax_ssm.train.run_dir import RunDir
from hax_ssm.train.trainer import Trainer

# ---------------------------------------------------------------------------------------------------- data


def window_batch(windows: np.ndarray, step: int) -> Batch:
    """Token windows [B, L] as a trainer batch: every position but the last predicts its next token."""
    ids = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.int64))
    rows, length = ids.shape
    loss_mask = torch.ones(rows, length, dtype=torch.bool)
    loss_mask[:, -1] = False
    return Batch(
        input_ids=ids,
        loss_mask=loss_mask,
        attention_mask=torch.ones_like(loss_mask),
        sizes=torch.zeros(rows, 0, dtype=torch.int64),
        rows=torch.arange(rows),
        size_names=(),
        step=step,
    )


class WindowLoader:
    """The trainer's loader seam for a token corpus (same call signature as the recall loader).

    ``shuffle=True`` (training): endless; step s yields ``batch_size`` windows drawn from
    (seed, s, rank), so a resumed run sees the very batches a straight one would. ``shuffle=False``
    (validation, test): the same ``eval_windows`` windows every time, in batches of ``batch_size``.
    """

    def __init__(
        self,
        corpus_dir: str | Path,
        split: str,
        batch_size: int,
        *,
        context: int,
        eval_windows: int = 64,
        seed: int = 0,
        start_step: int = 0,
        rank: int = 0,
        shuffle: bool = True,
        **_: Any,  # the recall loader's options that mean nothing here (bucketing, world size)
    ):
        self.split = TokenCorpus(corpus_dir).split(split)
        require(len(self.split) > 0, f"corpus {corpus_dir}: split {split!r} holds no documents")
        self.context, self.batch_size, self.seed, self.rank = context, batch_size, seed, rank
        self.start_step, self.shuffle, self.eval_windows = start_step, shuffle, eval_windows
        self.split.sample_windows(context, 1, seed=seed, step=0)  # a context longer than every document fails here

    def __iter__(self) -> Iterator[Batch]:
        if self.shuffle:
            for step in itertools.count(self.start_step):
                draw = self.split.sample_windows(
                    self.context, self.batch_size, seed=self.seed, step=step, rank=self.rank
                )
                yield window_batch(draw, step)
        else:
            fixed = self.split.sample_windows(self.context, self.eval_windows, seed=0, step=0)
            for start in range(0, len(fixed), self.batch_size):
                yield window_batch(fixed[start : start + self.batch_size], 0)


# ---------------------------------------------------------------------------------------------------- model


def corpus_token_settings(corpus: TokenCorpus) -> dict[str, int]:
    """Vocabulary (rounded up to a multiple of 64: the extra rows are never targets) and the
    end-of-text id as BOS/EOS/PAD."""
    vocab = math.ceil(corpus.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    eot = corpus.eot_id
    return {"vocab_size": vocab, "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}


def model_from_config_dict(values: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised model of a stored config (``config.to_dict()`` of one of our models)."""
    from hax_ssm.models import CONFIG_CLASSES, build_model

    model_type = values.get("model_type")
    require(model_type in CONFIG_CLASSES, f"stored model config: model_type {model_type!r} is not one of ours")
    return build_model(CONFIG_CLASSES[model_type].from_dict(values))


def build_lm_model(config: LMTrainConfig, resume: bool = False) -> torch.nn.Module:
    """The run's model: on resume the one recorded in its config.json (no corpus or HF checkpoint
    needed); else the preset sized to the corpus, or the HF Mamba checkpoint plus the branch."""
    if resume:
        run = RunDir(config.save_dir)
        return model_from_config_dict(run.read_json(run.config)["model"])
    corpus = TokenCorpus(config.data_dir)
    if config.init_from:
        from hax_ssm.models.hf_mamba import load_hf_mamba

        model = load_hf_mamba(config.init_from, **config.model_kwargs())
        require(
            corpus.vocab_size <= model.config.vocab_size,
            f"--init-from {config.init_from}: vocab_size {model.config.vocab_size} is smaller than the corpus's "
            f"{corpus.vocab_size} tokens (build the corpus with the checkpoint's tokenizer)",
        )
        return model
    from hax_ssm.models import build_model

    return build_model(config.preset, **{**corpus_token_settings(corpus), **config.model_kwargs()})


class LMTrainer(Trainer):
    """The trainer on corpus windows; its test record is loss and perplexity (``hax eval-lm`` goes further)."""

    def __init__(self, config: LMTrainConfig, *, resume: bool = False, overwrite: bool = False):
        super().__init__(
            config,
            resume=resume,
            overwrite=overwrite,
            model_factory=partial(build_lm_model, resume=resume),
            loader_factory=partial(WindowLoader, context=config.context, eval_windows=config.eval_windows),
        )

    def summary(self, results: dict[str, Any]) -> str:
        test, best = results["test"], results["best"]
        return (
            f"test loss {test['loss']:.4f} (perplexity {test['perplexity']:.2f}) on {test['windows']} windows of "
            f"{self.config.context} tokens (best validation loss {best['val_loss']:.4f} at step {best['step']})"
        )

    def _record_test(self, result: Any) -> dict[str, Any]:
        """Loss and perplexity of the test windows (no per-size breakdown: eval-lm goes further)."""
        return {
            "loss": result.loss,
            "perplexity": math.exp(result.loss) if math.isfinite(result.loss) else None,
            "next_token_accuracy": result.accuracy,
            "windows": result.samples,
            "context": self.config.context,
        }
