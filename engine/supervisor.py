"""The daemon's supervisor: asyncio on uvloop, on its own core, never in the hot path.

It creates the shared-memory rings (one blocking tick ring and one broadcast signal ring per
engine worker), starts the storage writer (on ``store.writer_cpu``) and the workers (each pins
itself to its core; the supervisor checks the affinity it reports), and then supervises:

- a worker or the writer that dies is started again (a worker resyncs its books by snapshot: its
  feed handler starts every channel with a snapshot request; the writer resumes from the tick
  ring's committed position);
- a Prometheus metrics endpoint (``metrics.host:port``, localhost by default) publishes the
  workers' and the writer's status files: events, signals, feed gaps, recoveries and drops by
  reason, ring depths, writer rows/spill/lag/outage, restarts and per-stage latency percentiles;
- SIGTERM/SIGINT: workers stop receiving and close their rings, the writer drains them into the
  store, everyone exits within ``shutdown_timeout``; exit status 0 when all went cleanly;
- SIGHUP: re-read the config and, when it is valid, have the workers apply new rule thresholds.

At start it reports, as warnings, whether the workers' cores are isolated (``isolcpus``,
``nohz_full``) and which CPU frequency governor they run under.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from tickwire.engine import config as configmod
from tickwire.engine.worker import ring_names
from tickwire.ext import EVENT_DTYPE, SIGNAL_DTYPE
from tickwire.ext import ring as ringmod
from tickwire.ext.ring import Ring

log = logging.getLogger("tickwire.supervisor")

__all__ = ["Supervisor", "cpu_report", "run"]


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


class _Child:
    def __init__(self, name, argv, cpu):
        self.name, self.argv, self.cpu = name, argv, cpu
        self.proc = None
        self.restarts = 0
        self.started = 0.0


class Supervisor:
    """Runs one daemon (see the module docstring).

    Parameters
    ----------
    cfg : Config
    config_path : path
        The file ``cfg`` came from (workers read it; SIGHUP re-reads it).
    run_dir : path, optional
        Status files, HDR logs and the writer's state (default ``<state_dir>/<run>``).
    """

    def __init__(self, cfg, config_path, run_dir=None, *, shutdown_timeout: float = 20.0, restart_delay: float = 0.5):
        self.cfg = cfg
        self.config_path = str(config_path)
        self.run_dir = Path(run_dir or cfg.state_dir / cfg.run)
        self.shutdown_timeout = shutdown_timeout
        self.restart_delay = restart_delay
        self.rings: list[Ring] = []
        self.tick_rings: list[Ring] = []
        self.workers: list[_Child] = []
        self.writer: _Child | None = None
        self.stopping = False
        self.metrics_port = None
        self._httpd = None
        self._stop_event: asyncio.Event | None = None
        self.reloads = 0
        self.failed = False
        self.warnings: list[str] = []

    # -- setup ----------------------------------------------------------------------------------
    def _make_ring(self, name, dtype, capacity, policy):
        if ringmod.exists(name):
            try:
                old = Ring.attach(name, dtype, role="none")
                busy = old.producer_alive or old.consumer_alive
                old.close()
            except Exception:                   # noqa: BLE001 - unreadable leftovers are replaced
                busy = False
            if busy:
                raise RuntimeError(f"ring {name} is in use by a running process: is this daemon already "
                                   f"running (run '{self.cfg.run}')?")
            log.warning("replacing ring %s left behind by an earlier run", name)
        ring = Ring.create(name, dtype, capacity, policy, role="none", replace=True)
        self.rings.append(ring)
        return ring

    def _python(self, module, *args):
        return [sys.executable, "-m", module, *map(str, args)]

    def setup(self) -> None:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for c in {w.cpu for w in cfg.workers}:
            if c in (cfg.supervisor_cpu, cfg.store.writer_cpu):
                self.warnings.append(f"core {c} runs a worker and the supervisor or writer: they will "
                                     f"compete for it")
        self.warnings += cpu_report(w.cpu for w in cfg.workers)
        for w in self.warnings:
            log.warning("%s", w)
        tick_names, sig_names = [], []
        for i, _ in enumerate(cfg.workers):
            t, s = ring_names(cfg, i)
            self.tick_rings.append(self._make_ring(t, EVENT_DTYPE, cfg.rings.ticks_capacity, "blocking"))
            self._make_ring(s, SIGNAL_DTYPE, cfg.rings.signals_capacity, "broadcast")
            tick_names.append(t)
            sig_names.append(s)
        argv = self._python("tickwire.engine.writer", "--dsn", cfg.store.dsn, "--database", cfg.store.database,
                            "--state-dir", self.run_dir / "writer", "--batch-rows", cfg.store.batch_rows,
                            "--batch-seconds", cfg.store.batch_seconds, "--run", cfg.run,
                            "--cpu", cfg.store.writer_cpu, "--log-level", cfg.log_level)
        if cfg.log_file:
            argv += ["--log-file", str(cfg.log_file)]
        if cfg.store.writer_nice:
            argv += ["--nice", str(cfg.store.writer_nice)]
        argv += ["--sched", cfg.store.writer_sched]
        for t in tick_names:
            argv += ["--ring", t]
        for s in sig_names:
            argv += ["--signal-ring", s]
        self.writer = _Child("writer", argv, cfg.store.writer_cpu) if cfg.store.enabled else None
        for i, w in enumerate(cfg.workers):
            self.workers.append(_Child(w.name, self._python("tickwire.engine.worker", "--config", self.config_path,
                                                             "--worker", i, "--run-dir", self.run_dir), w.cpu))
        self._start_metrics()

    def _start_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        registry.register(_Collector(self))
        server, _ = start_http_server(self.cfg.metrics.port, addr=self.cfg.metrics.host, registry=registry)
        self._httpd = server
        self.metrics_port = server.server_port
        (self.run_dir / "metrics.url").write_text(f"http://{self.cfg.metrics.host}:{self.metrics_port}/metrics\n")
        log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.host, self.metrics_port)

    # -- children -------------------------------------------------------------------------------
    async def _spawn(self, child: _Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(*child.argv)
        child.started = time.time()
        log.info("started %s (pid %d) for core %d", child.name, child.proc.pid, child.cpu)

    async def _watch(self, child: _Child) -> None:
        """Keep a child running until the daemon stops; restart it when it dies. A child that
        keeps dying within seconds of its start is given up on (and the daemon stops, status 1)."""
        fast = 0
        while True:
            rc = await child.proc.wait()
            if self.stopping:
                return
            fast = fast + 1 if time.time() - child.started < 3.0 else 0
            how = rc if rc >= 0 else signal.Signals(-rc).name
            if fast >= 5:
                log.error("%s exited with %s five times within seconds of starting: giving up", child.name, how)
                self.failed = True
                self.request_stop()
                return
            child.restarts += 1
            log.error("%s (pid %d) exited with %s; restarting (restart %d)", child.name, child.proc.pid,
                      how, child.restarts)
            await asyncio.sleep(self.restart_delay * (2 ** fast))
            if self.stopping:
                return
            await self._spawn(child)

    async def _guard_writer(self) -> None:
        """Rescue a SCHED_IDLE writer that its core starves: when a tick ring fills past a quarter,
        put the writer back on normal scheduling (it returns to SCHED_IDLE by itself once it has
        caught up). The writer does this too, but one that gets no time at all cannot."""
        from tickwire.engine.writer import IdlePolicy

        guard, pid = None, None
        while not self.stopping:
            await asyncio.sleep(0.1)
            proc = self.writer.proc
            if proc is None or proc.returncode is not None:
                continue
            if proc.pid != pid:
                guard, pid = IdlePolicy(pid=proc.pid, may_idle=False), proc.pid
            before = guard.switches
            guard.update(max(len(r) / r.capacity for r in self.tick_rings))
            if guard.switches != before:
                log.warning("the writer (pid %d) was starved on core %d: back on normal scheduling",
                            pid, self.writer.cpu)

    async def _check_pinning(self) -> None:
        """Verify each worker runs on its core only (it pins itself at start)."""
        await asyncio.sleep(1.0)
        for child in self.workers:
            try:
                aff = os.sched_getaffinity(child.proc.pid)
            except OSError:
                continue
            if aff != {child.cpu}:
                log.error("%s is not pinned to core %d (affinity %s)", child.name, child.cpu, sorted(aff))
            else:
                log.info("%s pinned to core %d", child.name, child.cpu)

    # -- control --------------------------------------------------------------------------------
    def request_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    def reload(self) -> None:
        try:
            new = configmod.load(self.config_path)
        except configmod.ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        if [r.kind for r in new.rules] != [r.kind for r in self.cfg.rules]:
            log.error("SIGHUP: the rules' kinds or order changed; only thresholds reload without a restart")
            return
        self.cfg = new
        self.reloads += 1
        for child in self.workers:
            if child.proc and child.proc.returncode is None:
                child.proc.send_signal(signal.SIGHUP)
        log.info("SIGHUP: rule thresholds reloaded")

    async def _shutdown(self) -> int:
        self.stopping = True
        status = 0
        if self.writer is not None and self.writer.proc and self.writer.proc.returncode is None \
                and self.cfg.store.writer_sched == "idle":
            from tickwire.engine.writer import IdlePolicy

            IdlePolicy(pid=self.writer.proc.pid).finish()   # drain on normal scheduling
        deadline = time.monotonic() + self.shutdown_timeout
        for child in self.workers:
            if child.proc and child.proc.returncode is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in self.workers + [self.writer]:     # workers first: the writer drains after them
            if child is None or not child.proc:
                continue
            if child is self.writer and child.proc.returncode is None:
                # the closed tick rings end its stream: it stops by itself once they are stored;
                # SIGTERM only if that takes more than half of what is left
                try:
                    await asyncio.wait_for(child.proc.wait(), max(0.1, (deadline - time.monotonic()) / 2))
                except asyncio.TimeoutError:
                    child.proc.send_signal(signal.SIGTERM)
            try:
                rc = await asyncio.wait_for(child.proc.wait(), max(0.1, deadline - time.monotonic()))
                if rc != 0:
                    log.error("%s exited with %s at shutdown", child.name, rc)
                    status = 1
            except asyncio.TimeoutError:
                log.error("%s did not stop within %.0f s: killed", child.name, self.shutdown_timeout)
                child.proc.kill()
                await child.proc.wait()
                status = 1
        for ring in self.rings:
            ring.close()                                 # the creator unlinks
        if self._httpd is not None:
            self._httpd.shutdown()
        return status

    async def run(self, duration: float | None = None, ready=None) -> int:
        """Start everything, supervise until a stop (signal, ``duration``, :meth:`request_stop`),
        shut down; returns the exit status. ``ready()`` is called once all children run."""
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.setup()
        children = ([self.writer] if self.writer else []) + self.workers
        for child in children:
            await self._spawn(child)
        watchers = [asyncio.create_task(self._watch(c)) for c in children]
        asyncio.create_task(self._check_pinning())
        if self.writer is not None and self.cfg.store.writer_sched == "idle":
            asyncio.create_task(self._guard_writer())
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
        return 1 if self.failed else status

    # -- status ---------------------------------------------------------------------------------
    def worker_status(self) -> list[dict]:
        out = []
        for i, _ in enumerate(self.cfg.workers):
            try:
                out.append(json.loads((self.run_dir / f"worker-{i}.json").read_text()))
            except (OSError, ValueError):
                out.append({})
        return out

    def writer_status(self) -> list[dict]:
        out = []
        for i, _ in enumerate(self.cfg.workers):
            t, _s = ring_names(self.cfg, i)
            try:
                out.append(json.loads((self.run_dir / "writer" / t / "status.json").read_text()))
            except (OSError, ValueError):
                out.append({})
        return out


class _Collector:
    """Prometheus metrics from the status files, read at each scrape."""

    def __init__(self, sup: Supervisor):
        self.sup = sup

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sup = self.sup
        c = {name: CounterMetricFamily(f"tickwire_{name}", help_, labels=["worker"]) for name, help_ in (
            ("events", "events processed by the engine"), ("signals", "signals emitted"),
            ("feed_messages", "feed messages received"), ("feed_gaps", "sequence gaps detected"),
            ("feed_recoveries", "snapshot recoveries"), ("worker_restarts", "times the worker was restarted"),
            ("feed_retransmitted", "events the publisher sent again (holes filled)"),
            ("feed_lost_events", "events the publisher could no longer send: lost from the tick history "
                                 "(exact, over every restart of the worker)"))}
        drops = CounterMetricFamily("tickwire_feed_drops", "feed messages dropped, by reason", labels=["worker", "reason"])
        g = {name: GaugeMetricFamily(f"tickwire_{name}", help_, labels=["worker"]) for name, help_ in (
            ("tick_ring_depth", "ticks in the tick ring not yet stored"),
            ("signal_ring_head", "signals published into the signal ring"),
            ("worker_up", "1 when the worker process is running"))}
        lat = GaugeMetricFamily("tickwire_latency_ns", "latency percentiles per stage since start, ns",
                                labels=["worker", "stage", "quantile"])
        for child, st in zip(sup.workers, sup.worker_status()):
            w = child.name
            g["worker_up"].add_metric([w], 1.0 if child.proc and child.proc.returncode is None else 0.0)
            c["worker_restarts"].add_metric([w], child.restarts)
            if not st:
                continue
            c["events"].add_metric([w], st["counts"]["events"])
            c["signals"].add_metric([w], st["counts"]["signals"])
            c["feed_messages"].add_metric([w], st["feed"]["messages"])
            c["feed_gaps"].add_metric([w], st["feed"]["gaps"])
            c["feed_recoveries"].add_metric([w], st["feed"]["recoveries"])
            c["feed_retransmitted"].add_metric([w], st["feed"].get("retransmitted", 0))
            c["feed_lost_events"].add_metric([w], st.get("history", {}).get("lost_events", 0))
            for reason, n in st["feed"]["drops"].items():
                drops.add_metric([w, reason], n)
            g["tick_ring_depth"].add_metric([w], st["tick_ring_depth"])
            g["signal_ring_head"].add_metric([w], st["signal_ring_head"])
            for stage, q in st["latency_ns"].items():
                for key, label in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99"), ("p999", "0.999"),
                                   ("p9999", "0.9999"), ("max", "1")):
                    lat.add_metric([w, stage, label], q[key])
        wr = {name: CounterMetricFamily(f"tickwire_writer_{name}", help_, labels=["ring"]) for name, help_ in (
            ("rows_written", "ticks written to the store"), ("rows_spilled", "ticks spilled to local files"),
            ("batches_written", "insert batches"), ("batches_replayed", "spilled batches replayed"),
            ("sched_switches", "times the writer left or re-entered SCHED_IDLE (it leaves when behind)"))}
        wg = {name: GaugeMetricFamily(f"tickwire_writer_{name}", help_, labels=["ring"]) for name, help_ in (
            ("lag", "ticks in the ring not yet read by the writer"), ("spill_bytes", "bytes in spill files"),
            ("spill_files", "spill files waiting"), ("outage", "1 while the store is unreachable"),
            ("sched_idle", "1 while the writer runs under SCHED_IDLE"))}
        for i, st in enumerate(sup.writer_status()):
            if not st:
                continue
            r = str(i)
            for k in wr:
                wr[k].add_metric([r], st.get(k, 0))
            for k in wg:
                wg[k].add_metric([r], float(st.get(k, 0)))
        sig = GaugeMetricFamily("tickwire_signal_ring_missed", "signals the writer's reader missed (lapped)")
        sig_written = CounterMetricFamily("tickwire_signals_stored", "signals stored by the writer")
        try:
            ss = json.loads((sup.run_dir / "writer" / "signals.json").read_text())
            sig.add_metric([], ss["missed"])
            sig_written.add_metric([], ss["written"])
        except (OSError, ValueError, KeyError):
            pass
        restarts = CounterMetricFamily("tickwire_writer_restarts", "times the writer was restarted")
        restarts.add_metric([], sup.writer.restarts if sup.writer else 0)
        yield from c.values()
        yield drops
        yield from g.values()
        yield lat
        yield from wr.values()
        yield from wg.values()
        yield sig
        yield sig_written
        yield restarts


def run(config_path, duration=None) -> int:
    """``tickwire run``: load the config, run the supervisor on uvloop until stopped."""
    import uvloop

    cfg = configmod.load(config_path)
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()), filename=cfg.log_file or None,
                        format="%(asctime)s supervisor %(levelname)s %(message)s")
    os.sched_setaffinity(0, {cfg.supervisor_cpu})
    sup = Supervisor(cfg, config_path)
    return uvloop.run(sup.run(duration))
