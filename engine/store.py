"""Tick and signal storage in ClickHouse, through clickhouse-connect.

The default store is the embedded chDB engine, ClickHouse in-process, reached by the same client
(``chdb:///path/to/dir``); a ClickHouse server is one URL away (``http://host:8123``). One code
path serves both. tickwire creates and migrates its schema:

- ``ticks``: every market event, ``DateTime64(9)`` times, codecs chosen for the data
  (DoubleDelta for times, Delta for sequences and prices, ZSTD), ordered by
  ``(instrument, ts_event, seq, epoch, ord)`` for per-instrument time-range reads, daily
  partitions, and insert deduplication by token so that a retried batch is stored once.
- ``snapshots``: the events that carry ``Flag.SNAPSHOT`` (snapshot replies that repair a book,
  their BEGIN/END markers included), same columns and keys: they repair books, not the tick
  history, so ``ticks`` holds market events only. :meth:`Store.insert_ticks` routes each row.
- ``signals``: signal records, by run.
- ``instruments``: symbol, tick size, lot size, decimals (the daemon's writer records the
  config's at every start); ``ticks_decimal`` is a view with prices and quantities as decimals.
- ``market_events``: a view of ``ticks`` without the markers a publisher sent in its stream
  (:data:`MARKET_FILTER`); :meth:`Store.count_market_events` counts it.
- ``schema_version``: what migrations have run.

``epoch`` and ``ord`` identify a tick's place in the stream that carried it (the tick ring's
creation time and position): together with ``(ts_event, seq)`` they give every tick a total
order, which :meth:`Store.read_ticks` follows.

Credentials come from the DSN, the config or ``TICKWIRE_CLICKHOUSE_USER`` /
``TICKWIRE_CLICKHOUSE_PASSWORD``, and never appear in logs or errors (:func:`redact`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable, Iterator, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from tickwire.ext.records import EVENT_DTYPE, SIGNAL_DTYPE, Flag, Kind

log = logging.getLogger("tickwire.store")

__all__ = ["Store", "StoreError", "SCHEMA_VERSION", "MARKET_FILTER", "cluster_ddl", "redact", "default_dsn"]

SCHEMA_VERSION = 3
#: MergeTree's ``merge_selector_base`` for ticks and signals (ClickHouse's default is 5): merges
#: wait until more parts of a size have gathered, so each row is rewritten fewer times. At
#: 100k ticks/s (a 100k-row insert a second) 20 took the embedded engine's merge CPU per
#: million rows from 0.26 s to 0.16 s (docs/storage.md). Applied where the server knows the
#: setting (asked in system.merge_tree_settings; the embedded chDB 26.9 does).
MERGE_SELECTOR_BASE = 20
TICK_COLUMNS = ["ts_event", "ts_recv", "seq", "order_id", "price", "qty", "instrument", "channel",
                "kind", "side", "flags"]
SIGNAL_COLUMNS = ["ts_event", "ts_recv", "ts_signal", "seq", "value", "strength", "instrument",
                  "rule_id", "rule_kind", "direction", "flags"]
_TIME_COLUMNS = {"ts_event", "ts_recv", "ts_signal"}
#: max_partitions_per_insert_block 0: a batch may touch any number of days. ClickHouse refuses
#: more than 100 by default, and a snapshot whose levels carry the times they last changed
#: (Kraken's span 324 days) or a backfill of sparse history is such a batch; refused, it would
#: fail the same way at every retry (docs/storage.md).
_INSERT_SETTINGS = {"async_insert": 0, "wait_for_async_insert": 1, "insert_deduplicate": 1,
                    "max_partitions_per_insert_block": 0}


class StoreError(RuntimeError):
    """The store could not be reached or refused an operation (the message names which)."""


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(dsn)
    if parts.password:
        dsn = urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return re.sub(r"(password=)[^&]*", r"\1***", dsn)


def default_dsn(data_dir: str) -> str:
    """The embedded store's DSN for a data directory."""
    return f"chdb://{os.path.abspath(data_dir)}"


#: Column codecs of the ``ticks`` and ``snapshots`` tables a new store gets, by name
#: (``Store.open(..., codecs=...)``). ``"fast"`` (the default since schema 3): Delta and LZ4,
#: which ClickHouse decodes at about twice the rate of ZSTD, for a replay read of 5 M
#: events/s and more; ``"compact"``: DoubleDelta, Delta and ZSTD(1), the codecs of stores made
#: before, about 0.57x the disk (docs/storage.md, "Codecs"). A store keeps the codecs it was
#: made with; both read the same.
TICK_CODECS = {
    "fast": {"time": "Delta, LZ4", "delta": "Delta, LZ4", "plain": "LZ4"},
    "compact": {"time": "DoubleDelta, ZSTD(1)", "delta": "Delta, ZSTD(1)", "plain": "ZSTD(1)"},
}


#: The time a tick's row is partitioned by (a day each): its ``ts_event``, or its ``ts_recv`` when
#: the two are more than a day apart (and ``ts_recv`` is known). A publisher's garbage stamps made
#: one partition per day they named, which ClickHouse never merges: past ``max_parts_in_total``
#: (100,000) every insert failed, good ticks' too (an adversarial pass). Reads by ``ts_event``
#: still skip parts by its min-max index. Stores made before keep ``toYYYYMMDD(ts_event)``.
PARTITION_TIME = ("if(toUnixTimestamp64Nano(ts_recv) > 0 AND abs(toUnixTimestamp64Nano(ts_event) - "
                  "toUnixTimestamp64Nano(ts_recv)) > 86400000000000, ts_recv, ts_event)")


