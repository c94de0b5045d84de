"""Live parity: the daemon runs live on the simulator, storing ticks, snapshots and signals; a
replay of the stored history gives the live signals, field for field.

With ``engine.clock = "event"`` the live engine stamps ``ts_signal`` with the trigger's
``ts_recv``, which the store keeps, so even the clock fields are equal: every byte of every
signal. (Under the default wall clock, ``ts_signal`` is the live process's clock and only it
differs; ``ts_recv`` is the recorded receive time either way.)
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_daemon import query, start_daemon, start_sim, status, stop_daemon, wait_for, write_config
from tickwire.engine.instruments import make_books
from tickwire.engine.live import MAX_DEPTH, request_books
from tickwire.ext.records import Kind, Side

pytestmark = pytest.mark.integration
PY = sys.executable


def stored_signals(dsn, run, path):
    code = ("import numpy as np\nfrom tickwire.engine.store import Store\n"
            f"s = Store.open({dsn!r})\nnp.save({str(path)!r}, s.read_signals({run!r}))")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return np.load(path)


def canonical(sig):
    """Signals in one order whatever the order they were stored in (live: by ts_signal)."""
    return sig[np.lexsort((sig["rule_id"], sig["seq"], sig["instrument"], sig["ts_event"]))]


def live_then_replay(tmp_path, run, events, *sim_args, clock="event", at_least=None, kill_at=None):
    """``at_least``: the ticks stored to wait for, then for the count to stay (default: every
    event published; a publisher restart leaves the old epoch's unsent tail out; the current worker's own
    count, after a restart); ``kill_at``: the
    worker is killed (kill -9) once it has taken in more events than that, and restarted."""
    cfg_path, raw = write_config(tmp_path, run, clock=clock)
    run_dir = tmp_path / "state" / run
    daemon, log = start_daemon(cfg_path, tmp_path)
    try:
        assert wait_for(lambda: status(run_dir)["pid"]), "the worker never reported"
        sim = start_sim(raw, events, 100_000, *sim_args, seed=11)
        if kill_at is not None:
            pid = status(run_dir)["pid"]
            assert wait_for(lambda: status(run_dir)["feed"]["events"] > kill_at, 60)
            os.kill(pid, signal.SIGKILL)
            assert wait_for(lambda: status(run_dir)["pid"] not in (0, pid), 30), "the worker was not restarted"
        out, _ = sim.communicate(timeout=180)
        assert sim.returncode == 0, out
        if at_least is None:
            assert wait_for(lambda: status(run_dir)["counts"]["ticks_stored"] >= events, 60)
        else:
            def settled(seen=[]):
                seen.append(status(run_dir)["counts"]["ticks_stored"])
                return len(seen) > 4 and seen[-1] == seen[-5] >= at_least
            assert wait_for(settled, 60, every=0.5), status(run_dir)["counts"]
        live_count = status(run_dir)["counts"]["signals"]
    finally:
        rc, _ = stop_daemon(daemon, log)
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    dsn = f"chdb://{tmp_path}/state/store"
    live = stored_signals(dsn, run, tmp_path / "live.npy")
    # (a restarted worker's status counts its own signals only)
    assert len(live) > 20 and (kill_at is not None or len(live) == live_count)
    replays = []
    for batch in (None, 777):
        out_path = tmp_path / f"replayed-{batch}.npy"
        argv = [PY, "-m", "tickwire", "replay", "--dsn", dsn, "--config", str(cfg_path), "--signals", str(out_path),
                "--quiet"] + (["--batch", str(batch)] if batch else [])
        res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        # a daemon's own store: nothing missing nor held twice (the markers account for the rest)
        assert "misses" not in res.stderr and "come again" not in res.stderr, res.stderr
        replays.append(np.load(out_path))
    return live, replays, dsn


def assert_parity(live, replays, wall=()):
    a = canonical(live)
    for r in replays:
        b = canonical(r)
        assert len(b) == len(a)
        for name in a.dtype.names:                 # name the first field that differs
            if name not in wall:
                assert (a[name] == b[name]).all(), name
        if not wall:
            assert a.tobytes() == b.tobytes()
    assert replays[0].tobytes() == replays[1].tobytes()      # and whatever the batch size


def test_replayed_signals_equal_the_live_ones_field_for_field(tmp_path):
    live, replays, dsn = live_then_replay(tmp_path, "parity", 200_000)
    assert_parity(live, replays)                   # every byte: ts_signal is the recorded ts_recv
    # with the instrument definitions from the store and only the rules from a file: the same
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    raw = demo_raw_config(tmp_path / "x", run="parity", clock="event")
    rules = tmp_path / "rules.toml"
    rules.write_text(to_toml({"stats": raw["stats"], "rules": raw["rules"],
                              "feeds": {"channels": raw["feeds"]["channels"]}}))
    res = subprocess.run([PY, "-m", "tickwire", "replay", "--dsn", dsn, "--rules", str(rules), "--instruments",
                          "SYN0,SYN1,SYN2,SYN3,SYN4,SYN5,SYN6,SYN7", "--signals", str(tmp_path / "r.npy"), "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_parity(live, [np.load(tmp_path / "r.npy")] * 2)
    # the books met snapshots and markers at start: the replay merged them back
    (snaps,), = query(dsn, "SELECT count() FROM tickwire.snapshots")
    assert snaps > 0
    # the writer recorded the config's instruments: a replay without --config knows them
    assert query(dsn, "SELECT id, symbol, toString(tick_size), book FROM tickwire.instruments FINAL ORDER BY id") == \
        [[i, f"SYN{i}", "0.01", "L3"] for i in range(8)]


def test_ticks_missing_at_a_channel_s_end_or_all_of_a_channel_s_are_said(tmp_path):
    """Found by an adversarial pass: a daemon's store with a channel's last 100 ticks deleted (a
    restore without the latest partition), or all of a channel's, replayed without a word. The
    STALE markers of a feed gone silent (its publisher killed: no END) name the last number each
    channel received: the numbers up to it are owed. (A daemon stopped while its feed is live
    leaves no such marker: docs/replay.md.)"""
    from test_daemon import publishing

    cfg_path, raw = write_config(tmp_path, "tail", clock="event")
    raw["feeds"]["stale_after_ms"] = 500
    from tickwire.engine.config import to_toml
    cfg_path.write_text(to_toml(raw))
    run_dir = tmp_path / "state" / "tail"
    daemon, log = start_daemon(cfg_path, tmp_path)
    sim = None
    try:
        assert wait_for(lambda: status(run_dir)["pid"]), "the worker never reported"
        sim, _ = publishing(raw, run_dir, 10_000_000, 50_000, 60_000)
        sim.kill()                                        # no END: the channels go silent, then stale
        sim.wait()
        assert wait_for(lambda: status(run_dir)["feed"]["silences"] >= 4, 30), status(run_dir)["feed"]
        time.sleep(1.0)                                   # (the markers stored)
    finally:
        if sim is not None and sim.poll() is None:
            sim.kill()
            sim.wait()
        rc, _ = stop_daemon(daemon, log)
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    dsn = f"chdb://{tmp_path}/state/store"
    res = subprocess.run([PY, "-m", "tickwire", "replay", "--dsn", dsn, "--quiet"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "misses" not in res.stderr, res.stderr
    (top,), = query(dsn, "SELECT max(seq) FROM tickwire.ticks WHERE channel = 0")
    code = ("from tickwire.engine.store import Store\n"
            f"s = Store.open({dsn!r})\n"
            f"s.client.command('DELETE FROM tickwire.ticks WHERE channel = 0 AND seq > {int(top) - 100}')\n"
            "s.client.command('DELETE FROM tickwire.ticks WHERE channel = 3')")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    res = subprocess.run([PY, "-m", "tickwire", "replay", "--dsn", dsn, "--quiet"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"channel 0 seq {int(top) - 99:,}..{int(top):,}" in res.stderr, res.stderr
    assert "channel 3 seq " in res.stderr, res.stderr


def test_parity_holds_through_lost_and_reordered_messages(tmp_path):
    """1% of messages dropped and 1% reordered on the wire: the daemon fills the holes by
    retransmission, and the replay still gives the live signals."""
    live, replays, _ = live_then_replay(tmp_path, "lossy", 200_000, "--drop", "0.01", "--reorder", "0.01")
    assert_parity(live, replays)


def test_parity_holds_through_a_publisher_restart(tmp_path):
    """From a review: the store keeps no publisher epoch per tick, and the merge placed a restart's
    marker (stamped with the old epoch's last number) after every tick of the new epoch below that
    number, with every later snapshot of the channel: the replay gave 216 signals for live's 79.
    With losses, copies and reorders around a restart, the replay gives the live signals, and the
    store check finds nothing missing nor twice.

    (Retention of 20,000 events a channel, 0.8 s at this rate: with 3,000 a loaded machine's
    worker, catching up after the restart, found ranges aged out while its new epoch's books
    waited for their snapshot; such a loss writes no marker, and where the old epoch's held tail
    came between the restart's marker and the new epoch's 1 the check said "misses 22 events" of
    a store the daemon had said lost them. The check now tells that layout:
    test_replay_audit.py, test_a_restart_s_marker_met_before_the_old_epoch_s_held_tail_still_excuses_the_new_epoch_s_losses.)"""
    live, replays, _ = live_then_replay(tmp_path, "pubrestart", 150_000, "--drop", "0.01", "--reorder", "0.01",
                                        "--duplicate", "0.01", "--retain", "20000", "--restart-at", "60000",
                                        at_least=100_000)
    assert_parity(live, replays)


def test_parity_holds_through_a_worker_killed_just_before_a_publisher_restart(tmp_path):
    """From a review: a worker restarted shortly before the publisher's restart stores one RESTART
    marker per instrument at one number; the merge took the second for a numbering the markers did
    not foresee and shifted every later run: the new epoch's snapshot went after its last tick,
    its books out of sync for the whole epoch (42 signals for live's 70, nothing said)."""
    live, replays, _ = live_then_replay(tmp_path, "killrestart", 150_000, "--drop", "0.005", "--retain", "3000",
                                        "--restart-at", "60000", at_least=1_000, kill_at=55_000)
    assert_parity(live, replays)


def test_parity_holds_through_a_publisher_s_bad_stamps(tmp_path):
    """One event in a thousand stamped between 2030 and 2262 (a publisher's bad clock): live, the
    statistics take them at their receipt; the replay from the store does the same from the stored
    ts_recv, and gives the live signals."""
    live, replays, dsn = live_then_replay(tmp_path, "stamps", 200_000, "--future-stamps", "0.001")
    (bad,), = query(dsn, "SELECT countIf(ts_event >= toDateTime64('2030-01-01 00:00:00', 9, 'UTC')) FROM tickwire.ticks")
    assert bad > 100
    assert_parity(live, replays)


def test_an_unchanged_daemon_consumes_a_republished_history(tmp_path):
    """`tickwire replay --publish` feeds a `tickwire run` daemon as a live publisher would: every
    event stored once, flagged REPLAY, and the daemon's signals are the in-process replay's (but
    for the receive times the daemon stamped and the sequence numbers the republisher gave)."""
    from tickwire.engine import config as configmod
    from tickwire.feeds.synthetic import l3_orders
    from tickwire.replay import ArraySource, EngineSpec, Replay

    cfg_path, raw = write_config(tmp_path, "republish", clock="event")
    # every event sampled (the demo samples per message): more signals to compare, mid-message
    # states included
    from tickwire.engine.config import to_toml

    raw["stats"]["sample"] = "event"
    cfg_path.write_text(to_toml(raw))
    cfg = configmod.load(cfg_path)
    ev = l3_orders(100_000, seed=4, instruments=8, resting=200)
    ev["channel"] = ev["instrument"] % cfg.feeds.channels
    np.save(tmp_path / "ev.npy", ev)
    want = Replay(ArraySource(ev, list(cfg.instruments)), EngineSpec.from_config(cfg)).run().signals
    run_dir = tmp_path / "state" / "republish"
    daemon, log = start_daemon(cfg_path, tmp_path)
    try:
        assert wait_for(lambda: status(run_dir)["pid"]), "the worker never reported"
        pub = subprocess.run([PY, "-m", "tickwire", "replay", "--npy", str(tmp_path / "ev.npy"), "--config",
                              str(cfg_path), "--publish", raw["feeds"]["endpoints"][0], "--snapshot",
                              raw["feeds"]["snapshot"], "--speed", "1", "--start-delay", "2", "--linger", "2",
                              "--quiet"], capture_output=True, text=True, timeout=120)
        assert pub.returncode == 0, pub.stderr
        assert wait_for(lambda: status(run_dir)["counts"]["ticks_stored"] >= len(ev), 60)
        # the running daemon's books, read through the supported request: every level equal
        live_books = request_books(run_dir, depth=MAX_DEPTH)
        cli = subprocess.run([PY, "-m", "tickwire", "books", "--config", str(cfg_path), "-i", cfg.instruments[1].symbol,
                              "--depth", "3"], capture_output=True, text=True, timeout=60)
    finally:
        rc, _ = stop_daemon(daemon, log)
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    ref = make_books(cfg.instruments)
    ref.apply(ev)
    assert sorted(live_books) == [i.id for i in cfg.instruments]
    for inst in cfg.instruments:
        got, book = live_books[inst.id], ref[inst.id]
        assert got["symbol"] == inst.symbol and got["in_sync"]
        assert got["bids"] == book.levels(Side.BID).tolist() and got["asks"] == book.levels(Side.ASK).tolist()
    assert cli.returncode == 0 and cfg.instruments[1].symbol in cli.stdout and "in sync" in cli.stdout, cli.stderr
    assert cfg.instruments[0].symbol not in cli.stdout
    dsn = f"chdb://{tmp_path}/state/store"
    (n, distinct, replayed), = query(dsn, "SELECT count(), uniqExact(channel, seq), countIf(bitAnd(flags, 16) != 0) "
                                          "FROM tickwire.ticks")
    assert n == distinct == replayed == len(ev)
    # market events counted by the API and the view; ticks_decimal has every row with its symbol
    (market,), = query(dsn, "SELECT count() FROM tickwire.market_events")
    (dec, unnamed), = query(dsn, "SELECT count(), countIf(symbol = '') FROM tickwire.ticks_decimal")
    assert market == dec == len(ev) and unnamed == 0
    # markers and snapshot rows carry exchange time: inside the history's span, not the wall clock
    (lo, hi), = query(dsn, "SELECT toUnixTimestamp64Nano(min(ts_event)), toUnixTimestamp64Nano(max(ts_event)) "
                           "FROM tickwire.ticks")
    (snaps, markers, outside), = query(dsn, "SELECT count(), countIf(kind = 6), countIf(toUnixTimestamp64Nano(ts_event) "
                                            f"NOT BETWEEN {lo} AND {hi}) FROM tickwire.snapshots")
    assert int(lo) == int(ev["ts_event"].min()) and int(hi) == int(ev["ts_event"].max())
    assert snaps > 0 and markers > 0 and outside == 0
    got = stored_signals(dsn, "republish", tmp_path / "live.npy")
    fields = ["ts_event", "value", "strength", "instrument", "rule_id", "rule_kind", "direction", "flags"]

    def rows(sig):
        s = sig[np.lexsort((sig["rule_id"], sig["ts_event"], sig["instrument"]))]
        return {f: s[f] for f in fields}

    a, b = rows(want), rows(got)
    assert len(want) > 100 and len(got) == len(want)
    for f in fields:
        assert (a[f] == b[f]).all(), f


def test_under_the_wall_clock_only_ts_signal_differs(tmp_path):
    """The daemon's default clock: ts_signal is the live process's clock; every other field
    (ts_recv included: the store keeps the receive time the engine saw) is the live one."""
    live, replays, _ = live_then_replay(tmp_path, "wall", 100_000, clock="wall")
    assert_parity(live, replays, wall=("ts_signal",))
    assert (live["ts_signal"] >= live["ts_recv"]).all()
    assert (replays[0]["ts_signal"] == replays[0]["ts_recv"]).all()


def test_parity_holds_through_a_killed_and_restarted_worker(tmp_path):
    """kill -9 of the worker mid-run: the restarted worker starts with empty statistics and armed
    rules (its STALE markers say so with Flag.RESTART, stamped where its history resumes), resyncs
    by snapshot; the replay resets the instruments there and gives the live signals."""
    import os
    import signal as sigmod

    cfg_path, raw = write_config(tmp_path, "killed", clock="event")
    run_dir = tmp_path / "state" / "killed"
    daemon, log = start_daemon(cfg_path, tmp_path)
    try:
        assert wait_for(lambda: status(run_dir)["pid"])
        sim = start_sim(raw, 300_000, 100_000, seed=5)
        pid = status(run_dir)["pid"]
        assert wait_for(lambda: status(run_dir)["feed"]["events"] > 120_000, 60)
        os.kill(pid, sigmod.SIGKILL)
        assert wait_for(lambda: status(run_dir)["pid"] != pid, 30), "the worker was not restarted"
        out, _ = sim.communicate(timeout=180)
        assert sim.returncode == 0, out
        assert wait_for(lambda: all(c["state"] == "live" and c["in_sync"]
                                    for c in status(run_dir)["channels"].values()), 30)
    finally:
        rc, _ = stop_daemon(daemon, log)
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    dsn = f"chdb://{tmp_path}/state/store"
    (restarts,), = query(dsn, "SELECT count() FROM tickwire.snapshots WHERE bitAnd(flags, 64) != 0 AND seq > 0")
    assert restarts > 0                            # the restarted worker's markers, where it resumed
    live = stored_signals(dsn, "killed", tmp_path / "live.npy")
    out_path = tmp_path / "replayed.npy"
    res = subprocess.run([PY, "-m", "tickwire", "replay", "--dsn", dsn, "--config", str(cfg_path), "--signals",
                          str(out_path), "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert_parity(live, [np.load(out_path), np.load(out_path)])
    # republished, the restart markers go out, but a receiving daemon's engine does not begin
    # afresh at them: said
    ipc = f"ipc://{tmp_path}/rp"
    res = subprocess.run([PY, "-m", "tickwire", "replay", "--dsn", dsn, "--config", str(cfg_path), "--publish",
                          f"{ipc}-d", "--snapshot", f"{ipc}-s", "--start-delay", "0", "--linger", "0", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "the live worker restarted within" in res.stderr and "8 instruments" in res.stderr, res.stderr


def test_a_republished_store_gives_a_daemon_the_live_books_and_signals(tmp_path):
    """A daemon that joined a running publisher took its books from the join snapshot (every
    resting order); the ticks before were never stored. `tickwire replay --dsn ... --publish`
    sends the store's snapshots and markers in the data stream where the live engine met them,
    so a second, unchanged daemon fed by it ends with the first one's books and signals (ticks
    alone left it without the join snapshot's orders: its L3 books refused their deletions)."""
    from tickwire.engine.config import to_toml

    runs = {}
    for name in ("origin", "copy"):
        (tmp_path / name).mkdir()
        cfg_path, raw = write_config(tmp_path / name, name, clock="event")
        raw["stats"]["sample"] = "event"          # message boundaries differ between the two feeds
        cfg_path.write_text(to_toml(raw))
        runs[name] = cfg_path, raw, tmp_path / name / "state" / name, f"chdb://{tmp_path / name}/state/store"
    cfg_a, raw_a, dir_a, dsn_a = runs["origin"]
    f = raw_a["feeds"]
    # the publisher first, the daemon joining it tens of thousands of events in (history_from =
    # "join"); the publisher stopped (SIGTERM: a clean end) once the daemon has taken 90,000
    sim = subprocess.Popen([PY, "-m", "tickwire", "simulate", "--endpoint", f["endpoints"][0], "--snapshot",
                            f["snapshot"], "--instruments", "8", "--channels", str(f["channels"]), "--rate", "30000",
                            "--duration", "120", "--seed", "8", "--resting", "200", "--cpu", "0", "--quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    daemon = None
    try:
        time.sleep(2.5)
        daemon, log = start_daemon(cfg_a, tmp_path / "origin")
        assert wait_for(lambda: status(dir_a)["feed"]["events"] > 90_000, 90)
    finally:
        sim.send_signal(signal.SIGTERM)
        out, _ = sim.communicate(timeout=60)
        if daemon is not None:
            time.sleep(1)
            rc, _ = stop_daemon(daemon, log)
    assert sim.returncode == 0, out
    assert rc == 0, (tmp_path / "origin" / "daemon.log").read_text()[-3000:]
    (ticks, first), = query(dsn_a, "SELECT count(), min(seq) FROM tickwire.ticks")
    (resting,), = query(dsn_a, f"SELECT count() FROM tickwire.snapshots WHERE kind = {int(Kind.ADD)}")
    assert ticks > 90_000 and first > 1000 and resting > 100      # it joined late, by snapshot
    live = stored_signals(dsn_a, "origin", tmp_path / "live.npy")
    assert len(live) > 20

    cfg_b, raw_b, dir_b, dsn_b = runs["copy"]
    daemon, log = start_daemon(cfg_b, tmp_path / "copy")
    try:
        assert wait_for(lambda: status(dir_b)["pid"]), "the worker never reported"
        pub = subprocess.run([PY, "-m", "tickwire", "replay", "--dsn", dsn_a, "--config", str(cfg_b), "--publish",
                              raw_b["feeds"]["endpoints"][0], "--snapshot", raw_b["feeds"]["snapshot"],
                              "--wait-subscribers", "30", "--linger", "1", "--quiet"],
                             capture_output=True, text=True, timeout=180)
        assert pub.returncode == 0 and "restarted" not in pub.stderr, pub.stderr
        assert wait_for(lambda: status(dir_b)["counts"]["ticks_stored"] >= ticks, 60)
        books = request_books(dir_b, depth=MAX_DEPTH)
    finally:
        rc, _ = stop_daemon(daemon, log)
    assert rc == 0, (tmp_path / "copy" / "daemon.log").read_text()[-3000:]
    # the books: those of an in-process replay of the origin's store (the live parity tests'
    # reference), every level
    from tickwire.engine import config as configmod
    from tickwire.replay import EngineSpec, Replay, StoreSource

    with StoreSource(dsn_a) as src:
        rp = Replay(src, EngineSpec.from_config(configmod.load(cfg_a)))
        for step in rp.steps():
            pass
        for i in range(8):
            ref = step.book(i)
            assert books[i]["bids"] == ref.levels(Side.BID).tolist(), i
            assert books[i]["asks"] == ref.levels(Side.ASK).tolist(), i
    got = stored_signals(dsn_b, "copy", tmp_path / "copy.npy")
    fields = ["ts_event", "value", "strength", "instrument", "rule_id", "rule_kind", "direction", "flags"]
    a = live[np.lexsort((live["rule_id"], live["ts_event"], live["instrument"]))]
    b = got[np.lexsort((got["rule_id"], got["ts_event"], got["instrument"]))]
    assert len(b) == len(a)
    for name in fields:
        assert (a[name] == b[name]).all(), name
    # every tick once; the join snapshot's orders and the origin's markers came through, flagged
    # REPLAY, the markers' order_id (the origin's publisher epoch) 0
    (n, distinct), = query(dsn_b, "SELECT count(), uniqExact(channel, seq) FROM tickwire.ticks")
    # REPLAY, the markers' order_id (the origin's publisher epoch) 0 and their RESTART (the origin
    # worker's start, not this daemon's: a replay of this store would restart its engine there) gone
    (added, markers, with_epoch, restarts), = query(
        dsn_b, f"SELECT countIf(kind = {int(Kind.ADD)}), countIf(kind = {int(Kind.SNAPSHOT)}), "
               f"countIf(kind = {int(Kind.SNAPSHOT)} AND order_id != 0), countIf(bitAnd(flags, 64) != 0) "
               f"FROM tickwire.snapshots WHERE bitAnd(flags, 16) != 0")
    assert n == distinct == ticks and added == resting and markers > 0 and with_epoch == restarts == 0
