"""End to end on one GPU: a small language model trained on the local corpus with and without HAX for
the same wall-clock budget each, both evaluated with ``hax eval-lm``; writes results/lm_e2e.json (+ PNG).

Made for a GPU machine without internet whose Python has torch, numpy, tiktoken and transformers (with
the packages transformers brings: tqdm, safetensors) and nothing else: this path imports no pyarrow,
typer, matplotlib (the PNG is drawn when it is there, else later with --plot-only), datasets,
wonderwords, rouge-score or rapidfuzz. Its inputs are built beforehand where there is network:

    hax corpus build --out data/lm_e2e/corpus --sources austen,poe-twain,kjv,web,tdavid,mhcc,wikipedia
    cp ~/.cache/hax-ssm/tokenizers/gpt2.tiktoken data/lm_e2e/
    hax ruler make --corpus data/lm_e2e/corpus --out data/lm_e2e/ruler.jsonl --lengths 1024,2048,4096 \\
        --samples 3 --tasks niah_single_1,niah_single_2,niah_multikey_1,niah_multivalue,niah_multiquery,vt,fwe,qa_wiki

then, on the GPU (data/ is git-ignored: carry it):

    python benchmarks/lm_e2e.py --corpus data/lm_e2e/corpus --tokenizer data/lm_e2e/gpt2.tiktoken \\
        --ruler-file data/lm_e2e/ruler.jsonl

Phases, each resumable from the files under --work-dir: calibrate (steps/s of each variant, from a short
throw-away run: the step budget = train seconds x rate), train (hax_ssm.lm.train, checkpointed; the
paper's schedule scaled to the budget), evaluate (hax_ssm.lm.eval_lm), report. One call does what fits
in --call-seconds (and always some progress), then exits 75 (run the same command again: it resumes) or
0 when results are written. The work directory (checkpoints of ~0.4 GB per variant) must survive
between calls: the same warm machine. Expected on one H100 with the defaults (Mamba small, 300 s of
training per variant): about 20 minutes in all, i.e. 3 calls of at most 8 minutes (calibration ~1-2
min, training 2 x ~5.5 min, evaluation ~1-4 min per variant: an estimate, not yet measured on a GPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MORE_TO_DO = 75  # exit status: stopped for time, run the same command again
CALIBRATION_STEPS = 30  # timed from the second log line on (the first holds compilation and warm-up)
EVAL_SECONDS_GUESS = 240  # what one evaluation is assumed to need before one was measured
START_SECONDS = 60  # a further training phase starts only with this much of the call left
MARGIN_SECONDS = 30  # a call stops this long before --call-seconds (checkpoint, shutdown)
VARIANTS = {"base": "none", "hax": "hax"}  # hax = argmax_lsh+key_selection in train-lm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", type=Path, help="token corpus directory (hax corpus build)")
    p.add_argument("--tokenizer", type=Path, help="the corpus's tiktoken ranks file (gpt2.tiktoken)")
    p.add_argument("--ruler-file", type=Path, help="RULER-style samples (hax ruler make); omit to skip RULER")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "lm_e2e", help="runs, checkpoints, evaluations")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "lm_e2e.json", help="results JSON (+ .png)")
    p.add_argument("--base-arch", default="mamba", help="mamba (the paper's real-world base), mamba2 or samba")
    p.add_argument("--size", default="small", help="configs/lm/<base-arch>_<size>.json [small: ~27M]")
    p.add_argument("--context", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8, help="windows per step")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=6e-4, help="peak lr [6e-4: a ~27M model at a few thousand steps]")
    p.add_argument("--sparse-keys", type=int, default=128, help="k of the HAX branch (the paper's language setting)")
    p.add_argument("--train-seconds", type=float, default=300, help="training wall budget of each variant")
    p.add_argument("--call-seconds", type=float, default=480, help="stop this call after about this long")
    p.add_argument("--ppl-length", type=int, default=8192, help="held-out documents cut to this many tokens")
    p.add_argument("--ppl-docs", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--cuda-graphs", action="store_true", help="replay each training step as a CUDA graph")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True, help="draw the PNG if possible")
    p.add_argument("--plot-only", type=Path, help="only draw the PNG of an existing results JSON (needs matplotlib)")
    args = p.parse_args(argv)
    if args.plot_only is None and (args.corpus is None or args.tokenizer is None):
        p.error("--corpus and --tokenizer are required (or --plot-only RESULTS_JSON)")
    return args


class Clock:
    def __init__(self, budget: float):
        self.started, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - MARGIN_SECONDS - (time.perf_counter() - self.started)


def variant_config(args: argparse.Namespace, name: str, save_dir: Path, steps: int):
    from hax_ssm.lm.train_config import LMTrainConfig

    return LMTrainConfig(
        data_dir=str(args.corpus),
        save_dir=str(save_dir),
        base_arch=args.base_arch,
        size=args.size,
        sparse_arch=VARIANTS[name],
        sparse_keys=args.sparse_keys,
        context=args.context,
        steps=steps,
        # the paper's 200 hold + 800 warm-up steps of 50K, scaled to this budget
        hold_steps=round(steps * 200 / 50_000),
        warmup_steps=max(1, round(steps * 800 / 50_000)),
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        eval_every=max(1, steps // 8),
        checkpoint_every=max(1, steps // 4),  # and at every stop (a full checkpoint of a ~27M model is ~0.3 GB)
        eval_windows=32,
        eval_batch_size=args.batch_size,
        log_every=10,
        seed=args.seed,
        device=args.device,
        cuda_graphs=args.cuda_graphs,
        progress=False,
    ).validate()


def steps_per_second(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["steps_per_s"] for r in records if r["split"] == "train"][1:]
    return sum(rates) / len(rates)


def calibrate(args: argparse.Namespace, name: str, work: Path) -> dict:
    """Steps per second of the variant, from a short run that is then deleted; the plan of the real run."""
    from hax_ssm.lm.train import LMTrainer

    plan_file = work / "plan.json"
    if plan_file.is_file():
        return json.loads(plan_file.read_text())
    scratch = work / "calibration"
    LMTrainer(variant_config(args, name, scratch, 10**6), overwrite=True).fit(stop_at=CALIBRATION_STEPS)
    rate = steps_per_second(scratch)
    shutil.rmtree(scratch)
    plan = {"steps_per_s": rate, "steps": max(8, int(args.train_seconds * rate)), "train_seconds": args.train_seconds}
    write_json(plan_file, plan)
    print(f"[{name}] {rate:.2f} steps/s -> {plan['steps']} steps in {args.train_seconds:.0f} s", flush=True)
    return plan


def train(args: argparse.Namespace, name: str, work: Path, plan: dict, clock: Clock) -> bool:
    """Train (or continue) the variant's run; True when it has finished."""
    from hax_ssm.lm.train import LMTrainer

    run = work / "run"
    if (run / "results.json").is_file():
        return True
    resume = (run / "checkpoints" / "last.pt").is_file()
    config = variant_config(args, name, run, plan["steps"])
    started = time.perf_counter()
    results = LMTrainer(config, resume=resume).fit(time_limit=max(clock.left(), 1.0))
    spent = json.loads((work / "spent.json").read_text()) if (work / "spent.json").is_file() else {"seconds": 0.0}
    spent["seconds"] += time.perf_counter() - started
    write_json(work / "spent.json", spent)
    print(f"[{name}] {'finished' if results else 'stopped'} training after {spent['seconds']:.0f} s", flush=True)
    return results is not None


