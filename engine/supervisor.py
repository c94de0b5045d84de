"""The daemon's supervisor: asyncio on uvloop, on its own core, never in the hot path.

It creates the shared-memory rings (one blocking tick ring and one broadcast signal ring per
engine worker), starts the storage writer (on ``store.writer_cpu``) and the workers (each pins
itself to its core; the supervisor checks the affinity it reports), and then supervises:

- a worker or the writer that dies is started again (a worker resyncs its books by snapshot: its
  feed handler starts every channel with a snapshot request; the writer resumes from the tick
  ring's committed position);
- a Prometheus metrics endpoint (``metrics.host:port``, localhost by default) publishes the
  workers' and the writer's status files (:mod:`tickwire.engine.metrics`, docs/monitoring.md):
  events, markers, signals by rule, feed gaps, recoveries and drops by reason, ring fill, the
  age of each channel's last event, writer rows/spill/lag/outage, restarts, and per-stage
  latency histograms;
- SIGTERM/SIGINT: workers stop receiving and close their rings, the writer drains them into the
  store (a stopped writer is sent SIGCONT first), everyone exits within ``shutdown_timeout``. A
  ring is unlinked only when everything in it is stored or spilled; otherwise it is kept for the
  next start, whose writer stores it first. One line says which; exit status 0 when everything is
  stored or durably spilled and every process stopped cleanly, 1 when a process had to be
  killed or failed or a spill file was lost (damaged, or removed by hand), :data:`EXIT_UNSTORED`
  (3) when ticks or signals were kept in shared memory;
- SIGHUP: re-read the config and, when it is valid, have the workers apply new rule thresholds.

Children die with the supervisor: each sets ``PR_SET_PDEATHSIG`` = SIGTERM on itself at start
(:mod:`tickwire.engine.lifeline`: no ``preexec_fn``, which can deadlock a fork from a process with
threads), so after a kill -9 of the supervisor the workers stop and close their rings and the
writer drains them and exits. The next start reclaims what a dead run left: it waits for such
leftovers to finish, adopts a ring that still holds unstored ticks or signals (its writer stores
them first) and replaces the others. It refuses to start (:class:`StartupError`, one line, exit status 2) while
another daemon runs the same run, or while another process holds the embedded store: its own
lock (``<store>/tickwire.lock``, held by the supervisor and inherited by the writer) and chDB's
(``<store>/status``) are checked before anything is spawned.

At start it reports, as warnings, whether the workers' cores are isolated (``isolcpus``,
``nohz_full``) and which CPU frequency governor they run under.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from tickwire.engine import config as configmod
from tickwire.engine import lifeline
from tickwire.engine.files import dir_problem, open_log, remove_stale_temps, replace_file
from tickwire.engine.files import pid_alive as _pid_alive
from tickwire.engine.metrics import Collector
from tickwire.engine.worker import (CURVE_ENV, fresh_ring_names, load_frozen, made_under, new_ring_token, note_ended,
                                    read_ring_names, ring_keys, rings_stored, settle_history_note, write_note,
                                    write_ring_names)
from tickwire.engine.writer import EXIT_UNSTORED
from tickwire.ext import EVENT_DTYPE, SIGNAL_DTYPE
from tickwire.ext import ring as ringmod
from tickwire.ext.ring import Ring

log = logging.getLogger("tickwire.supervisor")

#: A worker that has written no status for this long (it writes one every 0.5 s) is said to be
#: stalled (an error in the log); daemon.stall_restart_s decides when it is restarted.
STALL_SAY_S = 5.0

__all__ = ["Supervisor", "StartupError", "cpu_report", "run", "EXIT_UNSTORED"]


class StartupError(RuntimeError):
    """The daemon cannot start (another daemon or process holds its store or rings): the
    message is one line; ``tickwire run`` exits with status 2."""


def _instrument_dict(inst) -> dict:
    """An Instrument as JSON-able keyword arguments (the writer records them in the store)."""
    d = dataclasses.asdict(inst)
    d["tick_size"], d["lot_size"] = str(inst.tick_size), str(inst.lot_size)
    return d


def _abandoned_note(wsts) -> str | None:
    """The last line's words for ticks workers could not hand to their full tick ring at the stop
    (their statuses' ``abandoned_ticks``; ``wsts``: (worker config, status) pairs), or None."""
    abandoned = [(w.name, int(st.get("abandoned_ticks") or 0)) for w, st in wsts if st]
    abandoned = [(n, a) for n, a in abandoned if a]
    if not abandoned:
        return None
    return (f"; {sum(a for _, a in abandoned):,} ticks received were NOT stored: the tick ring was full at the "
            f"stop (" + ", ".join(f"{n}: {a:,}" for n, a in abandoned) + "); the next start asks the publisher "
            "for them again, lost if it no longer holds them")


_LOCK_TRIES = 20          # _try_lock: tries 10 ms apart before the lock is taken as held


def _try_lock(path: Path, shared: bool = False):
    """An exclusive flock on ``path`` (created 0600): the open fd, or None if another holds it.
    A symlink there, or a file of another user's, is refused (OSError): in a directory another user
    could write, a link planted as ``daemon.lock`` had the daemon overwrite its target with its pid.
    ``shared``: a lock file all users take (created 0644; another user's is locked read-only, its
    pid left as it is)."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags | os.O_RDWR | os.O_CREAT, 0o644 if shared else 0o600)
    except PermissionError:
        if not shared:
            raise
        fd = os.open(path, flags | os.O_RDONLY)
    mine = os.fstat(fd).st_uid == os.geteuid()
    if not mine and not shared:
        os.close(fd)
        raise PermissionError(errno.EPERM, f"{path} belongs to another user")
    # a few tries: `tickwire status`, `signals` and `top` ask whether a daemon runs by taking the
    # lock shared for a moment; a start that met one of those refused, "another daemon runs" (a
    # review: 220 of 2,000 starts beside a probing loop). A daemon holds it for its whole life.
    for attempt in range(_LOCK_TRIES):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt == _LOCK_TRIES - 1:
                os.close(fd)
                return None
            time.sleep(0.01)
    if mine:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _private_dir(d: Path, what: str, key: str) -> None:
    """Refuse (StartupError) a directory another user owns or group/others can write, or one
    under a directory that another user (not root) owns or that group or others can write
    without the sticky bit (:func:`~tickwire.engine.files.dir_problem`). The workers take their
    configuration (config.json), ring names and history notes from the run directory, the writer
    the stored ticks from the store's. (A run directory made by another user under a shared
    state_dir had the daemon subscribe to the endpoint of a config.json that user wrote; a store
    directory of theirs, their symlink in it, had chDB write the store into a directory of root's;
    a state_dir writable by a group, or another user's, let that user rename the run directory
    away and put one of theirs in its place: adversarial passes and a review.)"""
    problem = dir_problem(d, what)
    if problem:
        raise StartupError(f"{key}: {problem}")


def _lock_problem(key: str, path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{key}: {path} is a symlink: refusing to follow it (another user may have planted it); remove it"
    if exc.errno == errno.EPERM:
        return f"{key}: {path} belongs to another user: refusing to start; remove it"
    return f"{key}: cannot create {path} ({exc.strerror or exc}): expected a writable directory"


def _lock_holder(path: Path) -> int:
    """The pid that holds the flock on ``path`` (from /proc/locks), else the pid written into it
    by the process that took it (0: unknown). (The file alone named the previous holder, or
    none, when read between a winner's flock and its write of its pid.)"""
    from tickwire.engine.store import _flock_holders

    others = [p for p in _flock_holders(str(path)) if p != os.getpid()]
    if others:
        return others[0]
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _flock_held(path: Path) -> bool:
    """Whether another process holds a flock on ``path`` (chDB locks ``<dir>/status`` so)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _in_use(name: str, dtype) -> bool:
    """Whether ring ``name`` has a live producer or consumer (another daemon's, say): not an orphan."""
    try:
        r = Ring.attach(name, dtype, role="none")
    except Exception:                                  # noqa: BLE001 - unreadable: the reclaim says so
        return False
    try:
        return bool(r.producer_alive or r.consumer_alive)
    finally:
        r.close()


def _keep(ring: Ring) -> None:
    """Close ``ring`` and leave its segment in /dev/shm for the next start. The creator's close
    unlinks the name, so a hard link made first gives it back."""
    if ring.owner:
        path = f"/dev/shm{ring.name}"
        spare = f"{path}.keep-{os.getpid()}"
        os.link(path, spare)
        ring.close()
        os.rename(spare, path)
    else:
        ring.close()


def _drop(ring: Ring) -> None:
    """Close ``ring`` and unlink its segment."""
    if not ring.owner:
        ring.unlink()
    ring.close()


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def cpu_report(cores) -> list[str]:
    """Warnings about the cores' isolation and frequency governor (empty when all is ideal)."""
    out = []
    isolated = _read("/sys/devices/system/cpu/isolated")
    cmdline = _read("/proc/cmdline")
    iso = set()
    for part in isolated.split(","):
        if "-" in part:
            a, b = part.split("-")
            iso.update(range(int(a), int(b) + 1))
        elif part.strip().isdigit():
            iso.add(int(part))
    for c in sorted(set(cores)):
        if c not in iso:
            out.append(f"core {c} is not isolated (isolcpus): other tasks may run there and add jitter")
        if "nohz_full" not in cmdline:
            out.append(f"core {c} has scheduler ticks (no nohz_full on the kernel command line)")
        gov = _read(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor")
        if gov and gov != "performance":
            out.append(f"core {c} runs the '{gov}' frequency governor, not 'performance'")
        elif not gov:
            out.append(f"core {c}: no cpufreq governor visible (a VM?): frequency not controlled here")
    return out


def shared_endpoint_warnings(endpoints) -> list[str]:
    """A warning for each ipc endpoint in a directory another user can write (such as /tmp), or
    owns (its owner can bind there, or make it writable), and for each abstract one (``ipc://@name``:
    anyone can bind it): whoever binds the path first is the one the daemon listens to
    (docs/security.md). A directory of another user, or writable by a group,
    was not warned about, and that user fed the daemon."""
    import grp

    out = []
    for ep in endpoints:
        if ep.startswith("ipc://@"):
            # (an abstract socket has no file, so no owner and no permissions: another user who
            # bound the name first fed a root daemon, without a word: an adversarial pass)
            out.append(f"feed endpoint {ep} is an abstract Unix socket (no file, no permissions): every local user "
                       f"can bind it, and another user who binds it first feeds this daemon; prefer an ipc path in "
                       f"a directory only you can write (docs/security.md)")
            continue
        if not ep.startswith("ipc://"):
            continue
        parent = Path(ep[len("ipc://"):]).parent
        try:
            st = parent.stat()
        except OSError:
            continue
        me = os.geteuid()
        if st.st_mode & 0o002:
            who = "every local user can write"
        elif st.st_uid not in (me, 0):
            who = f"user {_user_name(st.st_uid)} owns (and can bind there)"
        elif st.st_mode & 0o020:
            try:
                members = set(grp.getgrgid(st.st_gid).gr_mem)
                gname = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                members, gname = set(), str(st.st_gid)
            mine = _user_name(me)
            if members <= {mine} and st.st_gid == os.getegid():
                continue                              # a group of this user alone
            who = f"group {gname} can write"
        else:
            continue
        out.append(f"feed endpoint {ep} is in {parent}, which {who}: another user who binds it first feeds "
                   f"this daemon; prefer a directory only you can write (docs/security.md)")
    return out


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def plain_tcp_warnings(endpoints, curve: bool) -> list[str]:
    """A warning for each tcp endpoint off this host (not loopback) when CURVE is not configured:
    such a feed is plaintext and unauthenticated (docs/security.md, "The network")."""
    if curve:
        return []
    out = []
    for ep in endpoints:
        if not ep.startswith("tcp://"):
            continue
        host = ep[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        if host == "localhost" or host == "::1" or host.startswith("127."):
            continue
        out.append(f"feed endpoint {ep} is tcp without CURVE: anyone on the network can read it, and whoever "
                   f"answers at that address feeds this daemon; set feeds.curve_server_key and "
                   f"feeds.curve_secret_key_file (docs/security.md)")
    return out


def _users(ring) -> str:
    """The live processes a ring names as its producer and consumer: "pid 12 and pid 34"; one that
    is stopped (SIGSTOP, a debugger) says so: it holds the ring until let go."""
    def one(pid: int) -> str:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            state = stat[stat.rindex(")") + 2]
        except (OSError, ValueError, IndexError):
            state = ""
        return f"pid {pid} (stopped: `kill -CONT {pid}` lets it go on and exit)" if state in ("T", "t") else f"pid {pid}"

    return " and ".join(one(p) for p, up in ((ring.producer_pid, ring.producer_alive),
                                             (ring.consumer_pid, ring.consumer_alive)) if up)


class _Child:
    def __init__(self, name, argv, cpu, env=None):
        self.name, self.argv, self.cpu = name, argv, cpu
        self.env = env                  # added to the environment (secrets: never on argv)
        self.proc = None
        self.restarts = 0
        self.stalls = 0                 # times killed for writing no status (daemon.stall_restart_s)
        self.earlier_events = 0         # a worker's: events its earlier processes of this run processed
        self.started = 0.0              # wall clock (supervisor.json, tickwire top)
        self.since = 0.0                # monotonic: how soon it died (a wall-clock step is no crash loop)
        self.reported = None            # the process whose death _watch has said (awaiting its restart)
        self.pids = set()               # every process of this child this run (its status files' pids)


def metrics_url(host: str, port: int) -> str:
    """The endpoint's URL; an IPv6 address in brackets (``http://::1:9464`` is no URL: curl refused
    the metrics.url of ``metrics.host = "::1"``)."""
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


class Supervisor:
    """Runs one daemon (see the module docstring).

    Parameters
    ----------
    cfg : Config
    config_path : path
        The file ``cfg`` came from (SIGHUP re-reads it). Workers are started, and restarted,
        with the configuration as the supervisor holds it (``run_dir/config.json``: the file as
        it was read at start, with the thresholds a SIGHUP applied), never with later edits.
    raw : (dict, Path), optional
        The file's TOML mapping and the folder its relative paths resolve from, as ``cfg`` was
        made from them (default: read ``config_path`` again).
    run_dir : path, optional
        Status files, HDR logs and the writer's state (default ``<state_dir>/<run>``).
    """

    def __init__(self, cfg, config_path, run_dir=None, *, shutdown_timeout: float = 20.0, restart_delay: float = 0.5,
                 raw=None):
        self.cfg = cfg
        self.config_path = str(config_path)
        self._raw, self._base_dir = raw if raw is not None else configmod.read_raw(config_path)
        self._raw = copy.deepcopy(self._raw)
        self.run_dir = Path(run_dir or cfg.state_dir / cfg.run)
        self.shutdown_timeout = shutdown_timeout
        self.restart_delay = restart_delay
        self.rings: list[Ring] = []
        self.tick_rings: list[Ring] = []
        self.workers: list[_Child] = []
        self.writer: _Child | None = None
        self.stopping = False
        self.failure = None                            # why the daemon gave up, said in its last line
        self.spill_lost = False                        # records of damaged or removed spill files
        self.held_unstored = False                     # events held behind a hole, dropped at the stop
        self.signals_missed = 0                        # signals a lapped ring lost this run
        self._prev_stored = False                      # the earlier start's rings are owed to the store
        self._missed_before = 0                        # signals the writers had missed before this start
        # what writers that died counted of damaged or removed spill files (a restarted one counts
        # from 0), added to writer_status() and signal_status(); the status files already counted
        self._carried: dict = {}
        self._carried_marks: set = set()
        self.writer_stalled_since = None               # monotonic time its status stopped (see _watch_stalls)
        self.metrics_port = None
        self.metrics_error = ""                        # why metrics are off (metrics.port taken), said in supervisor.json
        self._httpd = None
        self._stop_event: asyncio.Event | None = None
        self.reloads = 0
        self.failed = False
        self.warnings: list[str] = []
        self.signal_rings: list[Ring] = []
        self.kept: list[tuple[str, int, str]] = []     # (ring, records not stored, "ticks"/"signals")
        self.summary = ""
        self._locks: list[int] = []
        self._store_lock = None
        self._keys: dict[str, str] = {}                # ring name -> its stable key (the writer's state dir)

    # -- setup ----------------------------------------------------------------------------------
    def _store_dir(self):
        """The embedded store's directory (None for a server, or with storage off)."""
        dsn = self.cfg.store.dsn
        if not self.cfg.store.enabled or not dsn.startswith("chdb://"):
            return None
        return Path(dsn[len("chdb://"):])

    def _acquire_locks(self) -> None:
        """Refuse to start (StartupError) while another daemon runs this run or uses the store,
        or another process holds the embedded store; wait (within the shutdown bound) for the
        leftover processes of a daemon that died to finish with it."""
        path = self.run_dir / "daemon.lock"
        try:
            self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private_dir(self.run_dir, "run directory", "daemon.state_dir")
            fd = _try_lock(path)
        except OSError as exc:
            raise StartupError(_lock_problem("daemon.state_dir", path, exc)) from None
        if fd is None:
            raise StartupError(f"another tickwire daemon runs run '{self.cfg.run}' (pid {_lock_holder(path)}, "
                               f"{path}): refusing to start")
        self._locks.append(fd)
        hdr = Path(self.cfg.metrics.hdr_dir) if self.cfg.metrics.hdr_dir else self.run_dir / "hdr"
        try:                                           # the workers write their interval logs there
            hdr.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.cfg.metrics.hdr_dir:
                # (another user's, or one others could write: their symlink planted as w0.hlog had
                # the workers, as root, create or truncate its target: an adversarial pass)
                _private_dir(hdr, "HDR log directory", "metrics.hdr_dir")
            probe = hdr / f".tickwire-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise StartupError(f"metrics.hdr_dir: cannot write {hdr} ({exc.strerror or exc}): expected a writable "
                               f"directory") from None
        for d in dict.fromkeys((self.run_dir, hdr)):     # (a daemon killed mid-write left its temporary files)
            removed = remove_stale_temps(d)
            if removed:
                log.info("removed %d temporary file(s) under %s left by processes that were killed", removed, d)
        store = self._store_dir()
        if store is None:
            return
        try:
            store.mkdir(mode=0o700, parents=True, exist_ok=True)
            _private_dir(store, "store directory", "store.dsn")
        except OSError as exc:
            raise StartupError(f"store.dsn: cannot create the store directory {store} ({exc.strerror or exc}): "
                               f"expected a writable directory") from None
        path = store / "tickwire.lock"
        give_up = time.monotonic() + self.shutdown_timeout
        waited = False
        while True:
            try:
                fd = _try_lock(path)
            except OSError as exc:
                raise StartupError(_lock_problem("store.dsn", path, exc)) from None
            if fd is not None:
                break
            holder = _lock_holder(path)
            if _pid_alive(holder):
                raise StartupError(f"the embedded store {store} is in use by another tickwire daemon (pid {holder}): "
                                   f"one daemon per store directory, refusing to start")
            if time.monotonic() > give_up:
                raise StartupError(f"the embedded store {store} is still held by the processes of a daemon that "
                                   f"died (pid {holder}) after {self.shutdown_timeout:.0f} s: refusing to start")
            if not waited:
                waited = True
                log.warning("the store %s is held by the processes of a daemon that died (pid %d): waiting for "
                            "them to finish", store, holder)
            time.sleep(0.1)
        self._locks.append(fd)
        self._store_lock = fd                    # the writer inherits it: held while any of ours runs
        if _flock_held(store / "status"):
            raise StartupError(f"the embedded store {store} is locked by another process (chDB allows one "
                               f"process per data directory): stop it, or point store.dsn elsewhere; "
                               f"refusing to start")

    def _unstored(self, ring: Ring, kind: str, earlier: bool = False) -> int:
        """Ticks or signals in ``ring`` that the writer has not stored: this start's rings with
        storage on; an earlier start's (``earlier``) when that start stored, whatever this one
        does (a storage-off start's rings are owed to no store: after a kill -9, a start with
        storage on stored their signals, beside none of the ticks that fired them)."""
        if not (self._prev_stored if earlier else self.cfg.store.enabled):
            return 0
        if kind == "ticks":
            return int(ring.head - ring.tail)
        try:
            name = ring.name.lstrip("/")
            st = json.loads((self.run_dir / "writer" / self._keys.get(name, name) / "position.json").read_text())
        except (OSError, ValueError):
            st = {}
        pos = int(st.get("pos", 0)) if st.get("epoch") == int(ring.created_ns) else 0
        return max(0, int(ring.head) - pos)

    def _attach_kept(self, name, dtype) -> Ring | None:
        """Segment ``name`` left by an earlier start, attached (role "none") once the processes
        still using it, a dead daemon's children finishing, have let go of it or
        ``shutdown_timeout`` has passed (the caller sees whether they did). None when it does not
        exist, is another user's (left alone), or cannot be read by this build (removed)."""
        if not ringmod.exists(name):
            return None
        try:
            old = Ring.attach(name, dtype, role="none")
        except PermissionError as exc:      # another user's segment, or one others could write
            log.warning("ring %s of an earlier start is not this daemon's (%s): left alone, a new ring "
                        "with a fresh name is used", name, exc.strerror)
            return None
        except Exception as exc:            # noqa: BLE001 - another layout: nothing this build can read
            log.error("ring %s left behind by an earlier run cannot be read (%s): replaced", name, exc)
            ringmod.remove(name)
            return None
        give_up = time.monotonic() + self.shutdown_timeout
        waited = False
        while (old.producer_alive or old.consumer_alive) and time.monotonic() <= give_up:
            if not waited:                  # (a producer or consumer recorded there may have exited)
                waited = True
                log.warning("ring %s is still used by %s of a daemon that died: waiting", name, _users(old))
            time.sleep(0.1)
        return old

    def _reclaim(self, name, dtype, kind, note=None):
        """A segment ``name`` that an earlier start of this run recorded (rings.json): one of ours
        that still holds ticks or signals not stored is adopted (returned: the writer stores them
        first); an empty one is unlinked; one that is not ours (another user took the name after
        our segment was gone) or that no longer exists is left alone (None: the caller makes a
        new ring under a fresh random name)."""
        old = self._attach_kept(name, dtype)
        if old is None:
            return None
        if old.producer_alive or old.consumer_alive:
            who = _users(old)
            old.close()
            raise StartupError(f"ring {name} is still in use by {who or 'a process that has just exited'}, "
                               f"which is not this daemon's (waited {self.shutdown_timeout:g} s, "
                               f"daemon.shutdown_timeout_s): refusing to start; once it has exited (or is "
                               f"killed), start again: what the ring holds is then stored")
        left = self._unstored(old, kind, earlier=True)
        if left and kind == "signals":
            state = self.run_dir / "writer" / self._keys.get(name, name)
            if (state / "spill").is_dir() and not (state / "position.json").exists():
                # (the writer writes it at its start: deleted by hand, 20 of 113 signals stored
                # twice with nothing said)
                log.error("ring %s: the signal writer's position (%s) is missing: its %d signals are stored "
                          "from the ring's start, again where they were stored before (duplicates)", name,
                          state / "position.json", left)
        if left and not self.cfg.store.enabled:
            # (dropped here, and the history note moved past them: 121,383 ticks an earlier run
            # kept for its next start lost unsaid, exit 0, the next start with storage on said
            # "every tick and signal stored": an adversarial pass)
            old.close()
            raise StartupError(f"ring {name} of an earlier run (storage on) holds {left:,} {kind} not stored, kept "
                               f"for the next start to store; with store.enabled = false they would be dropped: "
                               f"start once with storage on to store them (then stop it), and start with storage "
                               f"off after that")
        if left:
            log.warning("ring %s of an earlier run holds %d %s not stored: kept, the writer stores them "
                        "first", name, left, kind)
            return old
        if note is not None:                   # the worker's history note, up to what the ring held
            settle_history_note(note, old)
        _drop(old)
        log.warning("replacing ring %s left behind by an earlier run (nothing in it to store)", name)
        return None

    def _refuse_rings_of_removed_workers(self, prev) -> None:
        """Rings an earlier start left for worker indices this configuration does not have (it ran
        more workers, then was killed or crashed): adopted by no worker, their ticks were lost
        unsaid (an upgrade over an older install, rings.json absent, one worker fewer). Empty
        ones are removed; one that holds ticks or signals not stored, or that a process still
        uses, refuses the start until the run has been started once with its previous layout; so do
        their writers' spill files (the store was down: spilled, not stored)."""
        held = []
        for i in range(len(self.cfg.workers), len(prev)):
            for name, key, (dtype, kind) in zip(prev[i], ring_keys(self.cfg, i),
                                                ((EVENT_DTYPE, "ticks"), (SIGNAL_DTYPE, "signals"))):
                old = self._attach_kept(name, dtype)
                if old is None:
                    continue
                self._keys[name] = key
                if old.producer_alive or old.consumer_alive:
                    held.append(f"{name} (still in use)")
                    old.close()
                elif left := self._unstored(old, kind, earlier=True):
                    held.append(f"{name} ({left:,} {kind} not stored)")
                    old.close()
                else:
                    _drop(old)
                    log.warning("removed ring %s of worker index %d of an earlier start (nothing in it to "
                                "store): this configuration has %d workers", name, i, len(self.cfg.workers))
        # and what their writers spilled while the store was down (a clean stop keeps it for the
        # next start; the writer reads the spill of the rings it serves only, under their keys: a
        # worker fewer, or another rings.prefix, and it was never read)
        ours = {k for i in range(len(self.cfg.workers)) for k in ring_keys(self.cfg, i)}
        try:
            states = list(os.scandir(self.run_dir / "writer")) if self.cfg.store.enabled else []
        except OSError:
            states = []
        for e in sorted(states, key=lambda e: e.name):
            if e.name not in ours and e.is_dir(follow_symlinks=False):
                spilled = [p for suffix in ("*.spill", "*.sig") for p in Path(e.path, "spill").glob(suffix)]
                if spilled:
                    held.append(f"{len(spilled)} spill file{'s' if len(spilled) != 1 else ''} under {Path(e.path, 'spill')}")
        if held:
            raise StartupError(
                f"run '{self.cfg.run}' was last started with more workers (or another rings.prefix) and left, for "
                f"rings this configuration ({len(self.cfg.workers)} workers) does not have: {', '.join(held)}. Start "
                f"it once with its previous worker layout and stop it (SIGTERM), then with the new one")

    def _previous_rings(self, report=False) -> list[tuple[str, str]]:
        """The ring names an earlier start of this run recorded (empty: none, or unreadable).
        Without a record (rings.json deleted or unreadable), the segments of this run's names
        (``<prefix>-<run>-<token>-ticks|signals-<i>``) found in /dev/shm: a ring left with ticks
        not stored was orphaned, and its ticks lost unsaid (20,608 of 1,500,000)."""
        try:
            names = read_ring_names(self.run_dir)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            names = None
            if report:
                log.error("%s/rings.json cannot be read (%s): looking for this run's rings in /dev/shm",
                          self.run_dir, exc)
        if names is not None:
            return names
        if not any(self.run_dir.glob("feed-*.json")) and not (self.run_dir / "writer").is_dir():
            return []                                  # a first start (another daemon may share the run name)
        found = self._orphan_rings()
        if found and report:
            log.warning("%s/rings.json is missing, but /dev/shm holds rings of this run (%s): reclaimed as an "
                        "earlier start's", self.run_dir, ", ".join(n for pair in found for n in pair))
        return found

    def _orphan_rings(self) -> list[tuple[str, str]]:
        """This run's segments in /dev/shm, per worker index, of the most recent token whose
        rings are there for worker 0 up (empty when none), as many as it has."""
        import re as _re

        # (the token is absent from the names of daemons before 8396861..d957530: an upgrade after a
        # crash left such a kept ring unread and unsaid, its unstored ticks lost)
        pat = _re.compile(rf"{_re.escape(self.cfg.rings.prefix)}-{_re.escape(self.cfg.run)}-(?:([0-9a-f]{{16}})-)?"
                          rf"(ticks|signals)-(\d+)")
        by_token: dict[str, dict] = {}
        try:
            entries = list(os.scandir("/dev/shm"))
        except OSError:
            return []
        for e in entries:
            m = pat.fullmatch(e.name)
            if m and e.stat(follow_symlinks=False).st_uid == os.geteuid():
                d = by_token.setdefault(m.group(1) or "", {"t": 0})
                d[(m.group(2), int(m.group(3)))] = e.name
                d["t"] = max(d["t"], e.stat(follow_symlinks=False).st_mtime_ns)

        def workers(d) -> int:                          # worker indices up to the last with a ring there
            return 1 + max((k[1] for k in d if k != "t"), default=-1)

        # (as many workers as that start had, which may not be this configuration's: an index
        # beyond it, left out, lost its ticks unsaid; one fewer found none, and lost them too)
        free = {t: d for t, d in by_token.items()
                if not any(_in_use(d[(k, i)], dt) for i in range(workers(d))
                           for k, dt in (("ticks", EVENT_DTYPE), ("signals", SIGNAL_DTYPE)) if (k, i) in d)}
        if not free:
            return []
        tok = max(free, key=lambda t: free[t]["t"])
        d = free[tok]
        # (a ring the stop unlinked, empty, while its pair was kept: named as it was, not there)
        return [tuple(d.get((k, i)) or f"{self.cfg.rings.prefix}-{self.cfg.run}-{tok + '-' if tok else ''}{k}-{i}"
                      for k in ("ticks", "signals")) for i in range(workers(d))]

    def _carry_history(self) -> None:
        """A run started again with its feed channels on other workers (workers renamed,
        instruments moved, a worker added or removed): each worker keeps its channels' history in
        its own note (``feed-<name>.json``), so a worker resumed channels it no longer served and
        started afresh the ones it now served: the store got the publisher's retained history
        again (169,758 duplicates of 600,000) or, joining, a hole in every channel. After a clean
        stop, the notes are rewritten here, each channel's point moved to the note of the worker
        that serves it now; after a stop that left rings behind (a killed daemon: their ticks and
        positions are the old workers'), the start is refused until the run has been started
        once with its previous layout."""
        path = self.run_dir / "config.json"
        try:
            prev = load_frozen(path)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, configmod.ConfigError) as exc:
            log.warning("%s (the previous start's configuration) cannot be read (%s): the workers' tick "
                        "histories are taken as they are", path, exc)
            return

        def owners(cfg) -> dict[int, str]:
            return {i % cfg.feeds.channels: w.name for w in cfg.workers for i in w.instruments}

        old, new = owners(prev), owners(self.cfg)
        notes = {}
        for p in sorted(self.run_dir.glob("feed-*.json")):       # (every note: a worker's removed too)
            try:
                notes[p.name[len("feed-"):-len(".json")]] = json.loads(p.read_text())
            except (OSError, ValueError):
                pass
        # a channel no worker served at the previous start is where a note kept it (workers keep
        # the points of channels left out of the config for a while); in two notes, the one
        # furthest on
        point, owned = {}, set(old)
        for name, note in notes.items():
            for c, p in note.get("channels", {}).items():
                c, p = int(c), tuple(int(x) for x in p)
                if c not in owned and (c not in old or p > point[c]):
                    old[c], point[c] = name, p
        served = {w.name for w in self.cfg.workers}
        moved = sorted(c for c in new if old.get(c, new[c]) != new[c])
        # the note of a worker no longer configured, still holding channels: merged into the first
        # worker's (left as it was, its channels came back later joined afresh: a review)
        gone = sorted(n for n, note in notes.items() if n not in served and note.get("channels"))
        if not (moved or gone):
            return
        left = [n for pair in self._previous_rings() for n in pair if os.path.exists(f"/dev/shm/{n}")]
        if left and not moved:
            return                                     # (the notes go with the rings' positions: later)
        if left:
            raise StartupError(
                f"feed channels {moved} are on other workers than at the previous start of run '{self.cfg.run}', "
                f"which stopped leaving its rings ({', '.join(left)}): their ticks and positions are the old workers'. "
                f"Start it once with its previous worker layout and stop it (SIGTERM), then with the new one")
        for k, w in enumerate(self.cfg.workers):
            mine = {i % self.cfg.feeds.channels for i in w.instruments}
            own = notes.get(w.name, {})
            # channels no worker serves now stay in the note that held them (the first worker's
            # for a worker gone), for when they come back
            mine |= {c for c, name in old.items()
                     if c not in new and (name == w.name or (k == 0 and name not in served))}
            mine = sorted(mine)
            note = {"ring_created_ns": -1, "ring_position": 0,
                    **{k: own.get(k, 0) for k in ("lost_events", "losses", "uncounted_losses")},
                    "channels": {}, "ended": [], "exchange_ns": {}}
            for c in mine:
                src = notes.get(old.get(c, w.name), {})
                if str(c) in src.get("channels", {}):
                    note["channels"][str(c)] = src["channels"][str(c)]
                    if str(c) in (src.get("exchange_ns") or {}):
                        note["exchange_ns"][str(c)] = src["exchange_ns"][str(c)]
                if c in note_ended(src):                # (an older daemon's note says none)
                    note["ended"].append(c)
            write_note(self.run_dir / f"feed-{w.name}.json", note)
        for name in set(notes) - served:
            (self.run_dir / f"feed-{name}.json").unlink(missing_ok=True)
        if moved:
            log.warning("feed channels %s are on other workers than at the previous start: their tick histories "
                        "moved with them (%s)", moved,
                        ", ".join(f"channel {c}: {old.get(c)} -> {new[c]}" for c in moved))
        if gone:
            log.info("the history notes of workers no longer configured (%s) went to the workers that serve their "
                     "channels now (or to %s, for channels no worker serves)", ", ".join(gone),
                     self.cfg.workers[0].name)

    def _make_rings(self) -> list[tuple[str, str]]:
        """The rings of this daemon run: those an earlier start left with data to store are
        adopted under their names; every other ring is created under a name with a random part
        new to this start. The names are recorded in ``<run_dir>/rings.json`` (0600) before the
        segments exist, so a crash in between leaves nothing unrecorded."""
        cfg = self.cfg
        prev = self._previous_rings(report=True)
        # (not for a run that never stored: starts with storage off write no note, and the ERROR
        # below was said of such a run, an upgrade pass; one that stored left notes or a writer's
        # position, whatever its last start did, a review)
        stored_before = self._prev_stored or any(self.run_dir.glob("feed-*.json")) \
            or any(self.run_dir.glob("writer/*/position.json"))
        if prev and cfg.store.enabled and stored_before:
            for w in cfg.workers:
                if not (self.run_dir / f"feed-{w.name}.json").exists():
                    # (deleted by hand: 276,032 of 1,500,000 stored twice, nothing said)
                    log.error("%s: no history note (%s) though this run has started before: it joins its feed "
                              "afresh, %s", w.name, self.run_dir / f"feed-{w.name}.json",
                              "asking the publisher for its retained events from sequence 1 again: those already "
                              "stored are stored twice (feeds.history_from = \"start\")"
                              if cfg.feeds.history_from == "start" else
                              "from the first message it receives: what was published while it was away is "
                              "not stored, nor counted")
        token = new_ring_token()
        plan = []
        for i, _ in enumerate(cfg.workers):
            row = []
            for j, (dtype, kind) in enumerate(((EVENT_DTYPE, "ticks"), (SIGNAL_DTYPE, "signals"))):
                key = ring_keys(cfg, i)[j]
                old = None
                if i < len(prev):
                    self._keys[prev[i][j]] = key
                    note = self.run_dir / f"feed-{cfg.workers[i].name}.json" if kind == "ticks" else None
                    old = self._reclaim(prev[i][j], dtype, kind, note)
                    if old is not None and not made_under(cfg, prev[i][j]):
                        # (its writer's journal and signal position are under the old prefix's key:
                        # adopted under the new one, its in-flight batch and every signal the old
                        # writer had stored were stored again, exit 0: an adversarial pass)
                        old.close()
                        raise StartupError(
                            f"rings.prefix is now '{cfg.rings.prefix}', but run '{cfg.run}' stopped leaving "
                            f"ring {prev[i][j]} with {kind} not stored, made under another prefix: its writer's "
                            f"state is under that prefix. Start it once with its previous rings.prefix and stop it "
                            f"(SIGTERM), then change it")
                want = cfg.rings.ticks_capacity if kind == "ticks" else cfg.rings.signals_capacity
                if old is not None and old.capacity != want:
                    # (the config's capacity said nowhere not to apply: an adversarial pass)
                    log.warning("ring %s keeps its capacity of %d %s (rings.%s_capacity = %d applies once it is "
                                "stored and empty, at a later start)", old.name.lstrip("/"), old.capacity, kind,
                                kind, want)
                if old is not None:
                    self.rings.append(old)
                    row.append(old)
                else:
                    row.append(fresh_ring_names(cfg, i, token)[j])
                    self._keys[row[-1]] = key
            plan.append(row)
        names = [tuple(r if isinstance(r, str) else r.name.lstrip("/") for r in row) for row in plan]
        write_ring_names(self.run_dir, names, stored=cfg.store.enabled)
        for i, row in enumerate(plan):
            made = []
            for r, (dtype, cap, policy) in zip(row, ((EVENT_DTYPE, cfg.rings.ticks_capacity, "blocking"),
                                                     (SIGNAL_DTYPE, cfg.rings.signals_capacity, "broadcast"))):
                if isinstance(r, str):
                    try:                             # O_EXCL: a name nobody could know is never replaced
                        r = Ring.create(r, dtype, cap, policy, role="none")
                    except FileExistsError:
                        raise StartupError(f"ring {r} exists already although its name was just drawn at "
                                           f"random: refusing to start") from None
                    self.rings.append(r)
                made.append(r)
            self.tick_rings.append(made[0])
            self.signal_rings.append(made[1])
        return names

    def _python(self, module, *args):
        # -P: the working directory is not put first on sys.path (a `tickwire` directory there, a
        # checkout's parent or a folder of configs, was imported instead and every worker died)
        return [sys.executable, "-P", "-m", module, *map(str, args)]

    def _check_room(self) -> None:
        """Refuse to start (StartupError) when the rings of all workers do not fit in /dev/shm's
        free space or in the memory available (segments left by an earlier run are reused)."""
        cfg = self.cfg
        need = 0
        prev = self._previous_rings()
        for i, _ in enumerate(cfg.workers):
            names = prev[i] if i < len(prev) else ("", "")
            for name, rs, cap, extra in zip(names, (EVENT_DTYPE.itemsize, SIGNAL_DTYPE.itemsize),
                                            (cfg.rings.ticks_capacity, cfg.rings.signals_capacity), (0, 8)):
                size = ringmod.HEADER_SIZE + 64 + cap * (rs + extra)
                try:
                    if name:                                            # replaced or adopted: in use already
                        size -= os.stat(f"/dev/shm/{name}").st_blocks * 512
                except OSError:
                    pass
                need += max(0, size)
        try:
            st = os.statvfs("/dev/shm")
            shm_free = st.f_bavail * st.f_frsize
        except OSError:
            shm_free = None
        mem = None
        for line in _read("/proc/meminfo").splitlines():
            if line.startswith("MemAvailable:"):
                mem = int(line.split()[1]) * 1024
        room = min(x for x in (shm_free, mem, float("inf")) if x is not None)
        if need > room:
            def size(n):                               # (0.02 GiB against 0.02 GiB told nothing)
                return "?" if n is None else f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"
            raise StartupError(
                f"rings.ticks_capacity / rings.signals_capacity: the rings of {len(cfg.workers)} worker(s) need "
                f"{size(need)} of shared memory, but /dev/shm has {size(shm_free)} free and MemAvailable is "
                f"{size(mem)}: lower the capacities; refusing to start")

    def setup(self) -> None:
        cfg = self.cfg
        try:
            socket.getaddrinfo(cfg.metrics.host, cfg.metrics.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise StartupError(f"metrics.host: {cfg.metrics.host!r} does not resolve ({exc}): expected a host "
                               f"name or address of this machine, such as 127.0.0.1") from None
        self._check_room()
        self._acquire_locks()
        self._start_metrics()
        for c in {w.cpu for w in cfg.workers}:
            if c in (cfg.supervisor_cpu, cfg.store.writer_cpu):
                self.warnings.append(f"core {c} runs a worker and the supervisor or writer: they will "
                                     f"compete for it")
        self.warnings += cpu_report(w.cpu for w in cfg.workers)
        self.warnings += shared_endpoint_warnings(list(cfg.feeds.endpoints) + [cfg.feeds.snapshot or ""])
        self.warnings += plain_tcp_warnings(list(cfg.feeds.endpoints) + [cfg.feeds.snapshot or ""],
                                            bool(cfg.feeds.curve_server_key))
        for w in self.warnings:
            log.warning("%s", w)
        # (before the history notes are carried to the new layout: a refused start left them moved,
        # and the previous layout it asks for then started a removed worker with no note)
        # (whether an earlier start's rings are owed to the store: it stored; a start with storage
        # off refuses to drop what they hold)
        self._prev_stored = rings_stored(self.run_dir)
        self._missed_before = self._signals_missed()
        self._refuse_rings_of_removed_workers(self._previous_rings())
        self._carry_history()
        names = self._make_rings()
        # the DSN (which may hold a password) and the credentials go by the environment, which only
        # this user can read (/proc/<pid>/environ is 0400), never on argv, which every user can
        secrets = {"TICKWIRE_STORE_DSN": cfg.store.dsn}
        if cfg.store.username:
            secrets["TICKWIRE_CLICKHOUSE_USER"] = cfg.store.username
        if cfg.store.password:
            secrets["TICKWIRE_CLICKHOUSE_PASSWORD"] = cfg.store.password
        argv = self._python("tickwire.engine.writer", "--database", cfg.store.database,
                            "--state-dir", self.run_dir / "writer", "--batch-rows", cfg.store.batch_rows,
                            "--batch-seconds", cfg.store.batch_seconds, "--run", cfg.run,
                            # (most of the shutdown bound: the rest for an insert in flight and the exit)
                            "--drain-replay-seconds", round(0.75 * self.shutdown_timeout, 3),
                            "--cpu", cfg.store.writer_cpu, "--log-level", cfg.log_level)
        if cfg.log_file:
            argv += ["--log-file", str(cfg.log_file)]
        if cfg.store.writer_nice:
            argv += ["--nice", str(cfg.store.writer_nice)]
        argv += ["--sched", cfg.store.writer_sched]
        if cfg.store.debug_insert_delay_s:
            argv += ["--debug-insert-delay", str(cfg.store.debug_insert_delay_s)]
        inst_file = self.run_dir / "instruments.json"
        inst_file.write_text(json.dumps([_instrument_dict(i) for i in cfg.instruments]))
        argv += ["--instruments", inst_file]
        for i, (t, s) in enumerate(names):           # KEY=NAME: the writer's state lives under the stable key
            kt, ks = ring_keys(cfg, i)
            argv += ["--ring", f"{kt}={t}", "--signal-ring", f"{ks}={s}"]
        self.writer = _Child("writer", argv, cfg.store.writer_cpu, env=secrets) if cfg.store.enabled else None
        self._freeze_config()
        curve = self._curve_env()
        for i, w in enumerate(cfg.workers):
            self.workers.append(_Child(w.name, self._python("tickwire.engine.worker", "--config", self.config_path,
                                                             "--frozen", self.run_dir / "config.json",
                                                             "--worker", i, "--run-dir", self.run_dir), w.cpu,
                                       env=curve))

    def _curve_env(self) -> dict:
        """The feed's CURVE certificate, read once at the start, for the workers' environment
        (secrets: never on argv nor in config.json). A worker read the file at each of its starts:
        a key replaced on disk while the daemon ran left a restarted worker refused by the
        publisher, storing nothing (an adversarial pass); a key change needs a daemon restart."""
        if not self.cfg.feeds.curve_server_key:
            return {}
        try:
            client = self.cfg.feeds.curve()
        except ValueError as exc:                   # (checked when the config was read: changed since)
            raise StartupError(f"feeds.curve_secret_key_file: {exc}") from None
        return {CURVE_ENV: f"{client.public.decode()} {client.secret.decode()}"}     # (Z85 has no space)

    def _freeze_config(self) -> None:
        """Write the configuration as the supervisor holds it for the workers (and their
        restarts): an edit of the file after the start reaches no process but through SIGHUP,
        which applies only the rule thresholds, as docs/config.md says."""
        rules = self._raw.get("rules")
        if isinstance(rules, list):
            for item, rule in zip(rules, self.cfg.rules):
                if isinstance(item, dict):
                    item["enter"], item["exit"] = rule.enter, rule.exit
        feeds = self._raw.get("feeds")
        if isinstance(feeds, dict) and self.cfg.feeds.curve_server_key:
            # the publisher's key as it was read at the start, not its file's path: a restarted
            # worker read the file again (a review), as it did its certificate (now in its env)
            feeds["curve_server_key"] = self.cfg.feeds.curve_server_key
        # the store's credentials are left out: the workers (and whoever reads config.json) do not
        # talk to the store; the writer has them from its environment. (The password was written
        # there in plain text: a review.)
        raw = dict(self._raw)
        if isinstance(raw.get("store"), dict):
            from tickwire.engine.store import redact

            store = raw["store"] = dict(raw["store"])
            store.pop("password", None)
            if isinstance(store.get("dsn"), str):
                store["dsn"] = redact(store["dsn"])
        replace_file(self.run_dir / "config.json", json.dumps({"raw": raw, "base_dir": str(self._base_dir)},
                                                              default=str), mode=0o600)

    def _start_metrics(self) -> None:
        from prometheus_client import CollectorRegistry

        from tickwire.engine.metrics import serve

        registry = CollectorRegistry()
        registry.register(_Collector(self))
        host, port = self.cfg.metrics.host, self.cfg.metrics.port
        try:
            server = serve(host, port, registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                # another process (another local user's, perhaps) holds the port: the daemon runs
                # without metrics rather than not at all (it exited 2: any local user could keep
                # it from starting by listening there first: an adversarial pass)
                self.metrics_error = (f"metrics.port: {host}:{port} is in use by another process: metrics are "
                                      f"OFF for this run (no endpoint, no metrics.url); the daemon runs and stores "
                                      f"as usual. Free the port, or choose another (0: any free port), and restart")
                log.error("%s", self.metrics_error)
                try:                                   # (a previous run's names the other process's port now)
                    (self.run_dir / "metrics.url").unlink()
                except FileNotFoundError:
                    pass
                return
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
                # (the address is at fault, not the port: the line named metrics.port)
                raise StartupError(f"metrics.host: cannot serve metrics on {host}:{port} ({exc.strerror or exc}): "
                                   f"expected an address of this machine (127.0.0.1, or 0.0.0.0 for all)") from None
            raise StartupError(f"metrics.port: cannot serve metrics on {host}:{port} ({exc.strerror or exc}): "
                               f"expected a free port on an address of this machine (0: any free port)") from None
        self._httpd = server
        self.metrics_port = server.server_port
        url = metrics_url(self.cfg.metrics.host, self.metrics_port)
        replace_file(self.run_dir / "metrics.url", url + "\n")
        log.info("metrics on %s", url)

    # -- children -------------------------------------------------------------------------------
    async def _spawn(self, child: _Child) -> None:
        # SIGTERM at the supervisor's death: workers close their rings, the writer drains them
        # (each child binds itself: no preexec_fn, which can hang a fork from this threaded process)
        kw = {"env": lifeline.child_env(signal.SIGTERM, {**os.environ, **(child.env or {})})}
        if child is self.writer and self._store_lock is not None:
            kw["pass_fds"] = (self._store_lock,)
        child.proc = await asyncio.create_subprocess_exec(*child.argv, **kw)
        child.pids.add(child.proc.pid)
        child.started, child.since = time.time(), time.monotonic()
        log.info("started %s (pid %d) for core %d", child.name, child.proc.pid, child.cpu)
        self.write_children_status()

    async def _watch(self, child: _Child) -> None:
        """Keep a child running until the daemon stops; restart it when it dies. A child that
        keeps dying within seconds of its start is given up on (and the daemon stops, status 1)."""
        fast = 0
        while True:
            rc = await child.proc.wait()
            if self.stopping:
                return
            fast = fast + 1 if time.monotonic() - child.since < 3.0 else 0
            how = rc if rc >= 0 else signal.Signals(-rc).name
            child.reported = child.proc     # said here: a stop before the restart does not say it again
            if fast >= 5:
                log.error("%s exited with %s%s five times within seconds of starting: giving up", child.name, how,
                          self._fatal(child))
                self.failure = f"{child.name} exited with {how}{self._fatal(child)} five times within seconds of starting"
                self.failed = True
                self.request_stop()
                return
            child.restarts += 1
            if child is self.writer:
                self._carry_damage(child.started)
            else:
                self._carry_events(child)
            if rc == 0:
                # a clean end is no fault: a worker stopped alone (a SIGTERM to it), or the writer
                # once every ring it read was closed (it is restarted for the rings that follow);
                # an ERROR at each of a crash loop's restarts read as the writer failing
                log.warning("%s (pid %d) ended cleanly (status 0); restarting (restart %d)", child.name,
                            child.proc.pid, child.restarts)
            else:
                log.error("%s (pid %d) exited with %s%s; restarting (restart %d)", child.name, child.proc.pid,
                          how, self._fatal(child), child.restarts)
            await asyncio.sleep(self.restart_delay * (2 ** fast))
            if self.stopping or not await self._respawn(child):
                return

    def _carry_events(self, child: _Child) -> None:
        """A worker that died: the events it processed (its last status) added to its
        ``earlier_events`` (supervisor.json), so a count over the run sums its processes (the
        restarted worker's status counts from its own start: `tickwire bench` called a run of
        a restarted worker "processed 21,000 of 120,000 events"). Up to a status interval short:
        what it did after its last status is not known."""
        try:
            index = self.workers.index(child)
            st = json.loads((self.run_dir / f"worker-{index}.json").read_text())
        except (ValueError, OSError):
            return
        if isinstance(st, dict) and st.get("pid") == child.proc.pid:
            try:
                child.earlier_events += int(st.get("feed", {}).get("events", 0))
            except (TypeError, ValueError, AttributeError):
                pass

    def _fatal(self, child: _Child) -> str:
        """" (<why>)" when ``child`` is the writer and it left the line of a fatal error (an
        unusable spill directory: the daemon gave up saying only "exited with 1"), else ""."""
        if child is not self.writer:
            return ""
        from tickwire.engine.writer import FATAL_FILE

        try:
            line = (self.run_dir / "writer" / FATAL_FILE).read_text(errors="replace").strip()
        except OSError:
            return ""
        return f" ({line[:300]})" if line else ""

    async def _respawn(self, child: _Child, give_up_after: float = 60.0) -> bool:
        """Start ``child`` again; when the system refuses a new process (EMFILE, EAGAIN, ENOMEM:
        once, a watcher died of it and the daemon ran on with no worker, saying nothing), say
        so and try again every second or so, and after ``give_up_after`` seconds stop the
        daemon (status 1). False when there is nothing more to watch."""
        first = time.monotonic()
        while True:
            try:
                await self._spawn(child)
                return True
            except OSError as exc:
                waited = time.monotonic() - first
                if waited >= give_up_after:
                    log.error("%s cannot be started again (%s) for %.0f s: giving up", child.name, exc, waited)
                    self.failure = f"{child.name} could not be started again ({exc})"
                    self.failed = True
                    self.request_stop()
                    return False
                log.error("%s cannot be started again (%s): trying again", child.name, exc)
            await asyncio.sleep(1.0)
            if self.stopping:
                return False

    def _watcher_done(self, task: asyncio.Task) -> None:
        """A watcher that ended on an error leaves its child unwatched: the daemon stops (status 1)
        rather than running on without restarts."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("a child's watcher failed (%s: %s): stopping", type(exc).__name__, exc, exc_info=exc)
        self.failure = f"a child's watcher failed ({type(exc).__name__}: {exc})"
        self.failed = True
        self.request_stop()

    def _check_done(self, task: asyncio.Task) -> None:
        """A background check (pinning, stalls, the writer's scheduling) that failed is said, an
        error: the daemon runs on without it (its children and their watchers are unaffected).
        It was "Task exception was never retrieved" at the shutdown, if at all."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("the daemon's check %s failed (%s: %s): it runs on without it", task.get_coro().__name__,
                  type(exc).__name__, exc, exc_info=exc)

    #: how long a tick ring stays past a quarter full, its writer idle, before the supervisor
    #: puts the writer back on normal scheduling itself
    WRITER_RESCUE_S = 1.0

    async def _guard_writer(self) -> None:
        """Rescue a SCHED_IDLE writer that its core starves: when a tick ring fills past a quarter,
        put the writer back on normal scheduling (it returns to SCHED_IDLE by itself once it has
        caught up). The writer does this too, but one that gets no time at all cannot."""
        from tickwire.engine.writer import IdlePolicy

        guard, pid, failing, over = None, None, None, None
        while not self.stopping:
            await asyncio.sleep(0.1)
            proc = self.writer.proc
            if proc is None or proc.returncode is not None:
                continue
            if proc.pid != pid:
                guard, pid, over = IdlePolicy(pid=proc.pid, may_idle=False), proc.pid, None
            before = guard.switches
            try:
                fill = max(len(r) / r.capacity for r in self.tick_rings)
                # a writer that gets any time switches itself within a second (it measures the
                # same fill): stepping in at once said "starved" of one that was not, each time
                if fill > guard.high and guard.idle:
                    over = over or time.monotonic()
                    if time.monotonic() - over < self.WRITER_RESCUE_S:
                        continue
                else:
                    over = None
                guard.update(fill)
            except OSError as e:               # (its /proc reads: e.g. no descriptor left, EMFILE)
                if failing is None:
                    log.warning("cannot check the writer's scheduling (%s): trying again", e)
                failing = e
                continue
            if failing is not None:
                log.info("checking the writer's scheduling again")
                failing = None
            if guard.switches != before:
                log.warning("the writer (pid %d) was starved on core %d: back on normal scheduling",
                            pid, self.writer.cpu)

    async def _watch_stalls(self, say_after: float = STALL_SAY_S, every: float = 0.5) -> None:
        """A worker writes its status every 0.5 s from a thread of its own; one that writes none
        is stopped (SIGSTOP, a debugger) or stuck, and its feed goes unread while its process
        looks alive.  Said (an error) after ``say_after`` seconds; after ``daemon.stall_restart_s``
        (0: never) it is killed, and its watcher restarts it (the tick history resumes: nothing
        is lost).  Timed on this process's monotonic clock, from when the status last changed,
        so that a step of the wall clock is no stall."""
        restart_after = self.cfg.stall_restart_s
        if restart_after > 0:
            say_after = min(say_after, restart_after)
        seen: dict[int, list] = {}                     # worker index -> [(pid, status time), since, said]
        wseen = None                                   # the writer: [(pid, marks), since, said]
        while not self.stopping:
            await asyncio.sleep(every)
            now = time.monotonic()
            wseen = self._watch_writer_stall(wseen, now, say_after * 2)
            for i, child in enumerate(self.workers):
                proc = child.proc
                st = self._status_of(i) if proc is not None and proc.returncode is None else {}
                if not st or st.get("pid") != proc.pid:  # not running, or still starting
                    seen.pop(i, None)
                    continue
                try:                                    # (a worker that cannot rewrite it, its disk
                    touched = os.stat(self.run_dir / f"worker-{i}.json").st_mtime_ns   # full, touches it)
                except OSError:
                    touched = None
                mark, last = (proc.pid, st.get("time"), touched), seen.get(i)
                if last is None or last[0] != mark:
                    if last is not None and last[2]:
                        log.warning("%s (pid %d) writes its status again after a stall of %.1f s", child.name,
                                    proc.pid, now - last[1])
                    seen[i] = [mark, now, False]
                    continue
                stalled = now - last[1]
                if not last[2] and stalled >= say_after:
                    last[2] = True
                    log.error("%s (pid %d) has written no status for %.0f s: it is stopped (SIGSTOP, a debugger) "
                              "or stuck, and reads nothing from its feed%s", child.name, proc.pid, stalled,
                              f"; it is restarted at {restart_after:g} s (daemon.stall_restart_s)" if restart_after > 0
                              else " (daemon.stall_restart_s = 0: it is not restarted)")
                if restart_after > 0 and stalled >= restart_after:
                    log.error("%s (pid %d) stalled for %.0f s: killing it to restart it (it resumes the tick "
                              "history)", child.name, proc.pid, stalled)
                    child.stalls += 1
                    proc.kill()
                    seen.pop(i)

    def _watch_writer_stall(self, last, now: float, say_after: float):
        """The writer's part of :meth:`_watch_stalls`: a writer that rewrites no status file for
        ``say_after`` seconds is stopped or stuck (said once, an error; counted in
        ``tickwire_writer_status_age_seconds``): its rings fill, then the engine waits. A stopped
        writer showed up nowhere: its gauges froze, ``writer_up`` stayed 1, nothing was logged.
        Not restarted: the ticks stay in the rings, and it resumes where it stopped."""
        proc = self.writer.proc if self.writer is not None else None
        if proc is None or proc.returncode is not None:
            self.writer_stalled_since = None
            return None
        marks = self.writer_status_marks()
        if any(m is None for m in marks):             # still starting
            return None
        mark = (proc.pid, tuple(marks))
        if last is None or last[0] != mark:
            if last is not None and last[2]:
                log.warning("the writer (pid %d) writes its status again after a stall of %.1f s", proc.pid,
                            now - last[1])
            self.writer_stalled_since = None
            return [mark, now, False]
        if not last[2] and now - last[1] >= say_after:
            last[2] = True
            self.writer_stalled_since = last[1]
            log.error("the writer (pid %d) has written no status for %.0f s: it is stopped (SIGSTOP, a debugger) or "
                      "stuck; the ticks wait in the rings (kept), and once a ring is full its worker waits",
                      proc.pid, now - last[1])
        return last

    async def _check_pinning(self, within: float = 10.0) -> None:
        """Verify each worker runs on its core only.  A worker pins itself once its imports are
        done, which on a loaded machine can take seconds: each is checked every 0.1 s and found
        wanting only if it is still not pinned after ``within`` seconds."""
        deadline = time.monotonic() + within
        waiting = list(self.workers)
        while waiting and not self.stopping:
            await asyncio.sleep(0.1)
            late = time.monotonic() >= deadline
            for child in list(waiting):
                try:
                    aff = os.sched_getaffinity(child.proc.pid)
                except (OSError, AttributeError):        # gone (or not started): its restart pins itself
                    waiting.remove(child)
                    continue
                if aff == {child.cpu}:
                    log.info("%s pinned to core %d", child.name, child.cpu)
                    waiting.remove(child)
                elif late:
                    log.error("%s is not pinned to core %d after %.0f s (affinity %s)", child.name, child.cpu,
                              within, sorted(aff))
                    waiting.remove(child)

    # -- control --------------------------------------------------------------------------------
    def request_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    def reload(self) -> None:
        if self.stopping:                              # (its children are stopping: nothing to apply)
            log.info("SIGHUP during the shutdown: not reloaded")
            return
        try:
            new = configmod.load(self.config_path)
        except configmod.ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        if [r.kind for r in new.rules] != [r.kind for r in self.cfg.rules]:
            log.error("SIGHUP: the rules' kinds or order changed; only thresholds reload without a restart")
            return
        changed = configmod.restart_keys(self.cfg, new)
        moved = [k for k in changed if k.startswith("rules[")]
        if moved:
            # the thresholds go by position: two rules of a kind swapped in the file had each
            # instrument run with the other's thresholds, the file's meaning unchanged (an
            # adversarial pass); a rule changed beyond its thresholds is a restart's
            log.error("SIGHUP: %s changed: a rule changes in anything but its enter/exit only at a restart "
                      "(its new thresholds would go to the rule as it runs); not reloaded", ", ".join(moved))
            return
        for key in changed:
            log.warning("SIGHUP: %s changed: needs a restart; not applied", key)
        # only the thresholds change: the rest stays as the running processes have it
        before = self.cfg
        self.cfg = dataclasses.replace(self.cfg, rules=tuple(
            dataclasses.replace(old, enter=r.enter, exit=r.exit) for old, r in zip(self.cfg.rules, new.rules)))
        if self.workers:                               # started: a worker restarted from now on gets them too
            try:
                self._freeze_config()
            except OSError as exc:                     # (a full disk: the handler raised, unsaid: a review)
                self.cfg = before
                log.error("SIGHUP: cannot write %s (%s): reload refused, the thresholds stay as they were",
                          self.run_dir / "config.json", exc.strerror or exc)
                return
        self.reloads += 1
        for i, child in enumerate(self.workers):
            # only a worker that has its handler: one still starting would die of the signal's
            # default action (a storm of reloads at start looked like a crash loop); it takes the
            # thresholds from config.json, written above, once it is ready
            if child.proc and child.proc.returncode is None and self._worker_ready(i, child):
                child.proc.send_signal(signal.SIGHUP)
        same = all((o.enter, o.exit) == (n.enter, n.exit) for o, n in zip(before.rules, self.cfg.rules))
        log.info("SIGHUP: %s%s", "the config re-read, rule thresholds unchanged" if same else "rule thresholds reloaded",
                 f" ({len(changed)} other changes not applied: {', '.join(changed)})" if changed else "")

    def _status_of(self, index: int) -> dict:
        """Worker ``index``'s status file ({} when there is none yet)."""
        try:
            return json.loads((self.run_dir / f"worker-{index}.json").read_text())
        except (OSError, ValueError):
            return {}

    def _worker_ready(self, index: int, child: _Child) -> bool:
        """Whether worker ``index`` (``child``'s process) runs its loop, signal handlers in place:
        its status file names its pid (written once they are)."""
        return self._status_of(index).get("pid") == child.proc.pid

    async def _shutdown(self) -> int:
        self.stopping = True
        status = 0
        writer = self.writer.proc if self.writer is not None and self.writer.proc else None
        if writer is not None and writer.returncode is None:
            writer.send_signal(signal.SIGCONT)          # a stopped writer cannot drain
            if self.cfg.store.writer_sched == "idle":
                from tickwire.engine.writer import IdlePolicy

                IdlePolicy(pid=writer.pid).finish()     # drain on normal scheduling
        deadline = time.monotonic() + self.shutdown_timeout
        for child in self.workers:
            if child.proc and child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
                child.proc.send_signal(signal.SIGCONT)  # a stopped worker would be killed at the bound
        crashed = False
        for child in self.workers:
            if child.proc and child.reported is child.proc:
                # died during the run, said then, its restart not begun: not a failed stop (the
                # exit status hung on whether the stop fell within the restart's back-off)
                crashed = True
            elif child.proc and await self._stopped(child, deadline) != 0:
                status = 1
        note = ""
        if writer is not None:
            if writer.returncode is None:
                # the closed tick rings end its stream: it stops by itself once they are stored;
                # SIGTERM only if that takes more than half of what is left, or at once when a
                # worker did not stop cleanly (killed, crashed: its ring will never be closed)
                try:
                    await asyncio.wait_for(writer.wait(), 0 if status or crashed
                                           else max(0.1, (deadline - time.monotonic()) / 2))
                except asyncio.TimeoutError:
                    try:
                        writer.send_signal(signal.SIGTERM)
                        writer.send_signal(signal.SIGCONT)
                    except ProcessLookupError:          # it ended just now
                        pass
            rc = await self._stopped(self.writer, deadline)
            if rc is None:
                note = f"the writer did not finish within {self.shutdown_timeout:.0f} s (stopped or hung): killed"
            elif rc == EXIT_UNSTORED:
                causes = [st.get("gave_up", "") for st in self.writer_status()]
                causes += [st.get("gave_up", "") for st in self.signal_status().get("rings", [])]
                note = "; ".join(dict.fromkeys(c for c in causes if c)) or \
                    "the writer could store them nowhere (its status gives no cause: its log says why)"
            elif rc < 0:
                note = f"the writer was ended by {signal.Signals(-rc).name}"
            elif rc:
                note = f"the writer exited with status {rc}{self._fatal(self.writer)}"
            if rc != 0:
                status = 1
        elif self.writer is not None:
            note = "the writer was not running"
        unstored = self._release_rings(note)
        if self._httpd is not None:
            self._httpd.shutdown()
            try:                                        # the port may be another daemon's next
                (self.run_dir / "metrics.url").unlink()
            except FileNotFoundError:
                pass
        for fd in self._locks:
            os.close(fd)
        self._locks = []
        return EXIT_UNSTORED if unstored else status or int(self.spill_lost or self.held_unstored
                                                            or self.signals_missed > 0)

    async def _stopped(self, child: _Child, deadline: float):
        """Wait for ``child`` until ``deadline``, then kill it; its exit status, None if killed."""
        try:
            rc = await asyncio.wait_for(child.proc.wait(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            log.error("%s did not stop within %.0f s: killed", child.name, self.shutdown_timeout)
            child.proc.kill()
            await child.proc.wait()
            return None
        if rc == -signal.SIGTERM:
            # the workers and the writer hold a SIGTERM from their first lines on and stop cleanly:
            # one ended by it had not reached them (told to stop as it was started), so it had
            # taken nothing from the feed or the rings
            log.info("%s ended by SIGTERM as it started (before it took anything)", child.name)
            return 0
        if rc != 0:
            log.error("%s exited with %s at shutdown", child.name, rc if rc >= 0 else signal.Signals(-rc).name)
        return rc

    def _release_rings(self, note: str) -> int:
        """Unlink the rings whose contents are stored (or spilled), keep the others for the next
        start, and say which on one line; returns the records kept."""
        self.kept = []
        notes = {id(r): self.run_dir / f"feed-{w.name}.json" for r, w in zip(self.tick_rings, self.cfg.workers)}
        for ring, kind in [(r, "ticks") for r in self.tick_rings] + [(r, "signals") for r in self.signal_rings]:
            left = self._unstored(ring, kind) if self.writer is not None else 0
            name = ring.name.lstrip("/")
            if left:
                self.kept.append((name, left, kind))
                _keep(ring)
            else:
                if kind == "ticks" and self.writer is not None:
                    # the worker's history note, up to what the ring held: a worker killed (or
                    # stopped) between two notes left it behind, and the next start would ask the
                    # publisher again for ticks already stored
                    try:
                        settle_history_note(notes[id(ring)], ring)
                    except OSError as exc:
                        # (a full disk: a traceback, the other rings left, exit 1: a review) the
                        # ring is kept, and the next start brings the note up to it before
                        # replacing it
                        log.error("the history note %s cannot be brought up to ring %s (%s): the ring is kept "
                                  "for the next start to do so", notes[id(ring)], name, exc.strerror or exc)
                        _keep(ring)
                        continue
                _drop(ring)
        for ring in self.rings:
            if not ring.closed:
                _drop(ring)
        # (with storage off, none: the status files there are an earlier run's writer's)
        spill = sum(st.get("spill_files", 0) for st in self.writer_status() + [self.signal_status()]) \
            if self.writer is not None else 0
        if self.kept:
            what = " and ".join(f"{sum(n for _, n, k in self.kept if k == kind):,} {kind}"
                                for kind in ("ticks", "signals") if any(k == kind for _, _, k in self.kept))
            self.summary = (f"stopped with {what} NOT stored: kept in shared memory "
                            f"({', '.join(name for name, _, _ in self.kept)}) for the next start with this "
                            f"config to store; {note or 'the writer left them'}")
            level = logging.ERROR
        elif spill:
            # why (a full store disk, too few file descriptors to open it): the exit status is 0,
            # and the line said nothing of it, every start alike (an adversarial pass)
            errors = [st.get("last_error", "") for st in self.writer_status()]
            errors += [r.get("last_error", "") for r in self.signal_status().get("rings", [])]
            why = "; ".join(dict.fromkeys(" ".join(e.split()) for e in errors if e))
            self.summary = (f"stopped: every tick and signal is stored or spilled; {spill} spill file{'s' if spill != 1 else ''} under "
                            f"{self.run_dir / 'writer'} wait for the store (replayed at the next start)"
                            + (f"; the store's last error: {why}" if why else ""))
            level = logging.WARNING
        elif self.writer is None:
            self.summary = "stopped (storage off: nothing was stored)"
            level = logging.INFO
        else:
            self.summary = "stopped: every tick and signal stored"
            level = logging.INFO
        wst, sst = (self.writer_status(), self.signal_status()) if self.writer is not None else ([], {})
        damaged = [(sum(st.get("rows_corrupt", 0) + st.get("rows_missing", 0) for st in wst), "ticks"),
                   (sst.get("corrupt", 0) + sst.get("missing", 0), "signals")]
        if any(n for n, _ in damaged):                 # (it said "every tick and signal stored" over them)
            self.summary += "; but " + " and ".join(f"{n:,} {what}" for n, what in damaged if n) + \
                " of damaged or removed spill files were NOT stored (the log names them)"
            level = max(level, logging.ERROR)
            self.spill_lost = True
        missed = self._signals_missed() - self._missed_before if self.writer is not None else 0
        if missed > 0:
            # a signal ring that lapped its writer (stopped, starved): counted and logged, and the
            # line said "every tick and signal stored" over 8,400 of 21,298 (a fault-injection pass)
            self.summary += (f"; {'and ' if any(n for n, _ in damaged) else 'but '}{missed:,} signals were NOT stored: "
                             f"the signal ring lapped its writer (rings.signals_capacity; the log names the "
                             f"positions)")
            level = max(level, logging.ERROR)
            self.signals_missed = missed
        uncounted = sum(st.get("files_uncounted", 0) for st in wst) + sst.get("uncounted", 0)
        if uncounted:                                  # (a header nobody can trust, unknown to the ledger)
            self.summary += (f"; {'and ' if any(n for n, _ in damaged) else 'but '}{uncounted} damaged spill "
                             f"file(s) of an unknown number of records were set aside, NOT stored (the log names them)")
            level = max(level, logging.ERROR)
            self.spill_lost = True
        if self.failure:                               # (it said only "stopped: every tick and signal stored")
            self.summary = f"gave up ({self.failure}); " + self.summary
            level = max(level, logging.ERROR)
        if note and not self.kept and note != "the writer was not running":
            # (the writer killed at the bound with nothing kept: exit 1, and the line did not say
            # why: a fault-injection pass)
            self.summary += f"; {note}"
            level = max(level, logging.ERROR)
        hist = [st.get("history", {}) for st in self.worker_status() if st]
        lost, unknown = sum(h.get("lost_events", 0) for h in hist), sum(h.get("uncounted_losses", 0) for h in hist)
        if lost or unknown:                            # what was received is stored; this was never received
            self.summary += (f"; the feed's history has holes: {lost:,} events lost" if lost else
                             "; the feed's history has holes") + \
                (f", {unknown} range(s) of unknown size (a publisher restarted without ending its epoch, or "
                 f"while a worker was away)" if unknown else "") + " (tickwire status; docs/storage.md)"
            level = max(level, logging.WARNING)
        # (any worker's feed delivering is enough: a worker that heard nothing at all while the
        # other did, its channels not published, was left out of the line)
        wsts = list(zip(self.cfg.workers, self.worker_status()))
        delivered = any(st.get("feed", {}).get("events") for _, st in wsts if st)
        silent = set()
        for w, st in wsts:
            if not st or not delivered:
                continue
            heard = set()                              # channels with a history (a restarted worker that
            if not st.get("feed", {}).get("events"):   # heard nothing since did hear them before)
                heard = {int(c) for c in self._history_note(w).get("channels") or {}}
            silent |= {i for i in st.get("silent_instruments", ()) if i % self.cfg.feeds.channels not in heard}
        silent = sorted(silent)
        if silent:
            sym = {i.id: i.symbol for i in self.cfg.instruments}
            names = ", ".join(sym.get(i, str(i)) for i in silent[:8]) + (f" and {len(silent) - 8} more"
                                                                          if len(silent) > 8 else "")
            self.summary += (f"; {len(silent)} instrument(s) received no event while the feed delivered "
                             f"({names}): quiet, or on a channel the feed does not carry (is feeds.channels, "
                             f"{self.cfg.feeds.channels}, the publisher's channel count?)")
            level = max(level, logging.WARNING)
        unended = self._unended_channels()
        if unended:
            # a publisher that ended while its receiver was stopped (or was killed) lost what its
            # socket dropped with nothing to count it: 56,320 events, and "every tick stored", exit 0
            self.summary += ("; channel(s) " + ", ".join(
                f"{c} (seq {n - 1:,} the last stored in sequence)" if n else f"{c} (nothing stored in sequence)"
                for c, n, _ in unended) + " were not live at the stop and their publisher's end was never seen: "
                "what it sent after those is not known to have arrived (not counted; docs/storage.md)")
            level = max(level, logging.WARNING)
            held = [(c, h) for c, _, h in unended if h]
            if held:
                # received, held behind a hole until it filled, and dropped at the stop: 548,492
                # events uncounted under "every tick and signal stored", exit 0 (an adversarial pass)
                self.summary = self.summary.replace("stopped: every tick and signal stored", "stopped", 1)
                self.summary += (f"; {sum(h for _, h in held):,} events received after a hole were held at the "
                                 f"stop and NOT stored (channel(s) " + ", ".join(f"{c}: {h:,}" for c, h in held) +
                                 "): the next start asks the publisher for them again, lost if it no longer "
                                 "holds them")
                level = max(level, logging.ERROR)
                self.held_unstored = True
        abandoned = _abandoned_note(wsts) if self.cfg.store.enabled else None
        if abandoned:
            # received and processed, but the tick ring was full at the stop (the writer held back by
            # a full spill or journal directory, or a slow store): said only in the worker's log, under
            # "every tick and signal stored", exit 0 (an adversarial pass)
            self.summary = self.summary.replace("stopped: every tick and signal stored", "stopped", 1)
            self.summary += abandoned
            level = max(level, logging.ERROR)
            self.held_unstored = True
        log.log(level, "%s", self.summary)
        if self.cfg.log_file:                          # the log is in a file: the line goes to stderr too
            print(f"tickwire: {self.summary}", file=sys.stderr, flush=True)
        return sum(n for _, n, _ in self.kept)

    async def run(self, duration: float | None = None, ready=None) -> int:
        """Start everything, supervise until a stop (signal, ``duration``, :meth:`request_stop`),
        shut down; returns the exit status. ``ready()`` is called once all children run."""
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            self.setup()
        except BaseException as exc:
            for ring in self.rings:                     # (adopted rings keep their name: not ours)
                ring.close()
            if self._httpd is not None:
                self._httpd.shutdown()
            if isinstance(exc, OSError) and not isinstance(exc, StartupError):
                # (a full disk under the run directory gave a traceback, exit 1, and a metrics.url
                # of 0 bytes: found by an adversarial pass)
                where = str(exc.filename or "")
                if where.startswith(str(self.cfg.state_dir)):
                    raise StartupError(f"daemon.state_dir: cannot write {where} ({exc.strerror or exc}): expected "
                                       f"a writable directory with room; refusing to start") from None
                raise StartupError(f"cannot start: {where + ': ' if where else ''}{exc.strerror or exc}; "
                                   f"refusing to start") from None
            raise
        children = ([self.writer] if self.writer else []) + self.workers
        for child in children:
            await self._spawn(child)
        watchers = [asyncio.create_task(self._watch(c)) for c in children]
        for w in watchers:
            w.add_done_callback(self._watcher_done)
        checks = [asyncio.create_task(self._check_pinning()), asyncio.create_task(self._watch_stalls())]
        if self.writer is not None and self.cfg.store.writer_sched == "idle":
            checks.append(asyncio.create_task(self._guard_writer()))
        for task in checks:
            task.add_done_callback(self._check_done)
        if ready is not None:
            ready()
        try:
            if duration is None:
                await self._stop_event.wait()
            else:
                try:
                    await asyncio.wait_for(self._stop_event.wait(), duration)
                except asyncio.TimeoutError:
                    pass
        finally:
            status = await self._shutdown()
            for w in watchers:
                w.cancel()
        return max(status, 1) if self.failed else status     # (3, ticks kept, says more than 1)

    # -- status ---------------------------------------------------------------------------------
    def write_children_status(self) -> None:
        """``supervisor.json`` in the run directory: the supervisor's pid and, per child, its pid,
        start time and restarts (``tickwire top`` reads it; written at every start of a child)."""
        kids = self.workers + ([self.writer] if self.writer else [])
        body = {"pid": os.getpid(), "time": time.time(),
                "children": {c.name: {"pid": c.proc.pid if c.proc else 0, "started": c.started,
                                      "restarts": c.restarts,
                                      **({"earlier_events": c.earlier_events} if c in self.workers else {})}
                             for c in kids}}
        if self.metrics_error:
            body["metrics_error"] = self.metrics_error
        try:
            replace_file(self.run_dir / "supervisor.json", json.dumps(body))
        except OSError as exc:                          # a full disk must not stop a restart
            log.warning("cannot write %s: %s", self.run_dir / "supervisor.json", exc)

    def _unended_channels(self) -> list:
        """``(channel, next sequence number stored, events held)`` of the channels a worker had
        stale or recovering at the stop whose publisher was not seen to end (its END heartbeat,
        with every event it announced stored: the history note's ``ended``); held: the events it
        had received after a hole and was holding until the hole filled, not stored yet (its
        status's ``unstored_events``), which the stop does not store. None with storage off:
        nothing is stored, and no history note says which channels ended (a clean run's last line
        warned of channels 'not live at the stop' and 'the last stored in sequence')."""
        if not self.cfg.store.enabled:
            return []
        out = []
        for w, st in zip(self.cfg.workers, self.worker_status()):
            note = self._history_note(w)
            ended, points = note_ended(note), note.get("channels") or {}
            for c, cs in (st.get("channels") or {}).items():
                if cs.get("state") in (None, "live") or int(c) in ended:
                    continue
                # a worker restarted after its publisher had gone heard nothing (stored_next 0): where
                # its history stands is in the note (found by an adversarial pass: 3,215 events
                # lost under "every tick and signal stored")
                point = points.get(str(c))
                nxt = cs.get("stored_next") or (point[1] if isinstance(point, list) and len(point) == 2 else 0)
                # (held and already stored: a channel waiting for a snapshot stores as it goes)
                held = int(cs.get("unstored_events") or 0) if self.cfg.store.enabled else 0
                if nxt or held:
                    out.append((int(c), int(nxt), held))
        return sorted(out)

    def _history_note(self, w) -> dict:
        """Worker ``w``'s history note (``feed-<name>.json``), {} when missing or unreadable."""
        try:
            note = json.loads((self.run_dir / f"feed-{w.name}.json").read_text())
        except (OSError, ValueError):
            return {}
        return note if isinstance(note, dict) else {}

    def worker_status(self) -> list[dict]:
        """Each worker's status file, with ``_touched``: its modification time (a worker that cannot
        write its status, the state directory full, still touches it: alive, its figures frozen);
        {} for a worker not started yet, or whose file is not one of this run's processes' (the last
        run's: `tickwire status` and the metrics served the last run's counters and latency as
        current, with worker_up 1, for up to a second after a start: an adversarial pass). A
        restarted worker's predecessor's file stands until the new process writes its own: the
        stop's line takes the run's losses from it (a review)."""
        out = []
        for i, _ in enumerate(self.cfg.workers):
            path = self.run_dir / f"worker-{i}.json"
            proc = self.workers[i].proc if i < len(self.workers) else None
            try:
                with open(path, "rb") as f:             # (one file: its text and its time)
                    st = json.loads(f.read())
                    st["_touched"] = os.fstat(f.fileno()).st_mtime
            except (OSError, ValueError):
                st = {}
            ours = self.workers[i].pids if i < len(self.workers) else ()
            out.append(st if proc is not None and isinstance(st, dict) and st.get("pid") in ours else {})
        return out

    _DAMAGE = ("rows_corrupt", "rows_missing", "corrupt", "missing", "files_uncounted", "uncounted")

    def _status_files(self) -> list:
        """Per tick ring its writer's status file, then the writer's signals.json."""
        return [self.run_dir / "writer" / ring_keys(self.cfg, i)[0] / "status.json"
                for i, _ in enumerate(self.cfg.workers)] + [self.run_dir / "writer" / "signals.json"]

    @staticmethod
    def _read_status(path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def _with_carried(self, path, st: dict) -> dict:
        carried = self._carried.get(str(path), {})
        if not carried:
            return st
        try:
            now = os.stat(path)
            mark = (str(path), now.st_ino, now.st_mtime_ns)
        except OSError:
            mark = None
        if mark in self._carried_marks:
            # still the dead writer's own file (its successor has not written one yet): its counts
            # are the carried ones, not to be added to them again
            for k in self._DAMAGE:
                st.pop(k, None)
        for k, n in carried.items():
            st[k] = st.get(k, 0) + n
        return st

    def _carry_damage(self, started: float) -> None:
        """The writer died: what it counted of damaged or removed spill files (its status files,
        each counted once) is kept, or its restart (counting from 0) would drop them from the
        status, the metrics and the last line."""
        for path in self._status_files():
            try:
                st = os.stat(path)
            except OSError:
                continue
            mark = (str(path), st.st_ino, st.st_mtime_ns)
            if mark in self._carried_marks or st.st_mtime < started - 1.0:
                continue                               # a writer before it (or a run before) wrote it
            self._carried_marks.add(mark)
            carried = self._carried.setdefault(str(path), {})
            for k, n in self._read_status(path).items():
                if k in self._DAMAGE and isinstance(n, int) and n:
                    carried[k] = carried.get(k, 0) + n

    def _signals_missed(self) -> int:
        """Signals the signal writers have counted missed (a ring that lapped its writer), in all
        runs: their ``position.json`` files, which keep the count from run to run."""
        n = 0
        for i, _ in enumerate(self.cfg.workers):
            try:
                pos = json.loads((self.run_dir / "writer" / ring_keys(self.cfg, i)[1] / "position.json").read_text())
                n += int(pos.get("missed", 0)) if isinstance(pos, dict) else 0
            except (OSError, ValueError, TypeError):
                pass
        return n

    def signal_status(self) -> dict:
        """The writer's ``signals.json`` (empty before it wrote one)."""
        path = self._status_files()[-1]
        st = self._read_status(path)
        return self._with_carried(path, st) if st or self._carried.get(str(path)) else st

    def writer_status_marks(self) -> list:
        """Per tick ring: its writer's status file's (inode, mtime ns), or None (none yet). The
        writer rewrites it every second, busy or idle; a mark that stays is a stopped writer."""
        out = []
        for path in self._status_files()[:-1]:
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return out

    def writer_status(self) -> list[dict]:
        out = []
        for path in self._status_files()[:-1]:
            st = self._read_status(path)
            out.append(self._with_carried(path, st) if st or self._carried.get(str(path)) else st)
        return out


#: The metrics the endpoint serves (engine/metrics.py; docs/monitoring.md).
_Collector = Collector


def _ignoring_late_signals(status: int) -> int:
    """The daemon has stopped and its event loop, closing, put SIGINT, SIGTERM and SIGHUP back to
    their defaults: a second Ctrl-C or SIGTERM from then on killed the process and turned the
    exit status it had earned (0: everything stored) into 130, 143 or 129. Ignored now."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    return status


def _inside_the_package(path: Path) -> Path | None:
    """The tickwire package's directory when ``path`` is in it (or is it), else None."""
    import tickwire

    pkg = Path(tickwire.__file__).resolve().parent
    where = Path(os.path.abspath(path))
    try:
        where = where.resolve()
    except OSError:
        pass
    return pkg if where == pkg or pkg in where.parents else None


def run(config_path, duration=None) -> int:
    """``tickwire run``: load the config, run the supervisor on uvloop until stopped."""
    import uvloop

    raw = configmod.read_raw(config_path)
    cfg = configmod.from_dict(copy.deepcopy(raw[0]), base_dir=raw[1])
    inside = _inside_the_package(cfg.state_dir)
    if inside:
        # (an installed tickwire's example config, run in place: its relative state_dir put the
        # store, spill files and logs inside site-packages, or failed on a root-owned install: a
        # packaging pass)
        print(f"tickwire run: daemon.state_dir: {cfg.state_dir} is inside the installed tickwire package "
              f"({inside}): copy the config to a folder of your own (cp {config_path} tickwire.toml) and run "
              f"that, or set an absolute state_dir", file=sys.stderr, flush=True)
        return 2
    stream = None
    if cfg.log_file:
        # (opened O_NOFOLLOW, in a directory no other user can write: a symlink planted there had
        # the daemon append its log to the link's target, root's files included: an adversarial
        # pass; the workers and the writer open it so too)
        try:
            problem = dir_problem(Path(cfg.log_file).parent, "log directory", root_ok=True)
        except OSError:
            problem = None                             # (missing: the open below says so)
        if problem:
            print(f"tickwire run: daemon.log_file: {problem}", file=sys.stderr, flush=True)
            return 2
        try:
            stream = open_log(cfg.log_file)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                why = f"{cfg.log_file} is a symlink: refusing to follow it (another user may have planted it); remove it"
            else:
                why = (f"cannot write {cfg.log_file} ({exc.strerror or exc}): expected a file in an existing, "
                       f"writable directory")
            print(f"tickwire run: daemon.log_file: {why}", file=sys.stderr, flush=True)
            return 2
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()), stream=stream,
                        format="%(asctime)s supervisor %(levelname)s %(message)s")
    os.sched_setaffinity(0, {cfg.supervisor_cpu})
    sup = Supervisor(cfg, config_path, shutdown_timeout=cfg.shutdown_timeout_s, raw=raw)
    try:
        return _ignoring_late_signals(uvloop.run(sup.run(duration)))
    except StartupError as exc:
        print(f"tickwire run: {exc}", file=sys.stderr, flush=True)
        return 2
