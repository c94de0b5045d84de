"""The engine pipeline: statistics fed from the books equal a plain recomputation, runs are
deterministic, batch boundaries do not matter, and signals are never lost."""

import dataclasses
import hashlib
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reference import RefEngine
from tickwire.engine.instruments import make_books
from tickwire.engine.pipeline import Engine, RuleConfig, StatsConfig
from tickwire.ext import EVENT_DTYPE, Flag, Kind, Reject, Side, SignalFlag
from tickwire.ext.pipeline import FUTURE_STAMP_NS, RULE_KINDS as RULE_KINDS_C
from tickwire.feeds.synthetic import l2_updates, l3_orders, synthetic_instruments
from budget import examples

RULES = [
    RuleConfig("microprice", enter=0.8, exit=0.2),
    RuleConfig("imbalance", enter=0.6, exit=0.2),
    RuleConfig("zscore", enter=2.5, exit=1.0, min_count=30),
    RuleConfig("spread", enter=2.0, exit=1.2, min_count=30),
    RuleConfig("ewma_cross", enter=0.3, min_count=10),
    RuleConfig("vwap", enter=2.0, exit=0.5, min_count=5),
]


def digest(signals):
    return hashlib.sha256(np.ascontiguousarray(signals).tobytes()).hexdigest()


class CompiledBook:
    """A compiled book behind the reference books' interface (see RefEngine), for streams
    too long for dict books."""

    def __init__(self, book):
        self.book = book
        self._status = np.zeros(1, np.uint8)

    @property
    def in_sync(self):
        return self.book.in_sync

    def apply(self, e):
        self.book.apply(np.ascontiguousarray(e).reshape(1), self._status)
        return Reject(int(self._status[0]))

    def best(self, side):
        price = self.book.best_price(side)
        return (price, self.book.best_qty(side)) if price is not None else (None, 0)

    def mid(self):
        return self.book.mid

    def microprice(self):
        return self.book.microprice

    def top(self, side, k):
        return [(int(p), int(q)) for p, q, _ in self.book.levels(side, k)]

    def order(self, oid):
        return self.book.order(oid)


def compare(engine_f, ref_f, where=""):
    """Every feature of the reference equals the engine's (NaN where it is NaN)."""
    for key, want in ref_f.items():
        got = engine_f[key]
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(got), (where, key, got)
        elif isinstance(want, int):
            assert got == want, (where, key, got, want)
        else:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9), (where, key, got, want)


@pytest.mark.parametrize("cfg", [
    StatsConfig(window="count", window_size=50, trade_window="count", trade_window_size=20),
    StatsConfig(window="time", window_size=20_000_000, trade_window="time", trade_window_size=5_000_000,
                ewma_fast_halflife_ns=1_000_000, ewma_slow_halflife_ns=30_000_000),
], ids=["count", "time"])
def test_features_equal_a_plain_recomputation_l3(cfg):
    insts = synthetic_instruments(2, book="L3")
    ev = l3_orders(12_000, seed=21, instruments=2)
    eng = Engine(insts, RULES, cfg, clock="event")
    books = make_books(insts)
    ref = RefEngine(insts, (), cfg, books={i.id: CompiledBook(books[i.id]) for i in insts})
    for start in range(0, len(ev), 400):
        chunk = ev[start:start + 400]
        eng.process(chunk)
        ref.process(chunk)
        for i in insts:
            compare(eng.features(i.id), ref.features(i.id) | {"signals": eng.features(i.id)["signals"]})
    assert eng.books.rejects == {} and len(eng.signals) > 0


def test_features_on_the_real_binance_capture(binance):
    cfg = StatsConfig(window="time", window_size=2_000_000_000, trade_window="time",
                      trade_window_size=1_000_000_000)
    eng = Engine(binance.instruments, RULES, cfg, clock="event")
    books = make_books(binance.instruments)
    ref = RefEngine(binance.instruments, (), cfg, books={0: CompiledBook(books[0])})
    ev = binance.events[:40_000]
    for start in range(0, len(ev), 2000):
        chunk = ev[start:start + 2000]
        eng.process(chunk)
        ref.process(chunk)
        compare(eng.features(0), ref.features(0) | {"signals": eng.features(0)["signals"]})
    assert eng.features(0)["trade_count"] > 0


