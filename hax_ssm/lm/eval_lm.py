"""``hax eval-lm``: one language model through the harness of :mod:`hax_ssm.lm.evaluate`.

The model is one of ours (a ``hax train-lm`` run directory or checkpoint, or a Mamba checkpoint
in the HF layout) and plugs into the harness's seams:

- ``logprobs``: one forward pass over a whole held-out document, the output projection applied in
  chunks (the logits of a long document would not fit at once);
- ``generate``: greedy decoding with the model's recurrent cache (a prefill, then one token per
  step), restricted to the tokenizer's ids and stopped at end-of-text.

Everything is checked (task names, corpus, document lengths, checkpoint) before the model runs.
Results: ``results.json`` (perplexity by position bucket, RULER-style records and summary,
LongBench records and summary, provenance) and ``ruler.png`` (score against length and depth).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hax_ssm.errors import HaxError, require
from hax_ssm.eval.evaluation import autocast_for
from hax_ssm.lm.corpus.reader import TokenCorpus
from hax_ssm.lm.evaluate import evaluate_longbench, evaluate_ruler_samples, perplexity_by_position, write_results
from hax_ssm.lm.ruler import RulerGenerator, RulerSample, RulerText, read_samples, resolve_tasks
from hax_ssm.lm.tokenizer import Tokenizer, corpus_tokenizer, load_tokenizer
from hax_ssm.train.run_dir import RunDir, load_checkpoint

DEFAULT_CONTEXT = 2048
HEAD_CHUNK = 2048  # positions projected to logits at once


@dataclass
class EvalLMOptions:
    target: Path  # a run directory, a checkpoint file, or an HF Mamba directory
    out: Path | None = None  # default: <run>/eval_lm
    corpus: Path | None = None  # default: the run's corpus
    tokenizer: Path | None = None  # default: GPT-2 from the cache, for a GPT-2 corpus
    cache_dir: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    # perplexity by position
    ppl_split: str = "test"
    ppl_length: int = 8192  # documents of at least this many tokens, cut to it
    ppl_docs: int = 8  # at most this many documents (0: no perplexity)
    # RULER-style tasks
    tasks: list[str] | None = None  # None: all; []: none
    lengths: list[int] | None = None  # None: the run's context and twice it
    samples: int = 5
    ruler_split: str = "test"
    ruler_file: Path | None = None  # pre-generated samples (hax ruler make, or RULER's files)
    seed: int = 42
    # LongBench
    longbench: Path | None = None
    longbench_datasets: list[str] | None = None
    longbench_max_tokens: int | None = None  # default: the run's context
    progress: bool = True
    plot: bool = True


@dataclass
class LoadedLM:
    model: Any
    source: Path  # the checkpoint file or HF directory
    run: Path | None  # the run directory, when the checkpoint is in one
    step: int | None = None
    train: dict[str, Any] = field(default_factory=dict)  # the run's training config

    @property
    def context(self) -> int:
        return int(self.train.get("context") or DEFAULT_CONTEXT)


# ---------------------------------------------------------------------------------------------------- loading


def find_checkpoint(target: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None) of a run directory or a checkpoint file."""
    if target.is_dir():
        run = RunDir(target)
        for path in (run.best_checkpoint, run.last_checkpoint):
            if path.is_file():
                return path, target
        raise HaxError(f"{target}: no checkpoints/best.pt or checkpoints/last.pt (not a finished or started run)")
    require(target.is_file(), f"{target}: no such run directory or checkpoint")
    run_dir = target.parent.parent if target.parent.name == "checkpoints" else None
    return target, run_dir


def load_lm(target: Path, device: torch.device) -> LoadedLM:
    """The model of a run directory, a checkpoint file or an HF Mamba directory, in eval mode on ``device``."""
    from hax_ssm.models.hf_mamba import is_hf_mamba_dir, load_hf_mamba

    if target.is_dir() and is_hf_mamba_dir(target):
        return LoadedLM(load_hf_mamba(target).to(device).eval(), target, None)
    path, run = find_checkpoint(target)
    state = load_checkpoint(path)
    require("model" in state, f"{path}: not a training checkpoint (no 'model' weights)")
    if state.get("model_config"):
        from hax_ssm.lm.train import model_from_config_dict

        model = model_from_config_dict(state["model_config"])
    else:  # checkpoints of `hax train` written before model configs were recorded
        from hax_ssm.models import build_model

        build = state.get("model_build") or {}
        require("preset" in build, f"{path}: records no model config; cannot rebuild its model")
        model = build_model(build["preset"], **build.get("kwargs", {}))
    model.load_state_dict(state["model"])
    return LoadedLM(model.to(device).eval(), path, run, state.get("step"), state.get("config") or {})


