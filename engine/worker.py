"""An engine worker: one process pinned to one core, serving a shard of the instruments.

The hot loop runs outside asyncio, in C by default (``feeds.fast_loop``: ``Engine.run_feed``,
without the GIL, returning to Python only for the feed handler's slow path and timers): receive
and decode (the receive loop of :class:`~tickwire.feeds.handler.FeedHandler`), then for each
drained batch

1. run it through the :class:`~tickwire.engine.pipeline.Engine` (books, statistics, rules),
2. push the signals into this worker's broadcast **signal ring**,
3. push the ticks into this worker's blocking **tick ring** (the storage writer drains it; a full
   ring is back-pressure, never loss),

with no Python work per event. The books and the tick history are two streams of the feed
handler: events a snapshot made redundant for the books, and ranges sent again by the
publisher, still reach the tick ring (once, in sequence); snapshot events go to the tick ring
flagged ``SNAPSHOT`` (the writer keeps them apart from the ticks).

**Restarts lose nothing the publisher still holds.** The worker notes, every 100 ms, where each
channel's history stands (``feed-<name>.json`` in the run directory: the publisher epoch, the
next sequence number, the tick ring's position). A restarted worker (after kill -9, say) reads
it back, reads the tick ring from that position to its head for what was pushed after the note,
and asks the publisher for everything after the last event that reached the ring. Stage latencies go to HDR recorders (decode: receive to the start
of processing; book, stats, rules: sampled per event; tick-to-signal: every signal), written to an
HdrHistogram interval log every ``metrics.hdr_interval_s`` and summarised with every counter in a
status file the supervisor serves as metrics. Those two are written by a housekeeping thread, not
by the engine's loop (which only swaps the interval's recorders for a spare set, one pointer): their
~10 ms of JSON and hdrh encoding never stall a message. (A drained batch is at most
``feeds.batch_events`` events, 8192 by default, which bounds how long a signal waits for the rest
of its batch before the push.)

Book requests (``tickwire books``, :mod:`tickwire.engine.live`) arrive on a socket served by a
thread of their own and are answered by the engine's thread between two batches.

Signals: SIGTERM/SIGINT stop the loop, close the rings (end of stream for their readers) and exit
0; SIGHUP re-reads the config file and applies new rule thresholds.

Run by the supervisor as ``python -m tickwire.engine.worker --config FILE --worker N --run-dir DIR``.
"""

from __future__ import annotations

import signal

from tickwire.engine import lifeline

#: A SIGTERM/SIGINT that came while the process started (main() then stops at once, cleanly).
_held_stop = lifeline.hold_stop_signals() if __name__ == "__main__" else []
if __name__ == "__main__":
    # A SIGHUP (a config reload) may come from the supervisor before main() installs its handler,
    # the imports and the books taking up to a second: its default action killed the worker, and
    # a reload storm looked like a crash loop that made the daemon give up. Ignored until then;
    # main() applies the thresholds the supervisor holds once its handler is in place.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

import argparse
import io
import json
import logging
import os
import queue
import re
import secrets
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tickwire.engine import config as configmod
from tickwire.engine.files import log_stream, replace_file
from tickwire.engine.latency import IntervalLogWriter, keep_previous_log
from tickwire.engine.live import BookService, books_endpoint, worker_answer
from tickwire.engine.metrics import LATENCY_BOUNDS_NS, latency_histogram
from tickwire.engine.pipeline import Engine, own_rules
from tickwire.ext import EVENT_DTYPE, SIGNAL_DTYPE, Flag, Kind
from tickwire.ext.hdr import STAGES, StageRecorders
from tickwire.ext.ring import Ring

log = logging.getLogger("tickwire.worker")

#: Seconds a thread may hold the GIL while another wants it (Python's default is 5 ms): the
#: housekeeping thread gives the engine's thread the GIL back within this.
SWITCH_INTERVAL = 0.0002

__all__ = ["Worker", "ring_names", "ring_keys", "read_ring_names", "write_ring_names", "channels_of", "main"]


#: A worker's HDR interval log is moved aside at this size (the 32 newest kept, with those of
#: earlier workers of the run: at the default 10 s interval, three to four days a file).
HLOG_ROTATE_BYTES = 64 << 20

#: The file in the run directory naming the run's rings (0600; the run directory is 0700).
RINGS_FILE = "rings.json"


def ring_keys(cfg, index: int) -> tuple[str, str]:
    """Stable keys of worker ``index``'s tick ring and signal ring (``<prefix>-<run>-ticks-<i>``):
    the writer keeps each ring's state (journal, spill, status) under this key, whatever the
    segment's name in a given daemon run."""
    return f"{cfg.rings.prefix}-{cfg.run}-ticks-{index}", f"{cfg.rings.prefix}-{cfg.run}-signals-{index}"


# -- the history note: where a worker's feed history stands, against its tick ring ------------------

