"""The canonical event record: the numpy dtype and the compiled C struct agree."""

import numpy as np

from tickwire.ext import EVENT_DTYPE, Kind, Reject, Side, empty_events
from tickwire.ext.book import event_layout


def test_dtype_matches_c_struct():
    layout = event_layout()
    assert layout.pop("itemsize") == EVENT_DTYPE.itemsize == 64
    for name, offset in layout.items():
        assert EVENT_DTYPE.fields[name][1] == offset, name
    assert set(layout) == set(EVENT_DTYPE.names)


def test_field_types_are_little_endian_integers():
    for name in EVENT_DTYPE.names:
        dt = EVENT_DTYPE.fields[name][0]
        assert dt.kind in "iu" and dt.byteorder in "<=|", name
    assert EVENT_DTYPE.fields["price"][0] == np.dtype("<i8")
    assert EVENT_DTYPE.fields["qty"][0] == np.dtype("<i8")
    assert EVENT_DTYPE.fields["ts_event"][0] == np.dtype("<i8")


def test_empty_events_zeroed_and_contiguous():
    ev = empty_events(5)
    assert ev.dtype == EVENT_DTYPE and ev.flags.c_contiguous
    assert not ev.view(np.uint8).any()


def test_enums_match_documented_codes():
    assert [k.value for k in Kind] == list(range(7))
    assert (Side.BID, Side.ASK, Side.NONE) == (0, 1, 2)
    assert Reject.OK == 0 and max(Reject) == Reject.WRONG_CHANNEL == 12
