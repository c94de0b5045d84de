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

Scheduling: storage is throughput work with plenty of headroom (over 1 M ticks/s against feeds of
a few hundred thousand), so by default the writer runs under ``SCHED_IDLE`` (:class:`IdlePolicy`):
it gets its core only when nothing else there wants it, and a waking latency-bound process (a
co-located publisher or feed handler) preempts it at once. Should the writer fall behind (a tick
ring more than a quarter full), it returns to normal scheduling until it has caught up, so idling
can never turn into back-pressure on the engine.

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

__all__ = ["TickWriter", "WriterService", "StoreLink", "SpillError", "IdlePolicy", "main"]

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


class StoreLink:
    """The writer process's one connection to the store, shared by its tick sources, with
    outage bookkeeping: after a failure nobody tries again for ``retry_seconds``."""

    def __init__(self, open_store: Callable, retry_seconds: float = 1.0):
        self.open_store = open_store
        self.retry_seconds = retry_seconds
        self.store = None
        self.outage = False
        self.last_error = ""
        self._down_until = 0.0
        self._logged = False

    def get(self):
        if self.store is None:
            if time.monotonic() < self._down_until:
                return None
            try:
                self.store = self.open_store()
            except Exception as exc:            # noqa: BLE001 - any failure is an outage
                self.failed(exc)
                return None
            if self.outage:
                log.warning("store reachable again")
            self.outage = False
            self._logged = False
        return self.store

    def failed(self, exc) -> None:
        from tickwire.engine.store import redact

        self.outage = True
        self._down_until = time.monotonic() + self.retry_seconds
        if self.store is not None:
            try:
                self.store.close()
            except Exception:                   # noqa: BLE001 - it is already failing
                pass
            self.store = None
        self.last_error = f"store unavailable: {type(exc).__name__}: {redact(str(exc))[:300]}"
        if not self._logged:
            self._logged = True
            log.error("%s; spilling until it is back", self.last_error)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


