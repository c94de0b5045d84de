"""``tickwire demo``: the whole system on embedded defaults, end to end, with a report.

It writes a daemon configuration for a synthetic market into a run directory, then starts

- the daemon (this process as its supervisor on uvloop, on core 0; one engine worker pinned to
  core 1 on a 2-core machine; the storage writer on core 0 with the embedded ClickHouse store),
- a signal consumer (a thread attached to the signal rings, as a strategy would),
- the feed simulator (``tickwire simulate``, a separate process on core 0) publishing a seeded L3
  market at a constant rate over ZeroMQ ipc,

shows a live one-line progress display while it runs, stops everything with the daemon's own
SIGTERM path, and reports: events published, processed and stored (a count query on the store),
signals emitted and received, feed gaps and recoveries, and per-stage and tick-to-signal latency
percentiles from the workers' HDR recorders.

Interrupted (SIGINT, Ctrl-C, or SIGTERM), it stops the publisher first, lets the worker take in
what was published (a few seconds at most), then stops the daemon the same way, reports, checks
exactly-once on the events published before the interrupt, and exits 130. The simulator and the
daemon's children run in process groups of their own, so a Ctrl-C at the terminal reaches the
demo alone and that order holds; a second one stops the daemon at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tickwire.engine import config as configmod

__all__ = ["demo_raw_config", "run_demo"]


def demo_raw_config(run_dir: Path, *, instruments: int = 8, channels: int = 4, run: str = "demo",
                    clock: str = "wall", workers=None) -> dict:
    """The demo's configuration as a mapping (see docs/config.md)."""
    ncpu = os.cpu_count() or 1
    ipc = configmod.private_ipc_dir() / f"{os.getpid()}-{run}"    # ipc paths must stay short
    if workers is None:
        workers = [{"name": "w0", "cpu": 1 if ncpu > 1 else 0, "instruments": "all"}]
    return {
        "daemon": {"run": run, "state_dir": str(run_dir), "supervisor_cpu": 0, "log_level": "error"},
        "instruments": [{"id": i, "symbol": f"SYN{i}", "tick_size": "0.01", "lot_size": "0.001", "book": "L3"}
                        for i in range(instruments)],
        "feeds": {"endpoints": [f"ipc://{ipc}-feed"], "snapshot": f"ipc://{ipc}-snap", "channels": channels,
                  "stale_after_ms": 3000},
        "workers": workers,
        "stats": {"window": "count", "window_size": 500, "trade_window_size": 200, "imbalance_depth": 5,
                  "ewma_fast_halflife_ns": 50_000_000, "ewma_slow_halflife_ns": 500_000_000,
                  "sample": "message"},               # (as the shipped example config)
        "rules": [
            {"kind": "zscore", "enter": 3.0, "exit": 1.0, "min_count": 100},
            {"kind": "imbalance", "enter": 0.8, "exit": 0.3},
            {"kind": "microprice", "enter": 2.0, "exit": 0.5},
            {"kind": "spread", "enter": 4.0, "exit": 1.5, "min_count": 100},
            {"kind": "vwap", "enter": 20.0, "exit": 5.0, "min_count": 20},
            {"kind": "ewma_cross", "enter": 1.0, "min_count": 20},
        ],
        "store": {"batch_seconds": 0.5, "writer_cpu": 0},
        "rings": {"prefix": "tickwire", "ticks_capacity": 1 << 20, "signals_capacity": 1 << 16},
        "metrics": {"host": "127.0.0.1", "port": 0, "hdr_interval_s": 5.0},
        "engine": {"clock": clock, "timing_every": 16},
    }


# the one line on what makes wire-to-signal faster (measured: docs/performance.md, "Wire-to-signal")
FASTER = ("faster: a core of its own for the worker (feeds.busy_poll = true there) and another for its I/O "
          "thread (feeds.io_cpu, feeds.io_rt_priority), neither shared with the publisher or the consumer; "
          "on a shared 2-core machine they do not help (docs/config.md, docs/performance.md)")


