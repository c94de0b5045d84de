"""Signal rules: hand-built scenarios where each rule must fire, must not fire, and must
not re-fire while its condition holds (hysteresis)."""

import math
import numpy as np
import pytest

from tickwire.engine.instruments import Instrument
from tickwire.engine.pipeline import Engine, RuleConfig, StatsConfig
from tickwire.ext import EVENT_DTYPE, Flag, Kind, RuleKind, Side, SignalFlag

BID, ASK = Side.BID, Side.ASK
INST = [Instrument(0, "X", tick_size="0.01", lot_size="1")]


class Feed:
    """Builds L2 events for instrument 0 with increasing time and sequence; each call is
    one exchange message (Flag.LAST on its last event)."""

    def __init__(self):
        self.t = 1_000
        self.seq = 0

    def events(self, *rows):
        ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
        for i, row in enumerate(rows):
            kind, side, price, qty = row if len(row) == 4 else (Kind.MODIFY, *row)
            self.t += 1_000
            self.seq += 1
            ev[i] = (self.t, self.t + 10, self.seq, 0, price, qty, 0, 0, kind, side, 0, 0)
        if len(rows):
            ev[-1]["flags"] = int(Flag.LAST)
        return ev


def quote(state, bid, ask, bid_qty=1, ask_qty=1):
    """Rows of one message that move the book to a single bid and a single ask level."""
    rows = [(BID, bid, bid_qty), (ASK, ask, ask_qty)]
    if state.get("bid") not in (None, bid):
        rows.append((BID, state["bid"], 0))
    if state.get("ask") not in (None, ask):
        rows.append((ASK, state["ask"], 0))
    state.update(bid=bid, ask=ask)
    return rows


def engine(rule, stats=None, **kw):
    """One rule on instrument 0; statistics sampled at message ends (the tests' messages
    move the book from one consistent state to the next)."""
    stats = stats or StatsConfig(window_size=20, trade_window_size=20)
    stats = StatsConfig(**{**stats.__dict__, "sample": "message"})
    return Engine(INST, [rule], stats, clock="event", **kw)


def fired(eng, feed, *rows):
    before = len(eng.signals)
    eng.process(feed.events(*rows))
    return eng.signals[before:]


def test_microprice_fires_holds_rearms_and_flips():
    eng, f = engine(RuleConfig("microprice", enter=0.5, exit=0.2)), Feed()
    assert len(fired(eng, f, (BID, 100, 1), (ASK, 102, 1))) == 0        # microprice == mid
    s = fired(eng, f, (BID, 100, 9))                                     # microprice 101.8: +0.8 ticks
    assert len(s) == 1 and s[0]["direction"] == 1 and s[0]["value"] == pytest.approx(0.8)
    assert s[0]["rule_kind"] == RuleKind.MICROPRICE and s[0]["flags"] == SignalFlag.ENTER
    assert s[0]["strength"] == pytest.approx(0.8 / 0.5) and s[0]["seq"] == f.seq
    assert len(fired(eng, f, (BID, 100, 8), (BID, 100, 7))) == 0        # still beyond: no re-fire
    assert len(fired(eng, f, (BID, 100, 2))) == 0                        # 0.33: inside the band, not re-armed
    assert len(fired(eng, f, (BID, 100, 9))) == 0                        # so no new signal
    assert len(fired(eng, f, (BID, 100, 1))) == 0                        # 0: re-armed
    assert len(fired(eng, f, (BID, 100, 9))) == 1                        # fires again
    s = fired(eng, f, (BID, 100, 1), (ASK, 102, 9))                      # -0.8: the other way
    assert [int(x) for x in s["direction"]] == [-1]


