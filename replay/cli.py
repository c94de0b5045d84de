"""``tickwire replay``: stored ticks, a capture or an ``.npy`` file through the engine, flat out or
paced, in-process or republished over ZeroMQ, with an optional backtest report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np

from tickwire.engine.files import _fresh_temp
from tickwire.replay.sources import ReplayError, parse_time

__all__ = ["add_parser", "cmd_replay", "parse_duration"]

_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "min": 60_000_000_000}


def parse_duration(text: str) -> int:
    """Nanoseconds of ``100ms``, ``1s``, ``2.5s``, ``60s``, ``1m``, ``500us`` (no unit: seconds)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ns|us|ms|s|min|m)?\s*", str(text))
    if not m:
        raise ReplayError(f"cannot read the duration {text!r}: expected a number with ns, us, ms, s or m (100ms, 1s)")
    value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ReplayError(f"durations must be positive, got {text!r}")
    if value >= 2**62:                                  # past any market's history (146 years)
        raise ReplayError(f"duration {text!r} is too long: at most 146 years")
    return int(round(value))


def add_parser(sub) -> None:
    """Register ``replay`` on the ``tickwire`` command's subparsers."""
    p = sub.add_parser(
        "replay",
        help="replay stored ticks (or a capture, or an .npy file) through the engine, flat out or paced",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Replay history through the engine the daemon runs (books, statistics, rules) and "
                    "report what it did.\n\n"
                    "Sources (one): --dsn (the tick store; instrument definitions come from it), "
                    "--capture (a real exchange capture), --npy (canonical events).\n"
                    "Modes: --max (default: as fast as possible, in-process), --speed N (paced at N x "
                    "recorded time), --publish (republish in the wire format for a `tickwire run` daemon).\n"
                    "Signals are byte-identical run after run and whatever --batch; against a daemon "
                    "run with engine.clock = \"event\" they equal the live ones (docs/replay.md).\n"
                    "A progress line (events, rate, ETA) goes to stderr; Ctrl-C stops after the batch in "
                    "hand, writes what was asked for (a partial report) and exits 130; bad input is one "
                    "line and exit status 2, with nothing written.\n\n"
                    "Example:\n"
                    "  tickwire replay --dsn chdb:///data/store --from 2024-08-08T23:00Z --to 2024-08-09 \\\n"
                    "      --instruments BTCUSDT --config tickwire.toml --report out/",
    )
    g = p.add_argument_group("source (one of)")
    g.add_argument("--dsn", metavar="DSN",
                   help="the tick store: chdb:///abs/dir (embedded; stop the daemon that owns it first) "
                        "or http(s)://host:8123 (a ClickHouse server)")
    g.add_argument("--capture", choices=("kraken", "binance"),
                   help="a real exchange capture from the shared data directory (../shared/data or "
                        "$TICKWIRE_SHARED_DATA)")
    g.add_argument("--capture-file", metavar="FILE", help="the capture file itself (default: found as above)")
    g.add_argument("--npy", metavar="FILE", help="a .npy file of canonical events (EVENT_DTYPE), memory-mapped")
    g = p.add_argument_group("what to replay")
    g.add_argument("--from", dest="start", metavar="TIME",
                   help="first event time, inclusive: ISO 8601 (2024-08-08T23:54:00Z; naive: UTC) or ns since the epoch")
    g.add_argument("--to", dest="end", metavar="TIME", help="end of the range, exclusive (same forms)")
    g.add_argument("--instruments", metavar="LIST", action="append",
                   help="instruments by symbol or id, comma-separated (repeatable) [all]")
    g.add_argument("--config", "--rules", "-c", dest="config", metavar="FILE",
                   help="rules, statistics and feed channels: a daemon config (its instruments' full "
                        "definitions are used too), or a TOML with only [stats], [[rules]] and "
                        "[feeds] channels [no rules: books and statistics only]")
    g = p.add_argument_group("mode")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--max", action="store_true", help="as fast as possible (the default)")
    m.add_argument("--speed", type=float, metavar="N",
                   help="paced at N x recorded time (1: real time, 10: ten times faster, 0.5: half speed); "
                        "the lateness of each batch against its schedule is reported as HDR percentiles")
    g.add_argument("--publish", metavar="ENDPOINT",
                   help="republish over ZeroMQ in the wire format (events flagged REPLAY, sequence numbers "
                        "per channel) instead of running the engine here: point a daemon's "
                        "feeds.endpoints at it")
    g.add_argument("--snapshot", metavar="ENDPOINT",
                   help="with --publish: bind the recovery service (snapshots, retransmissions) here: "
                        "the daemon's feeds.snapshot")
    g.add_argument("--channels", type=int, metavar="N",
                   help="with --publish: instrument i on channel i %% N [the config's feeds.channels, else "
                        "each event's recorded channel]")
    g.add_argument("--start-delay", type=float, metavar="S",
                   help="with --publish: serve snapshots and heartbeats this long before the first event, "
                        "so receivers join the empty market [1.0]")
    g.add_argument("--linger", type=float, metavar="S",
                   help="with --publish: keep serving this long after the last event, and on while the daemon "
                        "still asks for what it lost (until S seconds pass without a request; at most 10 S) "
                        "[2.0]")
    g.add_argument("--wait-subscribers", type=float, default=0.0, metavar="S",
                   help="with --publish: wait up to S seconds for a receiver on every channel before the "
                        "first event, and fail (exit 2, nothing sent) if none came; a daemon that joins "
                        "after the start misses what was sent before (0: do not wait) [%(default)s]")
    from tickwire.feeds.curve import add_server_arguments

    add_server_arguments(g, "with --publish: ")
    g.add_argument("--batch", type=int, metavar="N",
                   help="events per engine call [the source's chunk, 1,048,576]; changes no signal")
    g = p.add_argument_group("output")
    g.add_argument("--signals", metavar="FILE", help="write the replayed signals here (.npy of SIGNAL_DTYPE)")
    g.add_argument("--report", metavar="DIR",
                   help="write a backtest report here: summary.json, CSVs and PNG plots (markouts, hit "
                        "rate, taker PnL per rule and instrument)")
    g.add_argument("--no-plots", action="store_true",
                   help="for --report: summary.json and the CSVs without the PNGs (those need matplotlib: "
                        "in a checkout, .venv/bin/pip install 'matplotlib>=3.7')")
    g.add_argument("--horizons", metavar="LIST",
                   help="markout horizons for --report, comma-separated [100ms,1s,10s,60s]")
    g.add_argument("--latency-us", type=float, metavar="US",
                   help="for --report: a taker's entry sees the book this long after the signal [0.0]")
    g.add_argument("--fee-bps", type=float, metavar="BPS",
                   help="for --report: fee per fill in basis points of the price (negative: a rebate) [0.0]")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_replay)


