"""The simulator: a deterministic market, exact per-channel sequencing, faults as counted,
constant-rate send times, the snapshot service, restarts, the CLI, and the real captures
published through the wire into a feed handler."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from tickwire.engine import cli
from tickwire.engine.instruments import make_books
from tickwire.ext import Kind, codec
from tickwire.feeds import captures, wire
from tickwire.feeds.handler import FeedHandler
from tickwire.feeds.iothread import realtime_permitted
from tickwire.feeds.simulator import (Faults, Market, SnapshotService, Simulator, channel_map,
                                      synthetic_instruments)
from tickwire.feeds.wire import Drop, MsgType, WireFlag


# -- the market ------------------------------------------------------------------------------

def test_market_is_deterministic_and_independent_of_chunking():
    a = Market(6, seed=3).generate(30_000)
    m = Market(6, seed=3)
    b = np.concatenate([m.generate(k) for k in (1, 999, 10_000, 7, 18_993)])
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != Market(6, seed=4).generate(30_000).tobytes()


def test_market_flow_is_valid_stationary_bursty_and_near_the_top():
    n, resting = 60_000, 300
    ev = Market(4, seed=1, resting=resting).generate(n)
    books = make_books(synthetic_instruments(4))
    assert books.apply(ev) == n and books.rejects == {}            # every event applies
    for b in books:
        assert resting / 2 < b.order_count < 2 * resting             # stationary depth
        assert not b.crossed
    kinds = np.bincount(ev["kind"], minlength=5)
    assert kinds[Kind.ADD] and kinds[Kind.DELETE] and kinds[Kind.MODIFY] and kinds[Kind.TRADE]
    gaps = np.diff(ev["ts_event"]).astype(float)
    assert (gaps > 0).all() and gaps.std() / gaps.mean() > 1.2        # burstier than Poisson
    per_inst = np.bincount(ev["instrument"])
    assert per_inst[0] > 1.5 * per_inst[-1]                        # skewed activity
    # executions hit the front of the best level of the resting side
    books = make_books(synthetic_instruments(4))
    checked = 0
    for i in range(8000):
        e = ev[i]
        if e["kind"] == Kind.TRADE:
            b = books[int(e["instrument"])]
            resting_side = 1 - int(e["side"])
            assert e["price"] == b.best_price(resting_side)
            assert int(e["order_id"]) == int(b.orders_at(resting_side, int(e["price"]))[0, 0])
            checked += 1
        books.apply(ev[i:i + 1])
    assert checked > 100


# -- publishing --------------------------------------------------------------------------------

def collect(ctx, ep, stop, out):
    pull = ctx.socket(zmq.PULL)
    pull.connect(ep)
    while not stop.is_set() or pull.poll(100):
        if pull.poll(20):
            out.append(pull.recv_multipart())
    pull.close(0)


def publish(tmp_path, n, clock=None, **kw):
    """Run a PUSH simulator in this thread and collect everything on a PULL socket; ``clock``
    (a dict) receives the publishing run's wall time and this thread's CPU time."""
    ep = f"ipc://{tmp_path}/sim"
    ctx = zmq.Context()
    got, stop = [], threading.Event()
    sim = Simulator(ep, socket_type="PUSH", heartbeat=0, context=ctx, **kw)
    t = threading.Thread(target=collect, args=(ctx, ep, stop, got))
    t.start()
    try:
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        report = sim.run(events=n)
        if clock is not None:
            clock.update(wall=time.perf_counter() - wall0, cpu=time.thread_time() - cpu0)
    finally:
        time.sleep(0.2)
        stop.set()
        t.join()
        sim.close()
        ctx.term()
    decoded = [wire.decode_frames(m, max_events=1 << 20) for m in got]
    return sim, report, decoded


def test_messages_are_sequenced_per_channel_and_books_follow_what_is_published(tmp_path):
    sim, report, msgs = publish(tmp_path, 20_000, instruments=6, channels=3, seed=2, batch=50, resting=100)
    assert report["events"] == 20_000 and report["sent"] == report["messages"] == len(msgs)
    chmap = channel_map(synthetic_instruments(6), 3)
    seqs = {c: 1 for c in chmap}
    for h, ev in msgs:
        assert h.type == MsgType.DATA and 1 <= h.count <= 50 and h.epoch == sim.epoch
        assert h.seq == seqs[h.channel]
        seqs[h.channel] += h.count
        assert set(ev["instrument"].tolist()) <= set(chmap[h.channel])
    assert seqs == sim.next_seq
    # the stream is the seeded market's, cut per channel in order
    stream = Market(6, seed=2, resting=100).generate(20_000)
    for c, ids in chmap.items():
        mine = np.concatenate([ev for h, ev in msgs if h.channel == c])
        expect = stream[np.isin(stream["instrument"], ids)]
        for f in ("instrument", "kind", "side", "price", "qty", "order_id", "ts_event"):
            assert (mine[f] == expect[f]).all()
    direct = make_books(synthetic_instruments(6))
    direct.apply(stream)
    for i in range(6):
        assert np.array_equal(sim.books[i].snapshot_events(), direct[i].snapshot_events())


def test_faults_are_deterministic_and_counted(tmp_path):
    faults = Faults(drop=0.05, duplicate=0.05, reorder=0.05)
    runs = []
    for k in range(2):
        (tmp_path / str(k)).mkdir()
        sim, report, msgs = publish(tmp_path / str(k), 20_000, instruments=4, channels=2, seed=8,
                                    batch=32, faults=faults)
        runs.append((report, [(h.channel, h.seq) for h, _ in msgs]))
    (report, order), (report2, order2) = runs
    assert order == order2 and {k: report[k] for k in ("dropped", "duplicated", "reordered")} == {
        k: report2[k] for k in ("dropped", "duplicated", "reordered")}
    n = report["messages"]
    for k in ("dropped", "duplicated", "reordered"):
        assert 0.02 * n < report[k] < 0.09 * n
    assert len(order) == n - report["dropped"] + report["duplicated"] == report["sent"]
    assert len(set(order)) == n - report["dropped"]
    ooo = 0                                              # messages that arrive after a later one
    for c in (0, 1):
        seqs = [s for ch, s in order if ch == c]
        seen = set()
        for a, b in zip(seqs, seqs[1:]):
            if b < a and b not in seen:
                ooo += 1
            seen.add(a)
    # a held message goes out after the channel's next one, unless that one is held or dropped too
    assert 0 < ooo <= report["reordered"]


def test_constant_rate_send_times(tmp_path):
    rate = 400_000.0
    sim, report, msgs = publish(tmp_path, 3000, instruments=2, channels=2, seed=1, batch=25, rate=rate)
    sizes = [h.count for h, _ in msgs]
    times = [h.send_time for h, _ in msgs]
    before = np.cumsum([0] + sizes[:-1])
    # the header carries the intended send time: first + events before * (1 / rate)
    expect = times[0] + (before * 1e9 / rate).astype(np.int64)
    assert np.abs(np.array(times) - expect).max() <= 1


def test_snapshot_service_parts_unknown_channels_and_bad_requests(tmp_path):
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.bind(f"ipc://{tmp_path}/snap")
    dealer.connect(f"ipc://{tmp_path}/snap")
    books = make_books(synthetic_instruments(2))
    books.apply(Market(2, seed=1, resting=20).generate(500))
    snap = np.concatenate([books[i].snapshot_events(seq=77) for i in (0, 1)])
    svc = SnapshotService(router, lambda c: (5, 77, snap) if c == 3 else None, part_events=10)
    dec = codec.Decoder(types=codec.TYPES_REPLY, max_events=100)
    try:
        dealer.send(wire.encode_snapshot_request(3, 41))
        dealer.send(wire.encode_snapshot_request(4, 42))
        dealer.send(b"garbage")
        end = time.monotonic() + 5
        while svc.served + svc.unavailable < 2 and time.monotonic() < end:
            router.poll(10)
            svc.serve()
        parts = []
        while dealer.poll(500):
            reason, h, ev = dec.decode_frames(dealer.recv_multipart())
            assert reason == Drop.OK
            parts.append((h, ev))
        ok = [(h, ev) for h, ev in parts if h.request_id == 41]
        assert [h.part for h, _ in ok] == list(range(-(-len(snap) // 10)))
        assert [bool(h.flags & WireFlag.FINAL) for h, _ in ok] == [False] * (len(ok) - 1) + [True]
        assert all((h.seq, h.epoch, h.channel) == (77, 5, 3) for h, _ in ok)
        got = np.concatenate([ev for _, ev in ok])
        got["channel"] = 0                               # the receiver stamps its channel
        assert got.tobytes() == snap.tobytes()
        (h, ev), = [(h, ev) for h, ev in parts if h.request_id == 42]
        assert h.flags == WireFlag.FINAL | WireFlag.UNAVAILABLE and len(ev) == 0
        assert svc.bad_requests == {"TRUNCATED": 1}
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


def test_a_peer_that_asks_and_never_reads_holds_a_bounded_backlog(tmp_path):
    """Found by an adversarial pass: the simulator's recovery service queued replies without
    bound (SNDHWM 0), so a peer asking 1,000 snapshots a second and reading none grew the
    publisher by 1.5 GB in 25 s. Replies past the bound are dropped (a real receiver asks again)."""
    sim = Simulator(f"ipc://{tmp_path}/d", snapshot=f"ipc://{tmp_path}/s", instruments=2, channels=1,
                    heartbeat=0, resting=20)
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVHWM, 1)
    dealer.setsockopt(zmq.SNDHWM, 0)                  # every request goes out
    dealer.connect(f"ipc://{tmp_path}/s")
    try:
        asked = 4000
        for rid in range(asked):                      # (distinct: one asked again is answered once)
            dealer.send(wire.encode_retransmit_request(0, rid + 1, rid + 1, 1, epoch=sim.epoch))
        end = time.monotonic() + 30
        svc = sim._service
        while svc.retransmissions + svc.unavailable + svc.dropped < asked and time.monotonic() < end:
            sim.serve()
        # answered, or dropped unanswered past the service's queue of 1,024 (wire.RecoveryService)
        answered = svc.retransmissions + svc.unavailable
        assert answered + svc.dropped == asked and answered >= 1024, (answered, svc.dropped)
        got = 0
        while dealer.poll(300):
            dealer.recv_multipart()
            got += 1
        # each reply here is one part: at most the service's 1,000 queued, plus what the pipes and
        # the dealer held; the rest were dropped rather than kept
        assert 0 < got < asked * 3 // 4, got
    finally:
        dealer.close(0)
        ctx.term()
        sim.close(0)
    # the bound still holds what one receiver is owed at once: a retransmission of the whole
    # retained range on each of its channels (the review: 8 channels' such replies lost parts)
    sim = Simulator(f"ipc://{tmp_path}/d2", snapshot=f"ipc://{tmp_path}/s2", instruments=16, channels=16,
                    heartbeat=0, resting=5, retain_events=2**18)
    try:
        assert sim._router.getsockopt(zmq.SNDHWM) >= 16 * (2**18 // wire.MAX_MESSAGE_EVENTS + 1)
    finally:
        sim.close(0)

def test_restart_new_epoch_and_sequences_from_one(tmp_path):
    sim, report, msgs = publish(tmp_path, 4000, instruments=2, channels=2, seed=1, batch=40,
                                faults=Faults(restart_at=(2000,)), restart_pause=0.05)
    assert report["restarts"] == 1
    epochs = [h.epoch for h, _ in msgs]
    first, last = epochs[0], epochs[-1]
    assert last > first and sorted(epochs) == epochs
    after = [(h.channel, h.seq) for h, _ in msgs if h.epoch == last]
    for c in (0, 1):
        assert [s for ch, s in after if ch == c][0] == 1


# -- the CLI -----------------------------------------------------------------------------------

def test_cli_help_explains_itself(capsys):
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--help"])
    text = capsys.readouterr().out
    for word in ("--endpoint", "--snapshot", "--instruments", "--rate", "--seed", "--events", "--duration",
                 "--drop", "--duplicate", "--reorder", "--restart-at", "--capture", "kraken", "binance",
                 "--rt-priority", "SCHED_FIFO"):
        assert word in text


def test_cli_missing_capture_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(captures, "find_shared_data", lambda *a: None)
    assert cli.main(["simulate", "--capture", "kraken", "--endpoint", f"ipc://{tmp_path}/x"]) == 2
    out = capsys.readouterr().out
    assert "kraken capture" in out and "not found" in out and "--data" in out


def test_cli_bad_rt_priority_is_a_clear_error(capsys, tmp_path):
    assert cli.main(["simulate", "--rt-priority", "100", "--endpoint", f"ipc://{tmp_path}/x"]) == 2
    out = capsys.readouterr().out
    assert "--rt-priority" in out and "1..99" in out


@pytest.mark.parametrize("argv, said", [([], "heartbeats every 0.1 s"),
                                         (["--heartbeat", "0"], "no heartbeats (--heartbeat 0:")])
def test_cli_says_whether_it_heartbeats(tmp_path, argv, said):
    """--heartbeat 0 turns heartbeats off (receivers then flag idle channels STALE): said on the
    first line, not silently."""
    proc = subprocess.run([sys.executable, "-m", "tickwire", "simulate", "--endpoint", f"ipc://{tmp_path}/f",
                           "--snapshot", "none", "--events", "10", "--linger", "0", "--quiet", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert said in proc.stdout.splitlines()[0], proc.stdout
    assert ("(heartbeats 0)" in proc.stdout) == bool(argv)


def test_publishers_remove_their_ipc_socket_files(tmp_path):
    """libzmq leaves an ipc endpoint's socket file when its socket closes: every simulate,
    demo, bench and replay run left its files in the endpoints' directory for good (1,950 of
    them in /tmp/tickwire-UID after a day's work). The publishers remove what they bound, and
    nothing another process bound on the path since."""
    from tickwire.replay.publish import Republisher

    feed, snap = tmp_path / "f", tmp_path / "s"
    proc = subprocess.run([sys.executable, "-m", "tickwire", "simulate", "--endpoint", f"ipc://{feed}",
                           "--snapshot", f"ipc://{snap}", "--events", "100", "--linger", "0", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    pub = Republisher(f"ipc://{feed}", f"ipc://{snap}", synthetic_instruments(2), 2)
    assert feed.is_socket() and snap.is_socket()
    pub.close(0)
    assert not feed.exists() and not snap.exists()
    # a path taken over while this one was bound (a socket of another process, another inode)
    sim = Simulator(f"ipc://{feed}", snapshot=f"ipc://{snap}", heartbeat=0)
    ctx = zmq.Context()
    other = ctx.socket(zmq.PUB)
    try:
        feed.unlink()
        other.bind(f"ipc://{feed}")
        sim.close(0)
        assert feed.is_socket() and not snap.exists()
    finally:
        other.close(0)
        ctx.term()


def test_publishers_end_their_epoch_with_an_end_heartbeat_on_every_channel(tmp_path):
    """The simulator's run and the replay publisher's close finish with a HEARTBEAT flagged END
    on every channel, seq = one past its last event: receivers then know the epoch is over
    without waiting for silence (docs/wire-format.md)."""
    from tickwire.replay.publish import Republisher

    def last_messages(ep, publish):
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(ep)
        try:
            time.sleep(0.3)
            publish()
            got = {}
            while sub.poll(300):
                t, p = sub.recv_multipart()
                h, ev = wire.decode(t, p)
                got.setdefault(h.channel, []).append((h, len(ev)))
            return got
        finally:
            sub.close(0)
            ctx.term()

    sim = Simulator(f"ipc://{tmp_path}/s", snapshot=None, instruments=4, channels=2, heartbeat=0.05)
    try:
        got = last_messages(f"ipc://{tmp_path}/s", lambda: sim.run(events=2_000, linger=0.1))
    finally:
        sim.close(0)
    assert sorted(got) == [0, 1]
    for c, msgs in got.items():
        h, n = msgs[-1]
        assert h.type == MsgType.HEARTBEAT and h.flags == WireFlag.END and h.seq == sim.next_seq[c], msgs[-3:]
        assert sum(k for m, k in msgs) == sim.next_seq[c] - 1
        assert not any(m.flags & WireFlag.END for m, _ in msgs[:-1])
    insts = synthetic_instruments(2)
    pub = Republisher(f"ipc://{tmp_path}/r", f"ipc://{tmp_path}/rs", insts, 2)
    ev = Market(2, seed=1).generate(500)

    def republish():
        pub.send(ev)
        pub.close()                                   # (with linger 0 whatever is queued is dropped)

    got = last_messages(f"ipc://{tmp_path}/r", republish)
    for c in (0, 1):
        h, n = got[c][-1]
        assert h.type == MsgType.HEARTBEAT and h.flags == WireFlag.END
        assert h.seq == int((ev["instrument"] == c).sum()) + 1


def test_cli_publishes_and_saves_its_books(tmp_path):
    ep = f"ipc://{tmp_path}/cli"
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(ep)                                     # the simulator binds
    try:
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "tickwire", "simulate", "--endpoint", ep, "--socket", "push",
             "--snapshot", "none", "--events", "5000", "--rate", "0", "--instruments", "3", "--channels", "2",
             "--seed", "4", "--resting", "50", "--linger", "0", "--save-books", str(tmp_path / "books.npz"),
             "--pregenerate", "--drop", "0.1", "--rt-priority", "5"],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "done: 5,000 events" in proc.stdout
        # SCHED_FIFO where permitted (and said), a warning and normal scheduling elsewhere
        assert ("publishing under SCHED_FIFO priority 5" in proc.stdout) == realtime_permitted(5)
        assert ("not permitted" in proc.stdout) != realtime_permitted(5)
        n = 0
        while pull.poll(200):
            n += 1
            pull.recv_multipart()
        assert n > 0
    finally:
        pull.close(0)
        ctx.term()
    saved = np.load(tmp_path / "books.npz")
    direct = make_books(synthetic_instruments(3))
    direct.apply(Market(3, seed=4, resting=50).generate(5000))
    for i in range(3):
        assert np.array_equal(saved[f"book_{i}"], direct[i].snapshot_events())


# -- the real captures, through the wire ----------------------------------------------------------

@pytest.mark.data
@pytest.mark.parametrize("name", ["kraken", "binance"])
def test_captures_published_and_received(name, request, tmp_path):
    cap = request.getfixturevalue(name)
    ep = f"ipc://{tmp_path}/cap"
    ctx = zmq.Context()
    books = make_books(cap.instruments)
    chans = channel_map(cap.instruments, 3)
    h = FeedHandler(ep, chans, books.apply, socket_type="PULL", context=ctx, silence_timeout=0)
    sim = Simulator(ep, instruments=cap.instruments, events=cap.events, channels=3, batch=64,
                    socket_type="PUSH", heartbeat=0, context=ctx)
    t = threading.Thread(target=sim.run)
    t.start()
    try:
        end = time.monotonic() + 60
        while (t.is_alive() or any(h.next_seq(c) != sim.next_seq[c] for c in chans)) and time.monotonic() < end:
            h.poll(0.01)
        t.join(10)
        assert not t.is_alive()
        direct = make_books(cap.instruments)
        direct.apply(cap.events)
        for inst in cap.instruments:
            assert np.array_equal(books[inst.id].snapshot_events(), direct[inst.id].snapshot_events())
            assert np.array_equal(sim.books[inst.id].snapshot_events(), direct[inst.id].snapshot_events())
        c = h.counters()
        assert c["events"] == len(cap.events) and c["gaps"] == 0 and c["drops"] == {}
    finally:
        h.close()
        sim.close()
        ctx.term()


def test_paced_publisher_sleeps_between_messages(tmp_path):
    """At a constant rate the publisher sleeps until just before each send instead of spinning
    through the gap: on a core it shares (with the storage writer, on two cores) a spinning
    publisher is preempted for whole scheduler slices and then sends in bursts. A spinning
    publisher uses its thread's whole wall time; this one a small part of it."""
    clock = {}
    _, report, msgs = publish(tmp_path, 20_000, clock, rate=20_000, batch=64, instruments=2, channels=1,
                              resting=50)                 # about 1 s at 20,000 events/s
    wall, cpu = clock["wall"], clock["cpu"]
    assert report["events"] == 20_000 and sum(len(ev) for _, ev in msgs) == 20_000
    assert wall >= 0.9, "the publisher did not pace"
    assert cpu < 0.5 * wall, f"the publisher used {cpu:.2f} s of CPU in {wall:.2f} s: it spins"


def test_save_books_to_a_directory_is_refused(tmp_path):
    """`--save-books DIR/` wrote a hidden DIR/.npz (np.savez appends the suffix), exit 0."""
    from tickwire.feeds.simulator import _save_path_problem

    for given in (f"{tmp_path}/", str(tmp_path)):
        assert "is a directory: expected a file name (.npz)" in _save_path_problem(given)
    assert _save_path_problem(str(tmp_path / "books.npz")) is None
    # a name np.savez would change (books -> books.npz, written unsaid) is refused
    assert "expected a file name ending in .npz" in _save_path_problem(str(tmp_path / "books"))
    assert not list(tmp_path.iterdir())
