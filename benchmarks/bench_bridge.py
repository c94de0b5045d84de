"""The cryptofeed bridge's throughput beside cryptofeed's own ZeroMQ backend, on the same playback.

cryptofeed's playback of the Kraken capture (../shared/data; 4,279 book messages, 11,765 levels)
through three callbacks, in the same run:

- ``cryptofeed alone``: a callback that does nothing (cryptofeed's own parsing: the floor);
- ``tickwire bridge``: exact conversion to canonical events and publication in tickwire's wire
  format (sequence numbers, retention for retransmission, the bridge's own books for snapshots).
  What one event-loop turn hands out goes as one wire message per channel, held at most 250 µs or
  512 events; cryptofeed's playback never ends a turn, so here the 250 µs bound cuts the messages;
- ``cryptofeed BookZMQ``: cryptofeed's ZeroMQ backend (to_dict, JSON, one string message per update).

A SUB in another process receives each contestant's output and counts it: a figure counts only what
arrived (the bridge's events by sequence number; BookZMQ's messages). Run:

    .venv/bin/python benchmarks/bench_bridge.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
from common import describe_run, pin, version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def counter(endpoint: str, bind: bool, ready, out) -> None:
    """A SUB counting messages (and the events of tickwire's DATA messages) until 2 s of silence."""
    import zmq

    from tickwire.feeds.wire import MsgType, decode

    pin(0)
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    (s.bind if bind else s.connect)(endpoint)
    ready.set()
    messages = events = 0
    last = 0.0
    while s.poll(2000 if messages else 60_000):
        frames = s.recv_multipart()
        last = time.time()
        if bind:
            if b"PROBE" not in frames[0]:
                messages += 1
        else:
            header, ev = decode(*frames)
            if header.type == MsgType.DATA:
                messages += 1
                events += len(ev)
    out.put((messages, events, last))
    s.close(0)
    ctx.term()


def run_playback(files, callback, out=None) -> float:
    """Seconds from the start of cryptofeed's playback to its end, or, with ``out`` (a counter's
    queue), to the last message the counter received, whichever is later."""
    from cryptofeed.defines import L2_BOOK
    from cryptofeed.raw_data_collection import playback

    t0 = time.time()
    playback("KRAKEN", files, callbacks={L2_BOOK: callback})
    end = time.time()
    if out is None:
        return end - t0
    got = out.get(timeout=120)
    run_playback.got = got
    return max(end, got[2]) - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    try:
        import cryptofeed  # noqa: F401
    except ImportError:
        print("cryptofeed is not installed: .venv/bin/pip install -e '.[cryptofeed]'")
        return 2
    from test_bridge import KRAKEN, bridge_raw, kraken_instruments, kraken_playback_files

    if KRAKEN is None:
        print("skipped: the Kraken capture (../shared/data) is not here")
        return 0
    from cryptofeed.backends.zmq import BookZMQ

    from tickwire.engine.config import from_dict
    from tickwire.feeds.captures import load_kraken
    from tickwire.feeds.cryptofeed import Bridge

    pinned = pin(1)
    capture = load_kraken(KRAKEN)
    insts = kraken_instruments(capture)
    _, files = kraken_playback_files(capture)
    print(f"# cryptofeed playback of the Kraken capture: {describe_run(pinned)}; cryptofeed "
          f"{version('cryptofeed')}, pyzmq {version('pyzmq')}")
    print(f"# stream: {len(capture.instruments)} pairs, 4,279 book messages (10 snapshots), "
          f"{capture.stats['levels']:,} levels; receivers in another process on core 0")
    results = {"cryptofeed alone": [], "tickwire bridge": [], "cryptofeed BookZMQ": []}
    counts = {}
    tmp = Path(tempfile.mkdtemp(prefix="twbb", dir="/tmp"))
    for r in range(args.repeats):
        async def nothing(book, receipt):
            pass

        results["cryptofeed alone"].append(run_playback(files, nothing))

        # tickwire's bridge, counted by a SUB that decodes the wire format
        feed, snap = f"ipc://{tmp}/feed{r}", f"ipc://{tmp}/snap{r}"
        cfg = from_dict(bridge_raw(tmp / "state", insts, feed, snap), tmp)
        bridge = Bridge(cfg)
        ready, out = mp.Event(), mp.Queue()
        rx = mp.Process(target=counter, args=(feed, False, ready, out))
        rx.start()
        ready.wait(30)
        bridge.publisher.wait_subscribers(30)
        results["tickwire bridge"].append(run_playback(files, bridge.book, out))
        got = run_playback.got
        rx.join()
        assert got[:2] == (bridge.publisher.messages, bridge.publisher.sent), (got, bridge.stats())
        counts["tickwire bridge"] = f"{got[1]:,} events in {got[0]:,} messages received"
        bridge.close(0)

        # cryptofeed's BookZMQ backend (in-process queue, as FeedHandler starts it), counted by a SUB
        port_ep = f"ipc://{tmp}/cf{r}"
        ready, out = mp.Event(), mp.Queue()
        rx = mp.Process(target=counter, args=(port_ep, True, ready, out))
        rx.start()
        ready.wait(30)
        backend = BookZMQ(numeric_type=str, snapshot_interval=10**9)
        backend.url = port_ep
        state = {"started": False}

        async def to_zmq(book, receipt):
            if not state["started"]:
                state["first"] = time.time()
                backend.start(asyncio.get_running_loop())
                state["started"] = True
                for _ in range(20):                         # let the PUB connect (slow joiner)
                    await backend.write({"exchange": "KRAKEN", "symbol": "PROBE"})
                    await asyncio.sleep(0.05)
                state["t0"] = time.time()
            await backend(book, receipt)

        async def drain():                                  # let the writer send everything
            while backend.queue.qsize():
                await asyncio.sleep(0.001)
            await asyncio.sleep(1.0)

        to_zmq.stop = drain
        t_start = time.time()
        run_playback(files, to_zmq, out)
        got = run_playback.got
        # playback's start-up, then from the first update to the last receipt (the probes left out)
        results["cryptofeed BookZMQ"].append((state["first"] - t_start) + (got[2] - state["t0"]))
        rx.join()
        counts["cryptofeed BookZMQ"] = f"{got[0]:,} of 4,279 messages received"
    events = capture.stats["levels"]
    print(f"\n| contestant | median ms | book messages/s | levels/s | ratio to cryptofeed alone | received |")
    print("|---|---|---|---|---|---|")
    base = statistics.median(results["cryptofeed alone"])
    for name, times in results.items():
        t = statistics.median(times)
        print(f"| {name} | {t * 1e3:.1f} | {4279 / t:,.0f} | {events / t:,.0f} | {t / base:.2f}x the time | "
              f"{counts.get(name, 'n/a (no output)')} |")
    print(json.dumps({k: statistics.median(v) for k, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
