# The C API of tickwire.ext.pipeline: the engine's per-event path
#
#     event -> book -> statistics -> rules -> signal sink
#
# for a batch of canonical events, without Python objects, allocation or the GIL per event.
# Users add rules in Cython by subclassing `Rule` (cimport tickwire.ext.pipeline) and
# overriding `evaluate`, which reads the instrument's features (tw_features) and the book.

from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t, uint16_t, uint8_t, int8_t
from tickwire.ext.defs cimport tw_event, tw_signal
from tickwire.ext.book cimport tw_book, BookSet
from tickwire.ext.stats cimport tw_window, tw_sumwin, tw_ewma
from tickwire.ext.hdr cimport tw_hdr_set, StageRecorders
from tickwire.ext.ring cimport tw_ring

cdef enum:
    TW_CLOCK_WALL = 0             # ts_signal from CLOCK_REALTIME (live)
    TW_CLOCK_EVENT = 1            # ts_signal = the triggering event's ts_recv (replay: byte-identical runs)

cdef enum:
    TW_SAMPLE_EVENT = 0           # feed statistics after every book change
    TW_SAMPLE_MESSAGE = 1         # only at the end of each exchange message (Flag.LAST)

cdef struct tw_features:
    # What rules read: one instrument's book and statistics after the current event.
    # Prices in ticks; NaN where undefined (a one-sided book, an empty window).
    double mid
    double microprice
    double spread
    double imbalance              # top-k, -1..1 (NaN unless both sides have levels)
    double mid_mean               # rolling window of mid
    double mid_std
    double mid_min
    double mid_max
    double zscore                 # of mid against its window
    double spread_mean            # rolling window of spread
    double vwap                   # rolling window of trades
    double flow                   # trade-flow imbalance, (buy - sell) / (buy + sell)
    double buy_minus_sell         # lots
    double realized_vol           # sqrt of the sum of squared mid log-returns over the window
    double ewma_fast              # EWMA of mid (fast half-life)
    double ewma_slow
    double ewma_fast_std
    int64_t mid_count
    int64_t spread_count
    int64_t trade_count
    int64_t ts                    # event time of the last update
    int64_t last_trade_price      # the last trade print (ticks, lots; 0 before any)
    int64_t last_trade_qty
    int64_t last_trade_ts
    double micro_edge             # microprice - mid in ticks, from exact operands (the microprice rule's value)

cdef struct tw_istate:
    # Per-instrument engine state.
    tw_window mid
    tw_window spread
    tw_sumwin vwap
    tw_sumwin flow
    tw_sumwin rv
    tw_ewma fast
    tw_ewma slow
    tw_features f
    int64_t best_bid              # BBO prices when the book series were last sampled
    int64_t best_ask
    int64_t kth_bid               # worst price inside the top-k imbalance (TW_NO_PRICE: < k levels)
    int64_t kth_ask
    double top_qb                 # the top-k quantities when last computed
    double top_qa
    int32_t book_dirty            # the book changed since it was last sampled
    int32_t top_dirty             # ... and the change may have moved the top k of a side (1 bid, 2 ask)
    int32_t bbo_dirty             # ... and the best bid or ask (price or quantity)
    int32_t inputs                # what its rules read (_CH_* bits): nothing else asks for them
    double prev_mid
    int32_t imbalance_depth
    int32_t sample
    int32_t timed                 # some window is a time window (it ages between samples)
    int32_t nrules
    int32_t *rules                # indices into the engine's rule table
    int8_t *rstate                # hysteresis state per rule: 0 armed, +1/-1 fired
    uint64_t updates              # statistics updates
    uint64_t signals
    uint64_t suppressed           # events seen while the book was out of sync
    uint64_t future_stamps        # updates whose ts_event was more than a day after their ts_recv
    uint32_t bad_streak           # ... in a row (past BAD_STREAK_MAX over BAD_STREAK_NS: our clock is off)
    int64_t bad_since             # ts_recv of the streak's first

cdef struct tw_rule:
    uint16_t id
    uint8_t kind                  # TW_RULE_*
    uint8_t emit_exit
    double enter                  # fires at |value| >= enter (spread: value >= enter)
    double exit                   # re-arms at |value| <= exit
    int64_t min_count             # samples the rule's window needs first
    void *custom                  # a Rule object (borrowed; the engine keeps it alive)
    uint64_t signals              # signals this rule emitted (Engine.rule_signals)

cdef struct tw_rule_ctx:
    const tw_event *ev            # the triggering event
    const tw_book *book           # its instrument's book, after the event
    const tw_features *f          # its instrument's features, after the event
    uint32_t instrument
    int64_t now                   # the signal clock

cdef struct tw_timing:
    tw_hdr_set *hdr               # the stage recorders (a StageRecorders' c); NULL: timing off
    uint32_t every                # time one event in `every` (stage durations)
    uint32_t countdown
    bint to_ring                  # tick-to-signal ends with the signal in the ring (push_signals, run_feed)

cdef class Rule:
    """Base class of user rules (fast path): override ``evaluate`` in Cython."""
    cdef readonly int rule_id
    cdef readonly str name
    cdef int evaluate(self, const tw_rule_ctx *ctx, tw_signal *out) noexcept nogil

cdef class Engine:
    cdef BookSet _books
    cdef tw_istate **inst         # by instrument id (NULL: no such instrument)
    cdef uint32_t ninst
    cdef tw_rule *rules
    cdef int nrules
    cdef list _custom             # keeps custom Rule objects alive
    cdef dict _cfgs               # instrument id -> its StatsConfig (reset_instrument)
    cdef bint _needs_gil          # a Python-callable rule is present
    cdef object _sink_array       # numpy SIGNAL_DTYPE buffer
    cdef tw_signal *sink
    cdef Py_ssize_t sink_cap
    cdef Py_ssize_t sink_n
    cdef int clock
    cdef tw_timing timing
    cdef StageRecorders _stages
    cdef uint64_t events
    cdef uint32_t _stop           # process_until's flag mask while it runs (0: none)
    cdef int _busy                # 1 while a batch runs (a Python rule calling back in is refused)
    cdef int _idle(self, str what) except -1
    cdef Py_ssize_t process_c(self, const tw_event *ev, Py_ssize_t n) noexcept nogil
    cdef Py_ssize_t _run(self, events, uint32_t stop, Py_ssize_t *signals) except -1
    cdef Py_ssize_t _deliver(self, tw_ring *ring) noexcept nogil
    cdef _init_instrument(self, uint32_t iid, cfg)
    cdef _grow_sink(self, Py_ssize_t cap)
    cdef tw_istate *_state(self, uint32_t instrument) except NULL
