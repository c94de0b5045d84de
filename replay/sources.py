"""Where replayed events come from: the tick store, the real captures, numpy arrays.

Every source is an iterable of EVENT_DTYPE chunks (C-contiguous, at most ``chunk`` events
each) in one total order, with ``instruments`` (the :class:`~tickwire.engine.instruments.Instrument`
definitions the books need), ``channels`` (instrument id -> feed channel, or None: any) and
``total`` (the events it will yield, for progress and ETA; None when unknown). Memory stays flat
whatever the range: the store is streamed in chunks, ``.npy`` files are memory-mapped.

The store's tick history alone is not what the live engine saw: the books also met the snapshot
events and ``Kind.SNAPSHOT`` markers kept in the ``snapshots`` table (STALE when a channel lost
its book, BEGIN..END of each snapshot, END when a silent channel resumed). :class:`StoreSource`
puts each one back where the engine met it (see :func:`merge_snapshots`), so that a replay rebuilds
the books, statistics and signals exactly as live (docs/replay.md, "Live parity").
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from tickwire.engine.instruments import Instrument
from tickwire.ext.pipeline import FUTURE_STAMP_NS
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind
from tickwire.replay.audit import SeqAudit

__all__ = ["ReplayError", "ArraySource", "CaptureSource", "StoreSource", "merge_snapshots",
           "parse_time", "bad_stamps", "DEFAULT_CHUNK"]

#: Events per chunk a source yields by default (64 MiB of 64-byte events at most in flight).
DEFAULT_CHUNK = 1 << 20
#: How far outside a replayed range the events of a hole its edge made may be stamped (the store's
#: time order is not its sequence order: exchange times step back, by milliseconds in the captures)
EDGE_SLACK_NS = 60 * 10**9


#: Most ticks a store may hold with bad stamps (or this share of them) for a replay to put them
#: back where they were received: more is no bad stamp but a store of two clocks (say, the
#: simulator's 2023 stream and a live feed), replayed in its time order as it is.
MAX_STRAYS, MAX_STRAY_SHARE = 100_000, 0.1


def bad_stamp_sql(offset_ns: float) -> str:
    """:func:`bad_stamps` in SQL, for a store whose typical ``ts_event - ts_recv`` is ``offset_ns``."""
    return ("toUnixTimestamp64Nano(ts_recv) > 0 AND abs(toFloat64(toUnixTimestamp64Nano(ts_event)) - "
            f"toFloat64(toUnixTimestamp64Nano(ts_recv)) - ({float(offset_ns)!r})) > {FUTURE_STAMP_NS}")


def stamp_offset(events: np.ndarray) -> float:
    """The typical ``ts_event - ts_recv`` of ``events`` (the median, ns; 0 when no receipt time
    is known): a publisher whose clock runs years apart from ours (the simulator's stream starts
    in 2023) or ours days behind shift every event alike."""
    known = events["ts_recv"] > 0
    if not known.any():
        return 0.0
    return float(np.median(events["ts_event"][known].astype(np.float64) - events["ts_recv"][known].astype(np.float64)))


class StampOffset:
    """A stream's typical ``ts_event - ts_recv`` for its replay's clocks (paced, the report's): a
    source's own where it has one (``stamp_offset_ns``: a store's, None when it holds no receipt
    times or two clocks), else :func:`stamp_offset` of each batch until one with 64 receipts or more fixes it."""

    def __init__(self, source=None):
        self.fixed = hasattr(source, "stamp_offset_ns")
        self.value = source.stamp_offset_ns if self.fixed else None

    def of(self, events: np.ndarray) -> Optional[float]:
        if self.fixed:
            return self.value
        offset = stamp_offset(events)
        if int((events["ts_recv"] > 0).sum()) >= 64:
            self.fixed, self.value = True, offset
        return offset


def clock_strays(events: np.ndarray, offset_ns: Optional[float]) -> np.ndarray:
    """:func:`bad_stamps` for a replay's clocks (paced, the report's): none where more than a tenth
    of 64 or more events are (a stream of two clocks, the simulator's 2023 and a live feed, not
    bad stamps: its second clock moved nothing, a review)."""
    bad = bad_stamps(events, offset_ns)
    if len(bad) >= 64 and bad.sum() > MAX_STRAY_SHARE * len(bad):
        bad[:] = False
    return bad


def bad_stamps(events: np.ndarray, offset_ns: Optional[float]) -> np.ndarray:
    """Which of ``events`` have a bad stamp: a ``ts_event`` more than :data:`FUTURE_STAMP_NS` (a
    day) away from where their receipt (``ts_recv``, when known) puts it, the stream's typical
    offset (``offset_ns``; None: not known, none) taken into account. Such a tick (2100, say) sits
    at its stamp in the store's time order; a replay puts it back where it was received, and no
    clock of a replay moves for it (docs/replay.md)."""
    r = events["ts_recv"]
    known = r > 0
    if offset_ns is None or not known.any():
        return np.zeros(len(events), bool)
    d = events["ts_event"].astype(np.float64) - r.astype(np.float64) - offset_ns
    return known & (np.abs(d) > FUTURE_STAMP_NS)


class ReplayError(Exception):
    """A replay that cannot start or go on: the message is one line that says why and what to do
    (the CLI prints it and exits 2, having written nothing)."""


def parse_time(text) -> Optional[int]:
    """Nanoseconds since the Unix epoch from an integer (ns) or an ISO 8601 time
    (``2024-08-08``, ``2024-08-08T23:54:00``, ``...Z`` or with an offset; naive times are UTC)."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, np.integer)):
        return _in_range(int(text), text)
    s = str(text).strip()
    if s.lstrip("-").isdigit():
        return _in_range(int(s), text)
    from datetime import datetime, timezone

    frac_ns = 0
    sep = "." if "." in s else ","                 # ISO 8601's decimal sign: either (a comma was
    if sep in s:                                   # dropped, 00:00:00,5 read as 00:00:00); datetime
        head, _, rest = s.partition(sep)           # parses microseconds only: keep ns
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        frac_ns = int((digits + "000000000")[:9]) if digits else 0
        s = head + rest if digits and len(digits) <= 9 else "?"    # (2024-...:00, or .1234567891: refused)
        if not re.search(r"(?:[0-9]{2}:[0-9]{2}:[0-9]{2}|T[0-9]{6})$", head):     # (hh:mm:ss, or basic Thhmmss)
            # a fraction of a minute or an hour (23:54.5) was read as one of a second: 23:54:00.5
            raise ReplayError(f"cannot read the time {text!r}: a decimal fraction is taken of the seconds only "
                              f"(2024-08-08T23:54:30.5Z, not 23:54.5)")
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        if dt.microsecond:                         # a second fraction: 00:00:00.5,6
            raise ValueError
    except ValueError:
        raise ReplayError(f"cannot read the time {text!r}: give nanoseconds since the epoch or ISO 8601 "
                          f"(2024-08-08T23:54:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return _in_range(int(dt.timestamp()) * 1_000_000_000 + frac_ns, text)


def _in_range(ns: int, text) -> int:
    """``ns`` if it fits event times (int64 nanoseconds: 1677-09-21 .. 2262-04-11), else a ReplayError."""
    if not -(1 << 63) <= ns < (1 << 63):
        raise ReplayError(f"the time {text!r} is outside what int64 nanoseconds hold (1677-09-21 .. 2262-04-11)")
    return ns


def _bound(name: str, v) -> Optional[int]:
    """A range's bound given from Python: None or integer nanoseconds since the epoch (a string,
    "2023-...", was a numpy UFuncTypeError from the comparison; :func:`parse_time` reads text)."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be None or an integer of nanoseconds since the epoch, got "
                        f"{type(v).__name__} {v!r} (tickwire.replay.sources.parse_time reads ISO 8601)")
    return _in_range(int(v), v)


def _select_instruments(known: Sequence[Instrument], wanted, where: str) -> list[Instrument]:
    """The instruments named in ``wanted`` (ids or symbols), or all; ReplayError for one unknown."""
    if not wanted:
        return list(known)
    by_id = {i.id: i for i in known}
    by_sym = {i.symbol: i for i in known}
    out = []
    for w in wanted:
        key = str(w).strip()
        inst = by_sym.get(key)
        if inst is None and key.isdigit():
            inst = by_id.get(int(key))
        if inst is None:
            names = ", ".join(f"{i.symbol} ({i.id})" for i in known[:12]) + (" ..." if len(known) > 12 else "")
            raise ReplayError(f"unknown instrument {key!r}: {where} has {names or 'none'}")
        if inst not in out:
            out.append(inst)
    return out


def _effective_ts(events: np.ndarray) -> np.ndarray:
    """The time an event counts at for a range: ``ts_event``, or a snapshot row's receive time
    when later (:func:`_time_mask`), on the publisher's clock: moved by the ticks' typical
    ``ts_event - ts_recv`` (a store's history exported to .npy: the simulator stamps 2023, the
    daemon received in 2026, and every snapshot and marker counted as 2026, left out of any
    range of the data, or all taken by any --from: 192 signals against live's 77)."""
    ts = events["ts_event"]
    snap = (events["flags"] & np.uint32(Flag.SNAPSHOT)) != 0
    if snap.any():
        recv = events["ts_recv"]
        known = np.flatnonzero(~snap & (recv > 0))
        if len(known) > 1 << 20:                  # (the median of a million spread over the file)
            known = known[np.linspace(0, len(known) - 1, 1 << 20).astype(np.int64)]
        offset = int(np.median(ts[known].astype(np.float64) - recv[known].astype(np.float64))) if len(known) else 0
        rows = np.flatnonzero(snap)               # only the snapshot rows move: no full-length copies
        r = recv[rows]
        own = ts[rows]
        at = np.where(r > 0, r + np.int64(offset), own)
        # a row stamped far from where its receipt puts it (a daemon's RESTART marker stamped with
        # the local clock, 2026 in a 2023 stream) counts at its receipt: taken by the range of
        # the ticks received around it, not by one of its stamp's time alone
        far = (r > 0) & (np.abs(own.astype(np.float64) - at.astype(np.float64)) > FUTURE_STAMP_NS)
        t = np.where(far, at, np.maximum(own, at))
        # a snapshot counts at one time, every row of it: its markers, stamped at receipt, counted at
        # ts_recv and its levels at ts_recv + the offset (Kraken's: -29 ms), and a --from between
        # them took the BEGIN and END markers without a level (a book emptied and said in sync, an
        # adversarial pass). Runs of consecutive snapshot rows, each BEGIN opening one and each END
        # closing it, count at the latest time of their rows.
        if len(rows) > 1:
            fl = events["flags"][rows]
            begin = (fl & np.uint32(Flag.SNAPSHOT_BEGIN)) != 0
            end = (fl & np.uint32(Flag.SNAPSHOT_END)) != 0
            run = np.concatenate(([0], np.cumsum((np.diff(rows) != 1) | begin[1:] | end[:-1])))
            top = np.full(int(run[-1]) + 1, np.iinfo(np.int64).min, np.int64)
            np.maximum.at(top, run, t)
            t = top[run]
        ts = np.array(ts)
        ts[rows] = t
    return ts


def _time_mask(events: np.ndarray, start_ns, end_ns, ts=None) -> Optional[np.ndarray]:
    """Which events fall in ``[start_ns, end_ns)``. A snapshot's rows count at the time it was
    received (``ts_recv`` on the ticks' clock, when later than their own ``ts_event``): a level's own time is when it
    last changed (Kraken stamps each level so, back years), and a range that takes the snapshot
    must take all of it, or its book is partial while its END marker says it is in sync."""
    if start_ns is None and end_ns is None:
        return None
    ts = _effective_ts(events) if ts is None else ts
    m = np.ones(len(events), bool)
    if start_ns is not None:
        m &= ts >= start_ns
    if end_ns is not None:
        m &= ts < end_ns
    return m


def _chunks(events: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    for k in range(0, len(events), chunk):
        yield np.ascontiguousarray(events[k:k + chunk])


def instruments_of(events: np.ndarray) -> list[Instrument]:
    """Default definitions for the instrument ids in ``events``: L3 where events carry order ids,
    L2 otherwise, tick and lot sizes of :class:`Instrument`'s defaults (pass your own for formatting)."""
    ids = np.unique(events["instrument"]) if len(events) else np.empty(0, np.uint32)
    out = []
    for i in ids.tolist():
        mine = (events["instrument"] == i) & (events["kind"] != int(Kind.SNAPSHOT))   # markers carry an epoch there
        l3 = bool((events["order_id"][mine] != 0).any())
        out.append(Instrument(int(i), f"I{i}", book="L3" if l3 else "L2"))
    return out


class ArraySource:
    """Canonical events from a numpy array or an ``.npy`` file (memory-mapped), in the array's order.

    Parameters
    ----------
    events : numpy.ndarray or str or Path
        EVENT_DTYPE events, or the path of a ``.npy`` file of them.
    instruments : list of Instrument, optional
        Definitions (default: :func:`instruments_of` the events).
    select : sequence of str or int, optional
        Keep these instruments (symbols or ids).
    start_ns, end_ns : int, optional
        Keep events with ``start_ns <= ts_event < end_ns``.

    The engine's channel check is :class:`EngineSpec`'s ``channels`` (a ``channels=`` here was
    documented as the check, and ignored: an adversarial pass).
    """

    def __init__(self, events, instruments=None, select=None, start_ns=None, end_ns=None, *,
                 chunk: int = DEFAULT_CHUNK, name: str | None = None):
        if isinstance(events, (str, os.PathLike)):
            from tickwire.engine.files import not_a_file

            path = Path(events)
            what = not_a_file(path)
            if what is not None:                   # (a FIFO, a device, a symlink loop read "no such file")
                raise ReplayError(f"no such file: {path}" if what == "no such file" else
                                  f"{path}: is {what}, not a .npy file of events")
            try:
                events = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                why = "no .npy header: numpy would read it as a pickle, which is never loaded: it could run code" \
                    if "allow_pickle" in str(exc) else exc or type(exc).__name__   # (numpy's advice: load unsafely)
                raise ReplayError(f"{path}: not a .npy file of events ({why})") from None
            self.name = str(path)
        else:
            self.name = name or "array"
        start_ns, end_ns = _bound("start_ns", start_ns), _bound("end_ns", end_ns)
        if getattr(events, "dtype", None) != EVENT_DTYPE:
            raise ReplayError(f"{self.name}: expected a 1-d array of EVENT_DTYPE (docs/events.md), got "
                              f"{getattr(events, 'dtype', type(events).__name__)}")
        if events.ndim != 1:
            raise ReplayError(f"{self.name}: expected a 1-d array of EVENT_DTYPE (docs/events.md), got one of "
                              f"EVENT_DTYPE with {events.ndim} dimensions {events.shape}")
        try:
            known = list(instruments) if instruments is not None else instruments_of(events)
        except ValueError as exc:                  # ids the engine cannot index (give --config)
            raise ReplayError(f"{self.name}: {exc}") from None
        self.instruments = _select_instruments(known, select, self.name)
        ts = _effective_ts(events) if start_ns is not None or end_ns is not None else None
        mask = _time_mask(events, start_ns, end_ns, ts)
        if select:
            keep = np.isin(events["instrument"], [i.id for i in self.instruments])
            mask = keep if mask is None else (mask & keep)
        # the selection is kept as a mask (a byte an event) and applied chunk by chunk: a copy of
        # the selected events (64 bytes each) made a ranged replay of a memory-mapped file grow
        # with the range (592 MB for 9 M of 10^7 events, 65 MB without the range)
        self._all, self._mask = events, mask
        self.total = len(events) if mask is None else int(np.count_nonzero(mask))
        if not self.total:
            raise ReplayError(f"{self.name}: no events in the range and instruments asked for")
        # events before the range: its books start empty there (said by the CLI)
        self.history_before = bool(start_ns is not None and len(events) and int(ts.min()) < start_ns)
        self.chunk = int(chunk)

    @property
    def events(self) -> np.ndarray:
        """The selected events (the file's memory map itself without a selection; a copy with one)."""
        return self._all if self._mask is None else self._all[self._mask]

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._mask is None:
            return _chunks(self._all, self.chunk)
        return self._selected()

    def last_time_ns(self) -> Optional[int]:
        """The latest ``ts_event`` of the selection: where a paced replay's recorded clock ends
        (its ETA). One pass over the times."""
        ts = self._all["ts_event"] if self._mask is None else self._all["ts_event"][self._mask]
        return int(ts.max()) if len(ts) else None

    def _selected(self) -> Iterator[np.ndarray]:
        ev, mask, chunk = self._all, self._mask, self.chunk
        out = np.empty(chunk, EVENT_DTYPE)
        n = 0
        for k in range(0, len(ev), chunk):
            part = ev[k:k + chunk][mask[k:k + chunk]]
            while len(part):
                take = min(chunk - n, len(part))
                out[n:n + take] = part[:take]
                n += take
                part = part[take:]
                if n == chunk:
                    yield out.copy()
                    n = 0
        if n:
            yield out[:n].copy()


class CaptureSource(ArraySource):
    """A real exchange capture (``kraken`` or ``binance``, feeds/captures.py) as canonical events,
    in arrival order, snapshots included (the captures are small: loaded whole).

    ``path`` defaults to the shared data directory (:func:`~tickwire.feeds.captures.find_shared_data`).
    """

    def __init__(self, name: str, path=None, select=None, start_ns=None, end_ns=None, *,
                 chunk: int = DEFAULT_CHUNK):
        from tickwire.feeds import captures

        loaders = {"kraken": (captures.load_kraken, captures.KRAKEN_FILE),
                   "binance": (captures.load_binance, captures.BINANCE_FILE)}
        if name not in loaders:
            raise ReplayError(f"unknown capture {name!r}: expected one of {sorted(loaders)}")
        load, filename = loaders[name]
        if path:
            from tickwire.engine.files import not_a_file

            what = not_a_file(path)
            if what is not None:
                raise ReplayError(f"--capture-file {path}: " + ("is a directory" if what == "a directory" else
                                                                 what if what == "no such file" else f"is {what}"))
        path = Path(path) if path else captures.find_shared_data(filename)
        if path is None or not path.exists():
            raise ReplayError(f"the {name} capture {filename} is not here: put it under ../shared/data or "
                              f"set TICKWIRE_SHARED_DATA")
        try:
            cap = load(path)
        except captures.CaptureError as exc:
            raise ReplayError(str(exc)) from None
        except (OSError, EOFError, ValueError, KeyError) as exc:
            raise ReplayError(f"{path}: unreadable capture ({type(exc).__name__}: {exc})") from None
        self.capture = cap
        if not len(cap.events):
            raise ReplayError(f"{path}: no book or trade messages in it: not a {name} capture")
        # (named before: its errors said "array: no events in the range", "array has BTCUSDT (0)")
        super().__init__(cap.events, cap.instruments, select, start_ns, end_ns, chunk=chunk,
                         name=f"{name} capture {path.name}")


# ---------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------

def _open_store(dsn: str, database: str):
    """Open an existing store for reading, or ReplayError with what to do."""
    from tickwire.engine.store import Store, StoreError, redact

    if dsn.startswith("chdb:"):
        path = dsn[len("chdb://"):]
        if not path or not os.path.isabs(path):
            raise ReplayError(f"--dsn {dsn!r}: the embedded store needs an absolute path (chdb:///abs/dir)")
        if not os.path.isdir(path):
            from tickwire.engine.files import not_a_file

            what = not_a_file(path)                   # (a file read "the directory does not exist")
            raise ReplayError(f"no store at {path} (" + ("the directory does not exist" if what == "no such file"
                                                         else f"it is {what or 'a file'}, not a directory") + ")")
        if not os.path.isdir(os.path.join(path, "metadata")):      # opening it would make chDB's files there
            raise ReplayError(f"no store at {path} (not an embedded ClickHouse data directory: no metadata/ in it)")
        from tickwire.engine.supervisor import _flock_held, _lock_holder, _pid_alive

        holder = _lock_holder(Path(path) / "tickwire.lock")
        if _flock_held(Path(path) / "status") or (_flock_held(Path(path) / "tickwire.lock") and _pid_alive(holder)):
            who = f" (daemon pid {holder})" if holder and _pid_alive(holder) else ""
            raise ReplayError(_locked(f"the store {path} is locked by a running process{who}"))
    try:
        store = Store.open(dsn, database, create=False)
    except StoreError as exc:
        msg = str(exc)
        if "Cannot lock file" in msg or "Another server instance" in msg:
            raise ReplayError(_locked(f"the store {redact(dsn)} is locked by another process")) from None
        raise ReplayError(msg) from None
    try:
        have = store.client.query("SELECT count() FROM system.tables WHERE database = {d:String} "
                                  "AND name IN ('ticks', 'snapshots', 'instruments')",
                                  parameters={"d": database}).result_rows[0][0]
    except Exception as exc:                          # noqa: BLE001 - one line, whatever the client says
        store.close()
        raise ReplayError(f"the store {redact(dsn)} does not answer: {type(exc).__name__}: "
                          f"{redact(str(exc)).splitlines()[0] if str(exc) else ''}") from None
    from tickwire.engine.store import SCHEMA_VERSION, TICK_COLUMNS

    if have < 3:
        version = _schema_version(store, database)    # an older tickwire's store: say so, and what migrates it
        try:
            tables = {r[0] for r in store.client.query("SELECT name FROM system.tables WHERE database = {d:String}",
                                                       parameters={"d": database}).result_rows}
        except Exception:                             # noqa: BLE001 - not a store
            tables = set()
        store.close()
        if version and version < SCHEMA_VERSION:
            raise ReplayError(f"{redact(dsn)} is a tickwire store of schema version {version}, older than this "
                              f"tickwire's {SCHEMA_VERSION}: replay opens stores read-only; the daemon "
                              f"(`tickwire run`) migrates it at its start, as does "
                              f"`python -c \"from tickwire.engine.store import Store; Store.open('DSN')\"`")
        if version:                                   # (it said "version 3, older than this tickwire's 3")
            missing = sorted({"ticks", "snapshots", "instruments"} - tables)
            raise ReplayError(f"{redact(dsn)} is a tickwire store of schema version {version} whose table(s) "
                              f"{', '.join(missing)} are missing (dropped or renamed by hand?)")
        raise ReplayError(f"{redact(dsn)} holds no tickwire store (database {database!r} has no ticks, "
                          f"snapshots and instruments tables)")
    version = _schema_version(store, database)
    if version and version > SCHEMA_VERSION:          # (an adversarial pass: replayed, exit 0, where Store.open refused)
        store.close()
        raise ReplayError(f"{redact(dsn)} is a tickwire store of schema version {version}, newer than this "
                          f"tickwire's {SCHEMA_VERSION}: its rows may not mean what this version reads them as; "
                          f"replay it with the tickwire that wrote it (or a newer one)")
    cols = {}
    for table, name in store.client.query("SELECT table, name FROM system.columns WHERE database = {d:String} "
                                          "AND table IN ('ticks', 'snapshots')", parameters={"d": database}).result_rows:
        cols.setdefault(table, set()).add(name)
    for table in ("ticks", "snapshots"):
        lacking = [c for c in TICK_COLUMNS if c not in cols.get(table, ())]
        if lacking:                                   # (a chDB traceback, exit 1)
            store.close()
            raise ReplayError(f"{redact(dsn)}: its {table} table lacks the column(s) {', '.join(lacking)} "
                              f"(altered by hand?): not readable as tickwire's")
    return store


def _locked(what: str) -> str:
    return (f"{what}: chDB allows one process per data directory; stop the daemon first (or whatever else "
            f"has it open: another replay, a notebook's Store), or replay from a ClickHouse server "
            f"(--dsn http://host:8123)")


def _schema_version(store, database: str):
    """The store's schema version (its ``schema_version`` table's highest), None without one."""
    try:
        return store.client.query(f"SELECT max(version) FROM {database}.schema_version").result_rows[0][0]
    except Exception:                                 # noqa: BLE001 - no schema_version table: not a store
        return None


def _check_definitions(given: Sequence[Instrument], recorded: Sequence[Instrument], where: str) -> None:
    """Definitions given for a store (a daemon config's) that contradict those it recorded, for
    an id it holds: refused, naming the first. (A config with other symbols, tick sizes and book
    types replayed 296 signals where live had 95, its books refusing 30,294 events, exit 0.)"""
    mine = {i.id: i for i in recorded}
    for g in given:
        r = mine.get(g.id)
        if r is None:
            continue
        diff = [f"{f} {getattr(g, f)} (the store's: {getattr(r, f)})"
                for f in ("symbol", "book", "tick_size", "lot_size") if getattr(g, f) != getattr(r, f)]
        if diff:
            raise ReplayError(f"instrument {g.id} of the given definitions contradicts {where}: {', '.join(diff)}; "
                              f"the ticks were recorded with the store's (replay without --config's instruments, or "
                              f"with the config the daemon ran)")


def _later_joins(snapshots: np.ndarray) -> np.ndarray:
    """Which snapshot rows (in the order the engine met them) are placed by time: the seq-0 rows of
    a daemon start later than the channel's first that joined the feed rather than resuming a
    history (:func:`merge_snapshots`)."""
    if not len(snapshots):
        return np.zeros(0, bool)
    ch = snapshots["channel"]
    restart = (snapshots["flags"] & np.uint32(Flag.RESTART)) != 0
    # a daemon start writes one RESTART marker per instrument, one after another: a block of
    # them is one start
    start_of = np.cumsum(restart & ~np.concatenate(([False], restart[:-1])))
    _, first, which = np.unique(ch, return_index=True, return_inverse=True)
    return (snapshots["seq"] == 0) & (start_of != start_of[first][which.ravel()])


#: a sequence number 1 met after numbers past this starts a new numbering (a publisher's new epoch)
#: whatever the markers say (the audit's too: replay/audit.py)
_RENUMBER = 64


def _numberings(snapshots: np.ndarray, bounds, later) -> list:
    """Per run of ``snapshots`` (cut at ``bounds``): ``(k, names_new, ends)``, ``k`` the publisher
    numbering of its channel it belongs to (0, 1, ... in the stream's order) as far as the
    markers tell, ``names_new`` whether it is a STALE marker that first names an epoch (a
    restart's marker, or a loss's when no marker named the epoch before), ``ends`` whether it
    is the marker that ends its numbering (a restart's, stamped with the old epoch's last number:
    the next run begins the new).

    A new numbering begins at a run naming another epoch than the last named (the marker of a
    publisher restart stamped with the old epoch's last number, at or above the numbering's
    runs, ends the old one instead: the next run begins the new), and at a run stamped below the
    numbering's runs (a new epoch's snapshot after a restart's marker: the markers of stores
    whose snapshots name no epoch). A receiver's start (RESTART) begins none by itself."""
    kinds, flags, oid, seq = snapshots["kind"], snapshots["flags"], snapshots["order_id"], snapshots["seq"]
    state: dict = {}                                   # channel: [k, highest seq of the numbering, last epoch, next new]
    out = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        c = int(snapshots["channel"][a])
        k, top, last, bump = state.setdefault(c, [0, -1, None, False])
        marker = kinds[a:b] == Kind.SNAPSHOT
        names = oid[a:b][marker]
        names = names[names != 0]
        e = int(names[-1]) if len(names) else None
        f = flags[a:b][marker]
        restart = bool((f & np.uint32(Flag.RESTART)).any())
        stale = bool((f & np.uint32(Flag.STALE)).any())
        s = int(seq[a])
        names_new = e is not None and stale and not restart and e != last
        if later[a]:
            out.append((k, False, False))
            continue
        if bump:
            k, top, bump = k + 1, -1, False
        if e is not None and last is not None and e != last and not restart:
            if stale and s >= top:                     # the old epoch's end: the next run begins the new
                out.append((k, names_new, True))
                bump, top = True, s
            else:
                k, top = k + 1, s
                out.append((k, names_new, False))
        elif top >= 0 and s < top and not restart:
            k, top = k + 1, s
            out.append((k, names_new, False))
        else:
            top = max(top, s)
            out.append((k, names_new, False))
        state[c] = [k, top, e if e is not None else last, bump]
    return out


def _run_bounds(snapshots: np.ndarray) -> np.ndarray:
    """Where the runs of (channel, seq) of ``snapshots`` begin (a RESTART marker begins its own,
    and a row after a STALE marker that names an epoch begins its own unless it is one too: a
    publisher restart's marker, stamped with the old epoch's last number, and the new epoch's
    snapshot stamped with the same number were one run, placed by the old numbering: the
    snapshot went before the new epoch's 1, its covered ticks after it)."""
    ch, sq = snapshots["channel"], snapshots["seq"]
    fl = snapshots["flags"]
    restart = (fl & np.uint32(Flag.RESTART)) != 0
    named = ((fl & np.uint32(Flag.STALE)) != 0) & ~restart & (snapshots["kind"] == Kind.SNAPSHOT) \
        & (snapshots["order_id"] != 0)
    oid = snapshots["order_id"]
    # (two named markers of different epochs at one number are two runs: two publisher restarts in
    # a row without a service, each epoch ending at that number, merged as one and said "misses 100
    # events" of a clean store, a review)
    cut = np.flatnonzero((ch[1:] != ch[:-1]) | (sq[1:] != sq[:-1]) | restart[1:] | (named[:-1] & ~named[1:])
                         | (named[:-1] & named[1:] & (oid[1:] != oid[:-1]))) + 1
    return np.concatenate(([0], cut, [len(snapshots)]))


def renumbered_channels(snapshots: np.ndarray) -> list:
    """The channels whose markers show a publisher's new numbering (:func:`_numberings`)."""
    if not len(snapshots):
        return []
    bounds = _run_bounds(snapshots)
    nums = _numberings(snapshots, bounds, _later_joins(snapshots))
    return sorted({int(snapshots["channel"][a]) for a, (k, _, _) in zip(bounds[:-1].tolist(), nums) if k > 0})


def merge_snapshots(ticks: Iterable[np.ndarray], snapshots: np.ndarray,
                    stamp_offset_ns: Optional[float] = None, later=None) -> Iterator[np.ndarray]:
    """Put snapshot events and markers back into the tick stream where the engine met them.

    ``snapshots`` are in the order the engine met them (the tick ring's, ``epoch, ord``). Within
    a channel the engine follows the publisher's sequence: a snapshot (or marker) stamped with
    sequence number ``S`` reflects every event of its channel up to ``S`` (a marker: the book
    stopped, or resumed, after ``S``), so it goes right before the first tick of its channel with
    a sequence number above ``S`` that follows the previous snapshot row of that channel (and
    after all of them if there is none). Ticks of the channel up to ``S`` that arrive after it
    in the tick history (stored, but covered by the snapshot) thereby come before it, where
    they meet a book that is out of sync and change nothing it keeps.

    A publisher's new epoch numbers from 1 again: the rows are placed within the numbering
    they belong to (:func:`_numberings`), and the ticks' numbering changes at a 1 met after
    higher numbers (past :data:`_RENUMBER` of them; any, or a clear drop, where a marker says a
    new numbering comes). A row with no tick above it in its numbering goes where the next
    numbering begins (a restart's marker, stamped with the old epoch's last number, went after
    every tick of a new epoch that never reached it, and every later snapshot of the channel
    with it: the replay's books and signals after a restart were not the live ones, 216 signals
    against 79: a review).

    The work is per chunk and per snapshot run (rows of one channel and sequence number in a
    row), never per tick. ``stamp_offset_ns``: the ticks' typical ``ts_event - ts_recv``, when
    their bad stamps are known (:func:`bad_stamps`; a later start's markers, placed by time, do
    not go before one). ``later``: which rows are a later daemon start's placed by time
    (default: :func:`_later_joins` of ``snapshots``; a range's rows are told among all of them).
    """
    # runs of (channel, seq) in stream order, per channel, as (seq, ts or None, rows); a daemon start's
    # RESTART marker begins a run of its own (another start's rows of the same seq are not its)
    pending: dict[int, list] = {}
    ending: dict[int, set] = {}                        # per channel: the numberings a marker ends
    if len(snapshots):
        ch, sq = snapshots["channel"], snapshots["seq"]
        bounds = _run_bounds(snapshots)
        # a seq-0 run of a later start than the channel's first: another daemon start that
        # joined the feed, placed by time. (A block of RESTART markers, one per instrument, is one
        # start: every marker after a start's first was taken for one, and on the Kraken capture,
        # whose markers carry receive times later than the first updates' exchange times, ticks
        # went before their instrument's marker and the store's replay gave 78 signals where the
        # daemon had 80.)
        later = _later_joins(snapshots) if later is None else later
        nums = _numberings(snapshots, bounds, later)
        for (a, b), (k, names_new, ends) in zip(zip(bounds[:-1].tolist(), bounds[1:].tolist()), nums):
            runs = pending.setdefault(int(ch[a]), [])
            runs.append((int(sq[a]), int(snapshots["ts_event"][a]) if later[a] else None, snapshots[a:b], a, k,
                         names_new, ends))
            if ends:
                ending.setdefault(int(ch[a]), set()).add(k)
    # per channel: [the ticks' numbering, the highest number met in it, the runs' shift]
    where: dict[int, list] = {c: [0, 0, 0] for c in pending}
    source = iter(ticks)
    ahead: list = []                                   # chunks read ahead (:func:`_ends_off_ahead`)
    while True:
        chunk = ahead.pop(0) if ahead else next(source, None)
        if chunk is None:
            break
        if not pending:
            yield chunk
            continue
        inserts = []                                   # (position in chunk, place in stream, rows)
        ch = chunk["channel"]
        stamp = None                                   # (computed if a run is placed by time)
        for c in list(pending):
            runs = pending[c]
            idx = np.flatnonzero(ch == c)
            if not len(idx):
                continue
            seqs = chunk["seq"][idx]
            lo = 0                                     # ticks of c already passed in this chunk
            w = where[c]
            times = chunk["ts_event"][idx]
            began = -1                                 # where in this chunk the ticks' numbering began
            find = _SeqSearch(seqs, w[1])
            while runs:
                s, ts, rows, at, k, names_new, _ = runs[0]
                k += w[2]
                if ts is None and k < w[0]:            # of a numbering the ticks have left: here
                    if lo >= len(idx):
                        break
                    inserts.append((int(idx[lo]), at, rows))
                    runs.pop(0)
                    continue
                if ts is None:
                    # where the ticks' numbering changes next (-1: not in this chunk)
                    foreseen = (len(runs) > 1 and runs[1][1] is None and runs[1][4] + w[2] > k) or k > w[0]
                    after = int(rows["ts_event"][0]) if (foreseen or names_new) else None
                    # a marker waiting ends this numbering (a restart's): a 1 after the ticks
                    # reached this run's number begins the next (an epoch of 64 numbers or fewer
                    # whose tail was lost: its loss's marker and snapshot went by the next
                    # epoch's numbers, every later run after them; not after any number: a 1
                    # stamped after a 2 at an epoch's start is no new numbering)
                    least = min(_RENUMBER, max(s - 1, 1)) if runs[0][4] in ending.get(c, ()) else _RENUMBER
                    if lo == began:                    # (the 1 there began the numbering: not again)
                        nr = find.renumber(lo + 1, max(w[1], int(seqs[lo])), foreseen, names_new, times, after, least)
                    else:
                        nr = find.renumber(lo, w[1], foreseen, names_new, times, after, least)
                    end = nr if nr >= 0 else len(seqs)
                    p = find.first_above(lo, end, s) if k == w[0] else -1
                    if p >= 0:
                        if p > lo:
                            w[1] = max(w[1], int(seqs[lo:p].max()))
                        inserts.append((int(idx[p]), at, rows))
                        runs.pop(0)
                        lo = p
                        continue
                    if nr < 0:
                        break
                    # the ticks begin a new numbering at nr: this run (and any of the old) goes there
                    w[0], w[1], lo = w[0] + 1, 0, nr
                    began = nr
                    find.restart(nr)
                    if k == w[0] - 1:
                        inserts.append((int(idx[nr]), at, rows))
                        runs.pop(0)
                        # its siblings (one daemon start's markers, one run per instrument, of
                        # the same number) go with it: taken for a numbering the markers did not
                        # foresee, the second shifted every later run, the new epoch's snapshot
                        # after its last tick (books out of sync for the whole epoch: 42 signals
                        # for live's 70, a review)
                        # (a daemon start's only: a restart's marker and the new epoch's snapshot
                        # of the same number are not, the snapshot went before the epoch's 1)
                        while runs and runs[0][1] is None and runs[0][4] + w[2] == k and runs[0][0] == s \
                                and bool((runs[0][2]["flags"] & np.uint32(Flag.RESTART)).any()):
                            inserts.append((int(idx[nr]), runs[0][3], runs[0][2]))
                            runs.pop(0)
                        if runs and runs[0][1] is None and runs[0][4] + w[2] < w[0]:
                            # (a numbering the markers did not foresee: a restart's marker that
                            # first names an epoch; not when the runs waiting are the old
                            # numbering's up to the marker that ends it, and, after a marker
                            # first naming an epoch, not when that may be a loss's: no marker
                            # waiting names its epoch again, and the new numbering's ticks, up
                            # to their next 1, do not end at the end's number, as the new
                            # epoch's own would. The old epoch's tail lost, its snapshot and
                            # the restart's marker went by the new epoch's numbers, every later
                            # run after them: a fuzzer's stores)
                            end = _old_numbering_end(runs, w[0] - 1 - w[2], _named(rows) if names_new else None)
                            off = None if end is None or not names_new or end[1] else find.ends_off(nr, end[0])
                            if off is None and end is not None and names_new and not end[1]:
                                off = _ends_off_ahead(source, ahead, c, end[0], find.top())
                            if end is None or (names_new and not off):
                                w[2] = w[0] - runs[0][4]
                    continue
                if ts is not None:
                    # a later daemon start that joined the feed (not resuming a history) stamps
                    # its markers seq 0: every tick's seq is above that, so their place is by
                    # time, before the first tick of that start (a second daemon run on the same
                    # store put its STALE marker before the first run's ticks: none of the first
                    # run's signals replayed)
                    if stamp is None:                  # a bad stamp (2100) is no time: a later
                        bad = bad_stamps(chunk, stamp_offset_ns)   # start's markers went before it
                        stamp = np.where(bad, -(1 << 63), chunk["ts_event"]) if bad.any() else chunk["ts_event"]
                    above = np.flatnonzero(stamp[idx[lo:]] >= ts)
                else:
                    above = np.flatnonzero(seqs[lo:] > s)      # (not reached: ts is None above)
                if not len(above):
                    break
                k = lo + int(above[0])
                inserts.append((int(idx[k]), at, rows))
                runs.pop(0)
                lo = k
            if not runs:
                del pending[c]
            elif lo < len(seqs):                       # (the highest number the chunk's last ticks met)
                w[1] = max(w[1], int(seqs[lo:].max()))
        if not inserts:
            yield chunk
            continue
        inserts.sort(key=lambda t: (t[0], t[1]))
        parts, at = [], 0
        for pos, _, rows in inserts:
            parts.append(chunk[at:pos])
            parts.append(rows)
            at = pos
        parts.append(chunk[at:])
        yield np.concatenate(parts)
    rest = sorted((run[3], run[2]) for runs in pending.values() for run in runs)
    if rest:                                           # after the last tick: in stream order
        yield np.concatenate([r for _, r in rest])


def _named(rows: np.ndarray) -> Optional[int]:
    """The epoch the last STALE marker of ``rows`` that names one names (None: none)."""
    e = rows["order_id"][(rows["kind"] == Kind.SNAPSHOT) & ((rows["flags"] & np.uint32(Flag.STALE)) != 0)
                         & (rows["order_id"] != 0)]
    return int(e[-1]) if len(e) else None


#: most ticks :func:`merge_snapshots` reads ahead to tell a lost tail from a new epoch's (the chunks
#: read are merged after, as they come)
_LOOK_AHEAD = 1 << 20


def _ends_off(seqs: np.ndarray, top: int, s: int) -> tuple:
    """:meth:`_SeqSearch.ends_off` of a later chunk's numbers of the channel, ``top`` the highest
    before them: ``(answer or None, highest)``."""
    ones = np.flatnonzero(seqs == 1)
    part = seqs[:ones[0]] if len(ones) else seqs
    if len(part):
        top = max(top, int(part.max()))
    if top > s:
        return True, top
    return ((top < s) if len(ones) else None), top


def _ends_off_ahead(source, ahead: list, c: int, s: int, top: int) -> Optional[bool]:
    """:meth:`_SeqSearch.ends_off` past the chunk: the next chunks' numbers of channel ``c``, read
    into ``ahead`` (up to :data:`_LOOK_AHEAD` ticks; None if not known by then). At the ticks'
    end, whether their highest is not ``s``."""
    looked, i = 0, 0
    while looked < _LOOK_AHEAD:
        if i == len(ahead):
            nxt = next(source, None)
            if nxt is None:
                return top != s
            ahead.append(nxt)
        chunk = ahead[i]
        i += 1
        looked += len(chunk)
        off, top = _ends_off(chunk["seq"][chunk["channel"] == c], top, s)
        if off is not None:
            return off
    return None


def _old_numbering_end(runs: list, k: int, epoch: Optional[int] = None) -> Optional[tuple]:
    """Whether the runs waiting begin with more of numbering ``k`` (the one the ticks just left),
    up to the marker that ends it (a loss's STALE marker and snapshot above the old epoch's last
    tick stored, then the restart's marker): they go where the new numbering began, not taken for
    a numbering the markers did not foresee (that shifted every later run by one: the new epoch's
    snapshots placed by the old numbering's numbers, after every tick of the new epoch).
    ``(number of that marker, whether a STALE marker before it names ``epoch``)`` if so, else None."""
    again = False
    for run in runs:
        if run[1] is not None or run[4] != k:
            return None
        if run[6]:
            return run[0], again
        again = again or (epoch is not None and _named(run[2]) == epoch)
    return None


class _SeqSearch:
    """The searches :func:`merge_snapshots` makes in one channel's sequence numbers of a chunk,
    in O(log n) each where it can: a chunk of a lossy store meets thousands of snapshot runs,
    and a scan of the rest of the chunk per run took a 4M-tick replay with 2,000 runs a channel
    from 0.8 s to 14 s. ``cm``: the running maximum of ``seqs`` from ``base`` (where the ticks'
    numbering began in the chunk); ``cand``: where a new numbering may begin (a 1, or a number
    more than :data:`_RENUMBER` below the running maximum: a superset of :func:`_renumber`'s)."""

    __slots__ = ("seqs", "base", "cm", "cand", "ones")

    def __init__(self, seqs: np.ndarray, top: int):
        self.seqs = seqs
        self.cm = np.maximum.accumulate(seqs)
        # (against the numbering's highest before the chunk too, ``top``: every ``top`` given to
        # renumber is at most that or the running maximum)
        self.cand = np.flatnonzero((seqs == 1) | (np.maximum(self.cm, np.uint64(top)) - seqs > _RENUMBER))
        self.base = 0
        self.ones = None

    def _next_one(self, at: int) -> int:
        if self.ones is None:
            self.ones = np.flatnonzero(self.seqs == 1)
        q = int(np.searchsorted(self.ones, at + 1))
        return int(self.ones[q]) if q < len(self.ones) else -1

    def top(self) -> int:
        """The highest number from where the numbering began (:meth:`restart`) to the chunk's end."""
        return int(self.cm[-1])

    def ends_off(self, at: int, s: int) -> Optional[bool]:
        """Whether the numbers from ``at`` (where the ticks' numbering began: :meth:`restart`) up
        to their next 1 do not end at ``s``: their highest is above it, or their highest below
        it and their next 1 in this chunk (None: not known from this chunk)."""
        q = self._next_one(at)
        top = int(self.cm[(q if q >= 0 else len(self.seqs)) - 1 - self.base])
        if top > s:
            return True
        return (top < s) if q >= 0 else None

    def restart(self, at: int) -> None:
        """The ticks' numbering began again at ``at``: the running maximum from there."""
        self.base = at
        self.cm = np.maximum.accumulate(self.seqs[at:])

    def first_above(self, lo: int, end: int, s: int) -> int:
        """The first position in ``lo..end-1`` whose number is above ``s``, -1 if none."""
        if lo >= end:
            return -1
        b = self.base
        if lo >= b and (lo == b or self.cm[lo - 1 - b] <= s):
            # nothing above s before lo in this numbering: the first above it is where the
            # running maximum first passes s
            i = lo + int(np.searchsorted(self.cm[lo - b:end - b], np.uint64(s), side="right"))
            return i if i < end else -1
        above = np.flatnonzero(self.seqs[lo:end] > s)
        return lo + int(above[0]) if len(above) else -1

    def renumber(self, lo: int, top: int, foreseen: bool, names_new: bool, ts=None, after=None,
                 least: int = _RENUMBER) -> int:
        """:func:`_renumber`, at once -1 when no position from ``lo`` on could begin a numbering."""
        if int(np.searchsorted(self.cand, lo)) == len(self.cand):
            return -1
        return _renumber(self.seqs, lo, top, foreseen, names_new, ts, after, least)


def _renumber(seqs: np.ndarray, lo: int, top: int, foreseen: bool, names_new: bool, ts=None, after=None,
              least: int = _RENUMBER) -> int:
    """Where in ``seqs[lo:]`` (a channel's sequence numbers, ``top`` the highest met before ``lo``
    in their numbering) a new numbering begins, -1 if nowhere: a 1 met after numbers past
    :data:`_RENUMBER` (past ``least``, the run's number less one when a marker waiting ends the
    numbering; past 1 when the run waiting is a marker first naming an epoch; a 1 after
    any, or a drop past :data:`_RENUMBER` below the numbers met, when the markers say a new
    numbering comes; with nothing met before it, a 1 stamped after such a marker ``after``:
    the old numbering's ticks all gone)."""
    part = seqs[lo:]
    if not len(part):
        return -1
    seen = np.maximum.accumulate(np.concatenate(([np.uint64(top)], part[:-1]))).astype(np.int64)
    one = part == 1
    if foreseen:
        hit = (one & (seen > 0)) | (part.astype(np.int64) + _RENUMBER < seen)
    else:
        hit = one & (seen > (1 if names_new else least))
    if (foreseen or names_new) and after is not None:
        hit |= one & (seen == 0) & (ts[lo:] > after)
    at = np.flatnonzero(hit)
    return lo + int(at[0]) if len(at) else -1


def read_ahead(make: Callable[[], Iterable], depth: int = 2, cpus=None) -> Iterator:
    """The items of ``make()``, produced by a thread of their own up to ``depth`` items ahead of
    the consumer (the store's reads release the GIL: decoding and the engine overlap). An
    exception in the reader is raised in the consumer; a consumer that stops early (``close()``,
    Ctrl-C) stops the reader at its next item."""
    import queue
    import threading

    q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader():
        try:
            if cpus:
                os.sched_setaffinity(0, cpus)          # this thread only (Linux)
            it = iter(make())
            try:
                for item in it:
                    if not put(item):
                        return
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
            put(done)
        except BaseException as exc:                   # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=reader, name="tickwire-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class StoreSource:
    """Stored ticks (and the snapshots the books met) from a ClickHouse store, streamed in the
    store's total order (``ts_event, seq, epoch, ord``) with the snapshots merged back
    (:func:`merge_snapshots`) and the ticks of bad stamps put back where they were received
    (:attr:`strays`, :meth:`_placed`).

    Parameters
    ----------
    dsn : str
        ``chdb:///abs/dir`` (embedded; not while a daemon's writer holds it) or ``http(s)://host:port``.
    select : sequence of str or int, optional
        Instruments (symbols or ids, as recorded in the store's ``instruments`` table); default all.
    start_ns, end_ns : int, optional
        Event-time range ``[start_ns, end_ns)``.
    instruments : list of Instrument, optional
        Definitions to use instead of the store's (a daemon config's carry ``max_depth`` and the
        price range, which the store does not record).
    snapshots : bool
        Merge the snapshot events and markers (what the live books met, and what a republished
        feed sends in its data stream); False: ticks only, unchecked (the books of a history that
        began with a join snapshot or a repaired loss are then not the live ones).
    prefetch : int
        Chunks read ahead by a reader thread while the caller processes the current one (the
        store's decoding and the engine then run side by side on two cores); 0: read inline.
    reader_cpus : set of int, optional
        Pin the reader thread (and the store threads it starts) to these cores.
    """

    def __init__(self, dsn: str, select=None, start_ns=None, end_ns=None, *, instruments=None,
                 database: str = "tickwire", chunk: int = DEFAULT_CHUNK, snapshots: bool = True,
                 prefetch: int = 2, reader_cpus=None):
        from tickwire.engine.store import redact

        self.dsn = dsn
        self.name = f"store {redact(dsn)}"
        start_ns, end_ns = _bound("start_ns", start_ns), _bound("end_ns", end_ns)
        self.store = _open_store(dsn, database)
        try:
            recorded = self.store.read_instruments()
            if instruments is None:
                known = recorded
                if not known:                          # ticks stored without definitions
                    ids = [r[0] for r in self.store.client.query(
                        f"SELECT DISTINCT instrument FROM {database}.ticks ORDER BY instrument").result_rows]
                    known = [Instrument(int(i), f"I{i}") for i in ids]
            else:
                known = list(instruments)
                _check_definitions(known, recorded, self.name)
            self.instruments = _select_instruments(known, select, f"the store {redact(dsn)}")
            self.ids = [i.id for i in self.instruments]
            self.start_ns, self.end_ns = start_ns, end_ns
            if start_ns is not None and end_ns is not None and end_ns <= start_ns:
                raise ReplayError(f"empty range: the end, --to / end_ns ({end_ns}), is not after the start, "
                                  f"--from / start_ns ({start_ns})")
            self.total = self.store.count_ticks(self.ids, start_ns, end_ns)
            self.history_before = start_ns is not None and self.store.count_ticks(self.ids, None, start_ns) > 0
            if not self.total and instruments is not None and recorded \
                    and not set(self.ids) & {i.id for i in recorded}:
                have = ", ".join(f"{i.symbol} ({i.id})" for i in recorded[:8]) + (" ..." if len(recorded) > 8 else "")
                raise ReplayError(f"none of the given definitions' instrument ids ({', '.join(map(str, self.ids[:8]))}"
                                  f"{' ...' if len(self.ids) > 8 else ''}) is in {self.name}, which holds {have}")
            if not self.total:
                span = self.store.client.query(
                    f"SELECT count(), toString(min(ts_event)), toString(max(ts_event)) FROM {database}.ticks "
                    f"WHERE instrument IN ({', '.join(map(str, self.ids))})").result_rows[0]
                held = f"its ticks of these instruments span {span[1]} .. {span[2]} UTC" if span[0] else \
                    "it holds no ticks of these instruments"
                raise ReplayError(f"no ticks in the range asked for in {self.name}: {held}")
            self.chunk = int(chunk)
            self.prefetch = int(prefetch)
            self.reader_cpus = set(reader_cpus) if reader_cpus else None
            self.with_snapshots = snapshots
            # ticks with bad stamps sit at their stamp in the store's time order (the year 2100,
            # say: an L3 order's add then came after its deletion): each goes back where it was
            # received instead, before its channel's next tick (_placed)
            #: the store's typical ts_event - ts_recv (None: no receipt times, or two clocks)
            self.strays, self._stray_sql, self.stamp_offset_ns = self._read_strays(database)
            self._later = None                         # (_snapshots: which of them a later start placed by time)
            self.snapshots = self._snapshots(database) if snapshots else np.empty(0, EVENT_DTYPE)
            self.total += len(self.snapshots)          # what the replay goes through (progress said 200,024 / 200,000)
            # the sequence numbers are checked where the markers come along (they explain the feed's
            # own holes), on the channels whose every instrument is replayed
            self._audit_channels = self._whole_channels(database) if snapshots else ()
        except BaseException:
            self.store.close()
            raise

    def _read_strays(self, database: str):
        """``(strays, their SQL, the store's typical offset)``: the ticks of the selected
        instruments with bad stamps, by channel and receipt (none, and no SQL, past
        :data:`MAX_STRAYS`: a store of two clocks, replayed in its time order)."""
        none = np.empty(0, EVENT_DTYPE), None, None
        where = self.store._where(self.ids, None, None)
        offset, rows = self.store.client.query(
            "SELECT median(toFloat64(toUnixTimestamp64Nano(ts_event)) - toFloat64(toUnixTimestamp64Nano(ts_recv))), "
            f"count() FROM {database}.ticks WHERE {where} AND toUnixTimestamp64Nano(ts_recv) > 0").result_rows[0]
        if not rows or offset is None or not np.isfinite(offset):
            return none
        sql = bad_stamp_sql(offset)
        n = self.store.client.query(f"SELECT count() FROM {database}.ticks WHERE {where} AND {sql}").result_rows[0][0]
        if not n:
            # no tick with a bad stamp, but the offset is still the store's clock: a marker stamped far
            # from it (a daemon start that met no tick stamped its RESTART markers with the local
            # clock, 2026 in the simulator's 2023) moves no clock of a paced replay (it waited years)
            return np.empty(0, EVENT_DTYPE), None, offset
        if n > MAX_STRAYS or n > MAX_STRAY_SHARE * rows:
            import logging

            logging.getLogger("tickwire.replay").warning(
                "%s: %d of its %d ticks are stamped more than a day from where their receipt puts them: "
                "two clocks, not bad stamps; replayed in its time order", self.name, n, rows)
            return none
        strays = np.concatenate(list(self.store._read_sorted_by_engine(
            "ticks", self.ids, None, None, self.chunk, "channel, ts_recv, seq", sql)) or [np.empty(0, EVENT_DTYPE)])
        return strays, sql, offset

    def _snapshots(self, database: str) -> np.ndarray:
        """The snapshot rows of the selected instruments whose place falls in the range (all of
        them without a range). A row stamped ``S`` goes before its channel's first tick above
        ``S``; so, per channel with ticks in the range, the rows from the last sequence number
        before the range (from the first row when no tick comes before it: the snapshot a
        publisher sent in its stream ahead of the first update, say) to just before the first
        tick past its end (to the last row when none follows: the markers of the stop). The
        rows of ``[a, T)`` and ``[T, b)`` are those of ``[a, b)``."""
        snaps = list(self.store.read_snapshots(self.ids, order="stream"))
        snaps = np.concatenate(snaps) if snaps else np.empty(0, EVENT_DTYPE)
        self._later = None
        if not len(snaps) or (self.start_ns is None and self.end_ns is None):
            return snaps

        def per_channel(what: str, start, end) -> dict:
            where = self.store._where(self.ids, start, end)
            return {int(c): int(v) for c, v in self.store.client.query(
                f"SELECT channel, {what} FROM {database}.ticks WHERE {where} GROUP BY channel").result_rows}

        inside = per_channel("max(seq)", self.start_ns, self.end_ns)
        before = per_channel("max(seq)", None, self.start_ns) if self.start_ns is not None else {}
        after = per_channel("count()", self.end_ns, None) if self.end_ns is not None else {}
        # the rows of a later daemon start that joined the feed (seq 0, placed by time before the
        # first tick at or after their stamp): by their time (they went, as markers of the start,
        # into every range with no tick before it, wherever they were stamped)
        by_time = _later_joins(snaps)
        t = snaps["ts_event"]
        timed = by_time & (t >= (-(1 << 63) if self.start_ns is None else self.start_ns))
        if self.end_ns is not None:
            timed &= t < self.end_ns
        keep = np.zeros(len(snaps), bool)
        for c, hi in inside.items():
            m = snaps["channel"] == c
            if c in before:
                m &= snaps["seq"] >= before[c]
            if c in after:                         # (the next range's rows start at hi)
                m &= snaps["seq"] < hi
            keep |= (m & ~by_time) | ((snaps["channel"] == c) & timed)
        self._later = by_time[keep]                # (told among all the rows, not the range's alone)
        return snaps[keep]

    def _whole_channels(self, database: str):
        """The channels all of whose stored instruments are selected (None: every channel); those
        with some selected instruments but not all go to ``unchecked_channels`` (their sequence
        numbers have the others' events as holes: not followed)."""
        rows = self.store.client.query(f"SELECT channel, groupUniqArray(instrument) FROM {database}.ticks "
                                       f"GROUP BY channel").result_rows
        ids = set(self.ids)
        whole = {int(c) for c, insts in rows if set(map(int, insts)) <= ids}
        self.unchecked_channels = sorted(int(c) for c, insts in rows
                                         if int(c) not in whole and set(map(int, insts)) & ids)
        return None if len(whole) == len(rows) else whole

    def _audited(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        self.audit, self.audited = None, False
        if self._audit_channels == ():
            yield from chunks
            return
        audit = self.audit = SeqAudit(self._audit_channels)
        for chunk in chunks:
            audit.feed(chunk)
            yield chunk
        audit.finish()
        self.audited = True

    audit: Optional[SeqAudit] = None                   # the last pass's (each pass over the source checks anew)
    audited = False
    unchecked_channels: list = []                      # replayed in part: not checked (_whole_channels)

    def audit_findings(self, limit: int = 64) -> dict:
        """What the sequence numbers showed, once the stream was read to its end: ``holes``
        (``(channel, first, last)``, those the store holds no tick of at all: a hole of a range's
        bounds, its events stamped outside the range, is not one; the first ``limit``, and
        ``more_holes`` their count past that, taken as they are), ``missing`` (their events) and
        ``repeats`` (per channel), and ``unchecked_channels`` when some channels were replayed
        in part (some of their instruments selected: not checked, their findings not in these).
        Empty before the end, or without the check (``snapshots=False``)."""
        if self.audit is None or not self.audited:
            return {}
        found = self.audit.holes
        holes, missing, more = [], 0, 0
        at = 0
        while at < len(found) and len(holes) < limit:  # looked up 64 a query, until `limit` are holes
            part = found[at:at + 64]                   # (a range's edges make holes the store holds)
            held = self._held(part)
            for k, (c, first, last) in enumerate(part):
                at += 1
                if held.get(k, 0) < last - first + 1:
                    holes.append((c, first, last))
                    missing += last - first + 1 - held.get(k, 0)
                    if len(holes) == limit:
                        break
        for c, first, last in found[at:]:              # (not looked up: counted whole)
            more += 1
            missing += last - first + 1
        out = {"holes": holes, "missing": missing, "repeats": self.audit.repeats}
        if self.unchecked_channels:
            out["unchecked_channels"] = list(self.unchecked_channels)
        if more:
            out["more_holes"] = more
        return out

    def last_time_ns(self) -> Optional[int]:
        """The latest ``ts_event`` of the range's ticks: where a paced replay's recorded clock
        ends (its ETA)."""
        n, t = self.store.client.query(
            f"SELECT count(), toUnixTimestamp64Nano(max(ts_event)) FROM {self.store.database}.ticks "
            f"WHERE {self.store._where(self.ids, self.start_ns, self.end_ns)}"
            f"{f' AND NOT ({self._stray_sql})' if self._stray_sql else ''}").result_rows[0]
        return int(t) if n else None

    def _held(self, holes) -> dict:
        """{index in ``holes``: the ticks the store holds in that (channel, first, last) that the
        range's bounds left out}, in one pass over the table (a query a hole took 4 s for 64 holes
        of a 300 MB store).

        Only a range's edges make holes whose events the store holds: such events are stamped
        outside the range, within :data:`EDGE_SLACK_NS` of its edge (exchange times that step
        back). The same numbers stamped elsewhere are another numbering's (a publisher's earlier
        or later epoch counts from 1 again), not this hole's: counted, they hid a hole of
        deleted rows whenever the store held an older epoch (an adversarial pass)."""
        if not holes or (self.start_ns is None and self.end_ns is None):
            return {}
        edges = []
        if self.start_ns is not None:
            edges.append((int(self.start_ns) - EDGE_SLACK_NS, int(self.start_ns)))
        if self.end_ns is not None:
            edges.append((int(self.end_ns), int(self.end_ns) + EDGE_SLACK_NS))
        near = " OR ".join(f"(ts_event >= fromUnixTimestamp64Nano(toInt64({a})) AND "
                           f"ts_event < fromUnixTimestamp64Nano(toInt64({b})))" for a, b in edges)
        which = ", ".join(f"channel = {int(c)} AND seq BETWEEN {int(a)} AND {int(b)}, {k}"
                          for k, (c, a, b) in enumerate(holes))
        rows = self.store.client.query(
            f"SELECT multiIf({which}, -1) AS h, count() FROM {self.store.database}.ticks "
            f"WHERE channel IN ({', '.join(sorted({str(int(c)) for c, _, _ in holes}))}) AND ({near}) "
            f"GROUP BY h HAVING h >= 0").result_rows
        return {int(h): int(n) for h, n in rows}

    def _placed(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The ticks of ``chunks`` with those of bad stamps (:attr:`strays`) where they were
        received: each right before the first tick of its channel received after it (``ts_recv``,
        then ``seq``: one message's events share a receipt time), moved back over ticks received
        before it but after it in sequence (it came late: held back or sent again, and the
        handler delivers in sequence) and on over ticks received after it but before it in
        sequence; in a range, with that tick (the rows of ``[a, T)`` and ``[T, b)`` are those of
        ``[a, b)``). One with no tick after it comes at the end, in the range of its channel's
        last tick."""
        pending = self.strays
        if not len(pending):
            yield from chunks
            return
        if self.start_ns is not None:
            pending = pending[~self._placed_before(pending)]
        for chunk in chunks:
            bad = bad_stamps(chunk, self.stamp_offset_ns)
            if bad.any():
                chunk = chunk[~bad]                   # (met at their stamp: placed instead, or not here)
            if not len(pending) or not len(chunk):
                yield chunk
                continue
            at = np.full(len(pending), -1, np.int64)
            pch = pending["channel"]
            for c in np.unique(pch).tolist():
                rows = np.flatnonzero(chunk["channel"] == c)
                if not len(rows):
                    continue
                r, q = chunk["ts_recv"][rows], chunk["seq"][rows]
                reach = np.maximum.accumulate(r)
                mine = np.flatnonzero(pch == c)       # (sorted by receipt: those received before the
                top = int(np.searchsorted(pending["ts_recv"][mine], reach[-1], side="right"))   # chunk's last)
                for j in mine[:top].tolist():
                    R, S = pending["ts_recv"][j], pending["seq"][j]
                    i = int(np.searchsorted(reach, R, side="left"))
                    while i < len(rows) and not (r[i] > R or (r[i] == R and q[i] > S)):
                        i += 1
                    if i == len(rows):
                        continue
                    while i > 0 and q[i - 1] > S and q[i - 1] < q[i]:      # it came late
                        i -= 1
                    while 0 < i < len(rows) and q[i] < S and q[i] > q[i - 1]:     # it came early
                        i += 1
                    if i < len(rows):
                        at[j] = rows[i]
            go = np.flatnonzero(at >= 0)
            if len(go):
                go = go[np.argsort(at[go], kind="stable")]
                chunk = np.insert(chunk, at[go], pending[go])
                pending = np.delete(pending, go)
            yield chunk
        if len(pending):                              # the last received of their channels: with
            last = {int(c): int(t) for c, t in self.store.client.query(   # the channel's last tick
                f"SELECT channel, toUnixTimestamp64Nano(max(ts_event)) FROM {self.store.database}.ticks WHERE "
                f"{self.store._where(self.ids, None, None)} AND NOT ({self._stray_sql}) GROUP BY channel").result_rows}
            lo = -(1 << 63) if self.start_ns is None else int(self.start_ns)
            hi = 1 << 63 if self.end_ns is None else int(self.end_ns)
            mine = np.array([lo <= last[c] < hi if c in last else self.start_ns is None
                             for c in pending["channel"].tolist()], bool)
            if mine.any():
                yield pending[mine]

    def _placed_before(self, strays: np.ndarray) -> np.ndarray:
        """Which of ``strays`` a tick stamped before the range was received after (per channel,
        by ``ts_recv`` then ``seq``): their place is in an earlier range."""
        where = self.store._where(self.ids, None, self.start_ns)
        last = {int(c): (int(r), int(q)) for c, r, q in self.store.client.query(
            f"SELECT channel, argMax(toUnixTimestamp64Nano(ts_recv), (ts_recv, seq)), max((ts_recv, seq)).2 "
            f"FROM {self.store.database}.ticks WHERE {where} AND NOT ({self._stray_sql}) GROUP BY channel").result_rows}
        return np.array([(int(e["ts_recv"]), int(e["seq"])) < last.get(int(e["channel"]), (-(1 << 63), 0))
                         for e in strays], bool)

    def _chunks(self) -> Iterator[np.ndarray]:
        ticks = self.store.read_ticks(self.ids, self.start_ns, self.end_ns, chunk_rows=self.chunk)
        return self._audited(merge_snapshots(self._placed(ticks), self.snapshots, self.stamp_offset_ns,
                                             self._later))

    def _windows(self):
        return self.store._read_windows("ticks", self.ids, self.start_ns, self.end_ns, self.chunk)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.prefetch <= 0:
            return self._chunks()
        # the reading thread runs the store's part (decode, transfer); the merge of each window
        # into the total order runs here, on the caller's (the engine's) thread: the two cores
        # then share the work more evenly than when the reader merged too (docs/performance.md)
        from tickwire.engine.store import _merged, _split

        windows = read_ahead(self._windows, self.prefetch, self.reader_cpus)
        return self._audited(merge_snapshots(self._placed(_split(_merged(windows), self.chunk)), self.snapshots,
                                             self.stamp_offset_ns, self._later))

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
