import hashlib
import json

import numpy as np
import pytest

from hax_ssm.cli import main
from hax_ssm.errors import HaxError
from hax_ssm.lm.corpus.build import assign_splits, build_corpus, hf_dataset_source
from hax_ssm.lm.corpus.reader import TokenCorpus
from hax_ssm.lm.corpus.sources import SOURCES, read_sword_module, resolve_sources
from tests.lm.helpers import build_options


def test_every_parser_reads_its_fixture_tree(source_trees):
    docs = {name: list(SOURCES[name].parse(tree)) for name, tree in source_trees.items()}
    assert [d.title for d in docs["poe-twain"]] == [
        "The Works of Edgar Allan Poe V. 1",
        "The Works of Edgar Allan Poe V. 2",
        "The Adventures of Huckleberry Finn",
    ]
    poe = docs["poe-twain"][0].text
    assert poe.startswith("THE GOLD-BUG") and "caf\u00e9" in poe and "SMALL PRINT" not in poe and "\r" not in poe
    assert [d.title for d in docs["austen"]] == ["Emma", "Persuasion", "Northanger Abbey"]
    assert [d.title for d in docs["kjv"]] == ["KJV Gen", "KJV Exod"]
    assert "footnote" not in docs["kjv"][0].text and "<" not in docs["kjv"][0].text
    assert [d.title for d in docs["wikipedia"]] == ["Albedo", "Achilles"]  # no redirect, no talk page
    assert "reference that must vanish" not in docs["wikipedia"][0].text
    assert [d.title for d in docs["gcide"]] == ["GCIDE A", "GCIDE Z"] and "licence" not in docs["gcide"][0].text
    assert [d.title for d in docs["brown"]] == ["Brown ca01", "Brown cb02"]


def test_sword_commentary_links_are_read_once(source_trees):
    module = next(source_trees["tdavid"].rglob("tdavid"))
    blocks = list(read_sword_module(module))
    assert [ident for ident, _ in blocks] == ["ot-0", "Ps.1", "Ps.2", "Ps.3"]  # block 0: the module header
    assert blocks[1][1].count("verse 0 ") == 1  # linked twice in the index, read once


def test_unknown_source_is_refused():
    with pytest.raises(HaxError, match="unknown source 'nope'"):
        resolve_sources(["kjv", "nope"])


def test_splits_hold_out_whole_books_deterministically():
    keys = [f"book {i}#1" for i in range(40)]
    splits = assign_splits(keys, "books", 0.1, 0.1, seed=0)
    assert splits.count("val") == splits.count("test") == 4
    assert splits == assign_splits(keys, "books", 0.1, 0.1, seed=0)
    assert splits != assign_splits(keys, "books", 0.1, 0.1, seed=1)
    assert assign_splits(keys[:3], "books", 0.05, 0.05, seed=0).count("train") == 1  # one each once n >= 3
    assert set(assign_splits(keys, "bulk", 0.1, 0.1, 0)) == {"train"}
    assert set(assign_splits(keys, "qa", 0.1, 0.1, 0)) == {"test"}


