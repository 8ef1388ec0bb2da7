"""Names, budgets and validation of the sparse-attention patterns (PAPER.md section 3).

A pattern string is one name or a '+' union of names, e.g. ``sliding_window+sink``.
``hax`` is an alias of ``sign_bin_lsh+key_selection``. The budget ``sparse_keys`` is split
evenly between the parts of a union; each part keeps at most ``part_keys`` keys per query.
"""

from __future__ import annotations

from dataclasses import dataclass

from hax_ssm.errors import HaxError, require

PATTERNS = ("full", "sliding_window", "sink", "dilated", "sign_bin_lsh", "argmax_lsh", "key_selection")
LSH_PATTERNS = ("sign_bin_lsh", "argmax_lsh")
ALIASES = {"hax": ("sign_bin_lsh", "key_selection")}
LSH_CENTERS = ("causal", "sequence")
# sign-bin buckets are num_hash sign bits packed into one int64
MAX_SIGN_BIN_HASHES = 63


@dataclass(frozen=True)
class SparseSpec:
    """A validated pattern with its budget. Build it with :func:`parse_sparse_arch`."""

    parts: tuple[str, ...]
    sparse_keys: int = 64
    num_hash: int = 8
    data_max_length: int = 2048
    lsh_center: str = "causal"

    @property
    def name(self) -> str:
        return "+".join(self.parts)

    @property
    def part_keys(self) -> int:
        """k_c: the budget of each part of the union."""
        return self.sparse_keys // len(self.parts)

    @property
    def dilation(self) -> int:
        """r of the dilated pattern: key j is kept iff j % r == r - 1."""
        return self.data_max_length // self.part_keys

    @property
    def lsh(self) -> str | None:
        """The LSH part of the union, if any."""
        return next((p for p in self.parts if p in LSH_PATTERNS), None)

    @property
    def num_buckets(self) -> int:
        if self.lsh == "sign_bin_lsh":
            return 2**self.num_hash
        if self.lsh == "argmax_lsh":
            return self.num_hash
        return 0

    def has(self, part: str) -> bool:
        return part in self.parts

    def check_length(self, length: int) -> None:
        """Refuse sequences the pattern is not defined for (dilated beyond data_max_length)."""
        if self.has("dilated") and length > self.data_max_length:
            raise HaxError(
                f"sequence length {length} exceeds data_max_length={self.data_max_length} of the dilated "
                "pattern: raise data_max_length"
            )


def _split(arch: str) -> tuple[str, ...]:
    names: list[str] = []
    for raw in arch.split("+"):
        name = raw.strip().lower()
        if name in ALIASES:
            names.extend(ALIASES[name])
        elif name in PATTERNS:
            names.append(name)
        else:
            allowed = ", ".join(("none", *PATTERNS, *ALIASES))
            raise HaxError(f"sparse_arch {arch!r}: unknown pattern {raw.strip()!r}; allowed: {allowed}, or a '+' union")
    return tuple(names)


def parse_sparse_arch(
    arch: str | None,
    *,
    sparse_keys: int = 64,
    num_hash: int = 8,
    data_max_length: int = 2048,
    lsh_center: str = "causal",
) -> SparseSpec | None:
    """Validate a pattern string and its parameters; ``None``/``"none"``/``""`` means no branch."""
    if arch is None or arch.strip().lower() in ("", "none"):
        return None
    names = _split(arch)
    require(len(set(names)) == len(names), f"sparse_arch {arch!r}: a pattern appears twice in the union")
    require(
        "full" not in names or len(names) == 1, f"sparse_arch {arch!r}: 'full' cannot be combined with other patterns"
    )
    require(sum(n in LSH_PATTERNS for n in names) <= 1, f"sparse_arch {arch!r}: at most one LSH pattern per union")
    parts = tuple(p for p in PATTERNS if p in names)  # canonical order: 'key_selection+sign_bin_lsh' == 'hax'
    require(isinstance(sparse_keys, int) and sparse_keys >= 1, f"sparse_keys={sparse_keys}: must be a positive integer")
    require(
        sparse_keys % len(parts) == 0,
        f"sparse_keys={sparse_keys} does not split evenly between the {len(parts)} parts of {'+'.join(parts)}: "
        f"use a multiple of {len(parts)}",
    )
    if "sign_bin_lsh" in parts:
        require(
            1 <= num_hash <= MAX_SIGN_BIN_HASHES,
            f"num_hash={num_hash}: sign_bin_lsh needs 1 <= num_hash < 64 (2**num_hash buckets)",
        )
    if "argmax_lsh" in parts:
        require(num_hash >= 2, f"num_hash={num_hash}: argmax_lsh needs num_hash >= 2 (num_hash buckets)")
    spec = SparseSpec(parts, sparse_keys, num_hash, data_max_length, lsh_center)
    if "dilated" in parts:
        require(
            data_max_length >= spec.part_keys,
            f"data_max_length={data_max_length}: dilated needs data_max_length >= its budget {spec.part_keys}",
        )
    require(lsh_center in LSH_CENTERS, f"lsh_center={lsh_center!r}: allowed: {', '.join(LSH_CENTERS)}")
    return spec
