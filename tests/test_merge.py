"""The k-way merge of sorted runs the store's time-ordered read uses (tickwire.ext.merge),
against numpy's lexsort."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickwire.ext import EVENT_DTYPE
from tickwire.ext.merge import gather_events, merge_order, run_bounds


def _runs(seed, n, k, ties):
    """Keys of ``n`` rows in ``k`` runs (the table's order: run, then key), few distinct times
    when ``ties`` so that seq, epoch and ord decide."""
    rng = np.random.default_rng(seed)
    run = np.sort(rng.integers(0, k, n))
    ts = rng.integers(0, 4 if ties else 10**12, n).astype(np.int64)
    seq = rng.integers(0, 3 if ties else 2**63, n, dtype=np.uint64)
    epoch = rng.integers(0, 2, n, dtype=np.uint64)
    ordv = rng.permutation(n).astype(np.uint64)                  # unique, as in the store
    o = np.lexsort((ordv, epoch, seq, ts, run))
    return run[o], ts[o], seq[o], epoch[o], ordv[o]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000), k=st.integers(1, 40), ties=st.booleans())
def test_merge_order_equals_a_full_sort(seed, n, k, ties):
    run, ts, seq, epoch, ordv = _runs(seed, n, k, ties)
    perm = merge_order(ts, seq, epoch, ordv, run_bounds(run))
    want = np.lexsort((ordv, epoch, seq, ts))
    assert np.array_equal(perm, want)


def test_gather_events_interleaves_columns_in_perm_order():
    rng = np.random.default_rng(3)
    ev = np.zeros(1000, EVENT_DTYPE)
    for name in EVENT_DTYPE.names[:-1]:
        info = np.iinfo(EVENT_DTYPE[name])
        ev[name] = rng.integers(info.min, info.max, 1000, dtype=EVENT_DTYPE[name], endpoint=True)
    cols = [np.ascontiguousarray(ev[name]) for name in EVENT_DTYPE.names[:-1]]
    perm = rng.permutation(1000).astype(np.int64)
    assert gather_events(*cols, perm=perm).tobytes() == ev[perm].tobytes()
    assert gather_events(*cols).tobytes() == ev.tobytes()
    with pytest.raises(IndexError):
        gather_events(*cols, perm=np.array([1000], np.int64))
    with pytest.raises(ValueError, match="differ in length"):
        gather_events(cols[0][:5], *cols[1:])


def test_merge_order_rejects_bad_bounds():
    z = np.zeros(3, np.int64)
    u = np.zeros(3, np.uint64)
    with pytest.raises(ValueError, match="bounds"):
        merge_order(z, u, u, u, np.array([0, 2], np.int64))
    with pytest.raises(ValueError, match="bounds"):
        merge_order(z, u, u, u, np.array([0, 2, 1, 3], np.int64))