class SignalConsumer(threading.Thread):
    """A strategy stand-in: attaches to the signal rings (broadcast) and counts what arrives."""

    def __init__(self, names):
        super().__init__(daemon=True)
        self.names = names                     # a list, or a callable giving it (read once the daemon set up)
        self.received = 0
        self.missed = 0
        self.last = None
        self.stop = threading.Event()
        self.error = None

    def run(self):
        import numpy as np

        from tickwire.ext import SIGNAL_DTYPE
        from tickwire.ext.ring import Ring

        rings = []
        try:
            names = self.names() if callable(self.names) else self.names
            end = time.monotonic() + 30
            while len(rings) < len(names) and time.monotonic() < end:
                try:
                    rings = [Ring.attach(n, SIGNAL_DTYPE, start="oldest") for n in names]
                except FileNotFoundError:
                    time.sleep(0.05)
            buf = np.empty(4096, dtype=SIGNAL_DTYPE)
            while not self.stop.is_set():
                got = 0
                for r in rings:
                    k = r.pop_many(buf, timeout=0.05)
                    if k:
                        self.received += k
                        self.last = buf[k - 1].copy()
                        got += k
                    self.missed = sum(x.missed for x in rings)
        except Exception as exc:               # noqa: BLE001 - reported at the end
            self.error = exc
        finally:
            for r in rings:
                r.close()


def _fmt_us(ns) -> str:
    return f"{ns / 1000:9.1f}"


#: The exit status of an interrupted demo (as ``tickwire replay``'s: 128 + SIGINT).
EXIT_INTERRUPTED = 130


def run_demo(*, duration: float = 20.0, rate: float = 100_000, instruments: int = 8, channels: int = 4,
             data_dir: str = "tickwire-data", seed: int = 1, say=print, keep: bool = False,
             wire_seconds: float = 3.0) -> int:
    """Run the demo (see the module docstring); returns the exit status (130 when interrupted).
    Refuses to start (StartupError, one line naming the option) on a negative ``wire_seconds``,
    a ``data_dir`` that cannot be made or written, or while another demo runs."""
    from tickwire.engine.supervisor import StartupError, _lock_holder, _try_lock

    from tickwire.engine.config import MAX_SECONDS

    if not 0 <= wire_seconds <= MAX_SECONDS:
        raise StartupError(f"--wire-seconds: expected a number of seconds >= 0 (0: skip) and at most "
                           f"{MAX_SECONDS:g}, got {wire_seconds}")
    # one demo at a time on a machine: two would pin their engines to the same core and each
    # report the other's load as its latency
    lock_path = Path("/tmp") / "tickwire-demo.lock"
    try:
        lock = _try_lock(lock_path, shared=True)    # (every user's demo takes it: 0644)
    except OSError as exc:                      # a symlink; another user's made 0600 before
        owner = ""
        with contextlib.suppress(OSError):
            owner = f", owner uid {os.lstat(lock_path).st_uid}"
        raise StartupError(f"cannot take the demo lock {lock_path} ({exc.strerror or exc}{owner}): its owner or "
                           f"root can remove it") from None
    if lock is None:
        raise StartupError(f"another tickwire demo runs (pid {_lock_holder(lock_path)}, {lock_path}): one demo "
                           f"at a time (two would share the engine's core and each measure the other's load); "
                           f"refusing to start")
    say = _tolerant(say)
    try:
        return _run_demo(duration, rate, instruments, channels, data_dir, seed, say, keep, wire_seconds)
    except KeyboardInterrupt:                    # a Ctrl-C before the daemon started, or after it stopped
        say("\ntickwire demo: interrupted")
        return EXIT_INTERRUPTED
    finally:
        os.close(lock)


def _tolerant(say):
    """``say`` that survives its output going away (``| head``, a closed terminal): the first
    failed write sends the rest to /dev/null. The demo's progress task died of it and never
    stopped the daemon, and its signal handlers died of it before acting: a demo that nothing but
    SIGKILL stopped, holding the demo lock."""
    def out(*args, **kw):
        try:
            say(*args, **kw)
        except OSError:                               # EPIPE, EIO
            _stdout_gone()
    return out