# ---------------------------------------------------------------------------------------------------- the seams


class ModelRunner:
    """``logprobs`` and ``generate`` of one model, as the harness wants them."""

    def __init__(self, model: Any, device: torch.device, precision: str, vocab_limit: int | None = None):
        self.model, self.device, self.precision = model, device, precision
        self.vocab_limit = vocab_limit  # ids at or above it (padding rows of the embedding) are never generated

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head if self.model.lm_head is not None else self.model.backbone.embeddings
        return F.linear(hidden.to(head.weight.dtype), head.weight).float()

    @torch.no_grad()
    def logprobs(self, ids: np.ndarray) -> np.ndarray:
        """``log p(ids[t] | ids[:t])`` for t = 1 .. len(ids) - 1."""
        x = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)[None]
        out = []
        with autocast_for(self.device, self.precision):
            hidden = self.model.backbone(x).last_hidden_state[0, :-1]
            for start in range(0, len(hidden), HEAD_CHUNK):
                logits = self._head(hidden[start : start + HEAD_CHUNK])
                targets = x[0, start + 1 : start + 1 + len(logits)]
                out.append(logits.log_softmax(-1).gather(1, targets[:, None])[:, 0])
        return torch.cat(out).double().cpu().numpy()

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, stop_id: int | None = None) -> list[int]:
        """Greedy continuation of ``prompt_ids`` (at most ``max_new_tokens``; ends after ``stop_id``)."""
        x = torch.as_tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        new: list[int] = []
        with autocast_for(self.device, self.precision):
            out = self.model.backbone(x, use_cache=True)
            while len(new) < max_new_tokens:
                logits = self._head(out.last_hidden_state[0, -1])[: self.vocab_limit]
                token = int(logits.argmax())
                new.append(token)
                if token == stop_id or len(new) == max_new_tokens:
                    break
                step_ids = torch.tensor([[token]], device=self.device)
                out = self.model.backbone(step_ids, past_key_values=out.past_key_values, use_cache=True)
        return new


# ---------------------------------------------------------------------------------------------------- the run


def _held_out_documents(corpus: TokenCorpus, split: str, length: int, count: int) -> list[np.ndarray]:
    part = corpus.split(split)
    require(len(part) > 0, f"corpus {corpus.root}: split {split!r} holds no documents")
    docs = [doc[:length] for _, doc in part.documents(min_tokens=length)][:count]
    longest = int(part.lengths.max())
    require(
        bool(docs),
        f"--ppl-length {length}: longer than every document of split {split!r} of {corpus.root} "
        f"(longest: {longest} tokens); lower it",
    )
    return docs


def _ruler_samples(opts: EvalLMOptions, tokenizer: Tokenizer | None, corpus_dir: Path | None, context: int):
    """The RULER-style samples to run: from --ruler-file, or generated on the corpus's held-out text."""
    if opts.ruler_file is not None:
        require(
            opts.tasks is None and opts.lengths is None,
            "--ruler-file: its samples are run as they are; drop --tasks and --lengths",
        )
        samples = read_samples(opts.ruler_file)
        require(bool(samples), f"--ruler-file {opts.ruler_file}: no samples")
        return samples
    tasks = resolve_tasks(opts.tasks) if opts.tasks != [] else []
    if not tasks:
        return []
    require(corpus_dir is not None, "RULER-style tasks need a corpus for their haystack: pass --corpus")
    lengths = opts.lengths or [context, 2 * context]
    require(all(n >= 16 for n in lengths), f"--lengths {lengths}: every length must be at least 16 tokens")
    require(opts.samples >= 1, f"--samples {opts.samples}: must be at least 1")
    generator = RulerGenerator(
        tokenizer, RulerText.from_corpus(corpus_dir, tokenizer, split=opts.ruler_split), opts.seed
    )
    return [s for task in tasks for n in lengths for s in generator.generate(task, n, opts.samples)]


def _default_out(opts: EvalLMOptions, run: Path | None) -> Path:
    if opts.out is not None:
        return opts.out
    require(run is not None, f"{opts.target} is not inside a run directory: pass --out")
    return run / "eval_lm"


@dataclass
class _Plan:
    """Everything an evaluation needs, checked before the model runs."""

    loaded: LoadedLM
    out_dir: Path
    corpus_dir: Path | None
    tokenizer: Tokenizer | None
    docs: list[np.ndarray]
    samples: list[RulerSample]


