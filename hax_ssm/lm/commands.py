"""``hax corpus ...``, ``hax ruler ...`` and ``hax longbench ...``: the language-model tools that need no model.

Heavy imports stay inside the commands so ``hax --help`` works without the ``lm`` extra installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from hax_ssm.errors import HaxError, require

app = typer.Typer(no_args_is_help=True)
corpus_app = typer.Typer(help="Build and inspect tokenized text corpora.", no_args_is_help=True)
ruler_app = typer.Typer(help="RULER-style long-context tasks: generate and score.", no_args_is_help=True)
longbench_app = typer.Typer(help="LongBench-style evaluation: score predictions.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")
app.add_typer(ruler_app, name="ruler")
app.add_typer(longbench_app, name="longbench")


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _source_dirs(pairs: list[str]) -> dict[str, Path]:
    dirs = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        require(bool(sep and name and path), f"--source-dir {pair!r}: expected NAME=DIR")
        dirs[name] = Path(path)
    return dirs


@corpus_app.command("build")
def corpus_build(
    out: Annotated[Path, typer.Option("--out", help="Output corpus directory.")],
    sources: Annotated[str | None, typer.Option(help="Comma-separated source names (default: all).")] = None,
    hf_dataset: Annotated[str | None, typer.Option(help="A Hugging Face data set id or local path.")] = None,
    hf_config: Annotated[str | None, typer.Option(help="Configuration name of --hf-dataset.")] = None,
    text_field: Annotated[str, typer.Option(help="Text column of --hf-dataset.")] = "text",
    title_field: Annotated[str | None, typer.Option(help="Title column of --hf-dataset.")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="tiktoken ranks file (default: GPT-2).")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Package cache (default: $HAX_CACHE).")] = None,
    source_dir: Annotated[list[str], typer.Option(help="NAME=DIR: read source NAME from an unpacked tree.")] = [],  # noqa: B006
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
    shard_tokens: int = 1 << 27,
    overwrite: bool = False,
) -> None:
    """Fetch the offline text sources, clean, split, tokenize and write uint16 shards + manifest."""
    from hax_ssm.lm.corpus.build import BuildOptions, build_corpus, hf_dataset_source
    from hax_ssm.lm.corpus.sources import resolve_sources
    from hax_ssm.lm.tokenizer import default_cache_dir, load_tokenizer

    names = _csv(sources)
    selected = resolve_sources(names) if names or not hf_dataset else []
    if hf_dataset:
        selected.append(hf_dataset_source(hf_dataset, text_field, title_field, hf_config))
    cache = cache_dir or default_cache_dir()
    options = BuildOptions(
        out=out,
        sources=selected,
        tokenizer=load_tokenizer(tokenizer, cache),
        cache_dir=cache,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        shard_tokens=shard_tokens,
        overwrite=overwrite,
        source_dirs=_source_dirs(source_dir),
    )
    manifest = build_corpus(options)
    _print_corpus_summary(manifest)


def _print_corpus_summary(manifest: dict) -> None:
    print(f"{'source':<22}{'train':>12}{'val':>12}{'test':>12}  documents")
    for name, info in manifest["sources"].items():
        t = info["tokens"]
        print(f"{name:<22}{t['train']:>12,}{t['val']:>12,}{t['test']:>12,}  {sum(info['documents'].values())}")
    s = manifest["splits"]
    print(
        f"{'total':<22}{s['train']['tokens']:>12,}{s['val']['tokens']:>12,}{s['test']['tokens']:>12,}  "
        f"{sum(v['documents'] for v in s.values())}"
    )
    for name, why in manifest.get("failed_sources", {}).items():
        print(f"failed: {name}: {why}")


@corpus_app.command("info")
def corpus_info(corpus: Annotated[Path, typer.Argument(help="A corpus directory.")]) -> None:
    """Print a built corpus's token counts per source and split."""
    from hax_ssm.lm.corpus.reader import TokenCorpus

    _print_corpus_summary(TokenCorpus(corpus).manifest)


@corpus_app.command("windows")
def corpus_windows(
    corpus: Annotated[Path, typer.Argument(help="A corpus directory.")],
    context: Annotated[int, typer.Option(help="Window length in tokens.")] = 2048,
    split: str = "train",
    batch: int = 2,
    seed: int = 0,
    step: int = 0,
    tokenizer: Annotated[Path | None, typer.Option(help="tiktoken ranks file of a non-GPT-2 corpus.")] = None,
    cache_dir: Path | None = None,
) -> None:
    """Print the training windows a (seed, step) draws, decoded: what the model will see."""
    from hax_ssm.lm.corpus.reader import TokenCorpus
    from hax_ssm.lm.tokenizer import corpus_tokenizer

    windows = TokenCorpus(corpus).split(split).sample_windows(context, batch, seed=seed, step=step)
    tok = corpus_tokenizer(corpus, tokenizer, cache_dir)
    for i, window in enumerate(windows):
        print(f"--- window {i} ({context} tokens) ---")
        print(tok.decode(window))


