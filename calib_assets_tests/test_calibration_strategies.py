"""Sampling strategies: determinism per seed, sizes, disjointness, and rows that are real document slices."""

import random

import pytest

from calib_assets.calibration import SourceTooSmallError, sample_windows
from calib_assets.calibration.specs import ConcatChunk, Padding, RandomWindow, parse_sampling, parse_selection
from calib_assets.calibration.strategies import (
    check_strategy_capacity,
    draw_mixture,
    draw_samples,
    draw_selected,
)

EOS, PAD = 999, 0


def _documents(n=60, seed=1, low=5, high=80):
    rng = random.Random(seed)
    return {f"doc{i:03d}": [rng.randrange(1, 900) for _ in range(rng.randint(low, high))] for i in range(n)}


def _draw(sampling, docs, seed, n=5, seq_len=32, **extra):
    return draw_samples(docs, sampling, seq_len=seq_len, n_samples=n, seed=seed, pad_id=PAD, eos_id=EOS, **extra)


def _used(samples):
    return {segment[0] for sample in samples for segment in sample.segments}


def test_random_window_is_the_reference_sampler():
    docs = _documents()
    windows = sample_windows(docs, seq_len=32, n_samples=5, seed=2)
    samples = _draw(RandomWindow(), docs, seed=2)
    assert [(s.doc_id, s.offset, s.token_ids) for s in samples] == [(w.doc_id, w.offset, w.token_ids) for w in windows]


@pytest.mark.parametrize("sampling", [ConcatChunk(), ConcatChunk(separator="none"), Padding(min_tokens=8)])
def test_strategies_are_deterministic_sized_and_disjoint_across_seeds(sampling):
    docs = _documents()
    sets = [_draw(sampling, docs, seed) for seed in range(3)]
    assert sets[1] == _draw(sampling, dict(reversed(list(docs.items()))), 1)  # order of the pool is irrelevant
    for samples in sets:
        assert len(samples) == 5 and all(len(s.token_ids) == 32 for s in samples)
    for i in range(3):
        for j in range(i + 1, 3):
            assert _used(sets[i]).isdisjoint(_used(sets[j]))
    assert _draw(sampling, docs, 0, sampler_seed=7) != sets[0]


def test_packing_rows_are_the_joined_documents_cut_into_chunks():
    docs = _documents()
    samples = _draw(ConcatChunk(), docs, seed=1)
    stream = [token for sample in samples for token in sample.token_ids]
    order = list(dict.fromkeys(doc for s in samples for doc, _, _ in s.segments))
    joined = [token for doc in order for token in docs[doc] + [EOS]]
    assert stream == joined[: len(stream)]
    for sample in samples:
        real = [t for doc, offset, n in sample.segments for t in docs[doc][offset:offset + n]]
        assert [t for t in sample.token_ids if t != EOS] == real
        assert sample.effective_tokens == 32


def test_padding_keeps_the_document_start_and_counts_real_tokens():
    docs = _documents(low=5, high=50)
    samples = _draw(Padding(min_tokens=8), docs, seed=0)
    for sample in samples:
        ids = docs[sample.doc_id]
        n = min(len(ids), 32)
        assert len(ids) >= 8 and sample.effective_tokens == n
        assert list(sample.token_ids) == ids[:n] + [PAD] * (32 - n)


def test_padding_rejects_documents_below_min_tokens():
    docs = {"short": [1, 2, 3], **{f"d{i}": list(range(1, 20)) for i in range(4)}}
    used = _used(_draw(Padding(min_tokens=10), docs, seed=0, n=4))
    assert "short" not in used and len(used) == 4


def test_capacity_is_checked_before_drawing():
    lengths = {f"d{i}": 40 for i in range(10)}
    check_strategy_capacity(lengths, ConcatChunk(), source="s", seq_len=32, n_samples=4, seeds=[0, 1])  # 400 >= 256
    with pytest.raises(SourceTooSmallError, match="400 calibration tokens"):
        check_strategy_capacity(lengths, ConcatChunk(), source="s", seq_len=32, n_samples=4, seeds=[0, 1, 2, 3])
    with pytest.raises(SourceTooSmallError, match="needs? 12"):
        check_strategy_capacity(lengths, Padding(min_tokens=8), source="s", seq_len=32, n_samples=4, seeds=[2])


def test_packing_that_runs_out_of_documents_names_the_set():
    docs = {f"d{i}": list(range(1, 41)) for i in range(4)}  # 164 tokens with separators
    with pytest.raises(SourceTooSmallError, match="set 1"):
        _draw(ConcatChunk(), docs, seed=1, n=4)


def test_selection_takes_its_pick_from_the_seeds_disjoint_pool():
    docs = _documents(n=200, low=40)
    zipcal = parse_selection({"kind": "zipcal", "pool_factor": 3})
    chosen = {}
    for seed in range(2):
        samples, provenance = draw_selected(docs, RandomWindow(), zipcal, seq_len=32, n_samples=5, seed=seed)
        pool = _draw(RandomWindow(), docs, seed, n=15)
        assert provenance["candidates"] == 15 and [pool[i] for i in provenance["chosen"]] == samples
        chosen[seed] = _used(samples)
    assert chosen[0].isdisjoint(chosen[1])


def test_mixture_draws_each_components_share_and_gives_shared_documents_to_the_first():
    first, second = _documents(n=30, seed=1, low=40), _documents(n=30, seed=2, low=40)
    second = {f"b{k}": v for k, v in second.items()}
    second["doc000"] = first["doc000"]  # listed by both: belongs to the first component only
    samples, provenance = draw_mixture([first, second], [3, 2], RandomWindow(), None, seed=1, seq_len=32)
    assert [s.doc_id in first for s in samples] == [True, True, True, False, False]
    assert [c["samples"] for c in provenance["components"]] == [3, 2]
    again, _ = draw_mixture([first, second], [3, 2], RandomWindow(), None, seed=0, seq_len=32)
    assert _used(again).isdisjoint(_used(samples))


@pytest.mark.parametrize("bad, message", [
    ({"kind": "sliding"}, "allowed: \\['random_window', 'concat_chunk', 'padding'\\]"),
    ({"kind": "padding", "min_tokens": 0}, "greater than 0"),
    ({"kind": "concat_chunk", "separator": "tab"}, "'eos' or 'none'"),
])
def test_bad_sampling_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_sampling(bad)


def test_bad_selection_is_named():
    with pytest.raises(ValueError, match="'diverse'.*allowed: \\['zipcal'"):
        parse_selection({"kind": "diverse"})
    with pytest.raises(ValueError, match="pool_factor"):
        parse_selection({"kind": "zipcal", "pool_factor": 1})