def _load_spec(path):
    """(EngineSpec, instruments or None) from a daemon config or a rules-only TOML."""
    import dataclasses
    import tomllib

    from tickwire.engine import config as configmod
    from tickwire.engine.pipeline import StatsConfig
    from tickwire.replay.run import EngineSpec

    from tickwire.engine.files import NotReadable, read_regular

    p = Path(path)
    try:
        raw = tomllib.loads(read_regular(p, configmod.CONFIG_MAX_BYTES, "TOML file").decode("utf-8-sig"))
    except NotReadable as exc:
        raise ReplayError(f"--config {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ReplayError(f"--config {path}: not a TOML file ({why})") from None
    if "instruments" in raw:
        cfg = configmod.load(p)                       # full validation; ConfigError -> exit 2
        return EngineSpec.from_config(cfg), list(cfg.instruments)
    unknown = set(raw) - {"stats", "rules", "feeds"}
    if unknown:
        raise ReplayError(f"--config {path}: unexpected table(s) {sorted(unknown)} without [[instruments]] "
                          f"(a rules file holds [stats], [[rules]] and [feeds] channels)")
    feeds = raw.get("feeds", {})
    if not isinstance(feeds, dict) or set(feeds) - {"channels"}:
        # (a typo'd `chanels`, or the daemon's other feed keys, were taken and ignored: no channel check)
        what = sorted(set(feeds) - {"channels"}) if isinstance(feeds, dict) else feeds
        raise ReplayError(f"--config {path}: [feeds] of a rules file holds only channels (the daemon's feed "
                          f"count, for the channel check), got {what!r}")
    try:
        st = raw.get("stats", {})
        if not isinstance(st, dict):
            configmod._fail("stats", "a table", st)
        configmod._check_keys(st, {fl.name for fl in dataclasses.fields(StatsConfig)}, "stats.")
        stats = StatsConfig(**st)
        # each rule checked as the daemon's config checks it: the key named (an unknown key, or no
        # `enter`, was "RuleConfig.__init__() got an unexpected keyword argument": an adversarial
        # pass), and `instruments = []`, a rule that could never fire, refused
        rules = tuple(configmod.parse_rules(raw.get("rules", [])))
        configmod.check_rule_counts(rules, stats)
    except configmod.ConfigError as exc:
        raise ReplayError(f"--config {path}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ReplayError(f"--config {path}: {exc}") from None
    channels = feeds.get("channels")
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
        raise ReplayError(f"--config {path}: feeds.channels: expected a positive integer, got {channels!r}")
    return EngineSpec(rules, stats, channels), None


def _duration(seconds: float) -> str:
    """``42 s``, ``12 min 5 s``, ``3 h 20 min``, ``2 d 4 h``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


class _Progress:
    """A progress line on stderr (events, rate, ETA), rewritten at most 4 times a second on a
    terminal, one line every 10 s otherwise."""

    def __init__(self, total, quiet, speed=None, last_ns=None):
        self.total = total
        self.quiet = quiet
        self.speed, self.last_ns = speed, last_ns       # paced: the ETA is the recorded time left
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.next = 0.0
        self.shown = False

    def __call__(self, done, res):
        self.done = done
        if self.quiet:
            return
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + (0.25 if self.tty else 10.0)
        rate = res.rate
        line = f"replay: {done:,}" + (f" / {self.total:,}" if self.total else "") + f" events  {rate / 1e6:.2f} M/s"
        if self.speed is not None and self.last_ns is not None and res.clock_ns is not None:
            # (events left / rate said "ETA 0 s" with three days of a gap to go at x1, and
            # 435,661 s for a run of 5 s over a burst)
            line += f"  ETA {_duration(max(self.last_ns - res.clock_ns, 0) / 1e9 / self.speed)}"
        elif self.total and rate > 0 and done < self.total:
            line += f"  ETA {_duration((self.total - done) / rate)}"
        line += f"  signals {res.signal_count:,}"
        if self.tty:
            sys.stderr.write("\r" + line + "\x1b[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
        self.shown = True

    def end(self):
        if self.shown and self.tty and not self.quiet:
            sys.stderr.write("\n")


class _NpyWriter:
    """Signals appended to a ``.npy`` file as they come (memory stays flat whatever the range),
    written under a temporary name beside it (``.NAME.<pid>-<hex>.tmp``, created afresh: a fixed
    ``NAME.tmp`` was opened through a symlink planted there) and renamed over ``path`` by
    :meth:`close` (never half a file under ``path``). The header's shape is rewritten at the end:
    it is padded to a fixed width."""

    _HEADER_BYTES = 512                            # room for the dtype's description and any count

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        self._remove_leftovers(Path(path))
        self.tmp, fd = _fresh_temp(Path(path), 0o666)
        self.fh = os.fdopen(fd, "wb")
        self.fh.write(self._header())

    @staticmethod
    def _remove_leftovers(path: Path) -> int:
        """Remove the temporary files of earlier replays into ``path`` whose process is gone (a
        killed replay left its ``.NAME.<pid>-<hex>.tmp`` for good, the names being per process:
        a review): this name's only, in its directory only (not a walk of it), regular files of
        this user's (the liveness test of engine.files' sweep, remove_stale_temps, which walks a
        whole tree)."""
        import stat as statmod

        from tickwire.engine.files import pid_alive

        me, removed = os.geteuid(), 0
        mine = re.compile(re.escape(f".{path.name}.") + r"([0-9]+)-[0-9a-f]{8}\.tmp")
        try:
            names = os.listdir(path.parent)
        except OSError:
            return 0
        for name in names:
            m = mine.fullmatch(name)
            if m is None or pid_alive(int(m.group(1))):
                continue
            p = path.parent / name
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                if statmod.S_ISREG(st.st_mode) and st.st_uid == me:
                    os.unlink(p)
                    removed += 1
        return removed

    def _header(self) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.count,)}
        text = repr(d).encode("latin1")
        pad = self._HEADER_BYTES - 10 - len(text) - 1
        if pad < 0:
            raise ValueError(f"{self.dtype} is too wide for the .npy writer's header")
        return b"\x93NUMPY\x01\x00" + (self._HEADER_BYTES - 10).to_bytes(2, "little") + text + b" " * pad + b"\n"

    def write(self, arr: np.ndarray) -> None:
        if len(arr):
            self.fh.write(np.ascontiguousarray(arr, self.dtype).tobytes())
            self.count += len(arr)

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(self._header())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def cmd_replay(args) -> int:
    try:
        return _replay(args)
    except ReplayError as exc:
        print(f"tickwire replay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:              # before the run's own handlers (opening the store, loading)
        print("\ntickwire replay: interrupted before the replay began; nothing written", file=sys.stderr)
        return 130


def _replay(args) -> int:
    from tickwire.replay.run import EngineSpec
    from tickwire.replay.sources import ArraySource, CaptureSource, StoreSource

    given = [n for n in ("dsn", "capture", "npy") if getattr(args, n)]
    if len(given) != 1:
        raise ReplayError("give one source: --dsn, --capture or --npy" if not given else
                          f"give one source, not {' and '.join('--' + n for n in given)}")
    if args.capture_file and not args.capture:
        raise ReplayError("--capture-file needs --capture kraken|binance")
    if args.speed is not None and not 1e-6 <= args.speed <= 1e6:
        raise ReplayError(f"--speed: expected a positive number from 1e-6 to 1e6 (x recorded time), got {args.speed}")
    if args.batch is not None and args.batch < 1:
        raise ReplayError(f"--batch: expected an integer >= 1, got {args.batch}")
    if bool(args.publish) != bool(args.snapshot):
        raise ReplayError("--publish and --snapshot go together (the data socket and the recovery service)")
    if (args.curve_secret_key or args.curve_clients) and not args.publish:
        raise ReplayError("--curve-secret-key/--curve-clients: need --publish")
    if args.publish and (args.report or args.signals):
        raise ReplayError("--publish runs no engine here: --report and --signals need an in-process replay")
    if args.publish:
        from tickwire.engine.config import _same_endpoint

        # (ipc:///X for both: the second bind took the path from the first, and every event went to
        # nobody with exit 0; one tcp port for both is refused by the bind)
        if _same_endpoint(args.publish, args.snapshot):
            raise ReplayError(f"--publish {args.publish} and --snapshot {args.snapshot} name one socket: the data and "
                              f"the recovery service need an endpoint each (the daemon's feeds.endpoints and "
                              f"feeds.snapshot)")
    if not args.report:
        # (they were ignored without a word, where the --publish options are refused without it)
        given = [opt for opt, v in (("--horizons", args.horizons), ("--latency-us", args.latency_us),
                                    ("--fee-bps", args.fee_bps), ("--no-plots", args.no_plots or None))
                 if v is not None]
        if given:
            raise ReplayError(f"{', '.join(given)}: need{'s' if len(given) == 1 else ''} --report DIR")
    args.horizons = "100ms,1s,10s,60s" if args.horizons is None else args.horizons
    args.latency_us = 0.0 if args.latency_us is None else args.latency_us
    args.fee_bps = 0.0 if args.fee_bps is None else args.fee_bps
    if args.channels is not None and not 1 <= args.channels <= 0xFFFF:
        # (--channels 70000: a ValueError traceback from the wire's topic, "channel must be 0..65535")
        raise ReplayError(f"--channels: expected an integer from 1 to 65,535 (the wire's channels), "
                          f"got {args.channels}")
    from tickwire.engine.config import seconds_problem

    for opt, v in (("--start-delay", args.start_delay), ("--linger", args.linger),
                   ("--wait-subscribers", args.wait_subscribers)):
        why = seconds_problem(v, zero_ok=True) if v is not None else None
        if why:
            raise ReplayError(f"{opt}: {why}")
    if args.wait_subscribers and not args.publish:
        raise ReplayError("--wait-subscribers: needs --publish")
    if not args.publish:
        # (they were ignored without a word, where --wait-subscribers and the CURVE options are refused)
        given = [opt for opt, v in (("--channels", args.channels), ("--start-delay", args.start_delay),
                                    ("--linger", args.linger)) if v is not None]
        if given:
            raise ReplayError(f"{', '.join(given)}: need{'s' if len(given) == 1 else ''} --publish")
    args.start_delay = 1.0 if args.start_delay is None else args.start_delay
    args.linger = 2.0 if args.linger is None else args.linger
    start, end = parse_time(args.start), parse_time(args.end)
    if start is not None and end is not None and end <= start:
        raise ReplayError(f"empty range: --to {args.end} is not after --from {args.start}")
    select = [s for item in (args.instruments or []) for s in item.split(",") if s.strip()] or None
    horizons = tuple(parse_duration(h) for h in args.horizons.split(",") if h.strip())
    if not (0 <= args.latency_us <= 3.6e9 and -10_000 <= args.fee_bps <= 10_000):
        raise ReplayError(f"--latency-us must be 0 .. 3.6e9 (an hour) and --fee-bps -10,000 .. 10,000 (negative: "
                          f"a rebate), got {args.latency_us:g} and {args.fee_bps:g}")
    report_dir = Path(args.report) if args.report else None
    if report_dir is not None and report_dir.exists() and (not report_dir.is_dir() or any(report_dir.iterdir())):
        raise ReplayError(f"--report {report_dir}: exists and is not an empty directory (nothing overwritten)")
    sig_path = Path(args.signals) if args.signals else None
    if sig_path is not None and not sig_path.parent.is_dir():
        raise ReplayError(f"--signals {sig_path}: directory {sig_path.parent} does not exist")
    if sig_path is not None and sig_path.is_dir():
        raise ReplayError(f"--signals {sig_path}: is a directory (give the .npy file to write)")
    if sig_path is not None and (sig_path.is_symlink() or sig_path.exists()) and not sig_path.is_file():
        # (written aside and renamed over it: --signals /dev/full replaced the device with a file)
        raise ReplayError(f"--signals {sig_path}: exists and is not a regular file (a device, a pipe, a "
                          f"broken link...): nothing overwritten; give a file's path")
    if sig_path is not None and report_dir is not None and report_dir.is_dir() \
            and os.path.samefile(sig_path.parent, report_dir) and sig_path.name in REPORT_FILES:
        # (the report's own file moved over it at the end: "signals written to out/summary.json",
        # then the report's summary.json in its place, exit 0: an adversarial pass)
        raise ReplayError(f"--signals {sig_path}: the report writes {sig_path.name} in --report {report_dir}: "
                          f"it would replace the signals; give another name")
    if sig_path is not None and sig_path.exists():
        capture_in = args.capture_file
        if args.capture and not capture_in:
            # (the capture found in the shared data directory, unnamed: --signals naming it replaced
            # the 1.3 MB Binance capture with a 7 KB signals file, exit 0: an adversarial pass)
            from tickwire.feeds import captures

            capture_in = captures.find_shared_data({"kraken": captures.KRAKEN_FILE,
                                                    "binance": captures.BINANCE_FILE}[args.capture])
        for opt, given in (("--npy", args.npy), ("--capture", capture_in), ("--config", args.config)):
            if given and Path(given).exists() and os.path.samefile(given, sig_path):
                # (the input's 753 KB were replaced by a 512-byte signals file, exit 0)
                raise ReplayError(f"--signals {sig_path} is the {opt} input: it would be overwritten")
    for opt, where in (("--report", report_dir), ("--signals", sig_path.parent if sig_path is not None else None)):
        why = _unwritable(where) if where is not None else None
        if why:
            # (found at the end of the replay: a PermissionError traceback, exit 1, after all the work)
            raise ReplayError(f"{opt}: {why}: nothing could be written there")
    report_cls = None
    if report_dir is not None:
        try:
            from tickwire.replay.report import ReportBuilder as report_cls
        except ImportError as exc:
            raise ReplayError(f"--report needs tickwire.replay.report, which cannot be imported here ({exc})") from None

    spec, cfg_insts = _load_spec(args.config) if args.config else (EngineSpec(), None)
    if args.publish and args.channels is not None and spec.channels is not None and args.channels != spec.channels:
        # a daemon run with that config subscribes to its channels only: the instruments put on
        # the others were never received (143,635 of 200,000 stored, exit 0 on both sides)
        raise ReplayError(f"--channels {args.channels} contradicts --config {args.config}: its feeds.channels is "
                          f"{spec.channels}, and a daemon with it hears those channels only (leave --channels out)")
    if not args.dsn and spec.channels is not None:
        # a capture's or an .npy file's events never came through the daemon's feed channels (a
        # capture's are all channel 0): the check would refuse every instrument off channel 0
        # as WRONG_CHANNEL. The config's channel count still places them when they are published.
        args.channels = args.channels or spec.channels
        spec = dataclasses.replace(spec, channels=None)
    if args.dsn:
        # republished too: the snapshots and markers the live books met go out in the data stream, as a
        # bridge sends an exchange's (ticks alone left a daemon joined late without the join snapshot's
        # resting orders: its books and signals were not the live ones)
        source = StoreSource(args.dsn, select, start, end, instruments=cfg_insts)
    elif args.capture:
        source = CaptureSource(args.capture, args.capture_file, select, start, end)
    else:
        source = ArraySource(args.npy, cfg_insts, select, start, end)
    if args.dsn and spec.channels is not None and not args.publish:
        # (republished, every event goes on instrument % channels: the receiving daemon's count)
        _check_channels(source, spec.channels)
    if args.publish and args.dsn:
        _restart_note(source)
    if args.dsn:
        _epoch_note(source)
    if getattr(source, "history_before", False):
        # (a Kraken range from 16:49 gave 88 signals in its last 23 s against 74 over the day: depth
        # books missing most levels, empty sides taken as in sync)
        print(f"note: --from {args.start} starts inside {source.name}'s data: the books start empty there and "
              f"count as in sync, so until a snapshot rebuilds them their signals, and a report's mids and "
              f"markouts, are not those of live "
              f"(docs/replay.md, \"The snapshots the books met\")", file=sys.stderr)
    try:
        return _run(args, source, spec, report_cls, report_dir, horizons, sig_path)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _unwritable(directory: Path):
    """Why nothing can be written in ``directory`` (or the nearest of its parents that exists, where
    it would be made), or None: a scratch directory is made and removed there (permissions alone
    say nothing to root, and not of a read-only mount or an immutable directory)."""
    import tempfile

    at = directory
    while not at.exists() and at != at.parent:
        at = at.parent
    if not at.is_dir():
        return f"{at} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tickwire-probe-", dir=at))
    except OSError as exc:
        return f"cannot write in {at} ({exc.strerror or exc})"
    return None


def _check_channels(source, channels: int) -> None:
    """Refuse a feeds.channels that puts a stored instrument on another channel than the one it
    was recorded on: the engine's channel check would refuse its every event (WRONG_CHANNEL: 75,482
    refused, 98 signals against live's 153, exit 0: an adversarial pass)."""
    wanted = {i.id for i in source.instruments}
    bad = sorted((i, c) for i, c in _recorded_channels(source).items() if i in wanted and c != i % channels)
    if bad:
        sym = {i.id: i.symbol for i in source.instruments}
        shown = ", ".join(f"{sym.get(i, i)} on channel {c} (not {i % channels})" for i, c in bad[:4])
        source.close()
        raise ReplayError(f"feeds.channels = {channels} of the config does not fit {source.name}: it recorded "
                          f"{shown}{' ...' if len(bad) > 4 else ''}; give the daemon's feeds.channels (the engine "
                          f"would refuse those instruments' events as WRONG_CHANNEL)")


def _restart_note(source) -> None:
    """Say where a republished store's live worker restarted: the markers go out, but a receiving
    daemon's engine does not begin afresh at them (an in-process replay does: Replay._process), so
    its statistics and signals there are not the live ones until its windows have refilled."""
    import numpy as np

    from tickwire.ext.records import Flag

    snaps = source.snapshots
    marks = snaps[(snaps["flags"] & np.uint32(Flag.RESTART)) != 0]
    ids, count = np.unique(marks["instrument"], return_counts=True)
    # stamped where a resumed history stood (seq > 0), or a second start of an instrument (a later
    # start that joined afresh stamps seq 0: the review of this note)
    restarts = np.union1d(ids[count > 1], marks["instrument"][marks["seq"] > 0])
    if len(restarts):
        print(f"note: the live worker restarted within {source.name}'s history ({len(restarts)} instrument"
              f"{'s' if len(restarts) > 1 else ''}): its engine began afresh there, a daemon fed by this replay "
              f"does not, so its statistics and signals after that point differ from the live ones until the "
              f"windows have refilled; a replay without --publish restarts them (docs/replay.md)", file=sys.stderr)


def _epoch_note(source) -> None:
    """Say where the publisher restarted within the range (its markers name another epoch in their
    ``order_id``): its sequence numbers begin at 1 again there, and the store does not tell the two
    epochs' ticks apart, so the replay's books and signals around it can differ from the live
    ones (an adversarial pass: 190 replayed signals against 189 live, and only a book rejects line
    under the 1% warning)."""
    import numpy as np

    from tickwire.ext.records import Kind

    snaps = getattr(source, "snapshots", None)
    if snaps is None or not len(snaps):
        return
    # (markers only: an L3 snapshot the handler applied is stored too, its orders' ids in order_id)
    marks = snaps[(snaps["kind"] == Kind.SNAPSHOT) & (snaps["order_id"] != 0)]
    pairs = np.unique(np.stack([marks["channel"].astype(np.uint64), marks["order_id"].astype(np.uint64)], axis=1),
                      axis=0)
    chans, count = np.unique(pairs[:, 0], return_counts=True)
    from tickwire.replay.sources import renumbered_channels

    # (a daemon's store names no epoch before the restart's marker: the numberings its markers show)
    moved = np.union1d(chans[count > 1], np.array(renumbered_channels(snaps), np.uint64)).astype(np.int64)
    if len(moved):
        print(f"note: the publisher restarted within {source.name}'s range (channel{'s' if len(moved) > 1 else ''} "
              f"{', '.join(map(str, moved.tolist()[:8]))}{' ...' if len(moved) > 8 else ''}: another epoch, its "
              f"sequence numbers from 1 again): the store does not tell the epochs' ticks apart, so the books "
              f"and signals around the restart may differ from the live ones (docs/replay.md, \"What parity "
              f"needs\")", file=sys.stderr)


def _recorded_channels(source) -> dict:
    """Each instrument's recorded channel (the last one, if it moved): where its events go when
    they keep their channel, so that the snapshots served before them are of that channel."""
    ev = getattr(source, "events", None)
    if ev is not None:
        import numpy as np

        pairs = np.unique((ev["instrument"].astype(np.uint64) << np.uint64(16)) | ev["channel"].astype(np.uint64))
        return {int(k) >> 16: int(k) & 0xFFFF for k in pairs.tolist()}
    store = getattr(source, "store", None)
    if store is None:
        return {}
    ids = ", ".join(str(i.id) for i in source.instruments) or "NULL"
    rows = store.client.query(f"SELECT instrument, argMax(channel, ts_event) FROM {store.database}.ticks "
                              f"WHERE instrument IN ({ids}) GROUP BY instrument").result_rows
    return {int(i): int(c) for i, c in rows}


def _run_facts(args, source, spec) -> dict:
    """What a report was made from, for its summary.json: the source, the range and filter, the
    config, and the settings of the rules and statistics the engine ran (a changed threshold
    took a replay from 95 signals to 1,914 and nothing in the report said why)."""
    def settings(obj):
        d = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else {"callable": getattr(obj, "__name__", repr(obj))}
        return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in d.items()}

    return {"source": source.name, "from": args.start, "to": args.end, "instruments": args.instruments,
            "config": str(Path(args.config).resolve()) if args.config else None,
            "feeds_channels": spec.channels, "speed": args.speed, "batch": args.batch,
            # a range starting inside the data: books empty there, in sync until a snapshot (the report's
            # mids came from half-built books: 19 of 97 off by more than 1 bp, summary.json unsaid)
            "books_start_empty": bool(getattr(source, "history_before", False)),
            "rules": [settings(r) for r in spec.rules], "stats": settings(spec.stats)}