def _stdout_gone() -> None:
    try:
        sys.stdout = open(os.devnull, "w")
    except OSError:
        pass


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError:
        _stdout_gone()


def _drop_old_rings(run_dir: Path) -> None:
    """The rings an earlier demo recorded in its run directory (``rings.json``), removed before
    the directory is: a demo killed by SIGKILL left its rings (72 MB) in /dev/shm for good, the
    next demo deleting the only record of their names. The demo's store goes with the run
    directory, so nothing in them is kept."""
    from tickwire.engine.worker import read_ring_names
    from tickwire.ext import ring as ringmod

    try:
        names = read_ring_names(run_dir) or []
    except (OSError, ValueError, KeyError, TypeError):
        return
    for pair in names:
        for name in pair:
            try:
                if ringmod.exists(name):
                    ringmod.remove(name)
            except OSError:
                pass


def _demo_supervisor_class():
    from tickwire.engine.supervisor import Supervisor

    class DemoSupervisor(Supervisor):
        """The demo's daemon: each child (writer, worker) in a process group of its own, so that a
        Ctrl-C at the terminal (SIGINT to the foreground process group) reaches the demo alone,
        which stops the publisher first and the daemon after it (SIGTERM to its children, as
        always); and the demo's own handlers for SIGINT and SIGTERM in place of the supervisor's,
        from before anything starts."""

        def __init__(self, *args, on_signal, **kw):
            super().__init__(*args, **kw)
            self._on_signal = on_signal

        def _python(self, module, *args):
            # a launcher that leaves the demo's process group, then execs the child as usual (same
            # pid, so the supervisor's death signal and file descriptors carry over)
            return [sys.executable, "-I", "-S", "-c", _OWN_GROUP, *super()._python(module, *args)]

        def setup(self) -> None:
            loop = asyncio.get_running_loop()          # (run() installed its own handlers just before)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
            super().setup()

    return DemoSupervisor


_OWN_GROUP = "import os, sys; os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[1:])"


