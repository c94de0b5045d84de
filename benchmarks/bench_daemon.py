"""The daemon end to end: tick-to-signal latency with and without the storage writer, and
sustained throughput, in one run.

    python benchmarks/bench_daemon.py [--rate R] [--seconds S] [--repeats N]

Each scenario starts a real daemon (supervisor, writer and the worker's ZeroMQ I/O thread on core
0, the engine worker pinned to core 1 and waiting for messages by busy polling,
`feeds.busy_poll = true`) and the feed simulator (core 0) on ZeroMQ ipc, and reads the worker's
HDR recorders:

1. constant rate --rate events/s for --seconds, the writer storing every tick into embedded
   ClickHouse (default scheduling: the writer under SCHED_IDLE, `store.writer_sched = "idle"`);
2. the same stream with storage off (`store.enabled = false`): the engine alone;
   1 and 2 alternate --repeats times; the ratio is of the median p99s (the machine is noisy);
3. the same stream with the ticks going into the tick ring but the writer process paused
   (SIGSTOP): the worker's own share of the storage path;
4. as 1, with the writer on normal scheduling (`store.writer_sched = "normal"`);
5. 1 and 2 once more with the daemon's defaults: the worker blocking in zmq_poll between
   messages (`feeds.busy_poll = false`: its core idles, and a virtual machine's idle core wakes
   slowly) and both I/O threads on normal scheduling;
6. the publisher as fast as it can (pregenerated events): events/s the daemon sustains with
   storage on;
7. interleaved (--toggle-seconds, default 90): one daemon with the writer, which the script stops
   (SIGSTOP) and continues every --toggle-every seconds; the worker's 1 s HDR intervals are sorted
   by what the writer did throughout each, and the p99 of the merged intervals compared. Each
   pair of phases sees the same host at the same time, which separate daemon runs minutes apart
   do not: there the engine-alone p99 itself moves by half between runs.
   `--interleaved-only` runs this scenario alone.

In every scenario but 5 the worker's ZeroMQ I/O thread (on core 0) runs under SCHED_FIFO priority
20 (`feeds.io_rt_priority`), and in 1-4 and 7 the paced publisher under SCHED_FIFO priority 10
(`tickwire simulate --rt-priority`), where the benchmark is permitted (CAP_SYS_NICE). Both share
core 0 with the writer: on normal scheduling its work delays them, and the publisher then sends
the late messages in bursts that the engine works through one after another -- the writer
reshaping the input more than slowing the engine (the publisher stands in for a feed arriving
from another machine).

The issue's target: tick-to-signal p99 with the writer running within 10% of without it; the
verdict printed is scenario 7's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
from common import pin, table

from tickwire.engine.config import to_toml
from tickwire.engine.demo import demo_raw_config

PY = sys.executable
IO_RT_PRIORITY = 20     # the worker's ZeroMQ I/O thread (feeds.io_rt_priority)
SIM_RT_PRIORITY = 10    # the paced publisher, below it (tickwire simulate --rt-priority)


def _writer_pid(ring: str):
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # (the writer is given `--ring KEY=NAME`, the key being the ring's configured name, the
        # segment's own name random per start: matching the whole argument found nothing)
        if b"tickwire.engine.writer" in cmd and any(a == ring.encode() or a.startswith(ring.encode() + b"=")
                                                    for a in cmd):
            return int(proc.name)
    return None


def scenario(work: Path, name: str, rate: float, events: int, store: bool, pause_writer: bool = False,
             sched: str = "idle", busy_poll: bool = True, rt: bool = True, toggle_every: float = 0.0) -> dict:
    """One daemon run. ``toggle_every`` > 0: stop and continue the writer (SIGSTOP/SIGCONT)
    every that many seconds while the publisher runs, with 1 s HDR intervals; the result then
    has ``toggles`` [(wall time, writer running after it)] and ``hlog`` (the worker's log)."""
    raw = demo_raw_config(work / name, run=name)
    if toggle_every:
        raw["metrics"]["hdr_interval_s"] = 1.0
    raw["feeds"]["busy_poll"] = busy_poll
    raw["feeds"]["io_rt_priority"] = IO_RT_PRIORITY if rt else 0
    raw["store"]["enabled"] = store
    raw["store"]["writer_sched"] = sched
    raw["rings"]["ticks_capacity"] = 1 << 22
    raw["engine"]["timing_every"] = 16
    # sensitive thresholds: thousands of signals, so that the tail percentiles mean something
    raw["rules"] = [{"kind": "microprice", "enter": 0.75, "exit": 0.25},
                    {"kind": "imbalance", "enter": 0.5, "exit": 0.2}]
    cfg = work / f"{name}.toml"
    cfg.write_text(to_toml(raw))
    run_dir = work / name / name
    daemon = subprocess.Popen([PY, "-m", "tickwire", "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    status = run_dir / "worker-0.json"
    try:
        end = time.monotonic() + 60
        while not status.exists() and time.monotonic() < end:
            time.sleep(0.1)
        if not status.exists():
            raise RuntimeError(f"the daemon of scenario {name} did not start its worker")
        writer = None
        if pause_writer:                       # the ticks still go into the ring; nobody drains it
            time.sleep(1.0)
            writer = _writer_pid(f"tickwire-{name}-ticks-0")
            if writer is None:
                raise RuntimeError(f"scenario {name}: the daemon's writer was not found (to pause it)")
            os.kill(writer, signal.SIGSTOP)
        f = raw["feeds"]
        argv = [PY, "-m", "tickwire", "simulate", "--endpoint", f["endpoints"][0], "--snapshot", f["snapshot"],
                "--instruments", str(len(raw["instruments"])), "--channels", str(f["channels"]),
                "--rate", str(rate), "--events", str(events), "--wait-subscribers", "30", "--start-delay", "1",
                "--cpu", "0", "--quiet", "--resting", "300"]
        if rate == 0:
            argv.append("--pregenerate")
        if rt and rate:
            argv += ["--rt-priority", str(SIM_RT_PRIORITY)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        end = time.monotonic() + 900
        toggles, running = [], True
        if toggle_every:
            writer = _writer_pid(f"tickwire-{name}-ticks-0")
            toggles.append((time.time(), True))
            next_toggle = time.monotonic() + toggle_every
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01 if toggle_every else 0.05)
            if toggle_every and time.monotonic() >= next_toggle:
                running = not running
                os.kill(writer, signal.SIGCONT if running else signal.SIGSTOP)
                toggles.append((time.time(), running))
                next_toggle += toggle_every
        if toggle_every and not running:
            os.kill(writer, signal.SIGCONT)
            toggles.append((time.time(), True))
        out = proc.communicate()[0]
        if proc.returncode != 0:
            raise RuntimeError(out[-2000:])
        sim = subprocess.CompletedProcess(argv, 0, out)
        end = time.monotonic() + 120
        while time.monotonic() < end:
            st = json.loads(status.read_text())
            if st["feed"]["events"] >= events:
                break
            time.sleep(0.05)
        time.sleep(0.7)
        st = json.loads(status.read_text())
    finally:
        if (pause_writer or toggle_every) and writer:
            os.kill(writer, signal.SIGCONT)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=120)
    out = {"status": st, "sim": sim.stdout.strip().splitlines()[-1]}
    if toggle_every:
        out["toggles"] = toggles
        out["hlog"] = run_dir / "hdr" / "w0.hlog"
    return out


def report_interleaved(split, args) -> None:
    """Print the interleaved run: p99 with the writer running against stopped, same daemon."""
    from tickwire.engine.latency import merged

    running, stopped = split
    print(f"\nInterleaved: one daemon for {args.toggle_seconds:.0f} s at {args.rate:,.0f} events/s, the writer "
          f"stopped (SIGSTOP) and continued every {args.toggle_every:g} s; its 1 s HDR intervals sorted by what the "
          f"writer did throughout (it catches up on the stopped phase's ticks as each running phase begins), us")
    rows, p99s = [], {}
    for label, ivs in (("writer running", running), ("writer stopped", stopped)):
        h = merged(ivs)
        p99s[label] = h.get_value_at_percentile(99.0)
        rows.append([label, str(len(ivs)), f"{h.get_total_count():,}"] +
                    [f"{h.get_value_at_percentile(q) / 1e3:.1f}" for q in (50.0, 90.0, 99.0, 99.9)])
    table(rows, ["", "intervals", "signals", "p50", "p90", "p99", "p99.9"])
    ratio = p99s["writer running"] / p99s["writer stopped"]
    print(f"  target: p99 with the writer running within 10% of with it stopped, same daemon, interleaved: "
          f"{ratio:.2f}x ({'met' if ratio <= 1.10 else 'NOT met'})")


def split_by_writer(res: dict, skip: float = 2.0):
    """The tick-to-signal HDR intervals of a toggled run, sorted by what the writer did for the
    whole interval: ``(running, stopped)`` lists of Interval (intervals that straddle a
    toggle, and the first ``skip`` seconds, left out)."""
    from tickwire.engine.latency import read_interval_log

    toggles = res["toggles"]
    t_first = toggles[0][0] + skip
    running, stopped = [], []
    for iv in read_interval_log(res["hlog"]):
        if iv.tag != "tick_to_signal" or iv.start < t_first or iv.end > toggles[-1][0]:
            continue
        states = {on for t, on in toggles if iv.start < t < iv.end}
        before = [on for t, on in toggles if t <= iv.start]
        if states or not before:
            continue                                  # straddles a toggle
        (running if before[-1] else stopped).append(iv)
    return running, stopped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=100_000, help="events/s of the constant-rate runs [%(default)s]")
    ap.add_argument("--seconds", type=float, default=15, help="length of the constant-rate runs [%(default)s]")
    ap.add_argument("--max-events", type=int, default=2_000_000, help="events of the full-speed run [%(default)s]")
    ap.add_argument("--repeats", type=int, default=5, help="alternations of scenarios 1 and 2 [%(default)s]")
    ap.add_argument("--toggle-seconds", type=float, default=90,
                    help="length of the interleaved run, the writer stopped and continued (0: skip) [%(default)s]")
    ap.add_argument("--toggle-every", type=float, default=3, help="seconds between its toggles [%(default)s]")
    ap.add_argument("--interleaved-only", action="store_true", help="run the interleaved scenario alone")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.interleaved_only and args.toggle_seconds <= 0:
        ap.error("--interleaved-only needs --toggle-seconds > 0")
    work = Path(tempfile.mkdtemp(prefix="tw-bench-daemon-"))
    # this process polls the worker's status 20 times a second: on core 0 with the rest, not
    # beside the engine (the daemon pins its worker to core 1 itself)
    pinned = pin(0)
    print(f"# tickwire daemon benchmark (worker on core 1, busy polling; its ZeroMQ I/O thread (SCHED_FIFO "
          f"{IO_RT_PRIORITY}), the supervisor, writer, simulator (SCHED_FIFO {SIM_RT_PRIORITY}) and this script, "
          f"{pinned}, on core 0)")
    if args.interleaved_only:
        try:
            toggled = scenario(work, "toggled", args.rate, int(args.rate * args.toggle_seconds), True,
                               toggle_every=args.toggle_every)
            report_interleaved(split_by_writer(toggled), args)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    try:
        n = int(args.rate * args.seconds)
        with_writer, without = [], []
        for i in range(args.repeats):
            with_writer.append(scenario(work, f"writer{i}", args.rate, n, True))
            without.append(scenario(work, f"nowriter{i}", args.rate, n, False))
        paused = scenario(work, "paused", args.rate, n, True, pause_writer=True)
        normal = scenario(work, "normal", args.rate, n, True, sched="normal")
        blocking = [scenario(work, "blockw", args.rate, n, True, busy_poll=False, rt=False),
                    scenario(work, "blockn", args.rate, n, False, busy_poll=False, rt=False)]
        full = scenario(work, "full", 0, args.max_events, True)
        split = None
        if args.toggle_seconds > 0:
            toggled = scenario(work, "toggled", args.rate, int(args.rate * args.toggle_seconds), True,
                               toggle_every=args.toggle_every)
            split = split_by_writer(toggled)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def p99(res):
        return res["status"]["latency_ns"]["tick_to_signal"]["p99"]
    rows = []
    runs = [(f"writer storing every tick (SCHED_IDLE), run {i + 1}", r) for i, r in enumerate(with_writer)]
    runs += [(f"storage off (engine alone), run {i + 1}", r) for i, r in enumerate(without)]
    runs += [("ticks into the ring, writer paused", paused),
             ("writer on normal scheduling (store.writer_sched = normal)", normal),
             ("daemon defaults (blocking waits, no SCHED_FIFO), writer storing", blocking[0]),
             ("daemon defaults (blocking waits, no SCHED_FIFO), storage off", blocking[1])]
    for label, res in runs:
        lat = res["status"]["latency_ns"]["tick_to_signal"]
        dec = res["status"]["latency_ns"]["decode"]
        rows.append([label, f"{lat['count']:,}", f"{lat['p50'] / 1e3:.1f}", f"{lat['p90'] / 1e3:.1f}",
                     f"{lat['p99'] / 1e3:.1f}", f"{lat['p999'] / 1e3:.1f}", f"{lat['max'] / 1e3:.1f}",
                     f"{dec['p50'] / 1e3:.1f}", f"{dec['p99'] / 1e3:.1f}"])
    print(f"\nTick-to-signal at {args.rate:,.0f} events/s for {args.seconds:.0f} s (message received -> signal produced), us")
    table(rows, ["scenario", "signals", "p50", "p90", "p99", "p99.9", "max", "decode p50", "decode p99"])
    p99w = statistics.median(p99(r) for r in with_writer)
    p99n = statistics.median(p99(r) for r in without)
    ratio = p99w / p99n if p99n else float("nan")
    pairs = [p99(w) / p99(o) for w, o in zip(with_writer, without)]
    print(f"  separate daemons, alternating: median p99 {p99w / 1e3:.1f} us with the writer vs {p99n / 1e3:.1f} us "
          f"without, {ratio:.2f}x (the interleaved run below is the target's measurement: between separate runs "
          f"the engine-alone p99 itself moves by more than the 10% asked about)")
    print(f"  run by run (each writer run over the storage-off run after it): "
          f"{', '.join(f'{r:.2f}x' for r in pairs)}; median {statistics.median(pairs):.2f}x; storage-off p99 "
          f"spread {min(p99(r) for r in without) / 1e3:.0f}-{max(p99(r) for r in without) / 1e3:.0f} us")
    print(f"  the writer on normal scheduling: {p99(normal) / p99n:.2f}x")
    print(f"  with the daemon's defaults instead (feeds.busy_poll = false, feeds.io_rt_priority = 0, and the "
          f"publisher on normal scheduling): p99 {p99(blocking[0]) / 1e3:.1f} us with the writer, "
          f"{p99(blocking[1]) / 1e3:.1f} us without ({p99(blocking[0]) / p99(blocking[1]):.2f}x, one run each)")
    print(f"  the worker's own storage work (ticks into the ring, writer paused): p99 {p99(paused) / p99n:.2f}x of "
          f"storage off; the rest is the writer's work on core 0, shared with the publisher")
    if split is not None:
        report_interleaved(split, args)
    st = full["status"]
    ev = st["counts"]["events"]
    first, last = st["batch_times_ns"]
    feed = st["feed"]
    print(f"\nFull speed ({args.max_events:,} events, pregenerated): simulator {full['sim']}")
    print(f"  worker: {ev:,} events in {(last - first) / 1e9:.2f} s between its first and last batch, "
          f"{ev / max((last - first) / 1e9, 1e-9) / 1e6:.2f} M events/s received, processed and handed to the "
          f"writer (bounded by the publisher on the other core); gaps {feed['gaps']}, drops {feed['drops'] or 0}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
