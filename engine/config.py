"""The daemon's configuration: a TOML file, validated on load.

Every error names the key (``workers[1].cpu``) and what was expected, in one line, so a bad
config stops the daemon before anything starts. ``docs/config.md`` is the reference and
``engine/tickwire.example.toml`` a commented example; :func:`load` reads a file,
:func:`from_dict` a parsed mapping (the demo's is built by ``engine.demo.demo_raw_config``).
"""

from __future__ import annotations

import json
import math
import os
import re
import stat as statmod
import tempfile
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional

from tickwire.engine.instruments import DEFAULT_MAX_PRICE, DEFAULT_MIN_PRICE, LOWEST_PRICE, Instrument
from tickwire.engine.pipeline import RULE_KINDS, RuleConfig, StatsConfig
from tickwire.feeds.wire import MAX_MESSAGE_EVENTS

__all__ = ["ConfigError", "Config", "FeedConfig", "WorkerConfig", "StoreConfig", "RingConfig",
           "MetricsConfig", "load", "read_raw", "from_dict", "to_toml", "restart_keys", "EXAMPLE_PATH",
           "EXAMPLE_COPY", "example_ref"]

EXAMPLE_PATH = Path(__file__).with_name("tickwire.example.toml")
#: What an installed tickwire's help says about its example configs (they sit inside the package).
EXAMPLE_COPY = ("Copy an example config out of the installed package before running a daemon with it: its "
                "state_dir (\"../tickwire-data\") is relative to the file's folder, which would put the "
                "store, spill files and logs inside the installed package.")


def example_ref(name: str = "tickwire.example.toml") -> str:
    """How help texts name a shipped example config: ``engine/NAME`` from a checkout's root (as the
    docs write it), the installed file's path otherwise (``engine/`` exists only in a checkout)."""
    from tickwire import source_checkout

    return f"engine/{name}" if source_checkout() else str(EXAMPLE_PATH.with_name(name))


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


def _fail(key: str, expected: str, got: Any = ...) -> None:
    msg = f"config error: {key}: expected {expected}"
    if got is not ...:
        msg += f", got {got!r}"
    raise ConfigError(msg)


def _table(d: dict, key: str) -> dict:
    v = d.get(key, {})
    if not isinstance(v, dict):
        _fail(key, "a table", v)
    return v


def _check_keys(d: dict, allowed, where: str) -> None:
    import difflib

    for k in d:
        if k not in allowed:
            near = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            raise ConfigError(f"config error: {where}{k}: unknown key{f' (did you mean {where}{near[0]}?)' if near else ''}"
                              f"; expected one of the known keys ({', '.join(sorted(allowed))})")


def _int(d, key, where, default=..., lo=None, hi=None):
    if key not in d:
        if default is ...:
            _fail(f"{where}{key}", "an integer (required)")
        return default
    v = d[key]
    if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f" in {lo}..{hi}" if hi is not None else (f" >= {lo}" if lo is not None else "")
        _fail(f"{where}{key}", f"an integer{rng}", v)
    return v


MAX_SECONDS = 1e9
"""The longest time in seconds any option or key takes (about 31 years): times become int64
nanoseconds, and a larger one would not fit (1e300 ended in an OverflowError deep in a run)."""


def seconds_problem(v: float, *, zero_ok: bool = False) -> str | None:
    """What is wrong with ``v`` as a number of seconds (``expected ..., got ...`` text for an
    error line), or None: a number > 0 (>= 0 with ``zero_ok``) and at most :data:`MAX_SECONDS`."""
    if (0 <= v if zero_ok else 0 < v) and v <= MAX_SECONDS:
        return None
    return f"expected a number of seconds {'>= 0' if zero_ok else '> 0'} and at most {MAX_SECONDS:g}, got {v}"


