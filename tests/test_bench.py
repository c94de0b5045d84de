"""`tickwire bench`: the latency arithmetic, coordinated omission, the outputs, compare, a real run."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from tickwire.engine import bench
from tickwire.engine.cli import main as cli_main


def _pub(rows):
    """Publisher records from (chan, first seq, count, intended) rows."""
    a = np.array(rows, dtype=np.int64)
    return {"chan": a[:, 0].astype(np.uint16), "seq": a[:, 1].astype(np.uint64), "count": a[:, 2].astype(np.uint32),
            "intended": a[:, 3], "sent": a[:, 3]}


def _sig(rows):
    """Consumer records from (seq, instrument, ts_recv, ts_signal, receipt) rows."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return {"seq": a[:, 0].astype(np.uint64), "inst": a[:, 1].astype(np.uint32), "ts_recv": a[:, 2],
            "ts_signal": a[:, 3], "receipt": a[:, 4]}


def test_latency_arithmetic_hand_computed():
    # channel 0: messages of 4 events from seq 1 and 5; channel 1 (instrument 1): seq 1..3
    pub = _pub([(0, 1, 4, 1_000), (1, 1, 3, 1_500), (0, 5, 4, 2_000)])
    sig = _sig([
        (3, 0, 1_200, 1_250, 1_400),    # 3rd event of channel 0's first message: meant at 1000
        (6, 0, 9_000, 9_100, 9_300),    # channel 0 seq 6: second message, meant at 2000 (sent late)
        (2, 1, 1_600, 1_610, 1_700),    # channel 1 seq 2: meant at 1500
        (99, 0, 1, 2, 3),               # a tick the publisher never sent
    ])
    lat = bench.latency_arrays(pub, sig, chan_of_inst=[0, 1])
    assert lat["unmatched"] == 1
    assert lat["wire_to_signal"].tolist() == [400, 7_300, 200]
    assert lat["wire_queue"].tolist() == [200, 7_000, 100]
    assert lat["engine"].tolist() == [50, 100, 10]
    assert lat["ring_hop"].tolist() == [150, 200, 90]
    # the stages add up to the whole
    assert (lat["wire_queue"] + lat["engine"] + lat["ring_hop"] == lat["wire_to_signal"]).all()
    # the warm-up: ticks meant before 1500 are left out
    late = bench.latency_arrays(pub, sig, chan_of_inst=[0, 1], t_from=1_500)
    assert late["wire_to_signal"].tolist() == [7_300, 200]


def _pub_sub(tag):
    """A PUB and a connected SUB (every tickwire topic, no HWM, a 20 ms receive timeout) on inproc."""
    ctx = zmq.Context()
    ep = f"inproc://{tag}-{time.monotonic_ns()}"
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(ep)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"tw.")
    sub.setsockopt(zmq.RCVTIMEO, 20)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(ep)
    time.sleep(0.2)
    return ctx, pub, sub


def test_relay_plan_names_each_signals_message():
    """The relay floor passes on the messages that carried the target's signals: each signal's
    message key (channel << 48 | first seq), its own seq and instrument, sorted by key."""
    pub = _pub([(0, 1, 4, 1_000), (1, 1, 3, 1_500), (0, 5, 4, 2_000)])
    sig = _sig([
        (6, 0, 0, 0, 0),                # channel 0, second message (seq 5..8)
        (2, 1, 0, 0, 0),                # channel 1, its first message
        (3, 0, 0, 0, 0),                # channel 0, first message
        (8, 0, 0, 0, 0),                # channel 0, second message again: two signals, two records
        (99, 0, 0, 0, 0),               # not a tick the publisher sent: nothing to relay
    ])
    plan = bench.relay_plan(pub, sig, chan_of_inst=[0, 1])
    assert plan["keys"].tolist() == [1, 5, 5, (1 << 48) | 1]
    assert plan["seq"].tolist() == [3, 6, 8, 2]
    assert plan["inst"].tolist() == [0, 0, 0, 1]
    assert plan["keys"].dtype == np.uint64 and plan["seq"].dtype == np.uint64 and plan["inst"].dtype == np.uint32


def test_the_relay_passes_on_exactly_the_planned_messages(tmp_path):
    """harness.subscribe as the relay floor: real PUB/SUB sockets, a real signal ring; every
    message whose key is planned goes into the ring at once (one record per planned signal,
    with its seq and instrument, stamped on receipt and at the push), no other message does,
    and every message is still stamped for the libzmq hop."""
    import os

    from tickwire.ext import SIGNAL_DTYPE, harness
    from tickwire.ext.ring import Ring

    stream = _encoded_stream(n_msgs=200)
    ctx, pub, sub = _pub_sub("relay")
    buf, off, ch = stream.encode(epoch=1)
    nmsg = 200
    start = harness.now_ns() + 50_000_000
    sched = harness.Schedule(buf, off, ch, start, 200_000.0)
    out = {"chan": np.empty(nmsg, np.uint16), "seq": np.empty(nmsg, np.uint64), "count": np.empty(nmsg, np.uint32),
           "intended": np.empty(nmsg, np.int64), "sent": np.empty(nmsg, np.int64)}
    # planned: messages 3, 50 (twice) and 199 by their first seq (10 events a message from seq 1);
    # a key no message has
    firsts = [1 + 10 * 3, 1 + 10 * 50, 1 + 10 * 50, 1 + 10 * 199, 7]
    keys = np.array(sorted(firsts), np.uint64)
    seqs = keys + np.uint64(2)                        # the signals' ticks: the 3rd event of each
    insts = np.arange(len(keys), dtype=np.uint32) + 40
    name = f"tw-test-relay-{os.getpid()}"
    ring = Ring.create(name, SIGNAL_DTYPE, 1 << 10, "broadcast", role="none", replace=True)
    prod = Ring.attach(name, SIGNAL_DTYPE, role="producer")
    cons = Ring.attach(name, SIGNAL_DTYPE)
    got = [np.empty(nmsg, np.uint64), np.empty(nmsg, np.uint16), np.empty(nmsg, np.int64), np.empty(nmsg, np.int64)]
    until = start + 2_000_000_000
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("n", harness.subscribe(
        sub, until, *got, relay=prod, relay_keys=keys, relay_seq=seqs, relay_inst=insts)))
    t.start()
    assert sched.publish(pub, start + 10**10, out["chan"], out["seq"], out["count"], out["intended"],
                         out["sent"]) == nmsg
    t.join()
    recs = np.zeros(16, SIGNAL_DTYPE)
    n = cons.pop_many(recs, timeout=0)
    for r in (cons, prod, ring):
        r.close()
    pub.close(0)
    sub.close(0)
    ctx.term()
    assert res["n"] == nmsg                           # every message stamped for the hop
    recs = recs[:n]
    assert n == 4                                     # the planned ones, the doubled one twice
    assert recs["seq"].tolist() == [33, 503, 503, 1993] and recs["instrument"].tolist() == [41, 42, 43, 44]
    assert (recs["ts_signal"] >= recs["ts_recv"]).all()
    recv_of = dict(zip(got[0].tolist(), got[3].tolist()))
    assert [recv_of[int(k)] for k in (31, 501, 501, 1991)] == recs["ts_recv"].tolist()
    # and through latency_arrays the relay's records read like the target's
    lat = bench.latency_arrays(out, {"seq": recs["seq"], "inst": np.zeros(n, np.uint32), "ts_recv": recs["ts_recv"],
                                     "ts_signal": recs["ts_signal"], "receipt": recs["ts_signal"] + 1},
                               chan_of_inst=[0])
    assert lat["unmatched"] == 0 and (lat["wire_queue"] >= 0).all() and (lat["ring_hop"] == 1).all()


def _encoded_stream(n_msgs=2000, per_msg=10):
    from tickwire.feeds.synthetic import synthetic_instruments

    stream = bench.synthetic_stream(synthetic_instruments(1, "L2"), 1, events=n_msgs * per_msg, batch=per_msg)
    return stream


def test_a_publisher_stall_shows_in_the_tail():
    """A 50 ms stall of the publisher: stamped from the intended send time, the messages meant
    to leave during the stall carry it; stamped from the moment they were sent, it vanishes."""
    from tickwire.ext import harness

    stream = _encoded_stream()
    ctx, pub, sub = _pub_sub("stall")
    buf, off, ch = stream.encode(epoch=1)
    rate = 20_000.0                                   # 2,000 messages/s of 10 events
    start = harness.now_ns() + 50_000_000
    sched = harness.Schedule(buf, off, ch, start, rate)
    nmsg = 1000                                       # 0.5 s
    out = {"chan": np.empty(nmsg, np.uint16), "seq": np.empty(nmsg, np.uint64), "count": np.empty(nmsg, np.uint32),
           "intended": np.empty(nmsg, np.int64), "sent": np.empty(nmsg, np.int64)}
    got = [np.empty(nmsg, np.uint64), np.empty(nmsg, np.uint16), np.empty(nmsg, np.int64), np.empty(nmsg, np.int64)]
    until = start + 2_000_000_000
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("n", harness.subscribe(sub, until, *got)))
    t.start()
    sent = sched.publish(pub, start + 10**10, out["chan"], out["seq"], out["count"], out["intended"], out["sent"],
                         stall_at=300, stall_ns=50_000_000)
    t.join()
    pub.close(0)
    sub.close(0)
    ctx.term()
    assert sent == nmsg and res["n"] == nmsg
    seq, _chan, send_time, recv = got
    # the header carries the schedule, not the moment of sending
    assert (send_time == out["intended"]).all()
    assert (send_time[1:] - send_time[:-1] == 500_000).all()       # 10 events at 20k/s
    assert (seq == out["seq"]).all() and seq[0] == 1 and (np.diff(seq.astype(np.int64)) == 10).all()
    intended_lat = recv - send_time
    sent_lat = recv - out["sent"]
    assert intended_lat.max() >= 50_000_000 - 500_000     # the stall began after message 299 left
    stalled = int((intended_lat >= 25_000_000).sum())
    assert stalled >= 40                              # the ~100 messages meant during the stall, most of them
    assert np.percentile(intended_lat, 99) >= 40_000_000   # 10 of 1000 messages meant in its first 5 ms
    # a receive-stamped (or send-stamped) measure forgives the stall
    assert int((sent_lat >= 25_000_000).sum()) < stalled / 4