def _tick_ddl(db: str, engine: str, table: str = "ticks", on_cluster: str = "", settings: str = "",
              codecs: str = "fast") -> str:
    if codecs not in TICK_CODECS:
        raise ValueError(f"store.codecs: expected one of {sorted(TICK_CODECS)}, got {codecs!r}")
    c = TICK_CODECS[codecs]
    return f"""CREATE TABLE IF NOT EXISTS {db}.{table}{on_cluster} (
    ts_event   DateTime64(9) CODEC({c["time"]}),
    ts_recv    DateTime64(9) CODEC({c["time"]}),
    seq        UInt64 CODEC({c["delta"]}),
    order_id   UInt64 CODEC({c["plain"]}),
    price      Int64 CODEC({c["delta"]}),
    qty        Int64 CODEC({c["plain"]}),
    instrument UInt32,
    channel    UInt16,
    kind       UInt8,
    side       UInt8,
    flags      UInt32 CODEC({c["plain"]}),
    epoch      UInt64 CODEC({c["plain"]}),
    ord        UInt64 CODEC({c["delta"]})
) ENGINE = {engine}
PARTITION BY toYYYYMMDD({PARTITION_TIME})
ORDER BY (instrument, ts_event, seq, epoch, ord)
SETTINGS non_replicated_deduplication_window = 100000{settings}"""


def _signal_ddl(db: str, engine: str, table: str = "signals", on_cluster: str = "", settings: str = "") -> str:
    return f"""CREATE TABLE IF NOT EXISTS {db}.{table}{on_cluster} (
    run        LowCardinality(String),
    ts_event   DateTime64(9) CODEC(DoubleDelta, ZSTD(1)),
    ts_recv    DateTime64(9) CODEC(DoubleDelta, ZSTD(1)),
    ts_signal  DateTime64(9) CODEC(DoubleDelta, ZSTD(1)),
    seq        UInt64 CODEC(Delta, ZSTD(1)),
    value      Float64,
    strength   Float64,
    instrument UInt32,
    rule_id    UInt16,
    rule_kind  UInt8,
    direction  Int8,
    flags      UInt32
) ENGINE = {engine}
PARTITION BY toYYYYMM(ts_signal)
ORDER BY (run, ts_signal, seq, rule_id)
SETTINGS non_replicated_deduplication_window = 100000{settings}"""


def _instrument_ddl(db: str, engine: str, on_cluster: str = "") -> str:
    return f"""CREATE TABLE IF NOT EXISTS {db}.instruments{on_cluster} (
    id             UInt32,
    symbol         LowCardinality(String),
    tick_size      Decimal128(18),
    lot_size       Decimal128(18),
    price_decimals UInt8,
    qty_decimals   UInt8,
    book           LowCardinality(String),
    updated        DateTime64(3) DEFAULT now64(3)
) ENGINE = {engine}
ORDER BY id"""


def _decimal_view(db: str, source: str = "ticks", on_cluster: str = "") -> str:
    return f"""CREATE VIEW IF NOT EXISTS {db}.{source}_decimal{on_cluster} AS
SELECT t.ts_event, t.ts_recv, t.instrument, i.symbol, t.kind, t.side, t.seq, t.order_id,
       toDecimal128(t.price, 0) * i.tick_size AS price,
       toDecimal128(t.qty, 0) * i.lot_size AS qty,
       t.price AS price_ticks, t.qty AS qty_lots, t.channel, t.flags, t.epoch, t.ord
FROM {db}.{source} AS t
LEFT JOIN (SELECT * FROM {db}.instruments FINAL) AS i ON t.instrument = i.id"""


#: What separates market events from the other rows of ``ticks`` (markers a publisher sent in its
#: stream, and snapshot rows of a store written before schema 3): the ``market_events`` view's
#: filter, and :meth:`Store.count_market_events`'.
MARKET_FILTER = f"kind != {int(Kind.SNAPSHOT)} AND bitAnd(flags, {int(Flag.SNAPSHOT)}) = 0"


def _market_view(db: str, on_cluster: str = "") -> str:
    return f"CREATE VIEW IF NOT EXISTS {db}.market_events{on_cluster} AS SELECT * FROM {db}.ticks WHERE {MARKET_FILTER}"


def schema_ddl(database: str, merge_tuning: bool = True, codecs: str = "fast") -> list[str]:
    """The single-node schema, in creation order (``merge_tuning``: with
    :data:`MERGE_SELECTOR_BASE`, for servers that know the setting; ``codecs``: of the tick
    tables, :data:`TICK_CODECS`)."""
    tuned = f", merge_selector_base = {MERGE_SELECTOR_BASE}" if merge_tuning else ""
    return [
        f"CREATE DATABASE IF NOT EXISTS {database}",
        f"CREATE TABLE IF NOT EXISTS {database}.schema_version (version UInt32, applied DateTime DEFAULT now()) "
        f"ENGINE = MergeTree ORDER BY version",
        _tick_ddl(database, "MergeTree", settings=tuned, codecs=codecs),
        _tick_ddl(database, "MergeTree", "snapshots", settings=tuned, codecs=codecs),
        _signal_ddl(database, "MergeTree", settings=tuned),
        _instrument_ddl(database, "ReplacingMergeTree(updated)"),
        _decimal_view(database),
        _market_view(database),
    ]