def _num(d, key, where, default=..., positive=False, seconds=False):
    if key not in d:
        if default is ...:
            _fail(f"{where}{key}", "a number (required)")
        return default
    v = d[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or (positive and v <= 0):
        _fail(f"{where}{key}", "a finite positive number" if positive else "a finite number", v)
    if seconds and v > MAX_SECONDS:
        _fail(f"{where}{key}", f"a number of seconds at most {MAX_SECONDS:g}", v)
    return float(v)


def _server_dsn_ok(dsn: str) -> bool:
    """Whether an ``http(s)://`` DSN names a host and, if any, a port (``https://`` or
    ``http://h:notaport`` passed, and the daemon spilled every batch, exit 0)."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(dsn)
        u.port                                   # (raises on a port that is not 0..65535)
    except ValueError:
        return False
    return bool(u.hostname)


def _str(d, key, where, default=..., choices=None):
    if key not in d:
        if default is ...:
            _fail(f"{where}{key}", "a string (required)")
        return default
    v = d[key]
    if not isinstance(v, str) or (choices and v not in choices):
        _fail(f"{where}{key}", f"one of {list(choices)}" if choices else "a string", v)
    if "\x00" in v:
        # (a path, host or DSN with one was a ValueError traceback at the start, or at a SIGHUP;
        # the value is not shown: it may be a password)
        _fail(f"{where}{key}", "a string without a NUL character (\\u0000)")
    return v


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _name(d, key, where, default):
    """A string that goes into shared-memory and file names: letters, digits, ``_ . -``."""
    v = _str(d, key, where, default)
    if not _NAME.fullmatch(v):
        _fail(f"{where}{key}", "1 to 64 letters, digits, '_', '.' or '-' (it names shared-memory segments "
              "and files), starting with a letter or digit", v)
    return v


# what the statistics' windows may hold (count windows allocate their size up front; time
# windows grow up to stats.max_capacity): 2**24 samples is ~1.5 GB per instrument
MAX_WINDOW_SAMPLES = 1 << 24
MAX_RING_CAPACITY = 1 << 32
# upper bounds of integers by what takes them at run time: a C int (ZeroMQ's socket options,
# Engine.set_timing), an int64_t (the engine's and books' fields); a value used only from Python
# gets the int64 bound too, the largest integer TOML defines
INT32_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1


def _bool(d, key, where, default):
    v = d.get(key, default)
    if not isinstance(v, bool):
        _fail(f"{where}{key}", "true or false", v)
    return v


def _ids(v) -> bool:
    """Whether ``v`` is an array of integers (not booleans, which are ints to Python)."""
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


# ZeroMQ transports a config may name (the daemon and the bridge run in separate processes:
# inproc is only for tests that run both in one), and the longest ipc path libzmq takes
# (sizeof(sockaddr_un.sun_path) - 1, zmq.IPC_PATH_MAX_LEN): a longer one fails at connect
ZMQ_SCHEMES = ("tcp", "ipc", "inproc")
IPC_PATH_MAX = 107
_HOST = re.compile(r"[^\s;/*]+")


def _endpoint(v, key: str, *, bind: bool = False, schemes=ZMQ_SCHEMES, empty: bool = False) -> str:
    """A ZeroMQ endpoint that ``connect`` (or ``bind``) takes: ``tcp://HOST:PORT`` with a port
    1..65535 (binding: HOST may be ``*``, every interface; connecting: ZeroMQ's
    ``SOURCE;HOST:PORT`` too), ``ipc://PATH`` of at most 107 bytes, ``inproc://NAME``.
    ``empty``: "" is allowed (none)."""
    if empty and v == "":
        return v
    scheme, sep, addr = v.partition("://") if isinstance(v, str) else ("", "", "")
    ok = bool(sep) and scheme in schemes and bool(addr)
    if ok and scheme == "tcp":
        src, semi, dest = addr.rpartition(";") if not bind else ("", "", addr)
        host, _, port = dest.rpartition(":")
        ok = ((not semi or re.fullmatch(r"\S+", src) is not None)
              and (bool(_HOST.fullmatch(host)) or (bind and host == "*"))
              and re.fullmatch(r"[0-9]{1,5}", port) is not None and 1 <= int(port) <= 65535)
    elif ok and scheme == "ipc":
        ok = len(addr.encode()) <= IPC_PATH_MAX
    if not ok:
        forms = {"tcp": "tcp://HOST:PORT" + (" (HOST * binds every interface)" if bind else ""),
                 "ipc": "ipc://PATH", "inproc": "inproc://NAME"}
        _fail(key, f"a ZeroMQ endpoint to {'bind' if bind else 'connect to'}: "
              f"{', '.join(forms[x] for x in schemes)}; PORT 1..65535, PATH at most {IPC_PATH_MAX} bytes"
              + (" (or \"\": none)" if empty else ""), v)
    return v


def _decimal(d, key, where, default=...):
    if key not in d:
        if default is ...:
            _fail(f"{where}{key}", "a decimal string such as \"0.01\" (required)")
        return default
    v = d[key]
    try:
        dec = Decimal(str(v))
        if isinstance(v, bool) or not dec.is_finite() or dec <= 0:
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        _fail(f"{where}{key}", "a positive decimal such as \"0.01\"", v)
    return dec


#: The workers' environment variable holding the feed's CURVE certificate ("PUBLIC SECRET", Z85),
#: read once by the supervisor at the start (secrets: never on argv nor in config.json).
CURVE_ENV = "TICKWIRE_CURVE_CERTIFICATE"


def private_ipc_dir() -> Path:
    """The directory of tickwire's default ipc endpoints: ``$XDG_RUNTIME_DIR/tickwire``, else
    ``<tmp>/tickwire-<uid>``; created 0700. Refused (ValueError, one line) when it is a symlink,
    another user's, or open to others: whoever binds an endpoint first is the one a receiver
    listens to, so the directory must be one only this user can write."""
    run = os.environ.get("XDG_RUNTIME_DIR")
    d = Path(run) / "tickwire" if run and os.path.isdir(run) else Path(tempfile.gettempdir()) / f"tickwire-{os.geteuid()}"
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
    except OSError as exc:
        raise ValueError(f"cannot create the endpoint directory {d}: {exc.strerror or exc}") from None
    if not statmod.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ValueError(f"the endpoint directory {d} is not a private directory of yours (owner uid {st.st_uid}, "
                         f"mode {st.st_mode & 0o7777:04o}): another user may have made it; remove it, or set "
                         f"feeds.endpoints / --endpoint to a directory only you can write")
    return d


def default_feed_endpoint() -> str:
    """``ipc://<private_ipc_dir()>/feed``: the data endpoint that the daemon and ``tickwire simulate``
    both use when none is configured."""
    return f"ipc://{private_ipc_dir() / 'feed'}"


def default_snapshot_endpoint() -> str:
    """``ipc://<private_ipc_dir()>/snapshot``: the default recovery service endpoint."""
    return f"ipc://{private_ipc_dir() / 'snapshot'}"


@dataclass(frozen=True)
class FeedConfig:
    endpoints: tuple = field(default_factory=lambda: (default_feed_endpoint(),))
    snapshot: str = field(default_factory=default_snapshot_endpoint)
    socket: str = "sub"
    hwm: int = 100_000
    stale_after_ms: int = 5_000
    recovery_retries: int = 5
    channels: int = 1
    max_message_events: int = MAX_MESSAGE_EVENTS
    batch_events: int = 2 * MAX_MESSAGE_EVENTS
    io_cpu: int = 0
    io_rt_priority: int = 0
    busy_poll: bool = False
    reorder_window_ms: float = 5.0
    history_from: str = "join"          # "join": the tick history starts at the join; "start": at seq 1
    fast_loop: bool = True              # the worker's live loop in C (Engine.run_feed)
    curve_server_key: str = ""          # the publisher's CURVE public key (Z85), resolved from text or a file
    curve_secret_key_file: str = ""     # this side's certificate (NAME.key_secret, 0600)

    def curve(self):
        """The :class:`~tickwire.feeds.curve.CurveClient` of these settings, or None."""
        if not self.curve_server_key:
            return None
        from tickwire.feeds.curve import CurveClient

        return CurveClient.load(self.curve_server_key, self.curve_secret_key_file)


def _curve(f, base_dir: Path) -> dict:
    """``feeds.curve_server_key`` and ``feeds.curve_secret_key_file``: both or neither, checked now."""
    from tickwire.feeds.curve import public_key, secret_certificate, trusted_key_file

    server = _str(f, "curve_server_key", "feeds.", "")
    secret = _str(f, "curve_secret_key_file", "feeds.", "")
    if bool(server) != bool(secret):
        missing, given = (("feeds.curve_secret_key_file", "feeds.curve_server_key") if server else
                          ("feeds.curve_server_key", "feeds.curve_secret_key_file"))
        _fail(missing, f"set too, as {given} is (CURVE needs the publisher's public key and this side's "
              "certificate: `tickwire keygen`)")
    if not server:
        return {}

    if len(server) != 40 or Path(_path(server, base_dir, "feeds.curve_server_key")).exists():
        server = _path(server, base_dir, "feeds.curve_server_key")
        try:
            trusted_key_file(server)
        except ValueError as exc:
            _fail("feeds.curve_server_key", "the publisher's public key file, yours (or root's) and not writable by "
                  "others", str(exc))
    try:
        key = public_key(server).decode("ascii")
    except ValueError as exc:
        _fail("feeds.curve_server_key", "the publisher's CURVE public key: 40 Z85 characters or its NAME.key file",
              str(exc))
    secret = _path(secret, base_dir, "feeds.curve_secret_key_file")
    try:
        if not os.environ.get(CURVE_ENV):          # (a worker: read by its supervisor at the start)
            secret_certificate(secret)
    except ValueError as exc:
        _fail("feeds.curve_secret_key_file", "this side's CURVE certificate (NAME.key_secret), yours and 0600",
              str(exc))
    return {"curve_server_key": key, "curve_secret_key_file": secret}


def _same_endpoint(a: str, b: str) -> bool:
    """Whether two endpoints name one socket: ``tcp://*:P``, ``tcp://0.0.0.0:P``, ``localhost`` and
    ``127.0.0.1`` alike, and ipc paths as the file they name (a review: compared as strings, they
    let a data and a snapshot endpoint on one socket through)."""
    def norm(ep: str) -> str:
        scheme, _, rest = ep.partition("://")
        if scheme == "ipc":
            return "ipc://" + os.path.realpath(rest)
        host, _, port = rest.rpartition(":")
        if host in ("*", "0.0.0.0", "localhost", "127.0.0.1"):
            host = "127.0.0.1"
        return f"{scheme}://{host}:{port}"
    return norm(a) == norm(b)


def _reorder_window(f) -> float:
    v = f.get("reorder_window_ms", FeedConfig.reorder_window_ms)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10_000:
        _fail("feeds.reorder_window_ms", "milliseconds from 0 to 10000", v)
    return float(v)


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    cpu: int
    instruments: tuple


@dataclass(frozen=True)
class StoreConfig:
    dsn: str
    database: str = "tickwire"
    cluster: str = ""
    batch_rows: int = 500_000
    batch_seconds: float = 1.0
    writer_cpu: int = 0
    username: str = ""
    password: str = field(default="", repr=False)      # never printed
    enabled: bool = True
    writer_nice: int = 0
    writer_sched: str = "idle"
    debug_insert_delay_s: float = 0.0


@dataclass(frozen=True)
class RingConfig:
    prefix: str = "tickwire"
    ticks_capacity: int = 1 << 20
    signals_capacity: int = 1 << 16


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9464
    hdr_interval_s: float = 10.0
    hdr_dir: str = ""


@dataclass(frozen=True)
class BridgeConfig:
    """``[bridge]``: what ``tickwire bridge`` takes from cryptofeed and where it publishes."""

    exchange: str                     # a cryptofeed exchange id, e.g. "KRAKEN"
    symbols: tuple                    # instrument symbols = cryptofeed's normalised symbols
    trades: bool = True
    depth: int = 0                    # book depth to subscribe (0: cryptofeed's default)
    endpoint: str = ""                # where to bind the data socket [feeds.endpoints[0]]
    snapshot: str = ""                # where to bind the snapshot service [feeds.snapshot]
    heartbeat_ms: int = 100
    zmq_input: str = ""               # bind a SUB here for cryptofeed's BookZMQ/TradeZMQ output
    curve_secret_key_file: str = ""   # publish as a ZeroMQ CURVE server with this certificate
    curve_clients_dir: str = ""       # ... letting in only the client public keys in this directory
    checksum_validation: bool = True  # cryptofeed checks its books against the exchange's checksums

    def curve(self):
        """The :class:`~tickwire.feeds.curve.CurveServer` of these settings, or None."""
        if not self.curve_secret_key_file:
            return None
        from tickwire.feeds.curve import CurveServer

        return CurveServer(self.curve_secret_key_file, self.curve_clients_dir or None)


@dataclass(frozen=True)
class Config:
    """A validated daemon configuration."""

    instruments: tuple
    workers: tuple
    feeds: FeedConfig
    store: StoreConfig
    rings: RingConfig
    metrics: MetricsConfig
    stats: StatsConfig
    rules: tuple
    state_dir: Path
    run: str = "run"
    clock: str = "wall"
    timing_every: int = 64
    log_level: str = "info"
    supervisor_cpu: int = 0
    log_file: str = ""
    shutdown_timeout_s: float = 20.0
    bridge: Optional[BridgeConfig] = None
    stall_restart_s: float = 30.0

    def instrument(self, iid: int) -> Instrument:
        return next(i for i in self.instruments if i.id == iid)


_TOP = {"daemon", "instruments", "feeds", "workers", "stats", "rules", "store", "rings", "metrics", "engine",
        "bridge"}


def from_dict(raw: dict, base_dir: Optional[Path] = None) -> Config:
    """Validate a parsed configuration (see docs/config.md); raises ConfigError naming the key."""
    if not isinstance(raw, dict):
        _fail("(top level)", "a table")
    base_dir = Path(base_dir or os.getcwd())
    _check_keys(raw, _TOP, "")
    ncpu = os.cpu_count() or 1

    daemon = _table(raw, "daemon")
    _check_keys(daemon, {"run", "state_dir", "log_level", "supervisor_cpu", "log_file", "shutdown_timeout_s",
                          "stall_restart_s"}, "daemon.")
    log_file = _path(_str(daemon, "log_file", "daemon.", ""), base_dir, "daemon.log_file")
    state_dir = _expanded(_str(daemon, "state_dir", "daemon.", "tickwire-data"), "daemon.state_dir")
    if not state_dir.is_absolute():
        state_dir = Path(os.path.normpath(base_dir / state_dir))
    try:
        if state_dir.exists() and not state_dir.is_dir():
            _fail("daemon.state_dir", "a directory (or a path to create one at)", f"{state_dir} is a file")
    except OSError as exc:                       # (a name past 255 bytes, a parent not searchable: a traceback)
        _fail("daemon.state_dir", "a path this process can use", f"{state_dir} ({exc.strerror})")
    if str(state_dir.resolve()).startswith(("/proc/", "/sys/")) or str(state_dir) in ("/proc", "/sys"):
        _fail("daemon.state_dir", "a directory on a real file system (not under /proc or /sys)", str(state_dir))
    run = _name(daemon, "run", "daemon.", "run")
    log_level = _str(daemon, "log_level", "daemon.", "info", ("debug", "info", "warning", "error"))
    supervisor_cpu = _int(daemon, "supervisor_cpu", "daemon.", 0, 0, ncpu - 1)
    shutdown_timeout_s = _num(daemon, "shutdown_timeout_s", "daemon.", 20.0, True, seconds=True)
    stall_restart_s = _num(daemon, "stall_restart_s", "daemon.", 30.0, seconds=True)
    if stall_restart_s < 0:
        _fail("daemon.stall_restart_s", "a number of seconds >= 0 (0: a stalled worker is only reported)",
              daemon["stall_restart_s"])

    # instruments
    insts_raw = raw.get("instruments")
    if not isinstance(insts_raw, list) or not insts_raw:
        _fail("instruments", "a non-empty array of tables ([[instruments]])", insts_raw)
    instruments, seen_ids, seen_sym = [], set(), set()
    for i, d in enumerate(insts_raw):
        w = f"instruments[{i}]."
        if not isinstance(d, dict):
            _fail(f"instruments[{i}]", "a table", d)
        _check_keys(d, {"id", "symbol", "tick_size", "lot_size", "book", "max_depth", "price_decimals",
                        "qty_decimals", "min_price", "max_price"}, w)
        iid = _int(d, "id", w, lo=0, hi=(1 << 24) - 1)
        sym = _str(d, "symbol", w)
        if not sym.strip():
            _fail(f"{w}symbol", "a non-empty symbol", sym)
        if iid in seen_ids:
            _fail(f"{w}id", "a unique instrument id", iid)
        if sym in seen_sym:
            _fail(f"{w}symbol", "a unique symbol", sym)
        seen_ids.add(iid)
        seen_sym.add(sym)
        kw = dict(id=iid, symbol=sym, tick_size=_decimal(d, "tick_size", w), lot_size=_decimal(d, "lot_size", w),
                  book=_str(d, "book", w, "L2", ("L2", "L3")), max_depth=_int(d, "max_depth", w, 0, 0, INT64_MAX))
        if kw["book"] == "L3" and kw["max_depth"]:
            # (taken and ignored: an L3 book keeps every order)
            _fail(f"{w}max_depth", "0 (or left out) on an L3 book: max_depth limits an L2 book's levels; an L3 "
                                   "book keeps every order", kw["max_depth"])
        for k in ("price_decimals", "qty_decimals"):
            if k in d:
                kw[k] = _int(d, k, w, lo=0, hi=18)
        for k in ("min_price", "max_price"):
            if k in d:
                kw[k] = _int(d, k, w, lo=LOWEST_PRICE, hi=DEFAULT_MAX_PRICE)
        lo, hi = kw.get("min_price", DEFAULT_MIN_PRICE), kw.get("max_price", DEFAULT_MAX_PRICE)
        if lo > hi:
            # (against the default min_price the book takes, 1: max_price = 0 passed here, then the
            # worker's book refused it and the daemon restarted it until it gave up)
            if "min_price" in kw:
                _fail(f"{w}min_price", f"at most {w}max_price ({hi})", lo)
            _fail(f"{w}max_price", f"at least {w}min_price ({lo}, its default: set min_price for "
                                   f"prices of 0 or below)", hi)
        try:
            instruments.append(Instrument(**kw))
        except ValueError as exc:
            raise ConfigError(f"config error: instruments[{i}]: {exc}") from None

    # workers
    workers_raw = raw.get("workers", [{"name": "w0", "cpu": min(1, ncpu - 1), "instruments": "all"}])
    if not isinstance(workers_raw, list) or not workers_raw:
        _fail("workers", "a non-empty array of tables ([[workers]])", workers_raw)
    workers, used_cpu, assigned = [], {}, {}
    for i, d in enumerate(workers_raw):
        w = f"workers[{i}]."
        if not isinstance(d, dict):
            _fail(f"workers[{i}]", "a table", d)
        _check_keys(d, {"name", "cpu", "instruments"}, w)
        name = _name(d, "name", w, f"w{i}")        # (in file names: feed-NAME.json, hdr/NAME.hlog)
        if name in ("writer", "supervisor"):
            _fail(f"{w}name", "a name other than 'writer' and 'supervisor' (the daemon's other processes)", name)
        for j, other in enumerate(workers):
            if other.name == name:
                # (both kept their tick history in feed-NAME.json: each resumed the other's channels)
                _fail(f"{w}name", f"a name no other worker has (workers[{j}] is named {name!r})", name)
        cpu = _int(d, "cpu", w, lo=0, hi=ncpu - 1)
        if cpu in used_cpu:
            _fail(f"{w}cpu", f"a core no other worker uses (workers[{used_cpu[cpu]}] is on core {cpu})", cpu)
        used_cpu[cpu] = i
        ids = d.get("instruments", "all")
        if ids == "all":
            ids = sorted(seen_ids)
        if not _ids(ids):
            _fail(f"{w}instruments", "\"all\" or an array of instrument ids", ids)
        for x in ids:
            if x not in seen_ids:
                _fail(f"{w}instruments", f"ids of configured instruments ({sorted(seen_ids)})", x)
            if x in assigned:
                _fail(f"{w}instruments", f"instruments not already on workers[{assigned[x]}]", x)
            assigned[x] = i
        if not ids:
            _fail(f"{w}instruments", "at least one instrument (\"all\" or their ids): a worker with none has "
                  "nothing to do", ids)
        workers.append(WorkerConfig(name, cpu, tuple(ids)))
    unserved = sorted(seen_ids - set(assigned))
    if unserved:
        _fail("workers", "every configured instrument on a worker (\"all\" or its id in some "
              "workers[i].instruments)", f"instruments {unserved} are on none")

    # feeds
    f = _table(raw, "feeds")
    _check_keys(f, {"endpoints", "snapshot", "socket", "hwm", "stale_after_ms", "recovery_retries", "channels",
                    "max_message_events", "batch_events", "io_cpu", "io_rt_priority", "busy_poll",
                    "reorder_window_ms", "history_from", "fast_loop", "curve_server_key", "curve_secret_key_file"}, "feeds.")
    try:
        endpoints = f["endpoints"] if "endpoints" in f else [default_feed_endpoint()]
        snapshot_default = default_snapshot_endpoint() if "snapshot" not in f else ""
    except ValueError as exc:
        _fail("feeds.endpoints", "a private directory for the default ipc endpoints, or endpoints set here", str(exc))
    if not isinstance(endpoints, list) or not endpoints:
        _fail("feeds.endpoints", "a non-empty array of ZeroMQ endpoints (ipc://PATH, tcp://HOST:PORT)", endpoints)
    for k, ep in enumerate(endpoints):
        _endpoint(ep, f"feeds.endpoints[{k}]")
    snapshot = _endpoint(_str(f, "snapshot", "feeds.", snapshot_default), "feeds.snapshot", empty=True)
    if snapshot and any(_same_endpoint(snapshot, ep) for ep in endpoints):
        # (the publisher binds both: the second bind takes the ipc path and every event was lost,
        # the daemon hearing nothing: an adversarial pass)
        _fail("feeds.snapshot", "an endpoint other than the data endpoints (feeds.endpoints): the publisher binds "
                                "its data socket and its recovery service separately", snapshot)
    if "channels" not in f and max(seen_ids) + 1 > 0xFFFF:
        # (the default was not checked: a worker crash-looped on channel 70,000 of 65,535)
        _fail("feeds.channels", f"a value set here (1..65535): its default, the highest instrument id + 1, "
                                f"is {max(seen_ids) + 1:,}, past the wire's 65,535 channels")
    feeds = FeedConfig(tuple(endpoints), snapshot,
                       _str(f, "socket", "feeds.", "sub", ("sub", "pull")),
                       _int(f, "hwm", "feeds.", 100_000, 0, INT32_MAX),
                       _int(f, "stale_after_ms", "feeds.", 5_000, 1, INT64_MAX),
                       _int(f, "recovery_retries", "feeds.", 5, 0, INT64_MAX),
                       _int(f, "channels", "feeds.", max(seen_ids) + 1, 1, 0xFFFF),
                       _int(f, "max_message_events", "feeds.", MAX_MESSAGE_EVENTS, 1, 1 << 20),
                       _int(f, "batch_events", "feeds.", 2 * MAX_MESSAGE_EVENTS, 1, 1 << 24),
                       _int(f, "io_cpu", "feeds.", supervisor_cpu, 0, ncpu - 1),
                       _int(f, "io_rt_priority", "feeds.", 0, 0, 99),
                       _bool(f, "busy_poll", "feeds.", False),
                       _reorder_window(f), _str(f, "history_from", "feeds.", "join", ("join", "start")),
                       _bool(f, "fast_loop", "feeds.", True), **_curve(f, base_dir))
    if feeds.socket == "pull" and len(workers) > 1:
        # a PUSH publisher deals its messages round-robin to every PULL socket: each worker would
        # get the other workers' channels (dropped) and miss a share of its own for good
        _fail("feeds.socket", "\"sub\" with several workers (\"pull\" takes one: a PUSH publisher deals each "
              "message to one of the connected workers, whichever channel it carries)", feeds.socket)
    if feeds.batch_events < feeds.max_message_events:
        _fail("feeds.batch_events", f"at least feeds.max_message_events ({feeds.max_message_events})",
              feeds.batch_events)
    owner = {}
    for wi, wk in enumerate(workers):                    # a channel's instruments on one worker
        for iid in wk.instruments:
            c = iid % feeds.channels
            if owner.setdefault(c, wi) != wi:
                _fail(f"workers[{wi}].instruments", f"whole feed channels: instrument {iid} is on channel {c} "
                      f"(id % feeds.channels), which workers[{owner[c]}] serves", iid)

    # stats
    stats = parse_stats(_table(raw, "stats"))

    # rules
    rules = parse_rules(raw.get("rules", []), seen_ids)
    check_rule_counts(rules, stats)

    # store
    st = _table(raw, "store")
    _check_keys(st, {"dsn", "database", "cluster", "batch_rows", "batch_seconds", "writer_cpu", "username",
                     "password", "enabled", "writer_nice", "writer_sched", "debug_insert_delay_s"}, "store.")
    dsn = _str(st, "dsn", "store.", f"chdb://{state_dir / 'store'}")
    if not (dsn.startswith("chdb:///") or dsn.startswith("http://") or dsn.startswith("https://")) \
            or not dsn.startswith("chdb:") and not _server_dsn_ok(dsn):
        from tickwire.engine.store import redact

        _fail("store.dsn", "chdb:///absolute/dir or http(s)://host:port", redact(dsn))
    store = StoreConfig(dsn, _str(st, "database", "store.", "tickwire"), _str(st, "cluster", "store.", ""),
                        _int(st, "batch_rows", "store.", 500_000, 1, INT64_MAX),
                        _num(st, "batch_seconds", "store.", 1.0, True, seconds=True),
                        _int(st, "writer_cpu", "store.", 0, 0, ncpu - 1), _str(st, "username", "store.", ""),
                        _str(st, "password", "store.", ""), _bool(st, "enabled", "store.", True),
                        _int(st, "writer_nice", "store.", 0, 0, 19),
                        _str(st, "writer_sched", "store.", "idle", choices=("idle", "normal")),
                        _num(st, "debug_insert_delay_s", "store.", 0.0, seconds=True))
    # (checked only by the writer, which then spilled every batch and exited 0; "system" put
    # tickwire's tables among ClickHouse's own)
    import re as _re

    if not _re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", store.database) or \
            store.database.lower() in ("system", "information_schema", "default"):
        _fail("store.database", "an identifier (letters, digits, _) other than ClickHouse's own system, "
                                "information_schema and default", store.database)
    if store.cluster and not _re.fullmatch(CLUSTER_NAME, store.cluster):
        # (one rule with store.cluster_ddl, which refused the '.' and '-' accepted here)
        _fail("store.cluster", "a cluster name (letters, digits, _; not starting with a digit)", store.cluster)
    if store.debug_insert_delay_s < 0:
        _fail("store.debug_insert_delay_s", "a number >= 0 (seconds; a test and benchmark knob)",
              store.debug_insert_delay_s)

    r = _table(raw, "rings")
    _check_keys(r, {"prefix", "ticks_capacity", "signals_capacity"}, "rings.")
    rings = RingConfig(_name(r, "prefix", "rings.", "tickwire"),
                       _int(r, "ticks_capacity", "rings.", 1 << 20, 1024, MAX_RING_CAPACITY),
                       _int(r, "signals_capacity", "rings.", 1 << 16, 1024, MAX_RING_CAPACITY))
    for key in ("ticks_capacity", "signals_capacity"):
        if getattr(rings, key) & (getattr(rings, key) - 1):
            _fail(f"rings.{key}", "a power of two (records)", getattr(rings, key))
    m = _table(raw, "metrics")
    _check_keys(m, {"host", "port", "hdr_interval_s", "hdr_dir"}, "metrics.")
    hdr_dir = _path(_str(m, "hdr_dir", "metrics.", ""), base_dir, "metrics.hdr_dir")
    metrics = MetricsConfig(_str(m, "host", "metrics.", "127.0.0.1"), _int(m, "port", "metrics.", 9464, 0, 65535),
                            _num(m, "hdr_interval_s", "metrics.", 10.0, True, seconds=True), hdr_dir)
    e = _table(raw, "engine")
    _check_keys(e, {"clock", "timing_every"}, "engine.")
    return Config(tuple(instruments), tuple(workers), feeds, store, rings, metrics, stats, tuple(rules), state_dir,
                  run, _str(e, "clock", "engine.", "wall", ("wall", "event")),
                  _int(e, "timing_every", "engine.", 64, 0, INT32_MAX), log_level, supervisor_cpu, log_file,
                  shutdown_timeout_s, _bridge(raw, feeds, seen_sym, base_dir), stall_restart_s)


def _expanded(v, key: str) -> Path:
    """``v`` with a leading ``~`` or ``~user`` expanded; a config error naming ``key`` when it
    cannot be (an unknown user: it was Path's RuntimeError and a traceback)."""
    try:
        return Path(v).expanduser()
    except RuntimeError:
        _fail(key, "a path whose ~ names a user of this host (or no ~)", str(v))


def _path(v: str, base_dir: Path, key: str) -> str:
    p = _expanded(v, key)
    return str(p if p.is_absolute() else base_dir / p) if v else ""


def _bridge_curve(b: dict, base_dir: Path) -> dict:
    """``bridge.curve_secret_key_file`` / ``bridge.curve_clients_dir``, checked now."""
    from tickwire.feeds.curve import CurveServer

    secret = _path(_str(b, "curve_secret_key_file", "bridge.", ""), base_dir, "bridge.curve_secret_key_file")
    clients = _path(_str(b, "curve_clients_dir", "bridge.", ""), base_dir, "bridge.curve_clients_dir")
    if clients and not secret:
        _fail("bridge.curve_secret_key_file", "set too, as bridge.curve_clients_dir is (the bridge's certificate)")
    if secret:
        try:
            CurveServer(secret, clients or None)
        except ValueError as exc:
            key = "bridge.curve_clients_dir" if clients and clients in str(exc) else "bridge.curve_secret_key_file"
            _fail(key, "the bridge's CURVE certificate (NAME.key_secret, yours and 0600) and a directory of "
                  "client public keys", str(exc))
    return {"curve_secret_key_file": secret, "curve_clients_dir": clients}


def _bridge(raw: dict, feeds: FeedConfig, symbols: set, base_dir: Path) -> Optional[BridgeConfig]:
    if "bridge" not in raw:
        return None
    b = _table(raw, "bridge")
    _check_keys(b, {"exchange", "symbols", "trades", "depth", "endpoint", "snapshot", "heartbeat_ms",
                    "zmq_input", "curve_secret_key_file", "curve_clients_dir", "checksum_validation"}, "bridge.")
    exchange = _str(b, "exchange", "bridge.")
    if not re.fullmatch(r"[A-Z0-9_]+", exchange):
        _fail("bridge.exchange", "a cryptofeed exchange id in capitals, such as \"KRAKEN\" or \"BINANCE\"", exchange)
    chosen = b.get("symbols", sorted(symbols))
    if (not isinstance(chosen, list) or not chosen or any(not isinstance(x, str) for x in chosen)
            or len(set(chosen)) != len(chosen)):
        _fail("bridge.symbols", "a non-empty array of distinct instrument symbols", chosen)
    unknown = [x for x in chosen if x not in symbols]
    if unknown:
        _fail("bridge.symbols", f"symbols of configured [[instruments]] ({', '.join(sorted(symbols))})",
              unknown[0])
    zmq_input = _endpoint(_str(b, "zmq_input", "bridge.", ""), "bridge.zmq_input", bind=True,
                          schemes=("tcp", "ipc"), empty=True)
    endpoint = _endpoint(_str(b, "endpoint", "bridge.", feeds.endpoints[0]), "bridge.endpoint", bind=True)
    snapshot = _endpoint(_str(b, "snapshot", "bridge.", feeds.snapshot), "bridge.snapshot", bind=True)
    if _same_endpoint(snapshot, endpoint):
        _fail("bridge.snapshot", "an endpoint other than bridge.endpoint (the data socket and the recovery "
                                 "service are bound separately)", snapshot)
    return BridgeConfig(exchange, tuple(chosen), _bool(b, "trades", "bridge.", True),
                        _int(b, "depth", "bridge.", 0, 0, 1 << 20), endpoint, snapshot,
                        _int(b, "heartbeat_ms", "bridge.", 100, 1, 60_000), zmq_input, **_bridge_curve(b, base_dir),
                        checksum_validation=_bool(b, "checksum_validation", "bridge.", True))


_TOP_KEYS = {"run": "daemon.run", "state_dir": "daemon.state_dir", "log_level": "daemon.log_level",
             "supervisor_cpu": "daemon.supervisor_cpu", "log_file": "daemon.log_file",
             "shutdown_timeout_s": "daemon.shutdown_timeout_s", "stall_restart_s": "daemon.stall_restart_s",
             "clock": "engine.clock",
             "timing_every": "engine.timing_every"}


def _diff(a, b, key: str, out: list) -> None:
    if is_dataclass(a) and type(a) is type(b):
        for f in fields(a):
            sub = f"{key}.{f.name}" if key else _TOP_KEYS.get(f.name, f.name)
            _diff(getattr(a, f.name), getattr(b, f.name), sub, out)
    elif (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
          and any(is_dataclass(x) for x in a)):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{key}[{i}]", out)
    elif a != b:
        out.append(key)


def restart_keys(old: Config, new: Config) -> list[str]:
    """The keys whose change a running daemon cannot apply (everything but the rules'
    ``enter``/``exit`` thresholds, which SIGHUP reloads), e.g. ``["rings.ticks_capacity"]``."""
    out: list[str] = []
    _diff(old, new, "", out)
    ids = {i.id for i in old.instruments}

    def same(key: str) -> bool:
        """An instrument list reordered, or a rule's default written out in full, is no change
        (SIGHUP said "changed: needs a restart" of them)."""
        m = re.fullmatch(r"(workers|rules)\[(\d+)\]\.instruments", key)
        if not m:
            return False
        a, b = (getattr(c, m.group(1))[int(m.group(2))].instruments for c in (old, new))
        return {i.id for i in new.instruments} == ids and \
            (ids if a is None else set(a)) == (ids if b is None else set(b))

    return [k for k in out if not re.fullmatch(r"rules\[\d+\]\.(enter|exit)", k) and not same(k)]


def load_frozen(path) -> Config:
    """The configuration a running daemon's supervisor holds: its ``config.json`` (the file as
    read at start, with the thresholds SIGHUP applied), as a Config."""
    frozen = json.loads(Path(path).read_text())
    return from_dict(frozen["raw"], base_dir=Path(frozen["base_dir"]))


def running_config(cfg: Config, run_dir=None) -> Config:
    """The configuration of the daemon that runs ``cfg``'s run (``run_dir``, default its state
    directory's run), as its supervisor holds it (:func:`load_frozen` of the run directory's
    ``config.json``), else ``cfg`` (no such file, or one that cannot be read: an older daemon's).
    A config file edited since the daemon started names other symbols, tick sizes, workers than it
    runs: `tickwire top` showed prices ten times off under a symbol the daemon did not run (an
    adversarial pass)."""
    path = Path(run_dir if run_dir is not None else Path(cfg.state_dir) / cfg.run) / "config.json"
    try:
        return load_frozen(path)
    except Exception:                       # noqa: BLE001 (any damage: the file given)
        return cfg


def parse_stats(s: dict) -> StatsConfig:
    """``[stats]`` (a table) checked as the daemon's config checks it; ConfigError names the key."""
    allowed = {fl.name for fl in fields(StatsConfig)}
    _check_keys(s, allowed, "stats.")
    _bool(s, "extrema", "stats.", StatsConfig.extrema)
    # the daemon's bounds first (tighter than the library's, which StatsConfig checks)
    for key in ("window_size", "trade_window_size", "max_capacity", "ewma_fast_halflife_ns", "ewma_slow_halflife_ns"):
        v = s.get(key, getattr(StatsConfig, key))
        if not isinstance(v, int) or isinstance(v, bool):
            continue                                     # (StatsConfig names the type)
        kind = {"window_size": "window", "trade_window_size": "trade_window"}.get(key)
        kind = s.get(kind, "count") if kind else ("count" if key == "max_capacity" else "time")
        if kind == "count" and v > MAX_WINDOW_SAMPLES:
            _fail(f"stats.{key}", f"at most {MAX_WINDOW_SAMPLES} samples (2**24)", v)
        if v >= 1 << 62:
            _fail(f"stats.{key}", "an integer below 2**62 (nanoseconds)", v)
    try:
        stats = StatsConfig(**s)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config error: {exc}") from None
    if stats.imbalance_depth > 1 << 20:
        _fail("stats.imbalance_depth", "at most 1048576 levels", stats.imbalance_depth)
    return stats


def parse_rules(rules_raw, seen_ids=None) -> list:
    """``[[rules]]`` (an array of tables) as RuleConfigs, checked as the daemon's config checks
    them (``seen_ids``: the configured instrument ids a rule's ``instruments`` may name; None: any,
    a rules file without instruments); ConfigError names the key."""
    if not isinstance(rules_raw, list):
        _fail("rules", "an array of tables ([[rules]])", rules_raw)
    rules = []
    for i, d in enumerate(rules_raw):
        w = f"rules[{i}]."
        if not isinstance(d, dict):
            _fail(f"rules[{i}]", "a table", d)
        _check_keys(d, {"kind", "enter", "exit", "min_count", "instruments", "emit_exit"}, w)
        kind = _str(d, "kind", w, choices=sorted(RULE_KINDS))
        ids = d.get("instruments")
        if ids is not None:
            if not _ids(ids) or not ids or (seen_ids is not None and any(x not in seen_ids for x in ids)):
                # (empty: a rule that can never fire, accepted unsaid; leave the key out for all)
                _fail(f"{w}instruments", "a non-empty array of " + (
                    f"configured instrument ids ({sorted(seen_ids)}; " if seen_ids is not None else "instrument ids (")
                    + "without the key: all)", ids)
        try:
            rules.append(RuleConfig(kind, _num(d, "enter", w, positive=True), _num(d, "exit", w, 0.0),
                                    _int(d, "min_count", w, 1, 1, INT64_MAX), ids, _bool(d, "emit_exit", w, False)))
        except ConfigError:                                   # names its key already
            raise
        except ValueError as exc:                             # RuleConfig's own checks, named by key
            key = next((k for k in ("emit_exit", "exit", "enter", "min_count", "instruments") if f"{k} " in str(exc)),
                       None)
            raise ConfigError(f"config error: rules[{i}]{'.' + key if key else ''}: {exc}") from None
    return rules


#: the rules whose min_count is of a window's samples: mid (zscore, ewma_cross), spread, trades (vwap)
_COUNTED = {"zscore": "window", "ewma_cross": "window", "spread": "window", "vwap": "trade_window"}


def check_rule_counts(rules, stats) -> None:
    """ConfigError for a rule whose ``min_count`` is more samples than its window can hold (a
    count window's size, a time window's ``max_capacity``): it could never fire, accepted unsaid
    (an adversarial pass)."""
    for i, r in enumerate(rules):
        which = _COUNTED.get(r.kind)
        if which is None:
            continue
        if getattr(stats, which) == "count":
            most, what = getattr(stats, f"{which}_size"), f"stats.{which}_size"
        else:
            most, what = 1 << (stats.max_capacity - 1).bit_length(), "stats.max_capacity (rounded up to a power of two)"
        if r.min_count > most:
            raise ConfigError(f"config error: rules[{i}].min_count: {r.min_count} samples, but its window holds at "
                              f"most {most} ({what}): the rule could never fire")


def load(path) -> Config:
    """Read and validate a TOML configuration file."""
    raw, base_dir = read_raw(path)
    return from_dict(raw, base_dir=base_dir)


#: a configuration file larger than this is refused (read whole: /dev/zero was read until memory ran out)
CONFIG_MAX_BYTES = 16 << 20


#: a ClickHouse cluster name ``store.cluster`` and :func:`tickwire.engine.store.cluster_ddl` take:
#: an identifier written unquoted into ``ON CLUSTER`` and ``Distributed(...)``
CLUSTER_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def read_raw(path) -> tuple[dict, Path]:
    """The TOML mapping of a configuration file and the folder its relative paths resolve from
    (not validated: :func:`from_dict` does that)."""
    try:
        path = Path(path).expanduser().absolute()  # relative paths inside resolve from its folder
    except RuntimeError:
        raise ConfigError(f"config error: {path}: its ~ names no user of this host") from None
    from tickwire.engine.files import NotReadable, read_regular

    skip = 0
    try:
        data = read_regular(path, CONFIG_MAX_BYTES, "TOML file")
        # a byte-order mark, as some Windows editors write, is skipped (it read "Invalid statement")
        skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
        raw = tomllib.loads(data[skip:].decode("utf-8"))
    except NotReadable as exc:
        raise ConfigError(f"config error: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config error: {path}: not valid TOML: nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config error: {path}: expected a UTF-8 TOML text file, got a byte it cannot "
                          f"decode at offset {exc.start + skip}") from None
    except OSError as exc:
        raise ConfigError(f"config error: {path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {path}: not valid TOML: {exc}") from None
    except ValueError as exc:                  # (an integer of over 4,300 digits: int()'s limit, a traceback)
        raise ConfigError(f"config error: {path}: not valid TOML: {str(exc).split(';')[0]}") from None
    return raw, path.parent


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(raw: dict) -> str:
    """A configuration mapping as TOML text (what :func:`load` reads back): scalars, arrays,
    tables and arrays of tables, as the daemon's configuration uses."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in raw.items() if not isinstance(v, (dict, list)) or
             (isinstance(v, list) and not (v and isinstance(v[0], dict)))]
    for k, v in raw.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += ["", f"[[{k}]]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"