def test_imbalance_top_k():
    eng = engine(RuleConfig("imbalance", enter=0.5, exit=0.1), StatsConfig(imbalance_depth=2))
    f = Feed()
    assert len(fired(eng, f, (BID, 100, 5), (BID, 99, 5), (ASK, 101, 5), (ASK, 102, 5))) == 0
    assert len(fired(eng, f, (BID, 98, 1000))) == 0                      # third level: outside top-2
    s = fired(eng, f, (BID, 99, 35))                                     # (40 - 10) / 50 = 0.6
    assert len(s) == 1 and s[0]["direction"] == 1 and s[0]["value"] == pytest.approx(0.6)
    assert eng.features(0)["imbalance"] == pytest.approx(0.6)
    assert len(fired(eng, f, (BID, 99, 30))) == 0                        # 0.555: holds
    fired(eng, f, (BID, 99, 6))                                          # 0.047: re-arms
    assert len(fired(eng, f, (ASK, 102, 40))) == 1                       # -0.6: fires down


def test_zscore_needs_min_count_then_fires_once():
    eng = engine(RuleConfig("zscore", enter=3.0, exit=1.0, min_count=10), StatsConfig(window_size=50))
    f, q = Feed(), {}
    for i in range(4):                                                   # 8 quotes: not enough
        s = fired(eng, f, *quote(q, 100, 102))
        s2 = fired(eng, f, *quote(q, 101, 103))
        assert len(s) == len(s2) == 0
    assert eng.features(0)["mid_count"] == 8
    for i in range(15):                                                  # oscillating: |z| ~ 1
        assert len(fired(eng, f, *quote(q, 100, 102))) == 0
        assert len(fired(eng, f, *quote(q, 101, 103))) == 0
    s = fired(eng, f, *quote(q, 110, 112))                               # mid jumps 9 ticks
    assert len(s) == 1 and s[0]["direction"] == 1 and s[0]["value"] >= 3.0
    assert s[0]["value"] == pytest.approx(eng.features(0)["zscore"])
    assert len(fired(eng, f, *quote(q, 111, 113))) == 0                  # still extreme: no re-fire


def test_zscore_silent_before_min_count():
    eng = engine(RuleConfig("zscore", enter=1.0, exit=0.5, min_count=30), StatsConfig(window_size=50))
    f, q = Feed(), {}
    for i in range(10):
        fired(eng, f, *quote(q, 100, 102))
        fired(eng, f, *quote(q, 101, 103))
    assert len(fired(eng, f, *quote(q, 150, 152))) == 0                  # huge, but only 21 samples
    assert abs(eng.features(0)["zscore"]) > 1


def test_spread_blowout_is_one_sided_with_hysteresis():
    rule = RuleConfig("spread", enter=3.0, exit=1.5, min_count=10)
    eng, f, q = engine(rule, StatsConfig(window_size=200)), Feed(), {}
    for i in range(30):                                                  # spread 2, many samples
        assert len(fired(eng, f, *quote(q, 100 + i % 2, 102 + i % 2))) == 0
    s = fired(eng, f, *quote(q, 100, 120))                               # spread 20 vs mean ~2
    assert len(s) == 1 and s[0]["direction"] == 1 and s[0]["value"] > 3
    assert len(fired(eng, f, *quote(q, 100, 119))) == 0                  # still wide: no re-fire
    assert len(fired(eng, f, *quote(q, 100, 102))) == 0                  # narrow again: re-armed
    assert len(fired(eng, f, *quote(q, 100, 125))) == 1                  # blows out again
    ev = f.events((BID, 80, 1))                                          # narrower than ever: one-sided
    eng.process(ev)
    assert all(x["direction"] == 1 for x in eng.signals)


