"""The backtest report (tickwire.replay.report): markouts, hit rates and the taker PnL equal a
plain numpy/Python computation from per-event reference books; hand-built cases give the
numbers worked out by hand; any cut of the stream into batches gives the same report; the
plots are real PNG images."""

import csv
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference import RefL2
from tickwire.engine.instruments import Instrument
from tickwire.engine.pipeline import Engine, RuleConfig, StatsConfig
from tickwire.ext import EVENT_DTYPE, SIGNAL_DTYPE, Kind, Side, SignalFlag
from tickwire.feeds.synthetic import l2_updates, synthetic_instruments
from tickwire.replay.report import ReportBuilder, horizon_name
from budget import examples

ENTER, EXIT = int(SignalFlag.ENTER), int(SignalFlag.EXIT)


# -- the plain reference ---------------------------------------------------------------------
def reference_mids(events, instrument_ids, make_book=RefL2):
    """Per event: best bid, best ask and mid of its instrument after it, applying the events
    one at a time to plain dict books (or ``make_book(i)``: a compiled book, for deep real
    books, through its per-event path and queries)."""
    books = {i: make_book(i) for i in instrument_ids}
    bid = np.full(len(events), None, object)
    ask = np.full(len(events), None, object)
    mid = np.full(len(events), np.nan)
    for k, ev in enumerate(events):
        b = books.get(int(ev["instrument"]))
        if b is None:
            continue
        if isinstance(b, RefL2):
            b.apply(ev)
            bb, aa = b.best(Side.BID)[0], b.best(Side.ASK)[0]
        else:
            b.apply(events[k:k + 1])
            bb, aa = b.best_bid, b.best_ask
        if not b.in_sync:
            bb = aa = None
        bid[k], ask[k] = bb, aa
        if bb is not None and aa is not None:
            mid[k] = (bb + aa) / 2
    return bid, ask, mid


def book_at(events, inst, T, p):
    """Index of the event of ``inst`` whose book is the book at ``T`` for a signal on event
    ``p``, and whether the data shows that time passed.  For sorted times: the last event of
    ``inst`` stamped at or before ``T``, known once an event stamped after ``T`` exists;
    otherwise the last one before the first event stamped after ``T`` (not before ``p``)."""
    ts = events["ts_event"]
    after = np.flatnonzero(ts > T)
    if not len(after) or max(int(after[0]), p + 1) >= len(ts):
        return -1, False
    j = max(int(after[0]), p + 1)
    return int(np.flatnonzero(events["instrument"][:j] == inst)[-1]), True


def group_end(events, p):
    """The last event after ``p`` with the same instrument, ts_event, seq and ts_recv, with
    none different in between (the rest of the signal's exchange message)."""
    key = lambda k: tuple(int(events[f][k]) for f in ("instrument", "ts_event", "seq", "ts_recv"))
    while p + 1 < len(events) and key(p + 1) == key(p):
        p += 1
    return p


def reference_report(events, sig_at, horizons, latency, fee_bps, instrument_ids, make_book=RefL2):
    """Markouts and trades by definition (docs/replay-report.md), from the events and
    ``sig_at``: a list of (event index, signal record)."""
    bid, ask, mid = reference_mids(events, instrument_ids, make_book)
    markouts = []                                      # (rule, inst, dir, mid0, [ticks or None per h], [status])
    for p, s in sig_at:
        if not (int(s["flags"]) & ENTER) or (int(s["flags"]) & EXIT) or int(s["direction"]) == 0:
            continue
        d, inst, t = int(s["direction"]), int(s["instrument"]), int(s["ts_event"])
        p = group_end(events, p)
        k0, passed0 = book_at(events, inst, t, p)
        m0 = mid[k0] if passed0 else math.nan
        vals, status = [], []
        for h in horizons:
            k, passed = book_at(events, inst, t + h, p)
            if not passed:
                vals.append(None), status.append("unresolved")
            elif math.isnan(m0) or k < 0 or math.isnan(mid[k]):
                vals.append(None), status.append("no_mid")
            else:
                vals.append(d * (mid[k] - m0)), status.append("ok")
        markouts.append((int(s["rule_id"]), inst, d, m0, vals, status))

    fee = fee_bps / 1e4
    pos, trades = {}, []
    for p, s in sig_at:
        key = (int(s["rule_id"]), int(s["instrument"]))
        flags, d, t = int(s["flags"]), int(s["direction"]), int(s["ts_event"])
        is_exit = bool(flags & EXIT)
        if not is_exit and not (flags & ENTER and d != 0):
            continue
        k, passed = book_at(events, key[1], t + latency, group_end(events, p))
        if not passed:
            continue
        b = bid[k] if k >= 0 else None
        a = ask[k] if k >= 0 else None
        cur = pos.get(key)
        if is_exit or (cur and cur[0] == -d):
            if cur is None:
                continue
            px = b if cur[0] > 0 else a
            if px is None:
                continue
            gross = cur[0] * (px - cur[1])
            trades.append((key, cur[0], cur[1], px, gross, fee * (cur[1] + px)))
            pos.pop(key)
            if is_exit:
                continue
        if key in pos:                                 # already that way
            continue
        px = a if d > 0 else b
        if px is not None:
            pos[key] = (d, px)
    last = {}
    for i in instrument_ids:                           # the last mid it had (in sync, two-sided)
        idx = np.flatnonzero((events["instrument"] == i) & ~np.isnan(mid))
        last[i] = mid[idx[-1]] if len(idx) else math.nan
    for key, (d, px) in pos.items():
        m = last[key[1]]
        trades.append((key, d, px, m, d * (m - px), fee * px))
    return markouts, trades


