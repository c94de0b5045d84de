"""HDR latency recorders: HdrHistogram's bucket layout, recording nanoseconds without the GIL.

A :class:`Recorder` counts values in exactly the array an ``hdrh`` ``HdrHistogram(1,
60_000_000_000, 3)`` uses, so that percentiles, merging, the standard compressed encoding,
interval logs and ``.hgrm`` spectra are hdrh's work after a copy
(:mod:`tickwire.engine.latency`); recording itself is a few nanoseconds of C (``hdr.pxd``), where
hdrh's per-value ``record_value`` costs microseconds.  :class:`StageRecorders` holds one recorder
per pipeline stage of an engine worker.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from libc.stdint cimport int64_t, uint64_t, INT64_MAX
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

import numpy as np

__all__ = ["Recorder", "StageRecorders", "STAGES", "LOWEST_TRACKABLE", "HIGHEST_TRACKABLE",
           "SIGNIFICANT_FIGURES", "COUNTS_LEN", "MAX_RECORDABLE"]

#: The pipeline stages of an engine worker, in StageRecorders order (TW_STAGE_* in C).
STAGES = ("decode", "book", "stats", "rules", "tick_to_signal")
#: HdrHistogram parameters the layout matches (ns).
LOWEST_TRACKABLE = 1
HIGHEST_TRACKABLE = 60_000_000_000
SIGNIFICANT_FIGURES = 3
#: Length of the counts array.
COUNTS_LEN = TW_HDR_COUNTS_LEN
#: Largest value recorded (2**36 - 1 ns, 68.7 s); larger or negative values are rejected.
MAX_RECORDABLE = 68_719_476_735    # 2**36 - 1 (TW_HDR_VALUE_BITS)

_BORROW = object()


cdef int tw_hdr_init(tw_hdr *h) noexcept nogil:
    h.counts = <int64_t *>calloc(TW_HDR_COUNTS_LEN, sizeof(int64_t))
    h.total = 0
    h.min_value = INT64_MAX
    h.max_value = 0
    h.rejected = 0
    return 0 if h.counts != NULL else -1


cdef void tw_hdr_free(tw_hdr *h) noexcept nogil:
    free(h.counts)
    h.counts = NULL


cdef void tw_hdr_reset(tw_hdr *h) noexcept nogil:
    # Only the slots between min and max can be non-zero: an interval reset stays cheap.
    cdef Py_ssize_t lo, hi
    if h.total:
        lo = tw_hdr_index(<uint64_t>h.min_value)
        hi = tw_hdr_index(<uint64_t>h.max_value)
        memset(h.counts + lo, 0, (hi - lo + 1) * sizeof(int64_t))
    h.total = 0
    h.min_value = INT64_MAX
    h.max_value = 0
    h.rejected = 0


cdef void tw_hdr_add(tw_hdr *dst, const tw_hdr *src) noexcept nogil:
    cdef Py_ssize_t i, lo, hi
    dst.rejected = (dst.rejected + src.rejected if src.rejected <= TW_HDR_INT64_MAX - dst.rejected
                    else TW_HDR_INT64_MAX)              # saturating, as tw_hdr_record_n
    if src.total == 0:
        return
    lo = tw_hdr_index(<uint64_t>src.min_value)
    hi = tw_hdr_index(<uint64_t>src.max_value)
    for i in range(lo, hi + 1):
        dst.counts[i] += src.counts[i]
    dst.total += src.total
    if src.min_value < dst.min_value:
        dst.min_value = src.min_value
    if src.max_value > dst.max_value:
        dst.max_value = src.max_value


cdef inline int64_t _value_from_index(Py_ssize_t i) noexcept nogil:
    # The lowest value of counts slot i (hdrh's get_value_from_index).
    cdef Py_ssize_t b = (i >> TW_HDR_SUB_BUCKET_HALF_MAGNITUDE) - 1
    cdef int64_t sub = (i & (TW_HDR_SUB_BUCKET_HALF_COUNT - 1)) + TW_HDR_SUB_BUCKET_HALF_COUNT
    if b < 0:
        sub -= TW_HDR_SUB_BUCKET_HALF_COUNT
        b = 0
    return sub << b


cdef inline int64_t _highest_equivalent(int64_t v) noexcept nogil:
    # The largest value counted in the same slot as v (hdrh's get_highest_equivalent_value).
    cdef int b = tw_msb64(<uint64_t>v | (TW_HDR_SUB_BUCKET_COUNT - 1)) - TW_HDR_SUB_BUCKET_HALF_MAGNITUDE
    return ((v >> b) << b) + ((<int64_t>1) << b) - 1


cdef int64_t tw_hdr_value_at_percentile(const tw_hdr *h, double percentile) noexcept nogil:
    cdef double p = percentile if percentile < 100.0 else 100.0
    cdef int64_t target = <int64_t>((p * <double>h.total) / 100.0 + 0.5)
    cdef int64_t run = 0
    cdef Py_ssize_t i, lo = 0
    if target < 1:
        target = 1
    if h.total:
        lo = tw_hdr_index(<uint64_t>h.min_value)
    for i in range(lo, TW_HDR_COUNTS_LEN):
        run += h.counts[i]
        if run >= target:
            if percentile != 0.0:
                return _highest_equivalent(_value_from_index(i))
            return _value_from_index(i)
    return 0


cdef void tw_hdr_record_corrected(tw_hdr *h, int64_t value, int64_t expected_interval) noexcept nogil:
    # value, then the K = value // interval - 1 values value - k * interval (k = 1..K, each >=
    # interval) that HdrHistogram's loop adds.  K is up to 2**36 (a 68 s value at a 1 ns
    # interval: minutes in that loop, with no way to interrupt it), so when the values are many
    # more than the counts slots they fall in, each slot gets its share in one step: the k whose
    # value lies in the slot's range [lo, hi] are ceil((value - hi) / i) .. (value - lo) // i.
    cdef int64_t i = expected_interval, k_all, k_lo, k_hi, lowest, lo, hi, missing
    cdef Py_ssize_t s, s_lo, s_hi
    if TW_UNLIKELY((<uint64_t>value >> TW_HDR_VALUE_BITS) != 0):
        h.rejected += 1
        return
    tw_hdr_record(h, value)
    if i <= 0 or value <= i:
        return
    k_all = value // i - 1
    if k_all <= 0:
        return
    lowest = value - k_all * i                          # (value % i + i: >= i)
    s_lo = tw_hdr_index(<uint64_t>lowest)
    s_hi = tw_hdr_index(<uint64_t>(value - i))
    if k_all <= 4 * (s_hi - s_lo + 1):                  # few values a slot: one by one
        missing = value - i
        while missing >= i:
            tw_hdr_record(h, missing)
            missing -= i
        return
    for s in range(s_lo, s_hi + 1):
        lo = _value_from_index(s)
        hi = _highest_equivalent(lo)
        k_lo = (value - hi + i - 1) // i if value - hi > i else 1
        k_hi = (value - lo) // i
        if k_hi > k_all:
            k_hi = k_all
        if k_hi >= k_lo:
            h.counts[s] += k_hi - k_lo + 1
    h.total += k_all
    if lowest < h.min_value:
        h.min_value = lowest


cdef class Recorder:
    """An HDR latency recorder in nanoseconds: HdrHistogram(1 ns, 60 s, 3 significant digits).

    Record from Python (:meth:`record`, :meth:`record_many`) or, without the GIL, from Cython
    (``tw_hdr_record(rec.h, value)``, see ``hdr.pxd``).  Values from 0 to ``MAX_RECORDABLE``
    (68.7 s) are recorded exactly as HdrHistogram records them; others are counted in
    :attr:`rejected` only.  :meth:`to_hdrh` hands the counts to the ``hdrh`` package.

    Parameters
    ----------
    name : str, optional
        A label (the stage); used as the tag in interval logs.
    """

    def __cinit__(self, *args, **kwargs):
        self.h = &self._own
        memset(&self._own, 0, sizeof(tw_hdr))
        if args and args[0] is _BORROW:
            return
        if tw_hdr_init(&self._own) != 0:
            raise MemoryError("cannot allocate the recorder's counts")

    def __init__(self, name=None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        self.name = name

    def __dealloc__(self):
        tw_hdr_free(&self._own)

    @staticmethod
    cdef Recorder _borrow(object parent, tw_hdr *h, str name):
        cdef Recorder r = Recorder.__new__(Recorder, _BORROW)
        r.h = h
        r._parent = parent
        r.name = name
        return r

    # -- recording ----------------------------------------------------------------------------

    def record(self, int64_t value, int64_t count=1):
        """Record ``value`` ns (``count`` times).

        Returns
        -------
        bool
            False when the value is out of range (negative or above ``MAX_RECORDABLE``) and
            was only counted in :attr:`rejected`, as hdrh's ``record_value`` returns False.
        """
        if count == 1:
            if self.h.total == INT64_MAX:
                raise ValueError("record: one more value would take the recorder's count past 2**63 - 1")
            tw_hdr_record(self.h, value)
        else:
            if count < 0:
                raise ValueError(f"record: count must be >= 0, got {count}")
            if count > INT64_MAX - self.h.total:      # (the total wrapped negative, and every percentile with it)
                raise ValueError(f"record: {count} more values would take the recorder's count past 2**63 - 1")
            tw_hdr_record_n(self.h, value, count)
        return (<uint64_t>value >> TW_HDR_VALUE_BITS) == 0

    def record_corrected(self, int64_t value, int64_t expected_interval):
        """Record ``value`` ns with coordinated-omission correction.

        For a measurement meant to happen every ``expected_interval`` ns, a value longer than
        the interval hid the samples that could not be taken meanwhile: they are added as
        ``value - interval``, ``value - 2 * interval``, ... while at least ``interval``
        (HdrHistogram's ``recordValueWithExpectedInterval``).

        Returns
        -------
        bool
            False when ``value`` is out of range (nothing recorded).
        """
        self._room(1 + (value // expected_interval if expected_interval > 0 and value > 0 else 0),
                   "record_corrected")
        tw_hdr_record_corrected(self.h, value, expected_interval)
        return (<uint64_t>value >> TW_HDR_VALUE_BITS) == 0

    def record_many(self, values, int64_t expected_interval=0):
        """Record every value of an integer array (ns) in one call, without the GIL.

        Parameters
        ----------
        values : array_like of int
            Converted to int64 if needed.
        expected_interval : int
            > 0: coordinated-omission correction as in :meth:`record_corrected`.

        Returns
        -------
        int
            How many values were out of range (rejected).
        """
        cdef const int64_t[::1] v = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
        cdef Py_ssize_t i, n = v.shape[0]
        cdef int64_t rejected0 = self.h.rejected
        cdef tw_hdr *h = self.h
        if n == 0:
            return 0
        # (in Python integers: as C, 1 << 36 overflowed an int, and n times it an int64)
        if self.h.total > INT64_MAX - <object>n * (1 + ((MAX_RECORDABLE + 1) // expected_interval
                                                         if expected_interval > 0 else 0)):
            # near the limit (never in practice): the exact count this call would add
            extra = int((np.maximum(np.asarray(v), 0) // expected_interval).sum()) if expected_interval > 0 else 0
            self._room(n + extra, "record_many")
        with nogil:
            if expected_interval > 0:
                for i in range(n):
                    tw_hdr_record_corrected(h, v[i], expected_interval)
            else:
                for i in range(n):
                    tw_hdr_record(h, v[i])
        return h.rejected - rejected0

    def reset(self):
        """Forget every value (an interval starts)."""
        tw_hdr_reset(self.h)

    def add(self, Recorder other not None):
        """Add the counts of ``other`` to this recorder."""
        if other.h == self.h:
            raise ValueError("cannot add a recorder to itself")
        self._room(other.h.total, "add")
        tw_hdr_add(self.h, other.h)

    def _room(self, n, what):
        """ValueError when ``n`` more values would take the count past 2**63 - 1 (it wrapped
        negative, and every percentile with it: count -2**63, mean -1500)."""
        if n > INT64_MAX - self.h.total:
            raise ValueError(f"{what}: {n} more values would take the recorder's count past 2**63 - 1")

    def copy(self):
        """An independent recorder with the same values (a snapshot)."""
        cdef Recorder r = Recorder(self.name)
        r.add(self)
        r.h.rejected = self.h.rejected
        return r

    # -- queries ------------------------------------------------------------------------------

    @property
    def total(self):
        """Values recorded."""
        return self.h.total

    @property
    def min_value(self):
        """Smallest value recorded, exactly (None when empty)."""
        return self.h.min_value if self.h.total else None

    @property
    def max_value(self):
        """Largest value recorded, exactly (None when empty)."""
        return self.h.max_value if self.h.total else None

    @property
    def rejected(self):
        """Values not recorded: negative, or above ``MAX_RECORDABLE``."""
        return self.h.rejected

    def value_at_percentile(self, double percentile):
        """The value at ``percentile`` (0-100) as hdrh's ``get_value_at_percentile`` computes
        it (the highest value equivalent to the slot reached), in C; 0 when empty."""
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be within 0..100, got {percentile}")
        return tw_hdr_value_at_percentile(self.h, percentile)

    def counts(self):
        """A copy of the counts array (int64, ``COUNTS_LEN`` long, hdrh's layout)."""
        out = np.empty(TW_HDR_COUNTS_LEN, dtype=np.int64)
        cdef int64_t[::1] view = out
        memcpy(&view[0], self.h.counts, TW_HDR_COUNTS_LEN * sizeof(int64_t))
        return out

    @staticmethod
    def index_of(int64_t value):
        """The counts index of ``value`` (ValueError when out of range)."""
        if (<uint64_t>value >> TW_HDR_VALUE_BITS) != 0:
            raise ValueError(f"value {value} is outside 0..{MAX_RECORDABLE}")
        return tw_hdr_index(<uint64_t>value)

    def _copy_counts_into(self, target):
        """Copy the used part of the counts (slots up to the max value's) into ``target``, a
        writable buffer of at least that many 8-byte counters (hdrh's ctypes counts array);
        returns how many counters were copied."""
        cdef Py_buffer view
        cdef Py_ssize_t n = 0
        if self.h.total:
            n = tw_hdr_index(<uint64_t>self.h.max_value) + 1
        PyObject_GetBuffer(target, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            if view.len < n * 8:
                raise ValueError(f"target holds {view.len // 8} counters, {n} needed")
            memcpy(view.buf, self.h.counts, n * sizeof(int64_t))
        finally:
            PyBuffer_Release(&view)
        return n

    # -- hdrh hand-off (tickwire.engine.latency) ----------------------------------------------

    def to_hdrh(self):
        """An ``hdrh.histogram.HdrHistogram`` with these values (a copy of the counts)."""
        from tickwire.engine.latency import to_hdrh
        return to_hdrh(self)

    def percentiles(self, levels=None):
        """Summary: ``{"count", "min", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"}``
        in ns (hdrh's values); ``levels`` replaces the percentiles."""
        from tickwire.engine.latency import percentiles
        return percentiles(self) if levels is None else percentiles(self, levels)

    def hgrm(self, double unit_ratio=1000.0):
        """The full percentile spectrum in HdrHistogram's ``.hgrm`` text layout; values are
        divided by ``unit_ratio`` (1000: microseconds)."""
        from tickwire.engine.latency import hgrm
        return hgrm(self, unit_ratio)

    def __repr__(self):
        if not self.h.total:
            return f"<Recorder {self.name or ''} empty>"
        return (f"<Recorder {self.name or ''} n={self.h.total} min={self.h.min_value} "
                f"p50={tw_hdr_value_at_percentile(self.h, 50.0)} "
                f"p99={tw_hdr_value_at_percentile(self.h, 99.0)} max={self.h.max_value} ns>")


cdef class StageRecorders:
    """One :class:`Recorder` per pipeline stage of an engine worker: ``decode``, ``book``,
    ``stats``, ``rules`` and ``tick_to_signal`` (end to end), in one C struct.

    From Cython: ``tw_hdr_record(&stages.c.stage[TW_STAGE_BOOK], t1 - t0)`` without the GIL.
    From Python: ``stages.book.record(dt)``, ``stages["rules"]``, ``for name, rec in stages.items()``.
    """

    def __cinit__(self):
        cdef int i
        memset(&self.c, 0, sizeof(tw_hdr_set))
        for i in range(<int>TW_STAGE_COUNT):
            if tw_hdr_init(&self.c.stage[i]) != 0:
                for i in range(<int>TW_STAGE_COUNT):
                    tw_hdr_free(&self.c.stage[i])
                raise MemoryError("cannot allocate the stage recorders")

    def __init__(self):
        cdef int i
        recs = []
        for i in range(<int>TW_STAGE_COUNT):
            recs.append(Recorder._borrow(self, &self.c.stage[i], STAGES[i]))
        self._recorders = tuple(recs)

    def __dealloc__(self):
        cdef int i
        for i in range(<int>TW_STAGE_COUNT):
            tw_hdr_free(&self.c.stage[i])

    @property
    def decode(self):
        """Wire message to events."""
        return self._recorders[TW_STAGE_DECODE]

    @property
    def book(self):
        """Events applied to the books."""
        return self._recorders[TW_STAGE_BOOK]

    @property
    def stats(self):
        """Rolling statistics."""
        return self._recorders[TW_STAGE_STATS]

    @property
    def rules(self):
        """Signal rules."""
        return self._recorders[TW_STAGE_RULES]

    @property
    def tick_to_signal(self):
        """End to end: tick received to signal in the ring."""
        return self._recorders[TW_STAGE_TICK_TO_SIGNAL]

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._recorders[STAGES.index(key)]
            except ValueError:
                raise KeyError(f"no stage {key!r}; stages are {', '.join(STAGES)}") from None
        return self._recorders[key]

    def __len__(self):
        return TW_STAGE_COUNT

    def __iter__(self):
        return iter(self._recorders)

    def items(self):
        """``(stage name, Recorder)`` pairs in pipeline order."""
        return list(zip(STAGES, self._recorders))

    def reset(self):
        """Reset every stage."""
        cdef int i
        for i in range(<int>TW_STAGE_COUNT):
            tw_hdr_reset(&self.c.stage[i])

    def __repr__(self):
        return "<StageRecorders " + " ".join(f"{n}={r.total}" for n, r in self.items()) + ">"
