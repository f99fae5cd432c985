import random

import pytest

from calib_assets.calibration import SourceTooSmallError, check_capacity, sample_windows


def _documents(n=60, seed=1):
    rng = random.Random(seed)
    # lengths straddle seq_len so that some documents must be rejected
    return {f"doc{i:03d}": [rng.randrange(1000) for _ in range(rng.randint(10, 80))] for i in range(n)}


def test_same_seed_gives_the_same_set():
    docs = _documents()
    first = sample_windows(docs, seq_len=32, n_samples=5, seed=2)
    assert first == sample_windows(docs, seq_len=32, n_samples=5, seed=2)


def test_different_seeds_draw_disjoint_documents():
    docs = _documents()
    sets = [{w.doc_id for w in sample_windows(docs, seq_len=32, n_samples=5, seed=seed)} for seed in range(4)]
    assert all(len(s) == 5 for s in sets)
    for i in range(4):
        for j in range(i + 1, 4):
            assert sets[i].isdisjoint(sets[j])


def test_every_window_is_a_real_slice_of_a_long_enough_document():
    docs = _documents()
    for seed in range(3):
        for window in sample_windows(docs, seq_len=32, n_samples=5, seed=seed):
            ids = docs[window.doc_id]
            assert len(ids) >= 32
            assert list(window.token_ids) == ids[window.offset : window.offset + 32]
            assert len(window.token_ids) == 32


def test_sets_do_not_depend_on_which_other_sets_exist_or_on_document_order():
    docs = _documents()
    reordered = dict(reversed(list(docs.items())))
    assert sample_windows(docs, seq_len=32, n_samples=5, seed=1) == sample_windows(
        reordered, seq_len=32, n_samples=5, seed=1
    )


def test_sampler_seed_changes_the_draw():
    docs = _documents()
    first = [w.doc_id for w in sample_windows(docs, seq_len=32, n_samples=5, seed=0, sampler_seed=0)]
    second = [w.doc_id for w in sample_windows(docs, seq_len=32, n_samples=5, seed=0, sampler_seed=1)]
    assert first != second


def test_windows_are_uniform_over_offsets():
    # one document of length 40 and seq_len 32: 9 possible offsets, each should appear
    docs = {f"d{i}": list(range(40)) for i in range(400)}
    offsets = {w.offset for w in sample_windows(docs, seq_len=32, n_samples=400, seed=0)}
    assert offsets == set(range(9))


def test_source_too_small_names_the_numbers():
    docs = _documents()
    eligible = sum(len(ids) >= 32 for ids in docs.values())
    with pytest.raises(SourceTooSmallError, match=rf"has {eligible} calibration documents.*need {10 * 20}"):
        sample_windows(docs, seq_len=32, n_samples=20, seed=9, source="tiny")
    with pytest.raises(SourceTooSmallError, match="'bbc-tech'"):
        check_capacity(10, source="bbc-tech", seq_len=512, n_samples=4, seeds=[0, 1, 2])
    check_capacity(12, source="bbc-tech", seq_len=512, n_samples=4, seeds=[0, 1, 2])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="seq_len"):
        sample_windows(_documents(), seq_len=0, n_samples=1, seed=0)
