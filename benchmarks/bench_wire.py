"""Wire-to-signal latency against its floors and the pyzmq baseline: the sweep of
docs/performance.md ("Wire-to-signal"), through the product's own harness (`tickwire bench`).

    python benchmarks/bench_wire.py [--out DIR] [any tickwire bench option]

Defaults: 10k, 100k and 1M events/s (then doubling until the publisher cannot keep up), 2 s
warm-up + 8 s each, target and relay floor three times each per rate, alternated and pooled
(`--repeat 3`: one pair's ratio moves with the machine's drift), the Binance capture, the
pipeline target, p99 threshold 1 ms. It prints, per
rate, every series' percentiles, the ratios to the floor (the relay floor: the messages that
carried the signals, through a bare libzmq subscriber into the ring, same run), to hops_sum (the
libzmq hop of every message + the ring hop, measured apart) and to the baseline, and the targets
hit or missed (p50 <= 1.25x floor, p99 <= 2x floor p99, p99.99 < 1 ms).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
from common import pin  # noqa: F401  (sys.path for the other helpers; the harness pins its own processes)

from tickwire.engine.bench import main

DEFAULTS = ["--rate", "10k,100k,1M", "--until-saturation", "--duration", "8", "--warmup", "2", "--repeat", "3",
            "--p99-threshold", "1000", "--out", "bench-wire"]

if __name__ == "__main__":
    sys.exit(main(DEFAULTS + sys.argv[1:]))