def test_shards_index_and_manifest_agree(built_corpus, tiny_tokenizer, source_trees):
    manifest = json.loads((built_corpus / "manifest.json").read_text())
    corpus = TokenCorpus(built_corpus)
    assert manifest["tokenizer"]["sha256"] == tiny_tokenizer.sha256 and not manifest["failed_sources"]
    assert set(manifest["sources"]) == set(source_trees) and "provenance" in manifest
    for name in ("train", "val", "test"):
        split, info = corpus.split(name), manifest["splits"][name]
        assert len(split) == info["documents"] and split.n_tokens == info["tokens"]
        assert sum(s["tokens"] for s in info["shards"]) == info["tokens"]
        for shard in info["shards"]:
            data = (built_corpus / shard["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == 2 * shard["tokens"]
        assert sum(m["documents"][name] for m in manifest["sources"].values()) == len(split)
    # every document decodes back to its cleaned text, wherever it landed
    texts = {(n, d.title): d.text for n, tree in source_trees.items() for d in SOURCES[n].parse(tree)}
    seen = 0
    for name in ("train", "val", "test"):
        split = corpus.split(name)
        for i, meta in enumerate(split.metadata):
            assert tiny_tokenizer.decode(split.document(i)) == texts[(meta["source"], meta["title"])]
            seen += 1
    assert seen == len(texts)
    assert {m["title"] for m in corpus.split("test").metadata if m["source"] == "wikipedia"} == {"Albedo", "Achilles"}
    books_held_out = [
        m for m in corpus.split("val").metadata + corpus.split("test").metadata if m["source"] == "austen"
    ]
    assert len(books_held_out) == 2  # 3 novels: one validation, one test


def test_a_failing_source_warns_and_the_rest_builds(tmp_path, tiny_tokenizer, source_trees, monkeypatch):
    warnings = []
    trees = dict(source_trees, kjv=tmp_path / "missing")
    manifest = build_corpus(
        build_options(tmp_path / "c", tiny_tokenizer, trees, ["kjv", "brown"], warn=warnings.append)
    )
    assert list(manifest["sources"]) == ["brown"] and "kjv" in manifest["failed_sources"]
    assert len(warnings) == 1 and warnings[0].startswith("source kjv skipped:")


def test_a_killed_build_resumes_without_redoing_finished_sources(tmp_path, tiny_tokenizer, source_trees, monkeypatch):
    opts = build_options(tmp_path / "c", tiny_tokenizer, source_trees, ["brown", "kjv"])
    real_parse = SOURCES["kjv"].parse

    def killed(_root):
        raise KeyboardInterrupt

    monkeypatch.setitem(SOURCES, "kjv", SOURCES["kjv"].__class__(**{**SOURCES["kjv"].__dict__, "parse": killed}))
    opts.sources = resolve_sources(["brown", "kjv"])
    with pytest.raises(KeyboardInterrupt):
        build_corpus(opts)
    assert not (tmp_path / "c").exists() and (tmp_path / "c.partial" / "brown" / "done.json").is_file()

    def must_not_run(_root):
        raise AssertionError("brown was staged already")

    monkeypatch.setitem(
        SOURCES, "brown", SOURCES["brown"].__class__(**{**SOURCES["brown"].__dict__, "parse": must_not_run})
    )
    monkeypatch.setitem(SOURCES, "kjv", SOURCES["kjv"].__class__(**{**SOURCES["kjv"].__dict__, "parse": real_parse}))
    opts.sources = resolve_sources(["brown", "kjv"])
    manifest = build_corpus(opts)
    assert set(manifest["sources"]) == {"brown", "kjv"} and not (tmp_path / "c.partial").exists()


def test_hf_dataset_keeps_its_own_splits(tmp_path, tiny_tokenizer):
    import datasets

    book = "It was a dark and stormy night; the rain fell in torrents. " * 20
    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": [book, book + "x"], "short_book_title": ["A", "B"]}),
            "validation": datasets.Dataset.from_dict({"text": [book + "y"], "short_book_title": ["C"]}),
            "test": datasets.Dataset.from_dict({"text": [book + "z"], "short_book_title": ["D"]}),
        }
    )
    ds.save_to_disk(tmp_path / "pg19-mini")
    from hax_ssm.lm.corpus.build import BuildOptions

    opts = BuildOptions(
        out=tmp_path / "c",
        sources=[hf_dataset_source(str(tmp_path / "pg19-mini"), "text", "short_book_title")],
        tokenizer=tiny_tokenizer,
        cache_dir=tmp_path / "cache",
    )
    manifest = build_corpus(opts)
    assert {s: v["documents"] for s, v in manifest["splits"].items()} == {"train": 2, "val": 1, "test": 1}
    assert [m["title"] for m in TokenCorpus(tmp_path / "c").split("test").metadata] == ["D"]