@corpus_app.command("sources")
def corpus_sources() -> None:
    """List the offline sources: name, registry, package, role, licence."""
    from hax_ssm.lm.corpus.sources import SOURCES

    for s in SOURCES.values():
        print(f"{s.name:<12} {s.kind:<5} {s.spec:<24} {s.role:<6} {s.licence}  -- {s.description}")


def _read_jsonl(path: Path) -> list[dict]:
    require(path.is_file(), f"{path}: no such file")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise HaxError(f"{path}:{lineno}: not JSON ({err.msg})") from None
    return rows


@ruler_app.command("make")
def ruler_make(
    corpus: Annotated[Path, typer.Option(help="A corpus directory (haystack: its held-out books).")],
    out: Annotated[Path, typer.Option(help="Output JSONL file of samples.")],
    tasks: Annotated[str, typer.Option(help="Comma-separated task names, or 'all'.")] = "all",
    lengths: Annotated[str, typer.Option(help="Comma-separated lengths in tokens.")] = "4096",
    samples: Annotated[int, typer.Option(help="Samples per task, length (and depth).")] = 25,
    depths: Annotated[str | None, typer.Option(help="Pin needles at these depths (percent); needle tasks.")] = None,
    split: Annotated[str, typer.Option(help="Corpus split whose books make the haystack.")] = "test",
    seed: int = 42,
    tokenizer: Annotated[Path | None, typer.Option(help="tiktoken ranks file of a non-GPT-2 corpus.")] = None,
    cache_dir: Path | None = None,
    overwrite: bool = False,
) -> None:
    """Generate RULER-style samples on the corpus's text and write them as JSONL."""
    from hax_ssm.lm.ruler import RulerGenerator, RulerText, resolve_tasks, write_samples
    from hax_ssm.lm.tokenizer import corpus_tokenizer

    names = resolve_tasks(_csv(tasks))
    try:
        sizes = [int(v) for v in _csv(lengths) or []]
        pins = [float(v) for v in _csv(depths)] if depths else [None]
    except ValueError:
        raise HaxError(f"--lengths {lengths!r} / --depths {depths!r}: expected comma-separated numbers") from None
    require(bool(sizes), "--lengths: give at least one length")
    require(overwrite or not out.exists(), f"{out} exists: pass --overwrite to replace it")
    tok = corpus_tokenizer(corpus, tokenizer, cache_dir)
    generator = RulerGenerator(tok, RulerText.from_corpus(corpus, tok, split=split), seed=seed)
    made = []
    for name in names:
        for length in sizes:
            for pin in pins if name.startswith("niah") else [None]:
                made += generator.generate(name, length, samples, depth=pin)
    write_samples(out, made)
    print(f"wrote {len(made)} samples ({len(names)} tasks x {len(sizes)} lengths) to {out}")


@ruler_app.command("score")
def ruler_score(
    predictions: Annotated[Path, typer.Argument(help="JSONL of samples with a 'pred' field each.")],
    out: Annotated[Path | None, typer.Option(help="Results JSON (default: print the summary only).")] = None,
    plot: Annotated[Path | None, typer.Option(help="PNG of score against length and depth.")] = None,
) -> None:
    """Score predictions on RULER-style samples (ours or RULER's own files) with RULER's string match."""
    from hax_ssm.lm.evaluate import plot_ruler, ruler_record, summarize_ruler, write_results
    from hax_ssm.lm.ruler import RulerSample

    records = []
    for i, row in enumerate(_read_jsonl(predictions), 1):
        require("pred" in row, f"{predictions}:{i}: no 'pred' field")
        records.append(ruler_record(RulerSample.from_record(row, task=predictions.parent.name), str(row["pred"])))
    require(bool(records), f"{predictions}: no predictions")
    results = {"records": records, "summary": summarize_ruler(records)}
    print(json.dumps(results["summary"]["average_by_length"]))
    if out:
        write_results(out, results, benchmark="ruler", predictions=str(predictions))
    if plot:
        plot_ruler(results["summary"], plot)