def _run_demo(duration, rate, instruments, channels, data_dir, seed, say, keep, wire_seconds) -> int:
    import uvloop

    from tickwire.engine import lifeline
    from tickwire.engine.supervisor import StartupError
    from tickwire.engine.worker import ring_names

    state_dir = Path(data_dir).resolve()
    run_dir = state_dir / "demo"                    # the daemon's run directory (state_dir / run)
    raw = demo_raw_config(state_dir, instruments=instruments, channels=channels, run="demo")
    raw["store"]["dsn"] = f"chdb://{run_dir / 'store'}"     # its own store, cleared with the run
    cfg_path = run_dir / "tickwire.toml"
    try:
        if run_dir.exists() and not keep:
            _drop_old_rings(run_dir)
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(configmod.to_toml(raw))
    except OSError as exc:
        raise StartupError(f"--data-dir {data_dir}: cannot make {run_dir} afresh ({exc.strerror or exc}): "
                           f"expected a directory this user can create and write") from None
    cfg = configmod.load(cfg_path)
    os.sched_setaffinity(0, {cfg.supervisor_cpu})
    ncpu = os.cpu_count() or 1
    say(f"tickwire demo: {instruments} instruments over {channels} channels, {rate:,.0f} events/s for "
        f"{duration:.0f} s; worker on core {cfg.workers[0].cpu}, supervisor + writer + simulator on core "
        f"{cfg.supervisor_cpu} ({ncpu} cores)")
    say(f"  config: {cfg_path}   store: {cfg.store.dsn}")

    interactive = sys.stdout.isatty()
    state = {"sim": None, "t0": None, "pump": None, "interrupted": None, "drained": False}

    def on_signal(sig):                             # (each acts first, then says so)
        name = signal.Signals(sig).name
        if state["interrupted"]:                    # a second one: stop the daemon now
            sup.request_stop()
            say(f"\n  {name} again: stopping the daemon now")
            return
        state["interrupted"] = name
        sim = state["sim"]
        if sim is None:                             # nothing published yet
            sup.request_stop()
            say(f"\n  interrupted by {name} before publishing: stopping the daemon")
            return
        if sim.poll() is None:
            sim.send_signal(signal.SIGTERM)         # it stops at its next message, lingers (--linger), says what it published
        say(f"\n  interrupted by {name}: stopping the publisher; the daemon takes in what it published, "
            "then stops")

    sup = _demo_supervisor_class()(cfg, cfg_path, run_dir, on_signal=on_signal)
    consumer = SignalConsumer(lambda: [ring_names(run_dir, i)[1] for i in range(len(cfg.workers))])
    sim_out: list[str] = []

    def start_sim():
        events = int(rate * duration)
        argv = [sys.executable, "-P", "-m", "tickwire", "simulate", "--endpoint", cfg.feeds.endpoints[0],
                "--snapshot", cfg.feeds.snapshot, "--instruments", str(instruments), "--channels", str(channels),
                "--rate", str(rate), "--events", str(events), "--seed", str(seed), "--wait-subscribers", "20",
                "--subscribers", "1", "--start-delay", "1.0", "--linger", "1.0", "--cpu", str(cfg.supervisor_cpu),
                "--resting", "300"]
        # a process group of its own (a Ctrl-C reaches the demo, which stops it first), dying with the demo
        state["sim"] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        process_group=0, env=lifeline.child_env(signal.SIGTERM))
        state["t0"] = time.monotonic()

        def pump():
            for line in state["sim"].stdout:
                sim_out.append(line.rstrip())
        state["pump"] = threading.Thread(target=pump, daemon=True)
        state["pump"].start()

    def progress_line():
        ws = [w for w in sup.worker_status() if w]
        wr = [w for w in sup.writer_status() if w]
        ev = sum(w["feed"]["events"] for w in ws)          # market events, as the publisher counts them
        sig = sum(w["counts"]["signals"] for w in ws)
        gaps = sum(w["feed"]["gaps"] for w in ws)
        # the writer counts rows, snapshot and marker rows included: the ticks are the rest
        stored = max(0, sum(w.get("rows_written", 0) for w in wr)
                     - sum(w["feed"]["snapshot_events"] + w["feed"]["markers"] for w in ws))
        p99 = max((w["latency_ns"]["tick_to_signal"]["p99"] for w in ws), default=0)
        pub = next((m.group(1) for line in reversed(sim_out)       # the final count once it is done
                    if (m := re.match(r"(?:done: |\s*)([\d,]+) events", line))), "0")
        el = time.monotonic() - state["t0"] if state["t0"] else 0.0
        # the simulator prints its count now and then, the worker's status file is a moment old:
        # whatever arrived was published, whatever the consumer received was emitted
        pub_n = max(int(pub.replace(",", "")), ev)
        sig = max(sig, consumer.received)
        line = (f"  {el:5.1f} s  published {pub_n:>11,}  processed {ev:>11,}  stored {stored:>11,}  "
                f"signals {sig:>7,} (received {consumer.received:,})  gaps {gaps}  "
                f"tick-to-signal p99 {p99 / 1000:7.1f} us ")
        if interactive:
            # a line wider than the terminal wraps, and \r goes back to its last row only: each
            # rewrite scrolled (147 columns of it on an 80-column terminal)
            width = shutil.get_terminal_size((80, 24)).columns - 1
            if len(line) > width:
                line = (f" {el:.1f}s pub {pub_n:,} proc {ev:,} stored {stored:,} sig {sig:,}"
                        f" gaps {gaps} p99 {p99 / 1000:.0f}us")[:width].ljust(width)
        return "\r" + line

    async def driver():
        try:
            await drive()
        finally:                                   # whatever happened to the progress, the daemon stops
            sup.request_stop()

    async def drive():
        for w in sup.warnings:
            say(f"  note: {w}")
        await asyncio.sleep(1.5)                   # the worker connects and subscribes
        if state["interrupted"]:
            return
        start_sim()
        consumer.start()
        last_print = 0.0
        while state["sim"].poll() is None:
            await asyncio.sleep(0.25)
            if time.monotonic() - last_print >= (0.5 if interactive else 5.0) and not state["interrupted"]:
                last_print = time.monotonic()
                line = progress_line()
                _write(line if interactive else line.strip("\r") + "\n")
        # the publisher is done (or was stopped): let the worker catch up, then stop the daemon
        await asyncio.to_thread(state["pump"].join, 5)     # its last line read: what it published
        done = re.search(r"done: ([\d,]+) events", "\n".join(sim_out))
        target = int(done.group(1).replace(",", "")) if done else None
        end = time.monotonic() + (10 if state["interrupted"] else 30)
        while target is not None and time.monotonic() < end:
            ws = [w for w in sup.worker_status() if w]
            if ws and sum(w["feed"]["events"] for w in ws) >= target:
                state["drained"] = True
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.6)                   # one more status write
        # (at a terminal over the live line: it was written after it, glued to its end)
        _write((progress_line() if interactive else progress_line().strip("\r")) + "\n")

    async def main():
        task = None

        def ready():
            nonlocal task
            task = asyncio.get_running_loop().create_task(driver())
        status = await sup.run(ready=ready)
        if task is not None and not task.done():
            task.cancel()
        return status

    import logging

    logging.basicConfig(level=logging.ERROR, format="  %(name)s: %(message)s")
    t_start = time.monotonic()
    status = uvloop.run(main())
    consumer.stop.set()
    consumer.join(5)
    if state["sim"] is not None and state["sim"].poll() is None:
        state["sim"].kill()
    code = _report(cfg, sup, consumer, sim_out, status, time.monotonic() - t_start, say,
                   interrupted=state["interrupted"], drained=state["drained"])
    if state["interrupted"]:
        if wire_seconds > 0:
            say("")
            say("wire-to-signal: not measured (interrupted)")
        return EXIT_INTERRUPTED
    if wire_seconds > 0:
        _wire_to_signal(cfg_path, rate, wire_seconds, say)
    return code