def test_an_event_stamped_in_2100_lets_no_time_pass_and_holds_no_window(binance):
    """One trade of the real capture stamped in the year 2100 (a publisher's bad stamp): every
    time window and EWMA of the instrument was held at 2100 until the worker restarted (the
    one-second mid window grew to 15,001 samples and on, toward max_capacity). No time passes
    for it now, and it is counted: the statistics and signals are those of the same stream with
    that trade stamped at the time of the instrument's update before it."""
    cfg = StatsConfig(window="time", window_size=1_000_000_000, trade_window="time",
                      trade_window_size=1_000_000_000)
    ev = binance.events[:60_000].copy()
    k = int(np.flatnonzero(ev["kind"] == Kind.TRADE)[50])
    assert k < 30_000
    bad, fair = ev.copy(), ev.copy()
    bad["ts_event"][k] = 4_102_444_800 * 10**9                          # 2100-01-01
    before = Engine(binance.instruments, RULES, cfg, clock="event")
    before.process(ev[:k])
    fair["ts_event"][k] = before.features(0)["ts"]
    assert 0 <= ev["ts_event"][k] - fair["ts_event"][k] < 10**9
    engines = []
    for stream in (bad, fair):
        eng = Engine(binance.instruments, RULES, cfg, clock="event")
        for start in range(0, len(stream), 5000):
            eng.process(stream[start:start + 5000])
        engines.append(eng)
    a, b = (e.features(0) for e in engines)
    assert a.pop("future_stamps") == 1 and b.pop("future_stamps") == 0
    assert engines[0].future_stamps == 1 and engines[1].future_stamps == 0
    compare(a, b)
    assert 0 < a["mid_count"] < 5_000 and a["trade_count"] > 0
    sa, sb = engines[0].signals, engines[1].signals
    assert len(sa) == len(sb) > 0
    for f in ("seq", "rule_id", "direction", "value", "ts_recv"):
        assert np.array_equal(sa[f], sb[f]), f


def test_a_stamp_is_bad_from_a_day_and_a_nanosecond_after_its_receipt():
    """The bound: a day after the receipt is kept, a nanosecond more is timed by the receipt;
    a receipt of 0 (unknown) checks nothing; a stamp in the past is kept."""
    day = FUTURE_STAMP_NS
    assert day == 86_400 * 10**9
    recv = T0 + 10**12
    for ts_event, ts_recv, bad in ((recv + day, recv, False), (recv + day + 1, recv, True), ((1 << 63) - 1, 0, False),
                                   (recv - 10 * day, recv, False), ((1 << 63) - 1, recv, True)):
        eng = Engine(synthetic_instruments(1), [], StatsConfig(window="time", window_size=10**9), clock="event")
        ev = np.zeros(1, EVENT_DTYPE)
        ev[0] = (ts_event, ts_recv, 1, 0, 1000, 5, 0, 0, Kind.TRADE, Side.BID, int(Flag.LAST), 0)
        eng.process(ev)
        f = eng.features(0)
        assert (f["future_stamps"], eng.future_stamps) == (int(bad), int(bad)), (ts_event, ts_recv)
        assert f["ts"] == f["last_trade_ts"] == (0 if bad else ts_event) and f["trade_count"] == 1   # (no update before)


def test_a_receiving_clock_days_behind_takes_the_stamps_after_a_minute_but_a_burst_stays_bad():
    """A review: with our clock two days behind (a VM restored, NTP broken), every event was a bad
    stamp and no time ever passed: the one-second trade window held every trade. After
    BAD_STREAK_MAX bad stamps in a row over BAD_STREAK_NS (a minute) of receipt time, an
    instrument's stamps are taken again. A second review: taken after 16 alone, a publisher's burst
    of 17 stamped 2100 held the windows at 2100 again; a burst of 500 in half a second stays bad."""
    from tickwire.ext.pipeline import BAD_STREAK_MAX, BAD_STREAK_NS

    assert (BAD_STREAK_MAX, BAD_STREAK_NS) == (16, 60 * 10**9)
    cfg = StatsConfig(trade_window="time", trade_window_size=10**9)
    ev = np.zeros(20_000, EVENT_DTYPE)
    ev["ts_event"] = T0 + np.arange(len(ev)) * 10_000_000           # 10 ms apart: 200 s
    ev["ts_recv"] = ev["ts_event"] - 2 * 86_400 * 10**9              # received "two days earlier"
    ev["kind"], ev["side"], ev["price"], ev["qty"], ev["flags"] = Kind.TRADE, Side.BID, 1000, 1, int(Flag.LAST)
    eng = Engine(synthetic_instruments(1), [], cfg, clock="event")
    eng.process(ev)
    f = eng.features(0)
    assert f["future_stamps"] == 6000                                # the first minute's
    assert f["trade_count"] == 100 and f["ts"] == ev["ts_event"][-1]
    burst = ev.copy()
    burst["ts_recv"] = burst["ts_event"] + 20_000
    burst["ts_event"][5000:5500] = 4_102_444_800 * 10**9             # 500 in a row, over 5 s
    eng = Engine(synthetic_instruments(1), [], cfg, clock="event")
    eng.process(burst)
    assert eng.features(0)["future_stamps"] == 500 and eng.features(0)["trade_count"] == 100