@longbench_app.command("score")
def longbench_score(
    predictions: Annotated[Path, typer.Argument(help="A JSONL file, or a directory of them, with 'pred' fields.")],
    out: Annotated[Path | None, typer.Option(help="Results JSON (default: print the summary only).")] = None,
) -> None:
    """Score LongBench predictions (LongBench's pred/<model>/<dataset>.jsonl layout works as is)."""
    from hax_ssm.lm.evaluate import write_results
    from hax_ssm.lm.longbench import dataset_name, score_prediction, summarize

    files = sorted(predictions.glob("*.jsonl")) if predictions.is_dir() else [predictions]
    records = []
    for file in files:
        for i, row in enumerate(_read_jsonl(file), 1):
            require("pred" in row and "answers" in row, f"{file}:{i}: needs 'pred' and 'answers' fields")
            name = dataset_name(row.get("dataset") or file.stem)
            score = score_prediction(name, str(row["pred"]), list(row["answers"]), row.get("all_classes"))
            records.append(
                {
                    "dataset": name,
                    "length": int(row.get("length", 0)),
                    "pred": row["pred"],
                    "answers": row["answers"],
                    "score": score,
                }
            )
    require(bool(records), f"{predictions}: no predictions")
    results = {"records": records, "summary": summarize(records)}
    print(json.dumps(results["summary"]))
    if out:
        write_results(out, results, benchmark="longbench", predictions=str(predictions))


# --- language models: train and evaluate ------------------------------------------------------------------------

_LM_HELP = {
    "base_arch": "mamba, mamba2 or samba",
    "size": "tiny (CPU tests) or small (~27M parameters, one GPU): configs/lm/<base-arch>_<size>.json",
    "sparse_arch": "none, a pattern or a '+' union; hax = argmax_lsh+key_selection (the paper's language setting)",
    "data_dir": "corpus directory (hax corpus build --out DIR)",
    "save_dir": "run directory: config, metrics.jsonl, checkpoints, results",
    "context": "training window in tokens (from documents at least this long)",
    "init_from": "continue pre-training a Mamba checkpoint in the HF layout (config.json + model.safetensors)",
    "num_hash": "LSH hash directions; 0 = k for argmax LSH, 8 for sign-bin LSH",
    "lr": "peak learning rate (the paper: 3e-4 at 130M, 1.5e-4 at 790M)",
    "min_lr": "learning rate at the end of the cosine",
    "hold_steps": "steps at lr 0 before the warm-up (AdamW's moments warm up)",
    "warmup_steps": "linear warm-up steps after the hold, then cosine to --min-lr",
    "eval_windows": "validation (and test) windows",
    "eval_every": "validate (keep the lowest-loss checkpoint) every N steps",
}


def _lm_flag(field: str):
    from hax_ssm.lm.train_config import LMTrainConfig
    from hax_ssm.train.commands import FLAG_HELP, config_flag

    return config_flag(field, LMTrainConfig(), {**FLAG_HELP, **_LM_HELP})


_S = str | None
_I = int | None
_F = float | None
_B = bool | None