def evaluate(args: argparse.Namespace, name: str, work: Path) -> dict:
    from hax_ssm.lm.eval_lm import EvalLMOptions, run_eval_lm, summary_line

    out = work / "eval"
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    opts = EvalLMOptions(
        target=work / "run",
        out=out,
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        device=args.device,
        ppl_length=args.ppl_length,
        ppl_docs=args.ppl_docs,
        tasks=None if args.ruler_file else [],
        ruler_file=args.ruler_file,
        progress=False,
        plot=False,
    )
    results = run_eval_lm(opts)
    print(f"[{name}] {summary_line(results)}", flush=True)
    return results


def write_json(path: Path, obj: Any) -> None:
    from hax_ssm.utils.io import atomic_write_json

    atomic_write_json(path, obj)


def validation_curve(metrics: list[dict]) -> list[dict]:
    """Validation loss against step and against training seconds (summed from the logged step rates, so
    validation, checkpoints and restarts are not counted: the x-axis of an equal-budget comparison)."""
    import numpy as np

    steps, seconds = [0], [0.0]
    for r in metrics:
        if r["split"] == "train":
            seconds.append(seconds[-1] + (r["step"] - steps[-1]) / r["steps_per_s"])
            steps.append(r["step"])
    return [
        {"step": r["step"], "train_seconds": round(float(np.interp(r["step"], steps, seconds)), 2), "loss": r["loss"]}
        for r in metrics
        if r["split"] == "val"
    ]


def variant_summary(work: Path, plan: dict, evaluation: dict) -> dict:
    run = json.loads((work / "run" / "results.json").read_text())
    metrics = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line]
    return {
        "sparse_arch": run["config"]["sparse_arch"],
        "parameters": run["parameters"],
        "steps": run["steps"],
        "steps_per_s_calibrated": plan["steps_per_s"],
        "train_seconds_budget": plan["train_seconds"],
        "train_seconds_spent": json.loads((work / "spent.json").read_text())["seconds"],
        "tokens_trained": run["steps"] * run["config"]["batch_size"] * run["config"]["context"],
        "best": run["best"],
        "test": run["test"],
        "validation_curve": validation_curve(metrics),
        "perplexity": evaluation.get("perplexity"),
        "ruler": evaluation.get("ruler", {}).get("summary"),
        "eval_seconds": evaluation.get("seconds"),
    }