def test_deterministic_on_the_real_capture_and_independent_of_batching(binance):
    def run(chunk):
        eng = Engine(binance.instruments, RULES, StatsConfig(window_size=200), clock="event")
        for start in range(0, len(binance.events), chunk):
            eng.process(binance.events[start:start + chunk])
        return eng.take_signals()

    a, b, c = run(len(binance.events)), run(len(binance.events)), run(777)
    assert len(a) > 100
    assert digest(a) == digest(b) == digest(c)


def test_sink_grows_without_losing_signals():
    insts = synthetic_instruments(3)
    ev = l2_updates(50_000, seed=5, instruments=3)
    big = Engine(insts, RULES, clock="event", signal_capacity=1_000_000)
    tiny = Engine(insts, RULES, clock="event", signal_capacity=1)
    n_big, n_tiny = big.process(ev), tiny.process(ev)
    assert n_big == n_tiny == len(big.signals) > 1000
    assert digest(big.signals) == digest(tiny.signals)
    # signals per rule (the daemon's tickwire_signals_total{rule=...}): what the signals say
    per_rule = np.bincount(big.signals["rule_id"], minlength=len(RULES)).tolist()
    assert big.rule_signals == tiny.rule_signals == per_rule and min(per_rule) >= 0
    assert len(tiny.take_signals()) == n_tiny and len(tiny.signals) == 0


def test_sharding_by_instrument_gives_the_same_signals():
    insts = synthetic_instruments(4)
    ev = l2_updates(60_000, seed=9, instruments=4)
    whole = Engine(insts, RULES, clock="event")
    whole.process(ev)
    parts = []
    for shard in ([0, 2], [1, 3]):
        eng = Engine([insts[i] for i in shard], RULES and [
            RuleConfig(r.kind, r.enter, r.exit, r.min_count, None, r.emit_exit) for r in RULES], clock="event")
        eng.process(np.ascontiguousarray(ev[np.isin(ev["instrument"], shard)]))
        parts.append(eng.signals.copy())
    merged = np.concatenate(parts)
    merged = merged[np.lexsort((merged["rule_id"], merged["seq"]))]
    assert digest(merged) == digest(whole.signals)


def test_engine_counts_unknown_instruments_and_times_stages():
    insts = synthetic_instruments(2)
    import time

    ev = l2_updates(10_000, seed=3, instruments=3)               # instrument 2 has no book
    ev["ts_recv"] = time.time_ns()                               # received just now
    eng = Engine(insts, RULES, timing_every=1)
    eng.process(ev)
    unknown = int((ev["instrument"] == 2).sum())
    assert eng.books.unknown_instrument == unknown
    t = eng.timing_summary()
    assert t["book"]["count"] == t["stats"]["count"] == t["rules"]["count"] == len(ev) - unknown
    assert t["tick_to_signal"]["count"] == len(eng.signals)      # wall clock: every signal timed
    assert 0 < t["tick_to_signal"]["max_ns"] < 10**10
    assert 0 < t["book"]["p50_ns"] < 1e6 and t["book"]["min_ns"] <= t["book"]["p99_ns"] <= t["book"]["max_ns"]
    assert eng.stages.book.total == len(ev) - unknown                    # HDR recorders underneath
    eng.set_timing(0)
    eng.process(ev)
    assert eng.timing_summary()["book"]["count"] == len(ev) - unknown   # off: nothing more recorded
    with pytest.raises(ValueError, match="timing_every"):
        eng.set_timing(-1)


