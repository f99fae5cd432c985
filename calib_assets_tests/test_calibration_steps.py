"""Strategies through the library steps (corpus -> pool -> set -> descriptors -> DuckDB) on a tiny model."""

import duckdb
import numpy as np
import pytest

from calib_assets import invariants, steps
from calib_assets.calibration import load_calibration_set, load_token_pool
from calib_assets.study import Study

TINY = {"kind": "random", "name": "tiny-llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def _study(sources, **calibration):
    return Study.model_validate({
        "name": "strategies-test", "models": [TINY], "methods": [{"method": "gptq", "bits": 3, "group_size": 32}],
        "sources": sources, "calibration": {"n_samples": 4, "seq_len": 64, "seeds": [0, 1], **calibration},
        "evaluation": {"datasets": ["abc-news"], "seq_len": 64, "max_tokens": 512},
        "compute": {"device": "cpu", "forward_dtype": "float32", "batch_size": 4}})


SOURCES = [
    "abc-news",
    {"name": "abc-news", "label": "abc-packed", "sampling": {"kind": "concat_chunk"}},
    {"name": "abc-news", "label": "abc-padded", "sampling": {"kind": "padding", "min_tokens": 8}},
    {"name": "abc-news", "label": "abc-zipcal", "selection": {"kind": "zipcal", "pool_factor": 3}},
    {"name": "abc-news", "label": "abc-lowppl", "selection": "least_perplexity"},
    {"name": "abc-news", "label": "abc-kmeans", "selection": {"kind": "activation_kmeans", "iterations": 5}},
    {"name": "wikipedia", "label": "wiki"},
    {"kind": "mixture", "label": "mix", "components": [{"source": "abc-news", "weight": 3},
                                                        {"source": "wiki", "weight": 1}]},
    {"kind": "generated", "label": "self", "model": "tiny-llama", "n_documents": 24, "max_new_tokens": 48,
     "prefix_source": "wiki", "prefix_tokens": 8, "keep_fraction": 0.8, "sampling": "concat_chunk"},
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    study = _study(SOURCES)
    model = study.models[0].name
    steps.materialize_base_model(study, model, root)
    for source in study.source_names:
        steps.materialize_corpus(study, source, root)
        steps.materialize_calibration_pool(study, model, source, root)
    manifests = {calib: steps.materialize_calibration_set(study, model, calib, root) for calib in study.calib_keys}
    return study, root, model, manifests


def test_every_strategy_gives_valid_disjoint_sets(built):
    study, root, model, manifests = built
    for calib in study.calib_keys:
        assert invariants.calibration_set_problems(study, root, model, calib) == [], calib
        assert manifests[calib]["shape"] == [4, 64]


def test_default_entry_is_the_reference_sampler_byte_for_byte(built):
    study, root, model, _ = built
    from calib_assets.calibration import build_calibration_set
    from calib_assets.models import load_model

    documents = load_token_pool(steps.pool_dir(root, model, "abc-news"))
    _, tokenizer = load_model(steps.base_model_manifest(root, model)["folder"])
    expected = build_calibration_set(documents, tokenizer, source="abc-news", seq_len=64, n_samples=4, seed=1)
    stored = load_calibration_set(steps.calibration_dir(root, model, "abc-news.s1"))
    assert np.array_equal(stored.token_ids, expected.token_ids) and stored.segments is None


def test_rows_are_real_slices_of_their_documents(built):
    study, root, model, _ = built
    documents = load_token_pool(steps.pool_dir(root, model, "abc-news"))
    for label in ("abc-packed", "abc-padded", "abc-zipcal"):
        stored = load_calibration_set(steps.calibration_dir(root, model, f"{label}.s0"))
        for row, segments, effective in zip(stored.token_ids.tolist(), stored.segments, stored.effective_tokens):
            real = [t for doc_id, offset, n in segments for t in documents[doc_id][offset:offset + n]]
            kept = [t for t in row[:effective]]
            if label == "abc-packed":  # separators (EOS) sit between documents
                eos = 256
                kept = [t for t in kept if t != eos]
                real = [t for t in real if t != eos]
            assert kept == real


def test_mixture_takes_weighted_counts_from_each_component(built):
    study, root, model, _ = built
    wiki_docs = set(steps.load_corpus_split(root, "wiki", "calibration")["doc_id"])
    for seed in (0, 1):
        stored = load_calibration_set(steps.calibration_dir(root, model, f"mix.s{seed}"))
        from_wiki = [doc for doc in stored.doc_ids if doc in wiki_docs]
        assert len(from_wiki) == 1  # weights 3:1 of 4 samples


def test_least_perplexity_picks_the_lowest_of_its_pool(built):
    study, root, model, manifests = built
    chosen = manifests["abc-lowppl.s0"]
    stored = load_calibration_set(steps.calibration_dir(root, model, "abc-lowppl.s0"))
    provenance = stored.manifest["selection_provenance"]
    assert provenance["candidates"] == 16 and len(provenance["chosen"]) == 4
    descriptors = chosen["descriptors"]
    reference = manifests["abc-news.s0"]["descriptors"]
    assert descriptors["perplexity_mean"] <= reference["perplexity_mean"] * 1.05


def test_descriptor_table_has_a_row_per_set(built, tmp_path):
    study, root, _, manifests = built
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        assert steps.write_descriptor_table(study, root, connection) == len(study.calib_keys)
        table = connection.sql("select * from set_descriptors order by calib").df()
    assert set(table["selection"]) == {"none", "zipcal", "least_perplexity", "activation_kmeans"}
    row = table[table["calib"] == "abc-news.s0"].iloc[0]
    assert row["token_count"] == 4 * 64 and row["perplexity_mean"] > 1
    padded = table[table["calib"] == "abc-padded.s0"].iloc[0]
    stored = load_calibration_set(steps.calibration_dir(root, "tiny-llama", "abc-padded.s0"))
    assert padded["token_count"] == sum(stored.effective_tokens)


def test_descriptors_are_reused_until_their_inputs_change(built):
    study, root, model, _ = built
    first = steps.materialize_descriptors(study, model, "abc-news.s0", root)
    again = steps.materialize_descriptors(study, model, "abc-news.s0", root)
    assert first == again


def test_generated_source_continues_calibration_prefixes_only(built):
    study, root, model, _ = built
    corpus = steps.load_corpus_split(root, "self", None)
    assert 0 < len(corpus) <= 20  # 24 generated, the most perplexing 20% dropped, then short ones
    wiki = steps.load_corpus_split(root, "wiki", None)
    heldout_starts = {text[:8] for text in wiki[wiki["split"] == "heldout"]["text"]}
    calibration_starts = {text[:8] for text in wiki[wiki["split"] == "calibration"]["text"]}
    starts = {text[:8] for text in corpus["text"]}
    assert starts <= calibration_starts and not starts & (heldout_starts - calibration_starts)


def test_inspection_asset_shows_random_samples_with_flags(built):
    import dagster as dg

    from calib_assets.defs.calibration_data import build_calibration_data_assets
    from calib_assets.defs.partitions import StudyPartitions
    from calib_assets.defs.resources import ArtifactStore

    study, root, model, _ = built
    assets = build_calibration_data_assets(StudyPartitions.from_study(study))
    key = dg.MultiPartitionKey({"model": model, "calib": "abc-padded.s1"})
    inspection = [asset for asset in assets if asset.key.path == ["calib_inspection"]]
    store = ArtifactStore(root=str(root), study=study.name)
    result = dg.materialize(inspection, partition_key=key, resources={"store": store})
    metadata = result.asset_materializations_for_node("calib_inspection")[0].metadata
    markdown = metadata["samples"].value
    assert markdown.count("**sample ") == 4 and "flags:" in markdown and "**flagged samples**" in markdown
    descriptors = steps.materialize_descriptors(study, model, "abc-padded.s1", root)
    flagged = sum(bool(sample["flags"]) for sample in descriptors["samples"])
    assert metadata["flagged"].value >= flagged


def test_descriptor_table_asset_writes_every_set(built):
    import dagster as dg

    from calib_assets.defs.calibration_data import build_calibration_data_assets
    from calib_assets.defs.partitions import StudyPartitions
    from calib_assets.defs.resources import ArtifactStore

    study, root, _, _ = built
    assets = [asset for asset in build_calibration_data_assets(StudyPartitions.from_study(study))
              if asset.key.path == ["set_descriptors"]]
    result = dg.materialize(assets, resources={"store": ArtifactStore(root=str(root), study=study.name)})
    metadata = result.asset_materializations_for_node("set_descriptors")[0].metadata
    assert metadata["rows"].value == metadata["expected_rows"].value == len(study.calib_keys)
    with duckdb.connect(str(steps.warehouse_path(root)), read_only=True) as connection:
        count = connection.execute("select count(distinct calib) from set_descriptors").fetchall()[0][0]
    assert count == len(study.calib_keys)
