"""HDR latency recording, like for like in one run: tickwire's C recorder against a plain C loop
doing the same bucket arithmetic, and tickwire's Python API against hdrh's Python API.

    python benchmarks/bench_hdr.py [--values N] [--repeats R] [--seed S]

Values: N latencies in ns drawn from a seeded log-normal (median ~2 us, tail to seconds), the
same for every contestant.  Figures are the median of ``--repeats`` runs, each on a fresh
recorder, process pinned to core 1.

- C: ``tw_hdr_record`` (hdr.pxd, inline; what the engine calls per stage) over the array in a
  nogil loop, against the limit: the same index arithmetic incrementing a plain counts array,
  with the same range check and nothing else (``benchmarks/cext/tw_limits.h``).  Both ends hold
  the same counts, slot for slot.
- Python, one value per call: ``Recorder.record(v)`` against hdrh's ``record_value(v)``, the
  same Python loop over the same values; the same counts and percentiles are checked.
  ``Recorder.record_many(array)`` is shown for the record (hdrh has no batch call).

Then the costs of the hand-off to hdrh (copy, percentiles, encoding, one interval-log line) that
happen once per interval, off the hot path.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # (its helpers, under python -P too)
import cbuild
from common import describe_run, median_time, pin, table, version

from hdrh.histogram import HdrHistogram

from tickwire.engine.latency import IntervalLogWriter, to_hdrh
from tickwire.ext.hdr import Recorder, StageRecorders

B = cbuild.load("io_bench")
LEVELS = (50, 90, 99, 99.9, 99.99, 100)
SLOTS = 27_648                                         # hdr.pxd: TW_HDR_COUNTS_LEN


def counts_of(rec):
    out = np.zeros(SLOTS, np.int64)
    rec._copy_counts_into(out)
    return out


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

    def c_tickwire(rec):
        B.hdr_record(rec, values)

    def c_plain(counts):
        B.plain_hdr(values, counts)

    def py_record(rec):
        record = rec.record
        for v in py_values:
            record(v)

    def hdrh_record(h):
        record = h.record_value
        for v in py_values:
            record(v)

    def py_many(rec):
        rec.record_many(values)

    def py_noop(_):
        f = abs
        for v in py_values:
            f(v)

    def hdrh_new():
        return HdrHistogram(1, 60_000_000_000, 3)

    reps_c, reps_py = args.repeats, max(3, args.repeats // 2)
    t = {
        "c": median_time(c_tickwire, reps_c, Recorder) / args.values,
        "plain": median_time(c_plain, reps_c, lambda: np.zeros(SLOTS, np.int64)) / args.values,
        "py": median_time(py_record, reps_py, Recorder) / n_py,
        "hdrh": median_time(hdrh_record, reps_py, hdrh_new) / n_py,
        "many": median_time(py_many, reps_c, Recorder) / args.values,
        "noop": median_time(py_noop, reps_py) / n_py,
    }
    ns = {k: v * 1e9 for k, v in t.items()}
    rows = [
        ["C: tickwire tw_hdr_record (inline, nogil loop)", f"{args.values:,}", f"{ns['c']:.2f}",
         f"{ns['plain'] / ns['c']:.2f} of the plain loop's speed"],
        ["C: plain loop, same bucket arithmetic (the limit)", f"{args.values:,}", f"{ns['plain']:.2f}", "1.00"],
        ["Python: tickwire Recorder.record(v) loop", f"{n_py:,}", f"{ns['py']:.1f}",
         f"{ns['hdrh'] / ns['py']:.1f}x faster than hdrh"],
        [f"Python: hdrh {version('hdrhistogram')} record_value(v) loop", f"{n_py:,}", f"{ns['hdrh']:.1f}", "1.0"],
        ["(Python loop calling abs(v): the loop's own cost)", f"{n_py:,}", f"{ns['noop']:.1f}", ""],
        ["(tickwire Recorder.record_many(array): no hdrh equivalent)", f"{args.values:,}", f"{ns['many']:.2f}", ""],
    ]
    table(rows, ["contestant", "values", "ns/value", "ratio"])

    # the same values give the same histogram: C recorder vs the plain loop (every slot), and
    # tickwire vs hdrh (every slot, and the percentiles each library reports)
    rec, plain = Recorder(), np.zeros(SLOTS, np.int64)
    B.hdr_record(rec, values)
    B.plain_hdr(values, plain)
    same_c = bool((counts_of(rec) == plain).all())
    prec, ref = Recorder(), hdrh_new()
    for v in py_values:
        prec.record(v)
        ref.record_value(v)
    same_py = bool((counts_of(prec) == np.frombuffer(ref.counts, np.int64)[:SLOTS]).all())
    every = hdrh_new()
    for v in as_list:
        every.record_value(v)
    ours = [rec.value_at_percentile(p) for p in LEVELS]
    theirs = [every.get_value_at_percentile(p) for p in LEVELS]
    print(f"\n  C recorder and plain loop hold the same counts, slot for slot: {same_c}")
    print(f"  Recorder.record and hdrh record_value hold the same counts for the same {n_py:,} values: {same_py}")
    print(f"  percentiles of all {args.values:,} values, tickwire (C recorder) / hdrh (record_value), ns:")
    for p, a, b in zip(LEVELS, ours, theirs):
        print(f"    p{p:<6} {a:>12,} {b:>12,}  {'same' if a == b else 'DIFFERENT'}")
    agree = same_c and same_py and ours == theirs

    print("\nTargets")
    checks = [
        ("HDR record <= 10 ns per value (C, inline)", ns["c"] <= 10, f"{ns['c']:.2f} ns"),
        ("C recorder within 2x of the plain C loop", ns["c"] <= 2 * ns["plain"],
         f"{ns['c']:.2f} vs {ns['plain']:.2f} ns ({ns['c'] / ns['plain']:.2f}x the limit's time)"),
        ("Python Recorder.record ahead of hdrh record_value", ns["py"] < ns["hdrh"],
         f"{ns['py']:.1f} vs {ns['hdrh']:.1f} ns ({ns['hdrh'] / ns['py']:.1f}x)"),
        ("same counts and percentiles as the plain loop and hdrh", agree, "checked above"),
    ]
    for what, ok, fig in checks:
        print(f"  [{'met' if ok else 'NOT MET'}] {what}: {fig}")

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