def test_tick_to_signal_ends_with_the_signal_in_the_ring():
    """A worker's tick-to-signal (``to_ring``) is stamped after the push into the signal ring,
    not when the rule fired: a 50 ms pause between the two shows in every value; the signals
    arrive in the ring whole and the sink is empty after."""
    import os
    import time

    from tickwire.ext import SIGNAL_DTYPE
    from tickwire.ext.ring import Ring

    insts = synthetic_instruments(2)
    ev = l2_updates(5_000, seed=3, instruments=2)
    ev["ts_recv"] = time.time_ns()
    eng = Engine(insts, RULES, timing_every=1)
    eng.set_timing(1, to_ring=True)
    n = eng.process(ev)
    assert n > 0 and eng.timing_summary()["tick_to_signal"]["count"] == 0     # not at the rule
    want = eng.signals.copy()
    time.sleep(0.05)
    name = f"tw-t2s-{os.getpid()}"
    with Ring.create(name, SIGNAL_DTYPE, 1 << 12, policy="broadcast") as ring:
        consumer = Ring.attach(name, SIGNAL_DTYPE, start="oldest")
        assert eng.push_signals(ring) == n and len(eng.signals) == 0
        got = np.zeros(n, SIGNAL_DTYPE)
        assert consumer.pop_many(got, timeout=1.0) == n
        consumer.close()
    assert got.tobytes() == want.tobytes()
    t = eng.timing_summary()["tick_to_signal"]
    assert t["count"] == n and t["min_ns"] >= 50_000_000
    with Ring.create(name + "e", EVENT_DTYPE, 64, policy="broadcast") as wrong:
        with pytest.raises(TypeError, match="SIGNAL_DTYPE"):
            eng.push_signals(wrong)


def test_engine_with_channels_rejects_an_instrument_on_the_wrong_channel():
    """Events of instrument 1 (channel 1) stamped channel 0 never reach its book, statistics or
    rules: the engine's result equals one that never saw them, and each is counted."""
    insts = synthetic_instruments(2)
    ev = l2_updates(20_000, seed=4, instruments=2)
    ev["channel"] = ev["instrument"] % 2
    forged = ev.copy()
    wrong = np.arange(len(ev)) % 7 == 3
    forged["channel"][wrong] ^= 1
    chans = {0: 0, 1: 1}
    eng = Engine(insts, RULES, clock="event", channels=chans)
    eng.process(forged)
    ref = Engine(insts, RULES, clock="event", channels=chans)
    ref.process(np.ascontiguousarray(ev[~wrong]))
    assert eng.books.rejects == {"WRONG_CHANNEL": int(wrong.sum())}
    assert digest(eng.signals) == digest(ref.signals) and len(ref.signals) > 0
    for i in (0, 1):
        assert eng.books[i].state() == ref.books[i].state()
    blind = Engine(insts, RULES, clock="event")             # without channels: applied as they come
    blind.process(forged)
    assert blind.books.rejects == {}


def test_wall_clock_signals_carry_production_time():
    import time

    insts = synthetic_instruments(1)
    ev = l2_updates(5_000, seed=2)
    before = time.time_ns()
    eng = Engine(insts, RULES, clock="wall")
    eng.process(ev)
    after = time.time_ns()
    s = eng.signals
    assert len(s) > 0 and (s["ts_signal"] >= before).all() and (s["ts_signal"] <= after).all()
    assert np.all(np.diff(s["ts_signal"]) >= 0)


def test_engine_rejects_bad_arguments():
    insts = synthetic_instruments(1)
    with pytest.raises(ValueError, match="clock"):
        Engine(insts, clock="gps")
    with pytest.raises(ValueError, match="at least one instrument"):
        Engine([])
    with pytest.raises(ValueError, match=r"stats_by_instrument names unknown instrument ids \[5\]"):
        Engine(insts, stats_by_instrument={5: StatsConfig()})
    with pytest.raises(TypeError, match="EVENT_DTYPE"):
        Engine(insts).process(np.zeros(3))
    eng = Engine(insts)
    with pytest.raises(KeyError, match="no instrument with id 9"):
        eng.features(9)


# ---------------------------------------------------------------------------------------
# Message sampling, and every feature and signal against the reference in both modes
# ---------------------------------------------------------------------------------------