def test_hgrm_and_interval_log_read_back_by_hdrh(tmp_path):
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    from tickwire.engine.latency import hgrm

    rng = np.random.default_rng(7)
    n = 5000
    intended = 1_700_000_000_000_000_000 + np.sort(rng.integers(0, 3_000_000_000, n))
    wq = rng.integers(1_000, 400_000, n)
    en = rng.integers(500, 50_000, n)
    rh = rng.integers(200, 30_000, n)
    lat = {"intended": intended, "wire_queue": wq, "engine": en, "ring_hop": rh, "wire_to_signal": wq + en + rh}
    rec = bench._recorder(lat["wire_to_signal"])
    ref = HdrHistogram(1, 60_000_000_000, 3)
    for v in lat["wire_to_signal"].tolist():
        ref.record_value(v)
    # the .hgrm table: the value at each percentile is hdrh's (in us)
    text = hgrm(rec)
    rows = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")
            and not ln.strip().startswith("Value")]
    rows = [r for r in rows if len(r) == 4]
    assert rows
    for v, p, total, _inv in rows[::7]:
        assert float(v) == pytest.approx(ref.get_value_at_percentile(float(p) * 100) / 1e3, rel=2e-3, abs=1e-3)
    assert int(rows[-1][2]) == n
    # the interval log: hdrh's reader gets every stage's values back, interval by interval
    path = tmp_path / "intervals.hlog"
    k = bench.write_interval_log(path, lat, rate=1e5)
    assert k == 3
    reader = HistogramLogReader(str(path), HdrHistogram(1, 60_000_000_000, 3))
    totals = {}
    while (h := reader.get_next_interval_histogram()) is not None:
        totals[h.get_tag()] = totals.get(h.get_tag(), 0) + h.get_total_count()
    assert totals == {s: n for s in bench.STAGES}


def _summary(w2s_p50, rate=100_000.0):
    lat = {lv: w2s_p50 * m for lv, m in zip(bench.LEVELS, (1, 2, 4, 8, 16, 32))}
    return {"tickwire_bench": bench.SCHEMA, "target": "pipeline", "started": "2026-12-03T00:00:00Z",
            "runs": [{"offered_rate": rate, "publisher": {"achieved_rate": rate},
                      "latency_ns": {"wire_to_signal": lat, "floor": dict(lat)}}]}


