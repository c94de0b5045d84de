"""Run every benchmark script in sequence with its defaults (what `./dev bench` does)."""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_book.py", "bench_engine.py", "bench_ring.py", "bench_hdr.py", "bench_store.py", "bench_feed.py",
           "bench_daemon.py", "bench_wire.py", "bench_replay.py", "bench_bridge.py"]


def main(argv=None) -> int:
    # (it took no arguments and ignored them: `./dev bench --help` ran the whole suite, an hour)
    ap = argparse.ArgumentParser(prog="./dev bench", description=__doc__ + " Each script has its own --help.")
    ap.add_argument("--only", metavar="SCRIPT[,SCRIPT]", default="",
                    help=f"run these scripts only (of: {', '.join(SCRIPTS)}; 'micro': the pytest-benchmark suite)")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or SCRIPTS + ["micro"]
    unknown = [s for s in chosen if s not in SCRIPTS + ["micro"]]
    if unknown:
        ap.error(f"--only: unknown script(s) {', '.join(unknown)}")
    status = 0
    for script in SCRIPTS:
        if script in chosen:
            print(f"\n===== {script} =====", flush=True)
            status |= subprocess.call([sys.executable, str(HERE / script)])
    if "micro" in chosen:
        print("\n===== pytest-benchmark micro benchmarks =====", flush=True)
        status |= subprocess.call([sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
                                   "--benchmark-columns=median,ops,rounds", "--benchmark-sort=name"])
    return status


if __name__ == "__main__":
    sys.exit(main())
