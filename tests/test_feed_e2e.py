"""End to end on loopback: `tickwire simulate` in its own process publishes 10^6 events with
faults; two receivers (one over ipc, one over tcp) keep their books through the losses with
retransmission, and every receiver book equals the publisher's (full state), with the gaps
counted, and every receiver's tick history holds every published event exactly once.  Then
the same with a publisher restart in the middle, and a slow consumer whose losses come from
ZeroMQ's high-water marks."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ports import free_tcp_port
from tickwire.engine.instruments import make_books
from tickwire.feeds.handler import FeedHandler
from tickwire.feeds.simulator import channel_map, synthetic_instruments

INSTRUMENTS, CHANNELS = 8, 4


def pin(core):
    try:
        os.sched_setaffinity(0, {core % os.cpu_count()})      # this thread only
    except OSError:
        pass


class Receiver(threading.Thread):
    """A FeedHandler in its own thread (pinned to core 1) applying to its own books."""

    def __init__(self, endpoint, snapshot, slow=0.0, **kw):
        super().__init__(daemon=True)
        self.endpoint, self.snapshot, self.slow, self.kw = endpoint, snapshot, slow, kw
        self.insts = synthetic_instruments(INSTRUMENTS)
        self.books = make_books(self.insts)
        self.target = None                 # (epoch, {channel: next_seq}) once the publisher is done
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.counters = self.status = self.error = None
        self.stored = []

    def on_store(self, ev):
        self.stored.append(ev[["channel", "seq", "instrument", "price", "qty"]].copy())

    def history(self):
        return np.concatenate(self.stored)

    def on_batch(self, ev):
        self.books.apply(ev)
        if self.slow:
            time.sleep(len(ev) * self.slow)          # a consumer slower than the feed

    def caught_up(self, h):
        if self.target is None or not h.all_live():
            return False
        epoch, seqs = self.target
        return all(s["epoch"] == epoch and s["next_seq"] == seqs[c] for c, s in h.channel_status().items())

    def run(self):
        pin(1)
        try:
            with FeedHandler(self.endpoint, channel_map(self.insts, CHANNELS), self.on_batch,
                             on_store=self.on_store, snapshot=self.snapshot, **self.kw) as h:
                self.ready.set()
                h.run(until=lambda: self.stop.is_set() or self.caught_up(h))
                self.counters, self.status = h.counters(), h.channel_status()
        except BaseException as exc:          # reported by the test
            self.error = exc
            self.ready.set()


def simulate(tmp_path, endpoints, snapshot, events, *args):
    books = tmp_path / "publisher-books.npz"
    cmd = [sys.executable, "-P", "-m", "tickwire", "simulate", "--snapshot", snapshot,
           "--instruments", str(INSTRUMENTS), "--channels", str(CHANNELS), "--events", str(events),
           "--seed", "11", "--resting", "200", "--batch", "64", "--linger", "3", "--cpu", "0", "--quiet",
           "--save-books", str(books), *args]
    for ep in endpoints:
        cmd += ["--endpoint", ep]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), books


def run_e2e(tmp_path, events, publisher_args, receivers, timeout=300):
    endpoints = [r.endpoint for r in receivers]
    for r in receivers:
        r.start()
        r.ready.wait(10)
        assert r.error is None, r.error
    proc, books_path = simulate(tmp_path, endpoints, receivers[0].snapshot, events, *publisher_args)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    saved = np.load(books_path)
    stats = json.loads(str(saved["stats"]))
    target = (int(saved["epoch"][0]), dict(zip(saved["channels"].tolist(), saved["next_seq"].tolist())))
    for r in receivers:
        r.target = target
    for r in receivers:
        r.join(60)
        r.stop.set()
        r.join(5)
        assert r.error is None, r.error
        assert r.counters is not None, "receiver did not finish"
    return saved, stats


def check_books(receiver, saved):
    """The receiver's books equal the publisher's: every level, every order in queue order."""
    for inst in receiver.insts:
        mine = receiver.books[inst.id]
        assert np.array_equal(mine.snapshot_events(), saved[f"book_{inst.id}"]), inst.symbol
        assert mine.in_sync
    assert receiver.books.rejects == {}


def check_counters(c, stats, restarts=0):
    print(f"  {c['messages']:,} messages, {c['events']:,} live events, gaps {c['gaps']}, recoveries "
          f"{c['recoveries']} (requests {c['recovery_requests']}, retries {c['recovery_retries']}), "
          f"restarts {c['restarts']}, buffered {c['buffered']} (covered {c['covered']}), "
          f"snapshot events {c['snapshot_events']:,}, drops {c['drops']}; publisher dropped "
          f"{stats['dropped']}, duplicated {stats['duplicated']}, reordered {stats['reordered']}")
    print(f"  retransmission requests {c['retransmit_requests']} (retries {c['retransmit_retries']}), "
          f"events sent again {c['retransmitted']:,}, reordered {c['reordered']}, stored {c['stored_events']:,}, "
          f"lost {c['lost_events']}")
    assert c["recovery_failures"] == 0
    # snapshots: one per channel at start, one per restart (gaps are filled by retransmission),
    # and one per loss that found no snapshot already on its way (handler._want_snapshot): a
    # loss met at the restart itself is healed by the restart's (seen once under the whole
    # suite's load: 8 recoveries for 4 + 4 + 1)
    assert c["restarts"] == restarts * CHANNELS
    assert CHANNELS + c["restarts"] <= c["recoveries"] <= CHANNELS + c["restarts"] + c["losses"]
    assert c["recovery_requests"] == c["recoveries"] + c["recovery_retries"]
    assert set(c["drops"]) <= {"DUPLICATE", "OLD_EPOCH", "STALE_REPLY"}   # nothing malformed


def check_history(receiver, published, restart=False):
    """Every published event in the receiver's tick history exactly once, in sequence per
    channel (after a publisher restart, each epoch's sequence from 1); with a restart, what
    the old epoch had not yet delivered when it went away is the only shortfall."""
    got = receiver.history()
    assert len(got) <= published
    runs = holes = 0
    for c in range(CHANNELS):
        seq = got["seq"][got["channel"] == c].astype(np.int64)
        starts = np.flatnonzero(np.diff(seq) != 1) + 1        # where a new epoch starts again at 1
        parts = np.split(seq, starts)
        for part in parts:
            runs += 1
            if not restart:
                assert part[0] == 1, (c, part[:3])
            assert (np.diff(part) == 1).all()
        if restart and len(starts) > 1:
            # under load a loss of the old epoch can still be waiting for its retransmission when
            # the publisher goes away (its retention with it): a hole, forward only, which the
            # receiver counts as lost (seen once in CI: 64 events, "lost 64")
            for prev, nxt in zip(parts[:-2], parts[1:-1]):
                assert nxt[0] > prev[-1] + 1, (c, prev[-1], nxt[0])
                holes += int(nxt[0] - prev[-1] - 1)
            starts = starts[-1:]
        assert len(starts) == int(restart), (c, len(starts))
        if restart:                           # the publisher's last epoch, complete from seq 1
            assert parts[-1][0] == 1 and len(parts[-1]) == receiver.target[1][c] - 1, (c, len(parts[-1]))
    assert holes <= receiver.counters["lost_events"], (holes, receiver.counters["lost_events"])
    if not restart:
        assert len(got) == published and receiver.counters["lost_events"] == 0
    else:
        # the only shortfall is the old epoch's tail that had not reached the receiver when the
        # publisher went away (in its queues, dropped or held back by reordering): the simulated
        # crash's own loss, a message or two per channel on a quiet machine, more when the
        # receiver lags on a loaded one (12-24 messages seen during the whole suite)
        assert published - len(got) - receiver.counters["lost_events"] <= 0.01 * published


@pytest.mark.parametrize("restart", [False, True], ids=["drops", "drops+restart"])
def test_million_events_with_one_percent_dropped(tmp_path, restart):
    """10^6 events, 1% of messages dropped (plus duplicates, reordering and a slow snapshot
    service); receivers over ipc and tcp end with books equal to the publisher's."""
    snap = f"ipc://{tmp_path}/snap"
    rx = [Receiver(f"ipc://{tmp_path}/data", snap, rcvhwm=0),
          Receiver(f"tcp://127.0.0.1:{free_tcp_port()}", snap, rcvhwm=0)]
    args = ["--rate", "0", "--drop", "0.01", "--duplicate", "0.002", "--reorder", "0.002",
            "--snapshot-delay", "0.002", "--sndhwm", "0", "--wait-subscribers", "20", "--subscribers", "2"]
    if restart:
        args += ["--restart-at", "500000"]
    saved, stats = run_e2e(tmp_path, 1_000_000, args, rx)
    assert stats["events"] == 1_000_000 and stats["restarts"] == int(restart)
    assert stats["dropped"] > 0.005 * stats["messages"]
    for r, name in zip(rx, ("ipc", "tcp")):
        print(f"{name}:")
        check_counters(r.counters, stats, restarts=int(restart))
        assert 0 < r.counters["gaps"] <= stats["dropped"] + stats["reordered"]
        check_books(r, saved)
        check_history(r, stats["events"], restart)


def test_slow_consumer_losses_at_the_high_water_mark_are_recovered(tmp_path):
    """No faults injected: a consumer slower than the feed, small high-water marks, and
    ZeroMQ drops messages silently; the sequence numbers show it and recovery repairs it. The
    publisher idles a second first, so the receiver is in sync before the stream (else the whole
    stream can be over, buffered and covered by its first snapshot, before it goes live)."""
    snap = f"ipc://{tmp_path}/snap"
    rx = [Receiver(f"ipc://{tmp_path}/data", snap, slow=2e-6, rcvhwm=20, silence_timeout=5)]
    saved, stats = run_e2e(tmp_path, 200_000, ["--rate", "0", "--pregenerate", "--sndhwm", "20",
                                               "--wait-subscribers", "20", "--start-delay", "1"], rx)
    assert stats["dropped"] == 0
    c = rx[0].counters
    print("slow consumer:")
    check_counters(c, stats)
    assert c["gaps"] > 0                     # losses nobody injected: the high-water marks
    check_books(rx[0], saved)
    check_history(rx[0], stats["events"])


def test_a_simulator_stopped_by_sigterm_still_serves_what_the_wire_lost(tmp_path):
    """SIGTERM stops the publishing at the next message; the simulator then lingers as after its
    last event (retransmissions and snapshots served), says END and saves its books. A receiver
    ends with every event it published, even where the last messages were lost (30% dropped
    here: the END's sequence shows a trailing loss). It used to stop serving at once, and a
    loss found at the stop was never filled (a daemon's stop held those events, exit 1)."""
    import signal

    snap = f"ipc://{tmp_path}/snap"
    rx = Receiver(f"ipc://{tmp_path}/data", snap, rcvhwm=0)
    rx.start()
    rx.ready.wait(10)
    assert rx.error is None, rx.error
    proc, books_path = simulate(tmp_path, [rx.endpoint], snap, 100_000_000, "--rate", "100000", "--drop", "0.3",
                                "--wait-subscribers", "20")
    try:
        deadline = time.monotonic() + 60
        while sum(map(len, list(rx.stored))) < 30_000 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.returncode != 0:
            rx.stop.set()
    assert proc.returncode == 0, err[-3000:]
    saved = np.load(books_path)
    stats = json.loads(str(saved["stats"]))
    assert 30_000 <= stats["events"] < 100_000_000 and stats["dropped"] > 0.2 * stats["messages"]
    rx.target = (int(saved["epoch"][0]), dict(zip(saved["channels"].tolist(), saved["next_seq"].tolist())))
    rx.join(60)
    rx.stop.set()
    rx.join(5)
    assert rx.error is None, rx.error
    assert rx.counters is not None, "receiver did not finish"
    check_books(rx, saved)
    check_history(rx, stats["events"])


def test_a_second_signal_ends_the_simulator_s_linger_at_once(tmp_path):
    """The first SIGTERM stops the publishing and leaves the linger (here 60 s) to run; a second
    ends it: the simulator reports and exits 0 at once."""
    import signal

    proc, _ = simulate(tmp_path, [f"ipc://{tmp_path}/data"], f"ipc://{tmp_path}/snap", 10**9, "--rate", "1000",
                       "--linger", "60")
    try:
        line = proc.stdout.readline()              # (its signal handlers are set by then)
        assert line.startswith("publishing on"), line + proc.stderr.read()[-3000:]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert proc.poll() is None, "the first SIGTERM did not linger"
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - t < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.parametrize("who", ["simulator", "replay"])
@pytest.mark.parametrize("asking, bounds", [(1.5, (1.6, 4.5)), (None, (3.9, 7.5))], ids=["until-quiet", "at-most-10x"])
def test_a_publisher_lingers_while_receivers_still_ask(tmp_path, who, asking, bounds):
    """A fixed linger ended a loaded simulator between a receiver's request and its retry, and
    the events asked for were counted lost. The linger (0.4 s here) of `tickwire simulate` and of
    `tickwire replay --publish` (and the bridge's, the replay's publisher) goes on while requests
    come, until 0.4 s pass without one (a receiver asking for 1.5 s, every 0.1 s or so: over past
    1.6 s), and at most 10 times as long (one that never stops: over at 4 s)."""
    import zmq

    from tickwire.feeds import wire
    from tickwire.feeds.simulator import Simulator
    from tickwire.feeds.wire import WireFlag
    from tickwire.replay.publish import Republisher

    insts = synthetic_instruments(2)
    snap = f"ipc://{tmp_path}/snap"
    if who == "simulator":
        sim = Simulator(f"ipc://{tmp_path}/data", snapshot=snap, instruments=insts, channels=2, seed=3, batch=32,
                        heartbeat=0.05)
        epoch, run, close = sim.epoch, (lambda: sim.run(events=200, linger=0.4)), (lambda: sim.close(0))
    else:
        pub = Republisher(f"ipc://{tmp_path}/data", snap, insts, 2)
        epoch, run, close = pub.publisher.epoch, (lambda: pub.linger(0.4, until_quiet=True)), (lambda: pub.close(0))
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(snap)
    answered, done = [], threading.Event()

    def client():
        t0, k = time.monotonic(), 0
        while not done.is_set() and time.monotonic() - t0 < 12:
            if asking is None or time.monotonic() - t0 < asking:
                k += 1
                dealer.send(wire.encode_retransmit_request(0, k, 1, 5, epoch=epoch))
            while dealer.poll(100):
                h, _ = wire.decode(None, dealer.recv(), types=wire.TYPES_REPLY)
                if h.flags & WireFlag.FINAL:
                    answered.append(time.monotonic() - t0)

    try:
        t = threading.Thread(target=client)
        t0 = time.monotonic()
        t.start()
        run()
        took = time.monotonic() - t0
        done.set()
        t.join(15)
    finally:
        done.set()
        close()
        dealer.close(0)
        ctx.term()
    assert bounds[0] <= took < bounds[1], (took, len(answered))
    assert answered and answered[-1] > bounds[0] - 0.6, answered[-5:]     # served while it lingered


def test_a_signal_ends_the_simulator_s_wait_for_subscribers(tmp_path):
    """A review: a SIGTERM (even two) during --wait-subscribers went unheard until the wait ran
    out (pyzmq polls on after the handler), then "no subscriber", exit 2. It now ends the wait:
    nothing published, one line, exit 0."""
    import signal

    proc, _ = simulate(tmp_path, [f"ipc://{tmp_path}/data"], f"ipc://{tmp_path}/snap", 1000, "--wait-subscribers", "60")
    try:
        from tickwire.feeds import wire

        end = time.monotonic() + 60                  # bound: its handlers are set by then
        while not wire.ipc_in_use(f"ipc://{tmp_path}/data"):
            assert proc.poll() is None and time.monotonic() < end
            time.sleep(0.05)
        time.sleep(0.3)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - t < 5, "the wait went on"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "stopped while waiting for subscribers: nothing published" in out, (out, err)
