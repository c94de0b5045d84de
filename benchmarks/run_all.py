"""Run every benchmark script in sequence (what `./dev bench` does); arguments go to each."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_book.py", "bench_feed.py"]


def main() -> int:
    status = 0
    for script in SCRIPTS:
        print(f"\n===== {script} =====", flush=True)
        status |= subprocess.call([sys.executable, str(HERE / script), *sys.argv[1:]])
    print("\n===== pytest-benchmark micro benchmarks =====", flush=True)
    status |= subprocess.call([sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
                               "--benchmark-columns=median,ops,rounds", "--benchmark-sort=name"])
    return status


if __name__ == "__main__":
    sys.exit(main())