def cluster_ddl(database: str, cluster: str, zk_path: str = "/clickhouse/tables/{shard}/{database}/{table}",
                replica: str = "{replica}", sharding_key: str = "cityHash64(instrument)") -> list[str]:
    """DDL for a ClickHouse cluster: ReplicatedMergeTree local tables behind Distributed ones.

    Every statement runs ``ON CLUSTER``; ``ticks_local``/``snapshots_local``/``signals_local``
    hold the data on each shard (replicated), ``ticks``/``snapshots``/``signals`` are the
    Distributed tables that writers insert into and readers query (so the rest of tickwire uses
    the same names as on one node).
    ``{shard}`` and ``{replica}`` are the servers' own macros.
    """
    from tickwire.engine.config import CLUSTER_NAME

    if not re.fullmatch(CLUSTER_NAME, cluster):
        raise ValueError(f"store.cluster: expected a cluster name (letters, digits, _; not starting with a digit), "
                         f"got {cluster!r}")
    oc = f" ON CLUSTER {cluster}"

    def replicated(table, version_col=None):
        path = zk_path.replace("{database}", database).replace("{table}", table)
        args = f"'{path}', '{replica}'" + (f", {version_col}" if version_col else "")
        return f"Replicated{'Replacing' if version_col else ''}MergeTree({args})"

    return [
        f"CREATE DATABASE IF NOT EXISTS {database}{oc}",
        f"CREATE TABLE IF NOT EXISTS {database}.schema_version{oc} (version UInt32, applied DateTime DEFAULT now()) "
        f"ENGINE = {replicated('schema_version')} ORDER BY version",
        _tick_ddl(database, replicated("ticks_local"), "ticks_local", oc),
        f"CREATE TABLE IF NOT EXISTS {database}.ticks{oc} AS {database}.ticks_local "
        f"ENGINE = Distributed({cluster}, {database}, ticks_local, {sharding_key})",
        _tick_ddl(database, replicated("snapshots_local"), "snapshots_local", oc),
        f"CREATE TABLE IF NOT EXISTS {database}.snapshots{oc} AS {database}.snapshots_local "
        f"ENGINE = Distributed({cluster}, {database}, snapshots_local, {sharding_key})",
        _signal_ddl(database, replicated("signals_local"), "signals_local", oc),
        f"CREATE TABLE IF NOT EXISTS {database}.signals{oc} AS {database}.signals_local "
        f"ENGINE = Distributed({cluster}, {database}, signals_local, cityHash64(run))",
        _instrument_ddl(database, replicated("instruments", "updated"), oc),
        _decimal_view(database, "ticks", oc),
        _market_view(database, oc),
    ]


def _select(columns: Sequence[str]) -> str:
    """Columns for a SELECT, times as int64 ns under other names: an alias named like the
    column would shadow it in the WHERE clause."""
    return ", ".join(f"toUnixTimestamp64Nano({c}) AS {c}_ns" if c in _TIME_COLUMNS else c for c in columns)