class TickWriter:
    """Drains one blocking tick source into the store; see the module docstring for the
    guarantees.

    Parameters
    ----------
    link : StoreLink or callable
        The shared store connection (a callable returning a Store is wrapped in one).
    source : Ring
        The tick ring, attached as its (only) consumer: ``peek_many``, ``advance``,
        ``committed``, ``pending``, ``size``, ``producer_closed``.
    state_dir : path
        Where this source's journal, spill files and status file live (created if missing).
    epoch : int
        Identifies the stream (the tick ring's creation time): stored with every tick.
    nap : float
        With a batch begun but not yet due, pause this long between reads, so that the writer
        wakes a few dozen times a second rather than once per engine batch (the ring holds
        the ticks meanwhile; 0: read as ticks arrive).
    """

    def __init__(self, link, source, state_dir, epoch: int, *, batch_rows: int = 500_000,
                 batch_seconds: float = 1.0, retry_seconds: float = 1.0, status_every: float = 1.0,
                 nap: float = 0.0):
        if batch_rows < 1 or batch_seconds <= 0:
            raise ValueError("writer.batch_rows must be >= 1 and writer.batch_seconds > 0")
        self.link = link if isinstance(link, StoreLink) else StoreLink(link, retry_seconds)
        self.source = source
        self.state = Path(state_dir)
        self.spill = _Spill(self.state / "spill")
        self.spill.dir.mkdir(parents=True, exist_ok=True)
        self.journal = _Journal(self.state / "inflight.json")
        self.epoch = int(epoch)
        self.batch_rows = batch_rows
        self.batch_seconds = batch_seconds
        self.retry_seconds = retry_seconds
        self.status_every = status_every
        self.nap = nap
        self._stop = threading.Event()
        self._buf = np.empty(batch_rows, dtype=EVENT_DTYPE)
        self._n = 0
        self._first = None
        self._last_status = 0.0
        self._recovered = False
        self._spill_reported = False
        self.metrics = {
            "rows_written": 0, "batches_written": 0, "rows_spilled": 0, "batches_spilled": 0,
            "batches_replayed": 0, "spill_bytes": 0, "spill_files": 0, "lag": 0, "outage": False,
            "last_error": "", "epoch": self.epoch, "sched_idle": 0, "sched_switches": 0,
        }

    @property
    def draining(self) -> bool:
        """Asked to stop, or the producer closed the ring: writing what is left, then done."""
        return self._stop.is_set() or self.source.producer_closed

    def stop(self) -> None:
        """Ask the writer to drain what was published, write it, and finish."""
        self._stop.set()

    # -- durability ------------------------------------------------------------------------
    def _insert(self, events: np.ndarray, pos: int, token: str, epoch: int) -> bool:
        store = self.link.get()
        if store is None:
            return False
        try:
            store.insert_ticks(events, epoch=epoch, first_ord=pos, token=token)
            return True
        except Exception as exc:                # noqa: BLE001
            self.link.failed(exc)
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
        """Make one batch durable (insert, or spill), retrying until it is; raises SpillError
        only when asked to stop while neither works."""
        while True:
            if self._replay_spill() and self._insert(events, pos, token, self.epoch):
                self.metrics["rows_written"] += len(events)
                self.metrics["batches_written"] += 1
                return
            try:
                if not self.spill.path_for(pos).exists():
                    self.spill.write(pos, self.epoch, token, events)
                self.metrics["rows_spilled"] += len(events)
                self.metrics["batches_spilled"] += 1
                self._spill_reported = False
                return
            except SpillError as exc:
                self.metrics["last_error"] = str(exc)
                if not self._spill_reported:
                    self._spill_reported = True
                    log.error("%s", exc)
                if self._stop.wait(self.retry_seconds):
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
        self._recovered = True
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

    # -- the loop --------------------------------------------------------------------------
    def step(self, wait: float = 0.05) -> bool:
        """Read what is there (waiting up to ``wait`` s), write a batch when one is due.

        Returns False once stopped (or the producer closed) and everything is written."""
        if not self._recovered:
            self._recover()
        stopping = self._stop.is_set()
        n = self._n
        k = self.source.peek_many(self._buf[n:], timeout=0 if stopping else wait)
        if k:
            n += k
            self._first = self._first or time.monotonic()
        elif n == 0 and self.spill.files() and self.link.get() is not None:
            self._replay_spill()
        closed = self.source.producer_closed
        if n == self.batch_rows or (n and (stopping or closed or time.monotonic() - self._first >= self.batch_seconds)):
            self._commit(self._buf[:n])
            n = 0
            self._first = None
        self._n = n
        now = time.monotonic()
        if now - self._last_status >= self.status_every:
            self.write_status()
            self._last_status = now
        if n == 0 and k == 0 and (stopping or closed) and self.source.size == 0:
            if self.spill.files() and self.link.get() is not None:
                self._replay_spill()
            self.write_status()
            return False
        if n and self.nap and not (stopping or closed):
            self._stop.wait(min(self.nap, self._first + self.batch_seconds - now))
        return True

    def write_status(self) -> None:
        self.metrics["lag"] = int(self.source.size)
        self.metrics["spill_files"] = len(self.spill.files())
        self.metrics["spill_bytes"] = self.spill.bytes()
        self.metrics["outage"] = self.link.outage
        self.metrics["last_error"] = self.link.last_error or self.metrics["last_error"]
        tmp = self.state / "status.json.tmp"
        tmp.write_text(json.dumps(self.metrics))
        os.replace(tmp, self.state / "status.json")

    def run(self) -> dict:
        """Write until :meth:`stop` (then drain) or the producer closes the ring; return metrics."""
        while self.step():
            pass
        return dict(self.metrics)


def _threads(pid) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid or 'self'}/task")]
    except FileNotFoundError:                       # the process ended
        return []


def _set_policy(pid, policy: int) -> None:
    """Set every thread of process ``pid`` (None: this one) to ``policy``: Linux scheduling
    policies are per thread."""
    for tid in _threads(pid):
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except (ProcessLookupError, PermissionError):   # a thread that just ended
            pass