def test_vwap_deviation_uses_trades():
    eng = engine(RuleConfig("vwap", enter=50.0, exit=10.0, min_count=3))
    f, q = Feed(), {}
    assert len(fired(eng, f, *(quote(q, 9990, 10010) + [(Kind.TRADE, BID, 10000, 5)] * 3))) == 0
    assert eng.features(0)["vwap"] == pytest.approx(10000) and eng.features(0)["trade_count"] == 3
    s = fired(eng, f, *quote(q, 10180, 10200))                           # mid 10190: +190 bps
    assert len(s) == 1 and s[0]["value"] == pytest.approx(190.0) and s[0]["direction"] == 1
    assert len(fired(eng, f, (Kind.TRADE, BID, 10000, 1))) == 0          # held
    assert eng.features(0)["flow"] == pytest.approx(1.0)                  # all trades were buys
    assert len(fired(eng, f, *quote(q, 9990, 10010))) == 0               # back: re-armed, no signal
    s = fired(eng, f, *quote(q, 9800, 9820))                             # -190 bps: fires down
    assert [int(d) for d in s["direction"]] == [-1]


def test_ewma_crossover_fires_on_each_cross_beyond_the_band():
    stats = StatsConfig(window_size=10, ewma_fast_halflife_ns=2_000, ewma_slow_halflife_ns=50_000)
    eng, f, q = engine(RuleConfig("ewma_cross", enter=2.0, min_count=2), stats), Feed(), {}
    s = np.concatenate([fired(eng, f, *quote(q, p, p + 2)) for p in range(100, 130)])
    assert [int(d) for d in s["direction"]] == [1]                       # crossed up once
    s = np.concatenate([fired(eng, f, *quote(q, p, p + 2)) for p in range(129, 90, -1)])
    assert [int(d) for d in s["direction"]] == [-1]                      # and down once
    for _ in range(3):                                                   # flat: fast meets slow,
        s = np.concatenate([fired(eng, f, *quote(q, p, p + 2)) for p in (90, 91, 90, 91)])
        assert len(s) == 0                                               # inside the band: silent


def test_exit_signals_when_asked():
    eng, f = engine(RuleConfig("microprice", enter=0.5, exit=0.2, emit_exit=True)), Feed()
    fired(eng, f, (BID, 100, 1), (ASK, 102, 1))
    s = np.concatenate([fired(eng, f, (BID, 100, 9)), fired(eng, f, (BID, 100, 1))])
    assert [int(x) for x in s["flags"]] == [SignalFlag.ENTER, SignalFlag.EXIT]
    assert [int(x) for x in s["direction"]] == [1, 0]


def test_no_signals_while_stale_and_after_resync():
    eng, f = engine(RuleConfig("microprice", enter=0.5, exit=0.2)), Feed()
    fired(eng, f, (BID, 100, 1), (ASK, 102, 1))
    stale = f.events((Kind.SNAPSHOT, Side.NONE, 0, 0))
    stale["flags"] = int(Flag.STALE)
    eng.process(stale)
    assert len(fired(eng, f, (BID, 100, 9))) == 0                        # suppressed while stale
    assert eng.features(0)["suppressed"] == 2                            # the marker and the update
    snap = eng.book(0).snapshot_events(seq=f.seq, ts=f.t)
    assert eng.process(snap) == 1                                        # back in sync: evaluated
    assert eng.signals[-1]["direction"] == 1 and eng.signals[-1]["seq"] == f.seq


