"""The storage writer: drains the tick rings into ClickHouse, exactly once, losing nothing.

It runs in its own process (never on the engine's core) and reads each blocking tick ring with
*peek, then commit*: records stay in the ring until they are durable, either inserted into the
store or written to a local spill file, and only then does the writer advance the ring. So:

- **Writer killed (SIGKILL) and restarted.** Records it had not committed are still in the ring;
  the new writer attaches, takes over, and starts from the committed position.
- **Killed between an insert and the commit.** Before each insert the writer writes a one-line
  journal ``(position, count, token)`` and fsyncs it; the restarted writer re-reads exactly that
  batch and inserts it again with the same ``insert_deduplication_token``, which ClickHouse
  ignores if the first insert had landed. No duplicates.
- **Store slow, down, or slower than the feed.** The store is called from one thread of its own,
  so the rings are read while an insert runs. A batch whose insert fails, or is still running
  when the ring passes ``spill_above`` of its capacity, is written to an append-only spill file
  (written, fsynced, renamed: disk speed) and the ring is committed; while spill files exist,
  new batches join them, and the store thread replays them in order, each with its own token,
  until it has caught up. A slow store costs disk, never back-pressure on the engine.
- **Spill directory full as well** (or read-only...): named with its errno; the batch stays in
  the ring (the engine sees back-pressure, not loss) and is tried again. At shutdown the writer
  gives up on it after one more round and exits with :data:`EXIT_UNSTORED`: the ticks stay in
  the ring, which the daemon keeps for its next start.
- **SIGTERM.** The writer reads everything the producer published, writes it, and exits 0. A
  producer still alive with its ring open gets up to :data:`STOP_GRACE` seconds to push its last
  records and close it first (a SIGTERM to the whole process group reaches both at once).

Signals (:class:`SignalWriter`) follow the same discipline on the broadcast signal rings, with a
durable position of their own, so that a restarted writer stores every signal exactly once and
counts exactly those the ring overwrote before it could read them.

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

import signal

from tickwire.engine import lifeline

#: A SIGTERM/SIGINT that came while the process started (main() then drains and stops at once).
_held_stop = lifeline.hold_stop_signals() if __name__ == "__main__" else []

import argparse  # noqa: E402  (after the signals are held: the imports take a while)
import errno
import json
import logging
import os
import queue
import sys
import threading
import time
import zlib
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tickwire.engine.files import file_kind, replace_file
from tickwire.ext.records import EVENT_DTYPE, SIGNAL_DTYPE, Flag

log = logging.getLogger("tickwire.writer")

__all__ = ["TickWriter", "SignalWriter", "WriterService", "StoreLink", "SpillError", "StateError", "IdlePolicy", "main",
           "EXIT_UNSTORED", "SPILL_ABOVE"]

#: Spill files of version 2 carry a CRC-32 of their header's fields as well as their records
#: (:func:`_spill_crc`); version 1's covered the records only (a header edited by hand passed as
#: long as it parsed) and is still read.
_SPILL_MAGIC = b"TWSPILL2"
_SPILL_MAGIC_V1 = b"TWSPILL1"
#: The writer's exit status when it stopped with ticks or signals that neither the store nor the
#: spill directory would take: they are still in their rings (the daemon keeps those).
EXIT_UNSTORED = 3
#: Least free space (bytes) on the embedded store's filesystem for an insert: below it, batches
#: spill (StoreLink.disk_problem). A batch of 262,144 ticks is about 16 MiB before compression.
STORE_MIN_FREE_BYTES = 64 << 20
#: Uncommitted share of a tick ring above which a batch whose insert is still running is spilled
#: instead (the insert goes on; its result is no longer waited for).
SPILL_ABOVE = 0.5
#: Asked to stop while the producer still holds its ring open: how long the writer keeps reading
#: for the producer's last records and its close.  A SIGTERM sent to the whole process group
#: (Ctrl-C at a terminal, systemd's default KillMode) reaches the workers and the writer at once,
#: and a worker's last batch can land after the writer has read the ring empty.
STOP_GRACE = 2.0
#: Draining to stop, spill files are replayed for at most this long (s) by default: they are
#: durable, and the next start replays the rest (a slow store kept the writer replaying past the
#: daemon's shutdown bound: killed, exit 1, nothing lost: a fault-injection pass). The daemon gives
#: its writer most of its shutdown bound (``--drain-replay-seconds``)
DRAIN_REPLAY_S = 5.0


class SpillError(OSError):
    """The spill directory cannot take a batch (full, not writable...): named in the message.

    ``cause``: the directory and the problem with its errno, as in "spill directory /x is full
    (ENOSPC, errno 28)"."""

    def __init__(self, code: int, cause: str, message: str):
        super().__init__(code, message)
        self.cause = cause

    def __str__(self) -> str:
        return self.strerror


class StateError(OSError):
    """The writer's state (its journal and spill directory) cannot be used: the path and the
    problem in the message, one line at start instead of a traceback."""

    def __str__(self) -> str:
        return self.strerror


#: Where the writer leaves the one line of its last fatal error (in its --state-dir), for the
#: supervisor's log and last line; removed at each start.
FATAL_FILE = "fatal.txt"


def _state_dir(path: Path) -> Path:
    """``path`` made a directory if need be, or :class:`StateError` naming it: a regular file
    where the spill directory belongs ended every start of the writer with a FileExistsError
    traceback (once with SIGSEGV), and the daemon said only "the writer exited with status 1"."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = {errno.EEXIST: "something other than a directory is in its place",
               errno.ENOTDIR: "a part of its path is not a directory"}.get(exc.errno, exc.strerror or str(exc))
        raise StateError(exc.errno, f"writer state directory {path} is unusable: {why}") from None
    return path


def _spill_crc(meta: dict, body) -> int:
    """A version 2 spill file's CRC-32: its header's fields but ``crc32`` (canonical JSON), then
    its records."""
    head = json.dumps({k: v for k, v in meta.items() if k != "crc32"}, sort_keys=True, separators=(",", ":"))
    return zlib.crc32(body, zlib.crc32(head.encode()))


def _write_json(path: Path, obj: dict) -> None:
    """Replace ``path`` with ``obj``, durably (written, fsynced, renamed, directory fsynced). On
    failure (a full disk) the old file stays as it was and no temporary file is left."""
    replace_file(path, json.dumps(obj), sync=True)


def _problem(exc: OSError) -> str:
    """"is full (ENOSPC, errno 28)": what a directory's write failure says of it."""
    code = errno.errorcode.get(exc.errno, "?") if exc.errno else "?"
    return f"{_SPILL_PROBLEMS.get(exc.errno, f'failed: {exc.strerror or exc}')} ({code}, errno {exc.errno})"


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _set_aside(path: Path, missing_ok: bool = True) -> Path:
    """Rename damaged ``path`` to ``<name>.corrupt`` (never read again; an OSError leaves it be,
    but FileNotFoundError is raised unless ``missing_ok``); the name it was set aside as. One set
    aside before under that name is kept: this one is ``<name>.<k>.corrupt`` (a second run whose
    positions start again at 0 replaced the first's, the only copy of its ticks)."""
    aside = path.with_name(path.name + ".corrupt")
    k = 1
    while os.path.lexists(aside):
        aside = path.with_name(f"{path.name}.{k}.corrupt")
        k += 1
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        if not missing_ok:
            raise
    except OSError:
        pass
    return aside