def note_points(note: dict, ring, losses: dict | None = None, times: dict | None = None) -> dict:
    """A history note's per-channel ``(epoch, next_seq)``, moved past the market events ``ring``
    holds after the note's ring position when the note was written against this very ring (its
    creation time): the ticks that reached the ring after the note's last write (it is written
    every 100 ms; a worker that dies leaves it that far behind).

    ``losses``: ``lost_events`` and ``losses`` are added the ranges lost after the note, which
    those ticks skip (the handler moves its history past a lost range as it counts it, so every
    jump in a channel's numbers past the note is one the note did not count: a worker killed
    within 100 ms of a loss left it out of the total, 64 events a kill).

    ``times``: filled with each channel's exchange time the history stands at (the note's
    ``exchange_ns``, moved up to the latest ``ts_event`` of the channel's events the ring holds
    past it): a restart that meets no tick stamps its markers with it."""
    points = {int(c): (int(p[0]), int(p[1])) for c, p in note.get("channels", {}).items()}
    if times is not None:
        for c, t in (note.get("exchange_ns") or {}).items():
            try:
                if int(c) in points and int(t) > 0:
                    times[int(c)] = int(t)
            except (TypeError, ValueError):
                pass
    if int(note.get("ring_created_ns", -1)) != int(ring.created_ns):
        return points
    start = int(note.get("ring_position", 0))
    first, recent = ring.recent(start)
    if first > start:
        log.error("tick ring %s lapped since the history note (%d records unreadable): positions may be "
                  "behind (duplicates possible)", ring, first - start)
    snap = (recent["flags"] & int(Flag.SNAPSHOT)) != 0
    marker = snap & (recent["kind"] == int(Kind.SNAPSHOT))
    for c, (epoch, nxt) in list(points.items()):
        mine = recent["channel"] == c
        # a publisher restart after the note: the channel's markers carry the epoch it follows
        # (order_id); the history of the new epoch starts at sequence 1, after the last such marker
        moved = np.flatnonzero(mine & marker & (recent["order_id"] > np.uint64(epoch)))
        if losses is not None:
            # the note's epoch, from its next_seq, up to the first epoch marker past it; and each
            # later epoch within itself (where it began is not this count's to say)
            cuts = [0] + (np.flatnonzero(mine & marker & (recent["order_id"] != np.uint64(epoch))) + 1).tolist() \
                + [len(recent)]
            for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
                seg = recent["seq"][a:b][(mine & ~snap)[a:b]].astype(np.int64)
                if not len(seg):
                    continue
                steps = np.diff(seg) if k else np.diff(seg, prepend=np.int64(nxt) - 1)
                jumps = steps[steps > 1]
                losses["lost_events"] = losses.get("lost_events", 0) + int((jumps - 1).sum())
                losses["losses"] = losses.get("losses", 0) + len(jumps)
        if len(moved):
            at = int(moved[-1])
            epoch, nxt = int(recent["order_id"][at]), 1
            mine[:at] = False
        seqs = recent["seq"][mine & ~snap]
        if len(seqs):
            nxt = max(nxt, int(seqs.max()) + 1)
        points[c] = (epoch, nxt)
        # (from its events, not its markers: a restart that met no tick and had no time noted stamps
        # them with the local clock, which noted here became the history's exchange time for good,
        # 2026 in a 2023 stream: an upgrade pass)
        if times is not None and (mine & ~marker).any():
            times[c] = max(times.get(c, 0), int(recent["ts_event"][mine & ~marker].max()))
    return points


class _Discard:
    """A file that keeps nothing: the HDR interval log of a worker that could not open its own."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_hdr_log(path: Path, recorders, **kw) -> IntervalLogWriter:
    """A worker's HDR interval log at ``path``, an earlier worker's log there kept aside first
    and rotated at :data:`HLOG_ROTATE_BYTES`. When it cannot be begun (a full disk: a worker
    restarted then died here, at every restart, until the daemon gave up) an error line, and a
    log that keeps nothing: the worker runs all the same (its status and the metrics have the
    latency)."""
    try:
        keep_previous_log(path)
    except OSError as exc:
        log.warning("the previous HDR log %s could not be kept aside (%s): it is started afresh",
                    path, exc.strerror or exc)
    try:
        return IntervalLogWriter(path, recorders, rotate_bytes=HLOG_ROTATE_BYTES, **kw)
    except OSError as exc:
        log.error("HDR interval log %s cannot be started (%s): this worker's latency intervals are not "
                  "logged (status and the metrics still have them)", path, exc.strerror or exc)
        return IntervalLogWriter(_Discard(), recorders, **kw)


def note_ended(note: dict) -> set:
    """The channels a history note says ended (their publisher's END heartbeat seen, every event
    it announced stored). Notes of daemons before 2026-12-07 07:14 (013612f: they have no
    ``exchange_ns``) say none: those of 2026-12-05 13:04-18:29 (4b7d06d..c970d20) also listed
    channels that had only gone silent, and no key tells them from the later ones. Taken at their
    word, an upgrade counted an old epoch's unstored tail as nothing missing (88,128 events of a
    publisher paused at the stop, exit 0: an upgrade pass); not taken, a channel that did end is
    counted as a range of unknown size."""
    if "exchange_ns" not in note:
        return set()
    try:
        return {int(c) for c in note.get("ended") or ()}
    except (TypeError, ValueError):
        return set()


def _say_if_older_note(path, note: dict) -> None:
    """Warn that ``note`` is an older daemon's whose ``ended`` is not taken (:func:`note_ended`)."""
    if not note.get("ended") or note_ended(note):
        return
    log.warning("history note %s is an older daemon's: its channels noted as ended (%s) may only have gone "
                "silent, and are not taken as ended: a publisher restart found now counts what the old epoch "
                "may have lost as a range of unknown size", path, ", ".join(str(c) for c in note["ended"]))


