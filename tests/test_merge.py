"""The k-way merge of sorted runs the store's time-ordered read uses (tickwire.ext.merge),
against numpy's lexsort."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickwire.ext import EVENT_DTYPE
from tickwire.ext.merge import merge_events, run_bounds

FIELDS = EVENT_DTYPE.names[:-1]                     # all but ``reserved``


def _runs(seed, n, k, ties):
    """``n`` rows in ``k`` runs as the store reads them (the table's order: instrument, then the
    keys), every event field random, few distinct times when ``ties`` so that seq, epoch and ord
    decide; returns the events, epoch and ord, in that row order."""
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    for name in FIELDS:
        info = np.iinfo(EVENT_DTYPE[name])
        ev[name] = rng.integers(info.min, info.max, n, dtype=EVENT_DTYPE[name], endpoint=True)
    ev["instrument"] = rng.integers(0, k, n)
    ev["ts_event"] = rng.integers(0, 4 if ties else 10**12, n)
    ev["seq"] = rng.integers(0, 3 if ties else 2**63, n, dtype=np.uint64)
    epoch = rng.integers(0, 2, n, dtype=np.uint64)
    ordv = rng.permutation(n).astype(np.uint64)                  # unique, as in the store
    o = np.lexsort((ordv, epoch, ev["seq"], ev["ts_event"], ev["instrument"]))
    return ev[o], epoch[o], ordv[o]


def _cols(ev):
    return [np.ascontiguousarray(ev[name]) for name in FIELDS]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 3000), k=st.integers(1, 40), ties=st.booleans())
def test_merge_events_equals_a_full_sort(seed, n, k, ties):
    ev, epoch, ordv = _runs(seed, n, k, ties)
    got = merge_events(*_cols(ev), epoch, ordv, run_bounds(ev["instrument"]))
    want = ev[np.lexsort((ordv, epoch, ev["seq"], ev["ts_event"]))]
    assert got.tobytes() == want.tobytes()


def test_merge_events_keeps_row_order_on_equal_keys_and_writes_into_out():
    # two runs with every key equal: the first run's rows come first, in their order
    ev = np.zeros(6, EVENT_DTYPE)
    ev["instrument"] = [1, 1, 1, 2, 2, 2]
    ev["price"] = np.arange(6)
    z = np.zeros(6, np.uint64)
    out = np.empty(6, EVENT_DTYPE)
    out.view(np.uint8)[:] = 0xAB
    got = merge_events(*_cols(ev), z, z, run_bounds(ev["instrument"]), out=out)
    assert got is out
    assert list(got["price"]) == [0, 1, 2, 3, 4, 5]
    assert (got["reserved"] == 0).all()


def test_merge_events_rejects_bad_input():
    ev, epoch, ordv = _runs(1, 10, 2, False)
    cols = _cols(ev)
    with pytest.raises(ValueError, match="bounds"):
        merge_events(*cols, epoch, ordv, np.array([0, 4], np.int64))
    with pytest.raises(ValueError, match="bounds"):
        merge_events(*cols, epoch, ordv, np.array([0, 6, 4, 10], np.int64))
    with pytest.raises(ValueError, match="differ in length"):
        merge_events(cols[0][:5], *cols[1:], epoch, ordv, np.array([0, 5], np.int64))
    with pytest.raises(ValueError, match="out must be"):
        merge_events(*cols, epoch, ordv, np.array([0, 10], np.int64), out=np.empty(9, EVENT_DTYPE))
