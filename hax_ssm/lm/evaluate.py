"""The evaluation harness. The model is a seam: any callable with these shapes plugs in.

- ``generate_fn(prompt_ids: list[int], max_new_tokens: int) -> Sequence[int]``: the new tokens only
  (greedy decoding with the cache, in the real models); generation may stop early, and anything from
  the first end-of-text token on is ignored.
- ``logprob_fn(ids: np.ndarray) -> np.ndarray``: ``log p(ids[t] | ids[:t])`` for t = 1 .. len(ids) - 1.

Results are plain dicts: per-sample records plus summaries; :func:`write_results` adds provenance.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hax_ssm.errors import HaxError, require
from hax_ssm.lm import longbench
from hax_ssm.lm.metrics import RULER_METRICS, ruler_postprocess
from hax_ssm.lm.ruler import RulerGenerator, RulerSample, RulerText, resolve_tasks
from hax_ssm.lm.tokenizer import Tokenizer
from hax_ssm.utils.io import atomic_write_bytes, atomic_write_json
from hax_ssm.utils.provenance import provenance

GenerateFn = Callable[[list[int], int], Sequence[int]]
LogprobFn = Callable[[np.ndarray], np.ndarray]


def decode_generation(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    ids = [int(i) for i in ids]
    if tokenizer.eot_id in ids:
        ids = ids[: ids.index(tokenizer.eot_id)]
    return tokenizer.decode(ids)


# --- RULER ------------------------------------------------------------------------------------------------------


def score_ruler_sample(sample: RulerSample, prediction: str) -> float:
    return RULER_METRICS[sample.metric](ruler_postprocess(prediction), sample.outputs)


def ruler_record(sample: RulerSample, prediction: str) -> dict:
    return {
        "task": sample.task,
        "index": sample.index,
        "length": sample.target_length or sample.length,
        "depth": sample.depth,
        "outputs": sample.outputs,
        "pred": prediction,
        "score": score_ruler_sample(sample, prediction),
    }


def evaluate_ruler_samples(
    generate_fn: GenerateFn, tokenizer: Tokenizer, samples: Iterable[RulerSample], progress: bool = True
) -> dict:
    """Prompt the model with every sample (input + answer prefix) and score its continuation."""
    records = []
    for sample in tqdm(list(samples), desc="ruler", unit="sample", disable=not progress):
        out = generate_fn(tokenizer.encode(sample.prompt), sample.max_new_tokens)
        records.append(ruler_record(sample, decode_generation(tokenizer, out)))
    return {"records": records, "summary": summarize_ruler(records)}


def evaluate_ruler(
    generate_fn: GenerateFn,
    tokenizer: Tokenizer,
    tasks: list[str] | None,
    lengths: Sequence[int],
    *,
    text: RulerText,
    num_samples: int = 25,
    seed: int = 42,
    progress: bool = True,
) -> dict:
    """Generate ``num_samples`` samples per (task, length) on ``text`` and evaluate them."""
    generator = RulerGenerator(tokenizer, text, seed=seed)
    samples = [
        s
        for task in resolve_tasks(tasks)
        for length in lengths
        for s in generator.generate(task, int(length), num_samples)
    ]
    return evaluate_ruler_samples(generate_fn, tokenizer, samples, progress=progress)


def depth_bin(depth: float, bins: int = 10) -> str:
    """The label of the depth bin of width 100/bins holding ``depth`` (100 falls in the last bin)."""
    width = 100 / bins
    k = min(int(depth // width), bins - 1)
    return f"{k * width:g}-{(k + 1) * width:g}"


def summarize_ruler(records: list[dict]) -> dict:
    """Scores in percent: per task and length, per length averaged over tasks, and per needle depth bin."""
    by_task: dict[str, dict[int, list[float]]] = {}
    by_depth: dict[str, dict[int, dict[str, list[float]]]] = {}
    for r in records:
        by_task.setdefault(r["task"], {}).setdefault(r["length"], []).append(r["score"])
        if r["depth"] and r["task"].startswith("niah"):
            for task in (r["task"], "niah (all)"):
                cell = by_depth.setdefault(task, {}).setdefault(r["length"], {})
                cell.setdefault(depth_bin(float(np.mean(r["depth"]))), []).append(r["score"])

    def pct(values: list[float]) -> float:
        return round(100 * float(np.mean(values)), 2)

    tasks = {t: {str(n): pct(v) for n, v in sorted(lengths.items())} for t, lengths in by_task.items()}
    all_lengths = sorted({r["length"] for r in records})
    average = {
        str(n): round(float(np.mean([tasks[t][str(n)] for t in tasks if str(n) in tasks[t]])), 2) for n in all_lengths
    }
    depth = {
        t: {
            str(n): {b: pct(v) for b, v in sorted(bins.items(), key=lambda kv: float(kv[0].split("-")[0]))}
            for n, bins in sorted(lengths.items())
        }
        for t, lengths in by_depth.items()
    }
    return {"by_task": tasks, "average_by_length": average, "by_depth": depth}


# --- LongBench --------------------------------------------------------------------------------------------------


def evaluate_longbench(
    generate_fn: GenerateFn,
    tokenizer: Tokenizer,
    path: str | Path,
    *,
    max_prompt_tokens: int,
    datasets: list[str] | None = None,
    progress: bool = True,
) -> dict:
    """Run LongBench-format files at ``path``: prompt, truncate in the middle, generate, score."""
    records = []
    for sample in tqdm(longbench.read_longbench(path, datasets), desc="longbench", unit="sample", disable=not progress):
        ids = longbench.truncate_middle(tokenizer.encode(sample.prompt()), max_prompt_tokens)
        pred = decode_generation(tokenizer, generate_fn(ids, longbench.MAX_NEW_TOKENS[sample.dataset]))
        records.append(
            {
                "dataset": sample.dataset,
                "id": sample.id,
                "length": sample.length,
                "pred": pred,
                "answers": sample.answers,
                "score": longbench.score_prediction(sample.dataset, pred, sample.answers, sample.all_classes),
            }
        )
    return {"records": records, "summary": longbench.summarize(records)}


# --- perplexity by position -------------------------------------------------------------------------------------


def default_buckets(max_tokens: int) -> list[tuple[int, int]]:
    """(0, 2K), (2K, 4K), (4K, 8K), ... up to ``max_tokens``."""
    edges = [0, 2048]
    while edges[-1] < max_tokens:
        edges.append(edges[-1] * 2)
    return list(itertools.pairwise(edges))


def perplexity_by_position(
    logprob_fn: LogprobFn,
    docs: Iterable[np.ndarray],
    *,
    buckets: Sequence[tuple[int, int]] | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> dict:
    """Mean NLL and perplexity of the tokens at positions [start, end) of each document, per bucket.

    A token's position is its index in its document (the first token, position 0, is never predicted).
    Documents are cut to ``max_tokens``; buckets default to 0-2K, 2-4K, 4-8K, ... up to the longest.
    """
    docs = [np.asarray(d)[:max_tokens] for d in docs]
    require(bool(docs), "perplexity: no documents given")
    longest = max(len(d) for d in docs)
    buckets = list(buckets) if buckets else default_buckets(longest)
    nll_sum = np.zeros(len(buckets))
    counts = np.zeros(len(buckets), dtype=np.int64)
    for doc in tqdm(docs, desc="perplexity", unit="doc", disable=not progress):
        if len(doc) < 2:
            continue
        logprobs = np.asarray(logprob_fn(doc), dtype=np.float64)
        if logprobs.shape != (len(doc) - 1,):
            raise HaxError(
                f"logprob_fn returned shape {logprobs.shape} for {len(doc)} tokens: expected "
                f"({len(doc) - 1},), one log-probability per predicted token"
            )
        positions = np.arange(1, len(doc))
        for k, (start, end) in enumerate(buckets):
            inside = (positions >= start) & (positions < end)
            nll_sum[k] -= logprobs[inside].sum()
            counts[k] += int(inside.sum())
    rows = [
        {
            "start": s,
            "end": e,
            "tokens": int(c),
            "nll": float(n / c) if c else None,
            "ppl": float(np.exp(n / c)) if c else None,
        }
        for (s, e), n, c in zip(buckets, nll_sum, counts, strict=True)
    ]
    total = int(counts.sum())
    overall = {"tokens": total, "nll": float(nll_sum.sum() / total) if total else None}
    overall["ppl"] = float(np.exp(overall["nll"])) if total else None
    return {"buckets": rows, "overall": overall, "documents": len(docs)}


# --- output -----------------------------------------------------------------------------------------------------


def write_results(path: str | Path, results: dict, **extra) -> dict:
    """Write ``results`` (plus ``extra`` fields and provenance) atomically as JSON; returns what was written."""
    payload = {**extra, **results, "provenance": provenance()}
    atomic_write_json(path, payload)
    return payload


def plot_ruler(summary: dict, path: str | Path) -> None:
    """Accuracy against length (every task and the average) and, for needle tasks, against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_len, ax_depth) = plt.subplots(1, 2, figsize=(13, 4.8))
    for task, scores in summary["by_task"].items():
        lengths = [int(n) for n in scores]
        ax_len.plot(lengths, list(scores.values()), marker="o", linewidth=1, label=task)
    average = summary["average_by_length"]
    ax_len.plot([int(n) for n in average], list(average.values()), color="black", linewidth=2.5, label="average")
    ax_len.set(
        xscale="log",
        xlabel="context length (tokens)",
        ylabel="score (%)",
        ylim=(-3, 103),
        title="RULER-style tasks: score against length",
    )
    ax_len.legend(fontsize=7, ncol=2)
    for n, bins in summary["by_depth"].get("niah (all)", {}).items():
        centres = [sum(map(float, b.split("-"))) / 2 for b in bins]
        ax_depth.plot(centres, list(bins.values()), marker="o", linewidth=1.5, label=f"{n} tokens")
    ax_depth.set(
        xlabel="needle depth (% of context)",
        ylabel="score (%)",
        ylim=(-3, 103),
        xlim=(0, 100),
        title="needle tasks (all niah_*): score against depth",
    )
    if summary["by_depth"]:
        ax_depth.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