def write_note(path: Path, note: dict) -> None:
    """Write a history note atomically (a reader sees the old one or the new one, whole)."""
    replace_file(path, json.dumps(note))


def settle_history_note(path: Path, ring) -> bool:
    """Before ``ring``, a worker's tick ring with nothing left to store, is replaced by a new one:
    bring the worker's history note at ``path`` up to what the ring holds (:func:`note_points`)
    and detach it from the ring. Without this, a note up to 100 ms behind the ring (a worker
    killed, or stopped, between two writes) would have the next worker ask the publisher again
    for ticks already stored: duplicates. True when the note was written against this ring
    (and so rewritten)."""
    try:
        note = json.loads(path.read_text())
    except (OSError, ValueError):
        return False                           # none, or unreadable: the worker says so when it starts
    if int(note.get("ring_created_ns", -1)) != int(ring.created_ns):
        return False
    before = note.get("channels", {})
    # (an older daemon's note keeps saying no channel ended: given an ``exchange_ns`` below, its
    # ``ended`` would be taken at its word again, a review; said here, as the worker says it of a
    # note it reads, since the settled note no longer shows it)
    _say_if_older_note(path, note)
    note["ended"] = sorted(note_ended(note))
    lost, times = {}, {}
    note["channels"] = {str(c): list(p) for c, p in note_points(note, ring, lost, times).items()}
    if times:                                  # (the exchange time each history stands at, as far)
        note["exchange_ns"] = {str(c): int(t) for c, t in sorted(times.items())}
    for k, n in lost.items():                  # (ranges lost after the note: the next worker counts on)
        note[k] = int(note.get(k, 0)) + n
    note["ring_created_ns"], note["ring_position"] = -1, 0      # against no ring: the next one is new
    write_note(path, note)
    if note["channels"] != before:
        log.info("history note %s brought up to the ticks its replaced ring held: %s", path.name,
                 ", ".join(f"channel {c} from seq {p[1]}" for c, p in sorted(note["channels"].items())))
    return True


def fresh_ring_names(cfg, index: int, token: str) -> tuple[str, str]:
    """Segment names for worker ``index`` with the daemon run's random ``token``
    (``<prefix>-<run>-<token>-ticks-<i>``): another local user cannot guess them before the
    daemon creates them, so cannot take them first (docs/security.md)."""
    return (f"{cfg.rings.prefix}-{cfg.run}-{token}-ticks-{index}",
            f"{cfg.rings.prefix}-{cfg.run}-{token}-signals-{index}")


def made_under(cfg, name: str) -> bool:
    """Whether ring segment ``name`` is one this config's ``rings.prefix`` and ``run`` make
    (:func:`fresh_ring_names`, or an older daemon's :func:`ring_keys`), the whole name matched:
    with run "x", prefix "tw" took "tw-x-x-<token>-ticks-0", prefix "tw-x"'s, for its own."""
    return re.fullmatch(rf"{re.escape(cfg.rings.prefix)}-{re.escape(cfg.run)}-(?:[0-9a-f]{{16}}-)?"
                        rf"(?:ticks|signals)-\d+", name) is not None


def new_ring_token() -> str:
    """64 random bits, hex: the per-run part of the ring names."""
    return secrets.token_hex(8)


def read_ring_names(run_dir) -> list[tuple[str, str]] | None:
    """The (tick ring, signal ring) names per worker that the supervisor recorded in
    ``<run_dir>/rings.json``, or None when there is no such file (no daemon started this run)."""
    try:
        data = json.loads((Path(run_dir) / RINGS_FILE).read_text())
    except FileNotFoundError:
        return None
    return [(w["ticks"], w["signals"]) for w in data["workers"]]


def rings_stored(run_dir) -> bool:
    """Whether the start that recorded ``<run_dir>/rings.json`` ran with storage on (its rings'
    contents are owed to the store); True when the file does not say (written by an older daemon)
    or cannot be read."""
    try:
        return json.loads((Path(run_dir) / RINGS_FILE).read_text()).get("stored", True) is not False
    except (OSError, ValueError, AttributeError):
        return True


def write_ring_names(run_dir, names, stored: bool = True) -> None:
    """Record ``names`` (a list of (tick ring, signal ring) per worker) in ``<run_dir>/rings.json``,
    and whether this start stores them (``stored``: storage on): written 0600 at most, fsynced,
    and renamed into place, so a reader sees the old file or the new one, never a part (under a
    temporary name the daemon's start sweeps when its writer was killed: ``.rings.json.<pid>``
    was left for good, a review)."""
    body = json.dumps({"workers": [{"ticks": t, "signals": s} for t, s in names], "stored": bool(stored)},
                      indent=1)
    replace_file(Path(run_dir) / RINGS_FILE, body, mode=0o600, sync=True)