def _audit_warning(source, res) -> dict:
    """Say what the stored history misses or holds twice that the feed never reported (an
    adversarial pass deleted 1,000 ticks of one channel: 480 signals against live's 71, exit 0
    and not a word); the findings, for the report's summary.json."""
    findings = source.audit_findings() if hasattr(source, "audit_findings") and not res.interrupted else {}
    holes, repeats = findings.get("holes", []), findings.get("repeats", {})
    unchecked = findings.get("unchecked_channels")
    if unchecked:
        # (an adversarial pass: ticks doubled and deleted in the range of --instruments BTCX,
        # not a word, and summary.json's store_audit read as checked and clean)
        print(f"note: channel{'s' if len(unchecked) > 1 else ''} {', '.join(map(str, unchecked[:16]))}"
              f"{' ...' if len(unchecked) > 16 else ''} of {source.name} carry instruments not replayed: their "
              f"stored sequence numbers are not checked for ticks missing or held twice (replay every instrument "
              f"of a channel for the check; docs/replay.md, \"Checked as it goes\")", file=sys.stderr)
    if holes:
        more = len(holes) - 5 + findings.get("more_holes", 0)
        shown = ", ".join(f"channel {c} seq {a:,}..{b:,}" for c, a, b in holes[:5]) + \
            (f" and {more:,} more holes" if more > 0 else "")
        # (holes on channels whose numbers also come again: two publisher runs interleaved in time
        # order, the simulator's started twice, read as holes as well as repeats; "rows deleted or
        # not restored?" of a store holding every event of both: a soak)
        both = {c for c, _, _ in holes} <= set(repeats)
        why = ("with the events that come again below: two publisher runs whose exchange times overlap "
               "(the store does not tell their ticks apart), or rows deleted or not restored" if both and repeats
               else "rows deleted or not restored?")
        print(f"warning: {source.name} misses {findings['missing']:,} events that no marker of the feed "
              f"accounts for ({shown}): {why}. The books and signals after them are "
              f"not those of live (docs/replay.md, \"Checked as it goes\")", file=sys.stderr)
    if repeats:
        print(f"warning: {source.name} holds {sum(repeats.values()):,} events whose channel and sequence number "
              f"come again in its time order (by channel: {repeats}): stored twice, or two publisher runs whose "
              f"exchange times overlap (the simulator's start at the same time each run); the books and "
              f"signals after them are not those of live (docs/replay.md, \"Checked as it goes\")", file=sys.stderr)
    return findings