def _flock_holders(path: str) -> list[int]:
    """The pids holding a flock on ``path`` (from /proc/locks; empty when none or unknown)."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            rows = f.read().splitlines()
    except OSError:
        return []
    want = f":{st.st_ino}"
    pids = []
    for row in rows:
        parts = row.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].endswith(want) \
                and int(parts[5].split(":")[0], 16) == os.major(st.st_dev) \
                and int(parts[5].split(":")[1], 16) == os.minor(st.st_dev):
            try:
                pids.append(int(parts[4]))
            except ValueError:
                pass
    return pids


def _refuse_locked(path: str) -> None:
    """chDB allows one process per data directory (it flocks ``<dir>/status``): opening one that
    another process (a daemon's writer) holds failed with "Error initializing EmbeddedServer: .
    (BAD_ARGUMENTS)" and a "Cannot lock file" line of chDB's own on stderr. Said plainly instead,
    before chDB tries; this process's own hold is no obstacle."""
    others = [p for p in _flock_holders(os.path.join(path, "status")) if p != os.getpid()]
    if others:
        raise StoreError(f"the store {path} is locked by another process (pid {others[0]}): chDB allows one "
                         f"process per data directory; stop the daemon (or whatever holds it) first, or use a "
                         f"ClickHouse server (http://host:8123)")


def _close_quietly(handle) -> None:
    """Close a connection or handle (None: nothing) at the end of its use, whatever it says."""
    if handle is not None:
        try:
            handle.close()
        except Exception:                      # noqa: BLE001 - closing: nothing left to do about it
            pass


def _sql_literal(value) -> str:
    """A setting's value as a ClickHouse literal (strings quoted and escaped)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _arrow_table(arr: np.ndarray, columns: Sequence[str], extra: dict):
    import pyarrow as pa

    cols = {}
    for name in columns:
        col = np.ascontiguousarray(arr[name])
        if name in _TIME_COLUMNS:
            cols[name] = pa.Array.from_buffers(pa.timestamp("ns"), len(col), [None, pa.py_buffer(col)])
        else:
            cols[name] = pa.array(col)
    for name, value in extra.items():
        cols[name] = pa.array(value) if isinstance(value, np.ndarray) else pa.array([value] * len(arr))
    return pa.table(cols)


#: What a time-ordered read selects: the event's columns in EVENT_DTYPE order, then the two keys
#: that complete the total order (times as int64 ns through Arrow; in Native, DateTime64(9)
#: already is int64 ns, and converting it would cost the engine time per row).
_READ_COLUMNS = _select(TICK_COLUMNS) + ", epoch, ord"
_READ_COLUMNS_NATIVE = ", ".join(TICK_COLUMNS) + ", epoch, ord"
_READ_FIELDS = list(TICK_COLUMNS) + ["epoch", "ord"]
_READ_TYPES = ["Int64", "Int64", "UInt64", "UInt64", "Int64", "Int64", "UInt32", "UInt16", "UInt8", "UInt8",
               "UInt32", "UInt64", "UInt64"]
_NATIVE_DTYPES = {"Int64": np.dtype("<i8"), "UInt64": np.dtype("<u8"), "UInt32": np.dtype("<u4"),
                  "UInt16": np.dtype("<u2"), "UInt8": np.dtype("u1")}
#: Rows per block the store hands over in a read (``max_block_size``): larger blocks cost less per
#: row, but every stream of a read reserves buffers of this size (peak RSS 3.3 GB at 4 Mi rows).
READ_BLOCK_ROWS = 1 << 18
#: A time window of a read holds at most this many times ``chunk_rows`` rows (else it is split; at
#: 4 a burst of 3 M events in a minute was one 3.95 M-row window: 2.2 GiB where 2 holds 1.8).
WINDOW_CAP = 2


def _varint(buf, i: int):
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _native_blocks(buf) -> list:
    """The blocks of ClickHouse Native data in ``buf``, each a list of the 13 columns of
    :data:`_READ_COLUMNS` (numpy views of ``buf``; per block: column and row counts, then each
    column's name, type and fixed-width values). Empty blocks are left out."""
    blocks, i = [], 0
    while i < len(buf):
        ncols, i = _varint(buf, i)
        nrows, i = _varint(buf, i)
        if ncols != len(_READ_TYPES):
            raise StoreError(f"unexpected Native block from the store: {ncols} columns, expected {len(_READ_TYPES)}")
        cols = []
        for k in range(ncols):
            length, i = _varint(buf, i)
            i += length
            length, i = _varint(buf, i)
            typ = bytes(buf[i:i + length]).decode()
            i += length
            if typ.startswith("DateTime64(9") and _READ_TYPES[k] == "Int64":
                typ = "Int64"                          # its Native values: int64 ns
            if typ != _READ_TYPES[k]:
                raise StoreError(f"unexpected Native column type from the store: {typ} for column {k}, "
                                 f"expected {_READ_TYPES[k]}")
            dt = _NATIVE_DTYPES[typ]
            cols.append(np.frombuffer(buf, dt, nrows, i))
            i += nrows * dt.itemsize
        if nrows:
            blocks.append(cols)
    return blocks


def _join_blocks(blocks: list, pool: "_Reuse | None" = None) -> list:
    """The columns of ``blocks`` (lists of column arrays), each one contiguous array (taken
    from ``pool`` when given)."""
    if len(blocks) == 1:
        return blocks[0]
    if not blocks:
        return [np.empty(0, _NATIVE_DTYPES[t]) for t in _READ_TYPES]
    n = sum(len(blk[0]) for blk in blocks)
    return [np.concatenate([blk[k] for blk in blocks],
                           out=pool.take(n, blocks[0][k].dtype) if pool is not None else None)
            for k in range(len(_READ_TYPES))]


class _Reuse:
    """Arrays handed out again once nothing else holds them (a view of one holds it), for the
    windows of one read: without it each window of a million rows faults in some 140 MiB of
    fresh memory (glibc maps arrays that large anew every time), and the kernel's zeroing of
    those pages took 10-17% of a replay's samples in perf (docs/performance.md, "Replay").
    Safe by construction: an array still referenced anywhere (a chunk a caller kept, a view of
    it) is never handed out again; the pool then just allocates."""

    __slots__ = ("arrays", "keep")

    def __init__(self, keep: int = 64):
        self.arrays: list = []
        self.keep = keep

    def take(self, n: int, dtype) -> np.ndarray:
        arrays = self.arrays
        small = -1
        for i in range(len(arrays)):
            a = arrays[i]
            # held by the list, ``a`` and getrefcount's argument only: free
            if a.dtype == dtype and sys.getrefcount(a) == 3:
                if n <= len(a):
                    return a[:n]
                small = i
        # room to spare (windows differ in size by a few rows), so that the next one fits
        a = np.empty(n + (n >> 3) + 1024, dtype)
        if small >= 0:
            arrays[small] = a              # a free one too small for this window: replaced, not kept
        else:
            if len(arrays) >= self.keep:
                arrays.pop(0)
            arrays.append(a)
        return a[:n]


class _Window:
    """One window of a time-ordered read as the store handed it over: blocks of columns in the
    table's order (one sorted run per instrument), not yet joined or merged. :meth:`events`
    does both (the merge in C, without the GIL) on whichever thread calls it: a replay calls it
    on the engine's thread, so that the reading thread does only the store's part."""

    __slots__ = ("blocks", "held", "one_run")

    def __init__(self, blocks, held, one_run=False):
        self.blocks, self.held = blocks, held          # held: what the blocks' memory belongs to
        self.one_run = one_run                         # already in the total order (a dense instant's page)

    def __len__(self) -> int:
        return sum(len(blk[0]) for blk in self.blocks)

    def events(self, pool: "_Reuse | None" = None) -> np.ndarray:
        """The window's events in the total order (their array taken from ``pool`` when given)."""
        from tickwire.ext.merge import merge_events, run_bounds

        cols = _join_blocks(self.blocks, pool)
        if len(self.blocks) != 1:                      # joined into arrays of our own: the store's
            self.blocks = self.held = None             # memory can go now (memory stays flat)
        # A single block is not copied: its columns view the store's memory, which chDB's views
        # do not keep alive (memoryview.obj is None): ``held`` must outlive the merge. Released
        # before it, the merge once read freed memory (a stored event came back with kind 0).
        bounds = np.array([0, len(cols[0])], np.int64) if self.one_run else run_bounds(cols[6])  # one run per instrument
        out = merge_events(*cols, bounds,
                           out=pool.take(len(cols[0]), EVENT_DTYPE) if pool is not None else None)
        self.blocks = self.held = None
        return out


def _merged(windows: Iterable["_Window"]) -> Iterator[np.ndarray]:
    """The events of each window of :meth:`Store._read_windows`, merged into the total order,
    on the calling thread, their arrays reused from window to window (:class:`_Reuse`)."""
    pool = _Reuse()
    for window in windows:
        yield window.events(pool)


def _split(parts: Iterable[np.ndarray], chunk_rows: int) -> Iterator[np.ndarray]:
    """The rows of ``parts`` in chunks of at most ``chunk_rows`` (views: nothing copied)."""
    for part in parts:
        for k in range(0, len(part), chunk_rows):
            yield part[k:k + chunk_rows]


def _check_event_table(table: str) -> None:
    if table not in ("ticks", "snapshots"):
        raise ValueError(f"table must be 'ticks' or 'snapshots', got {table!r}")


@dataclass
class Store:
    """A connection to the tick store (embedded chDB or a server), with tickwire's schema.

    Use :meth:`open`. Not thread-safe; the embedded engine allows one process per data
    directory (the storage writer owns it while the daemon runs).
    """

    client: object
    database: str
    dsn: str
    #: how :meth:`read_ticks` fetches from an embedded store: ``"native"`` (a chDB handle of
    #: its own, Native format) or ``"arrow"`` (clickhouse-connect, as for a server)
    read_path: str = "native"
    #: how :meth:`insert_ticks` and :meth:`insert_signals` write to an embedded store:
    #: ``"python"`` (a chDB handle of its own, ``INSERT ... SELECT ... FROM Python(table)``: the
    #: engine reads the Arrow table in place) or ``"arrow"`` (clickhouse-connect's
    #: ``insert_arrow``, as for a server; its chDB backend writes each batch to a temporary file
    #: and inserts it ``FROM INFILE``: slower per batch, docs/performance.md, "Storage")
    write_path: str = "python"
    _reader: object = field(default=None, repr=False, compare=False)
    _writer: object = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, dsn: str, database: str = "tickwire", *, username: Optional[str] = None,
             password: Optional[str] = None, create: bool = True, codecs: str = "fast") -> "Store":
        """Connect and (by default) create or migrate the schema.

        Parameters
        ----------
        dsn : str
            ``chdb:///abs/path`` (embedded) or ``http(s)://host:port``.
        username, password : str, optional
            For a server; default from ``TICKWIRE_CLICKHOUSE_USER`` / ``_PASSWORD``.
        codecs : str
            Of the tick tables, when this creates them (:data:`TICK_CODECS`: ``"fast"`` or
            ``"compact"``); an existing store keeps its own.
        """
        import clickhouse_connect

        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
            raise ValueError(f"store.database: expected an identifier, got {database!r}")
        if not dsn.startswith(("chdb://", "http://", "https://")):
            raise StoreError(f"store DSN {redact(dsn)!r}: expected chdb:///abs/dir (the embedded engine) or "
                             f"http(s)://host:port (a ClickHouse server)")
        kwargs = {}
        if not dsn.startswith("chdb:"):
            # clickhouse-connect does not take the scheme from the DSN (it guesses TLS from the
            # port, 443/8443): https:// on any other port spoke plain HTTP, the password with it
            # (an adversarial pass). http:// keeps the guess: on 443/8443 it is TLS, as it was
            if dsn.startswith("https://"):
                kwargs["interface"] = "https"
            username = username or os.environ.get("TICKWIRE_CLICKHOUSE_USER")
            password = password or os.environ.get("TICKWIRE_CLICKHOUSE_PASSWORD")
            if username:
                kwargs["username"] = username
            if password:
                kwargs["password"] = password
        else:
            path = dsn[len("chdb://"):]
            if path and not os.path.isabs(path):
                raise ValueError(f"store.dsn: the embedded store needs an absolute path (chdb:///abs/dir), got {dsn!r}")
            if path:
                os.makedirs(path, exist_ok=True)
                _refuse_locked(path)
        driver_log = logging.getLogger("clickhouse_connect")
        was = driver_log.level
        driver_log.setLevel(logging.ERROR)       # its own warning line on a refused connection: ours says it
        try:
            client = clickhouse_connect.get_client(dsn=dsn, **kwargs)
        except Exception as exc:               # noqa: BLE001 - rewrapped without credentials
            raise StoreError(f"cannot open the store at {redact(dsn)}: {type(exc).__name__}: "
                             f"{redact(str(exc))}") from None
        finally:
            driver_log.setLevel(was)
        store = cls(client, database, dsn)
        if create:
            store.ensure_schema(codecs)
        return store

    # -- schema -----------------------------------------------------------------------------
    def ensure_schema(self, codecs: str = "fast") -> int:
        """Create what is missing and run pending migrations; returns the schema version.

        Migrations: 1 -> 2 sets :data:`MERGE_SELECTOR_BASE` on ticks and signals (where the
        server knows the setting); 2 -> 3 moves the snapshot rows (``Flag.SNAPSHOT``) from
        ``ticks`` into the new ``snapshots`` table (rows already copied are not copied again, so
        a migration interrupted half-way is finished by the next open)."""
        tuning = self._knows_merge_setting("merge_selector_base")
        for stmt in schema_ddl(self.database, tuning, codecs):
            self.client.command(stmt)
        have = self.client.query(f"SELECT max(version) FROM {self.database}.schema_version").result_rows[0][0] or 0
        if have > SCHEMA_VERSION:
            raise StoreError(f"the store's schema is version {have}, newer than this tickwire ({SCHEMA_VERSION})")
        if have and have < 2 and tuning:
            for table in ("ticks", "signals"):
                log.info("migrating %s.%s: merge_selector_base = %d", self.database, table, MERGE_SELECTOR_BASE)
                self.client.command(f"ALTER TABLE {self.database}.{table} "
                                    f"MODIFY SETTING merge_selector_base = {MERGE_SELECTOR_BASE}")
        if have and have < 3:
            self._move_snapshots_out_of_ticks()
        if have != SCHEMA_VERSION:
            self.client.command(f"INSERT INTO {self.database}.schema_version (version) VALUES ({SCHEMA_VERSION})",
                                settings={"async_insert": 0})
        return SCHEMA_VERSION

    def _move_snapshots_out_of_ticks(self) -> None:
        db, snap = self.database, int(Flag.SNAPSHOT)
        log.info("migrating %s: snapshot rows from ticks to snapshots", db)
        self.client.command(
            f"INSERT INTO {db}.snapshots SELECT * FROM {db}.ticks WHERE bitAnd(flags, {snap}) != 0 "
            f"AND (epoch, ord) NOT IN (SELECT epoch, ord FROM {db}.snapshots)", settings={"async_insert": 0})
        self.client.command(f"ALTER TABLE {db}.ticks DELETE WHERE bitAnd(flags, {snap}) != 0",
                            settings={"mutations_sync": 2})

    def _knows_merge_setting(self, name: str) -> bool:
        return bool(self.client.query("SELECT count() FROM system.merge_tree_settings WHERE name = {n:String}",
                                      parameters={"n": name}).result_rows[0][0])

    def register_instruments(self, instruments: Iterable) -> None:
        """Record (or update) instrument definitions used by the decimal view."""
        rows = [[inst.id, inst.symbol, Decimal(inst.tick_size), Decimal(inst.lot_size), inst.price_decimals,
                 inst.qty_decimals, inst.book] for inst in instruments]
        if rows:
            self.client.insert(f"{self.database}.instruments", rows,
                               column_names=["id", "symbol", "tick_size", "lot_size", "price_decimals",
                                             "qty_decimals", "book"], settings=_INSERT_SETTINGS)

    # -- writing --------------------------------------------------------------------------
    def insert_ticks(self, events: np.ndarray, *, epoch: int = 0, first_ord: int = 0,
                     token: Optional[str] = None) -> int:
        """Insert canonical events (one columnar Arrow insert per table); returns rows sent.

        Market events go to ``ticks``, events with ``Flag.SNAPSHOT`` to ``snapshots``.
        ``epoch`` and ``first_ord`` place them in their stream (``ord`` counts up from
        ``first_ord`` over the whole batch, both tables). A batch inserted again with the same
        ``token`` is stored once: each table keeps its own deduplication log, so the token serves
        both, and a retry after an insert that reached only one of them completes the other.
        """
        if events.dtype != EVENT_DTYPE:
            raise TypeError(f"events must be EVENT_DTYPE, got {events.dtype}")
        if len(events) == 0:
            return 0
        ords = np.arange(first_ord, first_ord + len(events), dtype=np.uint64)
        snap = (events["flags"] & np.uint32(Flag.SNAPSHOT)) != 0
        parts = [("ticks", events, ords)] if not snap.any() else \
            [("ticks", events[~snap], ords[~snap]), ("snapshots", events[snap], ords[snap])]
        settings = dict(_INSERT_SETTINGS)
        if token:
            settings["insert_deduplication_token"] = token
        for name, rows, o in parts:
            if len(rows):
                table = _arrow_table(rows, TICK_COLUMNS, {"epoch": np.full(len(rows), epoch, np.uint64), "ord": o})
                self._insert_arrow(name, table, settings)
        return len(events)

    def insert_signals(self, signals: np.ndarray, run: str, *, token: Optional[str] = None) -> int:
        """Insert signal records under ``run``."""
        if signals.dtype != SIGNAL_DTYPE:
            raise TypeError(f"signals must be SIGNAL_DTYPE, got {signals.dtype}")
        if len(signals) == 0:
            return 0
        table = _arrow_table(signals, SIGNAL_COLUMNS, {"run": run})
        settings = dict(_INSERT_SETTINGS)
        if token:
            settings["insert_deduplication_token"] = token
        self._insert_arrow("signals", table, settings)
        return len(signals)

    def prepare_writes(self) -> None:
        """Load now what the first insert would otherwise load while ticks wait in a ring:
        pyarrow, and on an embedded store the write handle and its ``Python()`` reader (an
        insert of no rows, which stores nothing). The storage writer calls it before attaching."""
        table = _arrow_table(np.zeros(0, EVENT_DTYPE), TICK_COLUMNS,        # (imports pyarrow)
                             {"epoch": np.zeros(0, np.uint64), "ord": np.zeros(0, np.uint64)})
        if self._embedded_path(self.write_path == "python"):
            self._insert_arrow("ticks", table, dict(_INSERT_SETTINGS))

    def _embedded_path(self, chosen: bool) -> bool:
        """Whether a read or write goes through a chDB handle of the store's own: an embedded
        store, and ``chosen`` by :attr:`read_path` or :attr:`write_path`."""
        return chosen and self.dsn.startswith("chdb:")

    def _chdb_handle(self):
        """A new chDB connection to this embedded store's directory (the process's one engine)."""
        import chdb

        return chdb.connect(os.path.realpath(self.dsn[len("chdb://"):]))

    def _insert_arrow(self, name: str, table, settings: dict) -> None:
        """One Arrow table into ``name``: on an embedded store through a chDB handle of our own
        (``write_path="python"``: the engine reads ``table`` in place, no temporary file), else
        through clickhouse-connect. The same settings (and so the same deduplication token) either way."""
        if not self._embedded_path(self.write_path == "python"):
            self.client.insert_arrow(f"{self.database}.{name}", table, settings=settings)
            return
        if self._writer is None:
            self._writer = self._chdb_handle()
        cols = ", ".join(table.column_names)
        clause = ", ".join(f"{k} = {_sql_literal(v)}" for k, v in settings.items())
        # chDB's Python() table function finds ``table`` by name among this frame's locals
        self._writer.query(f"INSERT INTO {self.database}.{name} ({cols}) SELECT {cols} FROM Python(table) "
                           f"SETTINGS {clause}")

    # -- reading --------------------------------------------------------------------------
    def _where(self, instruments, start_ns, end_ns):
        conds = []
        if instruments is not None:
            ids = [int(i) for i in instruments]
            if not ids:
                return "0"
            conds.append(f"instrument IN ({', '.join(map(str, ids))})")
        if start_ns is not None:
            conds.append(f"ts_event >= fromUnixTimestamp64Nano(toInt64({int(start_ns)}))")
        if end_ns is not None:
            conds.append(f"ts_event < fromUnixTimestamp64Nano(toInt64({int(end_ns)}))")
        return " AND ".join(conds) if conds else "1"

    def count_ticks(self, instruments=None, start_ns=None, end_ns=None, *, table: str = "ticks") -> int:
        """Ticks stored for the instruments (all by default) in ``[start_ns, end_ns)``
        (``table="snapshots"``: snapshot events instead)."""
        _check_event_table(table)
        q = f"SELECT count() FROM {self.database}.{table} WHERE {self._where(instruments, start_ns, end_ns)}"
        return int(self.client.query(q).result_rows[0][0])

    def count_market_events(self, instruments=None, start_ns=None, end_ns=None) -> int:
        """Market events stored (what publishers sent as book updates and trades), without the
        markers ``ticks`` also keeps: the rows of the ``market_events`` view (:data:`MARKET_FILTER`)."""
        q = (f"SELECT count() FROM {self.database}.ticks "
             f"WHERE {MARKET_FILTER} AND {self._where(instruments, start_ns, end_ns)}")
        return int(self.client.query(q).result_rows[0][0])

    def read_ticks(self, instruments=None, start_ns=None, end_ns=None, *,
                   chunk_rows: int = 1_000_000) -> Iterator[np.ndarray]:
        """Ticks (market events) in total order (event time, then sequence, then stream
        position), streamed as EVENT_DTYPE arrays of at most ``chunk_rows`` events.

        ``instruments``: ids (default all); ``[start_ns, end_ns)``: event-time range.
        """
        return self._read_events("ticks", instruments, start_ns, end_ns, chunk_rows)

    def read_snapshots(self, instruments=None, start_ns=None, end_ns=None, *,
                       chunk_rows: int = 1_000_000, order: str = "time") -> Iterator[np.ndarray]:
        """Snapshot events (``Flag.SNAPSHOT``, markers included) in the same total order and
        chunks as :meth:`read_ticks`; ``order="stream"``: in the order the engine met them
        (``epoch, ord``: the tick ring's), which replay needs (docs/replay.md)."""
        if order not in ("time", "stream"):
            raise ValueError(f"order must be 'time' or 'stream', got {order!r}")
        return self._read_events("snapshots", instruments, start_ns, end_ns, chunk_rows,
                                 "epoch, ord" if order == "stream" else None)

    def read_instruments(self) -> list:
        """The instrument definitions recorded in the store (:meth:`register_instruments`; the
        daemon's writer records its config's), by id: symbol, tick and lot size, decimals and
        book type (``max_depth`` and the price range are not recorded: their defaults)."""
        from tickwire.engine.instruments import Instrument

        rows = self.client.query(
            f"SELECT id, symbol, toString(tick_size), toString(lot_size), price_decimals, qty_decimals, book "
            f"FROM {self.database}.instruments FINAL ORDER BY id").result_rows
        return [Instrument(int(i), sym, Decimal(ts), Decimal(ls), book, price_decimals=int(pd), qty_decimals=int(qd))
                for i, sym, ts, ls, pd, qd, book in rows]

    def _read_events(self, table, instruments, start_ns, end_ns, chunk_rows, order=None) -> Iterator[np.ndarray]:
        if order is None:
            return _split(self._read_time_order(table, instruments, start_ns, end_ns, chunk_rows), chunk_rows)
        return self._read_sorted_by_engine(table, instruments, start_ns, end_ns, chunk_rows, order)

    def _read_sorted_by_engine(self, table, instruments, start_ns, end_ns, chunk_rows, order,
                               where: str = "") -> Iterator[np.ndarray]:
        """Rows sorted by ClickHouse (``ORDER BY order``), through Arrow: for the small reads
        (snapshots in stream order, bad stamps); ``where``: a condition more."""
        q = (f"SELECT {_select(TICK_COLUMNS)} FROM {self.database}.{table} "
             f"WHERE {self._where(instruments, start_ns, end_ns)}{f' AND ({where})' if where else ''} "
             f"ORDER BY {order}")
        out = np.empty(chunk_rows, dtype=EVENT_DTYPE)
        n = 0
        with self.client.query_arrow_stream(q) as stream:
            for batch in stream:
                k, off = batch.num_rows, 0
                while off < k:
                    take = min(chunk_rows - n, k - off)
                    for i, name in enumerate(TICK_COLUMNS):
                        out[name][n:n + take] = batch.column(i).to_numpy(zero_copy_only=False)[off:off + take]
                    n += take
                    off += take
                    if n == chunk_rows:
                        out["reserved"] = 0
                        yield out.copy()
                        n = 0
        if n:
            chunk = out[:n].copy()
            chunk["reserved"] = 0
            yield chunk

    def _read_time_order(self, table, instruments, start_ns, end_ns, chunk_rows) -> Iterator[np.ndarray]:
        """Rows in the total order ``(ts_event, seq, epoch, ord)``: each window of
        :meth:`_read_windows` merged."""
        return _merged(self._read_windows(table, instruments, start_ns, end_ns, chunk_rows))

    def _read_windows(self, table, instruments, start_ns, end_ns, chunk_rows) -> Iterator["_Window"]:
        """Rows read window by window of event time in the table's own order (``instrument``
        first: no sort in ClickHouse, one sorted run per instrument), each to be merged in C
        into the total order (:meth:`_Window.events`, :func:`tickwire.ext.merge.merge_events`).

        A window holds about ``chunk_rows`` rows (its width adapts to the density met so far)
        and never more than :data:`WINDOW_CAP` times that: a window that would is split, so
        memory stays flat whatever the range. Every row of one ``ts_event`` falls in one window,
        so the merge of each window, one after the other, is the total order; a single
        ``ts_event`` with more rows than the cap (a feed without exchange times stamps a whole
        burst alike) is read in pages of its own (:meth:`_read_instant`)."""
        where = self._where(instruments, start_ns, end_ns)
        lo, hi, total = self.client.query(
            f"SELECT toUnixTimestamp64Nano(min(ts_event)), toUnixTimestamp64Nano(max(ts_event)), count() "
            f"FROM {self.database}.{table} WHERE {where}").result_rows[0]
        if not total:
            return
        native = self._embedded_path(self.read_path != "arrow")
        fetch, columns = (self._fetch_native, _READ_COLUMNS_NATIVE) if native else (self._fetch_arrow, _READ_COLUMNS)
        cap = WINDOW_CAP * chunk_rows
        block = min(READ_BLOCK_ROWS, cap + 1)
        width = max(1, (int(hi) - int(lo) + 1) * chunk_rows // int(total))
        t, hi = int(lo), int(hi)
        try:
            while t <= hi:
                # the window [t, last], its last instant included: its end past it, at the
                # largest time (2262-04-11, int64 ns), was 2**63, which toInt64 wraps to -2**63,
                # every window then empty and the read a loop for good (an adversarial pass)
                last = min(t + width - 1, hi)
                end = last + 1
                q = (f"SELECT {columns} FROM {self.database}.{table} WHERE {where} "
                     f"AND ts_event >= fromUnixTimestamp64Nano(toInt64({t})) "
                     f"AND ts_event <= fromUnixTimestamp64Nano(toInt64({last})) "
                     f"ORDER BY instrument, ts_event, seq, epoch, ord LIMIT {cap + 1} "
                     f"SETTINGS max_block_size = {block}, preferred_block_size_bytes = {block * 128}")
                blocks, result = fetch(q)
                rows = sum(len(blk[0]) for blk in blocks)
                if rows > cap and end - t > 1:             # too dense: split the window
                    width = max(1, (end - t) // 4)
                    continue
                if rows > cap:                             # one instant holds more: its pages
                    del blocks, result
                    yield from self._read_instant(table, where, t, cap, fetch, columns, block)
                    t = end
                    continue
                if not rows:
                    # a gap: on to the next row's time, the width kept (doubled over a gap of days,
                    # the window after it was a burst of up to the cap: a 40-day history with gaps
                    # peaked at 2.2 GiB where one without held 1.3)
                    del blocks, result
                    nxt = self.client.query(
                        f"SELECT toUnixTimestamp64Nano(min(ts_event)), count() FROM {self.database}.{table} "
                        f"WHERE {where} AND ts_event > fromUnixTimestamp64Nano(toInt64({last}))").result_rows[0]
                    if not nxt[1]:
                        break
                    t = int(nxt[0])
                    continue
                window = _Window(blocks, result)
                del blocks, result                         # the window alone holds them: memory stays flat
                yield window
                del window
                t = end
                if rows < chunk_rows // 2:
                    width *= 2
                elif rows > chunk_rows * 3 // 2:         # (past the cap a window is split before this)
                    width = max(1, width // 2)
        finally:
            self._close_reader()

    def _read_instant(self, table, where, t, cap, fetch, columns, block) -> Iterator["_Window"]:
        """Every row whose ``ts_event`` is ``t``, when there are more than ``cap``: pages of at
        most ``cap`` rows sorted by ClickHouse in the total order (``seq, epoch, ord`` within
        the instant), each a window of one sorted run, the next page starting after the last
        row's keys (``(epoch, ord)`` is unique, so no row is read twice or skipped)."""
        iseq, iepoch, iord = (_READ_FIELDS.index(k) for k in ("seq", "epoch", "ord"))
        after = ""
        while True:
            q = (f"SELECT {columns} FROM {self.database}.{table} WHERE {where} "
                 f"AND ts_event = fromUnixTimestamp64Nano(toInt64({t})) {after}"
                 f"ORDER BY seq, epoch, ord LIMIT {cap} "
                 f"SETTINGS max_block_size = {block}, preferred_block_size_bytes = {block * 128}")
            blocks, result = fetch(q)
            rows = sum(len(blk[0]) for blk in blocks)
            if not rows:
                return
            last = next(blk for blk in reversed(blocks) if len(blk[0]))
            after = (f"AND (seq, epoch, ord) > (toUInt64({int(last[iseq][-1])}), toUInt64({int(last[iepoch][-1])}), "
                     f"toUInt64({int(last[iord][-1])})) ")
            window = _Window(blocks, result, one_run=True)
            del blocks, result, last
            yield window
            del window
            if rows < cap:
                return

    def _fetch_native(self, q):
        """One window through a chDB handle of our own, in ClickHouse's Native (columnar) format,
        streamed (``send_query``): the store hands over its blocks as it makes them instead of
        building the whole result in its own memory first (that costs about five times the
        result: 380 MiB more per million rows, measured). Returns the blocks (each a list of
        column arrays viewing the store's memory) and what holds that memory. No Arrow, no
        per-row work."""
        if self._reader is None:
            self._reader = self._chdb_handle()
        blocks, held = [], []
        with self._reader.send_query(q, "Native") as stream:
            for part in stream:
                blocks += _native_blocks(part.get_memview().view())
                held.append(part)                  # the blocks view its memory until joined
        return blocks, held

    def _fetch_arrow(self, q):
        """One window through clickhouse-connect's Arrow (servers; any store with ``read_path="arrow"``),
        as one block."""
        tbl = self.client.query_arrow(q)
        return [[np.ascontiguousarray(tbl.column(i).to_numpy(), dtype=_NATIVE_DTYPES[t])
                 for i, t in enumerate(_READ_TYPES)]], tbl

    def _close_reader(self) -> None:
        _close_quietly(self._reader)
        self._reader = None

    def read_signals(self, run: str) -> np.ndarray:
        """Signals of a run, in production order."""
        tbl = self.client.query_arrow(
            f"SELECT {_select(SIGNAL_COLUMNS)} FROM {self.database}.signals WHERE run = {{run:String}} "
            f"ORDER BY ts_signal, seq, rule_id", parameters={"run": run})
        out = np.zeros(tbl.num_rows, dtype=SIGNAL_DTYPE)
        for i, name in enumerate(SIGNAL_COLUMNS):
            out[name] = tbl.column(i).to_numpy()
        return out

    def runs(self) -> list[str]:
        return [r[0] for r in self.client.query(f"SELECT DISTINCT run FROM {self.database}.signals ORDER BY run").result_rows]

    def ping(self) -> bool:
        """Whether the store answers a trivial query."""
        try:
            self.client.query("SELECT 1")
            return True
        except Exception:                      # noqa: BLE001 - any failure means "not now"
            return False

    def close(self) -> None:
        """Close the connection (the embedded engine then lets another path be opened)."""
        self._close_reader()
        _close_quietly(self._writer)
        self._writer = None
        _close_quietly(self.client)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