def ring_names(run_dir, index: int) -> tuple[str, str]:
    """Names of worker ``index``'s tick ring and signal ring in the daemon run whose run
    directory is ``run_dir`` (from its ``rings.json``). ``FileNotFoundError`` when no daemon
    recorded any there."""
    names = read_ring_names(run_dir)
    if names is None:
        raise FileNotFoundError(2, "no daemon has recorded its rings here", str(Path(run_dir) / RINGS_FILE))
    if index >= len(names):
        raise FileNotFoundError(2, f"the daemon's rings.json names no rings for worker {index}",
                                str(Path(run_dir) / RINGS_FILE))
    return names[index]


def channels_of(cfg, instruments) -> dict[int, list[int]]:
    """The feed channels carrying ``instruments`` (instrument ``i`` on channel ``i % channels``)."""
    out: dict[int, list[int]] = {}
    for iid in instruments:
        out.setdefault(iid % cfg.feeds.channels, []).append(iid)
    return out


def percentiles(r) -> dict:
    """count, p50 .. p99.99 and max of an HDR recorder, as values it really holds: a
    percentile is the upper edge of its bucket, which can lie above the largest value recorded."""
    top = r.max_value or 0
    return {"count": r.total, **{k: min(r.value_at_percentile(p), top) for k, p in (
        ("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99))}, "max": top}


def pin(cpu: int) -> int:
    """Pin this process to ``cpu`` and check it took; returns the core."""
    os.sched_setaffinity(0, {cpu})
    got = os.sched_getaffinity(0)
    if got != {cpu}:
        raise RuntimeError(f"pinning to core {cpu} did not take (affinity {sorted(got)})")
    return cpu


class Worker:
    """The worker's state and loop (see the module docstring)."""

    def __init__(self, cfg, index: int, run_dir: Path, config_path=None):
        self.cfg = cfg
        self.index = index
        self.wcfg = cfg.workers[index]
        self.run_dir = Path(run_dir)
        self.config_path = config_path
        self.stop = False
        self.reload = False
        self.frozen_path = None                            # the supervisor's config.json (main sets it)
        insts = [cfg.instrument(i) for i in self.wcfg.instruments]
        self.engine = Engine(insts, own_rules(cfg.rules, self.wcfg.instruments), cfg.stats, clock=cfg.clock,
                             timing_every=cfg.timing_every, channels={i.id: i.id % cfg.feeds.channels for i in insts})
        self.stages = StageRecorders()                     # the engine's thread records here
        self.engine.set_timing(cfg.timing_every, self.stages, to_ring=True)
        self.totals = StageRecorders()                     # earlier intervals (housekeeping)
        self._logged = StageRecorders()                    # the interval being logged (housekeeping)
        self._spare = StageRecorders()                     # swapped in for the next interval
        self._handoff = queue.SimpleQueue()                # full intervals, engine -> housekeeping
        self._swap_lock = threading.Lock()                 # a swap waits while the totals are read
        self._event_seen = {}                              # channel -> ((epoch, next_seq), wall time it moved)
        tick_name, sig_name = ring_names(self.run_dir, index)
        self.ticks = Ring.attach(tick_name, EVENT_DTYPE, role="producer", takeover=True)
        self.signals = Ring.attach(sig_name, SIGNAL_DTYPE, role="producer", takeover=True)
        self.counts = {"events": 0, "signals": 0, "batches": 0, "tick_ring_waits": 0, "ticks_stored": 0,
                       "snapshot_events": 0}
        self.cursor_path = self.run_dir / f"feed-{self.wcfg.name}.json"
        self._note_failing = False
        self.abandoned = 0                                 # ticks not pushed at shutdown (ring full)
        self._resume = {}                                  # where a restart resumed each channel
        self._resume_ended = set()                         # ... those whose publisher had fallen silent
        self._resume_ts = {}                               # ... and the exchange time each stood at
        # losses of earlier workers of this run (uncounted: ranges of unknown size, an epoch gone while away)
        self.lost_before = {"lost_events": 0, "losses": 0, "uncounted_losses": 0}
        self.batch_times_ns = [0, 0]                       # wall clock of the first live batch and the last
        self.store = cfg.store.enabled                     # off: ticks are not stored (benchmarks)
        self.started = time.time()
        self.hdr_dir = Path(cfg.metrics.hdr_dir) if cfg.metrics.hdr_dir else self.run_dir / "hdr"
        self.hdr_dir.mkdir(parents=True, exist_ok=True)
        self.hlog = open_hdr_log(self.hdr_dir / f"{self.wcfg.name}.hlog", self._logged,
                                 interval=cfg.metrics.hdr_interval_s,
                                 comment=f"tickwire worker {self.wcfg.name} on core {self.wcfg.cpu}")
        self.status_path = self.run_dir / f"worker-{index}.json"
        from tickwire.feeds.handler import FeedHandler

        f = cfg.feeds
        self.feed = FeedHandler(list(f.endpoints), channels_of(cfg, self.wcfg.instruments), self.on_batch,
                                on_store=self.on_store if self.store else None,
                                on_snapshot=self.on_snapshot if self.store else None,
                                resume=self.resume_points() if self.store else None,
                                resume_ts=self._resume_ts, resume_ended=self._resume_ended,
                                reorder_window=f.reorder_window_ms / 1000.0,
                                snapshot=f.snapshot or None, socket_type=f.socket.upper(), rcvhwm=f.hwm,
                                silence_timeout=f.stale_after_ms / 1000.0, max_retries=f.recovery_retries,
                                max_events=f.max_message_events, batch_events=f.batch_events,
                                io_cpus=[f.io_cpu], io_rt_priority=f.io_rt_priority, busy_poll=f.busy_poll,
                                curve=feed_curve(f), history_from=f.history_from)
        self.book_service = BookService(books_endpoint(self.run_dir, index), self.answer_books,
                                        name=f"books-{index}", context=self.feed.context)

    # -- the per-batch work (called by the feed handler; events valid during the call) ----------
    def on_batch(self, events: np.ndarray) -> None:
        t0 = time.time_ns()
        rec = int(events["ts_recv"][0])
        if rec:
            self.stages.decode.record(t0 - rec)
        n = self.engine.process(events)                    # signals first: they are latency-bound
        if n:
            self.engine.push_signals(self.signals)         # (their tick-to-signal ends here)
        self.counts["events"] += len(events)
        self.counts["signals"] += n
        self.counts["batches"] += 1
        if not self.batch_times_ns[0] and self.feed.all_live():   # not the markers before the first snapshots
            self.batch_times_ns[0] = t0
        self.batch_times_ns[1] = t0

    def run_fast(self, receiver, buf, seconds: float) -> tuple[int, int]:
        """The live messages for ``seconds``, in C (``Engine.run_feed``): drain, engine, signal
        ring, tick ring, with no Python per message; what the tick ring had no room for is pushed
        here, waiting with the stop flag in view."""
        n, batches, nsig, lo, hi, first, last = self.engine.run_feed(
            receiver, self.ticks if self.store else None, self.signals, buf, seconds)
        if hi > lo:
            self.counts["tick_ring_waits"] += 1
            self._push(buf[lo:hi])
        self.counts["events"] += n
        self.counts["signals"] += nsig
        self.counts["batches"] += batches
        if self.store:
            self.counts["ticks_stored"] += n
        if first:
            if not self.batch_times_ns[0] and self.feed.all_live():
                self.batch_times_ns[0] = first
            self.batch_times_ns[1] = last
        return n, batches

    def on_store(self, events: np.ndarray) -> None:
        """The tick history: into the tick ring, waiting while it is full (never loss)."""
        self._push(events)
        self.counts["ticks_stored"] += len(events)

    def on_snapshot(self, events: np.ndarray) -> None:
        """A snapshot the books were repaired with: kept beside the ticks (flagged SNAPSHOT)."""
        self._push(events)
        self.counts["snapshot_events"] += len(events)

    def _push(self, events: np.ndarray) -> None:
        if self.abandoned:
            # once ticks were given up at the stop, none after them goes in either: the history
            # note, brought up to the ring's last tick, would move past those given up, and the
            # next start would not ask for them again (a review)
            self.abandoned += len(events)
            return
        left = events
        give_up = None
        while len(left):                                   # back-pressure, never loss
            k = self.ticks.push_many(left, timeout=0.5)
            if k < len(left):
                self.counts["tick_ring_waits"] += 1
            left = left[k:]
            if self.stop and not k:
                # at a stop, the writer is given half the supervisor's wait for this worker to make
                # room (after 0.5 s, ticks a writer still starting would have stored were dropped:
                # a review); then what is left is given up, said, counted
                now = time.monotonic()
                if give_up is None:
                    give_up = now + max(0.5, self.cfg.shutdown_timeout_s / 2 - 0.5)
                if now < give_up:
                    continue
                self.abandoned += len(left)
                log.error("tick ring full at shutdown: %d ticks not handed to the writer (the next start "
                          "asks the publisher for them again)", len(left))
                break

    # -- where the history stands (restarts resume from it) ----------------------------------------
    def write_cursor(self) -> None:
        """Note each channel's history position with the tick ring's position (atomically)."""
        if not self.store or self.abandoned:
            return
        history = self.feed.history()
        # channels whose publisher fell silent with everything stored (and those not joined yet
        # in this worker, as the note it started from had them): a new epoch after a restart
        # then leaves nothing of the old one to count as lost
        ended = set(self.feed.ended_channels()) | {c for c in self._resume_ended if history.get(c) is None}
        # channels of the note this worker started from that it does not serve in this run (left
        # out of the config for a while) keep their points: dropped, the run after that joined them
        # afresh, a hole of everything published meanwhile (or, from "start", the retained events
        # stored twice), exit 0 (an adversarial pass)
        kept = {c: p for c, p in self._resume.items() if c not in history}
        ended |= {c for c in self._resume_ended if c in kept}
        note = {"ring_created_ns": int(self.ticks.created_ns), "ring_position": int(self.ticks.position),
                **self.history_losses(),
                "channels": {str(c): list(p if p is not None else self._resume.get(c))
                             for c, p in {**kept, **history}.items()
                             if p is not None or c in self._resume},
                "ended": sorted(ended)}
        # the exchange time each history stands at: a restart that meets no tick stamps its start
        # markers with it (the local clock put them years from the publisher's stream)
        times = self.feed.history_times()
        note["exchange_ns"] = {c: int(times.get(int(c)) or self._resume_ts.get(int(c), 0))
                               for c in note["channels"] if times.get(int(c)) or self._resume_ts.get(int(c))}
        write_note(self.cursor_path, note)

    def note_history(self) -> None:
        """:meth:`write_cursor` from the live loop. A note that cannot be written (the state
        directory's disk full) is said once and tried again at the next: the engine goes on (it
        crashed here, and at every restart, until the daemon gave up: an adversarial pass). The
        note left as it was is behind: a worker that dies meanwhile resumes from it and the ring's
        ticks past it, as after any kill."""
        try:
            self.write_cursor()
        except OSError as exc:
            if not self._note_failing:
                self._note_failing = True
                log.error("history note %s cannot be written (%s): it stays as it was, tried again every "
                          "100 ms", self.cursor_path, exc.strerror or exc)
            return
        if self._note_failing:
            self._note_failing = False
            log.info("history note %s written again", self.cursor_path)

    def resume_points(self) -> dict:
        """Per channel ``(epoch, next_seq)`` after the last tick that reached the tick ring, from
        the last note and what the ring holds past it; empty on a first start."""
        try:
            note = json.loads(self.cursor_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("history note %s unreadable (%s): joining the feed afresh (%s)", self.cursor_path, exc,
                      "with feeds.history_from = \"start\" the publisher's retained events are asked for again "
                      "from sequence 1: those already stored are stored twice"
                      if self.cfg.feeds.history_from == "start" else
                      "what was published since the note's position is not stored, nor counted")
            return {}
        self.lost_before = {k: int(note.get(k, 0)) for k in self.lost_before}
        lost = {}
        times = {}
        points = note_points(note, self.ticks, lost, times)
        self._resume_ts = {c: t for c, t in times.items() if c in points}
        if lost.get("lost_events"):
            log.info("the tick ring past the history note skips %d lost range(s), %d events: counted",
                     lost["losses"], lost["lost_events"])
        for k, n in lost.items():
            self.lost_before[k] += n
        self._resume = dict(points)
        noted = {int(c): int(p[0]) for c, p in note.get("channels", {}).items()}
        # an ended channel stays ended only in the epoch it was noted in (not past a restart the
        # ring shows after the note)
        self._resume_ended = {c for c in note_ended(note) if c in points and points[c][0] == noted.get(c)}
        _say_if_older_note(self.cursor_path, note)
        if points:
            log.info("resuming the tick history after a restart: %s",
                     ", ".join(f"channel {c} from seq {p[1]}" for c, p in sorted(points.items())))
        return points

    def history_losses(self) -> dict:
        """Events the publisher could no longer send, over every worker of this run (exact)."""
        c = self.feed.counters() if hasattr(self, "feed") else {}
        return {k: self.lost_before[k] + c.get(k, 0) for k in self.lost_before}

    # -- bookkeeping ----------------------------------------------------------------------------
    def swap_stages(self) -> bool:
        """Engine's thread, between batches: hand the interval's recorders to housekeeping and
        record into the spare set (one pointer swap; False while the last one is not logged yet)."""
        spare = self._spare
        if spare is None or not self._swap_lock.acquire(blocking=False):   # never waits: next poll
            return False
        try:
            self._spare = None
            full, self.stages = self.stages, spare
            self.engine.set_timing(self.cfg.timing_every, spare, to_ring=True)
            self._handoff.put(full)
        finally:
            self._swap_lock.release()
        return True

    def log_interval(self, full) -> None:
        """Housekeeping: one interval's recorders into the totals and the HDR interval log."""
        for name in STAGES:
            self.totals[name].add(full[name])
            self._logged[name].reset()
            self._logged[name].add(full[name])
            full[name].reset()
        self._spare = full
        self.hlog.write_interval()

    def write_hdr_interval(self) -> None:
        """At shutdown, on the engine's thread once housekeeping has stopped: the last interval."""
        while True:
            try:
                self.log_interval(self._handoff.get_nowait())
            except queue.Empty:
                break
        self._spare = None
        for name in STAGES:
            self.totals[name].add(self.stages[name])
            self._logged[name].reset()
            self._logged[name].add(self.stages[name])
            self.stages[name].reset()                      # in the totals now (the engine has stopped)
        self.hlog.write_interval()

    def housekeeping(self, stop) -> None:
        """The status file and the HDR interval log, on a thread of their own: their JSON and
        hdrh encoding (~10 ms an interval) never stall the engine's loop."""
        next_status = 0.0
        failing = False
        while not stop.is_set():
            try:
                full = self._handoff.get(timeout=0.1)
            except queue.Empty:
                full = None
            try:
                wrote = full is not None
                if full is not None:
                    self.log_interval(full)
                now = time.monotonic()
                if now >= next_status:
                    wrote = True
                    self.write_status()
                    next_status = now + 0.5
                failing = failing and not wrote
            except OSError as exc:                        # a full disk: said once while it lasts
                if not failing:
                    log.error("housekeeping cannot write the status file or the HDR log (%s): tried again",
                              exc.strerror or exc)
                failing = True
                time.sleep(0.5)
            except Exception:                             # noqa: BLE001 - logged; the engine goes on
                log.exception("housekeeping failed (status file or HDR log)")
                time.sleep(0.5)

    def since_start(self) -> dict:
        """Per stage, a recorder with every value since the worker started (housekeeping, or the
        engine's thread while housekeeping is not running). The swap is held off meanwhile and
        intervals handed off are taken into the totals first, so no value is missed or counted
        twice and each count only grows (the latency histograms are Prometheus counters)."""
        out = {}
        with self._swap_lock:
            while True:
                try:
                    self.log_interval(self._handoff.get_nowait())
                except queue.Empty:
                    break
            for name in STAGES:
                out[name] = self.totals[name].copy()
                out[name].add(self.stages[name])
        return out

    def _channels(self) -> dict:
        """The feed's channels with the time of their last message and (to within the status
        period) of their last event: when the sequence number last moved."""
        now = time.time()
        out = {}
        for cid, v in self.feed.channel_status().items():
            v["last_message_ns"] = int(self.feed.receiver.last_recv_ns(cid))
            where = (v["epoch"], v["next_seq"])
            seen = self._event_seen.get(cid)
            if seen is None or seen[0] != where:
                seen = self._event_seen[cid] = (where, now if seen is not None and v["next_seq"] else 0.0)
            v["last_event_time"] = seen[1]
            out[str(cid)] = v
        return out

    def status(self) -> dict:
        lat, hist = {}, {}
        for name, r in self.since_start().items():
            lat[name] = percentiles(r)
            lat[name]["rejected"] = r.rejected      # out of range: not in the figures (negative: a clock step)
            hist[name] = latency_histogram(r)
        books = self.engine.books
        feed = self.feed.counters()
        return {
            "worker": self.wcfg.name, "index": self.index, "pid": os.getpid(), "cpu": self.wcfg.cpu,
            "affinity": sorted(os.sched_getaffinity(0)), "started": self.started, "time": time.time(),
            "batch_times_ns": list(self.batch_times_ns),
            "io_thread": {"cpu": self.cfg.feeds.io_cpu, "realtime": self.feed.io_realtime,
                          "busy_poll": self.cfg.feeds.busy_poll},
            "instruments": list(self.wcfg.instruments), "counts": dict(self.counts), "feed": feed,
            # instruments no event has reached since this worker started (a feeds.channels other
            # than the publisher's channel count left half of them silent, unsaid)
            "silent_instruments": self._silent_instruments(),
            "history": self.history_losses(),
            # ticks received and processed but not handed to the tick ring at the stop (it was full)
            "abandoned_ticks": int(self.abandoned),
            "channels": self._channels(),
            "book_rejects": books.rejects, "tick_ring_depth": int(len(self.ticks)),
            "tick_ring_capacity": int(self.ticks.capacity),
            "signal_ring_head": int(self.signals.head), "latency_ns": lat,
            "latency_hist": {"bounds_ns": list(LATENCY_BOUNDS_NS), "stages": hist},
            "rules": [list(r) for r in self.engine.rule_thresholds()],
            "rule_signals": self.engine.rule_signals,
            # statistics updates of events stamped more than a day after their receipt (no time passed)
            "future_stamps": self.engine.future_stamps,
            # samples the time windows let go early, full at stats.max_capacity
            "window_dropped": self.engine.window_dropped,
        }

    def _silent_instruments(self) -> list:
        """The instruments whose statistics no book update or trade has reached since this worker
        started (markers do not count); once one has, it is not looked at again."""
        silent = getattr(self, "_silent", None)
        if silent is None:
            silent = list(self.wcfg.instruments)
        self._silent = [i for i in silent if not self.engine.features(i)["updates"]]
        return self._silent

    def write_status(self) -> None:
        try:
            replace_file(self.status_path, json.dumps(self.status()))
        except OSError:
            try:
                # alive all the same: the supervisor's stall watch sees the file's time move (a
                # full disk stopped the status, and a healthy worker was restarted at 30 s, again
                # and again while the disk stayed full)
                os.utime(self.status_path)
            except OSError:
                pass
            raise

    def save_books(self) -> None:
        """Every book as snapshot events (``book_<id>``, seq 0, ts 0) in ``books-<index>.npz``:
        the worker's final state, comparable with a publisher's (``tickwire simulate --save-books``)."""
        arrays = {f"book_{b.instrument}": b.snapshot_events() for b in self.engine.books}
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        replace_file(self.run_dir / f"books-{self.index}.npz", buf.getbuffer())   # (in place, a full disk
                                                                                    # left half a file)

    def answer_books(self, ids, depth) -> dict:
        """Engine's thread, between batches: a book request (``tickwire book``, ``tickwire top``)."""
        insts = [self.cfg.instrument(i) for i in self.wcfg.instruments]
        return worker_answer(self.engine, insts, self.wcfg.name, ids, depth)

    def apply_reload(self) -> None:
        """New rule thresholds from the configuration the supervisor holds (its frozen
        ``config.json``, written before it signals: it validated the file and applied the
        thresholds); the config file itself without a frozen one. Re-reading the file here gave
        a worker whatever the file held at that moment: a half-made edit refused in one worker
        while the supervisor had accepted the version before it."""
        self.reload = False
        try:
            if self.frozen_path is not None:
                new = load_frozen(self.frozen_path)
            else:
                new = configmod.load(self.config_path)
        except (configmod.ConfigError, OSError, ValueError, KeyError) as exc:
            log.error("reload refused: %s", exc)
            return
        if [(r.kind, r.enter, r.exit) for r in new.rules] == [tuple(t) for t in self.engine.rule_thresholds()]:
            return                                     # (nothing new: the check at start, or a repeat)
        old = self.engine.rule_thresholds()
        if [r.kind for r in new.rules] != [k for k, _, _ in old]:
            log.error("reload refused: the rules' kinds or order changed (restart to change rules)")
            return
        for rid, rule in enumerate(new.rules):
            self.engine.update_rule(rid, rule.enter, rule.exit)
        log.info("rule thresholds reloaded: %s", [(r.kind, r.enter, r.exit) for r in new.rules])

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """The engine's loop: receive, process, push; the cursor note (it must match what reached
        the tick ring) and the interval swap stay here, the rest runs on the housekeeping thread."""
        next_cursor = 0.0
        next_hdr = time.monotonic() + self.cfg.metrics.hdr_interval_s
        sys.setswitchinterval(SWITCH_INTERVAL)
        try:
            self.write_status()
        except OSError:                                     # (a full disk: housekeeping says so, and retries)
            pass
        stop_hk = threading.Event()
        hk = threading.Thread(target=self.housekeeping, args=(stop_hk,), name="housekeeping", daemon=True)
        hk.start()
        self.book_service.start()
        fast = self.cfg.feeds.fast_loop and not self.engine.needs_gil
        log.info("live loop: %s", "in C (drain, engine, rings)" if fast else "per batch from Python")
        try:
            while not self.stop:
                if fast:
                    self.feed.poll_fast(self.run_fast, 0.05)
                else:
                    self.feed.poll(0.05)
                if self.book_service.pending is not None:
                    self.book_service.answer_pending()
                now = time.monotonic()
                if now >= next_cursor:
                    self.note_history()
                    next_cursor = now + 0.1
                if now >= next_hdr and self.swap_stages():
                    next_hdr = now + self.cfg.metrics.hdr_interval_s
                if self.reload:
                    self.apply_reload()
        finally:
            self.book_service.close()
            stop_hk.set()
            hk.join(timeout=5)
            # each step on its own: with the state directory full, the first file write raised
            # and the rings were never closed (the writer waited for their end until killed)
            for what, step in (("the history note", self.write_cursor), ("the feed", self.feed.close),
                               ("the books file", self.save_books), ("the HDR log", self.write_hdr_interval),
                               ("the HDR log", lambda: self.hlog.close(final=False)),
                               ("the status file", self.write_status)):
                try:
                    step()
                except OSError as exc:
                    log.error("at the stop, %s could not be written (%s); the rings are closed all the same",
                              what, exc)
            self.ticks.close()                             # end of stream for the writer
            self.signals.close()
        return 0


load_frozen = configmod.load_frozen

CURVE_ENV = configmod.CURVE_ENV


def feed_curve(f):
    """The feed's CURVE client: the certificate the supervisor read at the daemon's start (its
    environment), else the key file as it is now (a worker run on its own)."""
    if not f.curve_server_key:
        return None
    cert = os.environ.get(CURVE_ENV, "")
    if not cert:
        return f.curve()
    from tickwire.feeds.curve import CurveClient, public_key

    pub, _, sec = cert.partition(" ")
    return CurveClient(public_key(f.curve_server_key), pub.encode(), sec.encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tickwire.engine.worker", description="One tickwire engine worker.")
    ap.add_argument("--config", required=True)
    ap.add_argument("--worker", type=int, required=True, help="index into the config's workers")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--frozen", default=None, metavar="JSON",
                    help="the configuration as the supervisor holds it (its config.json), in place of --config's "
                         "file as it is now (SIGHUP still re-reads that file for the rule thresholds)")
    args = ap.parse_args(argv)
    lifeline.bind_to_parent()                # SIGTERM when the supervisor dies (kill -9 included)
    if args.frozen:
        cfg = load_frozen(args.frozen)
    else:
        cfg = configmod.load(args.config)
    w = cfg.workers[args.worker]
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()), stream=log_stream(cfg.log_file),
                        format=f"%(asctime)s {w.name} %(levelname)s %(message)s")
    pin(w.cpu)
    worker = Worker(cfg, args.worker, Path(args.run_dir), args.config)
    worker.frozen_path = args.frozen

    def stop(*_):
        worker.stop = True

    def reload(*_):
        worker.reload = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    if _held_stop:                           # told to stop while starting: stop now, rings closed
        log.info("%s while starting: stopping", signal.Signals(_held_stop[0]).name)
        worker.stop = True
    worker.reload = bool(args.frozen)        # thresholds a reload ignored while starting (see the top)
    log.info("serving instruments %s on core %d", list(w.instruments), w.cpu)
    try:
        return worker.run()
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)   # stopped: a late signal must not turn a clean exit into a kill


if __name__ == "__main__":
    sys.exit(main())