def l2_message(rows, seq, last=True):
    """Events from rows ``(kind, side, price, qty)``, one message (LAST on its last event)."""
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, (kind, side, price, qty) in enumerate(rows):
        ev[i] = (seq * 1000 + i, seq * 1000 + i, seq, 0, price, qty, 0, 0, kind, side, 0, 0)
    if last:
        ev["flags"][-1] = Flag.LAST
    return ev


BOOK_ROWS = [(Kind.MODIFY, Side.BID, 100, 5), (Kind.MODIFY, Side.BID, 99, 4), (Kind.MODIFY, Side.BID, 98, 3),
             (Kind.MODIFY, Side.BID, 97, 1), (Kind.MODIFY, Side.ASK, 101, 2), (Kind.MODIFY, Side.ASK, 102, 1)]


def test_message_sampling_sees_a_top_k_change_early_in_the_message():
    """A message that deletes the best bid, then changes a level behind the k-th: the
    imbalance used to be judged by the last event only, and stayed at its old value."""
    eng = Engine(synthetic_instruments(1), [], StatsConfig(sample="message", imbalance_depth=2), clock="event")
    eng.process(l2_message(BOOK_ROWS, seq=1))
    assert eng.features(0)["imbalance"] == pytest.approx((9 - 3) / 12)
    eng.process(l2_message([(Kind.MODIFY, Side.BID, 100, 0), (Kind.MODIFY, Side.BID, 97, 2)], seq=2))
    assert eng.book(0).imbalance(2) == pytest.approx((7 - 3) / 10)
    assert eng.features(0)["imbalance"] == eng.book(0).imbalance(2)


@pytest.mark.parametrize("last", [(Kind.TRADE, Side.ASK, 99, 3), (Kind.DELETE, Side.ASK, 150, 0)],
                         ids=["a trade print", "a refused delete"])
def test_message_sampling_samples_a_message_that_ends_in_no_book_change(last):
    """The book changes early in a message whose last event changes no book (a trade print,
    or an event the book refuses): the message's end is still where the book is sampled."""
    eng = Engine(synthetic_instruments(1), [], StatsConfig(sample="message", imbalance_depth=2), clock="event")
    eng.process(l2_message(BOOK_ROWS, seq=1))
    eng.process(l2_message([(Kind.MODIFY, Side.BID, 100, 0), last], seq=2))
    book, f = eng.book(0), eng.features(0)
    assert book.best_bid == 99
    assert (f["mid"], f["microprice"], f["imbalance"]) == (book.mid, book.microprice, book.imbalance(2))
    assert f["ts"] == 2001 and f["mid_count"] == 2


T0 = 1_700_000_000_000_000_000
RULES_H = [                                    # thresholds no rational value of a small book hits
    RuleConfig("microprice", enter=0.2718, exit=0.0913, emit_exit=True),
    RuleConfig("imbalance", enter=0.4142, exit=0.1732),
    RuleConfig("imbalance", enter=0.7071, exit=0.3183, emit_exit=True, instruments=(1,)),
    RuleConfig("zscore", enter=0.8765, exit=0.3141, min_count=3, emit_exit=True),
    RuleConfig("spread", enter=1.4142, exit=1.0905, min_count=2, emit_exit=True),
    RuleConfig("ewma_cross", enter=0.1618, min_count=2),
    RuleConfig("vwap", enter=3.3333, exit=1.1111, min_count=2, emit_exit=True),
]
MARKER_FLAGS = [Flag.STALE, Flag.SNAPSHOT | Flag.SNAPSHOT_BEGIN, Flag.SNAPSHOT | Flag.SNAPSHOT_END,
                Flag.STALE | Flag.SNAPSHOT_END, Flag.SNAPSHOT_BEGIN | Flag.SNAPSHOT_END]


@st.composite
def stats_configs(draw):
    window, trade_window = draw(st.sampled_from(["count", "time"])), draw(st.sampled_from(["count", "time"]))
    size = {"count": st.integers(1, 8), "time": st.sampled_from([150_000, 700_000, 3_000_000])}
    return StatsConfig(window=window, window_size=draw(size[window]), trade_window=trade_window,
                       trade_window_size=draw(size[trade_window]), imbalance_depth=draw(st.integers(1, 3)),
                       ewma_fast_halflife_ns=300_000, ewma_slow_halflife_ns=3_000_000,
                       sample=draw(st.sampled_from(["event", "message"])))


