"""The compiled core of tickwire (Cython) and the canonical records it carries.

- :mod:`tickwire.ext.records`: the event and signal records as numpy dtypes, their enums.
- :mod:`tickwire.ext.book`: L2/L3 order books, batch and per-event APIs, a C API.
- :mod:`tickwire.ext.stats`: rolling windows, window sums, time-decayed EWMA.
- :mod:`tickwire.ext.pipeline`: the engine: books, statistics and rules over event batches.
- :mod:`tickwire.ext.ring`: single-producer rings of records in POSIX shared memory.
- :mod:`tickwire.ext.hdr`: HDR latency recorders in nanoseconds (hdrh's counts layout).
- :mod:`tickwire.ext.merge`: k-way merge of sorted runs into the store's total order (replay's read).
"""

from tickwire.ext.records import (
    EVENT_DTYPE,
    SIGNAL_DTYPE,
    Flag,
    Kind,
    Reject,
    RuleKind,
    Side,
    SignalFlag,
    empty_events,
)
from tickwire.ext.book import BUILD, Book, BookError, BookSet, L2Book, L3Book
from tickwire.ext.hdr import STAGES, Recorder, StageRecorders
from tickwire.ext.ring import Ring, RingBusy, RingError

__all__ = [
    "BUILD",
    "Book",
    "BookError",
    "BookSet",
    "EVENT_DTYPE",
    "SIGNAL_DTYPE",
    "Flag",
    "Kind",
    "L2Book",
    "L3Book",
    "Recorder",
    "Ring",
    "RingBusy",
    "RingError",
    "STAGES",
    "StageRecorders",
    "Reject",
    "RuleKind",
    "Side",
    "SignalFlag",
    "empty_events",
]