@app.command("train-lm")
def train_lm(
    base_arch: Annotated[_S, _lm_flag("base_arch")] = None,
    size: Annotated[_S, _lm_flag("size")] = None,
    sparse_arch: Annotated[_S, _lm_flag("sparse_arch")] = None,
    data_dir: Annotated[_S, _lm_flag("data_dir")] = None,
    save_dir: Annotated[_S, _lm_flag("save_dir")] = None,
    context: Annotated[_I, _lm_flag("context")] = None,
    init_from: Annotated[_S, _lm_flag("init_from")] = None,
    sparse_keys: Annotated[_I, _lm_flag("sparse_keys")] = None,
    num_hash: Annotated[_I, _lm_flag("num_hash")] = None,
    gate_loss_weight: Annotated[_F, _lm_flag("gate_loss_weight")] = None,
    lsh_center: Annotated[_S, _lm_flag("lsh_center")] = None,
    attention_impl: Annotated[_S, _lm_flag("attention_impl")] = None,
    model_override: Annotated[
        list[str] | None, typer.Option(help="model config override KEY=JSON_VALUE (repeatable), e.g. hidden_size=256")
    ] = None,
    lr: Annotated[_F, _lm_flag("lr")] = None,
    min_lr: Annotated[_F, _lm_flag("min_lr")] = None,
    hold_steps: Annotated[_I, _lm_flag("hold_steps")] = None,
    warmup_steps: Annotated[_I, _lm_flag("warmup_steps")] = None,
    steps: Annotated[_I, _lm_flag("steps")] = None,
    batch_size: Annotated[_I, _lm_flag("batch_size")] = None,
    grad_accum: Annotated[_I, _lm_flag("grad_accum")] = None,
    weight_decay: Annotated[_F, _lm_flag("weight_decay")] = None,
    grad_clip: Annotated[_F, _lm_flag("grad_clip")] = None,
    seed: Annotated[_I, _lm_flag("seed")] = None,
    eval_every: Annotated[_I, _lm_flag("eval_every")] = None,
    eval_windows: Annotated[_I, _lm_flag("eval_windows")] = None,
    eval_batch_size: Annotated[_I, _lm_flag("eval_batch_size")] = None,
    checkpoint_every: Annotated[_I, _lm_flag("checkpoint_every")] = None,
    log_every: Annotated[_I, _lm_flag("log_every")] = None,
    device: Annotated[_S, _lm_flag("device")] = None,
    precision: Annotated[_S, _lm_flag("precision")] = None,
    compile: Annotated[_B, _lm_flag("compile")] = None,
    cuda_graphs: Annotated[_B, _lm_flag("cuda_graphs")] = None,
    progress: Annotated[_B, _lm_flag("progress")] = None,
    wandb: Annotated[_B, _lm_flag("wandb")] = None,
    wandb_project: Annotated[_S, _lm_flag("wandb_project")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON file of config fields; flags override it")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --save-dir from its last checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="start over in a --save-dir that holds a previous run")] = False,
    time_limit: Annotated[_F, typer.Option(help="stop after this many seconds with a checkpoint")] = None,
) -> None:
    """Train a causal language model on a token corpus (PAPER.md section 5's protocol); resumable."""
    from hax_ssm.lm.train import LMTrainer
    from hax_ssm.lm.train_config import LMTrainConfig
    from hax_ssm.train.commands import parse_overrides, resolve_config, run_training

    given = {k: v for k, v in locals().items() if k in LMTrainConfig.__dataclass_fields__ and v is not None}
    if model_override:
        given["model_overrides"] = parse_overrides(model_override)
    cfg = resolve_config(given, config, resume, LMTrainConfig)
    run_training(
        cfg, resume=resume, overwrite=overwrite, time_limit=time_limit, trainer_class=LMTrainer, command="hax train-lm"
    )


@app.command("eval-lm")
def eval_lm(
    target: Annotated[Path, typer.Argument(help="A train-lm run directory, a checkpoint file, or an HF Mamba dir.")],
    out: Annotated[Path | None, typer.Option(help="Output directory [<run>/eval_lm].")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Corpus of held-out text [the run's].")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="tiktoken ranks file [GPT-2 from the cache].")] = None,
    cache_dir: Path | None = None,
    ppl_split: Annotated[str, typer.Option(help="Corpus split of the perplexity documents.")] = "test",
    ppl_length: Annotated[int, typer.Option(help="Documents of at least this many tokens, cut to it.")] = 8192,
    ppl_docs: Annotated[int, typer.Option(help="At most this many documents; 0 = no perplexity.")] = 8,
    tasks: Annotated[str, typer.Option(help="RULER-style tasks, comma-separated; 'all' or 'none'.")] = "all",
    lengths: Annotated[str | None, typer.Option(help="RULER lengths in tokens [context, 2 x context].")] = None,
    samples: Annotated[int, typer.Option(help="RULER samples per task and length.")] = 5,
    ruler_split: Annotated[str, typer.Option(help="Corpus split whose books make the haystack.")] = "test",
    ruler_file: Annotated[Path | None, typer.Option(help="Pre-generated samples (hax ruler make).")] = None,
    seed: int = 42,
    longbench: Annotated[Path | None, typer.Option(help="LongBench-format JSONL file or directory.")] = None,
    longbench_datasets: Annotated[str | None, typer.Option(help="Comma-separated LongBench data sets.")] = None,
    longbench_max_tokens: Annotated[int | None, typer.Option(help="Prompt budget [the run's context].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA), bf16 or fp32")] = "auto",
    progress: bool = True,
) -> None:
    """Evaluate a language model: perplexity by position, RULER-style tasks, LongBench files."""
    from hax_ssm.lm.eval_lm import EvalLMOptions, run_eval_lm, summary_line

    try:
        sizes = [int(v) for v in _csv(lengths)] if lengths else None
    except ValueError:
        raise HaxError(f"--lengths {lengths!r}: expected comma-separated integers") from None
    names = _csv(tasks) or []
    task_list = None if names == ["all"] else [] if names == ["none"] else names
    opts = EvalLMOptions(
        target=target,
        out=out,
        corpus=corpus,
        tokenizer=tokenizer,
        cache_dir=cache_dir,
        device=device,
        precision=precision,
        ppl_split=ppl_split,
        ppl_length=ppl_length,
        ppl_docs=ppl_docs,
        tasks=task_list,
        lengths=sizes,
        samples=samples,
        ruler_split=ruler_split,
        ruler_file=ruler_file,
        seed=seed,
        longbench=longbench,
        longbench_datasets=_csv(longbench_datasets),
        longbench_max_tokens=longbench_max_tokens,
        progress=progress,
    )
    results = run_eval_lm(opts)
    print(summary_line(results))
