"""The engine's per-event path: event -> book -> statistics -> rules -> signals.

:class:`Engine` owns the instruments' books (a :class:`~tickwire.ext.book.BookSet`), their
rolling statistics and the signal rules, and runs a batch of canonical events through all
of them in one C loop (``Engine.process``), writing signal records into a sink.  Nothing in
that loop creates a Python object or takes the GIL, unless a rule is a Python callable (the
documented slow path).  Configuration objects live in :mod:`tickwire.engine.pipeline`.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
from cpython.ref cimport PyObject
from libc.math cimport NAN, fabs, isfinite, isnan, log, sqrt
from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t, uint16_t, uint8_t, int8_t, uintptr_t, INT64_MAX
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME, CLOCK_MONOTONIC

from tickwire.ext.defs cimport (
    tw_event, tw_signal, tw_misaligned, TW_NO_PRICE, TW_OK, TW_LIKELY, TW_UNLIKELY,
    TW_KIND_ADD, TW_KIND_MODIFY, TW_KIND_DELETE, TW_KIND_TRADE, TW_KIND_CLEAR, TW_KIND_SNAPSHOT,
    TW_SIDE_BID, TW_SIDE_ASK, TW_SIDE_NONE, TW_FLAG_LAST,
    TW_RULE_CUSTOM, TW_RULE_MICROPRICE, TW_RULE_IMBALANCE, TW_RULE_ZSCORE, TW_RULE_SPREAD,
    TW_RULE_VWAP, TW_RULE_EWMA_CROSS, TW_SIG_ENTER, TW_SIG_EXIT,
)
from tickwire.ext.book cimport (
    Book, BookSet, tw_book, tw_book_apply_inline, tw_book_clear, tw_book_mid, tw_book_microprice, tw_book_spread,
    tw_book_best_price, tw_book_best_qty, tw_book_top_qty_d, tw_book_prefetch, tw_bookset, TW_BOOK_L2, TW_BOOK_L3,
)
from tickwire.ext.hdr cimport (
    StageRecorders, tw_hdr_record, TW_STAGE_DECODE, TW_STAGE_BOOK, TW_STAGE_STATS, TW_STAGE_RULES,
    TW_STAGE_TICK_TO_SIGNAL,
)
from tickwire.ext.codec cimport FeedReceiver, tw_feed, tw_feed_drain
from tickwire.ext.ring cimport Ring, tw_ring, tw_ring_push_n
from tickwire.ext.stats cimport (
    tw_window, tw_sumwin, tw_ewma, TW_WIN_COUNT, TW_WIN_TIME,
    tw_window_init, tw_window_free, tw_window_add, tw_window_evict, tw_window_count,
    tw_window_mean, tw_window_var, tw_window_min, tw_window_max,
    tw_sumwin_init, tw_sumwin_free, tw_sumwin_add, tw_sumwin_evict, tw_sumwin_count,
    tw_sumwin_a, tw_sumwin_b, tw_ewma_init, tw_ewma_add, tw_ewma_var,
)

import logging

import numpy as np

from tickwire.ext.records import EVENT_DTYPE, SIGNAL_DTYPE, RuleKind

log_ = logging.getLogger("tickwire.engine")

STAGES = ("book", "stats", "rules", "tick_to_signal")        # the stages the engine times
RULE_KINDS = {
    "microprice": TW_RULE_MICROPRICE,
    "imbalance": TW_RULE_IMBALANCE,
    "zscore": TW_RULE_ZSCORE,
    "spread": TW_RULE_SPREAD,
    "vwap": TW_RULE_VWAP,
    "ewma_cross": TW_RULE_EWMA_CROSS,
}

cdef enum:
    _RELEASE_GIL_AT = 64
    # run_feed: events run through the engine before their signals are pushed (a drained batch
    # can hold thousands; a signal waits at most for the rest of its piece)
    RUN_FEED_PIECE = 64


cdef inline int64_t _clock_ns(int which) noexcept nogil:
    cdef timespec t
    clock_gettime(which, &t)
    return <int64_t>t.tv_sec * 1000000000 + t.tv_nsec


# ---------------------------------------------------------------------------------------
# Features and statistics
# ---------------------------------------------------------------------------------------

cdef enum:
    # what changed with an event: a rule is evaluated only when one of its inputs did
    # (same value, same hysteresis state: evaluating again could not fire)
    _CH_TOP = 1                   # microprice, imbalance
    _CH_MID = 2                   # the mid and spread series (windows, EWMAs)
    _CH_TRADES = 4                # the trade windows
    _CH_BOOK = 8                  # any book change (custom rules read the whole book)
    _CH_ALL = 15


cdef inline void _prefetch(const tw_bookset *s, const tw_event *e, int stage) noexcept nogil:
    """tw_book_prefetch for a later event, if it has a book."""
    if e.instrument < s.nbooks and s.books[e.instrument] != NULL:
        tw_book_prefetch(s.books[e.instrument], e, stage)


#: How far after its receipt (``ts_recv``) an event may say it happened (``ts_event``) before the
#: statistics take it for a bad stamp (counted: ``future_stamps``) and let no time pass for it:
#: one event stamped in 2100 held every time window and EWMA of its instrument at 2100, the
#: windows growing without end, until the worker restarted (an adversarial pass). A day: far
#: beyond any clock's error, and no exchange stamps an event before it happens.
cdef int64_t _FUTURE_STAMP_NS = 86_400_000_000_000
FUTURE_STAMP_NS = _FUTURE_STAMP_NS
#: Bad stamps in a row, over a minute of receipt time, after which an instrument's events are taken
#: at their stamps again: it is our clock that is days behind (a review: every event was a bad
#: stamp, and no time ever passed). A publisher's burst of bad stamps is shorter (taken after 16,
#: 17 stamped 2100 in a millisecond held the windows at 2100 again: a second review).
cdef uint32_t _BAD_STREAK_MAX = 16
BAD_STREAK_MAX = _BAD_STREAK_MAX
cdef int64_t _BAD_STREAK_NS = 60_000_000_000
BAD_STREAK_NS = _BAD_STREAK_NS


cdef inline int64_t _stats_ts(tw_istate *st, const tw_event *e) noexcept nogil:
    """The time the statistics take an event at: its ``ts_event``; for a bad stamp (more than
    :data:`FUTURE_STAMP_NS` after its ``ts_recv``, when that is known, and as far after the
    instrument's previous update) the time of that update: no time passes (its receipt time
    would be no better where a publisher's clock runs years apart from ours). After
    :data:`BAD_STREAK_MAX` in a row over :data:`BAD_STREAK_NS` of receipt time, the stamp is
    taken: our clock is the one that is off. A replay does the same."""
    cdef int64_t ts = e.ts_event
    cdef int64_t r = e.ts_recv
    cdef int64_t last = st.f.ts
    if TW_UNLIKELY(r > 0 and ts > r and <uint64_t>ts - <uint64_t>r > <uint64_t>_FUTURE_STAMP_NS
                   and ts > last and <uint64_t>ts - <uint64_t>last > <uint64_t>_FUTURE_STAMP_NS):
        if st.bad_streak == 0:
            st.bad_since = r
        if st.bad_streak < _BAD_STREAK_MAX or r - st.bad_since < _BAD_STREAK_NS:
            st.bad_streak += 1                # (a minute's events at most: no wrap)
            st.future_stamps += 1
            return last
    st.bad_streak = 0
    return ts


cdef inline int _time_evict(tw_istate *st, int64_t ts) noexcept nogil:
    """Age the time windows to ``ts``; which feature groups changed (count windows: none)."""
    cdef int changed = 0
    if not st.timed:
        return 0
    if (tw_window_evict(&st.mid, ts) + tw_window_evict(&st.spread, ts) + tw_sumwin_evict(&st.rv, ts)) > 0:
        changed |= _CH_MID
    if (tw_sumwin_evict(&st.vwap, ts) + tw_sumwin_evict(&st.flow, ts)) > 0:
        changed |= _CH_TRADES
    return changed


cdef void _mid_features(tw_istate *st) noexcept nogil:
    """The window-derived mid and spread features, after the windows changed."""
    cdef tw_features *f = &st.f
    cdef double sd
    f.mid_count = tw_window_count(&st.mid)
    f.mid_mean = tw_window_mean(&st.mid)
    sd = sqrt(tw_window_var(&st.mid, 1))
    f.mid_std = sd
    f.mid_min = tw_window_min(&st.mid)
    f.mid_max = tw_window_max(&st.mid)
    f.zscore = (f.mid - f.mid_mean) / sd if sd > 0.0 else NAN
    f.spread_count = tw_window_count(&st.spread)
    f.spread_mean = tw_window_mean(&st.spread)
    f.realized_vol = sqrt(tw_sumwin_a(&st.rv)) if tw_sumwin_count(&st.rv) else NAN


cdef inline bint _level_of(const tw_book *b, const tw_event *e, int *side, int64_t *p1,
                           int64_t *p2) noexcept nogil:
    """The side and price(s) of the level(s) an applied event changed: an L2 level update's
    own; an L3 order operation's as the book recorded it (``op_*``: a cancel or an execution
    need not carry the price; a modify to a new price changes two levels).  False when it is
    not one level (a clear, a snapshot marker)."""
    if b.p.book_type == TW_BOOK_L2:
        if e.kind > TW_KIND_DELETE or e.side > TW_SIDE_ASK:
            return False
        side[0] = e.side
        p1[0] = e.price
        p2[0] = TW_NO_PRICE
        return True
    if e.kind > TW_KIND_TRADE or (e.kind == TW_KIND_TRADE and e.order_id == 0):
        return False
    side[0] = b.op_side
    p1[0] = b.op_price
    p2[0] = b.op_price2
    return True


cdef inline bint _at_or_better(int side, int64_t price, int64_t ref) noexcept nogil:
    """``price`` is at ``ref`` or better on ``side`` (any price is, when ``ref`` is none)."""
    if ref == TW_NO_PRICE:
        return True
    return price >= ref if side == TW_SIDE_BID else price <= ref


cdef inline int _touches_top_k(const tw_istate *st, const tw_book *b, const tw_event *e) noexcept nogil:
    """Which sides' top k an applied event may have changed (1 bid, 2 ask, 3 both): none when
    the level(s) it changed are strictly behind the k-th level of their side as it was when
    that side's top k was last summed.  (Sound over a whole message too: while no event has
    touched the top k as it was, those k levels are still the best k.)"""
    cdef int side
    cdef int64_t p1, p2, kth
    if not _level_of(b, e, &side, &p1, &p2):
        return 3
    kth = st.kth_bid if side == TW_SIDE_BID else st.kth_ask
    if _at_or_better(side, p1, kth) or (p2 != TW_NO_PRICE and _at_or_better(side, p2, kth)):
        return 1 if side == TW_SIDE_BID else 2
    return 0


cdef inline bint _touches_best(const tw_book *b, const tw_event *e) noexcept nogil:
    """Whether an applied event may have changed its side's best level (price or quantity):
    not when the level(s) it changed are strictly behind that side's best as it is now.
    (Sound over a whole message too: a change behind the best after it leaves the best as it
    was.)"""
    cdef int side
    cdef int64_t p1, p2, best
    if not _level_of(b, e, &side, &p1, &p2):
        return True
    best = tw_book_best_price(b, side)
    return _at_or_better(side, p1, best) or (p2 != TW_NO_PRICE and _at_or_better(side, p2, best))


cdef int[7] _RULE_INPUTS
_RULE_INPUTS[TW_RULE_CUSTOM] = _CH_ALL
_RULE_INPUTS[TW_RULE_MICROPRICE] = _CH_TOP
_RULE_INPUTS[TW_RULE_IMBALANCE] = _CH_TOP
_RULE_INPUTS[TW_RULE_ZSCORE] = _CH_MID
_RULE_INPUTS[TW_RULE_SPREAD] = _CH_MID
_RULE_INPUTS[TW_RULE_VWAP] = _CH_MID | _CH_TRADES
_RULE_INPUTS[TW_RULE_EWMA_CROSS] = _CH_MID


cdef inline int _sample_bbo(tw_istate *st, const tw_book *b, int64_t ts) noexcept nogil:
    """The microprice, and the mid and spread series when the best bid or ask price moved
    (_CH_MID then)."""
    cdef tw_features *f = &st.f
    cdef int64_t bid, ask, qb, qa
    cdef double mid, r
    f.microprice = tw_book_microprice(b)
    bid = tw_book_best_price(b, TW_SIDE_BID)
    ask = tw_book_best_price(b, TW_SIDE_ASK)
    if bid == TW_NO_PRICE or ask == TW_NO_PRICE:
        f.micro_edge = NAN
    else:                       # (ask - bid)(qb - qa) / 2(qb + qa): exact operands, not two large prices' difference
        qb = tw_book_best_qty(b, TW_SIDE_BID)
        qa = tw_book_best_qty(b, TW_SIDE_ASK)
        f.micro_edge = <double>(ask - bid) * (<double>qb - <double>qa) / (2.0 * (<double>qb + <double>qa))
    if bid != st.best_bid or ask != st.best_ask:
        st.best_bid = bid
        st.best_ask = ask
        mid = tw_book_mid(b)
        f.mid = mid
        f.spread = NAN if (bid == TW_NO_PRICE or ask == TW_NO_PRICE) else <double>(ask - bid)
        tw_window_add(&st.mid, ts, mid)
        tw_window_add(&st.spread, ts, f.spread)
        if mid > 0.0 and st.prev_mid > 0.0:
            r = log(mid / st.prev_mid)
            tw_sumwin_add(&st.rv, ts, r * r, 1.0)
        if mid > 0.0:
            st.prev_mid = mid
        tw_ewma_add(&st.fast, ts, mid)
        tw_ewma_add(&st.slow, ts, mid)
        f.ewma_fast = st.fast.mean
        f.ewma_slow = st.slow.mean
        f.ewma_fast_std = sqrt(tw_ewma_var(&st.fast, False))
        return _CH_MID
    return 0


cdef int _update_book(tw_istate *st, const tw_book *b, const tw_event *e) noexcept nogil:
    """Sample the book into the instrument's statistics (its changes since the last sample).

    The microprice is recomputed when a change since the last sample may have moved the best
    bid or ask (``bbo_dirty``), the imbalance when one may have moved the top k
    (``top_dirty``): a change behind them leaves both as they were, and no built-in rule is
    evaluated for it.  The mid and spread series (windows, log-returns, EWMAs) take a sample
    when the best bid or ask price moved: they are series of price changes, not of book
    updates.
    """
    cdef tw_features *f = &st.f
    cdef int64_t ts = _stats_ts(st, e)
    cdef double qb, qa
    cdef int changed = _CH_BOOK | _time_evict(st, ts)
    st.book_dirty = 0
    f.ts = ts
    st.updates += 1
    if st.top_dirty:
        changed |= _CH_TOP
        if st.top_dirty & 1:                  # exact sums, of the side(s) that may have changed
            st.top_qb = tw_book_top_qty_d(b, TW_SIDE_BID, st.imbalance_depth, &st.kth_bid)
        if st.top_dirty & 2:
            st.top_qa = tw_book_top_qty_d(b, TW_SIDE_ASK, st.imbalance_depth, &st.kth_ask)
        st.top_dirty = 0
        qb = st.top_qb
        qa = st.top_qa
        f.imbalance = (qb - qa) / (qb + qa) if (qb > 0.0 and qa > 0.0) else NAN   # both sides
    if st.bbo_dirty:
        st.bbo_dirty = 0
        changed |= _CH_TOP | _sample_bbo(st, b, ts)
    if changed & _CH_MID:
        _mid_features(st)
    if changed & _CH_TRADES:
        _trade_features(st)
    return changed


cdef inline void _trade_features(tw_istate *st) noexcept nogil:
    cdef tw_features *f = &st.f
    cdef double qty = tw_sumwin_b(&st.vwap)
    f.trade_count = tw_sumwin_count(&st.vwap)
    f.vwap = tw_sumwin_a(&st.vwap) / qty if qty > 0.0 else NAN
    f.buy_minus_sell = tw_sumwin_a(&st.flow)
    f.flow = f.buy_minus_sell / tw_sumwin_b(&st.flow) if tw_sumwin_b(&st.flow) > 0.0 else NAN


cdef int _update_trade(tw_istate *st, const tw_event *e, const tw_book *b) noexcept nogil:
    """A trade print: price and size into the VWAP window, signed size into the flow window.

    An L3 execution (applied: ``b.op_*`` name the resting order's level) that leaves its price
    out (0) is at the resting order's price, and one that leaves its side out (NONE) was taken
    by the other side: a price-less ITCH-style execution went into the VWAP at 0."""
    cdef int64_t price = e.price
    cdef int side = e.side
    if e.order_id != 0 and b.p.book_type == TW_BOOK_L3:
        if price == 0:
            price = b.op_price
        if side == TW_SIDE_NONE and b.op_side <= TW_SIDE_ASK:
            side = TW_SIDE_ASK - b.op_side
    cdef double q = <double>e.qty
    cdef double signed_q = q if side == TW_SIDE_BID else (-q if side == TW_SIDE_ASK else 0.0)
    cdef int changed
    cdef int64_t ts = _stats_ts(st, e)
    tw_sumwin_add(&st.vwap, ts, <double>price * q, q)
    tw_sumwin_add(&st.flow, ts, signed_q, q)
    changed = _CH_TRADES | _time_evict(st, ts)
    if changed & _CH_MID:
        _mid_features(st)
    _trade_features(st)
    st.f.ts = ts
    st.f.last_trade_price = price
    st.f.last_trade_qty = e.qty
    st.f.last_trade_ts = ts
    st.updates += 1
    return changed


# ---------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------

cdef inline double _rule_value(const tw_rule *r, const tw_features *f) noexcept nogil:
    """The measured value of a built-in rule; NaN when it cannot be computed yet."""
    cdef int k = r.kind
    if k == TW_RULE_MICROPRICE:
        return f.micro_edge
    if k == TW_RULE_IMBALANCE:
        return f.imbalance
    if k == TW_RULE_ZSCORE:
        return f.zscore if f.mid_count >= r.min_count else NAN
    if k == TW_RULE_SPREAD:
        if f.spread_count >= r.min_count and f.spread_mean > 0.0:
            return f.spread / f.spread_mean
        return NAN
    if k == TW_RULE_VWAP:
        if f.trade_count >= r.min_count and f.vwap > 0.0:
            return (f.mid - f.vwap) / f.vwap * 1e4
        return NAN
    if k == TW_RULE_EWMA_CROSS:
        return f.ewma_fast - f.ewma_slow if f.mid_count >= r.min_count else NAN
    return NAN


cdef inline int _hysteresis(const tw_rule *r, int8_t *state, double v, int8_t *direction,
                            uint32_t *flags) noexcept nogil:
    """Threshold rule with hysteresis: 1 when a signal is due (direction and flags set).

    Two-sided rules fire when |v| reaches `enter` in a direction they are not already in,
    and re-arm when |v| falls to `exit`; the spread rule is one-sided (v >= enter); the EWMA
    crossover fires on each change of side beyond `enter` and never re-arms in between.
    """
    cdef int8_t d
    if isnan(v):
        return 0
    if r.kind == TW_RULE_SPREAD:
        if state[0] == 0 and v >= r.enter:
            state[0] = 1
            direction[0] = 1
            flags[0] = TW_SIG_ENTER
            return 1
        if state[0] != 0 and v <= r.exit:
            state[0] = 0
            if r.emit_exit:
                direction[0] = 0
                flags[0] = TW_SIG_EXIT
                return 1
        return 0
    d = 1 if v > 0.0 else -1
    if fabs(v) >= r.enter and state[0] != d:
        state[0] = d
        direction[0] = d
        flags[0] = TW_SIG_ENTER
        return 1
    if r.kind != TW_RULE_EWMA_CROSS and state[0] != 0 and fabs(v) <= r.exit:
        state[0] = 0
        if r.emit_exit:
            direction[0] = 0
            flags[0] = TW_SIG_EXIT
            return 1
    return 0


cdef inline void _fill_signal(tw_signal *out, const tw_event *e, const tw_rule *rule,
                              int64_t now) noexcept nogil:
    out.ts_event = e.ts_event
    out.ts_recv = e.ts_recv
    out.ts_signal = now
    out.seq = e.seq
    out.value = 0.0
    out.strength = 0.0
    out.instrument = e.instrument
    out.rule_id = rule.id
    out.rule_kind = rule.kind
    out.direction = 0
    out.flags = TW_SIG_ENTER
    out.reserved = 0


cdef class Rule:
    """Base class for user rules, the fast path: subclass it in Cython.

    Override::

        cdef int evaluate(self, const tw_rule_ctx *ctx, tw_signal *out) noexcept nogil

    It is called after every statistics update of each instrument the rule applies to,
    without the GIL.  ``ctx.f`` has the instrument's features (``tw_features``), ``ctx.book``
    its book and ``ctx.ev`` the triggering event.  ``out`` arrives filled with the event's
    timestamps, sequence number, instrument and this rule's id, ``direction`` 0 and
    ``flags`` ENTER; set ``value``, ``strength`` and ``direction`` and return 1 to emit it,
    0 otherwise.  Keep any hysteresis state in the object (per instrument if needed).
    """

    def __init__(self, name=None):
        self.name = name or type(self).__name__
        self.rule_id = -1

    cdef int evaluate(self, const tw_rule_ctx *ctx, tw_signal *out) noexcept nogil:
        return 0


cdef inline uint64_t _window_dropped(const tw_istate *st) noexcept nogil:
    """Samples an instrument's windows let go early, full at ``max_capacity``."""
    return st.mid.dropped + st.spread.dropped + st.vwap.dropped + st.flow.dropped + st.rv.dropped


cdef class RuleContext:
    """What a Python rule sees: the instrument's features (every field of ``tw_features``), the
    triggering event's fields and the book."""

    cdef readonly uint32_t instrument
    cdef readonly uint64_t seq, order_id
    cdef readonly int64_t ts_event, ts_recv
    cdef readonly int kind
    cdef readonly int side
    cdef readonly int channel
    cdef readonly uint32_t flags
    cdef readonly int64_t price
    cdef readonly int64_t qty
    cdef readonly double mid, microprice, micro_edge, spread, imbalance, mid_mean, mid_std, mid_min, mid_max
    cdef readonly double zscore, spread_mean, vwap, flow, buy_minus_sell, realized_vol, ewma_fast, ewma_slow
    cdef readonly double ewma_fast_std
    cdef readonly int64_t mid_count, spread_count, trade_count, ts
    cdef readonly int64_t last_trade_price, last_trade_qty, last_trade_ts
    cdef readonly object book


#: A KeyboardInterrupt or SystemExit a Python rule raised, for the engine to raise once its batch ends.
cdef object _rule_interrupt = None


cdef int _raise_rule_interrupt() except -1:
    global _rule_interrupt
    if _rule_interrupt is not None:
        exc, _rule_interrupt = _rule_interrupt, None
        raise exc
    return 0


cdef class PyRule(Rule):
    """A rule written as a Python callable: the slow path.

    ``fn(ctx: RuleContext)`` returns None (no signal), a finite float ``value`` (direction is
    its sign, strength the value itself) or a tuple ``(value, direction)`` (direction -1, 0 or
    1; anything else, or a NaN or infinite value, counts as an error).  Each evaluation
    takes the GIL and builds a context object: about a microsecond (see docs/performance.md)
    against a few nanoseconds for a Cython :class:`Rule`.  While a Python rule is present the
    engine keeps the GIL for the whole batch.  An exception is counted in :attr:`errors`,
    logged once, and gives no signal.
    """

    cdef object fn
    cdef object books
    cdef readonly uint64_t errors

    def __init__(self, fn, name=None):
        if not callable(fn):
            raise TypeError(f"a Python rule must be callable, got {type(fn).__name__}")
        super().__init__(name or getattr(fn, "__name__", "python_rule"))
        self.fn = fn
        self.errors = 0

    cdef int evaluate(self, const tw_rule_ctx *ctx, tw_signal *out) noexcept nogil:
        with gil:
            return self._call(ctx, out)

    cdef int _call(self, const tw_rule_ctx *ctx, tw_signal *out):
        cdef RuleContext c = RuleContext.__new__(RuleContext)
        cdef const tw_features *f = ctx.f
        c.instrument = ctx.instrument
        c.seq, c.order_id = ctx.ev.seq, ctx.ev.order_id
        c.ts_event, c.ts_recv = ctx.ev.ts_event, ctx.ev.ts_recv
        c.kind = ctx.ev.kind
        c.side = ctx.ev.side
        c.channel, c.flags = ctx.ev.channel, ctx.ev.flags
        c.price = ctx.ev.price
        c.qty = ctx.ev.qty
        # every feature (mid_min, last_trade_price and others were missing: a rule written from
        # the docs met an AttributeError on each call, counted, and never signalled: an adversarial pass)
        c.mid, c.microprice, c.spread, c.imbalance = f.mid, f.microprice, f.spread, f.imbalance
        c.micro_edge = f.micro_edge
        c.mid_mean, c.mid_std, c.zscore, c.spread_mean = f.mid_mean, f.mid_std, f.zscore, f.spread_mean
        c.mid_min, c.mid_max = f.mid_min, f.mid_max
        c.vwap, c.flow, c.buy_minus_sell, c.realized_vol = f.vwap, f.flow, f.buy_minus_sell, f.realized_vol
        c.ewma_fast, c.ewma_slow, c.mid_count, c.trade_count = f.ewma_fast, f.ewma_slow, f.mid_count, f.trade_count
        c.ewma_fast_std, c.spread_count, c.ts = f.ewma_fast_std, f.spread_count, f.ts
        c.last_trade_price, c.last_trade_qty, c.last_trade_ts = f.last_trade_price, f.last_trade_qty, f.last_trade_ts
        c.book = self.books[ctx.instrument] if self.books is not None else None
        global _rule_interrupt
        if _rule_interrupt is not None:
            return 0                      # (interrupted: the batch ends without Python rules, then raises)
        try:
            res = self.fn(c)
            if res is None:
                return 0
            if isinstance(res, (bool, np.bool_, str, bytes)):
                # (a predicate returning False was a signal on every call, "1.5" a value of 1.5)
                raise ValueError(f"returned {res!r}: expected a number, (value, direction), or None for no signal")
            if isinstance(res, tuple):
                if len(res) != 2:         # (res[1] of a 1-tuple read past it: boundscheck is off)
                    raise ValueError(f"returned a tuple of {len(res)}: expected (value, direction)")
                if isinstance(res[0], (bool, np.bool_, str, bytes)):
                    raise ValueError(f"returned value {res[0]!r}: expected a number")
                value = float(res[0])
                if isinstance(res[1], (bool, np.bool_, str)) or res[1] not in (-1, 0, 1):   # (0.5 was truncated to 0)
                    raise ValueError(f"returned direction {res[1]!r}: expected -1, 0 or 1")
                direction = int(res[1])
            else:
                value = float(res)
                direction = (value > 0) - (value < 0)
            if not isfinite(value):       # a NaN value was a signal on every call (None: no signal)
                raise ValueError(f"returned {value}: expected a finite value, or None for no signal")
            out.value = value
            out.strength = value
            out.direction = direction
            return 1
        except Exception:
            self.errors += 1
            if self.errors == 1:
                log_.exception("Python rule %s raised (counted in errors; logged once)", self.name)
            return 0
        except BaseException as exc:
            # Ctrl-C (KeyboardInterrupt) or SystemExit inside the rule: it was "Exception ignored"
            # and the batch ran on (an adversarial pass); the engine raises it once the batch ends
            _rule_interrupt = exc
            return 0


# ---------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------

cdef void _free_istate(tw_istate *st) noexcept nogil:
    if st == NULL:
        return
    tw_window_free(&st.mid)
    tw_window_free(&st.spread)
    tw_sumwin_free(&st.vwap)
    tw_sumwin_free(&st.flow)
    tw_sumwin_free(&st.rv)
    free(st.rules)
    free(st.rstate)
    free(st)


cdef class Engine:
    """Engine(instruments, rules=(), stats=None, stats_by_instrument=None, *, clock='wall', signal_capacity=4096, timing_every=0, channels=None)

    Books, statistics and rules for a set of instruments; ``process`` runs event batches.

    Parameters
    ----------
    instruments : list of Instrument
        One book each (``Instrument.make_book()``).
    rules : list
        Built-in rule configurations (objects with ``kind``, ``enter``, ``exit``,
        ``min_count``, ``instruments``, ``emit_exit``; see
        :class:`tickwire.engine.pipeline.RuleConfig`), :class:`Rule` objects (Cython rules), or
        Python callables (wrapped in :class:`PyRule`).
    stats : StatsConfig
        Default statistics configuration (:class:`tickwire.engine.pipeline.StatsConfig`).
    stats_by_instrument : dict, optional
        ``{instrument id: StatsConfig}`` overrides.
    clock : {"wall", "event"}
        ``ts_signal`` from the wall clock, or the triggering event's ``ts_recv`` (replay:
        identical signals run after run).
    signal_capacity : int
        Initial size of the signal buffer (it grows when a batch needs more).
    timing_every : int
        Time the stages (book, stats, rules) of one event in ``timing_every`` (0: off) and
        the tick-to-signal latency of every signal (wall clock only).
    channels : dict, optional
        Instrument id -> the feed channel carrying it: an event stamped with another channel
        is rejected by the book (``Reject.WRONG_CHANNEL``, counted in the books' rejects) and
        reaches no statistic or rule. Without it any channel is accepted; an id that is not one
        of the engine's instruments is refused (ValueError).
    """

    def __cinit__(self, *args, **kwargs):
        self.inst = NULL
        self.rules = NULL
        self.sink = NULL
        self._busy = -1               # until __init__ has built everything (_idle)

    @cython.embedsignature(False)    # (written above: Cython 3.3 put the class's '*' one argument late)
    def __init__(self, instruments, rules=(), stats=None, stats_by_instrument=None, *,
                 clock="wall", signal_capacity=4096, timing_every=0, channels=None):
        from tickwire.engine.pipeline import StatsConfig, RuleConfig

        # Built once.  A rule re-initialising its own engine mid-batch freed the signal buffer
        # and the rules table the running batch was writing into and indexing; a second
        # __init__ that failed part-way left the old instruments with the new books (a crash
        # at the next batch), and one that succeeded leaked the old state.
        if self._busy > 0:
            self._idle("__init__")
        if self._books is not None:
            raise RuntimeError("Engine.__init__: " + ("this engine is already built (an engine is initialised once)"
                                                      if self._busy == 0 else "its first __init__ failed")
                               + "; make a new Engine")

        instruments = list(instruments)
        if not instruments:
            raise ValueError("an engine needs at least one instrument")
        if clock not in ("wall", "event"):
            raise ValueError(f"clock must be 'wall' or 'event', got {clock!r}")
        self.clock = TW_CLOCK_WALL if clock == "wall" else TW_CLOCK_EVENT
        stats = stats if stats is not None else StatsConfig()
        stats_by_instrument = dict(stats_by_instrument or {})
        for what, cfg in [("stats", stats)] + [(f"stats_by_instrument[{k!r}]", v) for k, v in stats_by_instrument.items()]:
            if not isinstance(cfg, StatsConfig):     # (an AttributeError from deep inside)
                raise TypeError(f"{what} must be a StatsConfig, got {type(cfg).__name__}")
        for k, inst in enumerate(instruments):
            if not all(hasattr(inst, a) for a in ("id", "make_book")):
                raise TypeError(f"instruments[{k}] must be an Instrument, got {type(inst).__name__}")
        channels = dict(channels or {})
        self._books = BookSet(inst.make_book(channels.get(inst.id)) for inst in instruments)
        ids = [inst.id for inst in instruments]
        unknown = set(stats_by_instrument) - set(ids)
        if unknown:
            raise ValueError(f"stats_by_instrument names unknown instrument ids {sorted(unknown)}")
        unknown = set(channels) - set(ids)
        if unknown:                                   # (ignored: a typo left the channel unchecked)
            raise ValueError(f"channels names unknown instrument ids {sorted(unknown, key=repr)}")
        self.ninst = max(ids) + 1
        self.inst = <tw_istate **>calloc(self.ninst, sizeof(tw_istate *))
        if self.inst == NULL:
            raise MemoryError()
        self._cfgs = {inst.id: stats_by_instrument.get(inst.id, stats) for inst in instruments}
        for inst in instruments:
            self._init_instrument(inst.id, self._cfgs[inst.id])

        # rules: built-in configs, Cython Rule objects, Python callables
        self._custom = []
        self._needs_gil = False
        specs = []
        for item in rules:
            if isinstance(item, Rule):
                specs.append(("custom", item))
            elif isinstance(item, RuleConfig):
                specs.append(("builtin", item))
            elif hasattr(item, "kind"):
                # an object with the fields: checked as a RuleConfig is (enter=0 or NaN was taken,
                # a signal of strength inf or NaN at every value: an adversarial pass)
                try:
                    item = RuleConfig(item.kind, item.enter, getattr(item, "exit", 0.0), getattr(item, "min_count", 1),
                                      getattr(item, "instruments", None), getattr(item, "emit_exit", False))
                except (ValueError, TypeError) as exc:
                    raise type(exc)(f"rules[{len(specs)}]: {exc}") from None
                specs.append(("builtin", item))
            elif callable(item):
                specs.append(("custom", PyRule(item)))
            else:
                raise TypeError(f"a rule must be a RuleConfig, a Rule or a callable, got {item!r}")
        if len(specs) > 65535:
            raise ValueError("at most 65535 rules")
        self.nrules = len(specs)
        self.rules = <tw_rule *>calloc(max(self.nrules, 1), sizeof(tw_rule))
        if self.rules == NULL:
            raise MemoryError()
        applies = {i: [] for i in ids}
        cdef tw_rule *r
        cdef tw_istate *st
        for rid, (what, item) in enumerate(specs):
            r = &self.rules[rid]
            r.id = rid
            if what == "custom":
                r.kind = TW_RULE_CUSTOM
                (<Rule>item).rule_id = rid
                if isinstance(item, PyRule):
                    (<PyRule>item).books = self._books
                    self._needs_gil = True
                self._custom.append(item)
                r.custom = <void *>item
                targets = ids
            else:
                if item.kind not in RULE_KINDS:
                    raise ValueError(f"rules[{rid}].kind: expected one of {sorted(RULE_KINDS)}, got {item.kind!r}")
                r.kind = RULE_KINDS[item.kind]
                r.enter = item.enter
                r.exit = item.exit
                r.min_count = item.min_count
                r.emit_exit = bool(item.emit_exit)
                targets = ids if item.instruments is None else list(item.instruments)
                bad = [t for t in targets if t not in applies]
                if bad:
                    raise ValueError(f"rules[{rid}].instruments: unknown instrument ids {bad}")
            for t in targets:
                applies[t].append(rid)
        for iid, rids in applies.items():
            st = self.inst[iid]
            st.nrules = len(rids)
            st.rules = <int32_t *>calloc(max(len(rids), 1), sizeof(int32_t))
            st.rstate = <int8_t *>calloc(max(len(rids), 1), sizeof(int8_t))
            if st.rules == NULL or st.rstate == NULL:
                raise MemoryError()
            for j, rid in enumerate(rids):
                st.rules[j] = rid
                st.inputs |= _RULE_INPUTS[self.rules[rid].kind]

        if signal_capacity < 1:
            raise ValueError(f"signal_capacity must be >= 1, got {signal_capacity}")
        self._grow_sink(signal_capacity)
        self._busy = 0
        self.set_timing(timing_every)

    cdef _init_instrument(self, uint32_t iid, cfg):
        cdef tw_istate *st = <tw_istate *>calloc(1, sizeof(tw_istate))
        if st == NULL:
            raise MemoryError()
        self.inst[iid] = st
        kind = TW_WIN_COUNT if cfg.window == "count" else TW_WIN_TIME
        tkind = TW_WIN_COUNT if cfg.trade_window == "count" else TW_WIN_TIME
        ok = (tw_window_init(&st.mid, kind, cfg.window_size, cfg.max_capacity, cfg.extrema) == 0
              and tw_window_init(&st.spread, kind, cfg.window_size, cfg.max_capacity, False) == 0
              and tw_sumwin_init(&st.rv, kind, cfg.window_size, cfg.max_capacity) == 0
              and tw_sumwin_init(&st.vwap, tkind, cfg.trade_window_size, cfg.max_capacity) == 0
              and tw_sumwin_init(&st.flow, tkind, cfg.trade_window_size, cfg.max_capacity) == 0)
        if not ok:
            raise MemoryError("could not allocate the statistics windows")
        tw_ewma_init(&st.fast, cfg.ewma_fast_halflife_ns)
        tw_ewma_init(&st.slow, cfg.ewma_slow_halflife_ns)
        st.imbalance_depth = cfg.imbalance_depth
        st.timed = kind == TW_WIN_TIME or tkind == TW_WIN_TIME
        st.sample = TW_SAMPLE_MESSAGE if cfg.sample == "message" else TW_SAMPLE_EVENT
        memset(&st.f, 0, sizeof(tw_features))
        st.best_bid = st.best_ask = st.kth_bid = st.kth_ask = TW_NO_PRICE
        st.top_dirty = 3
        st.bbo_dirty = 1
        st.prev_mid = NAN
        st.f.mid = st.f.microprice = st.f.spread = st.f.imbalance = st.f.micro_edge = NAN
        st.f.mid_mean = st.f.mid_std = st.f.mid_min = st.f.mid_max = st.f.zscore = NAN
        st.f.spread_mean = st.f.vwap = st.f.flow = st.f.realized_vol = NAN
        st.f.ewma_fast = st.f.ewma_slow = st.f.ewma_fast_std = NAN

    def __dealloc__(self):
        cdef uint32_t i
        if self.inst != NULL:
            for i in range(self.ninst):
                _free_istate(self.inst[i])
            free(self.inst)
        free(self.rules)

    cdef _grow_sink(self, Py_ssize_t cap):
        new = np.zeros(cap, dtype=SIGNAL_DTYPE)
        if self._sink_array is not None and self.sink_n:
            new[:self.sink_n] = self._sink_array[:self.sink_n]
        self._sink_array = new
        cdef Py_buffer view
        PyObject_GetBuffer(new, &view, PyBUF_C_CONTIGUOUS)
        self.sink = <tw_signal *>view.buf          # the array object keeps the memory alive
        PyBuffer_Release(&view)
        self.sink_cap = cap

    def set_timing(self, int every, StageRecorders stages=None, *, bint to_ring=False):
        """Time the book, stats and rules stages of one event in ``every`` (0: off) into HDR
        recorders, and the tick-to-signal latency of every signal (wall clock only).

        ``stages``: the :class:`~tickwire.ext.hdr.StageRecorders` to record into (a worker
        shares one with its decoder); by default the engine's own (:attr:`stages`).
        ``to_ring``: tick-to-signal ends when the signal is in a ring (stamped by
        :meth:`push_signals` and :meth:`run_feed` after the push), not when its rule fires: what a
        worker uses, so the figure covers the rest of the piece of events and the push.
        """
        self._idle("set_timing")      # (mid-batch, from a rule: the batch then recorded into freed recorders)
        if every < 0:
            raise ValueError(f"timing_every must be >= 0, got {every}")
        if stages is not None:
            self._stages = stages
        elif self._stages is None:
            self._stages = StageRecorders()
        self.timing.hdr = &self._stages.c if every else NULL
        self.timing.every = every
        self.timing.to_ring = to_ring
        self.timing.countdown = every

    @property
    def stages(self):
        """The HDR stage recorders timing goes to (decode, book, stats, rules, tick_to_signal)."""
        return self._stages

    cdef Py_ssize_t process_c(self, const tw_event *ev, Py_ssize_t n) noexcept nogil:
        """Run events through book, statistics and rules; stop early when the signal sink
        could overflow.  Returns the number of events consumed."""
        cdef Py_ssize_t i
        cdef const tw_event *e
        cdef tw_istate *st
        cdef tw_book *b
        cdef int r, kind, j, fire, changed, touched
        cdef bint timed
        cdef int64_t t0 = 0, t1 = 0, t2 = 0, t3, now
        cdef const tw_rule *rule
        cdef tw_signal *out
        cdef tw_rule_ctx ctx
        cdef double v
        cdef int8_t direction
        cdef uint32_t flags
        cdef bint ahead = self._books.c.nl3 != 0      # L3 books: their order lookups miss cache
        for i in range(n):
            e = &ev[i]
            if ahead:                                 # start the misses of events further on
                if i + 16 < n:
                    _prefetch(&self._books.c, &ev[i + 16], 0)    # the order-map slot
                if i + 8 < n:
                    _prefetch(&self._books.c, &ev[i + 8], 1)     # the order record
            if TW_UNLIKELY(e.flags & self._stop) and i > 0:
                return i                              # process_until: stop before this event
            if TW_UNLIKELY(e.instrument >= self.ninst or self.inst[e.instrument] == NULL):
                self._books.c.unknown_instrument += 1
                continue
            st = self.inst[e.instrument]
            if TW_UNLIKELY(self.sink_n + st.nrules > self.sink_cap):
                return i                              # the caller grows the sink and resumes
            b = self._books.c.books[e.instrument]
            timed = False
            if self.timing.hdr != NULL:
                self.timing.countdown -= 1
                if self.timing.countdown == 0:
                    self.timing.countdown = self.timing.every
                    timed = True
                    t0 = _clock_ns(CLOCK_MONOTONIC)
            r = tw_book_apply_inline(b, e)
            self.events += 1
            if timed:
                t1 = _clock_ns(CLOCK_MONOTONIC)
            if TW_UNLIKELY(not b.in_sync):
                st.suppressed += r == TW_OK           # stale or mid-snapshot: no stats, no signals
                continue
            changed = 0
            if TW_LIKELY(r == TW_OK):
                kind = e.kind
                if kind == TW_KIND_TRADE:
                    changed = _update_trade(st, e, b)
                if kind != TW_KIND_TRADE or (b.p.book_type == TW_BOOK_L3 and e.order_id != 0):
                    st.book_dirty = 1                 # a book change, to sample now or at the message's end
                    touched = _touches_top_k(st, b, e)
                    if touched:                       # (the best is in the top k)
                        st.top_dirty |= touched
                        st.bbo_dirty |= _touches_best(b, e)
            # a message ends at its LAST event whether or not that event changed the book
            if st.book_dirty and (st.sample == TW_SAMPLE_EVENT or (e.flags & TW_FLAG_LAST)):
                changed |= _update_book(st, b, e)
            if timed:
                t2 = _clock_ns(CLOCK_MONOTONIC)
            elif (changed & st.inputs) == 0:        # nothing any of its rules reads
                continue
            if changed & st.inputs:
                now = -1                                  # the signal clock, read once and only if needed
                for j in range(st.nrules):
                    rule = &self.rules[st.rules[j]]
                    if not (_RULE_INPUTS[rule.kind] & changed):
                        continue
                    fire = 0
                    if rule.kind == TW_RULE_CUSTOM:
                        if now < 0:
                            now = e.ts_recv if self.clock == TW_CLOCK_EVENT else _clock_ns(CLOCK_REALTIME)
                        out = &self.sink[self.sink_n]
                        _fill_signal(out, e, rule, now)
                        ctx.ev = e
                        ctx.book = b
                        ctx.f = &st.f
                        ctx.instrument = e.instrument
                        ctx.now = now
                        fire = (<Rule>rule.custom).evaluate(&ctx, out)
                    else:
                        v = _rule_value(rule, &st.f)
                        fire = _hysteresis(rule, &st.rstate[j], v, &direction, &flags)
                        if fire:
                            if now < 0:
                                now = e.ts_recv if self.clock == TW_CLOCK_EVENT else _clock_ns(CLOCK_REALTIME)
                            out = &self.sink[self.sink_n]
                            _fill_signal(out, e, rule, now)
                            out.value = v
                            out.strength = v / rule.enter
                            out.direction = direction
                            out.flags = flags
                    if fire:
                        self.sink_n += 1
                        st.signals += 1
                        self.rules[st.rules[j]].signals += 1
                        if self.timing.hdr != NULL and self.clock == TW_CLOCK_WALL and not self.timing.to_ring:
                            tw_hdr_record(&self.timing.hdr.stage[TW_STAGE_TICK_TO_SIGNAL], now - e.ts_recv)
            if timed:
                t3 = _clock_ns(CLOCK_MONOTONIC)
                tw_hdr_record(&self.timing.hdr.stage[TW_STAGE_BOOK], t1 - t0)
                tw_hdr_record(&self.timing.hdr.stage[TW_STAGE_STATS], t2 - t1)
                tw_hdr_record(&self.timing.hdr.stage[TW_STAGE_RULES], t3 - t2)
        return n

    cdef Py_ssize_t _deliver(self, tw_ring *ring) noexcept nogil:
        """Push the pending signals into a broadcast ring (it never waits) and empty the sink;
        with ``to_ring`` timing, each signal's tick-to-signal ends now, with it in the ring."""
        cdef Py_ssize_t i, n = self.sink_n
        cdef int64_t t
        tw_ring_push_n(ring, self.sink, n)
        if self.timing.hdr != NULL and self.timing.to_ring and self.clock == TW_CLOCK_WALL:
            t = _clock_ns(CLOCK_REALTIME)
            for i in range(n):
                tw_hdr_record(&self.timing.hdr.stage[TW_STAGE_TICK_TO_SIGNAL], t - self.sink[i].ts_recv)
        self.sink_n = 0
        return n

    def push_signals(self, Ring ring not None):
        """Push the signals produced since the last call (:attr:`signals`) into ``ring``, a
        broadcast ring of SIGNAL_DTYPE this process produces into, and clear them; returns how
        many.  With ``set_timing(..., to_ring=True)`` their tick-to-signal latency is recorded
        here, after the push."""
        if ring.dtype != SIGNAL_DTYPE:
            raise TypeError(f"push_signals needs a ring of SIGNAL_DTYPE, got {ring.dtype}")
        if ring.role != "producer" or ring.policy != "broadcast":
            raise ValueError(f"push_signals needs the producer of a broadcast ring, got a {ring.policy} "
                             f"ring's {ring.role} handle")
        cdef Py_ssize_t n
        cdef tw_ring *r = &ring.c
        self._idle("push_signals")
        with nogil:
            n = self._deliver(r)
        return n

    def run_feed(self, FeedReceiver rx not None, Ring ticks, Ring signals not None, buf, double seconds):
        """The worker's live loop in C, without the GIL: drain the feed, run each batch through
        the books, statistics and rules, push its signals into ``signals`` (after each piece of
        ``RUN_FEED_PIECE`` (64) events, so a signal never waits for the rest of a large batch)
        and then its
        events into ``ticks`` (None: not stored), batch after batch, with no Python per message.

        Returns when ``seconds`` have passed (waiting for messages meanwhile), when the feed parks a message for the slow path or a wake socket is readable
        (the Python feed handler's work), or when the tick ring is full (the caller waits for it
        with its stop flag in view). Custom Python rules need the GIL: callers check
        :attr:`needs_gil` and use :meth:`process` instead.

        Returns ``(events, batches, signals, lo, hi, first_ns, last_ns)``: the events at
        ``buf[lo:hi]`` (of the last batch) did not fit in the tick ring (the caller pushes them),
        ``first_ns``/``last_ns`` the wall-clock start of the first and last batch (0: none).
        """
        cdef Py_buffer view
        cdef tw_event *b
        cdef tw_feed *f = &rx.c
        cdef tw_ring *tr = NULL
        cdef tw_ring *sr = &signals.c
        cdef Py_ssize_t cap, n = 0, done, k, total = 0, batches = 0, nsig = 0, lo = 0, hi = 0
        cdef int64_t now, t0, first = 0, last = 0, deadline
        cdef int wait_ms = 0
        if self._needs_gil:
            raise RuntimeError("run_feed cannot run Python rules: use process()")
        self._idle("run_feed")
        if ticks is not None:
            tr = &ticks.c
        if getattr(buf, "dtype", None) != EVENT_DTYPE:
            raise TypeError("buf must be a numpy array of EVENT_DTYPE")
        PyObject_GetBuffer(buf, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        held = False
        try:
            # (without the GIL: another thread's batch or change of a book would race it)
            self._books._hold(1)
            held = True
            self._busy = 1
            b = <tw_event *>view.buf
            cap = view.len // <Py_ssize_t>sizeof(tw_event)
            if cap < f.max_events:
                raise ValueError(f"buf must hold at least max_events ({f.max_events}) events")
            why = tw_misaligned(view.buf, view.len, "buf", True)
            if why is not None:
                raise ValueError(why)
            with nogil:
                deadline = _clock_ns(CLOCK_MONOTONIC) + <int64_t>(seconds * 1e9)
                while True:
                    now = _clock_ns(CLOCK_MONOTONIC)
                    wait_ms = <int>((deadline - now + 999999) // 1000000) if deadline > now else 0
                    n = tw_feed_drain(f, b, cap, wait_ms)
                    if n < 0:
                        break
                    if n > 0:
                        t0 = _clock_ns(CLOCK_REALTIME)
                        if first == 0:
                            first = t0
                        last = t0
                        if self.timing.hdr != NULL and b[0].ts_recv:
                            tw_hdr_record(&self.timing.hdr.stage[TW_STAGE_DECODE], t0 - b[0].ts_recv)
                        done = 0
                        while done < n:               # a piece at a time: its signals leave at once
                            k = self.process_c(b + done, min(n - done, <Py_ssize_t>RUN_FEED_PIECE))
                            done += k
                            if self.sink_n:
                                nsig += self._deliver(sr)
                        total += n
                        batches += 1
                        if tr != NULL:
                            k = tw_ring_push_n(tr, b, n)
                            if k < n:
                                lo, hi = k, n
                                break
                    if f.pending or f.woken or _clock_ns(CLOCK_MONOTONIC) >= deadline:
                        break
        finally:
            if held:
                self._books._hold(0)
                self._busy = 0
            PyBuffer_Release(&view)
        if n < 0:
            raise rx.error()
        return total, batches, nsig, lo, hi, first, last

    @property
    def needs_gil(self):
        """A custom rule written in Python is present (it runs with the GIL held)."""
        return bool(self._needs_gil)

    def process(self, events):
        """Run a batch of canonical events through books, statistics and rules.

        Parameters
        ----------
        events : numpy.ndarray
            C-contiguous EVENT_DTYPE array.

        Returns
        -------
        int
            Signals emitted by this batch; they are appended to :attr:`signals`.
        """
        cdef Py_ssize_t signals
        self._run(events, 0, &signals)
        return signals

    def process_until(self, events, uint32_t mask):
        """:meth:`process` up to the next marker: run the first event, then every event up to,
        not including, the next one whose ``flags`` share a bit with ``mask`` (a replay stops
        there for ``Flag.RESTART`` to reset the instrument), checked in the same pass.

        Returns
        -------
        (int, int)
            Events consumed (the whole batch when no later event is flagged) and signals emitted.
        """
        cdef Py_ssize_t signals, done
        if mask == 0:
            raise ValueError("process_until: mask must name at least one flag")
        done = self._run(events, mask, &signals)
        return done, signals

    cdef int _idle(self, str what) except -1:
        """Refuse ``what`` while a batch runs: a Python rule calling back into its engine (a
        nested batch grew the signal buffer the running one writes into; a reset freed the
        state it was reading): RuntimeError rather than freed memory."""
        if self._busy > 0:
            raise RuntimeError(f"Engine.{what}: the engine is processing a batch (called from one of its "
                               f"rules?); call it between batches")
        if self._busy < 0:
            raise RuntimeError(f"Engine.{what}: this engine was never built (its __init__ failed or was "
                               f"not called); make a new Engine")
        return 0

    cdef Py_ssize_t _run(self, events, uint32_t stop, Py_ssize_t *signals) except -1:
        cdef Py_buffer view
        cdef const tw_event *ev
        cdef Py_ssize_t n, done = 0, k
        cdef Py_ssize_t before = self.sink_n
        dt = getattr(events, "dtype", None)
        if dt is not EVENT_DTYPE and dt != EVENT_DTYPE:
            raise TypeError(f"events must be a numpy array of EVENT_DTYPE, got dtype {dt!r}")
        self._idle("process")
        global _rule_interrupt
        _rule_interrupt = None                        # (one a batch that failed otherwise left: not ours)
        try:
            PyObject_GetBuffer(events, &view, PyBUF_C_CONTIGUOUS)
        except (ValueError, BufferError) as exc:     # (numpy's bare "ndarray is not C-contiguous")
            raise ValueError(f"events: {exc}: a slice with a step, or a column of a wider array? "
                             f"np.ascontiguousarray(events) makes a contiguous copy") from None
        why = tw_misaligned(view.buf, view.len, "events", False)
        if why is not None:
            PyBuffer_Release(&view)
            raise ValueError(why)
        self._stop = stop
        self._busy = 1
        held = False
        lent = ()
        try:
            ev = <const tw_event *>view.buf
            n = view.len // sizeof(tw_event)
            if self._needs_gil:
                # Python rules may let other threads run mid-batch: those may read the books
                # (whole between events), not change them
                self._books._hold(2)
                held = True
                lent = []
                for rule in self._custom:             # a rule given to two engines: its ctx.book is
                    if isinstance(rule, PyRule):      # this one's (it was the last engine built's),
                        lent.append((rule, (<PyRule>rule).books))    # and the other's again after
                        (<PyRule>rule).books = self._books         # (a batch of it nested in ours)
            elif n >= _RELEASE_GIL_AT:
                self._books._hold(1)                  # (its books are refused to other threads meanwhile)
                held = True
            while done < n:
                if self._needs_gil or n - done < _RELEASE_GIL_AT:
                    k = self.process_c(ev + done, n - done)
                else:
                    with nogil:
                        k = self.process_c(ev + done, n - done)
                done += k
                if done < n:
                    if stop and ev[done].flags & stop and done > 0:
                        break                         # a marker (the stop check comes first)
                    self._grow_sink(max(2 * self.sink_cap, self.sink_n + self.nrules + 1))
        finally:
            if held:
                self._books._hold(0)
            for rule, books in lent:
                (<PyRule>rule).books = books
            self._stop = 0
            self._busy = 0
            PyBuffer_Release(&view)
        signals[0] = self.sink_n - before
        _raise_rule_interrupt()
        return done

    @property
    def signals(self):
        """The signals emitted since the last :meth:`clear_signals`, a view of the buffer."""
        return self._sink_array[:self.sink_n]

    def take_signals(self):
        """A copy of the pending signals, and clear them."""
        self._idle("take_signals")
        out = self._sink_array[:self.sink_n].copy()
        self.sink_n = 0
        return out

    def clear_signals(self):
        """Forget the pending signals (views from :attr:`signals` then see stale data)."""
        self._idle("clear_signals")
        self.sink_n = 0

    @property
    def books(self):
        """The :class:`BookSet` of the instruments."""
        return self._books

    def book(self, uint32_t instrument):
        return self._books[instrument]

    def features(self, uint32_t instrument):
        """The instrument's current features as a dict (mid, microprice, spread, imbalance,
        mid_mean, mid_std, mid_min, mid_max, zscore, spread_mean, vwap, flow, buy_minus_sell,
        realized_vol, ewma_fast, ewma_slow, ewma_fast_std, counts, ts, the last trade print:
        last_trade_price/qty/ts, 0 before any) plus engine counters."""
        cdef tw_istate *st = self._state(instrument)
        cdef tw_features *f = &st.f
        return {
            "mid": f.mid, "microprice": f.microprice, "micro_edge": f.micro_edge, "spread": f.spread,
            "imbalance": f.imbalance,
            "mid_mean": f.mid_mean, "mid_std": f.mid_std, "mid_min": f.mid_min, "mid_max": f.mid_max,
            "zscore": f.zscore, "spread_mean": f.spread_mean, "vwap": f.vwap, "flow": f.flow,
            "buy_minus_sell": f.buy_minus_sell, "realized_vol": f.realized_vol,
            "ewma_fast": f.ewma_fast, "ewma_slow": f.ewma_slow, "ewma_fast_std": f.ewma_fast_std,
            "mid_count": f.mid_count, "spread_count": f.spread_count, "trade_count": f.trade_count,
            "ts": f.ts, "last_trade_price": f.last_trade_price, "last_trade_qty": f.last_trade_qty,
            "last_trade_ts": f.last_trade_ts, "updates": st.updates, "signals": st.signals,
            "suppressed": st.suppressed, "future_stamps": st.future_stamps,
            "window_dropped": _window_dropped(st),
        }

    cdef tw_istate *_state(self, uint32_t instrument) except NULL:
        if instrument >= self.ninst or self.inst[instrument] == NULL:
            raise KeyError(f"no instrument with id {instrument}")
        return self.inst[instrument]

    def reset_instrument(self, uint32_t instrument):
        """Start an instrument afresh, as a new engine would have it: empty book and statistics
        windows, EWMAs unset, every rule armed, counters at zero (a replay does this where the
        live worker restarted: events flagged ``Flag.RESTART``)."""
        self._idle("reset_instrument")
        cdef tw_istate *old = self._state(instrument)
        cdef tw_istate *st
        cdef int32_t *rules = old.rules
        cdef int8_t *rstate = old.rstate
        cdef int32_t nrules = old.nrules
        cdef int32_t inputs = old.inputs
        old.rules = NULL                          # kept: the rule table does not change
        old.rstate = NULL
        self.inst[instrument] = NULL
        try:
            self._init_instrument(instrument, self._cfgs[instrument])
        except BaseException:
            old.rules, old.rstate = rules, rstate
            self.inst[instrument] = old
            raise
        _free_istate(old)
        st = self.inst[instrument]
        st.nrules = nrules
        st.rules = rules
        st.rstate = rstate
        st.inputs = inputs
        memset(rstate, 0, max(nrules, 1) * sizeof(int8_t))
        tw_book_clear(self._books.c.books[instrument])

    def update_rule(self, int rule_id, enter, exit):
        """New thresholds for a built-in rule (a config reload); its hysteresis state is kept.

        Raises ValueError for an unknown rule id, a custom rule, or ``not 0 <= exit < enter``.
        """
        if not 0 <= rule_id < self.nrules:
            raise ValueError(f"no rule with id {rule_id} (the engine has {self.nrules})")
        if self.rules[rule_id].kind == TW_RULE_CUSTOM:
            raise ValueError(f"rule {rule_id} is a custom rule: its thresholds are its own")
        if isinstance(enter, bool) or isinstance(exit, bool):
            raise ValueError(f"rule {rule_id}: thresholds are numbers, got enter={enter!r} exit={exit!r}")
        enter, exit = float(enter), float(exit)
        if not (enter > 0 and 0 <= exit < enter and isfinite(enter)):
            raise ValueError(f"rule {rule_id}: thresholds need 0 <= exit < enter, finite, got enter={enter} exit={exit}")
        self.rules[rule_id].enter = enter
        self.rules[rule_id].exit = exit

    def rule_thresholds(self):
        """``[(kind, enter, exit)]`` per rule id (custom rules: ``("custom", nan, nan)``)."""
        names = {v: k for k, v in RULE_KINDS.items()}
        return [(names.get(self.rules[i].kind, "custom"),
                 self.rules[i].enter if self.rules[i].kind != TW_RULE_CUSTOM else float("nan"),
                 self.rules[i].exit if self.rules[i].kind != TW_RULE_CUSTOM else float("nan"))
                for i in range(self.nrules)]

    @property
    def rule_signals(self):
        """Signals emitted per rule id since the engine was made (a list; read from another
        thread it is a consistent-enough snapshot: each count only grows)."""
        return [self.rules[i].signals for i in range(self.nrules)]

    @property
    def events_processed(self):
        return self.events

    @property
    def window_dropped(self):
        """Samples, over every instrument and time window, that left early because the window held
        ``max_capacity`` (statistics over less than the window's time from then on)."""
        cdef uint64_t n = 0
        cdef uint32_t i
        for i in range(self.ninst):
            if self.inst[i] != NULL:
                n += _window_dropped(self.inst[i])
        return n

    @property
    def future_stamps(self):
        """Statistics updates, over every instrument, of events stamped (``ts_event``) more than
        :data:`FUTURE_STAMP_NS` (a day) after their receipt (``ts_recv``) and their instrument's
        previous update: bad stamps, for which no time passed (see ``_stats_ts``)."""
        cdef uint64_t n = 0
        cdef uint32_t i
        for i in range(self.ninst):
            if self.inst[i] != NULL:
                n += self.inst[i].future_stamps
        return n

    @property
    def rule_count(self):
        return self.nrules

    def rule_errors(self):
        """Exceptions raised by Python rules, by rule name (``"name #id"`` for a name two rules share:
        keyed by the name alone, two lambdas or two rules of one factory hid each other's)."""
        mine = [r for r in self._custom if isinstance(r, PyRule)]
        names = [r.name for r in mine]
        return {(r.name if names.count(r.name) == 1 else f"{r.name} #{r.rule_id}"): r.errors for r in mine}

    def timing_summary(self):
        """Per stage: ``{"count", "mean_ns", "min_ns", "p50_ns", "p99_ns", "max_ns"}``."""
        out = {}
        for name in ("book", "stats", "rules", "tick_to_signal"):
            r = self._stages[name]
            c = r.total
            out[name] = {
                "count": c,
                "min_ns": r.min_value,
                "p50_ns": r.value_at_percentile(50.0) if c else None,
                "p99_ns": r.value_at_percentile(99.0) if c else None,
                "max_ns": r.max_value,
            }
        return out