class _Journal:
    """One line: the batch being made durable (position, count, token), fsynced."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, pos: int, n: int, token: str) -> None:
        _write_json(self.path, {"pos": pos, "n": n, "token": token})

    def read(self) -> Optional[dict]:
        """The entry (None: no batch in flight); ValueError or OSError when it is damaged."""
        entry = _read_json(self.path)
        if entry is None:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or \
                any(type(entry.get(k)) is not int or entry[k] < 0 for k in ("pos", "n")):
            raise ValueError(f"not a journal entry: {str(entry)[:80]}")
        return entry

    def clear(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class SpillCorrupt(ValueError):
    """A spill file that is not whole: ``path``, ``why``, and its header when readable."""

    def __init__(self, path: Path, why: str, meta: Optional[dict] = None):
        super().__init__(f"{path}: {why}")
        self.path, self.why, self.meta = Path(path), why, meta or {}


_SPILL_PROBLEMS = {errno.ENOSPC: "is full", errno.EDQUOT: "is over quota", errno.EACCES: "is not writable",
                   errno.EPERM: "is not writable", errno.EROFS: "is read-only"}


class _Spill:
    """Append-only spill files, one per batch: a magic, a JSON header line, the raw records.

    Named by stream and position (``<epoch>-<position>``): a ring made by a later run starts
    again at position 0, and its batches must not take the names of an earlier stream's files
    that still wait for the store."""

    #: Lines the ledger may hold with nothing outstanding before it is emptied.
    LEDGER_LINES = 4096

    def __init__(self, directory: Path, suffix: str = ".spill", what: str = "ticks"):
        self.dir = directory
        self.suffix = suffix
        self.what = what
        # The ledger: "+ name n pos" once a file is durable, "- name" before it is removed (its
        # records stored, or it set aside as corrupt). A file it holds that is gone was removed
        # by someone else: its records were never stored, and nothing else could say so.
        self.ledger = directory / f"{what}.ledger"
        self._out: Optional[dict] = None             # outstanding: name -> (n, pos)
        self._lines = 0
        self._ledger_warned = False
        self._list_warned = False

    def _load(self) -> dict:
        if self._out is None:
            out: dict = {}
            try:
                text = self.ledger.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):   # passes: read at the next call
                    return {}
                log.warning("spill ledger %s unreadable (%s): a spill file removed by hand goes unnoticed",
                            self.ledger, exc.strerror or exc)
                text = ""
            for line in text.splitlines():
                f = line.split()
                self._lines += 1
                if len(f) == 4 and f[0] == "+" and f[2].isdigit() and f[3].isdigit():
                    out[f[1]] = (int(f[2]), int(f[3]))
                elif len(f) == 2 and f[0] == "-":
                    out.pop(f[1], None)
            self._out = out
        return self._out

    def _append(self, line: str) -> bool:
        """Append ``line`` durably; False when it could not be (said once). A line written in
        part (a full disk) is cut off again: the next would continue it, one garbled line in
        place of two (found by an adversarial pass)."""
        data = line.encode()
        try:
            fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                end = os.lseek(fd, 0, os.SEEK_END)
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    os.fsync(fd)
                except OSError:
                    try:
                        os.ftruncate(fd, end)
                    except OSError:
                        pass
                    raise
            finally:
                os.close(fd)
            self._lines += 1
            self._ledger_warned = False
            return True
        except OSError as exc:
            if not self._ledger_warned:
                self._ledger_warned = True
                log.warning("spill ledger %s not written (%s): a spill file removed by hand meanwhile would go "
                            "unnoticed, and files already stored stay until they can be struck from it",
                            self.ledger, exc.strerror or exc)
            return False

    def remove(self, path: Path) -> bool:
        """A spill file is done with (stored, or set aside): struck from the ledger, then removed.
        When the strike cannot be written (a full disk) the file stays, and False: removed, the
        ledger's line for it read at the next start as a file removed by hand, its ticks "NOT
        stored" (exit status 1) though they were (an adversarial pass). Kept, it is replayed
        again later, with its token: the store drops the repeat."""
        out = self._load()
        if self._out is None:                    # the ledger unreadable just now: not known yet
            return False
        if path.name in out:
            if not self._append(f"- {path.name}\n"):
                return False
            del out[path.name]
        path.unlink(missing_ok=True)
        if not out and self._lines > self.LEDGER_LINES:
            try:
                self.ledger.unlink()
                self._lines = 0
            except OSError:
                pass
        return True

    def missing(self) -> int:
        """Records of spill files the ledger holds that are gone (removed by hand: never stored),
        each an error line, then struck from the ledger; their count."""
        out = self._load()
        if not out:
            return 0
        try:
            present = set(os.listdir(self.dir))       # (one listing, not a stat per file waiting)
        except OSError:
            return 0
        lost = 0
        for name, (n, pos) in list(out.items()):
            path = self.dir / name
            if name in present:
                continue
            if name + ".corrupt" in present or any(x.startswith(name + ".") and x.endswith(".corrupt")
                                                   for x in present):   # set aside and said so: struck
                del out[name]
                self._append(f"- {name}\n")
                continue
            log.error("spill file %s is gone but was never stored (removed by hand?): its %s %s NOT stored "
                      "(positions %d..%d)", path, f"{n:,}", self.what, pos, pos + n - 1)
            lost += n
            del out[name]
            self._append(f"- {name}\n")
        return lost

    def files(self) -> list[Path]:
        """The spill files waiting, oldest first. When the directory cannot be listed (out of
        file descriptors: the writer crashed here), those the ledger holds, said once: a file
        already gone is then taken for one removed by hand only by :meth:`missing`, which lists
        the directory itself."""
        try:
            found = sorted(self.dir.glob(f"*{self.suffix}"))
        except OSError as exc:
            if not self._list_warned:
                self._list_warned = True
                log.warning("spill directory %s cannot be listed (%s): going by its ledger until it can",
                            self.dir, exc.strerror or exc)
            return sorted(self.dir / name for name in self._load())
        self._list_warned = False
        return found

    def path_for(self, epoch: int, pos: int) -> Path:
        return self.dir / f"{epoch:020d}-{pos:020d}{self.suffix}"

    def write(self, pos: int, epoch: int, token: str, records: np.ndarray, **extra) -> Path:
        path = self.path_for(epoch, pos)
        body = np.ascontiguousarray(records).tobytes()
        meta = {"pos": pos, "n": len(records), "epoch": epoch, "token": token, **extra}
        header = json.dumps({**meta, "crc32": _spill_crc(meta, body)}).encode() + b"\n"
        try:
            # (under a name of its own, not through a symlink, swept at the next start when the
            # writer is killed: ".NAME.tmp", opened through whatever was there, was left behind)
            replace_file(path, _SPILL_MAGIC + header + body, sync=True)
        except OSError as exc:
            cause = f"spill directory {self.dir} {_problem(exc)}"
            raise SpillError(exc.errno, cause, f"{cause}: {len(records)} {self.what} stay in the ring until it "
                                               f"can take them") from None
        self._load()[path.name] = (len(records), pos)
        self._append(f"+ {path.name} {len(records)} {pos}\n")
        return path

    def known(self, path: Path) -> Optional[tuple]:
        """What the ledger holds of spill file ``path``: ``(n, pos)``, or None (read on the
        writer's thread and handed to the store thread: the ledger is the writer thread's)."""
        return self._load().get(Path(path).name)

    @staticmethod
    def _open(path: Path):
        """``(file, size)`` of spill file ``path``, only a regular file and not through a symbolic
        link (:class:`SpillCorrupt` else): a directory named like a spill file raised
        IsADirectoryError in the store thread, a FIFO blocked the writer forever in its open, and
        a symbolic link to /dev/zero read 5 GB in a second."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SpillCorrupt(path, "a symbolic link, not a spill file") from None
            raise
        try:
            st = os.fstat(fd)
            kind = file_kind(st.st_mode, "a special file")
            if kind:
                raise SpillCorrupt(path, f"{kind}, not a regular file")
            return os.fdopen(fd, "rb"), st.st_size
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _header_problem(path: Path, meta, known: Optional[tuple], v1: bool = False) -> str:
        """Why a parsed header cannot be trusted ("" when it can). A version 1 file's CRC covers
        its records only, so every field is checked against what the file's name and the ledger
        say (and a version 2 header before its CRC is computed over it): a header without
        ``token`` raised KeyError in the store thread (the writer hung, the files after it never
        stored), one without ``crc32`` put a garbage row in the store, and one carrying another
        file's token had its records dropped by ClickHouse's deduplication while
        ``rows_written`` counted them. A version 1 (``v1``) header may lack ``crc32``: the writers
        of 0e7b136 to 1627b6e wrote none, and such a file is read with its records unchecked, as
        then, once every other field passes."""
        if not isinstance(meta, dict):
            return f"its header is a JSON {type(meta).__name__}, not an object"
        for key in ("pos", "n", "epoch", "crc32"):
            v = meta.get(key)
            if key == "crc32" and v1 and "crc32" not in meta:
                continue
            if type(v) is not int or v < 0:
                return f"its header's {key!r} is {v!r}, not a count"
        if meta["n"] < 1 or meta.get("crc32", 0) >= 1 << 32:
            return f"its header's n {meta['n']} or crc32 {meta.get('crc32')} is out of range"
        name = f"{meta['epoch']:020d}-{meta['pos']:020d}{path.suffix}"
        # (writers before bfc57cd named a file by its position alone: an upgrade found every such
        # file set aside as corrupt, its ticks lost under "every tick and signal stored")
        if path.name not in (name, f"{meta['pos']:020d}{path.suffix}"):
            return f"its header (epoch {meta['epoch']}, position {meta['pos']}) names another file, {name}"
        token = meta.get("token")
        if path.suffix == ".sig":
            end = meta.get("end")
            if type(end) is not int or end < meta["pos"] + meta["n"] or not isinstance(meta.get("run"), str):
                return f"its header's end {end!r} or run {meta.get('run')!r} is wrong"
            good = isinstance(token, str) and token.startswith("sg:") and \
                token.endswith(f":{meta['epoch']}:{meta['pos']}:{end}")
        else:
            good = token == f"tw:{meta['epoch']}:{meta['pos']}:{meta['n']}"
        if not good:
            return f"its header's token {token!r} is not its own"
        if known is not None and known != (meta["n"], meta["pos"]):
            return (f"its header says {meta['n']} records at {meta['pos']}, the ledger {known[0]} at {known[1]}")
        return ""

    @staticmethod
    def header(path: Path) -> dict:
        """The header of spill file ``path`` (ValueError or OSError when it has none to trust)."""
        fh, _ = _Spill._open(path)
        with fh:
            line = fh.readline(4096)
        if not line.startswith((_SPILL_MAGIC, _SPILL_MAGIC_V1)):
            raise ValueError(f"{path} is not a tickwire spill file")
        meta = json.loads(line[len(_SPILL_MAGIC):])
        why = _Spill._header_problem(path, meta, None, line.startswith(_SPILL_MAGIC_V1))
        if why:
            raise ValueError(f"{path}: {why}")
        return meta

    @staticmethod
    def read(path: Path, dtype=EVENT_DTYPE, known: Optional[tuple] = None):
        """``(header, records)``; :class:`SpillCorrupt` when the file is not whole (its length,
        or the records' CRC-32 in its header: 64 overwritten bytes put a garbage row in the store
        and dropped the real one, unsaid), not a regular file, or its header cannot be trusted
        (:meth:`_header_problem`; ``known``: the ledger's ``(n, pos)`` for it)."""
        fh, size = _Spill._open(path)
        with fh:
            line = fh.readline(4096)
            if not line.startswith((_SPILL_MAGIC, _SPILL_MAGIC_V1)):
                raise SpillCorrupt(path, "not a tickwire spill file")
            if not line.endswith(b"\n"):
                raise SpillCorrupt(path, "its header line is cut short or too long")
            try:
                meta = json.loads(line[len(_SPILL_MAGIC):])
            except ValueError as exc:
                raise SpillCorrupt(path, f"unreadable header ({exc})") from None
            v1 = line.startswith(_SPILL_MAGIC_V1)
            why = _Spill._header_problem(path, meta, known, v1)
            if why:
                raise SpillCorrupt(path, why)
            n = meta["n"]
            if size - len(line) != n * dtype.itemsize:
                raise SpillCorrupt(path, f"{size - len(line)} bytes of records where {n} records take "
                                         f"{n * dtype.itemsize}", meta)
            body = fh.read(n * dtype.itemsize)
        if len(body) != n * dtype.itemsize:
            raise SpillCorrupt(path, f"{len(body)} bytes of records where {n} records take {n * dtype.itemsize}", meta)
        if v1:
            if "crc32" in meta and zlib.crc32(body) != meta["crc32"]:
                raise SpillCorrupt(path, "its records do not match the CRC-32 in its header", meta)
        elif _spill_crc(meta, body) != meta["crc32"]:
            raise SpillCorrupt(path, "its header or records do not match the CRC-32 in its header", meta)
        return meta, np.frombuffer(body, dtype=dtype, count=n).copy()

    @staticmethod
    def quarantine(exc: "SpillCorrupt", what: str, known: Optional[tuple] = None) -> Optional[int]:
        """Set a corrupt spill file aside (``<name>.corrupt``, never replayed) and say so; the
        records it should have held: as the ledger says (``known``, ``(n, pos)``), else as its
        header says when that could be trusted (0: unknown, said so). A file whose header was
        unreadable was counted nowhere: 5,000 ticks lost with the writer's counts at 0 and exit 0.
        None when the file is gone meanwhile (removed by hand): its ledger entry must then stay
        for :meth:`missing` to count and say (the replay struck it, and it was counted nowhere)."""
        if known is not None:
            n, pos = known
        elif exc.meta:
            n, pos = exc.meta["n"], exc.meta["pos"]
        else:
            n, pos = 0, None
        try:
            bad = _set_aside(exc.path, missing_ok=False)
        except FileNotFoundError:               # gone meanwhile: the ledger's check says so (missing())
            return None
        if n:
            log.error("spill file %s is corrupt (%s): set aside as %s, its %s %s NOT stored (positions %d..%d)",
                      exc.path, exc.why, bad.name, f"{n:,}", what, pos, pos + n - 1)
        else:
            log.error("spill file %s is corrupt (%s): set aside as %s; neither its header nor the spill ledger "
                      "says how many %s it held: they are NOT stored and NOT counted", exc.path, exc.why,
                      bad.name, what)
        return n

    def bytes(self) -> int:
        """The spill files' size. Files may vanish while it runs: the store thread renames a
        damaged one aside (a FileNotFoundError from here once killed the writer)."""
        total = 0
        for p in self.files():
            try:
                total += p.lstat().st_size
            except FileNotFoundError:
                pass
        return total