def test_compare_two_saved_runs(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "summary.json").write_text(json.dumps(_summary(100_000)))
    (b / "summary.json").write_text(json.dumps(_summary(50_000)))
    assert cli_main(["bench", "compare", str(a / "summary.json"), str(b)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "wire_to_signal" in ln and "p99.99" in ln)
    assert "1,600.0" in line and "800.0" in line and "0.50x" in line
    assert "unlike" not in out
    # left alone by an earlier pass: runs of another target or stream were compared unwarned
    other = dict(_summary(50_000), target="daemon", source="synthetic")
    (b / "summary.json").write_text(json.dumps(other))
    assert cli_main(["bench", "compare", str(a), str(b)]) == 0
    warn = next(ln for ln in capsys.readouterr().out.splitlines() if "unlike" in ln)
    assert "target 'pipeline' against 'daemon'" in warn and "stream None against 'synthetic'" in warn
    # busy_poll: a difference when both recorded it; a summary from before it was recorded (None)
    # is no difference (a review: every old baseline read as unlike)
    for pa, pb, said in ((True, False, True), (None, False, False), (False, None, False), (True, True, False)):
        (a / "summary.json").write_text(json.dumps(dict(_summary(100_000), busy_poll=pa)))
        (b / "summary.json").write_text(json.dumps(dict(_summary(50_000), busy_poll=pb)))
        assert cli_main(["bench", "compare", str(a), str(b)]) == 0
        assert ("busy_poll" in capsys.readouterr().out) == said, (pa, pb)
    assert cli_main(["bench", "compare", str(a), str(tmp_path / "missing.json")]) == 2
    (tmp_path / "x.json").write_text("{}")
    assert cli_main(["bench", "compare", str(a), str(tmp_path / "x.json")]) == 2
    assert "not a tickwire bench summary" in capsys.readouterr().err
    # each was a traceback: KeyError, AttributeError, ZeroDivisionError
    broken = _summary(100_000)
    broken["runs"][0]["publisher"]["achieved_rate"] = 0
    for body in ({"tickwire_bench": bench.SCHEMA}, [1, 2], broken):
        (tmp_path / "x.json").write_text(json.dumps(body))
        assert cli_main(["bench", "compare", str(a), str(tmp_path / "x.json")]) in ((0, 2) if body is broken else (2,))
        err = capsys.readouterr().err
        assert "Traceback" not in err and (body is broken or "tickwire bench compare:" in err), err
    # a null or NaN latency passed the check against itself, then was a TypeError against a
    # whole run, or printed as nan and 0.00x (an adversarial pass)
    for bad in (None, float("nan"), "1"):
        body = _summary(100_000)
        body["runs"][0]["latency_ns"]["wire_to_signal"]["p50"] = bad
        (tmp_path / "x.json").write_text(json.dumps(body))
        assert cli_main(["bench", "compare", str(a), str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "not a whole tickwire bench summary" in err, err


def test_bad_arguments_are_named(capsys, monkeypatch):
    assert cli_main(["bench", "--rate", "fast"]) == 2
    assert "--rate" in capsys.readouterr().err
    for rate in ("inf", "1e300", "1e9"):           # (an OverflowError in the consumer; arrays of tens of GB)
        assert cli_main(["bench", "--rate", rate]) == 2
        assert "at most 100,000,000 events/s" in capsys.readouterr().err
    assert cli_main(["bench", "--target", "daemon"]) == 2
    assert "--config" in capsys.readouterr().err
    assert cli_main(["bench", "--repeat", "0"]) == 2
    assert "--repeat" in capsys.readouterr().err
    for batch in ("5000", "-1"):             # over the receivers' 4,096 a message: every message refused
        assert cli_main(["bench", "--batch", batch]) == 2
        assert "--batch must be 0" in capsys.readouterr().err
    # not numbers of seconds (argparse's float takes nan and inf): refused, not a traceback mid-run
    for opt, value in (("--duration", "nan"), ("--duration", "inf"), ("--warmup", "nan"), ("--drain", "inf"),
                       ("--duration", "1e300")):     # (1e300: an OverflowError once the publisher started)
        assert cli_main(["bench", opt, value]) == 2
        assert f"{opt}: expected a number of seconds" in capsys.readouterr().err
    for value in ("-3", "nan"):
        assert cli_main(["bench", "--p99-threshold", value]) == 2
        assert "--p99-threshold must be" in capsys.readouterr().err
    # a numpy traceback; results written to the current directory; one message due in the run
    assert cli_main(["bench", "--source", "synthetic", "--seed", "-1"]) == 2
    assert "--seed must be 0 or more, got -1" in capsys.readouterr().err
    for value, said in (("0", "expected an integer >= 1, got 0"),    # (70000: a config error, after the header)
                        ("70000", "expected an integer from 1 to 65,535 (the wire's channels), got 70000")):
        assert cli_main(["bench", "--channels", value]) == 2
        assert capsys.readouterr().err == f"tickwire bench: --channels: {said}\n"
    assert cli_main(["bench", "--out", ""]) == 2
    assert "--out: an empty path" in capsys.readouterr().err
    for rate in ("0.5", "1e-3"):
        assert cli_main(["bench", "--rate", rate]) == 2
        assert "a rate must be at least 1" in capsys.readouterr().err
    # seconds that pass the check but whose stamps would not fit (a 112 GiB allocation in a child
    # and its traceback, found by a newcomer): refused before the run, and before it pins its
    # caller to a core (a library caller refused would otherwise be left on one core; recorded
    # here rather than done, or every later test would run on one core if it were)
    pinned = []
    monkeypatch.setattr(bench, "_pin", pinned.append)
    assert cli_main(["bench", "--source", "synthetic", "--duration", "1e9", "--rate", "1k"]) == 2
    assert "more than half the memory available here" in capsys.readouterr().err
    assert pinned == [], f"a refused run pinned its caller to core {pinned}"


@pytest.mark.parametrize("where", ["/proc/x", "{tmp}/afile", "{tmp}/afile/sub"])
def test_an_output_directory_that_cannot_be_written_is_refused_before_measuring(tmp_path, capsys, where):
    (tmp_path / "afile").write_text("")
    out = where.format(tmp=tmp_path)
    t0 = time.monotonic()
    assert cli_main(["bench", "--out", out]) == 2
    assert f"--out {out}: cannot write there" in capsys.readouterr().err
    assert time.monotonic() - t0 < 5                 # refused up front, not after the run


@pytest.mark.parametrize("name", ["summary.json", "wire_to_signal-10k.hgrm", "intervals-10k.hlog"])
def test_a_directory_where_a_result_file_goes_is_refused_before_measuring(tmp_path, capsys, name):
    """Found by an adversarial pass: --out holding a directory named summary.json measured the whole
    run, then ended in an IsADirectoryError traceback."""
    (tmp_path / name).mkdir()
    t0 = time.monotonic()
    assert cli_main(["bench", "--rate", "10k", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path / name} is a directory where a result file goes" in capsys.readouterr().err
    assert time.monotonic() - t0 < 5


def test_a_rate_with_no_signal_fails_instead_of_reporting_zero_latency(tmp_path, monkeypatch, capsys):
    """A run that brought no signal (rules that never fire, messages the engine refused) has no
    latency: exit 1 naming the rate, not a summary of zeros that `compare` would read as a gain."""
    class FakeRun:
        def __init__(self, *a):
            pass

    def measure(run, rate, i, outdir):
        # signals in the warm-up only (they were counted: all zeros, every target "hit", exit 0)
        return {"offered_rate": rate, "signals": 7, "publisher": {"events": 20_000, "achieved_rate": rate},
                "latency_ns": {"wire_to_signal": {"count": 0}}, "loss": []}

    monkeypatch.setattr(bench, "Run", FakeRun)
    monkeypatch.setattr(bench, "measure_rate", measure)
    monkeypatch.setattr(bench, "_pin", lambda core: None)
    out = tmp_path / "run"
    assert cli_main(["bench", "--source", "synthetic", "--rate", "20k", "--events", "20000", "--duration", "1",
                     "--no-plots", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "at 20k ev/s the target emitted no signal" in err and "20,000 events published" in err
    assert "log above" not in err                    # (no log is shown: it pointed at one)
    assert not (out / "summary.json").exists()
    assert bench.parse_rate("1M") == 1e6 and bench.parse_rate("100k") == 1e5 and bench.parse_rate("2.5e4") == 25e3


def test_a_rate_beyond_the_publisher_is_said_as_such_and_ends_a_saturation_sweep(tmp_path, monkeypatch, capsys):
    """Found by an adversarial pass: at 30M ev/s offered the publisher reached 5M, so no measured
    signal arrived, and the run said "check that the rules can fire on this stream", exit 1,
    also under --until-saturation (the saturation it was looking for)."""
    class FakeRun:
        def __init__(self, *a):
            pass

    lat = {lv: 1000 for lv in bench.LEVELS}

    def measure(run, rate, i, outdir):
        if rate <= 1e6:                             # reached: a measured run
            return {"offered_rate": rate, "signals": 50, "signals_missed": 0, "signals_unmatched": 0,
                    "publisher": {"events": 100_000, "achieved_rate": rate, "late_messages": 0, "late_p99_ns": 0,
                                  "max_late_ns": 0},
                    "latency_ns": {"wire_to_signal": dict(lat, count=40)}, "loss": []}
        return {"offered_rate": rate, "signals": 7,
                "publisher": {"events": 20_000_000, "achieved_rate": 5e6,
                              "gave_up": "the publisher fell 4.5 s behind its schedule and stopped"},
                "latency_ns": {"wire_to_signal": {"count": 0}}, "loss": []}

    monkeypatch.setattr(bench, "Run", FakeRun)
    monkeypatch.setattr(bench, "measure_rate", measure)
    monkeypatch.setattr(bench, "_pin", lambda core: None)
    args = ["bench", "--source", "synthetic", "--events", "20000", "--duration", "1", "--no-plots"]
    assert cli_main(args + ["--rate", "30M", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "at 30M ev/s the publisher reached 5,000k ev/s of the 30M offered (the publisher fell 4.5 s" in err, err
    assert "rules can fire" not in err and "Offer a rate the publisher reaches" in err
    assert cli_main(args + ["--rate", "1M,30M", "--until-saturation", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert [r["offered_rate"] for r in summary["runs"]] == [1e6]
    assert summary["stopped"].startswith("at 30M ev/s: the publisher reached 5,000k ev/s"), summary["stopped"]
    # the first rate already saturated: the sweep stops there, saying so (no figure below it)
    assert cli_main(args + ["--rate", "30M", "--until-saturation", "--out", str(tmp_path / "c")]) == 0
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["runs"] == [] and "(the first rate offered: start lower for a figure)" in summary["stopped"]


def test_a_sweep_measures_each_rate_once_and_a_threshold_ignores_incomplete_rates(tmp_path, monkeypatch, capsys):
    """Found by an adversarial pass: --until-saturation doubled the last rate, so --rate 1M,500k
    measured 1M twice (the second run's files over the first's, compare pairing the wrong runs);
    --rate 1M,1M did the same; --p99-threshold answered with a rate said INCOMPLETE (the
    signals a stall held back never arrived, so its p99 left them out); a publisher's giving up
    was in summary.json only; --keep never said where it kept the run."""
    class FakeRun:
        busy_poll = True

        def __init__(self, *a):
            pass

    lat = {lv: 1000 for lv in bench.LEVELS}
    measured = []

    def measure(run, rate, i, outdir):
        measured.append(rate)
        pub = {"events": 100_000, "achieved_rate": rate, "late_messages": 0, "late_p99_ns": 0, "max_late_ns": 0}
        if rate > 2e6:
            pub.update(achieved_rate=rate / 2, gave_up="the publisher fell 2.6 s behind its schedule and stopped")
        return {"offered_rate": rate, "signals": 50, "signals_missed": 0, "signals_unmatched": 0, "publisher": pub,
                "latency_ns": {"wire_to_signal": dict(lat, count=40)},
                "loss": ["the engine processed 9 of 10 events published"] if rate == 1e6 else []}

    monkeypatch.setattr(bench, "Run", FakeRun)
    monkeypatch.setattr(bench, "measure_rate", measure)
    monkeypatch.setattr(bench, "_pin", lambda core: None)
    args = ["bench", "--source", "synthetic", "--events", "20000", "--duration", "1", "--no-plots"]
    assert cli_main(args + ["--rate", "1M,500k", "--until-saturation", "--p99-threshold", "5", "--keep",
                            "--out", str(tmp_path / "a")]) == 1          # (1M was INCOMPLETE)
    cap = capsys.readouterr()
    err = cap.out + cap.err
    assert measured == [1e6, 5e5, 2e6, 4e6]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert [r["offered_rate"] for r in summary["runs"]] == measured
    assert summary["max_rate_under_threshold"] == 2e6          # not 1M: INCOMPLETE there
    assert "highest offered rate with wire-to-signal p99 <= 5 us: 2M ev/s" in err
    assert "did NOT reach the offered rate (the publisher fell 2.6 s behind its schedule and stopped)" in err
    assert summary["busy_poll"] is True
    kept = Path(summary["kept"])
    assert kept.is_dir() and f"--keep: the run's configs, logs, stamps and rings' directory are in {kept}" in err
    import shutil

    shutil.rmtree(kept)
    measured.clear()
    assert cli_main(args + ["--rate", "1M,500k,1m", "--out", str(tmp_path / "b")]) == 2
    assert "--rate: 1M given more than once: each rate once" in capsys.readouterr().err and measured == []
    # ratios keep four significant digits (a 6,000x gap read 0.0x)
    assert bench._ratio(1, 6000) == 0.0001667 and bench._ratio(1500.4281, 1) == 1500.0


def test_compare_warns_of_an_incomplete_run_and_a_rate_not_reached(tmp_path, capsys):
    """Found by an adversarial pass: compare printed a clean table over a run that had said
    INCOMPLETE (13% of its events not processed), exit 0; a rate only in B was not named."""
    a, b = _summary(100_000), _summary(110_000)
    b["runs"][0]["loss"] = ["the engine processed 779,478 of the 900,443 events published"]
    extra = _summary(200_000, rate=1e6)["runs"][0]
    extra["publisher"]["achieved_rate"] = 6e5
    b["runs"].append(extra)
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    assert cli_main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "WARNING: B at 100k ev/s was INCOMPLETE (the engine processed 779,478 of the 900,443" in out, out
    assert "WARNING: B at 1M ev/s: the publisher reached 600,000 ev/s, not the rate offered" in out
    assert "1M (not in A)" in out and "WARNING: A" not in out
    # a broken summary is named, before any line of the table
    (tmp_path / "x.json").write_text(json.dumps({"tickwire_bench": bench.SCHEMA, "target": "pipeline"}))
    assert cli_main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "x.json")]) == 2
    cap = capsys.readouterr()
    assert f"{tmp_path / 'x.json'}: lacks what a bench run writes" in cap.err and "A:" not in cap.out


def test_a_process_on_the_wrong_core_stops_the_run():
    bench._check_cores("the target", [1], [1])
    bench._check_cores("the target", None, [1])          # (not known: nothing to check)
    with pytest.raises(bench.CoreError, match=r"ran on core\(s\) \[0\], not on core\(s\) \[1\]"):
        bench._check_cores("the target", [0], [1])


def test_repeats_are_pooled_and_the_publisher_record_merged():
    """--repeat: each series is the runs' stamps together; the publisher's record keeps the
    lowest achieved rate (a repeat that fell short must show) and the worst lateness."""
    a = {"wire_to_signal": np.array([10, 30]), "intended": np.array([1, 2]), "unmatched": 1}
    b = {"wire_to_signal": np.array([20]), "intended": np.array([3]), "unmatched": 2}
    p = bench._pool([a, b])
    assert p["wire_to_signal"].tolist() == [10, 30, 20] and p["intended"].tolist() == [1, 2, 3]
    assert p["unmatched"] == 3
    assert bench._pool([a]) is a
    s1 = {"messages": 10, "events": 100, "offered_rate": 1e5, "achieved_rate": 99_000.0, "late_messages": 3,
          "max_late_ns": 50, "late_p99_ns": 40}
    s2 = {"messages": 12, "events": 120, "offered_rate": 1e5, "achieved_rate": 60_000.0, "late_messages": 1,
          "max_late_ns": 90, "late_p99_ns": 20}
    m = bench._merge_publisher([s1, s2])
    assert (m["messages"], m["events"], m["late_messages"]) == (22, 220, 4)
    assert m["achieved_rate"] == 60_000.0 and m["max_late_ns"] == 90 and m["late_p99_ns"] == 40
    assert m["repeats"] == 2 and m["offered_rate"] == 1e5


@pytest.mark.integration
def test_bench_repeat_alternates_and_pools(tmp_path):
    """``--repeat 2``: two target runs and two relay floors, pooled, each pair's ratio kept."""
    import subprocess

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k",
                        "--duration", "1", "--warmup", "0.3", "--drain", "0.5", "--repeat", "2", "--no-baseline",
                        "--no-plots", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    assert run["repeats"] == 2 and run["publisher"]["repeats"] == 2
    assert run["publisher"]["events"] >= 2 * 20_000 * 1.3 * 0.9      # both target runs counted
    assert len(run["pairs"]) == 2 and all(p["p50"] > 0 for p in run["pairs"])
    lat = run["latency_ns"]
    # both floors pooled too: the relay passes on one record per target signal, in each pair
    assert 0.95 * lat["wire_to_signal"]["count"] <= lat["floor"]["count"] <= lat["wire_to_signal"]["count"]
    assert "each pair" in r.stdout and "pooled over 2" in r.stdout


@pytest.mark.integration
def test_an_earlier_run_s_files_in_the_same_out_are_not_this_run_s(tmp_path):
    """An adversarial pass: files of an earlier run into the same --out (every run's default,
    tickwire-bench/) were listed in summary.json and drawn in this run's spectrum: a floor this
    run never measured. This rate's stale series go, and only what this run wrote is listed."""
    import subprocess

    out = tmp_path / "run"
    out.mkdir()
    (out / "floor-20k.hgrm").write_text("an earlier run's floor")
    (out / "floor-40k.hgrm").write_text("another rate's: kept")
    r = subprocess.run([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k",
                        "--duration", "1", "--warmup", "0.3", "--no-floors", "--no-baseline", "--no-plots",
                        "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = json.loads((out / "summary.json").read_text())["runs"][0]["files"]
    assert "wire_to_signal-20k.hgrm" in files and "intervals-20k.hlog" in files
    assert not any(f.startswith("floor") for f in files), files
    assert not (out / "floor-20k.hgrm").exists() and (out / "floor-40k.hgrm").exists()


@pytest.mark.integration
def test_keep_says_where_the_scratch_is_when_a_run_is_interrupted(tmp_path):
    """An adversarial pass: --keep on a run that failed or was interrupted kept the scratch
    directory (the logs one would read) and did not say where."""
    import shutil
    import signal
    import subprocess

    p = subprocess.Popen([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k",
                          "--duration", "30", "--warmup", "0.3", "--no-floors", "--no-baseline", "--no-plots", "--keep",
                          "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err[-3000:]
    kept = re.search(r"--keep: the run's configs, logs, stamps and rings' directory are in (\S+)", err)
    assert kept and Path(kept.group(1)).is_dir(), err[-3000:]
    shutil.rmtree(kept.group(1), ignore_errors=True)


@pytest.mark.integration
def test_a_floor_slow_to_start_still_measures_its_whole_run(tmp_path):
    """An adversarial pass: the floors' deadline was fixed before their processes started, so a
    libzmq subscriber 2.5 s slow to be ready (a loaded machine) stopped before the schedule's
    end: 77 relay-floor samples against the target's 100, exit 0. The deadline is now set once
    every part is ready."""
    import subprocess

    code = ("import sys, time\nfrom tickwire.engine import bench\norig = bench._wait_ready\n"
            "def slow(proc, ready, what, timeout=60.0):\n    orig(proc, ready, what, timeout)\n"
            "    if what == 'the libzmq subscriber':\n        time.sleep(2.5)\n"
            "bench._wait_ready = slow\nsys.exit(bench.main(sys.argv[1:]))\n")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", code, "--source", "synthetic", "--rate", "20k", "--duration", "2",
                        "--warmup", "0.5", "--no-baseline", "--no-plots", "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lat = json.loads((out / "summary.json").read_text())["runs"][0]["latency_ns"]
    assert lat["floor"]["count"] == lat["wire_to_signal"]["count"] > 0, (lat["floor"], lat["wire_to_signal"])


@pytest.mark.integration
def test_bench_end_to_end(tmp_path):
    """A short real run: ZeroMQ on loopback (ipc), the engine worker process, the consumer
    process on the signal ring, the floors and the pyzmq baseline."""
    import subprocess

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k",
                        "--duration", "1.5", "--warmup", "0.3", "--drain", "0.5", "--out", str(out)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    run = s["runs"][0]
    assert run["offered_rate"] == 20_000
    # the engine worker ran where the header says, apart from the publisher's core
    assert run["engine_cpus_seen"] == [s["engine_core"]]
    if len(os.sched_getaffinity(0)) >= 2:
        assert s["engine_core"] != s["other_core"]
    assert run["publisher"]["events"] >= 20_000 * 1.8 * 0.9
    assert run["signals"] > 0 and run["signals_unmatched"] == 0
    lat = run["latency_ns"]
    for k in ("wire_to_signal", "wire_queue", "engine", "ring_hop", "zmq_hop", "ring_hop_floor", "pyzmq_baseline",
              "floor", "floor_zmq_hop", "floor_ring_hop"):
        assert lat[k]["count"] > 0, k
    assert lat["wire_to_signal"]["p50"] >= lat["engine"]["p50"]
    # the relay floor: the same messages as the target's signals (one record per signal)
    assert lat["floor"]["count"] >= 0.95 * lat["wire_to_signal"]["count"]
    assert lat["floor"]["count"] <= lat["wire_to_signal"]["count"]
    assert "hops_sum" in lat and "vs_hops_sum" in run
    assert "vs_floor" in run and "vs_baseline" in run
    assert (out / "wire_to_signal-20k.hgrm").exists() and (out / "intervals-20k.hlog").exists()
    assert "wire_to_signal" in r.stdout
    assert s["busy_poll"] in (True, False)           # what the target ran with (it recorded None)
    # compare reads it back
    assert cli_main(["bench", "compare", str(out), str(out)]) == 0


@pytest.mark.integration
def test_bench_against_the_real_daemon(tmp_path):
    """``--target daemon --config``: the shipped example config run as a real ``tickwire run``
    daemon (its supervisor, worker process, rings and writer), fed by the harness's publisher,
    its signals read off the daemon's own signal ring by the consumer process. Nothing of it
    reaches the config's own store, log file or HDR folder (an adversarial pass: the synthetic
    ticks were inserted into the configured store, the running daemon's w0.hlog moved aside)."""
    import subprocess
    import tomllib

    from tickwire.engine.config import to_toml

    example = Path(__file__).resolve().parents[1] / "engine" / "tickwire.example.toml"
    raw = tomllib.loads(example.read_text(encoding="utf-8"))
    raw["daemon"]["state_dir"] = str(tmp_path / "state")
    own = {"store": tmp_path / "own-store", "log": tmp_path / "own-logs" / "d.log", "hdr": tmp_path / "own-hdr"}
    own["log"].parent.mkdir()
    raw.setdefault("store", {})["dsn"] = f"chdb://{own['store']}"
    raw["daemon"]["log_file"] = str(own["log"])
    raw.setdefault("metrics", {})["hdr_dir"] = str(own["hdr"])
    cfg = tmp_path / "t.toml"
    cfg.write_text(to_toml(raw), encoding="utf-8")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tickwire", "bench", "--target", "daemon", "--config", str(cfg),
                        "--source", "synthetic", "--rate", "20k", "--duration", "1.5", "--warmup", "0.3",
                        "--drain", "0.5", "--no-baseline", "--no-plots", "--out", str(out)],
                       capture_output=True, text=True, timeout=300,
                       # started pinned to core 0, as the demo calls it: the config's cores still count
                       preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["target"] == "daemon" and s["config"] == str(cfg)
    if len(os.sched_getaffinity(0)) >= 2:               # the example's worker core, and the floor's
        assert s["engine_core"] == 1 and s["other_core"] == 0
        assert s["runs"][0]["engine_cpus_seen"] == [1]
    run = s["runs"][0]
    assert run["publisher"]["events"] >= 20_000 * 1.8 * 0.9
    assert run["signals"] > 0 and run["signals_unmatched"] == 0
    lat = run["latency_ns"]
    for k in ("wire_to_signal", "wire_queue", "engine", "ring_hop", "zmq_hop", "ring_hop_floor"):
        assert lat[k]["count"] > 0, k
    assert lat["wire_to_signal"]["count"] <= run["signals"]
    assert lat["wire_to_signal"]["p50"] >= lat["engine"]["p50"]
    assert "target daemon" in r.stdout
    assert not own["store"].exists() and not own["log"].exists() and not own["hdr"].exists()


@pytest.mark.integration
def test_bench_against_a_two_worker_daemon(tmp_path):
    """Found by an adversarial pass: ``--target daemon`` with a config of two workers waited for
    two subscribers on every channel (each channel is one worker's) and failed after 120 s, "the
    target did not connect"; past that, its checks read worker 0's status only and called half
    the events never processed."""
    import subprocess

    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    raw = demo_raw_config(tmp_path / "state", run="bw", instruments=4, channels=2,
                          workers=[{"name": "w0", "cpu": 1, "instruments": [0, 2]},
                                   {"name": "w1", "cpu": 0, "instruments": [1, 3]}])
    cfg = tmp_path / "bw.toml"
    cfg.write_text(to_toml(raw))
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tickwire", "bench", "--target", "daemon", "--config", str(cfg),
                        "--rate", "20k", "--duration", "1.5", "--warmup", "0.3", "--drain", "0.5", "--no-floors",
                        "--no-baseline", "--no-plots", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "INCOMPLETE" not in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    assert run["signals"] > 0 and not run.get("loss")
    assert sorted(run["engine_cpus_seen"]) == [0, 1]


@pytest.mark.integration
@pytest.mark.parametrize("how", ["SIGINT", "SIGINT to the group", "SIGTERM"])
def test_ctrl_c_stops_the_bench_with_one_line_and_nothing_left_running(tmp_path, how):
    """SIGINT mid-sweep: exit 130 with one line saying what was kept (the rates finished before
    it), no traceback, and no publisher, worker or consumer process left behind. Ctrl-C at a
    terminal reaches the whole group (each child printed a traceback); SIGTERM (a service
    manager, `timeout`) left the engine worker running and the shared memory behind: now the
    same clean stop, exit 143."""
    import signal
    import subprocess

    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k,21k",
                          "--duration", "1", "--warmup", "0.3", "--drain", "0.3", "--no-baseline", "--no-plots",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        end = time.monotonic() + 180
        while not (out / "summary.json").exists() and p.poll() is None and time.monotonic() < end:
            time.sleep(0.1)                           # the first rate is done: the second is running
        assert p.poll() is None, p.communicate()
        time.sleep(1.0)
        kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        if how == "SIGINT to the group":
            os.killpg(p.pid, signal.SIGINT)
        else:
            p.send_signal(getattr(signal, how))
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == (143 if how == "SIGTERM" else 130), stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert f"the rates finished before it are in {out}" in stderr, stderr
    assert len(json.loads((out / "summary.json").read_text())["runs"]) == 1
    def running(pid):                                 # (a zombie waits for init to reap it: it runs nothing)
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline") as f:
                return state != "Z" and "resource_tracker" not in f.read()
        except FileNotFoundError:
            return False

    end = time.monotonic() + 10
    while any(running(k) for k in kids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(running(k) for k in kids), [k for k in kids if running(k)]


def _bench_child(p, pick, timeout=120.0):
    """Poll the bench ``p``'s children (resource tracker aside) until ``pick({pid: cores}, the
    bench's cores)`` names one; None when it ends or the time runs out."""
    import subprocess

    end = time.monotonic() + timeout
    while time.monotonic() < end and p.poll() is None:
        time.sleep(0.1)
        kids = {}
        for k in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split():
            try:
                if "resource_tracker" not in open(f"/proc/{k}/cmdline").read():
                    kids[int(k)] = os.sched_getaffinity(int(k))
            except (OSError, ValueError):
                pass
        try:
            found = pick(kids, os.sched_getaffinity(p.pid))
        except OSError:
            return None
        if found is not None:
            return found
    return None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="finds the engine worker by its own core")
@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_worker_killed_or_stalled_past_the_drain_fails_the_run_instead_of_hiding(tmp_path, fault):
    """Found by an adversarial pass: kill -9 of the engine worker hung the bench for ever, and a
    stall that outlasted the drain window dropped its events and signals from the figures (exit
    0, a max latency of 5 ms after a 2.5 s stall). Now the worker's own counts are checked
    against what was published and received: exit 1, each shortfall said."""
    import signal
    import subprocess

    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k",
                          "--duration", "3", "--warmup", "0.3", "--drain", "0.3", "--no-floors", "--no-baseline",
                          "--no-plots", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        worker = _bench_child(p, lambda kids, mine: next(
            (k for k, c in kids.items() if len(c) == 1 and c != mine), None))   # pinned to the engine's core
        assert worker is not None, p.communicate()
        # the schedule starts once the signal consumer (on the bench's own core) is ready
        consumer = _bench_child(p, lambda kids, mine: next((k for k, c in kids.items() if c == mine), None))
        assert consumer is not None, p.communicate()
        time.sleep(2.0)                               # into the measured seconds
        if fault == "kill":
            os.kill(worker, signal.SIGKILL)
        else:
            os.kill(worker, signal.SIGSTOP)           # past the end of the run and its drain
            time.sleep(3.0)
            os.kill(worker, signal.SIGCONT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert "INCOMPLETE at 20k ev/s" in stdout and "did not deliver everything" in stderr, stdout[-3000:] + stderr[-3000:]
    loss = json.loads((out / "summary.json").read_text())["runs"][0]["loss"]
    if fault == "kill":
        assert any("exited with status -9" in x for x in loss), loss
    assert any("not processed" in x or "the consumer received" in x for x in loss), loss


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tells the consumer from the worker by its core")
def test_a_killed_signal_consumer_is_one_line_not_a_traceback(tmp_path):
    """Found by an adversarial pass: kill -9 of the signal consumer mid-run ended the bench in a
    FileNotFoundError traceback (the signals file it never wrote). Now one line naming it."""
    import signal
    import subprocess

    p = subprocess.Popen([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k",
                          "--duration", "3", "--warmup", "0.3", "--drain", "0.3", "--no-floors", "--no-baseline",
                          "--no-plots", "--out", str(tmp_path / "run")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        def the_consumer(kids, mine):                   # the worker (its own core), then the consumer
            ours = [k for k, c in kids.items() if c == mine]
            return ours[0] if len(kids) == 2 and len(ours) == 1 else None

        consumer = _bench_child(p, the_consumer)
        assert consumer is not None, p.communicate()
        time.sleep(1.5)
        os.kill(consumer, signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert "Traceback" not in stderr, stderr
    assert "tickwire bench: the signal consumer was killed by SIGKILL" in stderr, stderr


def test_target_losses_name_every_shortfall(tmp_path):
    """The daemon target's branches (its exit status, its children's restarts) beside the worker's
    counts: each shortfall is one line; a complete run has none."""
    st = {"feed": {"events": 1000, "lost_events": 0}, "signal_ring_head": 40}
    assert bench.target_losses(1000, 40, st, None, 0, tmp_path) == []
    assert bench.target_losses(1000, 40, st, 0, None, tmp_path) == []
    assert bench.target_losses(1000, 40, {}, None, 0, tmp_path)[0].startswith("the engine worker wrote no status")
    (tmp_path / "supervisor.json").write_text(json.dumps({"children": {"w0": {"restarts": 2}, "writer": {}}}))
    lines = bench.target_losses(1200, 30, {**st, "feed": {"events": 1000, "lost_events": 7}}, -9, 3, tmp_path)
    text = "\n".join(lines)
    assert len(lines) == 6, lines
    for part in ("processed 1,000 of the 1,200 events published (200 not processed", "emitted 40 signals, the "
                 "consumer received 30", "feed lost 7 events", "worker exited with status -9",
                 "daemon exited with status 3", "w0 was restarted 2 time(s)"):
        assert part in text, (part, lines)


def test_signals_the_ring_lapped_are_a_shortfall(tmp_path):
    """Found by an adversarial pass: the consumer stopped 1 s (SIGSTOP) at 500k ev/s with a
    1,024-slot signal ring missed 3,458 of 18,776 signals, the slowest of the stall; they were
    counted as received, the run exited 0 and its max said 220 ms for a 1 s stall."""
    st = {"feed": {"events": 1000, "lost_events": 0}, "signal_ring_head": 40}
    assert bench.target_losses(1000, 40, st, None, 0, tmp_path, missed=0) == []
    lines = bench.target_losses(1000, 40, st, None, 0, tmp_path, missed=25)
    assert len(lines) == 1 and "missed 25 signals (the signal ring lapped it)" in lines[0], lines


def test_saturation_reasons_are_named():
    from tickwire.engine.bench import SATURATED_P50_NS, _saturated

    def res(achieved=1e5, missed=0, p50=50_000):
        return {"publisher": {"achieved_rate": achieved}, "signals_missed": missed,
                "latency_ns": {"wire_to_signal": {"p50": p50}}}
    assert _saturated(res(), 1e5) is None
    assert "the publisher reached 80k ev/s of the 100k offered" in _saturated(res(achieved=8e4), 1e5)
    assert "missed 3 signals" in _saturated(res(missed=3), 1e5)
    assert "fell behind" in _saturated(res(p50=SATURATED_P50_NS + 1), 1e5)


class _FakePub:
    def __init__(self, *a):
        pass

    def close(self):
        pass


def _lat(p50_ns, n=2000, t0=10**18):
    w = np.full(n, p50_ns, np.int64)
    return {"wire_to_signal": w, "wire_queue": w // 2, "engine": w // 4, "ring_hop": w // 4,
            "intended": t0 + np.arange(n, dtype=np.int64) * 1000, "unmatched": 0}


_PUB = {"messages": 10, "events": 100, "offered_rate": 1e6, "achieved_rate": 1e6, "late_messages": 0,
        "max_late_ns": 0, "late_p99_ns": 0}


def _fake_run(lat, floor_p50=None, floor_rate=1e6, base_p50=None, floor_loss=(), ring_loss=(), base_loss=(),
              event_clock=False):
    """A Run whose target measured ``lat`` (and, with ``floor_p50``, floors of that median whose
    publisher reached ``floor_rate``; with ``base_p50``, a pyzmq baseline of that median), for
    bench.measure_rate. ``*_loss``: what the floors and the baseline say they did not receive."""
    class FakeRun:
        busy_poll = False
        args = bench.default_args(repeat=1, no_floors=floor_p50 is None, baseline=base_p50 is not None, warmup=1.0,
                                  duration=1.0, quiet=True, busy_poll=None)

        def measure_baseline(self, rate, p, tag):
            return {"lat": np.full(200, base_p50, np.int64), "signals": 200, "loss": list(base_loss)}
        stream, engine_core = None, 1

        def endpoint(self, tag):
            return f"inproc://{tag}"

        def measure_target(self, rate, tag, p):
            return {"cpus": [1], "cpus_configured": [1], "publisher": _PUB, "signals": 2000, "missed": 0,
                    "unmatched": 0, "lat": lat, "loss": [], "relay": {"keys": [1]}}

        def measure_zmq_floor(self, rate, p, tag, busy, plan):
            return {"lat": np.full(100, 20_000, np.int64), "cpus": [1], "relay": _lat(floor_p50),
                    "publisher": dict(_PUB, achieved_rate=floor_rate), "loss": list(floor_loss)}

        def measure_ring_floor(self, r, tag):
            return {"lat": np.full(100, 1000, np.int64), "loss": list(ring_loss)}

    run = FakeRun()
    run.event_clock = event_clock
    return run


@pytest.mark.parametrize("floor_rate,floor_p50,verdict", [
    (1e6, 50_000, "hit"),                    # a floor that kept up: a verdict
    (6e5, 50_000, None),                     # its publisher short of the rate: the machine's limit
    (1e6, 40_000_000, None),                 # its own p50 a queue
])
def test_no_verdict_against_a_saturated_floor(tmp_path, monkeypatch, capsys, floor_rate, floor_p50, verdict):
    """Left alone by an earlier pass: at a rate the machine cannot carry, the floor is a queue as
    well, and "p50 within 1.25x of the floor" was a hit or a MISS between two queues. A floor
    whose publisher fell short or whose own median is past the saturation mark gives no verdict,
    said on its own line."""
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    res = bench.measure_rate(_fake_run(_lat(floor_p50 + 1000), floor_p50, floor_rate), 1e6, 0, tmp_path)
    got = res["vs_floor"]["targets"]["p50 <= 1.25x floor"]
    bench.print_run(res)
    out = capsys.readouterr()
    text = out.out + out.err
    if verdict is None:
        assert got is None and res["vs_floor"]["no_verdict"], res["vs_floor"]
        assert "p50 <= 1.25x floor: no verdict" in text and "no verdict against the floor:" in text
        assert ("600k ev/s of the 1M offered" if floor_rate < 1e6 else "fell behind") in res["vs_floor"]["no_verdict"]
    else:
        assert got is True and "no_verdict" not in res["vs_floor"] and "no verdict" not in text
    assert "below 0" not in text and "negative" not in res["latency_ns"]["wire_to_signal"]


def test_no_verdict_against_a_floor_well_above_the_target(tmp_path, monkeypatch, capsys):
    """Found by an adversarial pass: a floor disturbed during its run (its subscriber stopped for
    300 ms: p99 389 ms against the target's 12 ms) gave "p99 0.0307x ... hit", exit 0; on a busy
    machine floors at 3-30x the target's did the same unprovoked. A floor more than twice the
    target's p50 or p99 is no floor: no verdict, and why."""
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    res = bench.measure_rate(_fake_run(_lat(10_000), 50_000), 1e6, 0, tmp_path)
    v = res["vs_floor"]
    assert v["targets"]["p50 <= 1.25x floor"] is None and v["targets"]["p99 <= 2x floor p99"] is None, v
    assert v["no_verdict"].startswith("the floor measured above the target (p50 50.0 us against 10.0 us"), v
    bench.print_run(res)
    assert "no verdict against the floor: the floor measured above the target" in capsys.readouterr().out
    res = bench.measure_rate(_fake_run(_lat(30_000), 50_000), 1e6, 0, tmp_path)      # 1.7x: still a floor
    assert res["vs_floor"]["targets"]["p50 <= 1.25x floor"] is True and "no_verdict" not in res["vs_floor"]


@pytest.mark.parametrize("base_p50, saturated", [(2_000_000, False), (528_000_000, True)])
def test_a_saturated_baseline_is_said_beside_its_ratio(tmp_path, monkeypatch, capsys, base_p50, saturated):
    """An adversarial pass: at 1M ev/s the pyzmq baseline's p50 was 528 ms, and "wire-to-signal /
    pyzmq baseline: p50 0.0003x" compared tickwire against a queue, unsaid (the floor has its
    no-verdict guard). A baseline past the saturation mark is said so, in summary.json and beside
    the ratio."""
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    res = bench.measure_rate(_fake_run(_lat(50_000), base_p50=base_p50), 1e6, 0, tmp_path)
    assert "vs_baseline" in res
    bench.print_run(res)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "the target fell behind" not in text                    # (its own p50: 50 us)
    if saturated:
        assert res["baseline_note"].startswith("saturated: its own p50 is 528."), res["baseline_note"]
        assert "(the baseline is saturated: its own p50 is 528." in text, text
    else:
        assert "baseline_note" not in res and "saturated" not in text


def test_a_target_that_fell_behind_is_said(tmp_path, monkeypatch, capsys):
    """An adversarial pass: at 5M offered the target's wire-to-signal p50 was 605 ms (a backlog
    worked off in the drain), exit 0, and nothing said without --until-saturation."""
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    res = bench.measure_rate(_fake_run(_lat(605_000_000)), 1e6, 0, tmp_path)
    bench.print_run(res)
    out = capsys.readouterr()
    assert "note: the target fell behind at this rate (its wire-to-signal p50 is 605.0 ms" in out.out + out.err
    # under --until-saturation the sweep's own line says it (the note told the user to pass the
    # flag they had passed: a newcomer's pass)
    bench.print_run(res, sweeping=True)
    out = capsys.readouterr()
    assert "fell behind" not in out.out + out.err and "wire_to_signal" in out.out + out.err


def test_results_that_cannot_be_written_after_the_run_are_one_line(tmp_path, monkeypatch, capsys):
    """An adversarial pass: --out removed while the bench ran (or its disk full) was a
    FileNotFoundError traceback once the rate's files were written. Now one line, exit 1."""
    def gone(args):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "out" / "wire_to_signal-100k.hgrm"))

    monkeypatch.setattr(bench, "run_bench", gone)
    assert bench.main(["--rate", "100k", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tickwire bench: No such file or directory: ") and "no rate was written" in err, err
    assert "Traceback" not in err

    def elsewhere(args):                                 # (not a result: no word of results, a review)
        raise IsADirectoryError(21, "Is a directory", "/data/binance_spot_btcusdt_2024-08-08.gz")

    monkeypatch.setattr(bench, "run_bench", elsewhere)
    assert bench.main(["--rate", "100k", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == "tickwire bench: Is a directory: /data/binance_spot_btcusdt_2024-08-08.gz\n", err


def test_latencies_below_zero_are_counted_and_said(tmp_path, monkeypatch, capsys):
    """Found by an adversarial pass: a latency below 0 (the wall clock stepped back between the
    intended send time and the receipt) was clamped to 0 unsaid."""
    lat = _lat(50_000)
    lat["wire_to_signal"][[3, 700]] = [-5_000, -7]
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    res = bench.measure_rate(_fake_run(lat), 1e6, 0, tmp_path)
    assert res["latency_ns"]["wire_to_signal"]["negative"] == 2
    assert res["latency_ns"]["wire_to_signal"]["count"] == len(lat["wire_to_signal"])
    bench.print_run(res)
    out = capsys.readouterr()
    assert "latencies below 0, recorded as 0 (the wall clock stepped back during the run): wire_to_signal 2" in \
        out.out + out.err


def test_latencies_past_the_histograms_top_are_kept_counted_and_make_the_run_incomplete(tmp_path, monkeypatch,
                                                                                         capsys):
    """Found by an adversarial pass: a worker stopped for 75 s gave latencies of 2**36 ns (68.7 s)
    and more, which the recorders reject: 282 samples left out of every series unsaid (count
    3,510 against the engine's 3,792, p99 68.0 s for 74.2), exit 0, blamed on the rate. They are
    now recorded at the top, counted, and the rate is INCOMPLETE (its percentiles lower bounds)."""
    lat = _lat(50_000)
    lat["wire_to_signal"][[5, 6, 7]] = [70_000_000_000, 75_000_000_000, 1 << 36]
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    res = bench.measure_rate(_fake_run(lat), 1e6, 0, tmp_path)
    w = res["latency_ns"]["wire_to_signal"]
    assert w["count"] == len(lat["wire_to_signal"]) and w["beyond_range"] == 3
    assert w["max"] >= 68_000_000_000
    assert any("3 wire_to_signal latencies of 68.7 s or more" in line for line in res["loss"]), res["loss"]
    from tickwire.engine.latency import read_interval_log
    bench._write_interval_log(tmp_path / "i.hlog", lat, 1e6, 0.01, ("wire_to_signal",))   # and the interval log
    ivs = read_interval_log(tmp_path / "i.hlog")
    assert sum(iv.histogram.get_total_count() for iv in ivs) == len(lat["wire_to_signal"])
    assert max(iv.histogram.get_max_value() for iv in ivs) >= 68_000_000_000


@pytest.mark.integration
def test_a_slow_start_of_the_target_s_consumer_is_not_charged_as_wire_latency(tmp_path):
    """Found by an adversarial pass: the target's schedule began 300 ms after it was set, before its
    signal consumer was spawned, so a consumer slow to start (1.5 s) put its start into every
    figure (wire-to-signal p50 199 ms against a floor of 133 us). Now the schedule starts once
    the consumer is ready, as the floors' do: a 2 s slow start shows nowhere."""
    import subprocess

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "10k",
                        "--duration", "1", "--warmup", "0", "--drain", "0.5", "--no-floors", "--no-baseline",
                        "--no-plots", "--consumer-start-delay", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    assert run["publisher"]["max_late_ns"] < 1e9, run["publisher"]
    assert run["latency_ns"]["wire_to_signal"]["max"] < 1e9, run["latency_ns"]["wire_to_signal"]


@pytest.mark.integration
def test_until_saturation_says_what_stopped_it(tmp_path):
    """It stopped without a word on why (and summary.json had no field for it)."""
    import subprocess

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "8M",
                        "--until-saturation", "--duration", "1", "--warmup", "0.3", "--drain", "0.3", "--no-floors",
                        "--no-baseline", "--no-plots", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stopped = json.loads((out / "summary.json").read_text())["stopped"]
    assert stopped.startswith("at ") and f"--until-saturation stopped {stopped}" in r.stdout, r.stdout[-2000:]


def test_a_target_that_failed_is_no_saturation(tmp_path):
    """Found by an adversarial pass: under --until-saturation a worker killed at the last rate was
    reported as the saturation looked for ("it did not deliver everything"), exit 0, its exit
    status left out. A process that exited or was restarted, or a feed that lost events, is a
    failure; a backlog, a lapped ring or a stall is the rate being too high."""
    (tmp_path / "supervisor.json").write_text(json.dumps({"children": {"w0": {"restarts": 1}}}))
    status = {"feed": {"events": 900, "lost_events": 3}, "signal_ring_head": 10}
    lines = bench.target_losses(1000, 8, status, -9, None, tmp_path, missed=2)
    assert bench.failures(lines) == [
        "the worker's feed lost 3 events (and 0 ranges of unknown size): see its log",
        "the engine worker exited with status -9", "the daemon's w0 was restarted 1 time(s) during the run"], lines
    slow = bench.target_losses(1000, 8, {"feed": {"events": 900}, "signal_ring_head": 10}, None, None,
                               tmp_path / "none", missed=2)
    assert len(slow) == 3 and bench.failures(slow) == []
    assert bench.failures(["the engine worker wrote no status (it did not start, or died before its first)"])


def test_a_low_rate_publisher_sends_its_whole_schedule(tmp_path):
    """Found by a review: with messages more than 250 ms apart (64 events at 200 ev/s), the
    publisher's bounded call never reached the next message, spun, and gave up after one message
    as "4.0 s behind its schedule". It sends every message meant within the run, none gave up."""
    from tickwire.ext import harness
    from tickwire.feeds.synthetic import synthetic_instruments

    stream = bench.synthetic_stream(synthetic_instruments(1, "L2"), 1, events=64 * 200, batch=64)
    pub = bench.Publisher(stream, f"ipc://{tmp_path}/low.sock")
    try:
        res = pub.run(200.0, harness.now_ns() + 50_000_000, 2.0, "low", progress=False)
    finally:
        pub.close()
    assert "gave_up" not in res["stats"], res["stats"]
    assert 6 <= res["stats"]["messages"] <= 8, res["stats"]          # 2 s / 320 ms, from the first at 0


def test_a_publisher_stopped_by_its_wall_clock_bound_says_so(tmp_path, monkeypatch):
    """Found by an adversarial pass: the publisher's bound (a minute past its schedule) stopped it
    without setting gave_up: the unsent rest of the schedule left the figures, the achieved rate
    read as the offered one, exit 0. It gives up now, said as the other give-up is."""
    import types

    from tickwire.ext import harness
    from tickwire.feeds.synthetic import synthetic_instruments

    stream = bench.synthetic_stream(synthetic_instruments(1, "L2"), 1, events=64 * 2000, batch=64)
    pub = bench.Publisher(stream, f"ipc://{tmp_path}/wall.sock")
    real = bench.time.monotonic
    calls = [0]

    def jumping():                                       # a minute and more passes after the 10th look
        calls[0] += 1
        return real() + (120.0 if calls[0] > 10 else 0.0)

    monkeypatch.setattr(bench, "time", types.SimpleNamespace(**{k: getattr(bench.time, k) for k in dir(bench.time)
                                                                  if not k.startswith("__")}))
    monkeypatch.setattr(bench.time, "monotonic", jumping)
    try:
        res = pub.run(2000.0, harness.now_ns() + 50_000_000, 5.0, "wall", progress=False)
    finally:
        pub.close()
    assert "after its 5 s schedule and stopped" in res["stats"].get("gave_up", ""), res["stats"]
    assert res["stats"]["messages"] < 150


def test_the_demo_s_wire_line_says_an_incomplete_run_and_an_unmeasured_floor(tmp_path, monkeypatch):
    """Found by an adversarial pass: the demo printed the wire-to-signal figures of a run whose
    engine had processed 339,196 of 400,001 events (the stall left out) without a word, and a
    floor not measured as p50 0.0 p99 0.0."""
    from tickwire.engine import demo

    lat = {lv: 2_000_000 for lv in bench.LEVELS}
    loss = "the engine processed 339,196 of the 400,001 events published (60,805 not processed by the end of the drain)"

    def run_bench(args):
        return {"runs": [{"latency_ns": {"wire_to_signal": dict(lat, count=287)}, "loss": [loss]}]}

    monkeypatch.setattr(bench, "run_bench", run_bench)
    said = []
    demo._wire_to_signal(tmp_path / "demo.toml", 100_000, 3, said.append)
    text = "\n".join(said)
    assert "p50 2,000.0" in text and "(287 signals)" in text
    assert "same run) not measured" in text and "p50 0.0" not in text
    assert f"INCOMPLETE: {loss}: the figures above leave out what was not processed" in text


@pytest.mark.parametrize("batch,channels", [(16, 4), (3, 2), (1, 3), (1000, 5)])
def test_batch_n_is_n_events_a_message_on_a_stream_that_alternates_channels(batch, channels):
    """Found by an adversarial pass: messages were cut at every change of channel, so on the
    synthetic stream (instrument i on channel i % channels, alternating event by event) --batch 16
    made 1.55 events a message. Each channel's events now go in messages of N, in their order."""
    from tickwire.ext import EVENT_DTYPE

    rng = np.random.default_rng(batch * 7 + channels)
    ev = np.zeros(5_000, EVENT_DTYPE)
    ev["instrument"] = rng.integers(0, 8, len(ev))
    ev["seq"] = np.arange(len(ev))                 # (a tag: where each event was)
    chan_of = np.arange(8) % channels
    out, bounds, ch = bench._messages(ev, chan_of, batch)
    assert sorted(out["seq"].tolist()) == list(range(len(ev))) and bounds[0] == 0 and bounds[-1] == len(ev)
    sizes = np.diff(bounds)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        assert (chan_of[out["instrument"][a:b]] == ch[k]).all()
    for c in range(channels):
        mine = ch == c
        assert (sizes[mine][:-1] == batch).all() and 0 < sizes[mine][-1] <= batch
        got = out["seq"][chan_of[out["instrument"]] == c]
        assert (got == np.flatnonzero(chan_of[ev["instrument"]] == c)).all()   # each channel's own order
    # whole messages in the order of their first events
    assert (np.diff(out["seq"][bounds[:-1]].astype(np.int64)) > 0).all()


# -- an adversarial pass on the floors, the outputs and a killed bench -----------------------------

def test_floor_samples_not_received_are_counted():
    """Found by an adversarial pass: the floors never compared what they received with what was
    sent (the zmq subscriber, the relay's consumer and its ring's ``missed``, the ring floor's
    consumer, the baseline's consumer stopping at its deadline): a floor that fell behind lost its
    slowest samples, and the verdicts were given against the rest, exit 0."""
    z = {"seq": np.array([1, 17, 33], np.uint64), "chan": np.zeros(3, np.uint16)}
    plan = {"keys": np.array([1, 17, 17, 49], np.uint64)}            # 49: a message never received
    whole = {"seq": np.zeros(3, np.uint64), "missed": 0}
    assert bench.floor_losses(3, z, plan, whole) == []
    lines = bench.floor_losses(4, z, plan, {"seq": np.zeros(1, np.uint64), "missed": 2})
    assert len(lines) == 2, lines
    assert "received 3 of the 4 messages sent" in lines[0] and "received 1 of the 3 signals relayed" in lines[1]
    assert "2 lapped by the ring" in lines[1]
    assert bench.floor_losses(4, z, None, None)[0].startswith("the floor's libzmq subscriber received 3 of the 4")
    assert bench.ring_floor_losses(5, {"seq": np.zeros(5), "missed": 0}) == []
    assert "received 4 of the 5 records" in bench.ring_floor_losses(5, {"seq": np.zeros(4), "missed": 0})[0]
    assert bench.ring_floor_losses(5, {"seq": np.zeros(5), "missed": 1})
    assert bench.baseline_losses(10, 10, 7, 7) == []
    got = bench.baseline_losses(10, 8, 7, 5)
    assert "received 8 of the 10 messages" in got[0] and "read 5 of the 7 signals" in got[1]
    assert "did not finish" in bench.baseline_losses(10, -1, -1, 0)[0]


def test_a_floor_that_lost_samples_gives_no_verdict(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    lost = "the relay's consumer received 90 of the 100 signals relayed by its deadline (0 lapped by the ring)"
    res = bench.measure_rate(_fake_run(_lat(51_000), 50_000, floor_loss=[lost], ring_loss=["ring lost 3"],
                                       base_p50=2_000_000, base_loss=["its consumer read 5 of the 7 signals"]),
                             1e6, 0, tmp_path)
    v = res["vs_floor"]
    assert v["targets"]["p50 <= 1.25x floor"] is None and v["targets"]["p99 <= 2x floor p99"] is None, v
    assert lost in v["no_verdict"] and res["floor_loss"] == [lost, "ring lost 3"]
    assert "ring lost 3" in res["vs_hops_sum"]["no_verdict"]
    assert res["baseline_loss"] and res["baseline_note"].startswith("incomplete: its consumer read 5 of the 7")
    bench.print_run(res)
    out = capsys.readouterr().out
    assert f"floor INCOMPLETE: {lost}" in out and "no verdict against the floor: the floor did not receive" in out
    # the same run with whole floors: a verdict
    res = bench.measure_rate(_fake_run(_lat(51_000), 50_000), 1e6, 0, tmp_path)
    assert res["vs_floor"]["targets"]["p50 <= 1.25x floor"] is True and "floor_loss" not in res


def test_a_rate_with_no_measured_signal_leaves_an_earlier_run_s_files_alone(tmp_path, monkeypatch):
    """Found by an adversarial pass: a failed rate (--duration 0.01: "no latency to report, and
    none is written") removed the earlier run's .hgrm files of that rate in the same --out and
    truncated its interval log, while that run's summary.json still listed them."""
    (tmp_path / "wire_to_signal-1M.hgrm").write_text("an earlier run's")
    (tmp_path / "intervals-1M.hlog").write_text("an earlier run's log")
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    empty = {k: np.zeros(0, np.int64) for k in ("wire_to_signal", "wire_queue", "engine", "ring_hop", "intended")}
    res = bench.measure_rate(_fake_run({**empty, "unmatched": 0}), 1e6, 0, tmp_path)
    assert res["latency_ns"]["wire_to_signal"]["count"] == 0 and res["files"] == []
    assert (tmp_path / "wire_to_signal-1M.hgrm").read_text() == "an earlier run's"
    assert (tmp_path / "intervals-1M.hlog").read_text() == "an earlier run's log"


@pytest.mark.parametrize("writes", [False, True])
def test_an_interrupt_names_this_run_s_summary_not_an_earlier_one(tmp_path, monkeypatch, capsys, writes):
    """Found by an adversarial pass: interrupted before its first rate finished, the bench said
    "the rates finished before it are in OUT/summary.json" of an earlier invocation's file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"an": "earlier run"}')

    def run(args):
        if writes:
            bench.replace_file(out / "summary.json", '{"this": "run"}')
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_bench", run)
    assert bench.main(["--rate", "100k", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    if writes:
        assert f"the rates finished before it are in {out / 'summary.json'}" in err, err
    else:
        assert "no rate had finished" in err and "is an earlier run's" in err and "finished before it" not in err, err


@pytest.mark.integration
def test_a_publisher_that_gave_up_its_schedule_makes_the_run_incomplete(tmp_path):
    """Found by an adversarial pass: a publisher that fell seconds behind its schedule and stopped
    ("fell 7.4 s behind ... and stopped") exited 0 with percentiles over the part it sent (the
    rest, the latest, never measured: coordinated omission). Now INCOMPLETE, exit 1, saying what
    share of the intended schedule the figures cover. (A 3 s stall of the publisher in a 1 s run.)"""
    import subprocess

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k",
                        "--duration", "1", "--warmup", "0.3", "--drain", "0.3", "--no-floors", "--no-baseline",
                        "--no-plots", "--quiet", "--stall-at", "600", "--stall-ms", "3000", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    run = json.loads((out / "summary.json").read_text())["runs"][0]
    assert run["publisher"].get("gave_up"), run["publisher"]
    line = next((x for x in run["loss"] if "behind its schedule and stopped" in x), None)
    assert line and "the figures cover" in line and "of the intended schedule" in line, run["loss"]
    assert 0 < run["publisher"]["measured_share"] < 1
    assert "INCOMPLETE at 20k ev/s: the publisher fell" in r.stdout, r.stdout[-2000:]


@pytest.mark.integration
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="finds the engine worker by its own core")
def test_a_bench_killed_with_sigkill_takes_its_children_along_and_a_later_run_cleans_up(tmp_path):
    """Found by an adversarial pass: kill -9 of the bench left its engine worker running for good
    (spinning on the engine's core) and its rings in /dev/shm."""
    import signal
    import subprocess

    p = subprocess.Popen([sys.executable, "-m", "tickwire", "bench", "--source", "synthetic", "--rate", "20k",
                          "--duration", "30", "--warmup", "0.3", "--no-floors", "--no-baseline", "--no-plots",
                          "--quiet", "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        worker = _bench_child(p, lambda kids, mine: next(
            (k for k, c in kids.items() if len(c) == 1 and c != mine), None))
        assert worker is not None, p.communicate()
        time.sleep(1.0)
        rings = [n for n in os.listdir("/dev/shm") if f"bench{p.pid}-" in n]
        assert rings
        p.kill()
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()

    def running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    end = time.monotonic() + 15
    while running(worker) and time.monotonic() < end:
        time.sleep(0.1)
    alive = running(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the engine worker ran on after the bench was killed"
    import tempfile

    from tickwire.engine.config import private_ipc_dir

    left = [n for n in rings if os.path.exists(f"/dev/shm/{n}")]
    # a later bench removes them, and the scratch directory (their bench's pid is gone)
    removed, _ = bench.clean_leftovers(ipc_dir=private_ipc_dir(), tmp_dir=tempfile.gettempdir())
    assert all(f"/dev/shm/{n}" in removed for n in left), (left, removed)
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in rings)
    assert not list(Path(tempfile.gettempdir()).glob(f"tw-bench-{p.pid}-*"))


def test_leftovers_of_a_killed_bench_are_removed_by_name_and_dead_pid_only(tmp_path):
    """The bench's own names with a pid no process has: removed; another pid (a running bench),
    other names, a scratch directory kept with --keep: left alone."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    gone, alive = dead.pid, os.getppid()
    shm, ipc, tmp = (tmp_path / d for d in ("shm", "ipc", "tmp"))
    for d in (shm, ipc, tmp):
        d.mkdir()
    mine = [shm / f"tickwire-bench{gone}-r0-tgt-0123456789abcdef-signals-0", shm / f"tw-bench-{gone}-r1-2-relay",
            shm / f"tw-bench-{gone}-r0", ipc / f"bench-{gone}-r0-zmq", tmp / f"tw-bench-{gone}-abc_12"]
    others = [shm / f"tw-bench-{alive}-r0", shm / f"tickwire-bench{alive}-r0-tgt-0123456789abcdef-ticks-0",
              shm / "tickwire-run-0123456789abcdef-ticks-0", shm / f"tw-bench-{gone}-r0-x", ipc / "bench-x-r0-zmq",
              tmp / f"tw-bench-{gone}-kept1", tmp / "tw-bench-old"]
    for path in mine + others:
        if path.parent == tmp:
            path.mkdir()
            (path / "r0.log").write_text("")
        else:
            path.write_text("")
    (tmp / f"tw-bench-{gone}-kept1" / bench.KEEP_MARK).write_text("")
    removed, left = bench.clean_leftovers(shm_dir=str(shm), ipc_dir=str(ipc), tmp_dir=str(tmp))
    assert sorted(removed) == sorted(str(p) for p in mine) and left == []
    assert all(p.exists() for p in others) and not any(p.exists() for p in mine)


@pytest.mark.parametrize("name", ["summary.json", "wire_to_signal-1M.hgrm", "intervals-1M.hlog"])
def test_results_replace_a_link_in_out_never_write_through_it(tmp_path, monkeypatch, name):
    """Found by an adversarial pass: a symlink in --out named as a result file (summary.json) had
    its target overwritten. The link itself is replaced."""
    victim = tmp_path / "victim"
    victim.write_text("not the bench's")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    if name == "summary.json":
        bench.replace_file(out / name, "{}")
    else:
        monkeypatch.setattr(bench, "Publisher", _FakePub)
        bench.measure_rate(_fake_run(_lat(50_000)), 1e6, 0, out)
    assert victim.read_text() == "not the bench's"
    assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_comma_in_a_rate_is_said_with_the_whole_value(capsys):
    """Found by an adversarial pass: --rate 1,000 said only "got '000'"."""
    assert cli_main(["bench", "--rate", "1,000"]) == 2
    err = capsys.readouterr().err
    assert "--rate '1,000':" in err and "a comma separates rates" in err and err.count("\n") == 1, err


def test_an_event_clock_config_leaves_the_engine_stage_out(tmp_path, monkeypatch, capsys):
    """Found by an adversarial pass: with engine.clock = "event" the engine stage printed 0.0 us at
    every percentile (ts_signal is the tick's ts_recv): left out, with a line saying why."""
    monkeypatch.setattr(bench, "Publisher", _FakePub)
    res = bench.measure_rate(_fake_run(_lat(50_000), event_clock=True), 1e6, 0, tmp_path)
    assert "engine" not in res["latency_ns"] and "engine-1M.hgrm" not in res["files"]
    assert "engine.clock" in res["engine_note"]
    bench.print_run(res)
    out = capsys.readouterr().out
    assert "engine stage not measured: engine.clock = \"event\"" in out
    assert not re.search(r"^\s+engine\s+[0-9]", out, re.M), out              # no row of figures


def test_a_config_of_two_workers_with_the_pipeline_target_is_refused_up_front(tmp_path, capsys):
    """Found by an adversarial pass: the pipeline target runs worker 0 alone, so with a config of
    two workers the other's channels never subscribed: 60 s, then "the target did not connect:
    see its log", with no log to see. Refused at once, pointing to --target daemon."""
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    workers = [{"name": "w0", "cpu": 1, "instruments": [0, 2]}, {"name": "w1", "cpu": 0, "instruments": [1, 3]}]
    raw = demo_raw_config(tmp_path / "state", run="two", instruments=4, channels=2, workers=workers)
    cfg = tmp_path / "two.toml"
    cfg.write_text(to_toml(raw))
    t0 = time.monotonic()
    assert cli_main(["bench", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "2 workers, and the pipeline target runs one engine worker" in err and "--target daemon" in err, err
    assert time.monotonic() - t0 < 10


def test_a_pull_socket_config_is_refused_up_front(tmp_path, capsys):
    """Found by an adversarial pass: feeds.socket = "pull" waited 120 s for a subscriber that never
    came, then failed, its log removed."""
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    raw = demo_raw_config(tmp_path / "state", run="p", instruments=1, channels=1)
    raw["feeds"]["socket"] = "pull"
    cfg = tmp_path / "p.toml"
    cfg.write_text(to_toml(raw))
    t0 = time.monotonic()
    assert cli_main(["bench", "--target", "daemon", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "feeds.socket = 'pull'" in err and "feeds.socket = \"sub\"" in err, err
    assert time.monotonic() - t0 < 10
    log = tmp_path / "d.log"
    log.write_text("".join(f"line {i}\n" for i in range(40)))
    tail = bench._log_tail(log)
    assert tail.splitlines() == [f"    line {i}" for i in range(25, 40)]
    assert bench._log_tail(tmp_path / "none.log") == ""


def test_a_restarted_worker_s_earlier_events_are_counted(tmp_path):
    """Found by an adversarial pass: after the daemon restarted a stalled worker, "processed N of M
    events" counted the new worker's events only. The supervisor notes what each dead worker
    process had processed (supervisor.json: earlier_events), and the check sums them."""
    from types import SimpleNamespace

    from tickwire.engine.supervisor import Supervisor, _Child

    child = _Child("w0", [], 1)
    child.proc = SimpleNamespace(pid=4242)
    sup = SimpleNamespace(workers=[child], run_dir=tmp_path)
    (tmp_path / "worker-0.json").write_text(json.dumps({"pid": 4242, "feed": {"events": 700}}))
    Supervisor._carry_events(sup, child)
    (tmp_path / "worker-0.json").write_text(json.dumps({"pid": 999, "feed": {"events": 50}}))   # not its own
    Supervisor._carry_events(sup, child)
    assert child.earlier_events == 700
    (tmp_path / "supervisor.json").write_text(json.dumps({"children": {"w0": {"restarts": 1, "earlier_events": 700},
                                                                       "writer": {"restarts": 0}}}))
    st = {"feed": {"events": 300, "lost_events": 0}, "signal_ring_head": 40}
    lines = bench.target_losses(1000, 40, st, None, 0, tmp_path)
    assert lines == ["the daemon's w0 was restarted 1 time(s) during the run"], lines
    lines = bench.target_losses(1200, 40, st, None, 0, tmp_path)
    assert "processed 1,000 of the 1,200 events" in lines[0] and "700 of those" in lines[0], lines


@pytest.mark.parametrize("flag", [True, False, None])
@pytest.mark.parametrize("target", ["pipeline", "daemon"])
def test_busy_poll_flags_apply_with_a_config_too(tmp_path, flag, target):
    """`--busy-poll` / `--no-busy-poll` with `--config` were taken and ignored: the target, the zmq
    floor and summary.json's busy_poll all had the config's feeds.busy_poll, nothing said. Given,
    they set it; left out, the config's stands."""
    from tickwire.engine import config as configmod

    own = not configmod.load(configmod.EXAMPLE_PATH).feeds.busy_poll     # unlike the example's
    path = tmp_path / "own.toml"
    path.write_text(configmod.EXAMPLE_PATH.read_text().replace("busy_poll = false", f"busy_poll = {str(own).lower()}")
                    .replace('state_dir = "../tickwire-data"', f'state_dir = "{tmp_path / "state"}"'))
    cfg = configmod.load(path)
    assert cfg.feeds.busy_poll is own
    args = bench.default_args(config=str(path), target=target, busy_poll=flag, events=2_000)
    stream = bench.synthetic_stream(cfg.instruments, cfg.feeds.channels, events=2_000, batch=16, seed=1)
    _, got = bench.Run(args, stream, tmp_path / "work", (1, 0)).target_config("t")
    assert got.feeds.busy_poll is (own if flag is None else flag)
