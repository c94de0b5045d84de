"""Run every benchmark script in sequence with its defaults (what `./dev bench` does)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_book.py", "bench_engine.py", "bench_ring.py", "bench_hdr.py", "bench_store.py", "bench_feed.py",
           "bench_daemon.py", "bench_wire.py", "bench_replay.py", "bench_bridge.py"]


def main() -> int:
    status = 0
    for script in SCRIPTS:
        print(f"\n===== {script} =====", flush=True)
        status |= subprocess.call([sys.executable, str(HERE / script)])
    print("\n===== pytest-benchmark micro benchmarks =====", flush=True)
    status |= subprocess.call([sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
                               "--benchmark-columns=median,ops,rounds", "--benchmark-sort=name"])
    return status


if __name__ == "__main__":
    sys.exit(main())