def _plan(opts: EvalLMOptions, device: torch.device) -> _Plan:
    require(opts.ppl_docs >= 0, f"--ppl-docs {opts.ppl_docs}: must be >= 0 (0: no perplexity)")
    require(opts.ppl_length >= 2, f"--ppl-length {opts.ppl_length}: must be at least 2")
    loaded = load_lm(opts.target, device)
    out_dir = _default_out(opts, loaded.run)
    corpus_dir = opts.corpus or (Path(loaded.train["data_dir"]) if loaded.train.get("data_dir") else None)
    corpus = TokenCorpus(corpus_dir) if corpus_dir is not None else None
    if corpus is not None:
        require(
            corpus.vocab_size <= loaded.model.config.vocab_size,
            f"corpus {corpus_dir}: {corpus.vocab_size} token ids, the model has {loaded.model.config.vocab_size}",
        )
    tokenizer = None
    if opts.ruler_file is not None or opts.tasks != [] or opts.longbench is not None:  # text in and out
        if corpus_dir is not None:
            tokenizer = corpus_tokenizer(corpus_dir, opts.tokenizer, opts.cache_dir)
        else:
            require(opts.tokenizer is not None, "no corpus to take the tokenizer from: pass --tokenizer")
            tokenizer = load_tokenizer(opts.tokenizer, opts.cache_dir)
    docs: list[np.ndarray] = []
    if opts.ppl_docs:
        require(corpus is not None, "perplexity needs held-out documents: pass --corpus (or --ppl-docs 0)")
        docs = _held_out_documents(corpus, opts.ppl_split, opts.ppl_length, opts.ppl_docs)
    samples = _ruler_samples(opts, tokenizer, corpus_dir, loaded.context)
    return _Plan(loaded, out_dir, corpus_dir, tokenizer, docs, samples)


def run_eval_lm(opts: EvalLMOptions) -> dict:
    """Evaluate one model; write ``results.json`` (and ``ruler.png``) under the output directory; return the results."""
    from hax_ssm.train.distributed import resolve_device

    device = resolve_device(opts.device)
    plan = _plan(opts, device)
    model, tokenizer = plan.loaded.model, plan.tokenizer
    runner = ModelRunner(model, device, opts.precision, tokenizer.vocab_size if tokenizer else None)
    results: dict[str, Any] = {"seconds": {}}

    def timed(name: str, fn, *args, **kwargs) -> dict:
        started = time.perf_counter()
        results[name] = fn(*args, **kwargs)
        results["seconds"][name] = round(time.perf_counter() - started, 2)
        return results[name]

    if plan.docs:
        timed("perplexity", perplexity_by_position, runner.logprobs, plan.docs, progress=opts.progress)
        results["perplexity"]["split"] = opts.ppl_split
    if plan.samples:
        generate = _generate_fn(runner, tokenizer)
        timed("ruler", evaluate_ruler_samples, generate, tokenizer, plan.samples, progress=opts.progress)
    if opts.longbench is not None:
        budget = opts.longbench_max_tokens or plan.loaded.context
        generate = _generate_fn(runner, tokenizer)
        kwargs = {"max_prompt_tokens": budget, "datasets": opts.longbench_datasets, "progress": opts.progress}
        timed("longbench", evaluate_longbench, generate, tokenizer, opts.longbench, **kwargs)
    model_info = {
        "source": str(plan.loaded.source),
        "step": plan.loaded.step,
        "model_type": model.config.model_type,
        "sparse_arch": model.config.sparse_arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_context": plan.loaded.context,
    }
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()}
    settings["corpus"] = str(plan.corpus_dir) if plan.corpus_dir else None
    payload = write_results(
        plan.out_dir / "results.json", results, benchmark="eval-lm", model=model_info, settings=settings
    )
    if "ruler" in results and opts.plot:
        _plot(results["ruler"]["summary"], plan.out_dir / "ruler.png")
    return payload


def _generate_fn(runner: ModelRunner, tokenizer: Tokenizer):
    def generate(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        return runner.generate(prompt_ids, max_new_tokens, stop_id=tokenizer.eot_id)

    return generate


def _plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # (the GPU image has no matplotlib: draw it later from results.json)
        print(f"hax: note: matplotlib is not installed; {path} not drawn", file=sys.stderr)
        return
    from hax_ssm.lm.evaluate import plot_ruler

    plot_ruler(summary, path)


def summary_line(results: dict) -> str:
    """One line for the terminal: overall perplexity, RULER average per length, LongBench average."""
    parts = []
    if "perplexity" in results:
        ppl = results["perplexity"]
        buckets = ", ".join(f"{b['start']}-{b['end']}: {b['ppl']:.1f}" for b in ppl["buckets"] if b["ppl"])
        parts.append(f"perplexity {ppl['overall']['ppl']:.2f} ({buckets})")
    if "ruler" in results:
        parts.append(f"RULER-style average by length {results['ruler']['summary']['average_by_length']}")
    if "longbench" in results:
        parts.append(f"LongBench {results['longbench']['summary']}")
    return "; ".join(parts) or "nothing evaluated"
