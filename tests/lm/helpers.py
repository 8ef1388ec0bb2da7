"""Fixtures for the lm tests: a tiny byte-level BPE, package trees of every source kind, a built corpus.

The text fixtures are committed under fixtures/; the binary package formats (SWORD modules, R lazy-load
databases, gzip/bz2 dumps) are written here from small literals, which also exercises the readers'
knowledge of those formats from the writing side.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"
MERGES = [b"th", b"he", b"the", b" t", b" the", b"in", b"an", b"er", b"re", b"on", b"at", b"en", b"nd", b"ed"]


def write_tiny_ranks(path: Path) -> Path:
    """A valid tiktoken ranks file: the 256 bytes plus a few merges (ids < 300, so uint16 is plenty)."""
    ranks = [bytes([i]) for i in range(256)] + MERGES
    path.write_text("".join(f"{base64.b64encode(tok).decode()} {rank}\n" for rank, tok in enumerate(ranks)))
    return path


def write_sword_module(module_dir: Path, books: list[tuple[str, list[str]]], wide: bool, link_every: int = 0) -> None:
    """An OT-only SWORD module: block 0 a header, then one zlib block per book of OSIS verses.

    ``wide`` writes 12-byte index entries (zCom4) instead of 10; ``link_every`` > 0 repeats an entry the
    way commentaries link one comment from several verses.
    """
    module_dir.mkdir(parents=True)
    blocks = [b'<milestone type="x-importer"/>']
    entries = [(0, 0, 0), (0, 0, len(blocks[0]))]
    for osis_id, verses in books:
        block = b""
        for k, verse in enumerate(verses):
            raw = (f'<div osisID="{osis_id}" type="book"/>' if k == 0 else "").encode() + verse.encode() + b" "
            entries.append((len(blocks), len(block), len(raw)))
            if link_every and k % link_every == 0:
                entries.append(entries[-1])
            block += raw
        blocks.append(block)
    index, data = b"", b""
    for block in blocks:
        packed = zlib.compress(block)
        index += struct.pack("<III", len(data), len(packed), len(block))
        data += packed
    kind = "c" if wide else "b"
    fmt = "<III" if wide else "<IIH"
    (module_dir / f"ot.{kind}zs").write_bytes(index)
    (module_dir / f"ot.{kind}zz").write_bytes(data)
    (module_dir / f"ot.{kind}zv").write_bytes(b"".join(struct.pack(fmt, *e) for e in entries))


def write_r_lazyload(data_dir: Path, objects: dict[str, list[str]]) -> None:
    """An R lazy-load database (Rdata.rdx + Rdata.rdb) of character vectors, as R writes for LazyData."""
    import rdata
    from rdata.conversion import convert_python_to_r_data

    def serialize(obj) -> bytes:
        return rdata.unparser.unparse_data(
            convert_python_to_r_data(obj, file_type="rds"), file_format="xdr", file_type="rds"
        )

    data_dir.mkdir(parents=True)
    blob, offsets = b"", {}
    for name, lines in objects.items():
        raw = serialize(np.array(lines))
        chunk = struct.pack(">I", len(raw)) + zlib.compress(raw)
        offsets[name] = np.array([len(blob), len(chunk)], dtype=np.int32)
        blob += chunk
    (data_dir / "Rdata.rdb").write_bytes(blob)
    index = {"variables": offsets, "references": {}, "compressed": np.array([True])}
    (data_dir / "Rdata.rdx").write_bytes(gzip.compress(serialize(index)))


def _verses(book: str, n: int) -> list[str]:
    return [
        f'<chapter osisID="{book}.1"/>In the beginning of {book} verse {k} the <w lemma="strong:H1">word</w> was '
        f'spoken<note placement="foot">a footnote to drop</note> and all the people heard it.'
        for k in range(n)
    ]


def build_source_trees(root: Path) -> dict[str, Path]:
    """Unpacked package trees for austen, poe-twain, kjv, tdavid, gcide, brown and wikipedia."""
    trees = {}
    for name in ("poe-twain", "brown"):
        trees[name] = root / name
        shutil.copytree(FIXTURES / "sources" / name, trees[name])
    novel = ["EMMA", "", "By Jane Austen", "", "CHAPTER I", ""] + [
        "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition."
    ] * 30
    trees["austen"] = root / "austen"
    write_r_lazyload(
        trees["austen"] / "usr/lib/R/site-library/janeaustenr/data",
        {
            "emma": novel,
            "persuasion": ["PERSUASION", "", *novel[2:]],
            "northangerabbey": ["NORTHANGER ABBEY", "", *novel[2:]],
        },
    )
    trees["kjv"] = root / "kjv"
    write_sword_module(
        trees["kjv"] / "usr/share/sword/modules/texts/ztext/engKJV2006eb",
        [("Gen", _verses("Gen", 12)), ("Exod", _verses("Exod", 9))],
        wide=False,
    )
    trees["tdavid"] = root / "tdavid"
    write_sword_module(
        trees["tdavid"] / "usr/share/sword/modules/comments/zcom/tdavid",
        [("Ps.1", _verses("Ps", 6)), ("Ps.2", _verses("Ps", 5)), ("Ps.3", _verses("Ps", 7))],
        wide=True,
        link_every=2,
    )
    trees["gcide"] = root / "gcide"
    (trees["gcide"] / "usr/share/dictd").mkdir(parents=True)
    gcide = (
        "00-database-info\n   The GNU licence notice would be here.\n\n"
        'Abbey \\Ab"bey\\, n.\n   A monastery or society of persons.\n   [1913 Webster]\n\n'
        'Abbot \\Ab"bot\\, n.\n   The superior of an abbey.\n   [1913 Webster]\n\n'
        'Zymose \\Zy*mose"\\, n. (Chem.)\n   Invertin.\n   [1913 Webster]\n'
    )
    (trees["gcide"] / "usr/share/dictd/gcide.dict.dz").write_bytes(gzip.compress(gcide.encode()))
    trees["wikipedia"] = root / "wikipedia"
    dump = trees["wikipedia"] / "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p1-shortened.bz2"
    dump.parent.mkdir(parents=True)
    dump.write_bytes(bz2.compress((FIXTURES / "wiki.xml").read_bytes()))
    return trees


def build_options(out: Path, tokenizer, trees: dict[str, Path], names: list[str] | None = None, **kwargs):
    from hax_ssm.lm.corpus.build import BuildOptions
    from hax_ssm.lm.corpus.sources import resolve_sources

    names = names or list(trees)
    kwargs.setdefault("warn", lambda msg: None)
    return BuildOptions(
        out=out,
        sources=resolve_sources(names),
        tokenizer=tokenizer,
        cache_dir=out.parent / "cache",
        source_dirs={n: trees[n] for n in names},
        **kwargs,
    )
