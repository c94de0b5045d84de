"""The ``tickwire`` command.

Subcommands:

- ``demo``: run the order books on embedded defaults: a seeded synthetic market (L2 and L3)
  through the batch path, with figures, and the real exchange captures when they are
  present (their own checksums as the check).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import tickwire


def _fmt_rate(n: int, seconds: float) -> str:
    return f"{n / seconds / 1e6:7.1f} M events/s  {seconds * 1e9 / max(n, 1):6.1f} ns/event"


def _say(text: str = "") -> None:
    print(text, flush=True)


def _best_of(apply, make, events, repeats: int) -> tuple[float, object]:
    """Fastest of ``repeats`` runs of ``apply`` on fresh books (the machine is shared)."""
    best, books = float("inf"), None
    for _ in range(repeats):
        books = make()
        t0 = time.perf_counter()
        apply(books, events)
        best = min(best, time.perf_counter() - t0)
    return best, books


def _demo_synthetic(kind: str, n: int, instruments: int, seed: int, repeats: int) -> int:
    from tickwire.engine.instruments import make_books
    from tickwire.feeds import synthetic

    gen = synthetic.l2_updates if kind == "L2" else synthetic.l3_orders
    _say(f"synthetic {kind}: generating {n:,} events over {instruments} instruments (seed {seed}) ...")
    t0 = time.perf_counter()
    events = gen(n, seed=seed, instruments=instruments)
    _say(f"  generated in {time.perf_counter() - t0:.1f} s ({events.nbytes / 2**20:.0f} MiB of 64-byte events)")
    insts = synthetic.synthetic_instruments(instruments, book=kind)
    seconds, books = _best_of(lambda b, e: b.apply(e), lambda: make_books(insts), events, repeats)
    rejects = books.rejects
    _say(f"  batch apply: {seconds * 1e3:8.1f} ms  {_fmt_rate(len(events), seconds)}  "
         f"rejected: {sum(rejects.values())}")
    for inst, book in zip(insts, books):
        bid, bq, ask, aq = book.bbo()
        extra = f"  orders {book.order_count:,}" if kind == "L3" else ""
        _say(f"  {inst.symbol:6s} bid {inst.format_price(bid)} x {inst.format_qty(bq)}  "
             f"ask {inst.format_price(ask)} x {inst.format_qty(aq)}  "
             f"levels {book.level_count(0)}/{book.level_count(1)}  "
             f"microprice {book.microprice * float(inst.tick_size):.4f}{extra}")
    return 0 if not rejects else 1


def _demo_captures(data_dir) -> int:
    from tickwire.engine.instruments import make_books
    from tickwire.feeds import captures

    status = 0
    kraken_path = captures.find_shared_data(captures.KRAKEN_FILE) if data_dir is None else data_dir / captures.KRAKEN_FILE
    if kraken_path is not None and kraken_path.exists():
        cap = captures.load_kraken(kraken_path)
        books = make_books(cap.instruments)
        out = np.empty((10, 3), np.int64)
        t0 = time.perf_counter()
        start, ok = 0, 0
        for end, iid, crc in cap.checks:
            books.apply(cap.events[start:end])
            start = end
            ok += captures.kraken_checksum(books[int(iid)], cap.instruments[int(iid)], out) == crc
        seconds = time.perf_counter() - t0
        _say(f"Kraken book-1000 capture: {len(cap.instruments)} pairs, {len(cap.events):,} events: "
             f"{ok}/{len(cap.checks)} exchange checksums match ({seconds * 1e3:.0f} ms with checksums)")
        status |= ok != len(cap.checks)
    else:
        _say("Kraken capture not found (it lives in ../shared/data in the development tree): skipped")
    binance_path = captures.find_shared_data(captures.BINANCE_FILE) if data_dir is None else data_dir / captures.BINANCE_FILE
    if binance_path is not None and binance_path.exists():
        cap = captures.load_binance(binance_path)
        books = make_books(cap.instruments)
        book = books[0]
        start, ok = 0, 0
        for c in cap.checks:
            books.apply(cap.events[start:c["end"]])
            start = c["end"]
            ok += book.bbo() == (c["bid"], c["bid_qty"], c["ask"], c["ask_qty"])
        books.apply(cap.events[start:])
        inst = cap.instruments[0]
        _say(f"Binance BTCUSDT capture: {len(cap.events):,} events: {ok}/{len(cap.checks)} bookTicker "
             f"best levels match; final book {book.level_count(0)} bids / {book.level_count(1)} asks, "
             f"mid {book.mid * float(inst.tick_size):.3f}")
        status |= ok != len(cap.checks)
    else:
        _say("Binance capture not found: skipped")
    return status


def cmd_demo(args) -> int:
    from pathlib import Path

    from tickwire.ext import BUILD

    _say(f"tickwire {tickwire.__version__} demo ({BUILD} build): order books on embedded defaults")
    _say()
    status = _demo_synthetic("L2", args.events, args.instruments, args.seed, args.repeats)
    _say()
    status |= _demo_synthetic("L3", max(args.events // 2, 1), args.instruments, args.seed, args.repeats)
    _say()
    if not args.no_captures:
        status |= _demo_captures(Path(args.data) if args.data else None)
    return status


# -- `tickwire simulate` (the feed simulator, tickwire.feeds.simulator) ---------------------

def _add_simulate(sub) -> None:
    sim = sub.add_parser(
        "simulate",
        help="publish a synthetic market (or a real capture) as a tickwire ZeroMQ feed",
        description="Publish a seeded synthetic L3 market (adds, cancels, executions near the top, "
                    "bursty times) in tickwire's wire format (docs/wire-format.md) at a constant "
                    "rate, with a snapshot service for receivers that lose messages, and optional "
                    "fault injection (dropped, duplicated, reordered messages; publisher restarts). "
                    "With --capture, publish a real exchange capture instead. Receive it with "
                    "tickwire.feeds.handler.FeedHandler (see docs/feeds.md).",
    )
    g = sim.add_argument_group("sockets")
    g.add_argument("--endpoint", action="append", metavar="EP",
                   help="bind the data socket here (repeatable: tcp://127.0.0.1:5555, ipc:///tmp/x) "
                        "[ipc:///tmp/tickwire-feed]")
    g.add_argument("--snapshot", default="ipc:///tmp/tickwire-snapshot", metavar="EP",
                   help="bind the snapshot service (ROUTER) here; 'none' for no service [%(default)s]")
    g.add_argument("--socket", choices=["pub", "push"], default="pub", help="data socket type [%(default)s]")
    g.add_argument("--sndhwm", type=int, metavar="N", help="send high-water mark in messages (0: unlimited) [libzmq: 1000]")
    g.add_argument("--wait-subscribers", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds (after each bind) for subscribers of every channel [%(default)s]")
    g.add_argument("--subscribers", type=int, default=1, metavar="N", help="how many subscribers to wait for [%(default)s]")
    g.add_argument("--heartbeat", type=float, default=0.1, metavar="S", help="heartbeat period of idle channels [%(default)s]")
    g.add_argument("--linger", type=float, default=1.0, metavar="S",
                   help="keep heartbeats and snapshots up this long after the last event [%(default)s]")
    g = sim.add_argument_group("market")
    g.add_argument("--instruments", type=int, default=8, metavar="N", help="synthetic instruments [%(default)s]")
    g.add_argument("--channels", type=int, default=4, metavar="C", help="channels (instrument i on channel i %% C) [%(default)s]")
    g.add_argument("--resting", type=int, default=500, metavar="N", help="resting orders per instrument [%(default)s]")
    g.add_argument("--seed", type=int, default=1, help="seed of the market and of the faults [%(default)s]")
    g.add_argument("--capture", choices=["kraken", "binance"],
                   help="publish this real capture (../shared/data) instead of a synthetic market")
    g.add_argument("--data", metavar="DIR", help="directory of the captures [../shared/data]")
    g = sim.add_argument_group("pace and size")
    g.add_argument("--rate", type=float, default=100_000, metavar="EV/S", help="events per second, constant-rate pacing (0: as fast as possible) [%(default)s]")
    g.add_argument("--batch", type=int, default=64, metavar="N", help="most events per message [%(default)s]")
    g.add_argument("--events", dest="publish_events", type=int, default=1_000_000, metavar="N",
                   help="events to publish [%(default)s]")
    g.add_argument("--duration", type=float, metavar="S", help="publish for S seconds instead of --events")
    g.add_argument("--pregenerate", action="store_true",
                   help="generate the synthetic events before publishing (rates above the generator's "
                        "~0.3-1 M events/s)")
    g.add_argument("--cpu", type=int, metavar="CORE", help="pin the publisher to this CPU core")
    g = sim.add_argument_group("faults")
    g.add_argument("--drop", type=float, default=0.0, metavar="P", help="probability a message is dropped [%(default)s]")
    g.add_argument("--duplicate", type=float, default=0.0, metavar="P", help="probability a message is sent twice [%(default)s]")
    g.add_argument("--reorder", type=float, default=0.0, metavar="P",
                   help="probability a message is held back past the channel's next one [%(default)s]")
    g.add_argument("--restart-at", type=int, action="append", metavar="N",
                   help="restart the publisher (new epoch, sequences from 1) after N events (repeatable)")
    g.add_argument("--snapshot-delay", type=float, default=0.0, metavar="S",
                   help="hold each snapshot reply S seconds (a slow snapshot service)")
    g = sim.add_argument_group("output")
    g.add_argument("--save-books", metavar="PATH", help="write the publisher's final books to PATH (.npz)")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    sim.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    from tickwire.feeds import simulator

    if args.publish_events < 1 or args.channels < 1 or args.batch < 1:
        _say("tickwire simulate: --events, --channels and --batch must be at least 1")
        return 2
    return simulator.run_cli(args, say=_say)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickwire",
        description="Low-latency tick processing: order books, statistics, feeds, rings, storage.",
    )
    parser.add_argument("--version", action="version", version=f"tickwire {tickwire.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run the order books on a seeded synthetic market and on the real captures",
        description="Generate a seeded synthetic market (L2 level updates and L3 order flow), "
                    "apply it through the batch path and report throughput and the books; then, "
                    "when the real exchange captures are present, rebuild their books and check "
                    "them against the exchanges' own checksums and best levels.",
    )
    demo.add_argument("--events", type=int, default=1_000_000, help="L2 events (L3 gets half) [%(default)s]")
    demo.add_argument("--instruments", type=int, default=4, help="instruments in the stream [%(default)s]")
    demo.add_argument("--seed", type=int, default=1, help="random seed of the market [%(default)s]")
    demo.add_argument("--repeats", type=int, default=5, help="timed runs; the fastest is shown [%(default)s]")
    demo.add_argument("--data", help="directory of the exchange captures [../shared/data if present]")
    demo.add_argument("--no-captures", action="store_true", help="skip the real captures")
    demo.set_defaults(func=cmd_demo)
    _add_simulate(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    for name in ("events", "instruments", "repeats"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