class IdlePolicy:
    """The writer's scheduling: SCHED_IDLE while it keeps up, normal when a ring fills.

    ``update(fill)`` takes the fullest tick ring's fill fraction: above ``high`` the process
    (all its threads) switches to SCHED_OTHER, below ``low`` back to SCHED_IDLE; threads the
    store starts later are given the current policy. The state is read from the kernel, so
    the writer (``pid=None``) and the supervisor (``pid`` = the writer's, ``may_idle=False``)
    can both act: a writer starved of its core entirely cannot notice that it is behind, so
    the supervisor, which runs at normal priority, rescues it. ``switches`` counts this
    instance's changes."""

    def __init__(self, high: float = 0.25, low: float = 0.05, pid=None, may_idle: bool = True):
        if not 0 <= low < high <= 1:
            raise ValueError(f"IdlePolicy needs 0 <= low < high <= 1, got low={low}, high={high}")
        self.high, self.low = high, low
        self.pid = pid
        self.may_idle = may_idle
        self.switches = 0
        self.finished = False
        self._nthreads = 0

    @property
    def idle(self) -> bool:
        """Whether the process runs under SCHED_IDLE (its main thread's policy)."""
        try:
            return os.sched_getscheduler(self.pid or 0) == os.SCHED_IDLE
        except ProcessLookupError:
            return False

    def start(self) -> None:
        _set_policy(self.pid, os.SCHED_IDLE)
        self._nthreads = len(_threads(self.pid))

    def finish(self) -> None:
        """Normal scheduling from now on: a writer that is draining to exit must not wait for an
        idle core (the supervisor's shutdown deadline is running)."""
        self.finished = True
        _set_policy(self.pid, os.SCHED_OTHER)

    def update(self, fill: float) -> None:
        if self.finished:
            return
        idle = self.idle
        if idle and fill > self.high:
            _set_policy(self.pid, os.SCHED_OTHER)
            self.switches += 1
            log.warning("tick ring %.0f%% full: writer back to normal scheduling until it catches up",
                        fill * 100)
        elif self.may_idle and not idle and fill < self.low:
            _set_policy(self.pid, os.SCHED_IDLE)
            self.switches += 1
        elif len(_threads(self.pid)) != self._nthreads:     # the store started threads: same policy
            _set_policy(self.pid, os.SCHED_IDLE if idle else os.SCHED_OTHER)
        self._nthreads = len(_threads(self.pid))


