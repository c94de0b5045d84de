"""The ``tickwire`` command.

Subcommands:

- ``demo``: the whole system on embedded defaults (simulator -> daemon -> store + signal
  consumer), with a live progress line and a report.
- ``run``: the daemon from a TOML config; ``signals``: follow a running daemon's signals;
  ``status``: its metrics; ``books``: its order books (tickwire.engine.live).
- ``simulate``: the feed simulator.
- ``bookbench``: the order books alone on a synthetic market and the real captures.
- ``replay``: stored ticks, a capture or an ``.npy`` file through the engine (tickwire.replay.cli).
- ``bench``: wire-to-signal latency at an offered rate, with floors (tickwire.engine.bench);
  ``bench compare A.json B.json``.
- ``plot latency``: HDR latency files as a PNG (tickwire.engine.plots).
- ``top``: a live full-screen view of a running daemon (tickwire.engine.top).
"""

from __future__ import annotations

import signal
import sys

if sys.argv[1:2] == ["run"] and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
    # `tickwire run` reloads on SIGHUP once its event loop runs; one that came while it imported
    # and read its config (a reload script run just after the start) ended it: exit 129, nothing
    # logged. Ignored until the loop's handler is in place.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

import argparse  # noqa: E402
import os
import re
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
        status |= int(ok != len(cap.checks))
    else:
        _say("Kraken capture not found " + ("(it lives in ../shared/data in the development tree)" if data_dir is None
                                            else f"in {data_dir}") + ": skipped")
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
        status |= int(ok != len(cap.checks))
    else:
        _say("Binance capture not found" + (f" in {data_dir}" if data_dir is not None else "") + ": skipped")
    return status


#: Bounds of the synthetic markets' options: instrument ids are 24 bits, channels 16.
MAX_INSTRUMENTS, MAX_CHANNELS, MAX_SEED = 1 << 24, 1 << 16, (1 << 63) - 1


def _range_problem(checks) -> str | None:
    """``--NAME: expected an integer from LO to HI, got V`` for the first ``(name, value, lo, hi)``
    of ``checks`` whose value is outside ``lo..hi``; None when all are inside."""
    for name, v, lo, hi in checks:
        if not lo <= v <= hi:
            return f"--{name}: expected an integer from {lo:,} to {hi:,}, got {v}"
    return None