@st.composite
def event_streams(draw, book):
    """Random events for instruments 0 and 1 (and a few for 2, which has no book) around a
    small book that the top-k moves in and out of: level updates or orders, trades, clears,
    snapshot markers, refused events; random LAST flags (message boundaries) and times."""
    ops = ["set"] * 6 + ["delete", "trade", "trade", "clear", "marker", "bad"]
    if book == "L3":
        ops += ["add"] * 6 + ["modify", "modify", "cancel", "cancel", "execute", "execute"]
    rows = draw(st.lists(st.tuples(
        st.sampled_from([0, 0, 0, 0, 1, 2]), st.sampled_from(ops), st.sampled_from([Side.BID, Side.ASK]),
        st.integers(-1, 4), st.integers(0, 30), st.integers(1, 25), st.sampled_from([True, False, False]),
        st.booleans(),
        st.sampled_from([0, 0, 1, 500, 20_000, 200_000, 1_000_000])), min_size=25, max_size=120))
    ev = np.zeros(len(rows), EVENT_DTYPE)
    ts = T0
    for i, (inst, op, side, depth, qty, oid, last, flip, dt) in enumerate(rows):
        ts += dt
        price = 1000 - depth if side == Side.BID else 1001 + depth
        kind, flags, order_id = Kind.MODIFY, 0, 0
        if op == "set":
            kind = Kind.ADD if book == "L2" and flip else Kind.MODIFY
            if book == "L3":
                kind, order_id = Kind.MODIFY, oid
        elif op == "add":
            kind, order_id, qty = Kind.ADD, oid, max(qty, 1)
        elif op in ("delete", "cancel"):
            kind, order_id = Kind.DELETE, (oid if book == "L3" else 0)
        elif op == "trade":
            kind, price = Kind.TRADE, 1000 + depth
            side = Side.NONE if flip and depth % 3 == 0 else side
        elif op == "execute":            # (price 0: at the resting order's price, as ITCH sends it)
            kind, order_id, qty, side = Kind.TRADE, oid, qty % 5 + 1, Side.NONE
            price = 0 if flip else price
        elif op == "modify":
            kind, order_id = Kind.MODIFY, oid
        elif op == "clear":
            kind, side = Kind.CLEAR, Side.NONE
        elif op == "marker":
            kind, side, flags = Kind.SNAPSHOT, Side.NONE, int(MARKER_FLAGS[oid % len(MARKER_FLAGS)])
        elif op == "bad":
            kind, side = (9, side) if flip else (Kind.MODIFY, 7)
        flags |= Flag.LAST if last else 0
        ev[i] = (ts, ts + 7, i + 1, order_id, price, qty, inst, 0, kind, side, flags, 0)
    # a few bad stamps: a day and a nanosecond after the receipt, the year 2100, the end of time
    for i in draw(st.sets(st.integers(0, len(rows) - 1), max_size=3)):
        t = int(ev[i]["ts_event"])
        ev[i]["ts_recv"] = t
        ev[i]["ts_event"] = draw(st.sampled_from([t + FUTURE_STAMP_NS + 1, 4_102_444_800 * 10**9, (1 << 63) - 1]))
    cuts = sorted(draw(st.sets(st.integers(1, len(rows)), max_size=6)) | {len(rows)})
    return ev, cuts


def engine_signals(signals):
    flag = {int(SignalFlag.ENTER): "enter", int(SignalFlag.EXIT): "exit"}
    assert (signals["ts_signal"] == signals["ts_recv"]).all()              # clock="event"
    return [(int(s["seq"]), int(s["instrument"]), int(s["rule_id"]), int(s["direction"]),
             flag[int(s["flags"])], float(s["value"]), float(s["strength"]), int(s["ts_event"]),
             int(s["ts_recv"])) for s in signals]


