from hax_ssm.lm.corpus import clean


def test_gutenberg_header_and_footer_go():
    text = (
        "Title line\nlegal text\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*END*\nBody one.\n\n\n\nBody two.\n"
        "End of the Project Gutenberg Etext\nlicence"
    )
    assert clean.strip_gutenberg(text) == "Body one.\n\nBody two."


def test_latin1_fallback_and_rare_bad_bytes():
    assert clean.decode_bytes("caf\u00e9 ".encode("latin-1") * 50) == "caf\u00e9 " * 50
    assert clean.decode_bytes(("x" * 100_000).encode() + b"\x92") == "x" * 100_000 + "\ufffd"


def test_osis_keeps_words_drops_notes():
    osis = (
        '<title type="main">Genesis</title> <chapter n="1"/>In the <w lemma="s:H1">beginning</w><note>gone</note> God.'
    )
    assert clean.strip_osis(osis) == "Genesis\n\nIn the beginning God."


def test_wikitext_to_prose():
    wiki = (
        "{{Infobox|a={{b|c}}}}'''Albedo''' ({{IPA|x}}) is [[diffuse reflection|reflection]] of [[light]]"
        "<ref>cite</ref>.\n== History ==\n[[File:x.png|thumb|a [[link]] caption]]\n{|\n| cell\n|}\nEnd."
    )
    assert clean.strip_wikitext(wiki) == "Albedo is reflection of light.\nHistory\nEnd."


def test_brown_detagging():
    line = "\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, it/pps was/bedz n't/* (/( so/rb )/) ./."
    assert clean.detag_brown(line) == 'The jury said "no", it wasn\'t (so).'


def test_rst_roles_and_directives():
    rst = ".. _label:\n\nUse :func:`len <builtins.len>` and :class:`~os.PathLike`.\n\n.. index:: x\n\nText."
    assert clean.strip_rst(rst) == "Use len and os.PathLike.\n\nText."


def test_gcide_groups_by_letter():
    text = "header \n\nAb \\Ab\\, n.\n   one.\n   [1913 Webster]\n\nBe \\Be\\, v.\n   two.\n   [WordNet 1.5 +PJC]\n"
    assert clean.split_gcide(text) == [("GCIDE A", "Ab \\Ab\\, n.\n   one."), ("GCIDE B", "Be \\Be\\, v.\n   two.")]