class _StoreThread:
    """One daemon thread that runs the store calls in order (the store is not thread-safe). A
    daemon thread, so that a store that never answers cannot keep the process from exiting."""

    def __init__(self):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.busy_since = None          # monotonic start of the call running now
        self._thread = threading.Thread(target=self._run, name="tw-store", daemon=True)
        self._thread.start()

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self._q.put((fut, fn, args))
        return fut

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            self.busy_since = time.monotonic()
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:         # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)
            finally:
                self.busy_since = None

    def stop(self, timeout: float) -> bool:
        self._q.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class StoreDiskProblem(OSError):
    """The embedded store's directory cannot take an insert (StoreLink.disk_problem)."""


class StoreLink:
    """The writer process's one connection to the store, shared by its tick and signal sources.

    Every store call runs on the link's own thread (:meth:`submit`): the sources' loop never
    waits on the store, so a slow or hung insert cannot stop the rings from being read. Outage
    bookkeeping: after a failure nobody tries again for ``retry_seconds``. ``insert_delay``
    (seconds, 0 by default) slows every insert down: a test and benchmark knob
    (``store.debug_insert_delay_s``) that makes a store slower than the feed on demand.
    """

    def __init__(self, open_store: Callable, retry_seconds: float = 1.0, insert_delay: float = 0.0,
                 stall_seconds: float = 30.0, disk=None, min_free: int = STORE_MIN_FREE_BYTES):
        self.open_store = open_store
        self.disk, self.min_free = disk, int(min_free)
        self._disk_id = None                    # (st_dev, st_ino) of the store directory first seen
        self.retry_seconds = retry_seconds
        self.insert_delay = insert_delay
        self.stall_seconds = stall_seconds
        self._stall_said = None
        self.store = None
        self.outage = False
        self.last_error = ""
        self._down_until = 0.0
        self._logged = False
        self._thread = _StoreThread()

    def submit(self, fn, *args) -> Future:
        """Run ``fn(*args)`` on the store thread, after the calls submitted before it."""
        return self._thread.submit(fn, *args)

    def stall(self) -> str:
        """What says the store call running now has not returned for ``stall_seconds`` (logged once
        a stall), else "". A store that takes connections and never answers held the writer in
        its first call for clickhouse-connect's 300 s with no status and no outage: every
        alert blind (an adversarial pass); the status now says it as an outage."""
        t = self._thread.busy_since
        if t is None or time.monotonic() - t < self.stall_seconds:
            return ""
        msg = f"store not answering: a call has been waiting for {time.monotonic() - t:.0f} s"
        self._say_stall(msg)
        return msg

    def _say_stall(self, msg: str) -> None:
        """Log ``msg`` once for the store call running now."""
        t = self._thread.busy_since
        if self._stall_said != t:
            self._stall_said = t
            log.error("%s; the ticks spill past the ring's threshold until it answers", msg)

    def get(self):
        """The store, opened if need be; None during an outage (store thread only)."""
        if self.store is None:
            if time.monotonic() < self._down_until:
                return None
            try:
                self.store = self.open_store()
            except Exception as exc:            # noqa: BLE001 - any failure is an outage
                self.failed(exc)
                return None
            if self.disk is not None and self._disk_id is None:
                try:                            # (the directory it opened: replaced later, an outage)
                    d = os.stat(self.disk)
                    self._disk_id = (d.st_dev, d.st_ino)
                except OSError:
                    pass
        return self.store

    def insert(self, method: str, *args, **kwargs) -> bool:
        """``store.<method>(*args, **kwargs)``; False (and an outage) when it failed (store thread only)."""
        # the disk first, and the store left open: closed, each retry's open wrote its schema
        # checks and an instruments part into the disk found short (a review)
        problem = self.disk_problem(sum(getattr(a, "nbytes", 0) for a in args))
        if problem:
            self.failed(StoreDiskProblem(problem), close=False)
            return False
        store = self.get()
        if store is None:
            return False
        if self.insert_delay:
            time.sleep(self.insert_delay)
        try:
            getattr(store, method)(*args, **kwargs)
        except Exception as exc:                # noqa: BLE001
            self.failed(exc)
            return False
        # (back once an insert goes in, not once it opens: a store whose disk was full opened
        # each second and failed its insert, "unavailable" and "reachable again" a second apart,
        # where the outage is said once: an adversarial pass)
        if self.outage:
            log.warning("store reachable again")
        self.outage = False
        self._logged = False
        return True

    def disk_problem(self, nbytes: int = 0) -> str:
        """What says the embedded store's directory (``disk``) cannot take an insert of ``nbytes``
        (raw), else "": its filesystem has less free than ``min_free`` or four times the batch
        (chDB acknowledged inserts into a disk that filled as it wrote, with parts of empty files
        that the next open set aside as broken: ticks committed as stored and lost, exit 0: an
        adversarial pass), or it is not the directory opened. Either way the batch spills
        instead. A margin, not a guarantee: merges and other writers share the disk."""
        if self.disk is None:
            return ""
        # the directory itself, as first seen: removed (rm -rf) or replaced while the writer ran,
        # chDB went on inserting into what it had open, nothing said, and a fresh open found no
        # database (an adversarial pass). An outage until the daemon is started again
        try:
            d = os.stat(self.disk)
        except OSError:
            d = None
        ident = (d.st_dev, d.st_ino) if d is not None else None
        if ident is None or (self._disk_id is not None and ident != self._disk_id):
            return (f"the store directory {self.disk} was removed or replaced while the writer ran: what it held "
                    f"is not there; spilling until the daemon is started again")
        try:
            st = os.statvfs(self.disk)
        except OSError:
            return ""
        free, spare = st.f_bavail * st.f_frsize, max(self.min_free, 4 * nbytes)
        if free >= spare:
            return ""
        return (f"the store's disk ({self.disk}) has {free / 2**20:.1f} MiB free, below the "
                f"{spare / 2**20:.0f} MiB kept spare")

    def failed(self, exc, close: bool = True) -> None:
        from tickwire.engine.store import redact

        self.outage = True
        self._down_until = time.monotonic() + self.retry_seconds
        if close and self.store is not None:
            try:
                self.store.close()
            except Exception:                   # noqa: BLE001 - it is already failing
                pass
            self.store = None
        self.last_error = f"store unavailable: {type(exc).__name__}: {redact(str(exc))[:300]}"
        if not self._logged:
            self._logged = True
            log.error("%s; spilling until it is back", self.last_error)

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def close(self, timeout: float = 30.0) -> None:
        """Close the store after the calls already submitted (waiting at most ``timeout``)."""
        try:
            self.submit(self._close).result(timeout)
        except Exception as exc:                # noqa: BLE001 - closing at exit
            log.warning("the store did not close cleanly: %s", exc)
        self._thread.stop(1.0)