@pytest.mark.parametrize("book", ["L2", "L3"])
@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_feature_and_signal_equals_the_reference_in_both_sampling_modes(book, data):
    cfg = data.draw(stats_configs(), "stats")
    ev, cuts = data.draw(event_streams(book), "events")
    insts = synthetic_instruments(2, book=book)
    ref = RefEngine(insts, RULES_H, cfg)
    one = Engine(insts, RULES_H, cfg, clock="event", signal_capacity=2)      # event by event
    for k in range(len(ev)):
        one.process(ev[k:k + 1])
        ref.process(ev[k:k + 1])
        for i in insts:
            compare(one.features(i.id), ref.features(i.id), where=f"instrument {i.id} after event {k}")
    batched = Engine(insts, RULES_H, cfg, clock="event", signal_capacity=2)  # random batches
    start = 0
    for cut in cuts:
        batched.process(ev[start:cut])
        start = cut
    kinds = {rid: RULE_KINDS_C[r.kind] for rid, r in enumerate(RULES_H)}
    for eng in (one, batched):
        for i in insts:
            compare(eng.features(i.id), ref.features(i.id), where=f"instrument {i.id} at the end")
        got = engine_signals(eng.signals)
        assert [s[:5] for s in got] == [s[:5] for s in ref.signals]
        for g, w in zip(got, ref.signals):
            assert g[5:7] == pytest.approx(w[5:7], rel=1e-9, abs=1e-9) and g[7:] == w[7:]
        assert all(int(s["rule_kind"]) == kinds[int(s["rule_id"])] for s in eng.signals)
    for rid in sorted({s[2] for s in ref.signals}):                 # --hypothesis-show-statistics
        event(f"signals of rule {rid} ({RULES_H[rid].kind})")
    if any(ref.features(i.id)["suppressed"] for i in insts):
        event("a book out of sync")
    if any(ref.features(i.id)["future_stamps"] for i in insts):
        event("a bad stamp timed by its receipt")


def test_an_execution_without_price_or_side_trades_at_the_resting_order():
    """Found by an adversarial pass: an ITCH-style execution (order id, no price, no side) went
    into the VWAP at price 0 and into the flow as neither bought nor sold. It trades at the
    resting order's price, taken by the other side; a price or side it carries is kept."""
    insts = synthetic_instruments(1, book="L3")
    eng = Engine(insts, (), StatsConfig(trade_window="count", trade_window_size=10), clock="event")
    rows = [(Kind.ADD, 7, Side.ASK, 1010, 10), (Kind.ADD, 8, Side.BID, 1000, 10),
            (Kind.TRADE, 7, Side.NONE, 0, 4),           # at 1010, bought
            (Kind.TRADE, 8, Side.NONE, 0, 2),           # at 1000, sold
            (Kind.TRADE, 7, Side.ASK, 1009, 1)]         # its own price and side
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, (kind, oid, side, price, qty) in enumerate(rows):
        ev[i] = (T0 + i, T0 + i, i + 1, oid, price, qty, 0, 0, kind, side, int(Flag.LAST), 0)
    eng.process(ev)
    f = eng.features(0)
    assert f["vwap"] == pytest.approx((1010 * 4 + 1000 * 2 + 1009) / 7), f
    assert (f["buy_minus_sell"], f["trade_count"], f["last_trade_price"]) == (4 - 2 - 1, 3, 1009), f
    assert eng.books.rejects == {}


@pytest.mark.parametrize("book", ["L2", "L3"])
def test_a_trade_priced_outside_the_instruments_range_is_refused(book):
    """Found by an adversarial pass: prints at -1,000,000 and 0 on an instrument of 100..200
    were applied, and the VWAP read -333,283 (its rule then silent for the window); an L3
    execution carrying 1e9 made the VWAP 1e9. A trade's price is checked like a level's (an
    execution's 0 still means the resting order's price)."""
    inst = dataclasses.replace(synthetic_instruments(1, book=book)[0], min_price=100, max_price=200)
    eng = Engine([inst], (), StatsConfig(trade_window="count", trade_window_size=10), clock="event")
    rows = [(Kind.ADD, 7, Side.ASK, 151, 10), (Kind.ADD, 8, Side.BID, 150, 10),
            (Kind.TRADE, 0, Side.BID, 150, 1),          # a print in range
            (Kind.TRADE, 0, Side.BID, -1_000_000, 1),   # refused
            (Kind.TRADE, 0, Side.ASK, 0, 1),            # refused
            (Kind.TRADE, 0, Side.ASK, 201, 1)]          # refused
    if book == "L3":
        rows += [(Kind.TRADE, 7, Side.BID, 10**9, 1),   # refused: the order stays whole
                 (Kind.TRADE, 7, Side.NONE, 0, 2)]      # at the resting order's 151
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, (kind, oid, side, price, qty) in enumerate(rows):
        ev[i] = (T0 + i, T0 + i, i + 1, oid, price, qty, 0, 0, kind, side, int(Flag.LAST), 0)
    eng.process(ev)
    f = eng.features(0)
    if book == "L2":
        assert (f["vwap"], f["trade_count"], f["last_trade_price"]) == (150.0, 1, 150), f
        assert eng.books.rejects == {"PRICE_RANGE": 3}, eng.books.rejects
    else:
        assert f["vwap"] == pytest.approx((150 + 151 * 2) / 3) and f["last_trade_price"] == 151, f
        assert eng.books.rejects == {"PRICE_RANGE": 4}, eng.books.rejects
        assert eng.books[0].order(7)[2] == 8               # the 1e9 execution took nothing


