"""Text cleaning: one function per kind of markup, each returning plain text with normalised spacing."""

from __future__ import annotations

import html
import itertools
import re
import unicodedata

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")


def normalize_text(text: str) -> str:
    """NFC, Unix newlines, no control characters or trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text).replace("\t", "    ")
    text = _TRAILING_SPACE.sub("\n", text)
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def decode_bytes(data: bytes) -> str:
    """UTF-8, with the odd bad byte replaced; Latin-1 (the old Gutenberg texts) when many bytes are not UTF-8."""
    text = data.decode("utf-8", errors="replace")
    if text.count("\ufffd") > 1e-4 * max(len(data), 1) + 8:
        return data.decode("latin-1")
    return text


# --- Project Gutenberg ------------------------------------------------------------------------------------------

_GUTENBERG_START = re.compile(
    r"^.*(\*END\*?\s*THE SMALL PRINT|\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG).*$", re.IGNORECASE | re.MULTILINE
)
_GUTENBERG_END = re.compile(
    r"^.*(End of (the )?Project Gutenberg|\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG).*$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_gutenberg(text: str) -> str:
    """Drop the Project Gutenberg header (up to its start marker) and footer (from its end marker)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return normalize_text(text)


def split_gutenberg_volumes(text: str, title_pattern: str) -> list[tuple[str, str]]:
    """Split a file of several concatenated Gutenberg etexts at their title lines; returns (title, body) pairs."""
    heads = list(re.finditer(title_pattern, text, re.MULTILINE))
    # Each etext repeats its title line inside its own header: keep the first of each run of equal titles.
    firsts = [m for i, m in enumerate(heads) if i == 0 or m.group(0) != heads[i - 1].group(0)]
    bounds = [m.start() for m in firsts] + [len(text)]
    return [
        (m.group(0).strip(), strip_gutenberg(text[a:b])) for m, a, b in zip(firsts, bounds, bounds[1:], strict=False)
    ]


# --- OSIS (SWORD Bible and commentary modules) ------------------------------------------------------------------

_OSIS_DROP = re.compile(r"<note\b[^>]*>.*?</note>|<milestone\b[^>]*/>|<rdg\b[^>]*>.*?</rdg>", re.DOTALL)
_OSIS_BREAK = re.compile(r"<(title|chapter|lg|l|lb|p|div|row|item)\b[^>]*>|</(title|l|p|row|item)>")
_TAG = re.compile(r"<[^>]+>")


def strip_osis(text: str) -> str:
    """Plain text of an OSIS fragment: footnotes and variant readings dropped, structure kept as line breaks."""
    text = _OSIS_DROP.sub(" ", text)
    text = _OSIS_BREAK.sub("\n", text)
    text = html.unescape(_TAG.sub("", text))
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return normalize_text("\n".join(lines).replace("\u00b6", ""))


# --- MediaWiki --------------------------------------------------------------------------------------------------

_WIKI_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_WIKI_REF = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_WIKI_BLOCK_TAGS = re.compile(r"<(gallery|math|timeline|score|syntaxhighlight)\b.*?</\1>", re.DOTALL | re.IGNORECASE)
_WIKI_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_WIKI_TABLE = re.compile(r"\{\|[^{}]*?\|\}", re.DOTALL)
_WIKI_FILE_LINK = re.compile(r"\[\[(?:File|Image|Category|Media):[^\[\]]*\]\]", re.IGNORECASE)
_WIKI_INTERWIKI = re.compile(r"\[\[[a-z\-]{2,12}:[^\[\]]*\]\]")
_WIKI_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]")
_WIKI_EXTERNAL = re.compile(r"\[(?:https?|ftp)://[^\s\]]+\s*([^\]]*)\]")
_WIKI_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.MULTILINE)
_WIKI_LIST = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_WIKI_TABLE_LINE = re.compile(r"^\s*[|!].*$", re.MULTILINE)
_WIKI_LEADING_PUNCT = re.compile(r"\(\s*(?:[,;]\s*)+")
_WIKI_TRAILING_PUNCT = re.compile(r"(?:\s*[,;])+\s*\)")
_WIKI_EMPTY_PARENS = re.compile(r"\s?\(\s*\)")


def _remove_nested(pattern: re.Pattern, text: str) -> str:
    """Remove innermost matches until none is left (templates and tables nest)."""
    while True:
        text, n = pattern.subn("", text)
        if n == 0:
            return text