def report(args: argparse.Namespace, summaries: dict[str, dict], wall: float) -> dict:
    from hax_ssm.lm.evaluate import write_results

    first = next(iter(summaries.values()))
    results = {
        "benchmark": "lm_e2e",
        "setup": {
            "base_arch": args.base_arch,
            "size": args.size,
            "context": args.context,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "sparse_keys": args.sparse_keys,
            "train_seconds_each": args.train_seconds,
            "corpus": str(args.corpus),
            "ruler_file": str(args.ruler_file) if args.ruler_file else None,
            "parameters": {name: s["parameters"] for name, s in summaries.items()},
        },
        "variants": summaries,
        "wall_seconds_of_last_call": round(wall, 1),
    }
    payload = write_results(args.out, results)
    for name, s in summaries.items():
        ppl = s["perplexity"]["overall"]["ppl"] if s["perplexity"] else float("nan")
        ruler = s["ruler"]["average_by_length"] if s["ruler"] else {}
        print(
            f"{name:>5}: {s['steps']} steps, test loss {s['test']['loss']:.4f}, held-out ppl {ppl:.2f}, "
            f"RULER-style {ruler}"
        )
    print(f"wrote {args.out} ({first['parameters']:,} parameters without the branch)")
    if args.plot:
        plot(payload, args.out.with_suffix(".png"))
    return payload


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: draw the PNG elsewhere with --plot-only {path.with_suffix('.json')}")
        return
    from hax_ssm.utils.io import atomic_write_bytes

    fig, (ax_val, ax_ppl, ax_ruler) = plt.subplots(1, 3, figsize=(16, 4.6))
    for name, s in results["variants"].items():
        label = f"{name} ({s['sparse_arch']})"
        curve = s["validation_curve"]
        ax_val.plot([c["train_seconds"] for c in curve], [c["loss"] for c in curve], marker="o", label=label)
        if s["perplexity"]:
            rows = [b for b in s["perplexity"]["buckets"] if b["ppl"]]
            ax_ppl.plot([f"{b['start']}-{b['end']}" for b in rows], [b["ppl"] for b in rows], marker="o", label=label)
        if s["ruler"]:
            avg = s["ruler"]["average_by_length"]
            ax_ruler.plot([int(n) for n in avg], list(avg.values()), marker="o", label=label)
    setup = results["setup"]
    title = f"{setup['base_arch']} {setup['size']}: equal training time"
    ax_val.set(xlabel="training seconds (validation and checkpoints excluded)", ylabel="validation loss", title=title)
    ax_ppl.set(xlabel="token position in held-out documents", ylabel="perplexity", title="perplexity by position")
    ax_ruler.set(xscale="log", xlabel="context length (tokens)", ylabel="score (%)", ylim=(-3, 103))
    ax_ruler.set_title("RULER-style tasks, average")
    for ax in (ax_val, ax_ppl, ax_ruler):
        ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
    print(f"wrote {path}")


def more_to_do(why: str, work_dir: Path) -> int:
    print(f"{why}: run the same command again to continue (state in {work_dir})", flush=True)
    return MORE_TO_DO


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot_only is not None:
        plot(json.loads(args.plot_only.read_text()), args.plot_only.with_suffix(".png"))
        return 0
    clock = Clock(args.call_seconds)
    works = {name: args.work_dir / name for name in VARIANTS}
    plans = {name: calibrate(args, name, work) for name, work in works.items()}  # about a minute, always
    # every call makes progress (at least one training segment or one evaluation); it starts another
    # phase only when that phase is likely to fit in what is left of the call
    progressed = False
    for name, work in works.items():
        if (work / "run" / "results.json").is_file():
            continue
        if progressed and clock.left() < START_SECONDS:
            return more_to_do(f"no time left to train {name}", args.work_dir)
        progressed = True
        if not train(args, name, work, plans[name], clock):
            return more_to_do(f"{name} stopped for time", args.work_dir)
    evaluations: dict[str, dict] = {}
    for name, work in works.items():
        measured = [sum(e["seconds"].values()) for e in evaluations.values()]
        needed = 1.2 * max(measured) if measured else EVAL_SECONDS_GUESS
        if not (work / "eval" / "results.json").is_file():
            if progressed and clock.left() < needed:
                return more_to_do(f"not enough time left to evaluate {name}", args.work_dir)
            progressed = True
        evaluations[name] = evaluate(args, name, work)
    summaries = {name: variant_summary(work, plans[name], evaluations[name]) for name, work in works.items()}
    report(args, summaries, time.perf_counter() - clock.started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