class _Batch:
    """Ticks cut from the ring and journalled, not yet committed."""

    __slots__ = ("buf", "pos", "n", "token", "spilled", "insert_retry", "spill_retry", "insert_failed",
                 "spill_failed")

    def __init__(self, buf, pos: int, n: int, token: str):
        self.buf, self.pos, self.n, self.token = buf, pos, n, token
        self.spilled: Optional[Path] = None          # its spill file, once written
        self.insert_retry = self.spill_retry = 0.0   # not before these (monotonic) times
        self.insert_failed = self.spill_failed = None

    @property
    def events(self) -> np.ndarray:
        return self.buf[:self.n]


class _Task:
    """The one store call a source has running: the insert of a batch, or a spill replay."""

    __slots__ = ("fut", "batch", "path", "started")

    def __init__(self, fut: Future, batch: Optional[_Batch], path: Optional[Path], started: float):
        self.fut, self.batch, self.path, self.started = fut, batch, path, started


_UNWRITABLE: set = set()                     # status files a failing disk refused (said once each)


def write_status_file(path: Path, body: dict) -> None:
    """Write a status file atomically. A full or failing disk is said once per file and the work
    goes on: the status is for monitoring (with the state directory full at a stop, the writer
    crashed here, and the daemon's last line gave "the writer exited with status 1" rather than
    the spill directory's ENOSPC it had met)."""
    try:
        replace_file(path, json.dumps(body))
    except OSError as exc:
        if path not in _UNWRITABLE:
            _UNWRITABLE.add(path)
            log.warning("cannot write %s (%s): it stays as it was until it can be written", path, exc)
        return
    _UNWRITABLE.discard(path)


