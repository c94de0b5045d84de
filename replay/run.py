"""Replay: events from a source through the engine the daemon's workers run.

Three ways to drive it:

- :meth:`Replay.run` with ``speed=None``: as fast as possible, one ``Engine.process`` per chunk
  (the per-event loop is the engine's C loop; Python runs once per chunk).
- :meth:`Replay.run` with ``speed=N``: paced at N times recorded time (the events' ``ts_event``),
  in-process; the lateness of each batch against its schedule goes to an HDR recorder.
- :meth:`Replay.steps`: an iterator of :class:`Step` (events, signals, the engine with its books and
  features after them), for notebooks and custom analysis.

Replayed signals use the event clock (``ts_signal`` is the trigger's recorded ``ts_recv``), so a
replay gives the same bytes run after run and whatever the batch size; against a daemon run with
``engine.clock = "event"`` every field of every signal is the live one (docs/replay.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from tickwire.engine.pipeline import Engine, StatsConfig, own_rules
from tickwire.ext.hdr import Recorder
from tickwire.ext.records import EVENT_DTYPE, SIGNAL_DTYPE, Flag
from tickwire.feeds.simulator import pace_until

__all__ = ["EngineSpec", "Replay", "ReplayInterrupted", "ReplayResult", "Step", "split_by_time"]


_RESTART = int(Flag.RESTART)


@dataclass(frozen=True)
class EngineSpec:
    """What builds the engine, as a worker builds it: rules, statistics, the channel check.

    ``channels``: the feed's channel count (instrument ``i`` on channel ``i % channels``, as
    ``feeds.channels`` in the daemon config), or None to accept events of any channel.
    """

    rules: tuple = ()
    stats: StatsConfig = field(default_factory=StatsConfig)
    channels: Optional[int] = None

    @classmethod
    def from_config(cls, cfg) -> "EngineSpec":
        """The spec of a daemon :class:`~tickwire.engine.config.Config` (its rules, stats and
        ``feeds.channels``): a replay then runs the engine its workers ran."""
        return cls(tuple(cfg.rules), cfg.stats, cfg.feeds.channels)

    def build(self, instruments) -> Engine:
        """An :class:`Engine` as :class:`tickwire.engine.worker.Worker` builds one, with the event
        clock (replays are deterministic) and no stage timing."""
        insts = list(instruments)
        channels = None if self.channels is None else {i.id: i.id % self.channels for i in insts}
        # each rule narrowed to the instruments replayed, as a worker's to those it serves
        return Engine(insts, own_rules(self.rules, [i.id for i in insts]), self.stats, clock="event",
                      timing_every=0, channels=channels)


@dataclass
class Step:
    """One batch of a step-mode replay: its ``events``, the ``signals`` they produced (a copy),
    and the ``engine`` after them (``engine.book(i)``, ``engine.features(i)``)."""

    events: np.ndarray
    signals: np.ndarray
    engine: Engine

    def book(self, instrument: int):
        return self.engine.book(instrument)

    def features(self, instrument: int) -> dict:
        return self.engine.features(instrument)


@dataclass
class ReplayResult:
    """What a replay did: events and signals counts (``by_rule``: signals per rule id, kept or
    not), wall seconds, whether it was stopped early, the signals (when kept), and for a paced
    replay the schedule lateness recorder."""

    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    signals: np.ndarray = field(default_factory=lambda: np.empty(0, SIGNAL_DTYPE))
    signal_count: int = 0
    interrupted: bool = False
    lateness: Optional[Recorder] = None
    rejects: dict = field(default_factory=dict)
    by_rule: dict = field(default_factory=dict)
    #: exceptions raised by Python rules, by rule name (each counted; the rule's signal skipped)
    rule_errors: dict = field(default_factory=dict)
    #: a paced replay's recorded clock so far (the latest ``ts_event`` met; None: not paced)
    clock_ns: Optional[int] = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class ReplayInterrupted(KeyboardInterrupt):
    """Ctrl-C (a KeyboardInterrupt) during :meth:`Replay.run`: raised on, so that a program
    running several replays stops, with what was done so far as ``result`` (its
    ``interrupted`` set). (The CLI sets :attr:`Replay.stop` from its signal handlers instead,
    and writes the partial results.)"""

    def __init__(self, result: "ReplayResult"):
        super().__init__(f"replay interrupted after {result.events:,} events")
        self.result = result


def split_by_time(events: np.ndarray, every_ns: int, floor: int = -(1 << 63), offset_ns: float = 0.0) -> list:
    """Cut a chunk into ``(clock, events)`` batches where the recorded clock crosses a multiple
    of ``every_ns`` from the chunk's first event (the paced mode's batches: each is sent when its
    first event is due). The recorded clock is the running maximum of ``ts_event`` (from
    ``floor``): an event stamped earlier than one before it (a Kraken level's own old time) is
    due at once instead of stalling or rewinding the schedule; a bad stamp (more than a day from
    where its receipt puts it, the stream's typical ``offset_ns`` taken into account:
    :func:`~tickwire.replay.sources.bad_stamps`) moves no clock (one stamped 2100 held the replay
    until 2100)."""
    from tickwire.replay.sources import clock_strays

    ts = events["ts_event"]
    if not len(ts):
        return []
    bad = clock_strays(events, offset_ns)
    if bad.any():
        ts = np.where(bad, -(1 << 63), ts)
    clock = np.maximum(np.maximum.accumulate(ts), floor)
    if clock[0] == -(1 << 63):                      # bad stamps before any clock: the first good one's,
        good = np.flatnonzero(clock != -(1 << 63))
        if not len(good):                           # or none (None: due at once, no clock set by them)
            return [(None, events)]
        clock = np.where(clock == -(1 << 63), clock[good[0]], clock)
    if every_ns <= 0:
        return [(int(clock[0]), events)]
    marks = (clock - clock[0]) // every_ns
    cut = np.flatnonzero(marks[1:] != marks[:-1]) + 1
    starts = np.concatenate(([0], cut))
    return [(int(clock[a]), events[a:b]) for a, b in zip(starts.tolist(), np.append(cut, len(ts)).tolist())]


def _recorded_max(events: np.ndarray, clock: int, offset_ns: float) -> int:
    """The latest ``ts_event`` of a paced batch, its bad stamps aside (``clock`` if all are)."""
    from tickwire.replay.sources import clock_strays

    ts = events["ts_event"]
    bad = clock_strays(events, offset_ns)
    if bad.any():
        ts = ts[~bad]
    return max(int(ts.max()), clock) if len(ts) else clock


class Replay:
    """Run a source through the engine.

    Parameters
    ----------
    source : iterable of EVENT_DTYPE arrays
        A source of :mod:`tickwire.replay.sources` (it brings ``instruments``), or any iterable
        of chunks with ``instruments`` passed here.
    spec : EngineSpec, optional
        Rules, statistics and channel check (default: no rules, default statistics).
    instruments : list of Instrument, optional
        Default: ``source.instruments``.
    batch : int, optional
        Split chunks into batches of at most this many events (batch size changes no signal).
    on_batch : callable, optional
        ``on_batch(events, signals)`` after each batch in order (a report builder's ``add``).
    keep_signals : bool
        Keep every signal in memory for :attr:`ReplayResult.signals` (64 bytes each: memory
        then grows with the range; False keeps only the counts, and ``on_batch`` sees every
        signal as it comes).
    """

    def __init__(self, source, spec: Optional[EngineSpec] = None, *, instruments=None, batch: Optional[int] = None,
                 on_batch: Optional[Callable] = None, keep_signals: bool = True):
        self.source = source
        self.spec = spec or EngineSpec()
        self.instruments = list(instruments if instruments is not None else source.instruments)
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.batch = batch
        self.on_batch = on_batch
        self.keep_signals = keep_signals
        self.engine = self.spec.build(self.instruments)
        self._ids = {i.id for i in self.instruments}
        self.stop = False                      # set (from a signal handler) to end after the batch
        self._ran = False

    def _once(self) -> None:
        """A Replay runs once: its engine keeps the first run's books, windows and rule states, so a
        second run went on from them (106 signals, then 105 of other bytes: an adversarial pass)."""
        if self._ran:
            raise RuntimeError("this Replay has run: its engine holds that run's books, statistics and rule "
                               "states. Make a new Replay(source, spec) for another run")
        self._ran = True

    def _batches(self) -> Iterator[np.ndarray]:
        for chunk in self.source:
            if chunk.dtype != EVENT_DTYPE:
                raise TypeError(f"a source yielded {chunk.dtype}, not EVENT_DTYPE")
            if self.batch is None or len(chunk) <= self.batch:
                yield chunk
            else:
                for k in range(0, len(chunk), self.batch):
                    yield chunk[k:k + self.batch]

    def _process(self, ev: np.ndarray) -> int:
        """``engine.process``, resetting an instrument where the live worker restarted (a marker
        flagged ``Flag.RESTART``: its engine began afresh there). The engine stops at each
        (:meth:`Engine.process_until`, checked in its own pass over the events: no second scan),
        the rest of the batch goes through in whole slices."""
        eng = self.engine
        total = len(ev)
        if not total:
            return eng.process(ev)
        n, at = 0, 0
        flags = ev["flags"]
        while at < total:
            if int(flags[at]) & _RESTART:
                iid = int(ev["instrument"][at])
                if iid in self._ids:
                    eng.reset_instrument(iid)
            used, sig = eng.process_until(ev if at == 0 else ev[at:], _RESTART)
            n += sig
            at += used
        return n

    def steps(self) -> Iterator[Step]:
        """Step mode: one :class:`Step` per batch (the engine is shared: read it before the next)."""
        self._once()
        eng = self.engine
        for ev in self._batches():
            self._process(ev)
            yield Step(ev, eng.take_signals(), eng)

    def run(self, speed: Optional[float] = None, *, progress: Optional[Callable] = None,
            pace_batch_ns: int = 1_000_000, sink=None) -> ReplayResult:
        """Replay everything (until :attr:`stop` is set).

        Parameters
        ----------
        speed : float, optional
            None: as fast as possible. N > 0: paced at N times recorded time: the events of each
            ``pace_batch_ns`` of wall time (N times that of recorded time) are processed when the
            first of them is due (its ``ts_event`` from the first event's, divided by N; the
            recorded clock never goes back, see :func:`split_by_time`).
        progress : callable, optional
            ``progress(events_done, result)`` after each chunk (the CLI's progress line); when
            paced, also after each batch and while waiting for one (``result.clock_ns``: the
            recorded time reached).
        sink : Republisher, optional
            Send the batches (``sink.send(events)``) instead of processing them: the engine
            is not run; ``sink.serve()`` is called while waiting for the schedule.

        Raises
        ------
        ReplayInterrupted
            On Ctrl-C (a KeyboardInterrupt), with the partial result as ``.result``. Setting
            :attr:`stop` instead ends the run with ``interrupted`` set, nothing raised.
        """
        if speed is not None and not (1e-6 <= speed <= 1e6):
            raise ValueError(f"speed must be a number from 1e-6 to 1e6 (None: as fast as possible), got {speed}")
        self._once()
        res = ReplayResult()
        kept = []
        eng = self.engine
        t_start = time.perf_counter()
        origin = None                          # (first event's ts_event, its wall time in ns)
        lateness = Recorder("send_error") if speed is not None else None
        slot = max(int(pace_batch_ns * speed), 1) if speed is not None else 0

        def waiting():                         # a long wait (a gap of days at x1) still says where it is
            if progress is not None:
                res.seconds = time.perf_counter() - t_start
                if origin is not None:         # the recorded time the schedule has reached: the ETA counts down
                    at = origin[0] + int((time.perf_counter_ns() - origin[1]) * speed)
                    res.clock_ns = at if res.clock_ns is None else max(res.clock_ns, at)
                progress(res.events, res)
        try:
            high = -(1 << 63)                  # the recorded clock so far (running max of ts_event)
            from tickwire.replay.sources import StampOffset

            offsets, offset = StampOffset(self.source), None
            for chunk in self._batches():
                if speed is not None:
                    offset = offsets.of(chunk)     # the stream's typical ts_event - ts_recv
                pieces = [(0, chunk)] if speed is None else split_by_time(chunk, slot, high, offset)
                for clock, ev in pieces:
                    if speed is not None and clock is not None:
                        high = clock
                        now = time.perf_counter_ns()
                        if origin is None:
                            origin = (clock, now)
                        due = origin[1] + int((clock - origin[0]) / speed)
                        if due > now:
                            if not _sleep_until(due, sink, lambda: self.stop, waiting):
                                break                  # stopped while waiting for this batch's time
                            now = time.perf_counter_ns()
                        top = _recorded_max(ev, clock, offset)
                        res.clock_ns = top if res.clock_ns is None else max(res.clock_ns, top)
                        lateness.record(max(now - due, 0))
                    if sink is not None:
                        sink.send(ev)
                        res.batches += 1
                        res.events += len(ev)
                        if self.stop:
                            break
                        continue
                    n = self._process(ev)
                    res.batches += 1
                    res.events += len(ev)
                    if n or self.on_batch is not None:
                        sig = eng.take_signals() if n else np.empty(0, SIGNAL_DTYPE)
                        res.signal_count += n
                        if n:
                            counts = np.bincount(sig["rule_id"])      # rule ids: small integers
                            for r in np.flatnonzero(counts).tolist():
                                res.by_rule[r] = res.by_rule.get(r, 0) + int(counts[r])
                        if self.keep_signals and n:
                            kept.append(sig)
                        if self.on_batch is not None:
                            self.on_batch(ev, sig)
                    if self.stop:
                        break
                    if speed is not None and progress is not None:    # paced: a chunk can take long
                        res.seconds = time.perf_counter() - t_start
                        progress(res.events, res)
                if progress is not None:
                    res.seconds = time.perf_counter() - t_start
                    progress(res.events, res)
                if self.stop:
                    res.interrupted = True
                    break
        except KeyboardInterrupt:
            res.interrupted = True
        res.seconds = time.perf_counter() - t_start
        res.signals = np.concatenate(kept) if kept else np.empty(0, SIGNAL_DTYPE)
        res.lateness = lateness
        res.rejects = eng.books.rejects
        res.rule_errors = {k: v for k, v in eng.rule_errors().items() if v}
        if res.interrupted and not self.stop:
            # a KeyboardInterrupt, not the stop flag: swallowed, a sweep of replays went on with
            # a partial result taken for a whole one
            raise ReplayInterrupted(res)
        return res


def _sleep_until(due_ns: int, sink=None, stopped=None, waiting=None) -> bool:
    """Wait until ``due_ns`` (perf_counter_ns) as the simulator paces its sends (sleep, then spin
    the last tens of microseconds: :func:`tickwire.feeds.simulator.pace_until`); a sink is served
    (recovery requests, heartbeats) at least every 10 ms meanwhile. A long wait (a gap in the
    recorded times, a slow ``--speed``) sleeps in slices of at most 50 ms and returns False as
    soon as ``stopped()`` is true (SIGINT or SIGTERM: their handlers only set a flag, and a
    single long sleep would outlast them); True once ``due_ns`` is reached. ``waiting()`` is
    called after each slice (the progress line)."""
    while True:
        left = due_ns - time.perf_counter_ns()
        if stopped is not None and stopped():
            return False
        if left <= 10_000_000:
            break
        if waiting is not None:
            waiting()
        if sink is not None:
            sink.serve()
        time.sleep(min(left - 10_000_000, 10_000_000 if sink is not None else 50_000_000) / 1e9)
    if sink is not None:
        sink.serve()
    pace_until(due_ns)
    return True
