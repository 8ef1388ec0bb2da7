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

    windows = TokenCorpus(corpus).split(split).sample_windows(context, batch, seed=seed, step=step)
    tok = _corpus_tokenizer(corpus, tokenizer, cache_dir)
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


def _corpus_tokenizer(corpus: Path, tokenizer: Path | None, cache_dir: Path | None):
    """The tokenizer a corpus was built with: GPT-2 from the cache, or the file given."""
    from hax_ssm.lm.corpus.reader import TokenCorpus
    from hax_ssm.lm.tokenizer import load_tokenizer

    name = TokenCorpus(corpus).manifest["tokenizer"]["name"]
    require(
        tokenizer is not None or name == "gpt2", f"{corpus} uses tokenizer {name!r}: pass its file with --tokenizer"
    )
    return load_tokenizer(tokenizer, cache_dir)


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

    names = resolve_tasks(_csv(tasks))
    try:
        sizes = [int(v) for v in _csv(lengths) or []]
        pins = [float(v) for v in _csv(depths)] if depths else [None]
    except ValueError:
        raise HaxError(f"--lengths {lengths!r} / --depths {depths!r}: expected comma-separated numbers") from None
    require(bool(sizes), "--lengths: give at least one length")
    require(overwrite or not out.exists(), f"{out} exists: pass --overwrite to replace it")
    tok = _corpus_tokenizer(corpus, tokenizer, cache_dir)
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
