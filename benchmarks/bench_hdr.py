"""HDR latency recording: tickwire's recorder beside hdrh's ``record_value``, in one run.

    python benchmarks/bench_hdr.py [--values N] [--repeats R] [--seed S]

Values: N latencies in ns drawn from a seeded log-normal (median ~2 us, tail to ms), the same
for every contestant.  Figures are the median of ``--repeats`` runs, each on a fresh recorder,
process pinned to core 1.  Then the costs of the hand-off to hdrh (copy, percentiles, encoding,
one interval-log line) that happen once per interval, off the hot path.
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np

from common import describe_run, median_time, pin, table, version

from hdrh.histogram import HdrHistogram

from tickwire.engine.latency import IntervalLogWriter, to_hdrh
from tickwire.ext.hdr import Recorder, StageRecorders, _bench_record


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    args, _ = ap.parse_known_args()                 # run_all.py passes every script the same arguments
    pinned = pin(1)
    rng = np.random.default_rng(args.seed)
    values = np.minimum(rng.lognormal(np.log(2000), 1.0, args.values), 5e9).astype(np.int64)
    as_list = values.tolist()
    n_py = min(len(as_list), 200_000)                 # Python loops: a slice (hdrh costs us per value)
    py_values = as_list[:n_py]
    print(f"HDR recording: {describe_run(pinned)}")
    print(f"{args.values:,} values (log-normal, median {int(np.median(values)):,} ns, max {values.max():,} ns); "
          f"Python loops over the first {n_py:,}; median of {args.repeats} runs\n")

    def c_inline(rec):
        _bench_record(rec, values)

    def c_many(rec):
        rec.record_many(values)

    def py_record(rec):
        record = rec.record
        for v in py_values:
            record(v)

    def hdrh_record(h):
        record = h.record_value
        for v in py_values:
            record(v)

    def py_noop(_):
        f = abs
        for v in py_values:
            f(v)

    contestants = [
        ("tickwire C inline tw_hdr_record (nogil loop)", c_inline, Recorder, args.values, False),
        ("tickwire Recorder.record_many(array)", c_many, Recorder, args.values, False),
        ("tickwire Recorder.record(v), Python loop", py_record, Recorder, n_py, False),
        (f"hdrh {version('hdrhistogram')} record_value(v), Python loop", hdrh_record,
         lambda: HdrHistogram(1, 60_000_000_000, 3), n_py, True),
        ("(Python loop calling abs(v): the loop's own cost)", py_noop, lambda: None, n_py, False),
    ]
    times = {}
    for label, fn, setup, n, _ in contestants:
        times[label] = median_time(fn, args.repeats if n == args.values else max(3, args.repeats // 2), setup) / n
    hdrh_ns = times[contestants[3][0]] * 1e9
    rows = [[label, f"{n:,}", f"{times[label] * 1e9:.2f}", f"{1 / times[label] / 1e6:.1f}",
             f"{hdrh_ns / (times[label] * 1e9):.0f}x"] for label, _, _, n, _ in contestants]
    table(rows, ["contestant", "values", "ns/value", "M values/s", "vs hdrh"])

    # the same values give the same histogram (a spot check; tests/test_hdr.py has the property tests)
    rec, ref = Recorder(), HdrHistogram(1, 60_000_000_000, 3)
    for v in py_values[:20_000]:
        rec.record(v)
        ref.record_value(v)
    same = (np.frombuffer(to_hdrh(rec).counts, np.uint64) == np.frombuffer(ref.counts, np.uint64)).all()
    print(f"\n  same counts as hdrh for the same values: {bool(same)}")

    c_ns = times[contestants[0][0]] * 1e9
    print("\nTargets")
    print(f"  [{'met' if c_ns <= 10 else 'NOT MET'}] HDR record <= 10 ns per value (C, inline): {c_ns:.2f} ns "
          f"(hdrh record_value: {hdrh_ns:,.0f} ns, {hdrh_ns / c_ns:,.0f}x)")

    # once per interval, off the hot path
    full = Recorder("book")
    full.record_many(values)
    h = to_hdrh(full)
    stages = StageRecorders()

    def log_one_interval(_):
        for r in stages:
            r.record_many(values[:10_000])
        w = IntervalLogWriter(io.StringIO(), stages, start_time=0.0)
        w.write_interval(1.0)

    hand_off = [
        ("to_hdrh (copy counts + totals into an hdrh histogram)", lambda _: to_hdrh(full), 20),
        ("Recorder.value_at_percentile(99.9) (C)", lambda _: full.value_at_percentile(99.9), 200),
        ("hdrh get_value_at_percentile(99.9)", lambda _: h.get_value_at_percentile(99.9), 5),
        ("percentiles() summary (hdrh, 5 levels + min/max/mean)", lambda _: full.percentiles(), 5),
        ("hdrh encode (compressed, base64)", lambda _: h.encode(), 20),
        ("interval-log line for 5 stages (record 10k each, encode, reset)", log_one_interval, 5),
        ("Recorder.copy() then reset()", lambda _: full.copy().reset(), 20),
    ]
    rows = [[label, f"{median_time(fn, reps) * 1e6:,.1f}"] for label, fn, reps in hand_off]
    print("\nOnce per interval (microseconds)")
    table(rows, ["operation", "us"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