class TickWriter:
    """Drains one blocking tick source into the store; see the module docstring for the
    guarantees.

    The writer holds at most one batch that is cut from the ring but not yet committed, and
    has at most one store call running (its insert, or the replay of a spill file); everything
    else happens on the caller's thread without waiting on the store.

    Parameters
    ----------
    link : StoreLink or callable
        The shared store connection (a callable returning a Store is wrapped in one).
    source : Ring
        The tick ring, attached as its (only) consumer: ``peek_many``, ``advance``,
        ``committed``, ``pending``, ``head``, ``size``, ``capacity``, ``producer_closed``.
    state_dir : path
        Where this source's journal, spill files and status file live (created if missing).
    epoch : int
        Identifies the stream (the tick ring's creation time): stored with every tick.
    nap : float
        With a batch begun but not yet due, pause this long between reads, so that the writer
        wakes a few dozen times a second rather than once per engine batch (the ring holds
        the ticks meanwhile; 0: read as ticks arrive).
    spill_above : float
        Share of the ring's capacity, uncommitted, above which a batch whose insert is still
        running is spilled instead (:data:`SPILL_ABOVE`).
    """

    def __init__(self, link, source, state_dir, epoch: int, *, batch_rows: int = 500_000,
                 batch_seconds: float = 1.0, retry_seconds: float = 1.0, status_every: float = 1.0,
                 nap: float = 0.0, spill_above: float = SPILL_ABOVE, drain_replay_s: float = DRAIN_REPLAY_S):
        if batch_rows < 1 or batch_seconds <= 0:
            raise ValueError("writer.batch_rows must be >= 1 and writer.batch_seconds > 0")
        self.drain_replay_s = float(drain_replay_s)
        if not 0 < spill_above <= 1:
            raise ValueError(f"spill_above must be in (0, 1], got {spill_above}")
        self.link = link if isinstance(link, StoreLink) else StoreLink(link, retry_seconds)
        self.source = source
        self.state = Path(state_dir)
        self.spill = _Spill(self.state / "spill")
        _state_dir(self.spill.dir)
        self.journal = _Journal(self.state / "inflight.json")
        self.epoch = int(epoch)
        # A batch is cut when it is full, and the ring goes on filling while it is inserted: one
        # of half the spill threshold leaves the other half for that time. A larger one (500,000
        # rows on the default 2**20 ring) would pass the threshold at 1 M ticks/s during every
        # insert and send every batch through the spill file (measured: bench_store.py --rate).
        self.batch_rows = min(batch_rows, max(1, int(source.capacity * spill_above / 2)))
        if self.batch_rows < batch_rows:
            log.info("batch_rows %d capped at %d: half the spill threshold of ring %s (%d ticks), so that a batch being "
                     "inserted leaves room below the spill threshold", batch_rows, self.batch_rows,
                     getattr(source, "name", "?"), source.capacity)
        self.batch_seconds = batch_seconds
        self.retry_seconds = retry_seconds
        self.status_every = status_every
        self.nap = nap
        self.spill_above = spill_above
        self.gave_up = ""                     # why ticks were left in the ring at the end, if they were
        self._spill_cause = ""
        self._journal_retry = 0.0             # a batch could not be journalled: not cut again before
        self._journal_failed = None           # ... when that last happened
        self._stop = threading.Event()
        self._buf = np.empty(self.batch_rows, dtype=EVENT_DTYPE)
        self._spare: list = []
        self._n = 0
        self._first = None
        self._held: Optional[_Batch] = None
        self._task: Optional[_Task] = None
        self._replay_retry = 0.0
        self._replay_failed = None
        self._drain_since = None
        self._last_status = 0.0
        self._recovered = False
        self._spill_reported = False
        self.metrics = {
            "rows_written": 0, "batches_written": 0, "rows_spilled": 0, "batches_spilled": 0,
            "batches_replayed": 0, "spill_bytes": 0, "spill_files": 0, "lag": 0, "unstored": 0,
            "outage": False, "last_error": "", "spill_error": "", "journal_error": "", "gave_up": "", "epoch": self.epoch, "sched_idle": 0,
            "sched_switches": 0, "rows_corrupt": 0, "rows_missing": 0, "files_uncounted": 0,
        }

    @property
    def draining(self) -> bool:
        """Asked to stop, or the producer closed the ring: writing what is left, then done."""
        return self._stop.is_set() or self.source.producer_closed

    def stop(self) -> None:
        """Ask the writer to drain what was published, write it, and finish."""
        self._stop.set()

    @property
    def blocked(self) -> bool:
        """The ticks it has read can be made durable nowhere for now: the journal cannot be
        written, or the held batch failed both the store and the spill."""
        b = self._held
        return self._journal_failed is not None or (
            b is not None and b.insert_failed is not None and b.spill_failed is not None)

    def behind(self) -> float:
        """How far behind it is, a share of the ring, for its scheduling: what is not committed
        (read or not), as the supervisor measures the ring's fill. Going by what it had not
        read, a writer with a batch in flight (a slow insert, or blocked) went back to SCHED_IDLE
        while the supervisor, seeing the ring fill, put it back on normal scheduling, ten times a
        second, each two log lines (adversarial passes: the state directory's disk full, a slow
        store)."""
        src = self.source
        return (src.head - src.committed) / src.capacity

    # -- buffers ---------------------------------------------------------------------------
    def _take_buffer(self) -> np.ndarray:
        """The read buffer becomes the held batch's; reading goes on in a spare."""
        buf = self._buf
        self._buf = self._spare.pop() if self._spare else np.empty(self.batch_rows, dtype=EVENT_DTYPE)
        return buf

    def _give_back(self, buf) -> None:
        if len(buf) == self.batch_rows and not self._spare:
            self._spare.append(buf)

    # -- durability ------------------------------------------------------------------------
    def _behind(self) -> bool:
        src = self.source
        return src.head - src.committed > self.spill_above * src.capacity

    def _insert_task(self, events: np.ndarray, pos: int, token: str) -> bool:     # store thread
        return self.link.insert("insert_ticks", events, epoch=self.epoch, first_ord=pos, token=token)

    def _replay_task(self, path: Path, known: Optional[tuple]):                    # store thread
        try:
            meta, events = _Spill.read(path, known=known)
        except SpillCorrupt as exc:
            n = _Spill.quarantine(exc, "ticks", known)
            if n is None:                          # gone: left in the ledger, for missing()
                return True, None
            self.metrics["rows_corrupt"] += n
            self.metrics["files_uncounted"] += not n
            return True, 0
        ok = self.link.insert("insert_ticks", events, epoch=meta["epoch"], first_ord=meta["pos"], token=meta["token"])
        return ok, meta["n"]

    def _cut(self, n: int, now: float) -> bool:
        """Journal the first ``n`` uncommitted ticks as the held batch; False when the journal
        cannot be written (its directory full: the state directory's filesystem). No batch is
        stored unjournalled (a writer killed during its insert would cut it again otherwise, by
        another count, and store some ticks twice): they wait in the ring, read already, and the
        cut is tried again every ``retry_seconds``. The writer crashed here, and at every restart,
        until the daemon gave up (an adversarial pass, the state directory's disk filled)."""
        pos = self.source.committed
        token = f"tw:{self.epoch}:{pos}:{n}"
        try:
            self.journal.write(pos, n, token)
        except OSError as exc:
            first = self._journal_failed is None
            self._journal_failed, self._journal_retry = now, now + self.retry_seconds
            cause = f"state directory {self.state} {_problem(exc)}: the next batch cannot be journalled"
            self.metrics["journal_error"] = cause
            if first:
                log.error("%s; its %d ticks and those after them wait in the tick ring until it can "
                          "(tried again every %.0f s)", cause, n, self.retry_seconds)
            if self._stop.is_set() and now - self._drain_since >= self.retry_seconds:
                # stopping: left in the ring, kept for the next start (not when the producer alone
                # closed: a worker SIGTERMed alone, whose successor takes the ring over; given up,
                # the ring was never read again until the stop: a review)
                self.gave_up = cause
                log.error("%d ticks not stored (%s): they stay in ring %s", self.source.head - self.source.committed,
                          cause, self.source.name.lstrip("/"))
            return False
        if self._journal_failed is not None:
            self._journal_failed = None
            self.metrics["journal_error"] = ""
            log.info("state directory %s writable again: batches are journalled and stored", self.state)
        self._held = _Batch(self._take_buffer(), pos, n, token)
        return True

    def _commit_held(self) -> None:
        b = self._held
        self.source.advance(b.n)
        self.journal.clear()
        self._held = None
        if self._task is None or self._task.batch is not b:
            self._give_back(b.buf)              # (else its insert still reads it: given back when it ends)

    def _spill_held(self, now: float) -> bool:
        b = self._held
        path = self.spill.path_for(self.epoch, b.pos)
        known = self.spill.known(path)
        try:
            # A writer killed after spilling this batch wrote it already: the ledger says so. A
            # file of that name holding another batch (another count from this position) was
            # taken for this one, storing some ticks twice or losing some, unsaid: it is replaced
            # (its ticks are in the ring still: the position was never committed).
            if not (known == (b.n, b.pos) and path.exists()):
                if known is not None and known != (b.n, b.pos):
                    log.warning("spill file %s holds %d ticks from position %d, this batch %d: replaced with "
                                "this batch (the rest are still in the ring)", path, known[0], known[1], b.n)
                self.spill.write(b.pos, self.epoch, b.token, b.events)
        except SpillError as exc:
            b.spill_failed, b.spill_retry = now, now + self.retry_seconds
            self.metrics["spill_error"] = str(exc)
            self._spill_cause = exc.cause
            if not self._spill_reported:
                self._spill_reported = True
                log.error("%s", exc)
            return False
        self._spill_reported = False
        self.metrics["spill_error"] = ""
        b.spilled = path
        self.metrics["rows_spilled"] += b.n
        self.metrics["batches_spilled"] += 1
        self._commit_held()
        return True

    def _settle(self, now: float) -> None:
        """Move the held batch towards durability without waiting on the store: insert it when
        the store is free and nothing is spilled, else spill it; commit it once either worked."""
        b = self._held
        if b is None:
            return
        t = self._task
        if t is not None and t.batch is b:                  # its insert is running
            slow = self._behind() or (self.draining and now - t.started > self.batch_seconds)
            if slow and now >= b.spill_retry:
                self._spill_held(now)                       # committed; the insert goes on unwaited
            return
        if t is None and now >= b.insert_retry and not self.spill.files():
            self._task = _Task(self.link.submit(self._insert_task, b.events, b.pos, b.token), b, None, now)
            return
        if now >= b.spill_retry and self._spill_held(now):
            return
        if t is None and now >= b.insert_retry:             # the spill cannot take it: the store then
            self._task = _Task(self.link.submit(self._insert_task, b.events, b.pos, b.token), b, None, now)
            return
        since = self._drain_since
        # stopping only: a ring its producer alone closed (a worker SIGTERMed alone) is taken over
        # by its successor; given up, it was never read again until the stop (an adversarial pass)
        if self._stop.is_set() and since is not None and b.insert_failed is not None \
                and b.spill_failed is not None and min(b.insert_failed, b.spill_failed) >= since:
            self.gave_up = f"the store is unavailable and {self._spill_cause}"
            log.error("%d ticks not stored (%s): they stay in ring %s", self.source.head - self.source.committed,
                      self.gave_up, self.source.name.lstrip("/"))

    def _poll(self, now: float) -> None:
        """Take in the result of the running store call, if it has ended."""
        t = self._task
        if t is None or not t.fut.done():
            return
        self._task = None
        if t.batch is None:                                  # a replay
            try:
                ok, n = t.fut.result()
            except Exception as exc:                         # noqa: BLE001 - one file must not end the writer
                log.error("spill file %s could not be replayed (%s: %s): tried again in %.0f s", t.path,
                          type(exc).__name__, exc, self.retry_seconds)
                ok, n = False, 0
            if ok:
                # (n None: gone, its ledger entry kept for missing(); a file not removed, its
                # strike not written, is replayed again later, and counted then)
                if n is not None and not self.spill.remove(t.path):
                    # (a failed replay for the drain too: waiting for the strike hung a stop)
                    self._replay_retry, self._replay_failed = now + self.retry_seconds, now
                elif n:                                      # (0: set aside as corrupt, nothing stored)
                    self.metrics["rows_written"] += n
                    self.metrics["batches_written"] += 1
                    self.metrics["batches_replayed"] += 1
            else:
                self._replay_retry, self._replay_failed = now + self.retry_seconds, now
            return
        b, ok = t.batch, t.fut.result()
        if b is self._held:                                  # still waiting for it
            if ok:
                self.metrics["rows_written"] += b.n
                self.metrics["batches_written"] += 1
                self._commit_held()
            else:
                b.insert_failed, b.insert_retry = now, now + self.retry_seconds
            return
        if ok and b.spilled is not None and b.spilled.exists() and self.spill.remove(b.spilled):
            self.metrics["rows_written"] += b.n              # spilled while it ran: done twice
            self.metrics["batches_written"] += 1
        self._give_back(b.buf)

    def _replay(self, now: float) -> None:
        if self._task is not None or now < self._replay_retry:
            return
        if self._drain_since is not None and now - self._drain_since > self.drain_replay_s:
            return                                       # (left for the next start: DRAIN_REPLAY_S)
        files = self.spill.files()
        if files:
            known = self.spill.known(files[0])
            self._task = _Task(self.link.submit(self._replay_task, files[0], known), None, files[0], now)

    def _recover(self) -> None:
        """Hold again the batch a killed writer left in flight, exactly as it was journalled."""
        self._recovered = True
        try:
            entry = self.journal.read()
        except (OSError, ValueError) as exc:
            entry = self._journal_damaged(exc)
        if not entry:
            return
        committed = self.source.committed
        if entry["pos"] != committed or entry["token"] != f"tw:{self.epoch}:{entry['pos']}:{entry['n']}":
            self.journal.clear()               # it was committed before the crash (or is another stream's)
            return
        buf = np.empty(entry["n"], dtype=EVENT_DTYPE)
        got = 0
        while got < entry["n"]:
            k = self.source.peek_many(buf[got:], timeout=5.0)
            if k == 0:
                raise RuntimeError(f"journalled batch at {committed} ({entry['n']} ticks) is no longer in the ring")
            got += k
        log.warning("re-writing the batch a previous writer left in flight (%d ticks at %d)", got, committed)
        self._held = _Batch(buf, committed, entry["n"], entry["token"])

    def _journal_damaged(self, exc: Exception) -> Optional[dict]:
        """The journal is unreadable (a garbage inflight.json crashed every start, nothing
        stored): set aside, and its batch found again. A batch spilled before the writer died
        (its file at the committed position) is that batch, held again exactly (count and token
        from the ledger or the file's header) and committed against its file: found from the
        store instead, which holds none of it, the next writer's batch of another size was taken
        for that file's, and ticks were stored twice or lost, unsaid. Otherwise only the batch
        in flight can have put ticks of this stream at or past the committed position in the
        store, so their count gives its token back: held again with it, it is dropped by
        ClickHouse if it had landed. When the store cannot say, or its count may fall short of
        the batch (a crash between the inserts of its market and snapshot rows, with snapshot
        rows at its end), that is an error line: those ticks may be stored twice."""
        path = self.journal.path
        aside = _set_aside(path)
        pos = self.source.committed
        n = self._spilled_batch(pos)
        if n:
            log.warning("journal %s is damaged (%s): set aside as %s; the batch in flight at position %d had been "
                        "spilled (%d ticks): held again as it was and committed (stored once)", path, exc,
                        aside.name, pos, n)
            return {"pos": pos, "n": n, "token": f"tw:{self.epoch}:{pos}:{n}"}
        try:
            landed, snapshots = self.link.submit(self._landed_task, pos).result(30.0)
        except Exception:                          # noqa: BLE001 - a store that does not answer
            landed = snapshots = None
        if landed is None:
            log.error("journal %s is damaged (%s): set aside as %s; the store cannot say whether the batch in "
                      "flight at position %d had landed: if it had, up to one batch of ticks from position %d of "
                      "stream %d may now be stored twice", path, exc, aside.name, pos, pos, self.epoch)
            return None
        if not landed:
            log.warning("journal %s is damaged (%s): set aside as %s; nothing at or past position %d had reached "
                        "the store", path, exc, aside.name, pos)
            return None
        # Market rows are inserted before snapshot rows: with none of the latter stored, the batch
        # may have had snapshot rows that never landed, after the count or among it
        if snapshots or not self._snapshot_within(landed + 1):
            log.warning("journal %s is damaged (%s): set aside as %s; the store holds %d ticks from position %d: "
                        "that batch is inserted again with its token (stored once)", path, exc, aside.name, landed,
                        pos)
        else:
            log.error("journal %s is damaged (%s): set aside as %s; the store holds %d ticks from position %d, but "
                      "the batch in flight may have held more (its snapshot rows had not landed): those %d ticks "
                      "are inserted again and may be stored twice", path, exc, aside.name, landed, pos, landed)
        return {"pos": pos, "n": landed, "token": f"tw:{self.epoch}:{pos}:{landed}"}

    def _spilled_batch(self, pos: int) -> int:
        """The count of the spill file of this stream at ``pos`` (from the ledger, else its
        header when it can be trusted); 0 when there is none."""
        path = self.spill.path_for(self.epoch, pos)
        known = self.spill.known(path)
        if known is not None and known[1] == pos and path.exists():
            return known[0]
        try:
            return _Spill.header(path)["n"]
        except (OSError, ValueError):
            pass
        # named by its position alone, by a writer before bfc57cd (a review: with the journal
        # damaged too, such a batch was stored twice)
        try:
            head = _Spill.header(self.spill.dir / f"{pos:020d}{self.spill.suffix}")
        except (OSError, ValueError):
            return 0
        return head["n"] if head.get("epoch") == self.epoch and head.get("pos") == pos else 0

    def _snapshot_within(self, n: int) -> bool:
        """Whether the first ``n`` uncommitted ticks in the ring hold a snapshot row (read, then
        the ring's read cursor moved back)."""
        buf = np.empty(n, dtype=EVENT_DTYPE)
        got = 0
        while got < n:
            k = self.source.peek_many(buf[got:], timeout=0.2)
            if k == 0:
                break
            got += k
        self.source.rewind()
        return bool((buf[:got]["flags"] & np.uint32(Flag.SNAPSHOT)).any())

    def _landed_task(self, pos: int) -> tuple:                                     # store thread
        """``(count, snapshots)``: how many ticks of this stream from ``pos`` the store holds (up
        to its last one), and whether any of them are snapshot rows; ``(None, None)`` when it
        cannot be asked."""
        store = self.link.get()
        if store is None:
            return None, None
        try:
            end, snapshots = pos, False
            for table in ("ticks", "snapshots"):
                (count, last), = store.client.query(
                    f"SELECT count(), max(ord) FROM {store.database}.{table} "
                    f"WHERE epoch = {int(self.epoch)} AND ord >= {int(pos)}").result_rows
                if count:
                    end = max(end, int(last) + 1)
                    snapshots = snapshots or table == "snapshots"
            return end - pos, snapshots
        except Exception as exc:                   # noqa: BLE001
            log.warning("the store could not be asked for the ticks at position %d (%s)", pos, exc)
            return None, None

    # -- the loop --------------------------------------------------------------------------
    def step(self, wait: float = 0.05) -> bool:
        """Read what is there (waiting up to ``wait`` s), cut a batch when one is due, move the
        held batch and the spill along.

        Returns False once stopped (or the producer closed) and everything is durable, or when
        the writer gave up on ticks it could make durable nowhere (:attr:`gave_up`)."""
        if not self._recovered:
            self._recover()
        now = time.monotonic()
        if self._drain_since is None and self.draining:
            self._drain_since = now
        self._poll(now)
        self._settle(now)
        stopping = self._stop.is_set()
        if stopping and self._drain_since is None:    # (stop() may come from another thread meanwhile)
            self._drain_since = now
        # stopped, but a live producer may still push its last records and close: wait for that
        lingering = stopping and now - self._drain_since < STOP_GRACE and not self.source.producer_closed \
            and getattr(self.source, "producer_alive", False)
        n = self._n
        k = 0
        if n < self.batch_rows:
            busy = self._task is not None or self._held is not None or lingering
            k = self.source.peek_many(self._buf[n:], timeout=min(wait, 0.01) if busy else (0 if stopping else wait))
        elif self._held is not None:
            time.sleep(min(wait, 0.01))                # a full batch waits for the one before it
        now = time.monotonic()
        if k:
            n += k
            self._first = self._first or now
        closed = self.source.producer_closed
        if closed and self._drain_since is None:      # the producer closed during this step
            self._drain_since = now
        due = n == self.batch_rows or (n and (stopping or closed or now - self._first >= self.batch_seconds))
        unjournalled = False
        if self._held is None and due:
            if now >= self._journal_retry and self._cut(n, now):
                n = 0
                self._first = None
                self._settle(now)
            else:
                unjournalled = True                  # (the journal cannot be written: see _cut)
        self._n = n
        self._replay(now)
        if now - self._last_status >= self.status_every:
            self.write_status()
            self._last_status = now
        if self.gave_up:
            self.write_status()
            return False
        if (stopping or closed) and not (lingering and not closed) and n == 0 and self._held is None \
                and self._task is None and self.source.size == 0 and self._replayed_all():
            self.write_status()
            return False
        if n and self.nap and self._held is None and not (stopping or closed):
            self._stop.wait(min(self.nap, self._first + self.batch_seconds - now))
        elif unjournalled:
            # nothing to do until the next try: the loop spun a core at 100% otherwise, for as
            # long as the disk stayed full (a review)
            time.sleep(max(0.0, min(wait, self._journal_retry - time.monotonic())))
        return True

    def reopened(self) -> bool:
        """Whether the stream goes on after :meth:`step` returned False: a worker that exited
        cleanly (a SIGTERM to it alone) closed its ring, and the worker the supervisor started in
        its place took the ring over (which clears the closed flag), or did and has closed it
        again already with ticks in it (the writer starved of CPU meanwhile: a review found them
        left for the next start). A new drain begins: the writer reads the ring again from where
        it stood. Not once stopped or given up."""
        if self._stop.is_set() or self.gave_up or (self.source.producer_closed and self.source.size == 0):
            return False
        self._drain_since = None
        return True

    def idle(self) -> None:
        """Done with a closed ring while the writer serves others: keep the status file fresh (a
        status that stops is read as a stopped writer)."""
        now = time.monotonic()
        if now - self._last_status >= self.status_every:
            self.write_status()
            self._last_status = now

    def _replayed_all(self) -> bool:
        """Draining: no spill left, the store failed a replay since the drain began, or the drain
        has replayed for ``drain_replay_s`` (:data:`DRAIN_REPLAY_S` by default)."""
        failed = self._replay_failed
        return not self.spill.files() or (failed is not None and failed >= self._drain_since) or \
            time.monotonic() - self._drain_since > self.drain_replay_s

    def write_status(self) -> None:
        self.metrics["lag"] = int(self.source.size)
        self.metrics["unstored"] = int(self.source.head - self.source.committed)
        self.metrics["rows_missing"] += self.spill.missing()
        self.metrics["spill_files"] = len(self.spill.files())
        self.metrics["spill_bytes"] = self.spill.bytes()
        stall = self.link.stall()
        self.metrics["outage"] = self.link.outage or bool(stall)
        self.metrics["last_error"] = stall or self.link.last_error
        self.metrics["gave_up"] = self.gave_up
        write_status_file(self.state / "status.json", self.metrics)

    def run(self) -> dict:
        """Write until :meth:`stop` (then drain) or the producer closes the ring; return metrics."""
        while self.step():
            pass
        return dict(self.metrics)


