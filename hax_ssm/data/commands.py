"""``hax data joint-recall | mqar | info`` and ``hax demo``."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import typer

from hax_ssm.data.build import generate_joint_recall, generate_mqar
from hax_ssm.data.storage import SPLITS, open_split, read_metadata
from hax_ssm.data.tokens import BOS, PAD, REFERENCE_SCHEME, SEP, JointRecallScheme
from hax_ssm.errors import HaxError

app = typer.Typer(help="Generate and inspect recall-task datasets.", no_args_is_help=True, add_completion=False)

_OUT = typer.Option(..., "--out", help="output dataset directory (must be empty or absent unless --overwrite)")
_WORKERS = typer.Option(2, help="worker processes generating in parallel (the output does not depend on it)")


@app.command("joint-recall")
def joint_recall(
    out: Path = _OUT,
    max_contexts: int = typer.Option(16, help="largest number of contexts n_c (every outer level)"),
    max_keys: int = typer.Option(16, help="largest number of keys n_k"),
    min_side: int = typer.Option(5, help="smallest table side of every level"),
    values: int = typer.Option(16, help="number of distinct values"),
    levels: int = typer.Option(None, help="context levels + 1 (2: joint recall, 1: associative recall) [default: 2]"),
    sizes: str = typer.Option(None, help="size range per level, keys last, e.g. 2-4,3-4,5-8 (overrides the side options)"),
    train_per_pair: int = typer.Option(10_000, help="training samples per table shape"),
    eval_per_pair: int = typer.Option(100, help="validation and test samples per table shape"),
    seed: int = typer.Option(0),
    vocab_size: int = typer.Option(100),
    pad: bool = typer.Option(True, help="pad every row to the fixed length (the reference format)"),
    workers: int = _WORKERS,
    overwrite: bool = typer.Option(False, help="replace an existing output directory"),
    progress: bool = typer.Option(True),
) -> None:
    """Generate (multi-level) joint recall; the defaults are the paper's 1.44M / 14.4K / 14.4K set."""
    generate_joint_recall(
        out,
        levels=levels,
        sizes=sizes,
        max_contexts=max_contexts,
        max_keys=max_keys,
        min_side=min_side,
        values=values,
        train_per_pair=train_per_pair,
        eval_per_pair=eval_per_pair,
        seed=seed,
        vocab_size=vocab_size,
        pad=pad,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
    print(describe(out))


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise HaxError(f"{flag} {text!r}: expected comma-separated integers, e.g. 64,128") from None


@app.command("mqar")
def mqar(
    out: Path = _OUT,
    seq_len: str = typer.Option("64,128,256,256,256", help="sequence length per config (comma-separated)"),
    pairs: str = typer.Option("4,8,16,32,64", help="key-value pairs per config (comma-separated)"),
    vocab_size: int = typer.Option(8192),
    train_per_config: int = typer.Option(20_000),
    eval_per_config: int = typer.Option(1_000),
    power_a: float = typer.Option(0.01, help="query slot g has weight (g + 1) ** (power_a - 1)"),
    random_fill: bool = typer.Option(True, help="fill non-query positions with random tokens (zoology) or 0"),
    seed: int = typer.Option(0),
    workers: int = _WORKERS,
    overwrite: bool = typer.Option(False, help="replace an existing output directory"),
    progress: bool = typer.Option(True),
) -> None:
    """Generate multi-query associative recall as in zoology."""
    generate_mqar(
        out,
        seq_len=_int_list(seq_len, "--seq-len"),
        pairs=_int_list(pairs, "--pairs"),
        vocab_size=vocab_size,
        train_per_config=train_per_config,
        eval_per_config=eval_per_config,
        power_a=power_a,
        random_fill=random_fill,
        seed=seed,
        workers=workers,
        overwrite=overwrite,
        progress=progress,
    )
    print(describe(out))


@app.command("info")
def info(path: Path = typer.Argument(..., help="dataset directory (ours or the reference's)")) -> None:
    """Summarise a dataset directory."""
    print(describe(path))


def describe(root: str | Path) -> str:
    """A short human-readable summary: task, rows per split, sizes, bytes, one sample."""
    root = Path(root)
    meta = read_metadata(root)
    splits = {s: open_split(root, s) for s in SPLITS if (root / s).is_dir()}
    if not splits:
        raise HaxError(f"{root}: no train/validation/test splits found")
    lines = [f"{meta['task'] if meta else 'dataset (no hax metadata: read as reference joint recall)'} at {root}"]
    lines.append("  rows: " + ", ".join(f"{s} {len(d):,}" for s, d in splits.items()))
    if meta:
        params = ", ".join(f"{k}={v}" for k, v in meta["parameters"].items())
        lines.append(f"  parameters: {params}; seed {meta['seed']}; hax-ssm {meta['hax_ssm_version']}")
        lines.append("  sha256: " + ", ".join(f"{s} {v['sha256'][:12]}" for s, v in meta["splits"].items()))
    first = next(iter(splits.values()))
    widths = np.unique(first.row_length)
    lines.append(f"  stored row lengths: {widths.min()}..{widths.max()}")
    arrow_bytes = sum(p.stat().st_size for p in root.rglob("*.arrow"))
    lines.append(f"  arrow data: {arrow_bytes / 1e6:,.1f} MB")
    if (meta or {}).get("task", "joint_recall") == "joint_recall" and len(first):
        scheme = JointRecallScheme.from_json(meta["scheme"]) if meta else REFERENCE_SCHEME
        tokens, mask = first.gather(np.array([0]), int(first.row_length[0]), PAD)
        lines.append(f"  sample 0 ({next(iter(splits))}): {render_joint_recall(tokens[0], mask[0], scheme)}")
    return "\n".join(lines)


def render_joint_recall(tokens: np.ndarray, mask: np.ndarray, scheme: JointRecallScheme, limit: int = 48) -> str:
    """Tokens as text: C<i> contexts (C<level>.<i> with more levels), K<j> keys, V<v> values,
    '*' on the scored keys; padding dropped."""
    names = {BOS: "<bos>", SEP: "<sep>", PAD: ""}
    words = []
    for token, scored in zip(tokens.tolist(), mask.tolist()):
        if token in names:
            word = names[token]
        elif token < scheme.level_offset(scheme.key_level):
            word = f"V{token - scheme.level_offset(scheme.key_level) + scheme.n_values}"
        else:
            level = min(lv for lv in range(scheme.levels) if token >= scheme.level_offset(lv))  # offsets fall with depth
            index = token - scheme.level_offset(level)
            if level == scheme.key_level:
                word = f"K{index}"
            else:
                word = f"C{index}" if scheme.levels == 2 else f"C{level + 1}.{index}"
        if word:
            words.append(word + ("*" if scored else ""))
    return " ".join(words[:limit]) + (f" ... ({len(words)} tokens)" if len(words) > limit else "")


@contextlib.contextmanager
def _demo_dir(out: Path | None) -> Iterator[Path]:
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="hax-demo-") as tmp:
        yield Path(tmp) / "joint_recall"


def demo(
    out: Path = typer.Option(None, help="keep the demo dataset here (default: a temporary directory)"),
    overwrite: bool = typer.Option(False, help="replace an existing --out"),
) -> None:
    """Generate a small joint recall set (2-4 contexts x 2-4 keys) and summarise it."""
    with _demo_dir(out) as root:
        generate_joint_recall(
            root, sizes="2-4,2-4", train_per_pair=1_000, eval_per_pair=50, workers=1, overwrite=overwrite, progress=False
        )
        print(describe(root))