def test_rules_only_for_their_instruments_and_config_errors():
    insts = [Instrument(0, "A"), Instrument(1, "B")]
    eng = Engine(insts, [RuleConfig("microprice", enter=0.5, exit=0.2, instruments=[1])], clock="event")
    f = Feed()
    ev = f.events((BID, 100, 1), (ASK, 102, 1), (BID, 100, 9))
    eng.process(ev)
    assert len(eng.signals) == 0
    ev["instrument"] = 1
    eng.process(ev)
    assert len(eng.signals) == 1 and eng.signals[0]["instrument"] == 1
    with pytest.raises(ValueError, match="rule.kind"):
        RuleConfig("momentum", enter=1)
    with pytest.raises(ValueError, match="exit must satisfy"):
        RuleConfig("zscore", enter=1.0, exit=2.0)
    # (an adversarial pass: the config file refused these, the Python API took them: a rule at
    # inf never fires, True is a threshold of 1 by accident, NaN compares false)
    for enter, exit_ in ((math.inf, 0.0), (True, 0.0), (math.nan, 0.0), (1.0, math.nan), (1.0, False)):
        with pytest.raises(ValueError, match="enter must be a positive finite number|exit must satisfy"):
            RuleConfig("zscore", enter=enter, exit=exit_)
    with pytest.raises(ValueError, match="min_count"):
        RuleConfig("zscore", enter=1.0, min_count=0)
    with pytest.raises(ValueError, match=r"instruments: unknown instrument ids \[7\]"):
        Engine(insts, [RuleConfig("zscore", enter=1.0, instruments=[7])])
    # "10" was instruments 1 and 0, [2.9] instrument 2 (an adversarial pass)
    for ids in ("10", [2.9], 5, [True], [-1]):
        with pytest.raises(ValueError, match="instruments must be a sequence of instrument ids"):
            RuleConfig("zscore", enter=1.0, instruments=ids)
    assert RuleConfig("zscore", enter=1.0, instruments=(i for i in (1, np.int64(0)))).instruments == (1, 0)
    with pytest.raises(ValueError, match="stats.window"):
        StatsConfig(window="ticks")
    with pytest.raises(ValueError, match="stats.imbalance_depth"):
        StatsConfig(imbalance_depth=0)
    with pytest.raises(TypeError, match="a rule must be"):
        Engine(insts, [42])


def test_python_callable_rule_slow_path():
    seen = []

    def wide_mid(ctx):
        seen.append((ctx.instrument, ctx.mid, ctx.book.best_bid, ctx.seq))
        if ctx.mid == 99:
            raise RuntimeError("boom")
        return ctx.mid - 105 if ctx.mid > 105 else None

    eng = Engine(INST, [wide_mid], StatsConfig(sample="message"), clock="event")
    f, q = Feed(), {}
    assert len(fired(eng, f, *quote(q, 100, 102))) == 0
    s = fired(eng, f, *quote(q, 109, 111))
    assert len(s) == 1 and s[0]["value"] == pytest.approx(5.0) and s[0]["direction"] == 1
    assert s[0]["rule_kind"] == RuleKind.CUSTOM and s[0]["seq"] == f.seq
    assert seen[-1] == (0, 110.0, 109, f.seq)
    assert len(fired(eng, f, *quote(q, 98, 100))) == 0                  # raises: counted, no signal
    assert eng.rule_errors() == {"wide_mid": 1}
    assert len(fired(eng, f, *quote(q, 120, 122))) == 1                  # and the rule keeps working


def test_a_python_rule_sees_every_feature_and_event_field():
    """Found by an adversarial pass: the context lacked mid_min, mid_max, ewma_fast_std,
    spread_count, the last trade, ts and the event's ts_recv, order_id, flags and channel; a
    rule written from the docs (``ctx.mid >= ctx.mid_max``) raised on every call, counted, and
    never signalled."""
    from tickwire.engine.pipeline import Engine as E

    got = []
    names = [k for k in E(INST, [], StatsConfig()).features(0)
             if k not in ("updates", "signals", "suppressed", "future_stamps", "window_dropped")]

    def rule(ctx):
        got.append(({k: getattr(ctx, k) for k in names},
                    (ctx.ts_event, ctx.ts_recv, ctx.seq, ctx.order_id, ctx.price, ctx.qty, ctx.instrument,
                     ctx.channel, ctx.kind, ctx.side, ctx.flags)))
        return 1.0 if ctx.mid >= ctx.mid_max else None

    eng = Engine(INST, [rule], StatsConfig(sample="event"), clock="event")
    f, q = Feed(), {}
    fired(eng, f, *quote(q, 100, 102))
    ev = f.events((Kind.TRADE, BID, 101, 3))
    ev["channel"], ev["order_id"] = 7, 11
    eng.process(ev)
    assert eng.rule_errors() == {"rule": 0} and len(eng.signals) >= 1
    feats, fields = got[-1]
    want = eng.features(0)
    assert feats == pytest.approx({k: want[k] for k in names}, nan_ok=True)
    e = ev[-1]
    assert fields == (e["ts_event"], e["ts_recv"], e["seq"], 11, 101, 3, 0, 7, int(Kind.TRADE), int(BID),
                      int(e["flags"]))
    assert feats["last_trade_price"] == 101 and feats["last_trade_qty"] == 3