class SignalWriter:
    """Stores one broadcast signal ring exactly once, resuming where it stopped.

    The ring never waits for its readers, so the writer keeps a position of its own. Signals
    read are written to a spill file (fsynced, renamed, with the token
    ``sg:<ring>:<epoch>:<start>:<end>`` of their position range) and the position after them
    is saved (``position.json``) before they are inserted; a file is removed once its insert
    landed. A restarted writer replays leftover files with their tokens (ClickHouse drops
    what had landed) and resumes at the saved position, so nothing is stored twice or skipped.
    Signals the ring overwrote before the writer read them (it was down, stopped, or a whole
    ring behind) are counted exactly in :attr:`missed` (kept in ``position.json`` across
    restarts) and logged with their positions.

    Parameters
    ----------
    ring : Ring
        The signal ring, attached as a broadcast consumer at ``start="oldest"`` (the writer
        skips what it stored before).
    """

    def __init__(self, link: StoreLink, ring, state_dir, run: str, *, batch_seconds: float = 1.0,
                 batch_rows: int = 100_000, retry_seconds: float = 1.0, drain_replay_s: float = DRAIN_REPLAY_S):
        self.link, self.ring, self.run = link, ring, run
        self.drain_replay_s = float(drain_replay_s)
        self.name = ring.name.lstrip("/")
        self.epoch = int(ring.created_ns)
        self.state = Path(state_dir)
        self.spill = _Spill(self.state / "spill", ".sig", "signals")
        _state_dir(self.spill.dir)
        self.position_path = self.state / "position.json"
        self.batch_seconds, self.batch_rows, self.retry_seconds = batch_seconds, batch_rows, retry_seconds
        saved = self._saved_position()
        # after a damaged position.json the position is unknown: the first read starts from the
        # ring's oldest (or the spill files' end), not from 0, which counted the signals before
        # the oldest as lapped (a false error line and thousands added to missed)
        self._unknown = saved is None
        saved = saved or {}
        self.missed = saved.get("missed", 0)
        self.pos = saved["pos"] if saved.get("epoch") == self.epoch else 0
        for path in self.spill.files():
            try:
                meta = _Spill.header(path)
            except (OSError, ValueError):               # (a corrupt one is set aside when replayed)
                continue
            if meta.get("epoch") == self.epoch and "end" in meta:
                self.pos = max(self.pos, meta["end"])
        # written at once, not only after the first stored batch: a missing position then means a
        # deleted one (the supervisor says so), not a writer that had stored nothing yet
        try:
            _write_json(self.position_path, {"epoch": self.epoch, "pos": self.pos, "missed": self.missed})
        except OSError as exc:
            log.warning("signal position not saved (%s)", exc)
        self.written = 0
        self.corrupt = self.missing = 0                 # signals of damaged / removed spill files
        self.uncounted = 0                              # damaged spill files whose signals nobody could count
        self.last_error = ""
        self.gave_up = ""
        self._spill_cause = ""
        self._start = self.pos
        self._pending: list = []
        self._rows = 0
        self._first = None
        self._buf = np.empty(4096, dtype=SIGNAL_DTYPE)
        self._task: Optional[Future] = None
        self._task_path: Optional[Path] = None
        self._retry = self._spill_retry = 0.0
        self._insert_failed = self._spill_failed = None
        self._drain_since = None
        self._reported = False

    def _saved_position(self) -> Optional[dict]:
        """``position.json`` as saved ({} when there is none); None when it is damaged (garbage
        ended every start of the writer with JSONDecodeError, as a damaged inflight.json did for
        ticks; one of this ring without an integer ``pos`` >= 0 raised KeyError at every start,
        or resumed at a negative position): set aside and said. The writer then resumes after its
        spill files' signals, from the ring's oldest, so that none is lost; signals stored before
        may be stored again, and the earlier ``missed`` is lost."""
        try:
            saved = _read_json(self.position_path)
            if saved is None:
                return {}
            if not isinstance(saved, dict) or any(type(saved.get(k, 0)) is not int or saved.get(k, 0) < 0
                                                  for k in ("missed", "epoch")) or \
                    (saved.get("epoch") == self.epoch and (type(saved.get("pos")) is not int or saved["pos"] < 0)):
                raise ValueError(f"not a signal position: {str(saved)[:80]}")
            return saved
        except (OSError, ValueError) as exc:
            aside = _set_aside(self.position_path)
            log.error("signal position %s is damaged (%s): set aside as %s; resuming from the oldest signal ring %s "
                      "holds (after its spill files'): signals stored before may be stored twice, and the count of "
                      "those missed before is lost", self.position_path, exc, aside.name, self.name)
            return None

    def _read(self) -> None:
        while self._rows < self.batch_rows:             # (a failing spill: read no further; a lap is counted)
            k = self.ring.pop_many(self._buf, timeout=0)
            if not k:
                return
            end = self.ring.position
            first = end - k                              # what was read is the k positions before the cursor
            if self._unknown:                            # (a damaged position: no lap can be told)
                self._unknown = False
                self.pos = max(self.pos, first)
            if first > self.pos:
                lost = first - self.pos
                self.missed += lost
                log.error("signal ring %s lapped the writer: %d signals (positions %d to %d) were overwritten "
                          "before they could be stored (%d missed in all)", self.name, lost, self.pos, first - 1,
                          self.missed)
                self.pos = first
            skip = self.pos - first                      # stored before a restart
            if skip < k:
                if not self._pending:
                    self._start = self.pos
                    self._first = time.monotonic()
                self._pending.append(self._buf[skip:k].copy())
                self._rows += k - skip
            self.pos = max(self.pos, end)
            if k < len(self._buf):
                return

    def _flush(self, now: float, force: bool) -> None:
        """Make the pending signals durable in a spill file and save the position after them."""
        if not self._rows or now < self._spill_retry:
            return
        if not (force or self._rows >= self.batch_rows or now - self._first >= self.batch_seconds):
            return
        batch = np.concatenate(self._pending)
        start, end = self._start, self.pos
        token = f"sg:{self.name}:{self.epoch}:{start}:{end}"
        try:
            self.spill.write(start, self.epoch, token, batch, end=end, run=self.run)
        except SpillError as exc:
            self._spill_failed, self._spill_retry = now, now + self.retry_seconds
            self.last_error = str(exc)
            self._spill_cause = exc.cause
            if not self._reported:
                self._reported = True
                log.error("%s", exc)
            return
        self._reported = False
        self._pending, self._rows, self._first = [], 0, None
        try:
            _write_json(self.position_path, {"epoch": self.epoch, "pos": end, "missed": self.missed})
        except OSError as exc:                           # the spill file's header holds the position too
            log.warning("signal position not saved (%s); the spill file keeps it", exc)

    def _insert_task(self, path: Path, known: Optional[tuple]):      # store thread
        try:
            meta, sig = _Spill.read(path, SIGNAL_DTYPE, known)
        except SpillCorrupt as exc:
            n = _Spill.quarantine(exc, "signals", known)
            if n is None:                          # gone: left in the ledger, for missing()
                return True, None
            self.corrupt += n
            self.uncounted += not n
            return True, 0
        return self.link.insert("insert_signals", sig, meta["run"], token=meta["token"]), meta["n"]

    def _store(self, now: float) -> None:
        if self._task is not None:
            if not self._task.done():
                return
            path = self._task_path
            try:
                ok, n = self._task.result()
            except Exception as exc:                     # noqa: BLE001 - one file must not end the writer
                log.error("spill file %s could not be stored (%s: %s): tried again in %.0f s", path,
                          type(exc).__name__, exc, self.retry_seconds)
                ok, n = False, 0
            self._task = None
            if ok:
                if n is not None:                        # (None: gone, its ledger entry kept for missing())
                    if self.spill.remove(path):
                        self.written += n
                    else:                                # its strike not written: stored again later
                        self._insert_failed, self._retry = now, now + self.retry_seconds
            else:
                self._insert_failed, self._retry = now, now + self.retry_seconds
        if self._drain_since is not None and now - self._drain_since > self.drain_replay_s:
            return                                       # (left for the next start: drain_replay_s)
        if now >= self._retry:
            files = self.spill.files()
            if files:
                self._task_path = files[0]
                self._task = self.link.submit(self._insert_task, files[0], self.spill.known(files[0]))

    def step(self, draining: bool, since: Optional[float] = None) -> bool:
        """Read, make durable, insert; with ``draining``, everything now. False once done.
        ``since``: when the stop's drain began (the tick writers', which drain first: the spill
        replays of both are bounded by one ``drain_replay_s`` from there, not one each, which
        took a stop with both spilled past the daemon's shutdown bound)."""
        now = time.monotonic()
        if draining and self._drain_since is None:
            self._drain_since = now if since is None else min(since, now)
        self._read()
        self._flush(now, draining)
        self._store(now)
        if not draining:
            return True
        since = self._drain_since
        if self._rows:                                   # could not be spilled
            if self._spill_failed is not None and self._spill_failed >= since:
                self.gave_up = self._spill_cause
                log.error("%d signals not stored (%s): they stay in ring %s", self._rows, self.gave_up, self.name)
                return False
            return True
        if self._task is not None:
            return True
        return bool(self.spill.files()) and not (self._insert_failed is not None and self._insert_failed >= since) \
            and now - since <= self.drain_replay_s       # (the rest at the next start: DRAIN_REPLAY_S)

    def status(self) -> dict:
        self.missing += self.spill.missing()
        return {"written": self.written, "missed": self.missed, "position": self.pos,
                "corrupt": self.corrupt, "missing": self.missing, "uncounted": self.uncounted,
                "spill_files": len(self.spill.files()), "unstored": self._rows, "last_error": self.last_error,
                "gave_up": self.gave_up}


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
        self._to_normal = 0                          # switches to normal scheduling
        self._warned, self._warned_at = -1e9, 0      # the last warning's time, and _to_normal then

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
            # once a minute at most: a full batch in flight is a quarter of the ring (batch_rows'
            # cap), so a sustained rate that fills batches before batch_seconds crosses `high` at
            # every batch (13 switches in the demo's 27 s at 230k ticks/s), each a warning
            self._to_normal += 1
            now = time.monotonic()
            if now - self._warned >= 60.0:
                more = self._to_normal - self._warned_at - 1
                log.warning("tick ring %.0f%% full: writer back to normal scheduling until it catches up%s",
                            fill * 100, f" ({more} more such switches in the last minute)" if more else "")
                self._warned, self._warned_at = now, self._to_normal
        elif self.may_idle and not idle and fill < self.low:
            _set_policy(self.pid, os.SCHED_IDLE)
            self.switches += 1
        elif len(_threads(self.pid)) != self._nthreads:     # the store started threads: same policy
            _set_policy(self.pid, os.SCHED_IDLE if idle else os.SCHED_OTHER)
        self._nthreads = len(_threads(self.pid))