def strip_wikitext(text: str) -> str:
    """Plain prose of a MediaWiki article: templates, tables, references, files and markup removed."""
    text = _WIKI_COMMENT.sub("", html.unescape(text))
    text = _WIKI_REF.sub("", text)
    text = _WIKI_BLOCK_TAGS.sub("", text)
    text = _remove_nested(_WIKI_TEMPLATE, text)
    text = _remove_nested(_WIKI_TABLE, text)
    text = _remove_nested(_WIKI_FILE_LINK, text)  # captions may hold links: innermost links go first below
    text = _WIKI_INTERWIKI.sub("", text)
    text = _WIKI_LINK.sub(r"\1", text)
    text = _remove_nested(_WIKI_FILE_LINK, text)
    text = _WIKI_EXTERNAL.sub(r"\1", text)
    text = text.replace("'''", "").replace("''", "")
    text = _WIKI_HEADING.sub(r"\1", text)
    text = _WIKI_TABLE_LINE.sub("", text)
    text = _WIKI_LIST.sub("", text)
    text = _TAG.sub("", text)
    text = _WIKI_TRAILING_PUNCT.sub(")", _WIKI_LEADING_PUNCT.sub("(", text))
    text = _WIKI_EMPTY_PARENS.sub("", text)  # left by removed pronunciation templates
    return normalize_text(text.replace("&nbsp;", " "))


# --- Brown corpus (word/tag tokens) -----------------------------------------------------------------------------

_NO_SPACE_BEFORE = re.compile(r" ([.,;:!?%)\]}]|'s\b|n't\b|'re\b|'ll\b|'ve\b|'d\b|'m\b)")
_NO_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def detag_brown(text: str) -> str:
    """Brown corpus ``word/tag`` tokens back to running text, one paragraph per tagged line."""
    paragraphs = []
    for line in text.splitlines():
        words: list[str] = []
        opening = False
        for tok in line.split():
            word = tok.rsplit("/", 1)[0]
            if word == "``":  # opening quote: glued to the next word
                opening = True
            elif word == "''" and words:  # closing quote: glued to the previous word
                words[-1] += '"'
            else:
                words.append('"' + word if opening else word)
                opening = False
        if words:
            paragraphs.append(_NO_SPACE_AFTER.sub(r"\1", _NO_SPACE_BEFORE.sub(r"\1", " ".join(words))))
    return normalize_text("\n\n".join(paragraphs))


# --- reStructuredText (Sphinx _sources) -------------------------------------------------------------------------

_RST_ROLE = re.compile(r":[\w:+-]+:`(?:~|!)?([^`<]*?)(?:\s*<[^`>]*>)?`")
_RST_DIRECTIVES = (
    "index|highlight|toctree|sectionauthor|moduleauthor|versionadded|versionchanged|deprecated|currentmodule|module"
)
_RST_LABEL = re.compile(rf"^\.\. (_[^:]+:|\|[^|]+\|.*|({_RST_DIRECTIVES})::.*)$", re.MULTILINE)
_RST_OPTION = re.compile(
    r"^\s+:(maxdepth|glob|hidden|numbered|caption|noindex|synopsis|platform|titlesonly|name|class|linenos|emphasize-lines):.*$",
    re.MULTILINE,
)


def strip_rst(text: str) -> str:
    """Sphinx source with roles reduced to their text and index/label/toctree directives dropped."""
    text = _RST_ROLE.sub(r"\1", text)
    text = _RST_LABEL.sub("", text)
    text = _RST_OPTION.sub("", text)
    return normalize_text(text)


# --- GCIDE (dictd database) -------------------------------------------------------------------------------------

_GCIDE_ENTRY = re.compile(r"^(?=[^\s\\][^\n]*?\\[^\\\n]+\\)", re.MULTILINE)  # ``Headword \Head"word\, n.``
_GCIDE_SOURCE_TAG = re.compile(r"^[ \t]*\[[^\]\n]*(?:Webster|WordNet|PJC)[^\]\n]*\][ \t]*$", re.MULTILINE)


def split_gcide(text: str) -> list[tuple[str, str]]:
    """The dictionary as one document per initial letter; the database header and licence notice before the
    first entry and the ``[1913 Webster]`` source tags are dropped."""
    starts = [m.start() for m in _GCIDE_ENTRY.finditer(text)] + [len(text)]
    groups: dict[str, list[str]] = {}
    for a, b in itertools.pairwise(starts):
        initial = text[a].upper() if text[a].isalpha() and text[a].isascii() else "#"
        groups.setdefault(initial, []).append(_GCIDE_SOURCE_TAG.sub("", text[a:b]))
    return [(f"GCIDE {letter}", normalize_text("".join(entries))) for letter, entries in sorted(groups.items())]
