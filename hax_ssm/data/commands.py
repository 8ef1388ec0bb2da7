"""``hax data joint-recall | mqar | info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from hax_ssm.data.build import generate_joint_recall, generate_mqar
from hax_ssm.data.storage import SPLITS, open_split, read_metadata
from hax_ssm.data.tokens import BOS, PAD, REFERENCE_SCHEME, SEP, JointRecallScheme
from hax_ssm.errors import HaxError

app = typer.Typer(help="Generate and inspect recall-task datasets.", no_args_is_help=True, add_completion=False)

Out = Annotated[Path, typer.Option(help="output dataset directory (must be empty or absent unless --overwrite)")]
Workers = Annotated[
    int, typer.Option(help="worker processes generating in parallel (the output does not depend on it)")
]
Overwrite = Annotated[bool, typer.Option(help="replace an existing output directory")]
Seed = Annotated[int, typer.Option(help="seed of every random stream")]


@app.command("joint-recall")
def joint_recall(
    out: Out,
    max_contexts: Annotated[int, typer.Option(help="largest number of contexts n_c (every outer level)")] = 16,
    max_keys: Annotated[int, typer.Option(help="largest number of keys n_k")] = 16,
    min_side: Annotated[int, typer.Option(help="smallest table side of every level")] = 5,
    values: Annotated[int, typer.Option(help="number of distinct values")] = 16,
    levels: Annotated[
        int | None, typer.Option(help="table levels, keys included (1: associative recall) [default: 2]")
    ] = None,
    sizes: Annotated[str | None, typer.Option(help="size range per level, keys last, e.g. 2-4,3-4,5-8")] = None,
    train_per_pair: Annotated[int, typer.Option(help="training samples per table shape")] = 10_000,
    eval_per_pair: Annotated[int, typer.Option(help="validation and test samples per table shape")] = 100,
    seed: Seed = 0,
    vocab_size: Annotated[int, typer.Option(help="vocabulary the token ids must fit in")] = 100,
    pad: Annotated[bool, typer.Option(help="pad every row to the fixed length (the reference format)")] = True,
    workers: Workers = 2,
    overwrite: Overwrite = False,
    progress: bool = True,
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
    out: Out,
    seq_len: Annotated[str, typer.Option(help="sequence length per config (comma-separated)")] = "64,128,256,256,256",
    pairs: Annotated[str, typer.Option(help="key-value pairs per config (comma-separated)")] = "4,8,16,32,64",
    vocab_size: int = 8192,
    train_per_config: int = 20_000,
    eval_per_config: int = 1_000,
    power_a: Annotated[float, typer.Option(help="query slot g has weight (g + 1) ** (power_a - 1)")] = 0.01,
    random_fill: Annotated[
        bool, typer.Option(help="fill the other positions with random tokens (zoology), or 0")
    ] = True,
    seed: Seed = 0,
    workers: Workers = 2,
    overwrite: Overwrite = False,
    progress: bool = True,
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
def info(path: Annotated[Path, typer.Argument(help="dataset directory (ours or the reference's)")]) -> None:
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
    for token, scored in zip(tokens.tolist(), mask.tolist(), strict=True):
        if token in names:
            word = names[token]
        elif token < scheme.level_offset(scheme.key_level):
            word = f"V{token - scheme.level_offset(scheme.key_level) + scheme.n_values}"
        else:
            # the first level whose ids start at or below the token (offsets fall with depth)
            level = min(lv for lv in range(scheme.levels) if token >= scheme.level_offset(lv))
            index = token - scheme.level_offset(level)
            if level == scheme.key_level:
                word = f"K{index}"
            else:
                word = f"C{index}" if scheme.levels == 2 else f"C{level + 1}.{index}"
        if word:
            words.append(word + ("*" if scored else ""))
    return " ".join(words[:limit]) + (f" ... ({len(words)} tokens)" if len(words) > limit else "")