class WriterService:
    """Several tick sources (one per engine worker) and optional signal sources, one store,
    one loop: what the writer process runs."""

    def __init__(self, link: StoreLink, writers, signal_writers=(), state_dir=None,
                 policy: Optional[IdlePolicy] = None):
        self.link = link
        self.policy = policy
        self.writers = list(writers)
        self.signal_writers = list(signal_writers)
        self.state_dir = Path(state_dir) if state_dir else None
        self._stop = threading.Event()
        self._last_status = 0.0

    def stop(self) -> None:
        self._stop.set()
        for w in self.writers:
            w.stop()

    @property
    def gave_up(self) -> list[str]:
        """Why ticks or signals were left in their rings (empty when everything is durable)."""
        return [w.gave_up for w in self.writers + self.signal_writers if w.gave_up]

    def write_signal_status(self) -> None:
        """``signals.json``: signals stored, missed because the ring lapped the writer (exact,
        across restarts), spill files waiting, and any error."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        each = [s.status() for s in self.signal_writers]
        out = {"written": sum(s["written"] for s in each), "missed": sum(s["missed"] for s in each),
               "spill_files": sum(s["spill_files"] for s in each), "unstored": sum(s["unstored"] for s in each),
               "corrupt": sum(s["corrupt"] for s in each), "missing": sum(s["missing"] for s in each),
               "uncounted": sum(s["uncounted"] for s in each),
               "last_error": "; ".join(s["last_error"] for s in each if s["last_error"]), "rings": each}
        write_status_file(self.state_dir / "signals.json", out)

    def run(self) -> list:
        done = set()                 # tick writers whose producer closed and whose ticks are durable
        active = list(self.writers)
        signals = list(self.signal_writers)
        wait = 0.05 / max(len(active), 1)
        while active or signals:
            # The stream ends when every worker has closed its ring (the daemon's stop). A worker
            # that exits cleanly alone (SIGTERM to it) is restarted by the supervisor on the same
            # ring: its writer waits for that, then goes on (dropping it lost its ticks for the
            # rest of the run, found by an adversarial pass).
            for w in self.writers:
                # (once every ring is done the signals drain and the writer ends: a ring taken over
                # then is the next writer's, which the supervisor starts; going on here dropped the
                # signal writers already drained, found by a review)
                if w in done and (len(done) == len(self.writers) or not w.reopened()):
                    w.idle()
                    continue
                done.discard(w)
                if not w.step(wait):
                    done.add(w)
            active = [w for w in self.writers if w not in done]
            # signals drain once the ticks are done: the workers closed their rings, or a stop was
            # asked and the tick writers gave the workers STOP_GRACE to push their last records
            draining = not active
            began = [w._drain_since for w in self.writers if w._drain_since is not None]
            signals = [s for s in signals if s.step(draining, max(began) if began else None)]
            if not active and signals:
                time.sleep(0.01)
            now = time.monotonic()
            if self.state_dir is not None and self.signal_writers and now - self._last_status >= 1.0:
                self._last_status = now
                self.write_signal_status()
            if self.policy is not None:
                if not self.policy.finished and all(w.draining for w in self.writers):
                    self.policy.finish()
                self.policy.update(max(w.behind() for w in self.writers))
                for w in self.writers:
                    w.metrics["sched_idle"] = int(self.policy.idle)
                    w.metrics["sched_switches"] = self.policy.switches
        if self.state_dir is not None and self.signal_writers:
            self.write_signal_status()
        self.link.close()
        return [dict(w.metrics) for w in self.writers]


def _key_name(arg: str) -> tuple[str, str]:
    """``KEY=NAME`` (the state directory's name, the ring's), or ``NAME`` for both."""
    key, _, name = arg.rpartition("=")
    return (key or name), name


def main(argv=None) -> int:
    """``python -m tickwire.engine.writer``: the writer process the daemon starts. Exit status 0
    when everything read is stored or spilled, :data:`EXIT_UNSTORED` when some had to stay in
    its ring."""
    ap = argparse.ArgumentParser(prog="python -m tickwire.engine.writer",
                                 description="Drain tick rings into ClickHouse, exactly once.")
    ap.add_argument("--ring", action="append", required=True,
                    metavar="[KEY=]NAME",
                    help="a blocking tick ring to consume (repeat for several workers); its journal, spill and "
                         "status live in <state-dir>/KEY (default: NAME)")
    ap.add_argument("--dsn", default=None,
                    help="store DSN (chdb:///abs/dir or http://host:8123); default: $TICKWIRE_STORE_DSN, which "
                         "the daemon uses so that a password in it never shows in the process list. "
                         "Credentials: $TICKWIRE_CLICKHOUSE_USER, $TICKWIRE_CLICKHOUSE_PASSWORD")
    ap.add_argument("--database", default="tickwire")
    ap.add_argument("--state-dir", required=True, help="journal, spill and status files (one subdirectory a ring)")
    ap.add_argument("--batch-rows", type=int, default=500_000)
    ap.add_argument("--batch-seconds", type=float, default=1.0)
    ap.add_argument("--drain-replay-seconds", type=float, default=DRAIN_REPLAY_S,
                    help="draining to stop, replay spill files for at most this long (the rest at the next "
                         f"start: they are durable) [{DRAIN_REPLAY_S:g}]")
    ap.add_argument("--signal-ring", action="append", default=[], metavar="[KEY=]NAME",
                    help="broadcast signal ring to store (optional); its state lives in <state-dir>/KEY")
    ap.add_argument("--signal-seconds", type=float, default=1.0, help="signals are stored this often [%(default)s]")
    ap.add_argument("--run", default="", help="run name stored with the signals")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this core")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--nice", type=int, default=0, help="lower the writer's scheduling priority by this much")
    ap.add_argument("--nap", type=float, default=0.02,
                    help="pause between reads while a batch fills, seconds (0: read as ticks arrive) [%(default)s]")
    ap.add_argument("--sched", choices=("normal", "idle"), default="normal",
                    help="scheduling policy: 'idle' (SCHED_IDLE) runs the writer only when its core has "
                         "nothing else to run, so it never delays latency-bound work there [%(default)s]")
    ap.add_argument("--spill-above", type=float, default=SPILL_ABOVE,
                    help="spill a batch whose insert is still running once this share of the ring is "
                         "uncommitted [%(default)s]")
    ap.add_argument("--debug-insert-delay", type=float, default=0.0,
                    help="sleep this long before every insert: a slow store on demand, for tests and "
                         "benchmarks [%(default)s]")
    ap.add_argument("--store-stall-seconds", type=float, default=30.0, metavar="S",
                    help="a store call unanswered this long is an outage in the status, and the first one "
                         "(connecting) is no longer waited for [%(default)s]")
    ap.add_argument("--log-file", default=None, help="append the log here instead of stderr")
    ap.add_argument("--instruments", default=None, metavar="FILE",
                    help="JSON list of instrument definitions to record in the store's instruments table "
                         "(at every connection; replay reads them back)")
    args = ap.parse_args(argv)
    lifeline.bind_to_parent()                # SIGTERM when the supervisor dies (kill -9 included)
    if not args.store_stall_seconds > 0:
        ap.error(f"--store-stall-seconds: expected seconds > 0, got {args.store_stall_seconds}")
    args.dsn = args.dsn or os.environ.get("TICKWIRE_STORE_DSN")
    if not args.dsn:
        ap.error("no store: give --dsn or set TICKWIRE_STORE_DSN")
    from tickwire.engine.files import log_stream

    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=log_stream(args.log_file),
                        format="%(asctime)s writer %(levelname)s %(message)s")
    stop = threading.Event()                 # a SIGTERM during set-up is not lost: drained after it
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if _held_stop:
        stop.set()
    # nothing of the writer reloads; a SIGHUP to the daemon's process group (a closed terminal)
    # reaches it too and would end it (the supervisor restarts it, but why): ignored
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.nice:
        os.nice(args.nice)                   # throughput work: yield the core to latency-bound work
    from tickwire.engine.store import Store
    from tickwire.ext.ring import Ring

    instruments = []
    if args.instruments:
        from tickwire.engine.instruments import Instrument

        instruments = [Instrument(**d) for d in json.loads(Path(args.instruments).read_text())]

    def open_store():
        store = Store.open(args.dsn, args.database)
        store.register_instruments(instruments)          # replay knows tick sizes from the store
        store.prepare_writes()                           # not while the first batch waits
        return store

    disk = args.dsn[len("chdb://"):] if args.dsn.startswith("chdb://") else None
    link = StoreLink(open_store, insert_delay=args.debug_insert_delay, stall_seconds=args.store_stall_seconds,
                     disk=disk or None)
    try:                                      # connect (and create the schema) before attaching,
        if link.submit(link.get).result(timeout=args.store_stall_seconds) is None:    # within a bound
            log.error("%s: will spill until the store answers", link.last_error)
    except TimeoutError:                      # (the rings are read meanwhile; the status says it)
        link._say_stall(f"store not answering within {args.store_stall_seconds:.0f} s: reading the rings meanwhile")
    fatal = Path(args.state_dir) / FATAL_FILE
    try:
        fatal.unlink(missing_ok=True)
    except OSError:
        pass
    writers = []
    try:
        for key, name in map(_key_name, args.ring):
            ring = Ring.attach(name, EVENT_DTYPE, takeover=True, spin_ns=0)     # no hurry: sleep at once
            writers.append(TickWriter(link, ring, Path(args.state_dir) / key, int(ring.created_ns),
                                      batch_rows=args.batch_rows, batch_seconds=args.batch_seconds,
                                      nap=args.nap, spill_above=args.spill_above,
                                      drain_replay_s=args.drain_replay_seconds))
        signals = [SignalWriter(link, Ring.attach(name, SIGNAL_DTYPE, start="oldest"), Path(args.state_dir) / key,
                                args.run, batch_seconds=args.signal_seconds, drain_replay_s=args.drain_replay_seconds)
                   for key, name in map(_key_name, args.signal_ring)]
    except StateError as exc:
        log.error("%s: nothing can be stored or spilled; the ticks stay in their rings", exc)
        try:
            fatal.write_text(f"{exc}\n")
        except OSError:
            pass
        link.close()
        return 1
    policy = None
    if args.sched == "idle":                 # after set-up, which runs at normal priority
        policy = IdlePolicy()
        policy.start()
    service = WriterService(link, writers, signals, args.state_dir, policy)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    if stop.is_set():
        service.stop()
    metrics = service.run()
    log.info("done: %s", json.dumps(metrics))
    return EXIT_UNSTORED if service.gave_up else 0


if __name__ == "__main__":
    status = main()
    # Everything read is durable (inserted, or spilled and fsynced) and logged: skip the
    # interpreter's teardown, where the embedded engine's global destructors were seen to take
    # seconds and, once in a daemon test, to end the process with SIGKILL.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
