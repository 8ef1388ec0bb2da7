"""``hax models``: the variants of the paper's synthetic study and their parameter counts."""

from __future__ import annotations

import torch

from hax_ssm.models.presets import build_model, preset_names

# Table 1 of the paper: (row label, sparse_arch, what it adds)
VARIANTS = [
    ("Base", None, "no branch"),
    ("+D", "dilated", "dilated: every r-th key, r = data_max_length / k"),
    ("+SW", "sliding_window", "the k most recent keys"),
    ("+SW+D", "sliding_window+dilated", "k/2 recent + k/2 dilated"),
    ("+A", "sliding_window+sink", "k/2 recent + the first k/2 (attention sink)"),
    ("+LSH", "sign_bin_lsh", "the k most recent keys in the query's sign-bit LSH bucket"),
    ("+KS", "key_selection", "the k best keys so far under a learned score"),
    ("+HAX", "hax", "sign-bin LSH + key selection, k/2 each"),
    ("+full", "full", "all keys (dense causal attention, an upper bound)"),
]


def parameter_count(preset: str, sparse_arch: str | None) -> int:
    with torch.device("meta"):  # counting needs shapes only
        return build_model(preset, sparse_arch=sparse_arch).num_parameters()


def variant_table(presets: list[str] | None = None) -> str:
    """A markdown table: one row per branch variant, one parameter-count column per preset."""
    presets = presets or preset_names()
    for preset in presets:
        parameter_count(preset, None)  # a bad preset name fails before any output
    lines = [
        "| variant | sparse_arch | " + " | ".join(presets) + " | what the branch attends to |",
        "|---|---|" + "---:|" * len(presets) + "---|",
    ]
    for label, arch, what in VARIANTS:
        counts = " | ".join(f"{parameter_count(p, arch):,}" for p in presets)
        lines.append(f"| {label} | `{arch or 'none'}` | {counts} | {what} |")
    return "\n".join(lines)
