"""Hub presets: exact ids, streaming, and the real loading code on local fixtures in each dataset's schema."""

from pathlib import Path

import pytest

from calib_assets.sources import HUGGINGFACE_PRESETS, HuggingFaceSource, build_corpus, parse_source_spec

PRESETS = Path(__file__).parent / "fixtures" / "sources" / "presets"
# preset -> (datasets builder for the local copy, fixture file in the preset's schema, first words of its texts)
FIXTURES = {
    "c4": ("json", "c4-train.00000-of-01024.json.gz", "C4"),
    "cnn-dailymail": ("parquet", "cnn_dailymail-3.0.0-train.parquet", "CNN"),
    "redpajama-sample": ("json", "redpajama-c4_sample.jsonl", "RedPajama"),
    "refinedweb": ("parquet", "train-00000-of-05534.parquet", "RefinedWeb"),
    "wikipedia": ("parquet", "wikipedia-20231101.en.parquet", "Wikipedia"),
    "pile": ("json", "pile-00.jsonl.zst", "Pile"),
    "slimpajama": ("json", "slimpajama-chunk1.jsonl", "SlimPajama"),
    "dclm": ("json", "dclm-shard.jsonl", "DCLM"),
}


def test_paper_sources_have_their_exact_ids_files_and_fields():
    expected = {
        "c4": ("allenai/c4", None, "en/c4-train.00000-of-01024.json.gz", "text"),
        "cnn-dailymail": ("abisee/cnn_dailymail", "3.0.0", None, "article"),
        "redpajama-sample": ("togethercomputer/RedPajama-Data-1T-Sample", None, "*.jsonl", "text"),
        "refinedweb": ("tiiuae/falcon-refinedweb", None, "data/train-00000-of-05534-b8fc5348cbe605a5.parquet",
                       "content"),
        "wikipedia": ("wikimedia/wikipedia", "20231101.en", None, "text"),
    }
    for label, (path, name, data_files, field) in expected.items():
        spec = parse_source_spec({"kind": "huggingface", "preset": label})
        assert (spec.path, spec.name, spec.data_files, spec.text_field) == (path, name, data_files, field)


def test_every_preset_streams_and_is_capped():
    for label in HUGGINGFACE_PRESETS:
        spec = parse_source_spec({"kind": "huggingface", "preset": label})
        assert isinstance(spec, HuggingFaceSource) and spec.label == label
        assert spec.streaming and spec.max_documents is not None


def test_fields_next_to_a_preset_override_it():
    spec = parse_source_spec({"kind": "huggingface", "preset": "c4", "label": "c4-small", "max_documents": 50})
    assert (spec.label, spec.max_documents, spec.path) == ("c4-small", 50, "allenai/c4")


def test_unknown_preset_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown Hugging Face preset 'c5'.*'cnn-dailymail'"):
        parse_source_spec({"kind": "huggingface", "preset": "c5"})


@pytest.mark.parametrize("preset", sorted(FIXTURES))
def test_preset_reads_a_fixture_in_its_schema(preset):
    builder, filename, tag = FIXTURES[preset]
    assert preset in HUGGINGFACE_PRESETS
    spec = {"kind": "huggingface", "preset": preset, "path": builder, "name": None,
            "data_files": str(PRESETS / filename)}
    corpus = build_corpus(spec, heldout_fraction=0.25)
    assert len(corpus) == 4 and corpus["text"].str.startswith(f"{tag} document").all()
