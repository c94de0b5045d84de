"""Canonical records as numpy structured dtypes, and their enumerations.

These mirror the C structs in ``tw_defs.h`` field for field; ``tests/test_records.py``
checks the offsets against the compiled code.  A batch of events is a C-contiguous numpy
array of :data:`EVENT_DTYPE`, and every layer (feeds, books, rings, storage, replay)
passes such arrays without copying them.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = [
    "EVENT_DTYPE",
    "SIGNAL_DTYPE",
    "RuleKind",
    "SignalFlag",
    "Kind",
    "Side",
    "Flag",
    "Reject",
    "empty_events",
]


class Kind(enum.IntEnum):
    """What an event does (``tw_event.kind``)."""

    NONE = 0
    #: L3: a new order. L2: set the level at ``price`` to ``qty`` (absolute; 0 deletes).
    ADD = 1
    #: L3: new quantity (and price) of an existing order. L2: same as ADD.
    MODIFY = 2
    #: L3: remove the order. L2: remove the level.
    DELETE = 3
    #: A trade print; on an L3 book with ``order_id`` set, an execution against that order.
    TRADE = 4
    #: Empty both sides of the instrument's book.
    CLEAR = 5
    #: Snapshot marker: ``Flag.SNAPSHOT_BEGIN`` clears the book, ``Flag.SNAPSHOT_END`` ends it.
    SNAPSHOT = 6


class Side(enum.IntEnum):
    """Book side, or the aggressor side of a trade (``tw_event.side``)."""

    BID = 0
    ASK = 1
    NONE = 2


class Flag(enum.IntFlag):
    """Event flag bits (``tw_event.flags``)."""

    LAST = 1 << 0
    SNAPSHOT = 1 << 1
    SNAPSHOT_BEGIN = 1 << 2
    SNAPSHOT_END = 1 << 3
    REPLAY = 1 << 4
    #: With Kind.SNAPSHOT: the feed lost messages; the book is out of sync (contents kept)
    #: until a snapshot's END marker.
    STALE = 1 << 5
    #: With a STALE marker: a receiver (re)started here and its engine's state begins afresh
    #: (a replay resets the instrument's statistics and rules there, as the live worker had them).
    RESTART = 1 << 6


class Reject(enum.IntEnum):
    """Why a book did not apply an event (``TW_REJ_*``); 0 means applied."""

    OK = 0
    UNKNOWN_INSTRUMENT = 1
    BAD_KIND = 2
    BAD_SIDE = 3
    BAD_QTY = 4
    PRICE_RANGE = 5
    UNKNOWN_ORDER = 6
    DUPLICATE_ORDER = 7
    OVERFILL = 8
    UNKNOWN_LEVEL = 9
    CAPACITY = 10
    NO_MEMORY = 11
    WRONG_CHANNEL = 12


class RuleKind(enum.IntEnum):
    """Which rule produced a signal (``tw_signal.rule_kind``)."""

    CUSTOM = 0
    MICROPRICE = 1
    IMBALANCE = 2
    ZSCORE = 3
    SPREAD = 4
    VWAP = 5
    EWMA_CROSS = 6


class SignalFlag(enum.IntFlag):
    """Signal flag bits (``tw_signal.flags``)."""

    ENTER = 1 << 0
    EXIT = 1 << 1


#: A signal: 64 bytes, one cache line (``tw_signal`` in C).
SIGNAL_DTYPE = np.dtype(
    {
        "names": [
            "ts_event", "ts_recv", "ts_signal", "seq", "value", "strength",
            "instrument", "rule_id", "rule_kind", "direction", "flags", "reserved",
        ],
        "formats": ["<i8", "<i8", "<i8", "<u8", "<f8", "<f8", "<u4", "<u2", "u1", "i1", "<u4", "<u4"],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 52, 54, 55, 56, 60],
        "itemsize": 64,
    },
    align=True,
)


#: The canonical event: 64 bytes, little-endian, one cache line (``tw_event`` in C).
EVENT_DTYPE = np.dtype(
    {
        "names": [
            "ts_event", "ts_recv", "seq", "order_id", "price", "qty",
            "instrument", "channel", "kind", "side", "flags", "reserved",
        ],
        "formats": ["<i8", "<i8", "<u8", "<u8", "<i8", "<i8", "<u4", "<u2", "u1", "u1", "<u4", "<u4"],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 52, 54, 55, 56, 60],
        "itemsize": 64,
    },
    align=True,
)


def empty_events(n: int) -> np.ndarray:
    """Return a zeroed C-contiguous array of ``n`` canonical events."""
    return np.zeros(n, dtype=EVENT_DTYPE)