@pytest.mark.parametrize("bid", [100, 6173763, 2**40])
def test_the_microprice_rule_fires_at_a_value_exactly_at_its_threshold(bid):
    """Found by an adversarial pass: the rule's value was microprice - mid from the two full
    prices, 0.2999999998137355 for an exact 0.3 at the README's prices, so `enter = 0.3` did not
    fire though the rule fires when |value| >= enter. It is (ask - bid)(qb - qa) / 2(qb + qa) now."""
    insts = synthetic_instruments(1)
    eng = Engine(insts, [RuleConfig("microprice", enter=0.3, exit=0.1)], StatsConfig(), clock="event")
    ev = np.zeros(2, EVENT_DTYPE)
    ev[0] = (T0, T0, 1, 0, bid, 4, 0, 0, Kind.ADD, Side.BID, 0, 0)
    ev[1] = (T0, T0, 2, 0, bid + 1, 1, 0, 0, Kind.ADD, Side.ASK, int(Flag.LAST), 0)
    eng.process(ev)
    assert eng.features(0)["micro_edge"] == 0.3
    sig = eng.signals
    assert len(sig) == 1 and sig["value"][0] == 0.3 and sig["direction"][0] == 1, sig


def test_spread_rule_stays_quiet_when_the_mean_spread_is_exactly_zero():
    """Found by the property test above: a crossed and then cleared L3 book makes the window's
    spreads average exactly 0; the rolling mean read 1.1e-16 and the spread rule fired with a
    value of 2.7e16. The reference's exact mean says no signal."""
    cfg = StatsConfig(window="count", window_size=3, trade_window="count", trade_window_size=1,
                      imbalance_depth=1, sample="event")
    rows = [(1, 998, 1, Kind.ADD, Side.BID), (2, 1000, 1, Kind.ADD, Side.ASK),
            (3, 1000, 1, Kind.ADD, Side.BID), (2, 997, 1, Kind.MODIFY, Side.BID),
            (0, 1000, 0, Kind.CLEAR, Side.NONE), (2, 999, 1, Kind.ADD, Side.BID),
            (1, 1002, 1, Kind.ADD, Side.ASK)]
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for i, (oid, price, qty, kind, side) in enumerate(rows):
        ev[i] = (T0, T0 + 7, i + 1, oid, price, qty, 0, 0, kind, side, Flag.LAST, 0)
    insts = synthetic_instruments(2, book="L3")
    ref = RefEngine(insts, RULES_H, cfg)
    eng = Engine(insts, RULES_H, cfg, clock="event")
    for k in range(len(ev)):
        eng.process(ev[k:k + 1])
        ref.process(ev[k:k + 1])
        compare(eng.features(0), ref.features(0), where=f"after event {k}")
    assert eng.features(0)["spread_mean"] == 0.0 and ref.features(0)["spread_mean"] == 0.0
    assert engine_signals(eng.signals) == ref.signals == []


def test_engine_imbalance_does_not_overflow():
    """Two bid levels of 2**63-1 lots: their sum passes int64 (it used to wrap to -2)."""
    big = 2**63 - 1
    eng = Engine(synthetic_instruments(1), [], StatsConfig(imbalance_depth=2), clock="event")
    eng.process(l2_message([(Kind.MODIFY, Side.BID, 100, big), (Kind.MODIFY, Side.BID, 99, big),
                            (Kind.MODIFY, Side.ASK, 101, big)], seq=1))
    assert eng.features(0)["imbalance"] == pytest.approx(1 / 3, rel=1e-15) == eng.book(0).imbalance(2)