def test_rule_errors_of_rules_sharing_a_name_are_kept_apart():
    """Found by an adversarial pass: rule_errors() was keyed by name, so of two lambdas (or two
    rules from one factory) the second's count hid the first's, and a replay, reading the 0,
    said nothing of a rule that raised on every call."""
    def make(fail):
        def rule(ctx):
            if fail:
                raise RuntimeError("boom")
        return rule

    eng = Engine(INST, [make(True), make(False), lambda ctx: None], StatsConfig(sample="message"), clock="event")
    f, q = Feed(), {}
    fired(eng, f, *quote(q, 100, 102))
    fired(eng, f, *quote(q, 101, 103))
    assert eng.rule_errors() == {"rule #0": 2, "rule #1": 0, "<lambda>": 0}


def test_a_rule_given_as_an_object_with_the_fields_is_checked_as_a_rule_config():
    """Found by an adversarial pass: the Engine takes any object with ``kind``, ``enter``, ...,
    and took enter=0 (a signal of strength inf at every value), a negative enter or NaN."""
    import types

    for enter, exit_, what in ((0, 0, "enter"), (-1, 5, "enter"), (math.nan, 0, "enter"), (2.0, 3.0, "exit")):
        with pytest.raises(ValueError, match=rf"rules\[0\]: rule zscore: {what} must"):
            Engine(INST, [types.SimpleNamespace(kind="zscore", enter=enter, exit=exit_)], StatsConfig())
    eng = Engine(INST, [types.SimpleNamespace(kind="zscore", enter=2.0)], StatsConfig())
    assert eng.rule_thresholds() == [("zscore", 2.0, 0.0)]


def test_samples_a_full_time_window_lets_go_are_counted_by_the_engine():
    """Found by an adversarial pass: docs said a time window full at max_capacity counts the
    samples it lets go early, but neither the engine nor the daemon showed the count: a rule
    whose min_count exceeded the capacity never fired and nothing said why."""
    stats = StatsConfig(window="time", window_size=10**15, trade_window="time", trade_window_size=10**15,
                        max_capacity=4, sample="message")
    eng = Engine(INST, [], stats, clock="event")
    f, q = Feed(), {}
    for k in range(10):
        fired(eng, f, *quote(q, 100 + k, 102 + k))
    feats = eng.features(0)
    assert feats["mid_count"] == 4
    assert feats["window_dropped"] == eng.window_dropped >= 6


@pytest.mark.parametrize("bad", [math.nan, math.inf, (1.0, 2), (math.nan, 1), (1.0, 0.5), (1.0, "1"),
                                 # an adversarial pass: a 1-tuple or () read past the tuple (a
                                 # segfault), False (a predicate) was a signal, "1.5" a value
                                 (1.0,), (), (1.0, 1, "x"), False, True, "1.5", (True, 1), ("2", 1),
                                 np.False_, np.True_, (1.0, True), (1.0, np.True_), (np.False_, 1)])
def test_a_python_rule_returning_no_number_is_an_error_not_a_signal(bad):
    """Found by an adversarial pass: a Python rule returning NaN (a window not yet filled, say)
    emitted a signal of value NaN, direction 0, on every evaluation."""
    def rule(ctx):
        return bad if ctx.mid > 105 else 1.0

    eng = Engine(INST, [rule], StatsConfig(sample="message"), clock="event")
    f, q = Feed(), {}
    assert len(fired(eng, f, *quote(q, 100, 102))) == 1                  # a good value: a signal
    assert len(fired(eng, f, *quote(q, 109, 111))) == 0
    assert len(fired(eng, f, *quote(q, 119, 121))) == 0
    assert eng.rule_errors() == {"rule": 2}