def cmd_bookbench(args) -> int:
    from pathlib import Path

    from tickwire.ext import BUILD

    why = _range_problem((("events", args.events, 1, 100_000_000), ("instruments", args.instruments, 1, 65_536),
                          ("seed", args.seed, 0, MAX_SEED), ("repeats", args.repeats, 1, 1000)))
    if why:                                        # (the stream is made in memory first)
        print(f"tickwire bookbench: {why}", file=sys.stderr)
        return 2
    if args.data and not args.no_captures:
        # (a --data given that is missing, a file, or holds no capture: "capture not found (it lives in
        # ../shared/data ...): skipped", exit 0, as if it had not been given: an adversarial pass)
        from tickwire.feeds import captures

        data = Path(args.data)
        why = (f"{data}: no such directory" if not data.exists() else f"{data}: not a directory" if not data.is_dir()
               else f"{data} holds neither {captures.KRAKEN_FILE} nor {captures.BINANCE_FILE}"
               if not any((data / f).exists() for f in (captures.KRAKEN_FILE, captures.BINANCE_FILE)) else None)
        if why:
            print(f"tickwire bookbench: --data: {why}", file=sys.stderr)
            return 2
    _say(f"tickwire {tickwire.__version__} books ({BUILD} build): order books on a synthetic market and real captures")
    _say()
    status = _demo_synthetic("L2", args.events, args.instruments, args.seed, args.repeats)
    _say()
    status |= _demo_synthetic("L3", max(args.events // 2, 1), args.instruments, args.seed, args.repeats)
    _say()
    if not args.no_captures:
        from tickwire.feeds.captures import CaptureError

        try:
            status |= _demo_captures(Path(args.data) if args.data else None)
        except (CaptureError, OSError, EOFError) as exc:   # (random bytes: a UnicodeDecodeError traceback)
            print(f"tickwire bookbench: --data: {exc}", file=sys.stderr)
            return 2
    return status


# -- `tickwire simulate` (the feed simulator, tickwire.feeds.simulator) ---------------------

def _private_files() -> None:
    """Everything the daemon and its children create from here on (state and run directories,
    the store, spill files, journal, status files, HDR logs) is this user's alone: directories
    0700, files 0600 (the rings are 0600 already)."""
    os.umask(0o077)


def cmd_demo(args) -> int:
    from tickwire.engine.demo import run_demo
    from tickwire.engine.supervisor import StartupError

    _private_files()
    try:
        return run_demo(duration=args.duration, rate=args.rate, instruments=args.instruments,
                        channels=args.channels, data_dir=args.data_dir, seed=args.seed,
                        wire_seconds=min(3.0, args.duration) if args.wire_seconds is None else args.wire_seconds)
    except StartupError as exc:
        print(f"tickwire demo: {exc}", file=sys.stderr, flush=True)
        return 2


def cmd_run(args) -> int:
    from tickwire.engine.supervisor import run

    from tickwire.engine.config import seconds_problem

    why = None if args.duration is None else seconds_problem(args.duration)
    if why:
        print(f"tickwire run: --duration: {why}", file=sys.stderr)
        return 2
    _private_files()
    return run(args.config, args.duration)


def _running_daemon_view(cfg):
    """``(signal ring names, {instrument id: symbol})`` of the daemon running for ``cfg``'s run,
    from what its supervisor recorded in the run directory (``rings.json``, ``instruments.json``):
    the daemon's own, whatever the config given says now (a config edited since, or another
    run's with the same run directory, gave other symbols or found no daemon: an adversarial
    pass). None when no daemon holds the run's lock (a killed one's rings, left behind, were
    read as live); PermissionError when a file is not readable by us."""
    import json as jsonmod

    from tickwire.engine.worker import read_ring_names

    run_dir = cfg.state_dir / cfg.run
    if not _daemon_running(run_dir):
        return None
    names = read_ring_names(run_dir)
    if not names:
        return None
    symbols = {i.id: i.symbol for i in cfg.instruments}
    try:
        symbols = {int(d["id"]): str(d["symbol"]) for d in jsonmod.loads((run_dir / "instruments.json").read_text())}
    except (FileNotFoundError, ValueError, KeyError, TypeError):   # (an older daemon: the config's)
        pass
    return [sig for _, sig in names], symbols


def _reader_gone(stream) -> bool:
    """Whether ``stream`` is a pipe (or socket) whose reader has gone, or a terminal that hung up:
    poll's POLLERR (the write end of a pipe whose read end is closed) or POLLHUP, asking for no
    event. A regular file reports neither."""
    import select

    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):     # (replaced by an object with no descriptor)
        return False
    poller = select.poll()
    poller.register(fd, 0)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def cmd_signals(args) -> int:
    import json as jsonmod

    from tickwire.engine.config import load
    from tickwire.ext import SIGNAL_DTYPE, RuleKind
    from tickwire.ext.ring import Ring

    if args.count < 0:                              # (-1 printed one signal and exited 0)
        print(f"tickwire signals: --count: expected 0 (no limit) or more, got {args.count}", file=sys.stderr)
        return 2
    cfg = load(args.config)
    # --from-start: every signal still in the rings; --follow: from the next one published (it
    # began with the newest already published: a follower restarted printed its last one again);
    # else the newest of each worker's ring
    start = "oldest" if args.from_start else "next" if args.follow else "newest"
    try:
        view = _running_daemon_view(cfg)
        if view is None:
            raise FileNotFoundError
        names, symbols = view
        rings = [Ring.attach(n, SIGNAL_DTYPE, start=start) for n in names]
    except FileNotFoundError:                       # (it printed "[Errno 2] no ring named ...": errno text)
        print(f"tickwire signals: no tickwire daemon is running for run '{cfg.run}' ({cfg.state_dir / cfg.run} "
              f"names no live signal ring): start one with `tickwire run --config {args.config}` (or "
              f"`tickwire demo`)", file=sys.stderr)
        return 1
    except PermissionError as exc:                  # a ring another user made or could write
        print(f"tickwire signals: {exc.strerror} ({exc.filename})", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError) as exc:    # rings.json not the supervisor's JSON
        print(f"tickwire signals: {cfg.state_dir / cfg.run / 'rings.json'} cannot be read ({exc!r})", file=sys.stderr)
        return 1
    buf = np.empty(1024, dtype=SIGNAL_DTYPE)
    fields = list(SIGNAL_DTYPE.names)
    if args.format == "csv":
        print(",".join(["symbol", "rule"] + fields))
    seen = 0
    gone_since = None
    # without --follow: up to where each ring's head was at the start (ended by the first empty
    # read, a daemon signalling faster than every 100 ms kept it printing for good: a review)
    # (the newest: the one record past where attach put each cursor, whatever came since)
    stops = [(r.position + 1 if r.head else 0) if start == "newest" else r.head for r in rings]
    try:
        while True:
            got = 0
            for r, stop in zip(rings, stops):
                if args.follow:
                    k = r.pop_many(buf, timeout=0.1)
                elif r.position < stop:
                    k = r.pop_many(buf[:min(stop - r.position, len(buf))], timeout=0.1)
                else:
                    continue
                if r.last_missed:
                    print(f"# missed {r.last_missed} signals (the reader fell behind)", file=sys.stderr)
                for s in buf[:k]:
                    sym = symbols.get(int(s["instrument"]), str(s["instrument"]))
                    rule = RuleKind(int(s["rule_kind"])).name.lower()
                    if args.format == "json":
                        print(jsonmod.dumps({"symbol": sym, "rule": rule, **{f: s[f].item() for f in fields}}))
                    elif args.format == "csv":
                        print(",".join([sym, rule] + [str(s[f].item()) for f in fields]))
                    else:
                        print(f"{s['ts_signal']} {sym:<10} {rule:<10} dir {int(s['direction']):+d} "
                              f"value {s['value']:12.4f} strength {s['strength']:7.2f} seq {s['seq']}")
                    seen += 1
                    if args.count and seen >= args.count:
                        return 0
                got += k
            sys.stdout.flush()
            if not args.follow and (not got or all(r.position >= stop for r, stop in zip(rings, stops))):
                return 0
            if got:
                gone_since = None
                continue
            if args.follow and _reader_gone(sys.stdout):
                # (`tickwire signals --follow | head -1` of a quiet daemon never ended: a broken pipe
                # is only seen at the next write; `tail -f` watches for it: an adversarial pass)
                return 0
            if all(r.eof or not r.producer_alive for r in rings):
                # the daemon stopped (its workers closed the rings) or died: nothing more will come;
                # or workers are being restarted, which its supervisor, alive, says (its back-off
                # reaches 8 s: judging by the rings alone, a follower quit a running daemon)
                if not args.follow:
                    return 0
                gone_since = gone_since or time.monotonic()
                restarting = not all(r.eof for r in rings) and _daemon_running(os.path.join(cfg.state_dir, cfg.run))
                if time.monotonic() - gone_since > 3.0 and not restarting:
                    print(f"# the daemon for run '{cfg.run}' stopped: no more signals", file=sys.stderr)
                    return 0
                time.sleep(0.1)                            # a closed ring answers at once: do not spin
            else:
                gone_since = None
    except KeyboardInterrupt:
        return 0
    finally:
        for r in rings:
            r.close()


def cmd_books(args) -> int:
    import json as jsonmod
    from decimal import Decimal
    from pathlib import Path

    from tickwire.engine.config import load, running_config
    from tickwire.engine.live import DaemonNotRunning, request_books

    given = load(args.config)
    run_dir = Path(given.state_dir) / given.run
    # the running daemon's instruments (its config.json), not the file's: one edited since the
    # start refused the daemon's own symbol (an adversarial pass)
    running = _daemon_running(run_dir)
    cfg = running_config(given, run_dir) if running else given
    whose = f"the daemon running for run '{cfg.run}'" if cfg is not given else args.config
    by_symbol = {i.symbol: i.id for i in cfg.instruments}
    ids = None
    if args.instrument:
        ids = []
        for name in args.instrument:
            if name in by_symbol:
                ids.append(by_symbol[name])
            elif name.isascii() and name.isdigit() and int(name) in {i.id for i in cfg.instruments}:
                ids.append(int(name))               # (str.isdigit: "²" a traceback, "٣" id 3)
            else:
                print(f"tickwire books: --instrument: {name!r} is not an instrument of {whose} "
                      f"(its symbols: {', '.join(sorted(by_symbol))})", file=sys.stderr)
                return 2
    if not 0 <= args.depth <= 10_000:
        print(f"tickwire books: --depth: expected 0..10000, got {args.depth}", file=sys.stderr)
        return 2
    if not 0 < args.timeout <= 3600:
        print(f"tickwire books: --timeout: expected seconds > 0 and at most 3600, got {args.timeout}", file=sys.stderr)
        return 2
    try:
        books = request_books(run_dir, ids, args.depth, timeout=args.timeout)
    except DaemonNotRunning as exc:
        print(f"tickwire books: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"tickwire books: the daemon refused the request: {exc}", file=sys.stderr)
        return 2
    silent = getattr(books, "silent", [])
    unserved = [] if ids is None or silent else [i for i in ids if i not in books]

    def partial() -> int:
        """A worker that did not answer: its instruments are not shown (they were left out, exit 0);
        an instrument asked for that no worker serves (nothing printed, exit 0)."""
        if unserved:
            names = {i.id: i.symbol for i in cfg.instruments}
            print(f"tickwire books: the running daemon serves no instrument {', '.join(names.get(i, str(i)) for i in unserved)} "
                  f"(a config edited since it started? `tickwire status` lists what it runs)", file=sys.stderr)
            return 1
        if not silent:
            return 0
        print(f"tickwire books: worker{'s' if len(silent) > 1 else ''} {', '.join(silent)} did not answer within "
              f"{args.timeout:g} s (stopped, stalled or busy: tickwire status): "
              f"{'its' if len(silent) == 1 else 'their'} instruments are not shown", file=sys.stderr)
        return 1

    if args.json:
        print(jsonmod.dumps({str(k): v for k, v in sorted(books.items())}, indent=1))
        return partial()
    insts = {i.id: i for i in cfg.instruments}
    for iid, b in sorted(books.items()):
        tick, lot = Decimal(b["tick_size"]), Decimal(b["lot_size"])
        inst = insts.get(iid)
        if inst is not None and (inst.tick_size, inst.lot_size) == (tick, lot):
            # with the instrument's price_decimals / qty_decimals, as top shows them (they were
            # ignored here: 9999.44 in books, 9999.7300 in top, a newcomer's pass)
            px, qy = inst.format_price, inst.format_qty
        else:                                      # (the reply's own steps: the daemon's word)
            def px(t, tick=tick):
                return str(Decimal(t) * tick)

            def qy(n, lot=lot):
                return str(Decimal(n) * lot)
        state = "in sync" if b["in_sync"] else "OUT OF SYNC"
        trade = b["last_trade"]
        last = f"last trade {px(trade[0])} x {qy(trade[1])}" if trade else "no trade yet"
        print(f"{b['symbol']} (id {iid}, worker {b['worker']}): {state}, seq {b['last_seq']}, "
              f"{b['levels'][0]} bid / {b['levels'][1]} ask levels, {b['updates']:,} updates, "
              f"{b['signals']:,} signals, {last}")
        rows = max(len(b["bids"]), len(b["asks"]))
        if rows:
            print(f"  {'bid qty':>16} {'bid':>14} | {'ask':<14} {'ask qty':<16}")
        for k in range(rows):
            bid = b["bids"][k] if k < len(b["bids"]) else None
            ask = b["asks"][k] if k < len(b["asks"]) else None
            left = f"{qy(bid[1]):>16} {px(bid[0]):>14}" if bid else " " * 31
            right = f"{px(ask[0]):<14} {qy(ask[1]):<16}" if ask else ""
            print(f"  {left} | {right}".rstrip())
    return partial()


def _daemon_running(run_dir) -> bool:
    """Whether a supervisor holds ``run_dir``'s daemon lock (an exclusive flock while it runs)."""
    from tickwire.engine.files import daemon_running

    return daemon_running(run_dir)


#: what `tickwire status` reads of a metrics page at most, and for how long (a daemon's page is
#: some kB, served at once; the socket timeout is per read: a server sending a byte every
#: 2 s held it for 81 s, an adversarial pass)
STATUS_MAX_BYTES = 64 << 20
STATUS_MAX_SECONDS = 10.0


def _fetch(url: str) -> bytes:
    """The body at ``url``, the whole request (its headers too: a review found a server dripping
    them held it past any bound) within STATUS_MAX_SECONDS, and at most STATUS_MAX_BYTES (else
    TimeoutError / OSError naming the bound; ValueError for what is not a URL)."""
    import threading
    import time
    import urllib.request

    end = time.monotonic() + STATUS_MAX_SECONDS
    got: dict = {}

    def read() -> None:
        try:
            chunks, n = [], 0
            with urllib.request.urlopen(url, timeout=5) as resp:
                while time.monotonic() <= end:
                    chunk = resp.read1(65536)
                    if not chunk:
                        got["body"] = b"".join(chunks)
                        return
                    chunks.append(chunk)
                    n += len(chunk)
                    if n > STATUS_MAX_BYTES:
                        raise OSError(f"more than {STATUS_MAX_BYTES >> 20} MiB: not a metrics page")
        except BaseException as exc:                # noqa: BLE001 - handed to the caller
            got["error"] = exc

    t = threading.Thread(target=read, name="tickwire-status-fetch", daemon=True)
    t.start()
    t.join(max(end - time.monotonic(), 0) + 0.05)
    if "error" in got:
        raise got["error"]
    if "body" not in got:                           # (the thread, a daemon, ends with its socket)
        raise TimeoutError(f"the page took more than {STATUS_MAX_SECONDS:g} s")
    return got["body"]


def _shown(text) -> str:
    """``text`` (what a server answered) with its control and other unprintable characters escaped
    (``\\x1b``): printed as it came, a non-HTTP endpoint's status line cleared the screen and set the
    terminal's title (ESC sequences: an adversarial pass)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


def cmd_status(args) -> int:
    from pathlib import Path

    url = args.url
    if url is None:
        if not args.config:
            print("tickwire status: give --config (to find the daemon) or --url", file=sys.stderr)
            return 2
        from tickwire.engine.config import load

        cfg = load(args.config)
        path = Path(cfg.state_dir) / cfg.run / "metrics.url"
        if not _daemon_running(path.parent):
            # (a metrics.url left by a daemon that was killed may name a port another daemon has now)
            print(f"tickwire status: no tickwire daemon is running for run '{cfg.run}' ({path.parent / 'daemon.lock'} is not held): "
                  f"start one with `tickwire run --config {args.config}`", file=sys.stderr)
            return 1
        if not path.exists():
            import json

            try:                                    # (metrics.port was taken: the daemon runs without them)
                off = json.loads((path.parent / "supervisor.json").read_text()).get("metrics_error", "")
            except (OSError, ValueError, AttributeError):
                off = ""
            if off:
                print(f"tickwire status: the daemon for run '{cfg.run}' runs with metrics off: {off}", file=sys.stderr)
                return 1
            print(f"tickwire status: no metrics URL in {path}: is the daemon for run '{cfg.run}' running?", file=sys.stderr)
            return 1
        url = path.read_text().strip()
    import http.client

    try:
        body = _fetch(url)
    except ValueError as exc:                       # not a URL at all
        print(f"tickwire status: --url: {exc} (expected http://HOST:PORT/metrics)", file=sys.stderr)
        return 2
    except (OSError, http.client.HTTPException) as exc:   # (a server that speaks no HTTP: a traceback)
        print(f"tickwire status: cannot read {_shown(url)}: {type(exc).__name__}: {_shown(exc)}", file=sys.stderr)
        return 1
    try:
        text = body.decode()
    except UnicodeDecodeError:                      # (it said "--url: 'utf-8' codec can't decode ...", exit 2)
        print(f"tickwire status: {url} is not a tickwire daemon's metrics endpoint (it answered {len(body):,} "
              f"bytes that are not UTF-8 text)", file=sys.stderr)
        return 1
    if args.raw:
        print(text, end="")
        return 0
    from tickwire.engine.metrics import histogram_quantile

    rows = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith("tickwire_"):
            continue
        line = _shown(line)                         # (its labels are printed: worker, stage, reason)
        name, _, value = line.rpartition(" ")
        try:
            rows[name] = float(value)
        except ValueError:                          # not a sample line of ours
            continue
    if not any(k.startswith("tickwire_events_total") for k in rows):
        if re.search(r"^# (HELP|TYPE) tickwire_events_total ", text, re.M):
            # (a daemon still starting: waiting for an earlier one's stopped worker, say; it was
            # called "not a tickwire daemon's metrics endpoint", an adversarial pass)
            print(f"tickwire status: the daemon at {url} has no figures yet: no worker of it has reported (still "
                  f"starting, or waiting for a process of an earlier daemon: its log says which)", file=sys.stderr)
            return 1
        print(f"tickwire status: {url} is not a tickwire daemon's metrics endpoint (no tickwire_events_total "
              f"in what it answered)", file=sys.stderr)
        return 1

    def total(name):
        return sum(v for k, v in rows.items() if k == name or k.startswith(name + "{"))
    def per_worker(name):
        out = {}
        for k, v in rows.items():
            if k.startswith(name + "{"):
                out[dict(re.findall(r'(\w+)="([^"]*)"', k)).get("worker", "?")] = v
        return out

    # (it said "workers up 2" of a worker stopped for 27 s: its status age says it)
    stalled = sorted(w for w, age in per_worker("tickwire_worker_status_age_seconds").items() if age > 5)
    wstalled = sorted(w for w, age in per_worker("tickwire_writer_status_age_seconds").items() if age > 10)
    frozen = {w: s for w, s in per_worker("tickwire_worker_status_frozen_seconds").items() if s > 0}
    print(f"daemon at {url}")
    if frozen:
        print("  FIGURES FROZEN: " + ", ".join(f"{w} cannot write its status for {s:.0f} s" for w, s in
                                             sorted(frozen.items()))
              + " (the state directory full or read-only?): it runs, but its figures below are that old")
    print(f"  events {total('tickwire_events_total'):,.0f} (markers {total('tickwire_markers_total'):,.0f}; since each "
          f"worker's last start)  signals {total('tickwire_signals_total'):,.0f}  workers up "
          f"{total('tickwire_worker_up'):.0f}" + (f" (STALLED: {', '.join(stalled)}: no status for over 5 s)"
                                                  if stalled else "")
          + f"  restarts {total('tickwire_worker_restarts_total'):.0f}"
          + (f"  writer: up {total('tickwire_writer_up'):.0f}, restarts {total('tickwire_writer_restarts_total'):.0f}"
             if any(k.startswith("tickwire_writer_up") for k in rows) else ""))
    print(f"  feed: messages {total('tickwire_feed_messages_total'):,.0f}  gaps {total('tickwire_feed_gaps_total'):.0f}  "
          f"recoveries {total('tickwire_feed_recoveries_total'):.0f}  messages refused "
          f"{total('tickwire_feed_drops_total'):.0f} (duplicates, malformed, forged: by reason in --raw)")
    lost = total('tickwire_feed_lost_events_total')
    uncounted = total('tickwire_feed_uncounted_losses_total')
    print(f"  history: events sent again {total('tickwire_feed_retransmitted_events_total'):,.0f}  lost "
          f"{lost:,.0f}" + ("  (ranges the publisher no longer held: see the daemon's log)" if lost else "")
          + (f"  and {uncounted:,.0f} range(s) of unknown size (a publisher restarted without ending its epoch, "
             f"or while the daemon was away: see the daemon's log)" if uncounted else ""))
    by_reason = {}
    for k, v in rows.items():
        if k.startswith("tickwire_book_rejects_total{") and v:
            reason = dict(re.findall(r'(\w+)="([^"]*)"', k)).get("reason", "?")
            by_reason[reason] = by_reason.get(reason, 0) + v
    print("  books: events not applied " + (", ".join(f"{r.lower().replace('_', ' ')} {n:,.0f}" for r, n in
                                                     sorted(by_reason.items(), key=lambda kv: -kv[1])) or "0")
          + ("  (events for instruments not in the config: stored, never applied; check [[instruments]] ids)"
             if by_reason.get("UNKNOWN_INSTRUMENT") else ""))
    print(f"  writer: rows {total('tickwire_writer_rows_written_total'):,.0f}  spilled "
          f"{total('tickwire_writer_rows_spilled_total'):,.0f} (since the writer's last start)  ticks not yet stored "
          f"{total('tickwire_tick_ring_depth'):,.0f}  outage {total('tickwire_writer_outage'):.0f}"
          + ("  STALLED: no status for over 10 s (stopped or stuck)" if wstalled else ""))
    gone = total('tickwire_writer_rows_corrupt_total') + total('tickwire_writer_rows_missing_total')
    if gone:
        print(f"  writer: {gone:,.0f} ticks of damaged or removed spill files NOT stored (see the daemon's log)")
    gone = total('tickwire_signals_corrupt_total') + total('tickwire_signals_missing_total')
    if gone:
        print(f"  writer: {gone:,.0f} signals of damaged or removed spill files NOT stored (see the daemon's log)")
    # p99 since start per worker and stage, from the histogram's buckets (as Prometheus would)
    hists = {}
    for k, v in rows.items():
        if k.startswith("tickwire_latency_seconds_bucket{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', k))
            try:
                le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            except (KeyError, ValueError):          # not a bucket of ours (a traceback)
                continue
            hists.setdefault((labels.get("worker", "?"), labels.get("stage", "?")), []).append((le, v))
    for (worker, stage), buckets in sorted(hists.items()):
        buckets.sort()
        bounds, counts = [b for b, _ in buckets], [n for _, n in buckets]
        p99 = histogram_quantile(0.99, bounds, counts)
        if p99 != p99:                                                  # NaN: nothing recorded
            continue
        top = max((b for b in bounds if b != float("inf")), default=0.0)
        if bounds and counts[-1] > 0 and 0.99 * counts[-1] > max(
                (n for b, n in buckets if b == top), default=counts[-1]):
            # the p99 is past the top bucket: its edge is not the value (it printed 10 s as the
            # p99 of samples up to 10.85 s)
            print(f"  p99 {worker} {stage}: over {top * 1e6:,.0f} us, past the top bucket (since start; the "
                  f"HDR interval logs have the value)")
            continue
        print(f"  p99 {worker} {stage}: {p99 * 1e6:.1f} us (since start, from the histogram buckets)")
    return 0


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
                   help="bind the data socket here (repeatable: tcp://127.0.0.1:5555, ipc:///path) "
                        "[ipc://DIR/feed, DIR = $XDG_RUNTIME_DIR/tickwire or /tmp/tickwire-<uid>, a directory "
                        "only you can write: the daemon's default too]")
    g.add_argument("--snapshot", default=None, metavar="EP",
                   help="bind the snapshot service (ROUTER) here; 'none' for no service [ipc://DIR/snapshot]")
    g.add_argument("--socket", choices=["pub", "push"], default="pub", help="data socket type [%(default)s]")
    g.add_argument("--sndhwm", type=int, metavar="N", help="send high-water mark in messages (0: unlimited) [libzmq: 1000]")
    g.add_argument("--wait-subscribers", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds (after each bind) for subscribers of every channel [%(default)s]")
    g.add_argument("--subscribers", type=int, default=1, metavar="N", help="how many subscribers to wait for [%(default)s]")
    g.add_argument("--heartbeat", type=float, default=0.1, metavar="S",
                   help="heartbeat period of idle channels [%(default)s]; 0: none (receivers then flag a channel "
                        "idle past their silence timeout STALE)")
    g.add_argument("--linger", type=float, default=1.0, metavar="S",
                   help="keep heartbeats, snapshots and retransmissions up this long after the last event, or after "
                        "a SIGINT/SIGTERM stopped the publishing, and on while receivers still ask for what they "
                        "lost (until S seconds pass without a request; at most 10 S; a second signal ends it) "
                        "[%(default)s]")
    g.add_argument("--start-delay", type=float, default=0.0, metavar="S",
                   help="serve snapshots and heartbeats this long before the first event, so that receivers "
                        "sync on the empty market and every event reaches them live [%(default)s]")
    from tickwire.feeds.curve import add_server_arguments

    add_server_arguments(g)
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
    g.add_argument("--batch", type=int, default=64, metavar="N",
                   help="most events per message, 1..4,096 [%(default)s]: receivers drop more than their limit "
                        "(feeds.max_message_events, 4,096 by default; docs/wire-format.md, 'Limits')")
    g.add_argument("--events", dest="publish_events", type=int, default=1_000_000, metavar="N",
                   help="events to publish [%(default)s]")
    g.add_argument("--duration", type=float, metavar="S", help="publish for S seconds instead of --events")
    g.add_argument("--pregenerate", action="store_true",
                   help="generate the synthetic events before publishing (rates above the generator's "
                        "~0.3-1 M events/s)")
    g.add_argument("--cpu", type=int, metavar="CORE", help="pin the publisher to this CPU core")
    g.add_argument("--rt-priority", type=int, default=0, metavar="PRIO",
                   help="publish under SCHED_FIFO at this priority (1-99; needs CAP_SYS_NICE, else a "
                        "warning), ZeroMQ's I/O thread included, so that other work on the publisher's "
                        "core does not reshape the paced stream into bursts; keep it below the "
                        "receiving workers' feeds.io_rt_priority [0: normal scheduling]")
    g = sim.add_argument_group("faults")
    g.add_argument("--drop", type=float, default=0.0, metavar="P", help="probability a message is dropped [%(default)s]")
    g.add_argument("--duplicate", type=float, default=0.0, metavar="P", help="probability a message is sent twice [%(default)s]")
    g.add_argument("--reorder", type=float, default=0.0, metavar="P",
                   help="probability a message is held back past the channel's next one [%(default)s]")
    g.add_argument("--future-stamps", type=float, default=0.0, metavar="P",
                   help="probability an event is stamped (ts_event) at a random time from 2030 to 2262: a "
                        "publisher's bad clock [%(default)s]")
    g.add_argument("--restart-at", type=int, action="append", metavar="N",
                   help="restart the publisher (new epoch, sequences from 1) after N events (repeatable)")
    g.add_argument("--snapshot-delay", type=float, default=0.0, metavar="S",
                   help="hold each snapshot reply S seconds (a slow snapshot service)")
    g.add_argument("--retain", type=int, default=1 << 20, metavar="N",
                   help="events kept per channel for retransmission requests (receivers that lost "
                        "messages get them again from the recovery service on --snapshot; what has "
                        "aged out is counted lost by them) [%(default)s]")
    g = sim.add_argument_group("output")
    g.add_argument("--save-books", metavar="PATH", help="write the publisher's final books to PATH (.npz)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    sim.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    from tickwire.feeds import simulator

    from tickwire.engine.config import seconds_problem

    problems = [f"--{name}: expected an integer >= 1, got {v}" for name, v in
                (("events", args.publish_events), ("channels", args.channels), ("batch", args.batch),
                 ("retain", args.retain), ("subscribers", args.subscribers)) if v < 1]
    problems.append(_range_problem((("instruments", args.instruments, 1, MAX_INSTRUMENTS),
                                    ("channels", args.channels, 1, MAX_CHANNELS),
                                    ("sndhwm", 0 if args.sndhwm is None else args.sndhwm, 0, (1 << 31) - 1),
                                    ("seed", args.seed, 0, MAX_SEED))))
    problems += [f"--restart-at: expected a number of events >= 0, got {v}" for v in args.restart_at or () if v < 0]
    problems += [f"--{name}: expected a probability from 0 to 1, got {v}" for name, v in
                 (("drop", args.drop), ("duplicate", args.duplicate), ("reorder", args.reorder),
                  ("future-stamps", args.future_stamps)) if not 0 <= v <= 1]
    if args.drop + args.duplicate + args.reorder > 1:            # (one draw per message; was a traceback)
        problems.append(f"--drop + --duplicate + --reorder: expected at most 1 (one draw per message), got "
                        f"{args.drop + args.duplicate + args.reorder:g}")
    if not (args.rate == 0 or 1e-3 <= args.rate <= 1e10):
        problems.append(f"--rate: expected events per second from 0.001 to 1e10 (0: as fast as possible), "
                        f"got {args.rate}")
    for name, v in (("heartbeat", args.heartbeat), ("linger", args.linger), ("start-delay", args.start_delay),
                    ("wait-subscribers", args.wait_subscribers), ("snapshot-delay", args.snapshot_delay),
                    ("duration", args.duration)):
        why = None if v is None else seconds_problem(v, zero_ok=name != "duration")
        if why:
            print(f"tickwire simulate: --{name}: {why}", file=sys.stderr)
            return 2
    problems = [p for p in problems if p]
    if problems:
        print(f"tickwire simulate: {problems[0]}", file=sys.stderr)
        return 2
    return simulator.run_cli(args, say=_say)


def cmd_keygen(args) -> int:
    from tickwire.feeds.curve import keygen

    try:
        pub, sec = keygen(args.dir, args.name)
    except (ValueError, OSError) as exc:
        print(f"tickwire keygen: {exc}", file=sys.stderr)
        return 2
    print(f"public key {pub} (give it to the other side)\nsecret key {sec} (0600, keep it private)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tickwire.engine.config import EXAMPLE_COPY, example_ref

    parser = argparse.ArgumentParser(
        prog="tickwire",
        description="Low-latency tick processing: order books, statistics, feeds, rings, storage.",
    )
    parser.add_argument("--version", action="version", version=f"tickwire {tickwire.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    books = sub.add_parser(
        "bookbench",
        help="benchmark the order books alone: a seeded synthetic market and the real captures",
        description="Generate a seeded synthetic market (L2 level updates and L3 order flow), "
                    "apply it through the batch path and report throughput and the books; then, "
                    "when the real exchange captures are present, rebuild their books and check "
                    "them against the exchanges' own checksums and best levels.",
    )
    books.add_argument("--events", type=int, default=1_000_000, help="L2 events (L3 gets half) [%(default)s]")
    books.add_argument("--instruments", type=int, default=4, help="instruments in the stream [%(default)s]")
    books.add_argument("--seed", type=int, default=1, help="random seed of the market [%(default)s]")
    books.add_argument("--repeats", type=int, default=5, help="timed runs; the fastest is shown [%(default)s]")
    books.add_argument("--data", help="directory of the exchange captures [../shared/data if present]")
    books.add_argument("--no-captures", action="store_true", help="skip the real captures")
    books.set_defaults(func=cmd_bookbench)

    demo = sub.add_parser(
        "demo",
        help="the whole system on embedded defaults: simulator -> daemon -> store + signal consumer",
        description="Start the feed simulator, the daemon (supervisor and writer on core 0, the engine "
                    "worker pinned to core 1), the embedded ClickHouse store and a signal consumer; run "
                    "for --duration seconds with a live progress line; stop everything through the daemon's "
                    "SIGTERM path and report events processed, signals, ticks stored (checked by a count "
                    "query) and per-stage and tick-to-signal latency percentiles.",
    )
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of publishing [%(default)s]")
    demo.add_argument("--rate", type=float, default=100_000, help="events per second published [%(default)s]")
    demo.add_argument("--instruments", type=int, default=8, help="synthetic instruments [%(default)s]")
    demo.add_argument("--channels", type=int, default=4, help="feed channels (instrument i on i %% channels) [%(default)s]")
    demo.add_argument("--seed", type=int, default=1, help="seed of the market [%(default)s]")
    demo.add_argument("--data-dir", default="tickwire-data", help="where the demo's store and logs go [%(default)s]")
    demo.add_argument("--wire-seconds", type=float, default=None,
                      help="then measure wire-to-signal with `tickwire bench` on the same worker settings for "
                           "this many seconds (0: skip) [3, at most --duration]")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "run",
        help="run the daemon from a config file (until SIGTERM/SIGINT; SIGHUP reloads rule thresholds)",
        description="Start the supervisor (asyncio on uvloop), the pinned engine workers and the storage "
                    "writer described by --config, and supervise them: crashed processes are restarted, "
                    "metrics are served on the metrics endpoint, HDR interval logs are written per worker. "
                    "SIGTERM/SIGINT drain and stop; SIGHUP reloads rule thresholds. "
                    f"See docs/config.md and {example_ref()}"
                    + ("." if tickwire.source_checkout() else f" (the example config). {EXAMPLE_COPY}"),
    )
    run.add_argument("--config", "-c", required=True, help="the TOML configuration file")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: run until signalled)")
    run.set_defaults(func=cmd_run)

    sig = sub.add_parser(
        "signals",
        help="print the signals of a running daemon (attaches to its signal rings)",
        description="Attach to a running daemon's broadcast signal rings, as a strategy would, and print "
                    "each signal (text, JSON lines or CSV). A reader that falls behind is told how many it missed.",
    )
    sig.add_argument("--config", "-c", required=True, help="the daemon's TOML configuration file")
    sig.add_argument("--follow", "-f", action="store_true",
                     help="print each new signal as it comes, from the next one published, until interrupted or the "
                          "daemon stops (without it: the newest signal of each worker, then exit)")
    sig.add_argument("--format", choices=("text", "json", "csv"), default="text",
                     help="text: one aligned line a signal; json: one object a line; csv: a header, then a row a signal")
    sig.add_argument("--from-start", action="store_true",
                     help="start from the oldest signal still in the rings (with or without --follow)")
    sig.add_argument("--count", type=int, default=0, help="stop after this many signals (0: no limit)")
    sig.set_defaults(func=cmd_signals)

    bk = sub.add_parser(
        "books",
        help="show a running daemon's order books (asked of its workers)",
        description="Ask each worker of a running daemon for its books: answered by the engine's thread "
                    "between two batches, so the book is exact at that moment. Prints the best levels per "
                    "side with decimal prices and sizes, the sequence number the book stands at, whether it "
                    "is in sync, and the last trade (--json: everything, prices in ticks and sizes in lots). "
                    "Exit status 1 when no daemon answers, or a worker does not (named; its instruments not shown). "
                    "Python: tickwire.engine.live.request_books.",
    )
    bk.add_argument("--config", "-c", required=True, help="the daemon's TOML configuration file")
    bk.add_argument("--instrument", "-i", action="append", metavar="SYMBOL",
                    help="an instrument (symbol or id); repeat for several [all]")
    bk.add_argument("--depth", "-d", type=int, default=10, help="levels per side [%(default)s]")
    bk.add_argument("--json", action="store_true", help="print the workers' answers as JSON")
    bk.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each worker [%(default)s]")
    bk.set_defaults(func=cmd_books)

    st = sub.add_parser(
        "status",
        help="show a running daemon's metrics (from its metrics endpoint)",
        description="Read the metrics endpoint of a running daemon (found in its run directory, or --url) "
                    "and print a summary: events, signals, feed gaps and recoveries, stalls, writer "
                    "progress, latency percentiles.",
    )
    st.add_argument("--config", "-c", help="the daemon's TOML configuration file")
    st.add_argument("--url", help="the metrics URL (default: read from the run directory)")
    st.add_argument("--raw", action="store_true", help="print the Prometheus text as is")
    st.set_defaults(func=cmd_status)

    _add_simulate(sub)
    kg = sub.add_parser(
        "keygen",
        help="make a ZeroMQ CURVE certificate for feeds between machines",
        description="Write DIR/NAME.key (the public key, to give to the other side) and DIR/NAME.key_secret "
                    "(public and secret keys, 0600: keep it), pyzmq's certificate files (zmq.auth.load_certificate "
                    "reads them), in a directory only you can write (another user's, or /tmp, is refused). A publisher "
                    "uses its NAME.key_secret (tickwire simulate --curve-secret-key) and lists allowed "
                    "clients' NAME.key files in a directory (--curve-clients); the daemon sets "
                    "feeds.curve_server_key to the publisher's NAME.key and feeds.curve_secret_key_file to "
                    "its own NAME.key_secret. See docs/security.md.",
    )
    kg.add_argument("dir", metavar="DIR", help="directory for the two files (created 0700 when new)")
    kg.add_argument("--name", required=True, help="file name stem, e.g. the host or role: publisher, daemon")
    kg.set_defaults(func=cmd_keygen)
    from tickwire.replay.cli import add_parser as add_replay

    add_replay(sub)
    from tickwire.feeds.cryptofeed import add_parser as add_bridge

    add_bridge(sub)
    from tickwire.feeds.conformance import add_parser as add_check_publisher

    add_check_publisher(sub)
    from tickwire.engine.bench import add_parser as add_bench

    add_bench(sub)
    from tickwire.engine.plots import add_parser as add_plot

    add_plot(sub)
    from tickwire.engine.top import add_parser as add_top

    add_top(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from tickwire.engine import lifeline

    lifeline.bind_to_parent()                # started by a demo: SIGTERM when it dies
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    for name in ("events", "instruments", "repeats", "channels"):
        value = getattr(args, name, 1)
        if isinstance(value, int) and value < 1:       # (replay's --instruments is a list)
            print(f"tickwire {args.command}: --{name}: expected an integer >= 1, got {getattr(args, name)}",
                  file=sys.stderr)
            return 2
    if args.command == "demo":
        from tickwire.engine.config import seconds_problem

        why = seconds_problem(args.duration)                # (--wire-seconds: run_demo's own check)
        problems = [why and f"--duration: {why}",
                    _range_problem((("instruments", args.instruments, 1, MAX_INSTRUMENTS),
                                    ("channels", args.channels, 1, MAX_CHANNELS), ("seed", args.seed, 0, MAX_SEED))),
                    not 1e-3 <= args.rate <= 1e10 and f"--rate: expected events per second from 0.001 to 1e10, "
                                                      f"got {args.rate}"]
        for why in problems:
            if why:
                print(f"tickwire demo: {why}", file=sys.stderr)
                return 2
    from tickwire.engine.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except BrokenPipeError:                       # `tickwire status | head`: the reader left
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