def _run(args, source, spec, report_cls, report_dir, horizons, sig_path) -> int:
    from tickwire.ext.records import SIGNAL_DTYPE
    from tickwire.replay.run import Replay

    rb = None
    if report_cls is not None:
        try:
            rb = report_cls(source.instruments, horizons_ns=horizons, latency_ns=round(args.latency_us * 1000),
                            fee_bps=args.fee_bps, plots=not args.no_plots)
        except (ValueError, TypeError, ImportError, RuntimeError) as exc:
            raise ReplayError(f"--report: {exc}") from None
    sig_out = None                                       # opened just before the run

    def on_batch(events, signals):
        if sig_out is not None:
            sig_out.write(signals)
        if rb is not None:
            rb.add(events, signals)

    have = {i.id for i in source.instruments}
    for rid, rule in enumerate(spec.rules):
        away = [i for i in (getattr(rule, "instruments", None) or []) if i not in have]
        if away:
            print(f"note: rule {rid} ({getattr(rule, 'kind', '?')}) names instrument{'s' if len(away) > 1 else ''} "
                  f"{', '.join(map(str, away[:8]))}{' ...' if len(away) > 8 else ''} that this replay does not "
                  f"have (--instruments, or not in {source.name}): it applies to "
                  f"{', '.join(str(i) for i in rule.instruments if i in have) or 'none'} here", file=sys.stderr)
    # signals stream to --signals and the report as they come, never all kept: flat memory
    replay = Replay(source, spec, batch=args.batch,
                    on_batch=on_batch if rb is not None or sig_path is not None else None, keep_signals=False)
    sink = None
    if args.publish:
        from tickwire.replay.publish import Republisher

        from tickwire.feeds.curve import server_from_arguments

        try:
            curve = server_from_arguments(args)
        except ValueError as exc:
            raise ReplayError(str(exc)) from None
        channels = args.channels or spec.channels
        sink = Republisher(args.publish, args.snapshot, source.instruments, channels, curve=curve,
                           channel_of=None if channels else _recorded_channels(source),
                           xpub=args.wait_subscribers > 0)
        if args.wait_subscribers and not sink.wait_subscribers(args.wait_subscribers):
            sink.close()
            raise ReplayError(f"--wait-subscribers: no receiver on every channel within {args.wait_subscribers:g} s: "
                              f"nothing sent (is the daemon running, with feeds.endpoints = {args.publish}?)")
        sink.linger(args.start_delay)

    stops = []

    def interrupt(*_):
        stops.append(1)
        replay.stop = True

    old = signal.signal(signal.SIGINT, interrupt)
    old_term = signal.signal(signal.SIGTERM, interrupt)
    if not spec.rules and sink is None:                  # republishing: the daemon runs the rules
        print("note: no rules (give --config FILE with [[rules]], such as the daemon's config): books and "
              "statistics only, so no signals" + (" and an empty report" if args.report else ""),
              file=sys.stderr, flush=True)
    last_ns = source.last_time_ns() if args.speed is not None and hasattr(source, "last_time_ns") else None
    progress = _Progress(source.total, args.quiet, args.speed, last_ns)
    if sig_path is not None:
        sig_out = _NpyWriter(sig_path, SIGNAL_DTYPE)
    try:
        res = replay.run(args.speed, progress=progress, sink=sink)
    except BaseException as exc:
        if sig_out is not None:
            sig_out.abort()
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
        if type(exc).__module__.split(".")[0] in ("chdb", "clickhouse_connect"):
            # (a damaged part of the store: chDB's traceback, exit 1, and what was written unsaid)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ReplayError(f"reading {source.name} failed after {progress.done:,} events: "
                              f"{first[:400]}{' ...' if len(first) > 400 else ''} (a damaged store, or its server "
                              f"failing); nothing written") from None
        raise
    finally:
        progress.end()
        if sink is not None:
            # (stopped by a signal too, as `tickwire simulate`: what the daemon lost just before
            # the stop is still served; a second signal ends the linger)
            before = len(stops)
            if before == 1 and args.linger > 0:
                print(f"tickwire replay: stopped; serving what the daemon lost for {args.linger:g} s or more "
                      f"(a second signal ends it)", file=sys.stderr, flush=True)
            sink.linger(args.linger, until_quiet=True, stop=lambda: len(stops) > before)
            sink.close()

    if not res.events and not res.interrupted:
        # (a store's ticks with bad stamps, 2030-2262, counted in --from 2030 by their stamp and
        # replayed where they were received: "replayed 0 events", an empty report, exit 0)
        if sig_out is not None:
            sig_out.abort()
        raise ReplayError(f"no events in the range asked for in {source.name} once its ticks with bad stamps "
                          f"(far from their receipt time) are put where they were received (docs/replay.md, "
                          f"\"What parity needs\"); nothing written")
    # The replay is done; a signal now stops what is left (the store's check, the files), and
    # what is half written goes (an adversarial pass: Ctrl-C while the report was written said
    # "interrupted before the replay began; nothing written" and left four CSVs that looked
    # whole, SIGTERM the same without a word; the report is written aside and moved into place).
    def late(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, late)
    signal.signal(signal.SIGTERM, late)
    report = None
    try:
        audit = _summary_lines(args, source, res, sink)
        if sig_out is not None:
            sig_out.close()
            sig_out = None
            print(f"signals written to {sig_path}")
        if rb is not None:
            report = _StagedReport(report_dir)
            report.open()
            rb.finish(report.staged, partial=res.interrupted,
                      run={**_run_facts(args, source, spec), "store_audit": audit})
            report.commit()
            print(f"{'partial ' if res.interrupted else ''}report written to {report_dir}")
    except BaseException as exc:
        if sig_out is not None:
            sig_out.abort()
        if report is not None:
            report.abort()                               # (nothing once it is all moved into place)
        if not isinstance(exc, (KeyboardInterrupt, OSError)):
            raise
        kept = "".join(f"the {w} {v} {p}; " for w, p, v, done in (
            ("signals", sig_path, "are in", sig_path is not None and sig_out is None),
            ("report", report_dir, "is in", report is not None and report.done)) if done)
        lost = ", ".join(w for w, asked in (("--signals", sig_out is not None),
                                            ("--report", rb is not None and not (report and report.done))) if asked)
        what = "interrupted"
        if not isinstance(exc, KeyboardInterrupt):          # (a full disk, a directory made read-only)
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            what = f"failed ({type(exc).__name__}: {exc.strerror or exc}{where})"
        print(f"\ntickwire replay: {what} after the replay ({res.events:,} events), while checking the store or "
              f"writing the results: {kept}{'nothing written for ' + lost if lost else 'nothing else was left to write'}",
              file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        signal.signal(signal.SIGINT, old)
        signal.signal(signal.SIGTERM, old_term)
    return 130 if res.interrupted else 0


#: The files ``ReportBuilder.finish`` writes into the report directory.
REPORT_FILES = frozenset({"summary.json", "summary.csv", "rules.csv", "markouts.csv", "trades.csv", "pnl.png",
                          "markouts.png", "signals.png"})


class _StagedReport:
    """The report written into ``DIR/.partial-PID`` and its files moved up into ``DIR`` once all
    are written (``summary.json`` last), or all removed: a stop while it is written leaves none of
    it. Staged inside the directory itself, so that a symlink, a mount point or a parent this
    user cannot write works as a plain directory does (a review: staged beside it, a symlinked
    DIR was a NotADirectoryError traceback)."""

    def __init__(self, report_dir: Path):
        self.dir, self.staged = report_dir, report_dir / f".partial-{os.getpid()}"
        self.made, self.moved, self.done = False, [], False

    def open(self) -> None:
        self.made = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)

    def commit(self) -> None:
        names = sorted(os.listdir(self.staged), key=lambda n: n == "summary.json")
        for name in names:
            os.replace(self.staged / name, self.dir / name)
            self.moved.append(name)
        self.done = True
        self.staged.rmdir()

    def abort(self) -> None:
        if self.done:
            with contextlib.suppress(OSError):
                self.staged.rmdir()
            return
        shutil.rmtree(self.staged, ignore_errors=True)
        for name in self.moved:
            with contextlib.suppress(OSError):
                os.unlink(self.dir / name)
        if self.made:
            with contextlib.suppress(OSError):
                self.dir.rmdir()


