"""What `tickwire top` costs: its own CPU, and the daemon's with top absent, running and suspended.

A daemon (one worker pinned to core 1) is fed a synthetic market at a constant rate by the
simulator (core 0); `tickwire top` runs in a real terminal (a tmux pane, core 0) at --refresh.
Phases of --seconds each, in the order absent, running, suspended (SIGSTOP), repeated --reps
times; for each phase:

- top's CPU (utime + stime from /proc over the phase) as a percentage of one core;
- the worker's CPU per million events, events processed per second (status file) and the
  per-stage latency p50/p99/p99.9 of the HDR intervals that ended within the phase.

Medians over the repetitions are printed.  Needs tmux.

    python benchmarks/bench_top.py [--rate 50000] [--seconds 20] [--reps 2] [--refresh 0.5]
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

PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def wait_for(pred, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=50_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--refresh", type=float, default=0.5)
    ap.add_argument("--size", default="80x24", help="terminal WIDTHxHEIGHT [%(default)s]")
    ap.add_argument("--nice", type=int, default=10, help="top's --nice [%(default)s]")
    args = ap.parse_args()
    tmux = shutil.which("tmux")
    if not tmux:
        print("bench_top: needs tmux (apt-get install tmux)", file=sys.stderr)
        return 2
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config
    from tickwire.engine.latency import iter_interval_log, merged

    tmp = Path(tempfile.mkdtemp(prefix="bench-top-"))
    raw = demo_raw_config(tmp / "state", run="benchtop")
    raw["metrics"]["hdr_interval_s"] = 1.0
    cfg = tmp / "benchtop.toml"
    cfg.write_text(to_toml(raw))
    run_dir = tmp / "state" / "benchtop"
    status = lambda: json.loads((run_dir / "worker-0.json").read_text())  # noqa: E731
    log = open(tmp / "daemon.log", "w")
    daemon = subprocess.Popen([PY, "-m", "tickwire", "run", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    sock = f"bench-top-{os.getpid()}"
    sim = None
    rows = []
    try:
        assert wait_for(lambda: status()["pid"]), "the worker never reported"
        f = raw["feeds"]
        total = args.seconds * 3 * args.reps + 30
        sim = subprocess.Popen([PY, "-m", "tickwire", "simulate", "--endpoint", f["endpoints"][0], "--snapshot",
                                f["snapshot"], "--instruments", "8", "--channels", str(f["channels"]), "--rate",
                                str(args.rate), "--duration", str(total), "--cpu", "0", "--quiet",
                                "--wait-subscribers", "30", "--start-delay", "1", "--pregenerate"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: status()["feed"]["events"] > args.rate * 2, 90), "no events reached the worker"
        wpid = status()["pid"]
        w, h = args.size.split("x")
        top_pid = None

        def start_top():
            # top runs under a shell that waits for it: tmux sends SIGCONT to a pane's own process
            # stopped by any signal but SIGTTIN/SIGTTOU, which would undo the SIGSTOP
            subprocess.run([tmux, "-L", sock, "-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", w, "-y", h,
                            f"taskset -c 0 {PY} -m tickwire top --config {cfg} --refresh {args.refresh} --nice {args.nice} "
                            f"</dev/tty & wait"], check=True)
            out = subprocess.run([tmux, "-L", sock, "display", "-p", "-t", "top", "#{pane_pid}"],
                                 capture_output=True, text=True, check=True)
            shell = int(out.stdout.strip())
            assert wait_for(lambda: Path(f"/proc/{shell}/task/{shell}/children").read_text().split(), 10)
            return int(Path(f"/proc/{shell}/task/{shell}/children").read_text().split()[0])

        for rep in range(args.reps):
            for phase in ("absent", "running", "suspended"):
                if phase == "running":
                    if top_pid is None:
                        top_pid = start_top()
                    else:
                        os.kill(top_pid, signal.SIGCONT)
                    time.sleep(3)                           # past its start (imports, log backlog)
                elif phase == "suspended":
                    os.kill(top_pid, signal.SIGSTOP)
                    assert wait_for(lambda: Path(f"/proc/{top_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                                    == "T", 5), "top did not stop"
                elif top_pid is not None:
                    os.kill(top_pid, signal.SIGCONT)
                    subprocess.run([tmux, "-L", sock, "kill-server"], capture_output=True)
                    top_pid = None
                s0 = status()
                t0, c0, e0 = time.time(), cpu_seconds(wpid), s0["feed"]["events"]
                tc0 = cpu_seconds(top_pid) if top_pid else 0.0
                time.sleep(args.seconds)
                s1 = status()
                t1, c1, e1 = time.time(), cpu_seconds(wpid), s1["feed"]["events"]
                if s1["pid"] != wpid:
                    print(f"# the worker restarted (pid {wpid} -> {s1['pid']}): see {tmp}/daemon.log", flush=True)
                    wpid = s1["pid"]
                tc1 = cpu_seconds(top_pid) if top_pid else 0.0
                time.sleep(1.5)                             # the phase's last interval reaches the log
                ivs = [iv for iv in iter_interval_log(run_dir / "hdr" / "w0.hlog") if t0 <= iv.end <= t1]
                lat = {}
                for stage in ("decode", "book", "tick_to_signal"):
                    hist = merged(ivs, stage)
                    lat[stage] = [hist.get_value_at_percentile(p) / 1e3 for p in (50.0, 99.0, 99.9)]
                rows.append({"phase": phase, "rep": rep, "top_cpu_pct": 100 * (tc1 - tc0) / (t1 - t0),
                             "worker_cpu_s_per_M": (c1 - c0) / max(e1 - e0, 1) * 1e6,
                             "events_per_s": (e1 - e0) / (t1 - t0), "latency_us": lat,
                             "gaps": s1["feed"]["gaps"] - s0["feed"]["gaps"],
                             "recoveries": s1["feed"]["recoveries"] - s0["feed"]["recoveries"],
                             "tick_ring_waits": s1["counts"]["tick_ring_waits"] - s0["counts"]["tick_ring_waits"]})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        subprocess.run([tmux, "-L", sock, "kill-server"], capture_output=True)
        if sim is not None:
            sim.terminate()
            sim.wait()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        log.close()
    print(f"\nrate {args.rate:,.0f} ev/s offered, {args.seconds:.0f} s phases x {args.reps}, top --refresh "
          f"{args.refresh} --nice {args.nice} in a {args.size} tmux pane; medians")
    print(f"{'phase':10s} {'top CPU %':>9s} {'events/s':>10s} {'worker CPU s/M ev':>18s}  "
          f"{'decode p50/p99/p99.9 us':>24s}  {'book p50/p99/p99.9':>20s}  {'tick>sig p50/p99/p99.9':>24s}")
    for phase in ("absent", "running", "suspended"):
        rs = [r for r in rows if r["phase"] == phase]
        med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
        lat = {s: [statistics.median(r["latency_us"][s][k] for r in rs) for k in range(3)] for s in rs[0]["latency_us"]}
        fmt = lambda v: "/".join(f"{x:.1f}" for x in v)  # noqa: E731
        print(f"{phase:10s} {med('top_cpu_pct'):9.2f} {med('events_per_s'):10,.0f} {med('worker_cpu_s_per_M'):18.3f}  "
              f"{fmt(lat['decode']):>24s}  {fmt(lat['book']):>20s}  {fmt(lat['tick_to_signal']):>24s}")
    if any(r["gaps"] or r["recoveries"] for r in rows):
        print(f"(gaps or recoveries during a phase: the run is kept in {tmp})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
