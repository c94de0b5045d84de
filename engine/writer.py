"""The storage writer: drains the tick ring into ClickHouse, exactly once, losing nothing.

It runs in its own process (never on the engine's core) and reads the blocking tick ring with
*peek, then commit*: records stay in the ring until they are durable, either inserted into the
store or written to a local spill file, and only then does the writer advance the ring. So:

- **Writer killed (SIGKILL) and restarted.** Records it had not committed are still in the ring;
  the new writer attaches, takes over, and starts from the committed position.
- **Killed between an insert and the commit.** Before each insert the writer writes a one-line
  journal ``(position, count, token)`` and fsyncs it; the restarted writer re-reads exactly that
  batch and inserts it again with the same ``insert_deduplication_token``, which ClickHouse
  ignores if the first insert had landed. No duplicates.
- **Store slow or down.** Batches go to append-only spill files (written, fsynced, renamed), the
  ring is committed, and the spill is replayed in order, with each batch's own token, when the
  store answers again. Disk-full and permission errors on the spill are reported by name and the
  records simply stay in the ring (the engine then sees back-pressure, not loss).
- **SIGTERM.** The writer reads everything the producer published, writes it, and exits 0.

Batches are cut by size (``batch_rows``) and time (``batch_seconds``); inserts are columnar Arrow
with ``async_insert`` off. Metrics (rows, batches, spill, lag) are kept in :attr:`TickWriter.metrics`
and, for the supervisor, in a JSON status file.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tickwire.ext.records import EVENT_DTYPE, SIGNAL_DTYPE

log = logging.getLogger("tickwire.writer")

__all__ = ["TickWriter", "SpillError", "main"]

_SPILL_MAGIC = b"TWSPILL1"


class SpillError(OSError):
    """The spill directory cannot take a batch (full, not writable...): named in the message."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Journal:
    """One line: the batch being made durable (position, count, token), fsynced."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, pos: int, n: int, token: str) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps({"pos": pos, "n": n, "token": token}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def read(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class _Spill:
    """Append-only spill files, one per batch: header line + raw canonical events."""

    def __init__(self, directory: Path):
        self.dir = directory

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.spill"))

    def path_for(self, pos: int) -> Path:
        return self.dir / f"{pos:020d}.spill"

    def write(self, pos: int, epoch: int, token: str, events: np.ndarray) -> int:
        path = self.path_for(pos)
        header = json.dumps({"pos": pos, "n": len(events), "epoch": epoch, "token": token}).encode() + b"\n"
        tmp = self.dir / f".{pos:020d}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(_SPILL_MAGIC + header)
                fh.write(np.ascontiguousarray(events).tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.dir)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            what = {errno.ENOSPC: "is full", errno.EDQUOT: "is over quota", errno.EACCES: "is not writable",
                    errno.EPERM: "is not writable", errno.EROFS: "is read-only"}.get(exc.errno, f"failed: {exc}")
            raise SpillError(exc.errno, f"spill directory {self.dir} {what}: {len(events)} ticks stay in the "
                                        f"ring until it can take them") from None
        return path.stat().st_size

    @staticmethod
    def read(path: Path):
        data = path.read_bytes()
        if not data.startswith(_SPILL_MAGIC):
            raise ValueError(f"{path} is not a tickwire spill file")
        nl = data.index(b"\n", len(_SPILL_MAGIC))
        meta = json.loads(data[len(_SPILL_MAGIC):nl])
        events = np.frombuffer(data, dtype=EVENT_DTYPE, offset=nl + 1, count=meta["n"]).copy()
        return meta, events

    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())


class TickWriter:
    """Drains a blocking tick source into a store; see the module docstring for the guarantees.

    Parameters
    ----------
    open_store : callable
        Returns a connected :class:`~tickwire.engine.store.Store` (called again after an outage).
    source : Ring
        The tick ring, attached as its (only) consumer: ``peek_many``, ``advance``, ``rewind``,
        ``committed``, ``pending``, ``size``, ``producer_closed``.
    state_dir : path
        Where the journal, the spill files and the status file live (created if missing).
    epoch : int
        Identifies the stream (the tick ring's creation time): stored with every tick.
    """

    def __init__(self, open_store: Callable, source, state_dir, epoch: int, *, batch_rows: int = 100_000,
                 batch_seconds: float = 1.0, retry_seconds: float = 1.0, signal_source=None,
                 run: str = "", status_every: float = 1.0):
        if batch_rows < 1 or batch_seconds <= 0:
            raise ValueError("writer.batch_rows must be >= 1 and writer.batch_seconds > 0")
        self.open_store = open_store
        self.source = source
        self.state = Path(state_dir)
        self.spill = _Spill(self.state / "spill")
        self.spill.dir.mkdir(parents=True, exist_ok=True)
        self.journal = _Journal(self.state / "inflight.json")
        self.epoch = int(epoch)
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.retry_seconds = retry_seconds
        self.signal_source = signal_source
        self.run_name = run
        self.status_every = status_every
        self.store = None
        self._store_down_until = 0.0
        self._reported = set()
        self._stop = threading.Event()
        self.metrics = {
            "rows_written": 0, "batches_written": 0, "rows_spilled": 0, "batches_spilled": 0,
            "batches_replayed": 0, "spill_bytes": 0, "spill_files": 0, "lag": 0, "outage": False,
            "signals_written": 0, "signals_missed": 0, "last_error": "", "started_ns": time.time_ns(),
        }

    # -- plumbing --------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the writer to drain what was published, write it, and return from :meth:`run`."""
        self._stop.set()

    def _report(self, kind: str, message: str) -> None:
        """Log a problem once per kind (until it clears)."""
        self.metrics["last_error"] = message
        if kind not in self._reported:
            self._reported.add(kind)
            log.error(message)

    def _store(self):
        if self.store is None:
            if time.monotonic() < self._store_down_until:
                return None
            try:
                self.store = self.open_store()
                if self.metrics["outage"]:
                    log.warning("store reachable again; replaying %d spilled batches", len(self.spill.files()))
                self.metrics["outage"] = False
                self._reported.discard("store")
            except Exception as exc:            # noqa: BLE001 - any failure is an outage
                self._outage(exc)
                return None
        return self.store

    def _outage(self, exc) -> None:
        self.metrics["outage"] = True
        self._store_down_until = time.monotonic() + self.retry_seconds
        if self.store is not None:
            self.store.close()
            self.store = None
        from tickwire.engine.store import redact

        self._report("store", f"store unavailable, spilling to {self.spill.dir}: {type(exc).__name__}: "
                              f"{redact(str(exc))[:300]}")

    def _insert(self, events: np.ndarray, pos: int, token: str, epoch: int) -> bool:
        store = self._store()
        if store is None:
            return False
        try:
            store.insert_ticks(events, epoch=epoch, first_ord=pos, token=token)
            return True
        except Exception as exc:                # noqa: BLE001
            self._outage(exc)
            return False

    def _replay_spill(self) -> bool:
        """Insert spilled batches, oldest first; True when the spill is empty."""
        for path in self.spill.files():
            meta, events = _Spill.read(path)
            if not self._insert(events, meta["pos"], meta["token"], meta["epoch"]):
                return False
            path.unlink()
            self.metrics["batches_replayed"] += 1
            self.metrics["rows_written"] += meta["n"]
            self.metrics["batches_written"] += 1
        return True

    def _persist(self, events: np.ndarray, pos: int, token: str) -> None:
        """Make one batch durable (insert, or spill), retrying until it is; raises only when
        stopping while neither works."""
        while True:
            if self._replay_spill() and self._insert(events, pos, token, self.epoch):
                self.metrics["rows_written"] += len(events)
                self.metrics["batches_written"] += 1
                return
            try:
                if not self.spill.path_for(pos).exists():
                    self.metrics["spill_bytes"] = self.spill.bytes() + self.spill.write(pos, self.epoch, token, events)
                self.metrics["rows_spilled"] += len(events)
                self.metrics["batches_spilled"] += 1
                self._reported.discard("spill")
                return
            except SpillError as exc:
                self._report("spill", str(exc))
                if self._stop.wait(self.retry_seconds) and not self.store:
                    raise

    def _commit(self, events: np.ndarray) -> None:
        """Journal, persist and commit a batch that starts at the ring's committed position."""
        pos = self.source.committed
        token = f"tw:{self.epoch}:{pos}:{len(events)}"
        self.journal.write(pos, len(events), token)
        self._persist(events, pos, token)
        self.source.advance(len(events))
        self.journal.clear()

    def _recover(self) -> None:
        """Finish the batch a killed writer left in flight, exactly as it was journalled."""
        entry = self.journal.read()
        if not entry:
            return
        committed = self.source.committed
        if entry["pos"] != committed:
            self.journal.clear()               # it was committed before the crash
            return
        buf = np.empty(entry["n"], dtype=EVENT_DTYPE)
        got = 0
        while got < entry["n"]:
            k = self.source.peek_many(buf[got:], timeout=5.0)
            if k == 0:
                raise RuntimeError(f"journalled batch at {committed} ({entry['n']} ticks) is no longer in the ring")
            got += k
        log.warning("re-writing the batch a previous writer left in flight (%d ticks at %d)", got, committed)
        self._persist(buf, committed, entry["token"])
        self.source.advance(entry["n"])
        self.journal.clear()

    def _write_status(self) -> None:
        self.metrics["lag"] = int(self.source.size)
        self.metrics["spill_files"] = len(self.spill.files())
        self.metrics["spill_bytes"] = self.spill.bytes()
        tmp = self.state / "status.json.tmp"
        tmp.write_text(json.dumps(self.metrics))
        os.replace(tmp, self.state / "status.json")

    def _drain_signals(self, buf) -> None:
        if self.signal_source is None:
            return
        k = self.signal_source.pop_many(buf, timeout=0)
        self.metrics["signals_missed"] = int(self.signal_source.missed)
        if k and self._store() is not None:
            try:
                self.store.insert_signals(buf[:k], self.run_name)
                self.metrics["signals_written"] += k
            except Exception as exc:            # noqa: BLE001 - signals are best effort
                self._outage(exc)

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> dict:
        """Write until :meth:`stop` (then drain) or the producer closes the ring; return metrics."""
        self._recover()
        buf = np.empty(self.batch_rows, dtype=EVENT_DTYPE)
        sig_buf = np.empty(4096, dtype=SIGNAL_DTYPE)
        n = 0
        first = None
        last_status = 0.0
        while True:
            stopping = self._stop.is_set()
            k = self.source.peek_many(buf[n:], timeout=0 if stopping else 0.05)
            if k:
                n += k
                first = first or time.monotonic()
            elif self.source.pending == 0 and n == 0 and self.spill.files() and self._store() is not None:
                self._replay_spill()
            due = n == self.batch_rows or (n and (time.monotonic() - first >= self.batch_seconds or stopping
                                                  or self.source.producer_closed))
            if due:
                self._commit(buf[:n])
                n = 0
                first = None
            self._drain_signals(sig_buf)
            now = time.monotonic()
            if now - last_status >= self.status_every:
                self._write_status()
                last_status = now
            if n == 0 and k == 0 and (stopping or self.source.producer_closed) and self.source.size == 0:
                break
        if self.spill.files() and self._store() is not None:
            self._replay_spill()
        self._write_status()
        if self.store is not None:
            self.store.close()
        return dict(self.metrics)


def main(argv=None) -> int:
    """``python -m tickwire.engine.writer``: the writer process the daemon starts."""
    ap = argparse.ArgumentParser(prog="tickwire-writer", description="Drain a tick ring into ClickHouse.")
    ap.add_argument("--ring", required=True, help="name of the blocking tick ring to consume")
    ap.add_argument("--dsn", required=True, help="store DSN (chdb:///abs/dir or http://host:8123)")
    ap.add_argument("--database", default="tickwire")
    ap.add_argument("--state-dir", required=True, help="journal, spill and status directory")
    ap.add_argument("--epoch", type=int, default=None, help="stream id (default: the ring's creation time)")
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--batch-seconds", type=float, default=1.0)
    ap.add_argument("--signal-ring", help="broadcast signal ring to store signals from (optional)")
    ap.add_argument("--run", default="", help="run name stored with the signals")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s writer %(levelname)s %(message)s")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    from tickwire.engine.store import Store
    from tickwire.ext.ring import Ring

    source = Ring.attach(args.ring, EVENT_DTYPE, takeover=True)
    signals = Ring.attach(args.signal_ring, SIGNAL_DTYPE) if args.signal_ring else None
    epoch = args.epoch if args.epoch is not None else int(getattr(source, "created_ns", 0))
    writer = TickWriter(lambda: Store.open(args.dsn, args.database), source, args.state_dir, epoch,
                        batch_rows=args.batch_rows, batch_seconds=args.batch_seconds,
                        signal_source=signals, run=args.run)
    signal.signal(signal.SIGTERM, lambda *_: writer.stop())
    signal.signal(signal.SIGINT, lambda *_: writer.stop())
    metrics = writer.run()
    log.info("done: %s", json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