def test_hf_dataset_from_json_files_without_splits(tmp_path, tiny_tokenizer):
    data = tmp_path / "books"
    data.mkdir()
    (data / "part.jsonl").write_text("".join(json.dumps({"text": f"Book {i}. " * 50}) + "\n" for i in range(10)))
    from hax_ssm.lm.corpus.build import BuildOptions

    opts = BuildOptions(
        out=tmp_path / "c",
        sources=[hf_dataset_source(str(data))],
        tokenizer=tiny_tokenizer,
        cache_dir=tmp_path / "cache",
        val_fraction=0.1,
        test_fraction=0.1,
    )
    manifest = build_corpus(opts)
    # load_dataset names the only split "train": held-out documents still come out of it
    assert sum(v["documents"] for v in manifest["splits"].values()) == 10


def _cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def test_cli_empty_corpus_is_one_line_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty-tree"
    empty.mkdir()
    ranks = tmp_path / "t.tiktoken"
    from tests.lm.helpers import write_tiny_ranks

    write_tiny_ranks(ranks)
    code, err = _cli(
        [
            "corpus",
            "build",
            "--out",
            str(tmp_path / "c"),
            "--sources",
            "brown",
            "--source-dir",
            f"brown={empty}",
            "--tokenizer",
            str(ranks),
        ],
        capsys,
    )
    assert code == 2 and err[-1].startswith("hax: error: corpus is empty")
    assert not (tmp_path / "c").exists()


def test_cli_refuses_existing_output_and_bad_names(tmp_path, capsys, built_corpus):
    code, err = _cli(["corpus", "build", "--out", str(built_corpus), "--sources", "brown"], capsys)
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
    code, err = _cli(["corpus", "build", "--out", str(tmp_path / "x"), "--sources", "bogus"], capsys)
    assert code == 2 and err == ["hax: error: unknown source 'bogus': allowed are " + ", ".join(SOURCES)]


def test_fetch_failure_is_a_warning_not_a_crash(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, npm or dpkg reachable
    warnings = []
    from hax_ssm.lm.corpus.build import BuildOptions

    opts = BuildOptions(
        out=tmp_path / "c",
        sources=resolve_sources(["kjv"]),
        tokenizer=tiny_tokenizer,
        cache_dir=tmp_path / "cache",
        warn=warnings.append,
    )
    with pytest.raises(HaxError, match="corpus is empty"):
        build_corpus(opts)
    assert warnings == ["source kjv skipped: apt-get is not installed"]


def test_reader_windows(built_corpus):
    split = TokenCorpus(built_corpus).split("train")
    seq = 64
    batch = split.sample_windows(seq, 32, seed=3, step=7)
    assert batch.shape == (32, seq) and batch.dtype == np.int64
    assert np.array_equal(batch, split.sample_windows(seq, 32, seed=3, step=7))
    assert not np.array_equal(batch, split.sample_windows(seq, 32, seed=3, step=8))
    docs = [np.asarray(split.document(i)) for i in range(len(split))]
    for row in batch:  # every window lies inside one document
        assert any(len(d) >= seq and _contains(d, row) for d in docs)


def _contains(doc: np.ndarray, window: np.ndarray) -> bool:
    starts = np.flatnonzero(doc[: len(doc) - len(window) + 1] == window[0])
    return any(np.array_equal(doc[s : s + len(window)], window) for s in starts)


def test_reader_uses_only_long_enough_documents(built_corpus):
    split = TokenCorpus(built_corpus).split("train")
    longest = int(split.lengths.max())
    short_docs = [np.asarray(split.document(i)) for i in np.flatnonzero(split.lengths < longest)]
    batch = split.sample_windows(longest, 8, seed=0, step=0)  # only the longest document is eligible
    assert all(np.array_equal(row, batch[0]) for row in batch) and len(short_docs) > 0
    with pytest.raises(HaxError, match=f"context of {longest + 1} tokens is longer than every document"):
        split.sample_windows(longest + 1, 1, seed=0, step=0)


def test_cli_context_longer_than_every_document(built_corpus, capsys):
    code, err = _cli(["corpus", "windows", str(built_corpus), "--context", "1000000"], capsys)
    assert code == 2 and len(err) == 1 and "longer than every document" in err[0]
