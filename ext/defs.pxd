# Declarations of ext/tw_defs.h: the canonical records and shared C helpers.
# Declaration-only: there is no defs module; cimport it for the types and constants.
from libc.stdint cimport int64_t, uint64_t, uint32_t, uint16_t, uint8_t, int8_t, uintptr_t

cdef extern from "tw_defs.h" nogil:
    ctypedef struct tw_event:
        int64_t ts_event
        int64_t ts_recv
        uint64_t seq
        uint64_t order_id
        int64_t price
        int64_t qty
        uint32_t instrument
        uint16_t channel
        uint8_t kind
        uint8_t side
        uint32_t flags
        uint32_t reserved

    ctypedef struct tw_signal:
        int64_t ts_event
        int64_t ts_recv
        int64_t ts_signal
        uint64_t seq
        double value
        double strength
        uint32_t instrument
        uint16_t rule_id
        uint8_t rule_kind
        int8_t direction
        uint32_t flags
        uint32_t reserved

    enum:
        TW_RULE_CUSTOM
        TW_RULE_MICROPRICE
        TW_RULE_IMBALANCE
        TW_RULE_ZSCORE
        TW_RULE_SPREAD
        TW_RULE_VWAP
        TW_RULE_EWMA_CROSS
        TW_RULE_MAX

    enum:
        TW_SIG_ENTER
        TW_SIG_EXIT

    enum:
        TW_KIND_NONE
        TW_KIND_ADD
        TW_KIND_MODIFY
        TW_KIND_DELETE
        TW_KIND_TRADE
        TW_KIND_CLEAR
        TW_KIND_SNAPSHOT
        TW_KIND_MAX

    enum:
        TW_SIDE_BID
        TW_SIDE_ASK
        TW_SIDE_NONE

    enum:
        TW_FLAG_LAST
        TW_FLAG_SNAPSHOT
        TW_FLAG_SNAPSHOT_BEGIN
        TW_FLAG_SNAPSHOT_END
        TW_FLAG_REPLAY
        TW_FLAG_STALE
        TW_FLAG_RESTART

    enum:
        TW_OK
        TW_REJ_UNKNOWN_INSTRUMENT
        TW_REJ_BAD_KIND
        TW_REJ_BAD_SIDE
        TW_REJ_BAD_QTY
        TW_REJ_PRICE_RANGE
        TW_REJ_UNKNOWN_ORDER
        TW_REJ_DUPLICATE_ORDER
        TW_REJ_OVERFILL
        TW_REJ_UNKNOWN_LEVEL
        TW_REJ_CAPACITY
        TW_REJ_NO_MEMORY
        TW_REJ_WRONG_CHANNEL
        TW_REJ_COUNT

    const int64_t TW_NO_PRICE
    const int TW_DEBUG_BUILD
    bint TW_LIKELY(bint)
    bint TW_UNLIKELY(bint)
    int tw_msb64(uint64_t x)
    int tw_lsb64(uint64_t x)
    int tw_popcount64(uint64_t x)


cdef inline str tw_misaligned(const void *p, Py_ssize_t n, str name, bint writes):
    """Why the C code cannot use ``n`` bytes at ``p`` in place as int64 records (``name``: the
    argument; ``writes``: the C code writes them), None when it can: an array at an odd address
    (np.frombuffer at an offset) is refused rather than read as tw_event."""
    if not n or not (<uintptr_t>p & 7):
        return None
    return (f"{name} is not 8-byte aligned (address % 8 == {<uintptr_t>p & 7}), and the C code "
            f"{'writes' if writes else 'reads'} its int64 fields in place: pass an aligned "
            f"{'array' if writes else 'copy'}, e.g. np.require({name}, requirements='{'CAW' if writes else 'CA'}')")