def _wire_to_signal(cfg_path, rate, seconds, say) -> None:
    """Wire-to-signal as users mean it, measured by ``tickwire bench`` on this config's engine
    worker (the tick_to_signal above starts at ts_recv, after the wire and the socket queue)."""
    import contextlib
    import io

    from tickwire.engine import bench

    say("")
    say(f"wire-to-signal: tickwire bench on this config's engine worker, {seconds:g} s at {rate:,.0f} events/s "
        "(publisher writing intended send times, a consumer process on the signal ring) ...")
    args = bench.default_args(config=str(cfg_path), rate=str(rate), duration=float(seconds), warmup=1.0,
                              baseline=False, out=str(Path(cfg_path).parent / "bench"), quiet=True, no_plots=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run = bench.run_bench(args)["runs"][0]
    except Exception as exc:                       # noqa: BLE001 - the demo's own report stands
        say(f"  not measured: {exc}")
        return
    w, f = run["latency_ns"]["wire_to_signal"], run["latency_ns"].get("floor", {})
    floor = (f"p50 {f['p50'] / 1e3:,.1f}  p99 {f['p99'] / 1e3:,.1f}" if f.get("count") else
             "not measured")                       # (it printed p50 0.0 p99 0.0)
    say(f"  wire-to-signal (us)  p50 {w['p50'] / 1e3:,.1f}  p99 {w['p99'] / 1e3:,.1f}  p99.99 "
        f"{w['p99.99'] / 1e3:,.1f}  ({w['count']:,} signals); floor (the same messages through a bare "
        f"libzmq subscriber into the ring, same run) {floor}")
    for line in run.get("loss", []):
        # as tickwire bench says it: these figures leave out what never arrived (a stalled engine's
        # 15% of the events, and the stall with them, went unsaid)
        say(f"  INCOMPLETE: {line}: the figures above leave out what was not processed")
    say("  (tick_to_signal above starts when the worker takes the message out of libzmq: the wire, the I/O "
        "thread and the socket queue are outside it; docs/latency.md)")
    say("  " + FASTER)


def _report(cfg, sup, consumer, sim_out, status, elapsed, say, interrupted=None, drained=False) -> int:
    from tickwire.engine.store import Store

    ws = [w for w in sup.worker_status() if w]
    wr = [w for w in sup.writer_status() if w]
    done = re.search(r"done: ([\d,]+) events", "\n".join(sim_out))
    published = int(done.group(1).replace(",", "")) if done else None
    say("")
    say(f"report ({elapsed:.1f} s, daemon exit status {status})")
    if interrupted:
        if not sim_out:
            how = "before the publisher started: nothing was published"
        elif published is None:
            how = "the publisher was stopped before it said what it published"
        else:
            how = "the publisher was stopped first; " + (
                "the daemon took in everything it had published, then stopped" if drained else
                "the daemon was stopped before it had taken in everything published")
        say(f"  interrupted by {interrupted}: {how}")
    if published is None:
        say("  the simulator did not finish: " + (sim_out[-1] if sim_out else "no output"))
    else:
        say(f"  published by the simulator     {published:>14,} events")
    ev = sum(w["counts"]["events"] for w in ws)
    live = sum(w["feed"]["events"] for w in ws)
    say(f"  processed by the engine        {ev:>14,} events ({live:,} live, "
        f"{sum(w['feed']['snapshot_events'] for w in ws):,} snapshot, {sum(w['feed']['markers'] for w in ws):,} markers)")
    say(f"  feed: {sum(w['feed']['messages'] for w in ws):,} messages, {sum(w['feed']['gaps'] for w in ws)} gaps, "
        f"{sum(w['feed']['recoveries'] for w in ws)} recoveries, drops {sum(sum(w['feed']['drops'].values()) for w in ws)}")
    with Store.open(cfg.store.dsn, cfg.store.database) as store:      # the writer has exited: ours now
        stored = store.count_ticks()
        q = (store.count_market_events(), store.client.query(
            f"SELECT uniqExact(channel, seq) FROM {cfg.store.database}.market_events").result_rows[0][0])
        sig_stored = len(store.read_signals(cfg.run))
    say(f"  stored in ClickHouse           {stored:>14,} ticks ({q[0]:,} market events, {q[1]:,} distinct "
        f"channel sequence numbers)")
    ok = published is not None and q[0] == published and q[1] == published
    if ok:
        verdict = "yes" + (f" (the {published:,} published before the interrupt)" if interrupted else "")
    elif interrupted and not drained:             # events in flight at the stop: not a loss to report
        verdict = "not checked (interrupted before the daemon had taken in what was published)"
    else:
        verdict = "NO"
    say(f"  every published event stored exactly once: {verdict}")
    sig = sum(w["counts"]["signals"] for w in ws)
    say(f"  signals: {sig:,} emitted, {consumer.received:,} received by the consumer "
        f"({consumer.missed} missed), {sig_stored:,} stored")
    say(f"  writer: {sum(w.get('batches_written', 0) for w in wr):,} batches, "
        f"{sum(w.get('rows_spilled', 0) for w in wr):,} spilled, lag {sum(w.get('lag', 0) for w in wr):,}")
    say("")
    say("  latency (us), HDR         count       p50       p90       p99     p99.9    p99.99       max")
    for stage in ("decode", "book", "stats", "rules", "tick_to_signal"):
        for w in ws:
            q_ = w["latency_ns"][stage]
            if q_["count"]:
                say(f"  {stage:<18} {q_['count']:>12,} " + " ".join(_fmt_us(q_[k]) for k in
                                                           ("p50", "p90", "p99", "p999", "p9999", "max")))
    say("  (decode: per batch, its first message received -> engine; book/stats/rules: per event, one in "
        f"{cfg.timing_every}; tick_to_signal: message received -> signal in the ring)")
    hlogs = [p for p in (sup.run_dir / "hdr" / f"{w.name}.hlog" for w in sup.cfg.workers) if p.exists()]
    say(f"  HDR interval logs: {', '.join(str(p) for p in hlogs)}")
    if consumer.error:
        say(f"  signal consumer error: {consumer.error}")
    return 0 if (status == 0 and ok) else 1