class WriterService:
    """Several tick sources (one per engine worker) and optional signal sources, one store,
    one loop: what the writer process runs."""

    #: Signals held while the store is unreachable; beyond this the oldest are dropped (counted).
    MAX_PENDING_SIGNALS = 1_000_000

    def __init__(self, link: StoreLink, writers, signal_sources=(), run: str = "", state_dir=None,
                 policy: Optional[IdlePolicy] = None, signal_seconds: float = 1.0):
        self.link = link
        self.policy = policy
        self.writers = list(writers)
        self.signal_sources = list(signal_sources)
        self.run_name = run
        self.state_dir = Path(state_dir) if state_dir else None
        self.signals_written = 0
        self.signals_dropped = 0
        self._last_status = 0.0
        self._sig_buf = np.empty(4096, dtype=SIGNAL_DTYPE)
        self._sig_pending: list = []
        self._sig_rows = 0
        self._sig_first = None
        self.signal_seconds = signal_seconds

    def stop(self) -> None:
        for w in self.writers:
            w.stop()

    def _signals(self, flush: bool = False) -> None:
        """Read the signal rings; store what was read once a second (or at ``flush``): one
        insert per batch, not per read, so the store does not merge a part per engine batch."""
        for src in self.signal_sources:
            k = src.pop_many(self._sig_buf, timeout=0)
            if k:
                self._sig_pending.append(self._sig_buf[:k].copy())
                self._sig_rows += k
                self._sig_first = self._sig_first or time.monotonic()
        now = time.monotonic()
        due = self._sig_rows and (flush or self._sig_rows >= 100_000 or now - self._sig_first >= self.signal_seconds)
        if due and self.link.get() is not None:
            batch = np.concatenate(self._sig_pending)
            self._sig_pending, self._sig_rows, self._sig_first = [], 0, None
            try:
                self.link.store.insert_signals(batch, self.run_name)
                self.signals_written += len(batch)
            except Exception as exc:        # noqa: BLE001 - signals are best effort
                self.link.failed(exc)
        while self._sig_rows > self.MAX_PENDING_SIGNALS:    # a long outage: keep the newest
            old = self._sig_pending.pop(0)
            self._sig_rows -= len(old)
            self.signals_dropped += len(old)
        if self.state_dir is not None and self.signal_sources and now - self._last_status >= 1.0:
            self._last_status = now
            self.write_signal_status()

    def write_signal_status(self) -> None:
        """``signals.json``: signals stored, and missed because this reader was lapped."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / "signals.json.tmp"
        tmp.write_text(json.dumps({"written": self.signals_written, "dropped": self.signals_dropped,
                                   "missed": int(sum(s.missed for s in self.signal_sources))}))
        os.replace(tmp, self.state_dir / "signals.json")

    def run(self) -> list:
        active = list(self.writers)
        wait = 0.05 / max(len(active), 1)
        while active:
            active = [w for w in active if w.step(wait)]
            self._signals()
            if self.policy is not None:
                if not self.policy.finished and any(w.draining for w in self.writers):
                    self.policy.finish()
                self.policy.update(max(w.source.size / w.source.capacity for w in self.writers))
                for w in self.writers:
                    w.metrics["sched_idle"] = int(self.policy.idle)
                    w.metrics["sched_switches"] = self.policy.switches
        self._signals(flush=True)
        if self.state_dir is not None and self.signal_sources:
            self.write_signal_status()
        self.link.close()
        return [dict(w.metrics) for w in self.writers]


def main(argv=None) -> int:
    """``python -m tickwire.engine.writer``: the writer process the daemon starts."""
    ap = argparse.ArgumentParser(prog="python -m tickwire.engine.writer",
                                 description="Drain tick rings into ClickHouse, exactly once.")
    ap.add_argument("--ring", action="append", required=True,
                    help="a blocking tick ring to consume (repeat for several workers)")
    ap.add_argument("--dsn", required=True, help="store DSN (chdb:///abs/dir or http://host:8123)")
    ap.add_argument("--database", default="tickwire")
    ap.add_argument("--state-dir", required=True, help="journal, spill and status files (one subdirectory a ring)")
    ap.add_argument("--batch-rows", type=int, default=500_000)
    ap.add_argument("--batch-seconds", type=float, default=1.0)
    ap.add_argument("--signal-ring", action="append", default=[], help="broadcast signal ring to store (optional)")
    ap.add_argument("--run", default="", help="run name stored with the signals")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--nice", type=int, default=0, help="lower the writer's scheduling priority by this much")
    ap.add_argument("--nap", type=float, default=0.02,
                    help="pause between reads while a batch fills, seconds (0: read as ticks arrive) [%(default)s]")
    ap.add_argument("--sched", choices=("normal", "idle"), default="normal",
                    help="scheduling policy: 'idle' (SCHED_IDLE) runs the writer only when its core has "
                         "nothing else to run, so it never delays latency-bound work there [%(default)s]")
    ap.add_argument("--log-file", default=None, help="append the log here instead of stderr")
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), filename=args.log_file,
                        format="%(asctime)s writer %(levelname)s %(message)s")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.nice:
        os.nice(args.nice)                   # throughput work: yield the core to latency-bound work
    from tickwire.engine.store import Store
    from tickwire.ext.ring import Ring

    link = StoreLink(lambda: Store.open(args.dsn, args.database))
    if link.get() is None:                   # connect (and create the schema) before attaching
        log.error("%s: will spill until the store answers", link.last_error)
    writers = []
    for name in args.ring:
        ring = Ring.attach(name, EVENT_DTYPE, takeover=True, spin_ns=0)     # no hurry: sleep at once
        writers.append(TickWriter(link, ring, Path(args.state_dir) / name, int(ring.created_ns),
                                  batch_rows=args.batch_rows, batch_seconds=args.batch_seconds,
                                  nap=args.nap))
    signals = [Ring.attach(name, SIGNAL_DTYPE) for name in args.signal_ring]
    policy = None
    if args.sched == "idle":                 # after set-up, which runs at normal priority
        policy = IdlePolicy()
        policy.start()
    service = WriterService(link, writers, signals, args.run, args.state_dir, policy)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    metrics = service.run()
    log.info("done: %s", json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