def test_ctrl_c_in_a_python_rule_is_raised_once_the_batch_ends():
    """An adversarial pass: a KeyboardInterrupt raised inside a Python rule (Ctrl-C while it ran)
    was printed as "Exception ignored" and the batch ran on, uncounted. It is raised by the
    engine once the batch ends (the rest of the batch without Python rules), and only once."""
    calls = []

    def rule(ctx):
        calls.append(ctx.seq)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return None

    eng = Engine(INST, [rule], StatsConfig(sample="message"), clock="event")
    f, q = Feed(), {}
    events = np.concatenate([f.events(*quote(q, 100 + k, 102 + k)) for k in range(10)])
    with pytest.raises(KeyboardInterrupt):
        eng.process(events)
    assert len(calls) == 3                                   # no rule called after it
    assert not any(eng.rule_errors().values())               # an interrupt, not a rule error
    eng.process(f.events(*quote(q, 130, 132)))               # raised once, not again
    assert len(calls) == 4


def test_a_bookset_is_initialised_once():
    """An adversarial pass: `eng.books.__init__([])` swapped the routing table under the engine
    (a segfault at its next batch). A second __init__ is refused."""
    eng = Engine(INST, [], StatsConfig(sample="message"), clock="event")
    with pytest.raises(RuntimeError, match="initialised already"):
        eng.books.__init__([])


def test_a_custom_rule_sees_every_book_change_even_behind_the_top():
    """Built-in rules are skipped for a change behind the top k (their inputs did not move);
    a custom rule reads the whole book, so it is called for every sample all the same."""
    seen = []

    def depth(ctx):
        seen.append((ctx.seq, ctx.book.qty_at(BID, 90)))

    eng = Engine(INST, [depth, RuleConfig("microprice", enter=0.8, exit=0.2)],
                 StatsConfig(imbalance_depth=1), clock="event")
    f = Feed()
    eng.process(f.events((BID, 100, 5), (ASK, 101, 5), (BID, 95, 1)))
    eng.process(f.events((BID, 90, 3)))                                 # deep: neither best nor top 1
    eng.process(f.events((BID, 90, 7), (BID, 91, 2)))
    assert seen == [(1, 0), (2, 0), (3, 0), (4, 3), (5, 7), (6, 7)]


def test_thresholds_reload_without_losing_state():
    eng, f = engine(RuleConfig("microprice", enter=0.5, exit=0.2)), Feed()
    fired(eng, f, (BID, 100, 1), (ASK, 102, 1))
    assert len(fired(eng, f, (BID, 100, 9))) == 1                        # +0.8 fired
    eng.update_rule(0, 1.5, 0.1)
    assert eng.rule_thresholds() == [("microprice", 1.5, 0.1)]
    assert len(fired(eng, f, (BID, 100, 8))) == 0                        # still in the fired state
    fired(eng, f, (BID, 100, 1))                                         # 0: re-armed
    assert len(fired(eng, f, (BID, 100, 9))) == 0                        # 0.8 < the new enter
    with pytest.raises(ValueError, match="0 <= exit < enter"):
        eng.update_rule(0, 1.0, 2.0)
    with pytest.raises(ValueError, match="no rule with id 3"):
        eng.update_rule(3, 1.0, 0.5)
    for enter, exit_ in ((math.inf, 0.0), (True, False), (math.nan, 0.0), (1.0, math.nan)):   # as RuleConfig
        with pytest.raises(ValueError, match="thresholds"):
            eng.update_rule(0, enter, exit_)
    assert eng.rule_thresholds()[0][1:] == (1.5, 0.1)