# -- helpers -----------------------------------------------------------------------------------
def run_engine(instruments, rules, events, cuts, stats=None):
    """Run the engine over the events cut at ``cuts``; yields (batch, its signals)."""
    eng = Engine(instruments, rules, stats or StatsConfig(window="count", window_size=200), clock="event")
    bounds = [0] + sorted(cuts) + [len(events)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        batch = events[a:b]
        eng.process(batch)
        yield batch, eng.take_signals()


def signals_with_triggers(instruments, rules, events, stats=None):
    """The engine one event at a time: each signal with the index of its event."""
    eng = Engine(instruments, rules, stats or StatsConfig(window="count", window_size=200), clock="event")
    out = []
    for k in range(len(events)):
        eng.process(events[k:k + 1])
        for s in eng.take_signals():
            out.append((k, s))
    return out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fnum(text):
    return None if text == "" else float(text)


def assert_markouts(rows, ref_marks, horizons, bps=False):
    """markouts.csv, row for row, against the reference's (rule, instrument, direction, mid0,
    markouts, statuses); ``bps``: the basis-point columns too."""
    names = [horizon_name(h) for h in horizons]
    for row, (rule, inst, d, m0, vals, status) in zip(rows, ref_marks):
        assert (int(row["rule_id"]), int(row["instrument"]), int(row["direction"])) == (rule, inst, d)
        assert same(row["mid0_ticks"], m0)
        for name, v, stt in zip(names, vals, status):
            assert row[f"status_{name}"] == stt
            assert fnum(row[f"markout_{name}_ticks"]) == v
            if bps and v is not None:
                assert float(row[f"markout_{name}_bps"]) == pytest.approx(v / m0 * 1e4, rel=1e-12)


def same(text, x):
    """A CSV number equals ``x`` (empty: NaN)."""
    return math.isnan(x) if text == "" else float(text) == x


def png_size(path):
    """(width, height) of a PNG, checking its signature, IHDR and every chunk's CRC."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append(kind)
        pos += 12 + n
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def ev(rows):
    """Events from rows (ts, inst, kind, side, price, qty); seq = row number + 1."""
    e = np.zeros(len(rows), EVENT_DTYPE)
    for k, (ts, inst, kind, side, price, qty) in enumerate(rows):
        e[k] = (ts, ts + 5, k + 1, 0, price, qty, inst, 0, kind, side, 0, 0)
    return e


def sig(event, rule_id=0, direction=1, flags=ENTER, kind=3, value=1.0):
    """A signal as the engine would emit it for ``event``."""
    s = np.zeros(1, SIGNAL_DTYPE)
    s["ts_event"], s["ts_recv"], s["ts_signal"], s["seq"] = event["ts_event"], event["ts_recv"], event["ts_recv"], event["seq"]
    s["instrument"], s["rule_id"], s["rule_kind"], s["direction"], s["flags"] = event["instrument"], rule_id, kind, direction, flags
    s["value"], s["strength"] = value, value
    return s


A, B = Side.ASK, Side.BID
SET = Kind.MODIFY


# -- hand-built cases ---------------------------------------------------------------------------
# bid 100 / ask 102 (mid 101) at t=2000; the ask leaves at 2500 (one-sided), 104 arrives at 2600
# (mid 102), the bid moves to 101 at exactly 3000 (mid 102.5); levels behind the top at 3001
# and 4000 leave the mid at 102.5.
HAND = [
    (1000, 0, SET, B, 100, 5),
    (2000, 0, SET, A, 102, 5),      # 1: the ENTER (+1) signal: mid0 = 101
    (2500, 0, SET, A, 102, 0),      # 2: no ask
    (2600, 0, SET, A, 104, 3),      # 3: mid 102
    (3000, 0, SET, B, 101, 1),      # 4: mid 102.5; the EXIT signal
    (3001, 0, SET, B, 99, 1),       # 5: a sell ENTER, open at the end
    (4000, 0, SET, B, 90, 1),       # 6: the last event
]


def hand_case(tmp_path, latency=0, fee_bps=0.0, horizons=(500, 1000, 1001, 5000), cuts=(), offset=0):
    e = ev([(ts + offset, *rest) for ts, *rest in HAND])
    sigs = [(1, sig(e[1], direction=1)), (4, sig(e[4], direction=0, flags=EXIT)), (5, sig(e[5], direction=-1))]
    inst = [Instrument(0, "X", tick_size="0.01", lot_size="1")]
    rb = ReportBuilder(inst, horizons_ns=horizons, latency_ns=latency, fee_bps=fee_bps)
    bounds = [0, *cuts, len(e)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = [x for k, x in sigs if a <= k < b]
        rb.add(e[a:b], np.concatenate(s) if s else np.zeros(0, SIGNAL_DTYPE))
    return rb.finish(tmp_path / "r"), tmp_path / "r"


def test_one_signal_known_mids(tmp_path):
    summary, out = hand_case(tmp_path)
    rows = read_csv(out / "markouts.csv")
    assert len(rows) == 2                                   # two directional ENTERs
    r = rows[0]
    assert r["direction"] == "1" and float(r["mid0_ticks"]) == 101.0
    # +500 ns: at 2500 the ask was gone: no mid
    assert r["status_500ns"] == "no_mid" and r["markout_500ns_ticks"] == ""
    # +1000 ns: the event at exactly 3000 counts: 102.5 - 101
    assert r["status_1us"] == "ok" and float(r["markout_1us_ticks"]) == 1.5
    assert float(r["markout_1us_bps"]) == pytest.approx(1.5 / 101 * 1e4, rel=1e-12)
    # +1001 ns: the book after the event at 3001 (passed by the one at 4000)
    assert r["status_1001ns"] == "ok" and float(r["markout_1001ns_ticks"]) == 1.5
    # +5000 ns: nothing is stamped after 7000: unresolved, not invented
    assert r["status_5us"] == "unresolved" and r["markout_5us_ticks"] == "" and r["mid_5us_ticks"] == ""
    s = rows[1]                                             # the sell at 3001, mid0 102.5
    assert s["direction"] == "-1" and float(s["mid0_ticks"]) == 102.5
    assert s["status_500ns"] == "ok" and float(s["markout_500ns_ticks"]) == 0.0     # 3501: no move
    assert s["status_1us"] == "unresolved"                  # 4001: after the last event
    g = summary["groups"][0]
    assert (g["signals"], g["enter"], g["exit"]) == (3, 2, 1)
    m = g["markouts"]["1us"]
    assert (m["resolved"], m["unresolved"], m["no_mid"]) == (1, 1, 0)
    assert m["mean_ticks"] == m["median_ticks"] == 1.5 and m["hit_rate"] == 1.0
    m = g["markouts"]["500ns"]
    assert (m["resolved"], m["unresolved"], m["no_mid"]) == (1, 0, 1)
    assert m["mean_ticks"] == 0.0 and m["hit_rate"] == 0.0 and m["zero_share"] == 1.0
    assert g["markouts"]["5us"]["resolved"] == 0 and g["markouts"]["5us"]["mean_bps"] is None


def test_a_horizon_or_fill_past_the_largest_timestamp_stays_unresolved(tmp_path):
    """Found by an adversarial pass: with event times near the int64 limit (the year 2262), t + h
    wrapped to a time long past, so a horizon the data never reached resolved at once, "ok",
    markout 0. The hand case moved to end 2,000 ns before the limit reads as at its own times."""
    offset = 2**63 - 1 - 6000
    summary, out = hand_case(tmp_path, offset=offset)
    r, s = read_csv(out / "markouts.csv")
    assert (r["status_1us"], float(r["markout_1us_ticks"])) == ("ok", 1.5)
    assert r["status_5us"] == "unresolved" and r["markout_5us_ticks"] == "", r
    assert s["status_5us"] == s["status_1us"] == "unresolved", s
    assert summary["groups"][0]["markouts"]["5us"]["resolved"] == 0
    # a fill the data never reaches: after the end, not at the first book seen
    summary, out = hand_case(tmp_path / "f", latency=2**62, offset=offset)
    assert read_csv(out / "trades.csv") == []
    assert summary["groups"][0]["pnl"]["fills_after_end"] == 3, summary["groups"][0]["pnl"]

def test_hand_pnl_with_fees(tmp_path):
    summary, out = hand_case(tmp_path, fee_bps=10.0)
    trades = read_csv(out / "trades.csv")
    assert [t["exit_reason"] for t in trades] == ["exit", "open_at_end"]
    t = trades[0]
    # buy at the ask 102 at the signal, sell at the bid 101 at the EXIT (3000)
    assert (t["direction"], t["entry_price_ticks"], t["exit_price_ticks"]) == ("1", "102", "101")
    assert (t["entry_price"], t["exit_price"]) == ("1.02", "1.01")
    fees = 10e-4 * (102 + 101)
    assert float(t["gross_ticks"]) == -1.0
    assert float(t["fees_ticks"]) == pytest.approx(fees, rel=1e-12)
    assert float(t["net_ticks"]) == pytest.approx(-1 - fees, rel=1e-12)
    assert float(t["net_bps"]) == pytest.approx((-1 - fees) / 102 * 1e4, rel=1e-12)
    # the sell at 3001 takes the bid 101 and stays open: marked to the last mid 102.5, entry fee only
    o = trades[1]
    assert (o["direction"], o["entry_price_ticks"], float(o["exit_price_ticks"])) == ("-1", "101", 102.5)
    assert o["exit_price"] == "1.025" and o["exit_signal_ts"] == ""
    assert float(o["net_ticks"]) == pytest.approx(-1.5 - 10e-4 * 101, rel=1e-12)
    p = summary["groups"][0]["pnl"]
    assert (p["trades"], p["closed"], p["open_at_end"], p["wins"]) == (2, 1, 1, 0)
    assert p["net_ticks"] == pytest.approx(-1 - fees - 1.5 - 10e-4 * 101, rel=1e-12)
    assert p["net_quote"] == pytest.approx(p["net_ticks"] * 0.01, rel=1e-12)


def test_a_position_open_when_its_book_went_stale_is_marked_to_its_last_mid(tmp_path):
    """Found by adversarial passes: a position still open when its book went out of sync (a
    daemon's store ends with STALE markers once its feed is silent) had no mark: every open
    position of a daemon's store was left out of the sums (open_unmarked, win_rate null). It is
    marked to the last mid its book had in sync; and the sums add up (its entry fee stayed in
    fees_ticks when it was left out: gross - fees was not net, off by 99.9996 ticks)."""
    from tickwire.engine.pipeline import Engine, RuleConfig
    from tickwire.ext import Kind, Side, empty_events
    from tickwire.ext.records import Flag
    from tickwire.feeds.synthetic import l2_updates, synthetic_instruments

    inst = synthetic_instruments(1)
    eng = Engine(inst, rules=[RuleConfig("zscore", enter=2.5, exit=1.0, min_count=50)], clock="event")
    ev = l2_updates(200_000)
    rb = ReportBuilder(inst, horizons_ns=(1_000_000,), fee_bps=1.0, plots=False)
    eng.process(ev)
    rb.add(ev, eng.take_signals())
    mark = eng.features(0)["mid"]              # the last mid in sync
    stale = empty_events(1)                    # the feed went silent: the STALE marker a daemon stores
    stale["kind"], stale["side"], stale["flags"] = Kind.SNAPSHOT, Side.NONE, Flag.SNAPSHOT | Flag.STALE
    stale["ts_event"], stale["ts_recv"], stale["instrument"] = ev["ts_event"][-1], ev["ts_recv"][-1], 0
    eng.process(stale)
    rb.add(stale, eng.take_signals())
    p = rb.finish(tmp_path / "r")["groups"][0]["pnl"]
    assert p["open_unmarked"] == 0 and p["open_at_end"] >= 1, p
    opened = [t for t in read_csv(tmp_path / "r" / "trades.csv") if t["exit_reason"] == "open_at_end"]
    assert opened and all(float(t["exit_price_ticks"]) == mark for t in opened), (opened, mark)
    assert p["gross_ticks"] - p["fees_ticks"] == pytest.approx(p["net_ticks"], abs=1e-6)


def test_the_sums_leave_an_unmarked_open_trade_out_of_every_figure(tmp_path):
    """A position open at the end of an instrument that never had a two-sided book in sync has
    no mark: it is left out of gross_ticks, net_ticks and fees_ticks alike (its entry fee stayed
    in fees_ticks once: gross - fees was not net)."""
    e = ev([(1000, 0, SET, A, 102, 5), (2000, 0, SET, A, 103, 5), (3000, 0, SET, A, 104, 5)])   # asks only
    rb = ReportBuilder([Instrument(0, "X", tick_size="0.01", lot_size="1")], horizons_ns=(500,), fee_bps=1.0)
    rb.add(e, sig(e[0], direction=1))
    p = rb.finish(tmp_path / "r")["groups"][0]["pnl"]
    assert p["open_unmarked"] == 1 and p["trades"] == 1, p
    assert p["gross_ticks"] - p["fees_ticks"] == pytest.approx(p["net_ticks"], abs=1e-6)
    assert p["fees_ticks"] == 0.0, p


def test_hand_latency_moves_the_fills(tmp_path):
    # 600 ns after the ENTER (2600) the ask is 104; after the EXIT (3600) the bid is 101
    _, out = hand_case(tmp_path, latency=600)
    trades = read_csv(out / "trades.csv")
    assert [(t["entry_price_ticks"], t["exit_price_ticks"], t["exit_reason"]) for t in trades] == [
        ("104", "101", "exit"), ("101", "102.5", "open_at_end")]
    assert (trades[0]["entry_fill_ts"], trades[0]["exit_fill_ts"]) == ("2600", "3600")
    assert float(trades[0]["gross_ticks"]) == -3.0
    # 1000 ns: the ENTER fills at 3000 (bid 101 / ask 104: buys at 104); the EXIT (4000) and the
    # sell (4001) fall after the last event: never filled, the long is marked to 102.5
    _, out = hand_case(tmp_path / "c", latency=1000)
    trades = read_csv(out / "trades.csv")
    assert [(t["entry_price_ticks"], t["exit_price_ticks"], t["exit_reason"]) for t in trades] == [
        ("104", "102.5", "open_at_end")]
    p = json.loads((out / "summary.json").read_text())["groups"][0]["pnl"]
    assert (p["fills_after_end"], p["trades"], p["open_at_end"], p["gross_ticks"]) == (2, 1, 1, -1.5)
    # 499 ns: the book at 2499 still has the ask 102
    _, out = hand_case(tmp_path / "b", latency=499)
    assert read_csv(out / "trades.csv")[0]["entry_price_ticks"] == "102"


def test_hand_case_any_cut(tmp_path):
    want, out0 = hand_case(tmp_path / "a")
    for cuts in ([1], [2], [1, 2], [2, 4, 5], [1, 2, 3, 4, 5, 6], [5], [6]):
        got, out = hand_case(tmp_path / str(cuts), cuts=cuts)
        assert strip(got) == strip(want), cuts
        for name in ("markouts.csv", "trades.csv", "summary.csv"):
            assert (out / name).read_bytes() == (out0 / name).read_bytes(), (cuts, name)


def strip(summary):
    return {k: v for k, v in summary.items() if k not in ("batches",)}


def test_simultaneous_events_and_several_instruments(tmp_path):
    """Events stamped exactly t + h count; another instrument's events pass time for an
    instrument that has none (its book simply did not change)."""
    rows = [
        (10, 0, SET, B, 100, 1), (10, 0, SET, A, 110, 1),        # inst 0: mid 105
        (10, 1, SET, B, 50, 1), (10, 1, SET, A, 52, 1),          # inst 1: mid 51; the signals
        (20, 0, SET, B, 104, 1),                                 # inst 0: mid 107
        (30, 1, SET, A, 51, 1), (30, 1, SET, A, 52, 0),          # inst 1: 50/51, mid 50.5 at 30
        (30, 0, SET, B, 106, 1),                                 # inst 0: mid 108 at 30
        (45, 0, SET, A, 107, 1),                                 # inst 0: mid 106.5 at 45
        (50, 1, SET, B, 49, 1),                                  # inst 1: behind the top
    ]
    e = ev(rows)
    insts = [Instrument(0, "A0", tick_size="0.5"), Instrument(1, "A1", tick_size="0.01")]
    signals = np.concatenate([sig(e[3], direction=-1, rule_id=7), sig(e[3], direction=1, rule_id=8),
                              sig(e[1], direction=1, rule_id=7)])
    signals = signals[[2, 0, 1]]                             # engine order: event 1 first
    rb = ReportBuilder(insts, horizons_ns=(20, 34, 35, 40), plots=False)
    rb.add(e, signals)
    s = rb.finish(tmp_path)
    g = {(x["rule_id"], x["instrument"]): x for x in s["groups"]}
    # rule 7 on inst 0, buy at 105: +20 -> 108 (the event at 30 counts), +34 -> 108,
    # +35 -> 106.5 (the event at exactly 45), +40 -> nothing after 50: unresolved
    m = g[(7, 0)]["markouts"]
    assert [m[h]["mean_ticks"] for h in ("20ns", "34ns", "35ns", "40ns")] == [3.0, 3.0, 1.5, None]
    assert m["40ns"]["unresolved"] == 1
    assert m["35ns"]["mean_bps"] == pytest.approx(1.5 / 105 * 1e4, rel=1e-12)
    assert m["35ns"]["hit_rate"] == 1.0
    # rule 7 on inst 1, sell at 51: 50.5 at +20; at +34 (44) inst 1 has no new event, but inst
    # 0's event at 45 shows time passed: still 50.5
    m = g[(7, 1)]["markouts"]
    assert [m[h]["mean_ticks"] for h in ("20ns", "34ns", "35ns", "40ns")] == [0.5, 0.5, 0.5, None]
    assert m["34ns"]["mean_bps"] == pytest.approx(0.5 / 51 * 1e4, rel=1e-12)
    assert g[(8, 1)]["markouts"]["20ns"]["mean_ticks"] == -0.5
    assert g[(8, 1)]["markouts"]["20ns"]["hit_rate"] == 0.0


def test_signal_belongs_to_its_whole_message(tmp_path):
    """Events of one exchange message share instrument, ts_event, seq and ts_recv, so a signal
    cannot say which of them fired it: mid0 and a fill at latency 0 use the book after the
    whole message."""
    e = ev([
        (100, 0, SET, B, 100, 1), (100, 0, SET, A, 102, 1),                          # mid 101
        (200, 0, SET, A, 103, 1), (200, 0, SET, A, 102, 0), (200, 0, SET, B, 101, 1),  # mid 102
        (300, 0, SET, B, 102, 1),                                                    # mid 102.5
        (400, 0, SET, B, 50, 1),
    ])
    e["seq"] = [1, 1, 2, 2, 2, 3, 4]
    signals = np.concatenate([sig(e[2], rule_id=0, direction=1), sig(e[4], rule_id=1, direction=-1)])
    rb = ReportBuilder([Instrument(0, "X")], horizons_ns=(100,), plots=False)
    rb.add(e, signals)
    s = rb.finish(tmp_path)
    rows = read_csv(tmp_path / "markouts.csv")
    assert [float(r["mid0_ticks"]) for r in rows] == [102.0, 102.0]
    assert [float(r["markout_100ns_ticks"]) for r in rows] == [0.5, -0.5]
    trades = read_csv(tmp_path / "trades.csv")
    assert [(t["rule_id"], t["entry_price_ticks"]) for t in trades] == [("0", "103"), ("1", "101")]
    assert s["groups"][0]["markouts"]["100ns"]["hit_rate"] == 1.0


def test_a_bad_stamp_moves_no_clock(tmp_path):
    """An event stamped in 2100, a day more after its receipt (a publisher's bad stamp), moved the
    report's clock to 2100: every horizon still pending resolved at it, with the book of that
    moment. It moves no clock now: with such an event (a level behind the top) after the ask
    leaves, the markouts are the hand case's."""
    rows = list(HAND)
    rows.insert(3, (2550, 0, SET, B, 50, 1))
    e = ev(rows)
    e["ts_event"][3] = 4_102_444_800 * 10**9                # 2100; received at 2555
    sigs = np.concatenate([sig(e[1], direction=1), sig(e[5], direction=0, flags=EXIT), sig(e[6], direction=-1)])
    rb = ReportBuilder([Instrument(0, "X", tick_size="0.01", lot_size="1")], horizons_ns=(500, 1000, 1001, 5000))
    rb.add(e, sigs)
    rb.finish(tmp_path / "bad")
    _, out = hand_case(tmp_path / "hand")
    def unnumbered(path):                                   # (one event more: later sequence numbers)
        return [{k: v for k, v in r.items() if k != "seq"} for r in read_csv(path)]
    assert unnumbered(tmp_path / "bad" / "markouts.csv") == unnumbered(out / "markouts.csv")


@pytest.mark.parametrize("stamp", [0, 4_102_444_800 * 10**9], ids=["past", "2100"])
def test_a_signal_on_a_badly_stamped_event_is_timed_where_it_was_received(tmp_path, stamp):
    """Found by an adversarial pass: a signal fired by an event stamped 0 (or 2100) had its
    horizons resolved at once (markout 0 "ok" at 1 s in data of 0.28 s) or never (unresolved,
    its trades filled after the end): the report timed it by the stamp, though the event itself
    moved no clock. Each is timed as its event is, at the clock it met (here the event before it,
    at 1000): the figures of the same stream with that event stamped so."""
    day10 = 10 * 86_400 * 10**9

    def report(first_stamp, where):
        e = ev([(ts + day10, *rest) for ts, *rest in HAND])
        e["ts_event"][1] = first_stamp                      # the ENTER's event: received at 2005 + day10
        sigs = np.concatenate([sig(e[1], direction=1), sig(e[4], direction=0, flags=EXIT),
                               sig(e[5], direction=-1)])
        rb = ReportBuilder([Instrument(0, "X", tick_size="0.01", lot_size="1")], horizons_ns=(500, 1000, 1001, 5000))
        rb.add(e, sigs)
        rb.finish(where)

    report(stamp, tmp_path / "bad")
    report(1000 + day10, out := tmp_path / "hand")

    def figures(path):
        return [{k: v for k, v in r.items() if k != "ts_event" and not k.endswith("signal_ts")} for r in read_csv(path)]

    assert figures(tmp_path / "bad" / "markouts.csv") == figures(out / "markouts.csv")
    bad, hand = figures(tmp_path / "bad" / "trades.csv"), figures(out / "trades.csv")
    assert [t["exit_reason"] for t in bad] == [t["exit_reason"] for t in hand] and len(bad) == 2
    assert [t["entry_price_ticks"] for t in bad] == [t["entry_price_ticks"] for t in hand]


def test_stream_out_of_time_order(tmp_path):
    """Out of time order, the stream's own order decides: the book at t + h is the one before
    the first event stamped after t + h, and never one from before the signal."""
    rows = [
        (100, 0, SET, B, 100, 1),
        (300, 0, SET, A, 104, 1),       # already past 250
        (200, 0, SET, A, 102, 1),       # the signal: mid0 101
        (250, 0, SET, B, 101, 1),       # mid 101.5, but after an event stamped 300
        (400, 0, SET, B, 90, 1),
        (500, 0, SET, B, 80, 1),
    ]
    e = ev(rows)
    rb = ReportBuilder([Instrument(0, "X")], horizons_ns=(50, 150), plots=False)
    rb.add(e, sig(e[2]))
    m = rb.finish(tmp_path)["groups"][0]["markouts"]
    assert m["50ns"]["mean_ticks"] == 0.0            # the book just after the signal
    assert m["150ns"]["mean_ticks"] == 0.5           # 350: the book before the event at 400
    # a message stamped 200 arriving after an event stamped 500: mid0 is after the whole message
    e = ev([(100, 0, SET, B, 100, 1), (100, 0, SET, A, 104, 1), (500, 0, SET, B, 90, 1),
            (200, 0, SET, A, 102, 1), (200, 0, SET, B, 101, 1), (600, 0, SET, B, 80, 1)])
    e["seq"] = [1, 1, 5, 2, 2, 6]
    rb = ReportBuilder([Instrument(0, "X")], horizons_ns=(50,), plots=False)
    rb.add(e, sig(e[3]))
    rb.finish(tmp_path / "b")
    assert read_csv(tmp_path / "b" / "markouts.csv")[0]["mid0_ticks"] == "101.5"


def test_exit_while_flat_repeat_and_reversal(tmp_path):
    rows = [(t, 0, SET, B if t % 2 else A, 100 if t % 2 else 101, 1) for t in range(1, 12)]
    e = ev(rows)                                  # bid 100 / ask 101 from t=2 on
    order = [(2, EXIT, 0), (3, ENTER, 1), (4, ENTER, 1), (5, ENTER, -1), (6, EXIT, 0), (7, EXIT, 0),
             (8, ENTER, 0), (9, ENTER, -1)]
    signals = np.concatenate([sig(e[k - 1], direction=d, flags=f) for k, f, d in order])
    rb = ReportBuilder([Instrument(0, "X")], horizons_ns=(1,), plots=False)
    rb.add(e, signals)
    s = rb.finish(tmp_path)
    p = s["groups"][0]["pnl"]
    assert p["exits_while_flat"] == 2 and p["ignored_enters"] == 1
    assert s["groups"][0]["enter_without_direction"] == 1
    trades = read_csv(tmp_path / "trades.csv")
    # long at 101 (t=3), reversed at t=5: sold at 100; short at 100, closed at t=6 buying at 101;
    # short again at t=9 (100), open at the end: marked to the mid 100.5
    assert [(t["direction"], t["entry_price_ticks"], t["exit_price_ticks"], t["exit_reason"]) for t in trades] == [
        ("1", "101", "100", "reverse"), ("-1", "100", "101", "exit"), ("-1", "100", "100.5", "open_at_end")]
    assert p["net_ticks"] == -2.5 and p["trades"] == 3


def test_bad_input(tmp_path):
    e = ev(HAND)
    rb = ReportBuilder([Instrument(0, "X")], plots=False)
    with pytest.raises(ValueError, match="no triggering event"):
        rb.add(e[:2], sig(e[3]))
    with pytest.raises(TypeError, match="EVENT_DTYPE"):
        rb.add(np.zeros(3), np.zeros(0, SIGNAL_DTYPE))
    with pytest.raises(ValueError, match="horizons_ns"):
        ReportBuilder([Instrument(0, "X")], horizons_ns=(0,), plots=False)
    with pytest.raises(ValueError, match="latency_ns"):
        ReportBuilder([Instrument(0, "X")], latency_ns=-1, plots=False)
    rb.finish(tmp_path)
    with pytest.raises(RuntimeError):
        rb.add(e, np.zeros(0, SIGNAL_DTYPE))


def test_missing_matplotlib_is_one_clear_line(monkeypatch, tmp_path):
    import builtins
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError) as err:
        ReportBuilder([Instrument(0, "X")])
    assert "pip install 'matplotlib>=3.7'" in str(err.value) and "\n" not in str(err.value)
    rb = ReportBuilder([Instrument(0, "X")], plots=False)     # no plots: no matplotlib needed
    e = ev(HAND)
    rb.add(e, sig(e[1]))
    assert rb.finish(tmp_path)["files"] == ["summary.json", "summary.csv", "rules.csv", "markouts.csv", "trades.csv"]


def test_horizon_names():
    assert [horizon_name(h) for h in (100_000_000, 1_000_000_000, 60_000_000_000, 1500, 2000)] == \
        ["100ms", "1s", "60s", "1500ns", "2us"]


# -- real signals from the engine against the plain computation -------------------------------
RULES = [
    RuleConfig("zscore", enter=2.0, exit=0.5, min_count=30, emit_exit=True),
    RuleConfig("imbalance", enter=0.7, exit=0.2, emit_exit=True),
    RuleConfig("ewma_cross", enter=0.2, min_count=10),           # no EXITs: reversals only
]


SYN_STATS = StatsConfig(window="count", window_size=200, ewma_fast_halflife_ns=20_000, ewma_slow_halflife_ns=200_000)
SYN_HORIZONS = (10_000, 100_000, 1_000_000, 10_000_000)      # the stream spans ~15 ms


@pytest.fixture(scope="module")
def synthetic():
    insts = synthetic_instruments(3)
    events = l2_updates(12_000, seed=5, instruments=3)
    return insts, events, signals_with_triggers(insts, RULES, events, SYN_STATS)


def build(insts, events, cuts, latency=0, fee_bps=0.0, out=None, plots=False):
    rb = ReportBuilder(insts, horizons_ns=SYN_HORIZONS, latency_ns=latency, fee_bps=fee_bps, plots=plots)
    for batch, signals in run_engine(insts, RULES, events, cuts, SYN_STATS):
        rb.add(batch, signals)
    return rb.finish(out, partial=False)


@pytest.mark.parametrize("latency,fee_bps", [(0, 0.0), (5_000, 2.5)])
def test_engine_signals_match_plain_computation(synthetic, tmp_path, latency, fee_bps):
    insts, events, sig_at = synthetic
    assert np.all(np.diff(events["ts_event"]) > 0)               # in time order
    kinds = {int(s["rule_id"]) for _, s in sig_at}
    assert kinds == {0, 1, 2} and any(int(s["flags"]) & EXIT for _, s in sig_at)
    summary = build(insts, events, [3000, 7777], latency, fee_bps, out=tmp_path)
    ref_marks, ref_trades = reference_report(events, sig_at, SYN_HORIZONS, latency, fee_bps, [0, 1, 2])

    # every directional signal's markout, row for row
    rows = read_csv(tmp_path / "markouts.csv")
    assert len(rows) == len(ref_marks) > 100
    assert_markouts(rows, ref_marks, SYN_HORIZONS, bps=True)
    names = [horizon_name(h) for h in SYN_HORIZONS]
    statuses = {s for *_, status in ref_marks for s in status}
    assert {"ok", "unresolved"} <= statuses                        # both sides of the end of data

    # the summary's figures from the reference rows with numpy
    groups = {(g["rule_id"], g["instrument"]): g for g in summary["groups"]}
    for (rule, inst), g in groups.items():
        mine = [m for m in ref_marks if (m[0], m[1]) == (rule, inst)]
        assert g["signals"] == sum(1 for _, s in sig_at if (int(s["rule_id"]), int(s["instrument"])) == (rule, inst))
        for h, name in enumerate(names):
            v = np.array([m[4][h] for m in mine if m[4][h] is not None], float)
            bps = np.array([m[4][h] / m[3] * 1e4 for m in mine if m[4][h] is not None], float)
            got = g["markouts"][name]
            assert got["resolved"] == len(v)
            assert got["unresolved"] == sum(m[5][h] == "unresolved" for m in mine)
            if len(v):
                assert got["mean_ticks"] == pytest.approx(v.mean(), rel=1e-12, abs=1e-12)
                assert got["median_ticks"] == np.median(v)
                assert got["mean_bps"] == pytest.approx(bps.mean(), rel=1e-9, abs=1e-12)
                assert got["median_bps"] == pytest.approx(np.median(bps), rel=1e-12, abs=1e-12)
                assert got["hit_rate"] == np.count_nonzero(v > 0) / len(v)

    # trades, in the order of the reference per (rule, instrument)
    trades = read_csv(tmp_path / "trades.csv")
    assert len(trades) == len(ref_trades) > 20
    by_key = {}
    for t in trades:
        by_key.setdefault((int(t["rule_id"]), int(t["instrument"])), []).append(t)
    ref_by_key = {}
    for t in ref_trades:
        ref_by_key.setdefault(t[0], []).append(t)
    assert set(by_key) == set(ref_by_key)
    for key, ref in ref_by_key.items():
        got = by_key[key]                                       # a key's trades in closing order
        assert len(got) == len(ref)
        for t, (_, d, entry, exit_, gross, fees) in zip(got, ref):
            assert (int(t["direction"]), int(t["entry_price_ticks"]), float(t["exit_price_ticks"])) == (d, entry, exit_)
            assert float(t["gross_ticks"]) == gross
            assert float(t["fees_ticks"]) == pytest.approx(fees, rel=1e-12, abs=1e-15)
        p = groups[(key[0], key[1])]["pnl"]
        assert p["trades"] == len(ref)
        assert p["net_ticks"] == pytest.approx(sum(r[4] - r[5] for r in ref), rel=1e-9, abs=1e-9)
        assert p["wins"] == sum(1 for r in ref if r[4] - r[5] > 0)
    assert_rule_totals(summary, tmp_path, sig_at, ref_marks, ref_trades, names)


def assert_rule_totals(summary, out, sig_at, ref_marks, ref_trades, names):
    """Per-rule totals across instruments (summary.json "rules", rules.csv) against the plain
    reference's rows and trades, pooled by rule."""
    rules = {r["rule_id"]: r for r in summary["rules"]}
    assert set(rules) == {int(s["rule_id"]) for _, s in sig_at}
    csv_rows = read_csv(out / "rules.csv")
    assert len(csv_rows) == len(rules) * len(names)
    for rule, r in rules.items():
        assert r["signals"] == sum(1 for _, s in sig_at if int(s["rule_id"]) == rule)
        assert r["instruments"] == sorted({int(s["instrument"]) for _, s in sig_at if int(s["rule_id"]) == rule})
        mine = [m for m in ref_marks if m[0] == rule]
        for h, name in enumerate(names):
            ok = [m for m in mine if m[4][h] is not None]
            bps = np.array([m[4][h] / m[3] * 1e4 for m in ok], float)
            got = r["markouts"][name]
            assert "mean_ticks" not in got                            # ticks differ across instruments
            assert got["resolved"] == len(ok)
            assert got["unresolved"] == sum(m[5][h] == "unresolved" for m in mine)
            if len(ok):
                assert got["mean_bps"] == pytest.approx(bps.mean(), rel=1e-9, abs=1e-12)
                assert got["median_bps"] == pytest.approx(np.median(bps), rel=1e-9, abs=1e-12)
                assert got["hit_rate"] == sum(1 for m in ok if m[4][h] > 0) / len(ok)
            row = next(c for c in csv_rows if int(c["rule_id"]) == rule and c["horizon"] == name)
            assert int(row["resolved"]) == got["resolved"] and int(row["signals"]) == r["signals"]
            assert same(row["mean_bps"], got["mean_bps"])
        tr = [t for t in ref_trades if t[0][0] == rule]
        net_bps = [(t[4] - t[5]) / t[2] * 1e4 for t in tr]
        assert r["pnl"]["trades"] == len(tr)
        assert r["pnl"]["wins"] == sum(1 for t in tr if t[4] - t[5] > 0)
        assert r["pnl"]["net_bps_sum"] == pytest.approx(sum(net_bps), rel=1e-9, abs=1e-9)
        assert "net_ticks" not in r["pnl"] and "net_quote" not in r["pnl"]


def test_batch_cuts_do_not_change_the_report(synthetic, tmp_path):
    insts, events, _ = synthetic
    want = build(insts, events, [], 1_000, 1.0, out=tmp_path / "whole")
    rng = np.random.default_rng(3)
    for trial in range(3):
        cuts = sorted(set(rng.integers(1, len(events), size=int(rng.integers(1, 40))).tolist()))
        out = tmp_path / f"cut{trial}"
        got = build(insts, events, cuts, 1_000, 1.0, out=out)
        assert strip(got) == strip(want)
        for name in ("markouts.csv", "trades.csv", "summary.csv"):
            assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_plots_are_png_images(synthetic, tmp_path):
    insts, events, _ = synthetic
    summary = build(insts, events, [5000], out=tmp_path, plots=True)
    for name in ("pnl.png", "markouts.png", "signals.png"):
        assert name in summary["files"]
        w, h = png_size(tmp_path / name)
        assert w > 300 and h > 200
    import matplotlib.image
    img = matplotlib.image.imread(tmp_path / "signals.png")
    assert img.ndim == 3 and img.std() > 0                       # something is drawn
    assert not list(tmp_path.glob(".*tmp*"))                    # no temporary file left


def test_partial_report(tmp_path):
    e = ev(HAND)
    rb = ReportBuilder([Instrument(0, "X")])
    rb.add(e[:3], sig(e[1]))
    s = rb.finish(tmp_path, partial=True)
    assert s["partial"] is True and json.loads((tmp_path / "summary.json").read_text())["partial"] is True
    assert s["interrupted_batch"] is False and s["events"] == 3
    png_size(tmp_path / "pnl.png")


def test_stop_inside_add_is_reported(tmp_path, monkeypatch):
    e = ev(HAND)
    rb = ReportBuilder([Instrument(0, "X")], plots=False)
    rb.add(e[:3], sig(e[1]))

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(rb, "_take_signals", interrupt)
    with pytest.raises(KeyboardInterrupt):
        rb.add(e[3:], sig(e[4], direction=0, flags=EXIT))
    s = rb.finish(tmp_path, partial=True)
    assert s["partial"] is True and s["interrupted_batch"] is True


# -- Hypothesis: random small streams with ties and random signals ----------------------------
@st.composite
def streams(draw):
    n = draw(st.integers(2, 60))
    ninst = draw(st.integers(1, 3))
    gaps = draw(st.lists(st.sampled_from([0, 0, 1, 3, 10]), min_size=n, max_size=n))
    ts = 100 + np.cumsum(gaps)
    rows = []
    for k in range(n):
        side = draw(st.sampled_from([B, A]))
        price = draw(st.integers(95, 100)) if side == B else draw(st.integers(101, 106))
        rows.append((int(ts[k]), draw(st.integers(0, ninst - 1)), SET, side, price, draw(st.sampled_from([0, 1, 2]))))
    e = ev(rows)
    picks = sorted(draw(st.lists(st.integers(0, n - 1), max_size=12)))
    sigs = []
    for k in picks:
        flags = draw(st.sampled_from([ENTER, ENTER, EXIT]))
        d = 0 if flags == EXIT else draw(st.sampled_from([1, -1, 1, -1, 0]))
        sigs.append((k, sig(e[k], rule_id=draw(st.integers(0, 1)), direction=d, flags=flags)[0]))
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=4))))
    return ninst, e, sigs, cuts


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.sampled_from([(1, 5), (3, 7, 20)]), st.sampled_from([0, 2, 10]), st.sampled_from([0.0, 5.0]))
def test_random_streams_match_plain_computation(stream, horizons, latency, fee_bps):
    import tempfile
    ninst, e, sigs, cuts = stream
    insts = [Instrument(i, f"I{i}") for i in range(ninst)]
    rb = ReportBuilder(insts, horizons_ns=horizons, latency_ns=latency, fee_bps=fee_bps, plots=False)
    bounds = [0, *cuts, len(e)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        s = [x for k, x in sigs if a <= k < b]
        rb.add(e[a:b], np.array(s, SIGNAL_DTYPE))
    with tempfile.TemporaryDirectory() as d:
        summary = rb.finish(d)
        rows = read_csv(Path(d) / "markouts.csv")
        trades = read_csv(Path(d) / "trades.csv")
    ref_marks, ref_trades = reference_report(e, sigs, horizons, latency, fee_bps, list(range(ninst)))
    assert len(rows) == len(ref_marks)
    assert_markouts(rows, ref_marks, horizons)
    names = [horizon_name(h) for h in horizons]
    got = [((int(t["rule_id"]), int(t["instrument"])), int(t["direction"]), int(t["entry_price_ticks"]),
            fnum(t["exit_price_ticks"])) for t in trades]
    assert len(trades) == len(ref_trades)
    # per key in closing order (the file is by exit time; a key's trades close one after another)
    for key in {t[0] for t in ref_trades}:
        mine = [(g[1], g[2], g[3]) for g in got if g[0] == key]
        ref = [(r[1], r[2], None if (isinstance(r[3], float) and math.isnan(r[3])) else r[3])
               for r in ref_trades if r[0] == key]
        assert mine == ref, key
    for g in summary["groups"]:
        for name in names:
            m = g["markouts"][name]
            if m["resolved"] == 0:
                assert m["mean_ticks"] is None and m["hit_rate"] is None


def test_real_capture_matches_plain_computation(binance, tmp_path):
    """The Binance capture (arrival order: trades and diffs are not in one time order) with
    time windows: every markout and trade equals the plain computation."""
    events = binance.events
    assert np.any(np.diff(events["ts_event"]) < 0)
    rules = [RuleConfig("imbalance", enter=0.9, exit=0.3, emit_exit=True),
             RuleConfig("vwap", enter=1.0, exit=0.2, min_count=20),
             RuleConfig("zscore", enter=2.0, exit=0.5, min_count=50, emit_exit=True)]
    stats = StatsConfig(window="time", window_size=5_000_000_000, trade_window="time",
                        trade_window_size=5_000_000_000, sample="message")
    sig_at = signals_with_triggers(binance.instruments, rules, events, stats)
    assert len(sig_at) > 100
    rb = ReportBuilder(binance.instruments, latency_ns=2_000_000, fee_bps=1.0)   # 100 ms .. 60 s
    eng = Engine(binance.instruments, rules, stats, clock="event")
    for a in range(0, len(events), 20_000):
        eng.process(events[a:a + 20_000])
        rb.add(events[a:a + 20_000], eng.take_signals())
    summary = rb.finish(tmp_path)
    ref_marks, ref_trades = reference_report(events, sig_at, report_horizons(rb), 2_000_000, 1.0, [0],
                                             lambda i: binance.instruments[i].make_book())
    rows = read_csv(tmp_path / "markouts.csv")
    assert len(rows) == len(ref_marks)
    for row, (rule, inst, d, m0, vals, status) in zip(rows, ref_marks):
        assert same(row["mid0_ticks"], m0)
        for name, v, stt in zip(rb.horizon_names, vals, status):
            assert (row[f"status_{name}"], fnum(row[f"markout_{name}_ticks"])) == (stt, v)
    trades = read_csv(tmp_path / "trades.csv")
    got = sorted((int(t["rule_id"]), int(t["direction"]), int(t["entry_price_ticks"]), float(t["exit_price_ticks"]))
                 for t in trades)
    assert got == sorted((k[0], d, e, x) for k, d, e, x, *_ in ref_trades) and len(got) > 20
    assert summary["groups"][0]["markouts"]["60s"]["resolved"] > 0


def report_horizons(rb):
    return [int(h) for h in rb.horizons]



def test_vectorised_csv_formatting_equals_the_csv_module():
    """The report's column formatter writes what csv.writer wrote from _num (the files stay
    byte-compatible): integers without a fraction, shortest round-trip reprs, empty NaN."""
    import io

    from tickwire.replay.report import _csv_field, _num, _num_strings

    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(size=5000) * 10.0 ** rng.integers(-12, 18, 5000), np.round(rng.normal(size=500) * 1e6),
                        np.arange(-3, 3) / 2, [0.0, -0.0, np.nan, np.inf, -np.inf, 2.0 ** 53, 2.0 ** 53 - 1, -2.0 ** 60,
                                               1e-5, 1e16, 5e-324, 1.7976931348623157e308]])
    assert _num_strings(x).tolist() == [str(_num(v)) for v in x.tolist()]
    for text in ["plain", "a,b", 'say "x"', "two\nlines", "", "r\r"]:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([text, "z"])
        assert buf.getvalue() == _csv_field(text) + ",z\n"