def _summary_lines(args, source, res, sink) -> dict:
    """The lines that close a replay (counts, rejects, errors, the store's check, the schedule's
    lateness); the store check's findings."""
    word = "interrupted after" if res.interrupted else "replayed"
    print(f"{word} {res.events:,} events from {source.name} in {res.seconds:.2f} s "
          f"({res.rate / 1e6:.2f} M events/s, {res.batches:,} batches)")
    if sink is not None:
        print(f"published {sink.sent:,} events in {sink.messages:,} messages to {args.publish}")
    else:
        by_rule = dict(sorted(res.by_rule.items()))
        print(f"signals: {res.signal_count:,}" + (f" (by rule id: {by_rule})" if by_rule else ""))
        rejects = {k: v for k, v in res.rejects.items() if v}
        if rejects:
            print(f"book rejects: {rejects}")
            refused = sum(rejects.values())
            wrong = rejects.get("WRONG_CHANNEL", 0)
            if res.events and wrong > 0.01 * res.events:
                # (a config's feeds.channels other than the daemon's: 75,482 refused, 98 signals of
                # live's 153, and the warning blamed the instruments' definitions)
                print(f"warning: the books refused {wrong:,} of {res.events:,} events as WRONG_CHANNEL: the "
                      f"recorded channels are not instrument id % feeds.channels of "
                      f"{'--config' if args.config else 'the rules file'}: give the daemon's feeds.channels",
                      file=sys.stderr)
            elif res.events and refused > 0.01 * res.events:
                print(f"warning: the books refused {refused:,} of {res.events:,} events ({100 * refused / res.events:.1f}%): "
                      f"the instruments' definitions ({'--config' if args.config else 'the source'}'s) may not fit "
                      f"the data (book type, tick size, price range), or the range starts inside a book that no "
                      f"snapshot opened", file=sys.stderr)
        if res.rule_errors:
            print(f"warning: Python rules raised errors, their signals skipped: {res.rule_errors} "
                  f"(the first traceback of each is in the log)", file=sys.stderr)
    audit = _audit_warning(source, res)
    if res.lateness is not None and res.lateness.total:
        r = res.lateness

        def at(p):                    # (a bucket's highest equivalent value can pass the exact max)
            return min(r.value_at_percentile(p), r.max_value) / 1e3

        print(f"schedule lateness (x{args.speed:g}, {r.total:,} batches): p50 {at(50):.1f} us  "
              f"p99 {at(99):.1f} us  p99.9 {at(99.9):.1f} us  max {r.max_value / 1e3:.1f} us")
    return audit
