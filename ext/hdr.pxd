# The C API of tickwire.ext.hdr: HDR latency recorders that record in nanoseconds without the GIL.
#
# The counts array has exactly the layout of HdrHistogram(lowest=1, highest=60 s, 3 significant
# digits), the same as the `hdrh` package's HdrHistogram(1, 60_000_000_000, 3): 26 buckets of
# 1024 sub-buckets (the first of 2048), 27,648 int64 counts, unit 1 ns.  Values 0 .. 2**36-1 ns
# (68.7 s) are recorded exactly as HdrHistogram would; anything else (a negative latency from a
# clock going backwards, or more than 68.7 s) is not recorded and counted in `rejected` (hdrh's
# record_value returns False for those).  Handing a recorder to hdrh is a copy of the counts
# plus total/min/max (tickwire.engine.latency.to_hdrh).
#
# Index of value v (HdrHistogram's, with unit magnitude 0 and sub-bucket half-count magnitude 10):
#     bucket = msb(v | 2047) - 10          (0 for v < 2048)
#     index  = (bucket << 10) + (v >> bucket)
# One OR, one count-leading-zeros, two shifts and an add: a few ns per value.

from libc.stdint cimport int64_t, uint64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from tickwire.ext.defs cimport tw_msb64, TW_UNLIKELY

cdef extern from "<stdint.h>":
    const int64_t TW_HDR_INT64_MAX "INT64_MAX"

cdef enum:
    TW_HDR_SUB_BUCKET_HALF_MAGNITUDE = 10
    TW_HDR_SUB_BUCKET_HALF_COUNT = 1024
    TW_HDR_SUB_BUCKET_COUNT = 2048
    TW_HDR_BUCKET_COUNT = 26
    TW_HDR_COUNTS_LEN = 27648      # (TW_HDR_BUCKET_COUNT + 1) * TW_HDR_SUB_BUCKET_HALF_COUNT
    TW_HDR_VALUE_BITS = 36         # recordable values are < 2**36 ns

cdef enum:                          # the pipeline stages of one engine worker (tw_hdr_set index)
    TW_STAGE_DECODE = 0            # wire message -> events
    TW_STAGE_BOOK = 1              # events -> books
    TW_STAGE_STATS = 2             # rolling statistics
    TW_STAGE_RULES = 3             # signal rules
    TW_STAGE_TICK_TO_SIGNAL = 4    # end to end: tick received -> signal in the ring
    TW_STAGE_COUNT = 5

cdef struct tw_hdr:
    int64_t *counts                # TW_HDR_COUNTS_LEN counts (hdrh's layout)
    int64_t total                  # values recorded
    int64_t min_value              # smallest value recorded (INT64_MAX when none)
    int64_t max_value              # largest value recorded (0 when none)
    int64_t rejected               # values not recorded: negative or >= 2**36

cdef struct tw_hdr_set:            # one recorder per stage, for an engine worker
    tw_hdr stage[TW_STAGE_COUNT]   # indexed by TW_STAGE_*

# -- lifecycle (not on the hot path) ---------------------------------------------------------
cdef int tw_hdr_init(tw_hdr *h) noexcept nogil           # 0, or -1: out of memory
cdef void tw_hdr_free(tw_hdr *h) noexcept nogil
cdef void tw_hdr_reset(tw_hdr *h) noexcept nogil         # clears only the used range of counts
cdef void tw_hdr_add(tw_hdr *dst, const tw_hdr *src) noexcept nogil

# -- queries ---------------------------------------------------------------------------------
cdef int64_t tw_hdr_value_at_percentile(const tw_hdr *h, double percentile) noexcept nogil
    # hdrh's get_value_at_percentile, same arithmetic: 0 when empty
cdef void tw_hdr_record_corrected(tw_hdr *h, int64_t value, int64_t expected_interval) noexcept nogil
    # value, plus value - k * expected_interval while >= expected_interval (HdrHistogram's
    # coordinated-omission correction for a constant-rate measurement); expected_interval <= 0:
    # just value.  Out-of-range values are rejected as by tw_hdr_record (and add no corrections).
    # At most ~27,648 steps however many values it adds (a slot's share at once past 4 a slot).

cdef inline Py_ssize_t tw_hdr_index(uint64_t v) noexcept nogil:
    """Counts index of value v (v < 2**36)."""
    cdef int b = tw_msb64(v | (TW_HDR_SUB_BUCKET_COUNT - 1)) - TW_HDR_SUB_BUCKET_HALF_MAGNITUDE
    return (<Py_ssize_t>b << TW_HDR_SUB_BUCKET_HALF_MAGNITUDE) + <Py_ssize_t>(v >> b)

cdef inline void tw_hdr_record_n(tw_hdr *h, int64_t value, int64_t count) noexcept nogil:
    """Record ``count`` occurrences of ``value`` ns (count <= 0: nothing)."""
    cdef uint64_t v = <uint64_t>value
    if count <= 0:
        return
    if TW_UNLIKELY((v >> TW_HDR_VALUE_BITS) != 0):
        # saturating: two counts of 2**63 - 1 wrapped the tally negative
        h.rejected = h.rejected + count if count <= TW_HDR_INT64_MAX - h.rejected else TW_HDR_INT64_MAX
        return
    h.counts[tw_hdr_index(v)] += count
    h.total += count
    if value < h.min_value:
        h.min_value = value
    if value > h.max_value:
        h.max_value = value

cdef inline void tw_hdr_record(tw_hdr *h, int64_t value) noexcept nogil:
    """Record one value in ns: the hot path (a few ns, no GIL, no allocation)."""
    cdef uint64_t v = <uint64_t>value
    if TW_UNLIKELY((v >> TW_HDR_VALUE_BITS) != 0):
        h.rejected += 1
        return
    h.counts[tw_hdr_index(v)] += 1
    h.total += 1
    if value < h.min_value:
        h.min_value = value
    if value > h.max_value:
        h.max_value = value

cdef inline int64_t tw_now_ns() noexcept nogil:
    """CLOCK_MONOTONIC in ns: the clock latency stamps use in every tickwire process."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class Recorder:
    cdef tw_hdr *h                 # the recorder: &self._own, or a stage of a StageRecorders
    cdef tw_hdr _own
    cdef object _parent            # a StageRecorders this one borrows from (kept alive)
    cdef readonly str name

    @staticmethod
    cdef Recorder _borrow(object parent, tw_hdr *h, str name)


cdef class StageRecorders:
    cdef tw_hdr_set c              # for the engine: tw_hdr_record(&set.c.stage[TW_STAGE_BOOK], dt)
    cdef tuple _recorders