def test_a_bad_stamp_first_gives_no_time_of_int64_min(tmp_path):
    """A review: a stream whose first event is a bad stamp reported first_ts_event -2**63 (and
    its mid samples were timed so)."""
    e = ev(HAND)
    e["ts_event"][0] = 4_102_444_800 * 10**9
    rb = ReportBuilder([Instrument(0, "X", tick_size="0.01", lot_size="1")], horizons_ns=(500,), plots=False)
    rb.add(e, sig(e[1]))
    summary = rb.finish(tmp_path)
    assert (summary["first_ts_event"], summary["last_ts_event"]) == (2000, 4000)
    text = json.dumps(summary)
    assert str(-(1 << 63)) not in text and "4102444800" not in text, text[:2000]


def test_the_plot_s_mid_samples_are_held_in_pieces_bounded_by_the_samples_not_the_batches():
    """Found by an adversarial pass: every add() appended a piece of mid samples per instrument,
    empty once the stride had grown, and summed the pieces' sizes each time: --report made a
    replay in batches of 16 take 21 s against 0.38 s without it. The pieces held stay no more
    than the samples (none empty), however many batches; the samples are those of one batch."""
    insts = synthetic_instruments(2)
    events = l2_updates(24_000, seed=7, instruments=2)
    whole = ReportBuilder(insts, horizons_ns=SYN_HORIZONS, plots=False)
    whole.add(events, np.empty(0, SIGNAL_DTYPE))
    rb = ReportBuilder(insts, horizons_ns=SYN_HORIZONS, plots=False)
    for k in range(0, len(events), 2):
        rb.add(events[k:k + 2], np.empty(0, SIGNAL_DTYPE))
        if k % 2000 == 0:
            for i, pieces in rb._mid_ts.items():
                assert all(p.shape[1] for p in pieces), (k, i, len(pieces))       # no empty piece
                assert len(pieces) <= max(1, sum(p.shape[1] for p in pieces)), (k, i)
    for i in whole._mid_ts:
        assert rb._mid_stride[i] == whole._mid_stride[i] > 1
        assert len(rb._mid_ts[i]) <= sum(p.shape[1] for p in rb._mid_ts[i]) <= 4001
        assert np.concatenate(rb._mid_ts[i], axis=1).tobytes() == np.concatenate(whole._mid_ts[i], axis=1).tobytes()
        assert np.concatenate(rb._mid_v[i]).tobytes() == np.concatenate(whole._mid_v[i]).tobytes()
