"""HDR recorders against hdrh itself: the same values give the same counts, totals, min/max and
percentiles; intervals written to a log and read back with hdrh's reader give the same
histograms; the .hgrm spectrum; the per-stage set and its C API from a user's Cython module."""

import io
import re
import textwrap

import numpy as np
import pytest

from cython_build import build_module
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tickwire
from tickwire.engine import latency
from tickwire.engine.latency import IntervalLogWriter, percentiles, read_interval_log, to_hdrh
from tickwire.ext.hdr import COUNTS_LEN, MAX_RECORDABLE, STAGES, Recorder, StageRecorders
from budget import examples

LEVELS = [0.0, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999, 100.0]

values_st = st.lists(
    st.one_of(
        st.integers(0, 2047),                              # the linear first bucket
        st.integers(0, 1_000_000),                         # up to a millisecond
        st.integers(0, MAX_RECORDABLE),                    # the whole range
        st.sampled_from([0, 1, 2047, 2048, 4095, 4096, 10**9, 60 * 10**9, MAX_RECORDABLE]),
    ),
    max_size=250)


def reference(values):
    """hdrh recording the values one by one (what tickwire's recorder must equal)."""
    h = HdrHistogram(1, 60_000_000_000, 3)
    for v in values:
        assert h.record_value(v)
    return h


def counts_of(h):
    return np.frombuffer(h.counts, dtype=np.uint64).astype(np.int64)


def assert_same(rec, ref):
    got = to_hdrh(rec)
    want_counts = counts_of(ref)
    assert (counts_of(got) == want_counts).all()
    assert (rec.counts() == want_counts).all()
    assert rec.total == ref.get_total_count() == got.get_total_count()
    assert got.get_min_value() == ref.get_min_value()
    assert got.get_max_value() == ref.get_max_value()
    want = ref.get_percentile_to_value_dict(LEVELS)       # one pass of hdrh for every level
    if not ref.get_total_count():
        want = {p: ref.get_value_at_percentile(p) for p in LEVELS}   # the dict is empty then
    assert {p: rec.value_at_percentile(p) for p in LEVELS} == want


@settings(max_examples=examples(80), deadline=None)
@given(values_st)
def test_recorder_equals_hdrh(values):
    rec = Recorder()
    for v in values:
        assert rec.record(v)
    assert_same(rec, reference(values))
    if values:
        assert rec.min_value == min(values) and rec.max_value == max(values)
    else:
        assert rec.min_value is None and rec.max_value is None


@settings(max_examples=examples(60), deadline=None)
@given(values_st)
def test_record_many_equals_one_by_one(values):
    a, b = Recorder(), Recorder()
    for v in values:
        a.record(v)
    assert b.record_many(np.array(values, dtype=np.int64)) == 0
    assert (a.counts() == b.counts()).all()
    assert (a.total, a.min_value, a.max_value) == (b.total, b.min_value, b.max_value)


@settings(max_examples=examples(30), deadline=None)
@given(values_st, values_st)
def test_summary_and_merge_equal_hdrh(xs, ys):
    a, b = Recorder(), Recorder()
    a.record_many(xs)
    b.record_many(ys)
    ref_a, ref_b = reference(xs), reference(ys)
    want = latency.percentiles(ref_a)
    assert a.percentiles() == want
    if xs:
        assert want["p50"] == ref_a.get_value_at_percentile(50) and want["max"] == ref_a.get_max_value()
    a.add(b)
    assert_same(a, reference(xs + ys))


def test_no_way_of_recording_wraps_the_count_negative():
    """Found by an adversarial pass: record(v, count) refused a count that would pass 2**63 - 1,
    but add(), record(), record_many() and record_corrected() did not: two recorders of 2**62
    added gave a count of -2**63 and a mean of -1500, reported as valid. Each refuses now, and
    leaves the recorder as it was."""
    a, b = Recorder(), Recorder()
    a.record(1000, 2**62)
    b.record(2000, 2**62)
    for call in (lambda: a.add(b), lambda: a.add(a.copy())):
        with pytest.raises(ValueError, match="past 2\\*\\*63 - 1"):
            call()
    assert a.total == 2**62
    full = Recorder()
    full.record(5, 2**63 - 1)
    for call in (lambda: full.record(7), lambda: full.record_many([1, 2]), lambda: full.record_corrected(100, 10),
                 lambda: full.record_many(np.full(3, 100), expected_interval=10)):
        with pytest.raises(ValueError, match="past 2\\*\\*63 - 1"):
            call()
    assert full.total == 2**63 - 1 and percentiles(full)["count"] == 2**63 - 1
    b.record_many(np.arange(10))                       # far from the limit: unchanged
    assert b.total == 2**62 + 10
    # near it, the corrected values a call adds count too (record_many's guard shifted 1 << 36 as
    # a C int: undefined, and 1,000 short of the limit it let 10**6 filled-in values wrap it)
    near = Recorder()
    near.record(5, 2**63 - 1 - 1000)
    with pytest.raises(ValueError, match="past 2\\*\\*63 - 1"):
        near.record_many([10**6], expected_interval=1)
    assert near.total == 2**63 - 1 - 1000
    near.record_many([900], expected_interval=1)       # 900 values: room for them
    assert near.total == 2**63 - 1 - 100

@settings(max_examples=examples(40), deadline=None)
@given(st.lists(st.integers(0, 50_000), max_size=60), st.integers(-5, 20_000))
def test_coordinated_omission_correction_follows_hdrhistogram(values, interval):
    """HdrHistogram (Java and C) records value, value - i, value - 2i, ... while >= i."""
    rec = Recorder()
    ref = HdrHistogram(1, 60_000_000_000, 3)
    for v in values:
        rec.record_corrected(v, interval)
        ref.record_value(v)
        if interval > 0 and v > interval:
            missing = v - interval
            while missing >= interval:
                ref.record_value(missing)
                missing -= interval
    assert_same(rec, ref)
    many = Recorder()
    many.record_many(values, expected_interval=interval)
    if interval > 0:
        assert (many.counts() == rec.counts()).all() and many.total == rec.total


@settings(max_examples=examples(60), deadline=None)
@given(st.integers(0, 3_000_000), st.integers(1, 5_000))
@example(3_000_000, 1)
@example(2_999_999, 7)
@example(2_500_001, 333)
def test_a_correction_of_many_values_is_counted_slot_by_slot_as_the_loop_would(value, interval):
    """Past four values a slot the correction adds each slot's share in one step: the same
    counts, total, min and max as recording every value one by one."""
    rec = Recorder()
    rec.record(7)
    rec.record_corrected(value, interval)
    ref = Recorder()
    ref.record(7)
    ref.record(value)
    if value > interval:
        ref.record_many(np.arange(value - interval, interval - 1, -interval, dtype=np.int64))
    assert (rec.counts() == ref.counts()).all()
    assert (rec.total, rec.min_value, rec.max_value) == (ref.total, ref.min_value, ref.max_value)


@pytest.mark.timeout(30)                          # (one by one: 2**36 records, a minute or more)
def test_a_correction_of_68_seconds_at_1_ns_returns_at_once():
    """68.7 s at a 1 ns interval is 2**36 - 2 corrected values: HdrHistogram's loop ran for
    minutes (and no Ctrl-C reached it); counted slot by slot it is the same histogram."""
    rec = Recorder()
    rec.record_corrected(MAX_RECORDABLE, 1)
    assert rec.total == MAX_RECORDABLE and rec.min_value == 1 and rec.max_value == MAX_RECORDABLE
    assert rec.counts()[:2048].tolist() == [0] + [1] * 2047     # 1 .. 2047 one slot each
    assert rec.value_at_percentile(50) == to_hdrh(rec).get_value_at_percentile(50)
    assert abs(rec.value_at_percentile(50) - MAX_RECORDABLE / 2) < MAX_RECORDABLE / 1000


def test_coordinated_omission_example():
    rec = Recorder()
    rec.record_corrected(1000, 100)                       # a 1 ms stall at a 100 us rate
    assert rec.total == 10 and rec.min_value == 100 and rec.max_value == 1000


def test_out_of_range_values_are_rejected_like_hdrh():
    rec, ref = Recorder(), HdrHistogram(1, 60_000_000_000, 3)
    for v in (-1, MAX_RECORDABLE + 1, -(2**63), 2**62):
        assert rec.record(v) is False
        assert ref.record_value(v) is False
    assert rec.record(MAX_RECORDABLE) and ref.record_value(MAX_RECORDABLE)
    assert rec.rejected == 4 and rec.total == 1
    assert rec.record_many([5, -3, MAX_RECORDABLE + 7]) == 2 and rec.rejected == 6
    rec.record_corrected(-10, 3)
    assert rec.rejected == 7 and rec.total == 2


def test_the_rejected_tally_saturates():
    # two rejected counts of 2**63 - 1 wrapped the tally to -2; adding recorders the same
    rec = Recorder()
    assert rec.record(-1, 2**63 - 1) is False
    assert rec.record(-1, 2**63 - 1) is False
    assert rec.rejected == 2**63 - 1 and rec.total == 0
    other = Recorder()
    other.record(MAX_RECORDABLE + 1, 5)
    other.add(rec)
    assert other.rejected == 2**63 - 1
    rec.record(5)
    assert rec.rejected == 2**63 - 1 and rec.total == 1


def test_index_layout_is_hdrhs():
    ref = HdrHistogram(1, 60_000_000_000, 3)
    assert ref.counts_len == COUNTS_LEN
    for v in [0, 1, 1023, 2047, 2048, 2049, 4095, 4096, 123_456_789, MAX_RECORDABLE]:
        assert Recorder.index_of(v) == ref.get_counts_array_index(v)
    with pytest.raises(ValueError, match="outside"):
        Recorder.index_of(-1)


def test_reset_and_copy():
    rec = Recorder("book")
    rec.record_many([10, 20, 5_000_000])
    snap = rec.copy()
    rec.reset()
    assert rec.total == 0 and not rec.counts().any() and rec.min_value is None
    assert snap.total == 3 and snap.name == "book" and snap.max_value == 5_000_000
    rec.record(7)
    assert_same(rec, reference([7]))
    with pytest.raises(ValueError, match="itself"):
        rec.add(rec)


def test_bad_arguments():
    rec = Recorder()
    with pytest.raises(ValueError, match="within 0..100"):
        rec.value_at_percentile(101)
    with pytest.raises(TypeError):
        rec.record("12")
    with pytest.raises(TypeError, match="name"):
        Recorder(5)
    with pytest.raises(ValueError, match="percentiles"):
        rec.percentiles([50, 120])
    with pytest.raises(TypeError, match="Recorder or an hdrh"):
        percentiles([1, 2, 3])


def test_empty_recorder():
    rec = Recorder()
    assert rec.value_at_percentile(99) == 0
    assert rec.percentiles() == {"count": 0, "min": 0, "p50": 0, "p90": 0, "p99": 0, "p99.9": 0,
                                 "p99.99": 0, "max": 0, "mean": 0.0}
    assert "Total count    =            0" in rec.hgrm()


def test_percentile_summary_keys():
    rec = Recorder()
    rec.record_many(np.arange(1, 100_001))
    s = rec.percentiles()
    assert list(s) == ["count", "min", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"]
    assert s["count"] == 100_000 and s["min"] == 1
    assert s["p50"] == pytest.approx(50_000, rel=1e-3) and s["p99.99"] == pytest.approx(99_990, rel=1e-3)
    assert s["max"] == pytest.approx(100_000, rel=1e-3)


# ---------------------------------------------------------------------------------------------
# .hgrm
# ---------------------------------------------------------------------------------------------

def test_hgrm_layout_matches_hdrhistogram():
    rec = Recorder()
    rng = np.random.default_rng(5)
    rec.record_many(rng.lognormal(10, 1, 20_000).astype(np.int64))
    text = rec.hgrm(unit_ratio=1000.0)
    ref = io.BytesIO()
    to_hdrh(rec).output_percentile_distribution(ref, 1000.0)
    body = ref.getvalue().decode().split("#[Mean")[0]
    assert text.startswith(body)                          # the table is hdrh's, line for line
    assert text.splitlines()[0] == "       Value     Percentile TotalCount 1/(1-Percentile)"
    footer = text.split("#[Mean")[1]
    h = to_hdrh(rec)
    mean, std = re.search(r"=\s+([\d.]+), StdDeviation\s+=\s+([\d.]+)\]", footer).groups()
    assert float(mean) == pytest.approx(h.get_mean_value() / 1000, abs=1e-3)
    assert float(std) == pytest.approx(h.get_stddev() / 1000, abs=1e-3)    # scaled (hdrh's is not)
    assert re.search(r"#\[Max     = +[\d.]+, Total count    = +20000\]", text)
    assert "#[Buckets =           26, SubBuckets     =         2048]" in text
    last = [ln for ln in text.splitlines() if ln and not ln.startswith("#")][-1].split()
    assert float(last[1]) == 1.0 and int(last[2]) == 20_000


# ---------------------------------------------------------------------------------------------
# interval logs
# ---------------------------------------------------------------------------------------------

intervals_st = st.lists(
    st.dictionaries(st.sampled_from(STAGES), st.lists(st.integers(0, 10**10), max_size=40), min_size=1),
    min_size=1, max_size=4)


@settings(max_examples=examples(25), deadline=None)
@given(intervals_st)
def test_interval_log_roundtrip_through_hdrh_reader(tmp_path_factory, intervals):
    path = tmp_path_factory.mktemp("log") / "worker0.hlog"
    stages = StageRecorders()
    t0 = 1_700_000_000.25
    with IntervalLogWriter(path, stages, interval=1.0, start_time=t0) as log:
        for i, per_stage in enumerate(intervals):
            for stage, vals in per_stage.items():
                stages[stage].record_many(vals)
            assert not log.maybe_write(t0 + i + 0.5)
            assert log.maybe_write(t0 + i + 1.0)
            assert all(r.total == 0 for r in stages)      # each interval alone
    back = read_interval_log(path)
    assert len(back) == len(intervals) * len(STAGES)
    for i, per_stage in enumerate(intervals):
        for j, stage in enumerate(STAGES):
            iv = back[i * len(STAGES) + j]
            assert iv.tag == stage
            assert iv.start == pytest.approx(t0 + i, abs=1e-3) and iv.end == pytest.approx(t0 + i + 1, abs=1e-3)
            ref = reference(per_stage.get(stage, []))
            assert (counts_of(iv.histogram) == counts_of(ref)).all()
            assert iv.histogram.get_total_count() == ref.get_total_count()
            for p in (50.0, 99.0, 100.0):
                assert iv.histogram.get_value_at_percentile(p) == ref.get_value_at_percentile(p)
    merged = latency.merged(back, "book")
    everything = [v for per in intervals for v in per.get("book", [])]
    assert merged.get_total_count() == len(everything)


def test_interval_log_header_is_read_by_hdrh(tmp_path):
    path = tmp_path / "a.hlog"
    rec = Recorder("tick_to_signal")
    rec.record_many([1500, 2500, 1_000_000])
    t0 = 1_700_000_000.0
    w = IntervalLogWriter(path, rec, start_time=t0, base_time=t0 - 10, comment="worker 0 core 1")
    w.write_interval(t0 + 2)
    w.close()
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == f"#[Logged with tickwire {tickwire.__version__}]"
    assert lines[1] == "#worker 0 core 1"
    assert lines[2] == "#[Histogram log format version 1.3]"
    assert re.fullmatch(r"#\[StartTime: 1700000000\.000 \(seconds since epoch\), \w{3} \w{3} \d\d "
                        r"\d\d:\d\d:\d\d \S+ \d{4}\]", lines[3])
    assert lines[4] == "#[BaseTime: 1699999990.000 (seconds since epoch)]"
    assert lines[5] == '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"'
    assert re.fullmatch(r"Tag=tick_to_signal,10\.000,2\.000,1\.000,HIST\S+", lines[6])
    assert len(lines) == 7                                 # close() had nothing left to write
    reader = HistogramLogReader(str(path), HdrHistogram(1, 60_000_000_000, 3))
    h = reader.get_next_interval_histogram()
    assert reader.get_start_time_sec() == t0
    assert h.get_tag() == "tick_to_signal" and h.get_total_count() == 3
    assert h.get_start_time_stamp() == pytest.approx(t0 * 1000)
    assert reader.get_next_interval_histogram() is None
    reader.close()


@settings(max_examples=examples(100), deadline=None)
@given(start=st.floats(1_600_000_000, 1_800_000_000), back=st.floats(0, 100_000))
def test_a_log_with_a_base_time_of_its_own_reads_back_whole(tmp_path_factory, start, back):
    """Found by a review: StartTime and BaseTime are written to the ms, and hdrh's reader leaves
    out an interval that starts before StartTime by BaseTime plus its start as written: a
    StartTime rounded up lost the first interval (58 of 200 such logs could not be read back)."""
    path = tmp_path_factory.mktemp("b") / "b.hlog"
    rec = Recorder("x")
    w = IntervalLogWriter(path, rec, start_time=start, base_time=start - back)
    rec.record_many(np.arange(1, 100, dtype=np.int64))
    w.write_interval(start + 1)
    rec.record_many(np.arange(1, 50, dtype=np.int64))
    w.write_interval(start + 2)
    w.close()
    back_in = latency.read_interval_log(path)
    assert [iv.histogram.get_total_count() for iv in back_in] == [99, 49]
    assert back_in[0].start == pytest.approx(start, abs=0.002)


def test_interval_log_rotates_at_its_size_keeping_the_newest_whole(tmp_path):
    """A daemon's worker writes its log for months (about 17 MB a day): moved aside at
    ``rotate_bytes``, the ``keep`` newest kept. Each file is a log of its own (hdrh reads it), and
    the files kept plus the current one hold the latest intervals, one after the other, none lost
    at a rotation."""
    path = tmp_path / "w0.hlog"
    rec = Recorder("book")
    t0 = 1_700_000_000.0
    w = IntervalLogWriter(path, rec, interval=1.0, start_time=t0, rotate_bytes=600, keep=3, comment="w0 core 1")
    for i in range(40):
        rec.record_many(np.full(i + 1, 1000 * (i + 1), dtype=np.int64))
        w.write_interval(t0 + i + 1)
    w.close()
    aside = sorted(p for p in tmp_path.iterdir() if p != path)
    assert w.rotations > 3 and len(aside) == 3, (w.rotations, aside)
    files = sorted(aside, key=lambda p: (p.stat().st_mtime_ns, p.name)) + [path]
    got = []
    for f in files:
        assert f.read_text().startswith(f"#[Logged with tickwire {tickwire.__version__}]\n#w0 core 1\n")
        assert f.stat().st_size < 600 + 200                         # rotated after the interval that filled it
        got += read_interval_log(f)
    n = len(got)
    assert 3 < n < 40
    for iv, i in zip(got, range(40 - n, 40)):                      # the newest n, in order, none missing
        assert (iv.start, iv.end) == (pytest.approx(t0 + i, abs=1e-3), pytest.approx(t0 + i + 1, abs=1e-3))
        assert iv.histogram.get_total_count() == i + 1
    with pytest.raises(ValueError, match="rotate_bytes"):
        IntervalLogWriter(io.StringIO(), rec, rotate_bytes=100)


def test_interval_log_options_and_errors(tmp_path):
    with pytest.raises(ValueError, match="tag"):
        IntervalLogWriter(tmp_path / "x", {"bad tag": Recorder()})
    with pytest.raises(ValueError, match="interval"):
        IntervalLogWriter(tmp_path / "x", Recorder("a"), interval=0)
    with pytest.raises(TypeError, match="not a tickwire Recorder"):
        IntervalLogWriter(tmp_path / "x", {"a": HdrHistogram(1, 10, 2)})
    buf = io.StringIO()
    a, b = Recorder(), Recorder()
    a.record(5)
    w = IntervalLogWriter(buf, {"a": a, "b": b}, start_time=100.0, skip_empty=True, reset=False)
    w.write_interval(101.0)
    w.close(final=False)
    body = [ln for ln in buf.getvalue().splitlines() if ln.startswith("Tag=")]
    assert len(body) == 1 and body[0].startswith("Tag=a,0.000,1.000,")
    assert a.total == 1                                    # reset=False


def test_summary_table():
    stages = StageRecorders()
    stages.book.record_many([1000, 2000, 3000])
    table = latency.summary_table(stages)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["stage", "count", "p50"]
    book = next(ln for ln in lines if ln.startswith("book"))
    assert book.split()[1:4] == ["3", "2.000", "3.001"]         # 3000 lies in a 2-ns bucket
    # a stage that recorded nothing: no figures (it printed 0.000 everywhere, as if measured)
    idle = next(ln for ln in lines if ln.startswith("decode")).split()
    assert idle[1] == "0" and set(idle[2:]) == {"-"}


# ---------------------------------------------------------------------------------------------
# the per-stage set and the C API
# ---------------------------------------------------------------------------------------------

def test_stage_recorders():
    s = StageRecorders()
    assert [n for n, _ in s.items()] == list(STAGES) == ["decode", "book", "stats", "rules", "tick_to_signal"]
    s.rules.record(42)
    assert s["rules"].total == 1 and s[3].total == 1 and s.rules.name == "rules"
    assert sum(r.total for r in s) == 1
    with pytest.raises(KeyError, match="stages are"):
        s["nope"]
    rules = s.rules
    del s
    rules.record(43)                                       # a stage keeps its set alive
    assert rules.total == 2
    s2 = StageRecorders()
    s2.decode.record_many([1, 2, 3])
    s2.reset()
    assert all(r.total == 0 for r in s2)


DOWNSTREAM = textwrap.dedent('''
    # cython: language_level=3
    from libc.stdint cimport int64_t
    from tickwire.ext.hdr cimport (StageRecorders, Recorder, tw_hdr_record, tw_now_ns,
                                   TW_STAGE_BOOK, TW_STAGE_TICK_TO_SIGNAL)

    def engine_loop(StageRecorders stages, long n):
        """What an engine worker does: time a stage and record it, without the GIL."""
        cdef long i
        cdef int64_t t0, t1
        with nogil:
            for i in range(n):
                t0 = tw_now_ns()
                t1 = tw_now_ns()
                tw_hdr_record(&stages.c.stage[TW_STAGE_BOOK], t1 - t0)
                tw_hdr_record(&stages.c.stage[TW_STAGE_TICK_TO_SIGNAL], 1000 + i)

    def record_into(Recorder rec, int64_t value):
        with nogil:
            tw_hdr_record(rec.h, value)
''')



def test_user_cython_module_records_through_the_pxd(tmp_path):
    downstream_hdr = build_module(tmp_path, "downstream_hdr", DOWNSTREAM)
    stages = StageRecorders()
    downstream_hdr.engine_loop(stages, 1000)
    assert stages.book.total == 1000 and stages.book.min_value >= 0
    assert stages.tick_to_signal.total == 1000
    assert stages.tick_to_signal.min_value == 1000 and stages.tick_to_signal.max_value == 1999
    assert stages.decode.total == 0
    rec = Recorder()
    downstream_hdr.record_into(rec, 12345)
    assert_same(rec, reference([12345]))


def test_reported_percentiles_never_exceed_the_largest_value():
    """The daemon's summaries (worker status, demo report): p99.99 was seen above max
    (4280.3 > 4277.9 us) because a percentile is its bucket's upper edge."""
    from tickwire.engine.worker import percentiles
    from tickwire.ext.hdr import Recorder

    r = Recorder()
    for v in (4_277_900, 4_277_900, 1_000, 2_000):
        r.record(v)
    q = percentiles(r)
    assert r.value_at_percentile(99.99) > r.max_value          # what the raw histogram says
    assert q["p9999"] == q["p999"] == q["max"] == r.max_value and q["count"] == 4
    assert q["p50"] <= q["p90"] <= q["p99"] <= q["max"]


def test_a_previous_log_is_kept_aside_and_only_the_newest_are_kept(tmp_path):
    """A restarted worker's log started afresh over its predecessor's (truncated: the latency up
    to a crash gone); the old one is moved aside under its last write time, the newest kept."""
    import os

    from tickwire.engine.latency import keep_previous_log

    path = tmp_path / "w0.hlog"
    assert keep_previous_log(path) is None                       # nothing there yet
    path.write_text("")
    assert keep_previous_log(path) is None and path.exists()     # an empty one: nothing to keep
    moved = []
    for k in range(5):
        path.write_text(f"log {k}\n")
        os.utime(path, (1_700_000_000 + k // 2, 1_700_000_000 + k // 2))   # two within one second
        moved.append(keep_previous_log(path, keep=3))
        assert not path.exists() and moved[-1].read_text() == f"log {k}\n"
    assert moved[0].name == "w0.20231114T221320Z.hlog" and moved[1].name == "w0.20231114T221320Z-1.hlog"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(m.name for m in moved[2:]), left       # the three newest
    (tmp_path / "w1.20231114T221320Z.hlog").write_text("another worker's")
    path.write_text("log 5\n")
    keep_previous_log(path, keep=3)
    assert (tmp_path / "w1.20231114T221320Z.hlog").exists()      # not this worker's: left alone


def test_a_worker_s_hdr_log_that_cannot_begin_keeps_nothing_and_does_not_stop_the_worker(tmp_path, tiny_disk,
                                                                                      caplog):
    """Found by an adversarial pass: on a full disk a restarted worker died writing its HDR log's
    header, and again at every restart, until the daemon gave up. It now says so and logs
    nothing; with room again the next worker's log is whole."""
    from tickwire.engine.worker import open_hdr_log

    disk = tiny_disk(tmp_path / "hdr")
    path = disk / "w0.hlog"
    path.write_text("an earlier worker's log\n")
    tiny_disk.fill(disk / "filler")
    rec = Recorder()
    rec.record(1000)
    with caplog.at_level("ERROR", logger="tickwire.worker"):
        w = open_hdr_log(path, {"e2e": rec}, interval=1.0)
    assert f"HDR interval log {path} cannot be started (No space left on device)" in caplog.text
    w.write_interval()                                               # nothing kept, nothing raised
    w.close()
    aside = [p for p in disk.iterdir() if p.name.startswith("w0.") and p != path]
    assert [p.read_text() for p in aside] == ["an earlier worker's log\n"]    # kept aside all the same
    (disk / "filler").unlink()
    w = open_hdr_log(path, {"e2e": rec}, interval=1.0)
    rec.record(2000)
    w.write_interval()
    w.close()
    assert [(i.tag, i.histogram.get_total_count()) for i in read_interval_log(path)] == [("e2e", 1)]


def test_interval_log_times_do_not_step_back_with_the_wall_clock(tmp_path, monkeypatch):
    """Found by an adversarial pass: intervals were stamped with the wall clock, so one that
    spanned a step back (NTP at boot, a VM's resume) had a negative length, which hdrh's reader
    skips unsaid, and with the step past the log's age, every interval after it too."""
    import time

    rec = Recorder()
    path = tmp_path / "w0.hlog"
    log = IntervalLogWriter(path, {"e2e": rec}, interval=0.01)
    wall = time.time
    for k in range(6):
        if k == 2:
            monkeypatch.setattr(time, "time", lambda: wall() - 3600.0)   # the clock steps back an hour
        rec.record(1000 + k)
        time.sleep(0.02)
        assert log.maybe_write()
    log.close()
    back = read_interval_log(path)
    assert [i.histogram.get_total_count() for i in back] == [1] * 6
    assert all(i.end - i.start > 0 for i in back)
    assert all(a.end <= b.start + 2e-3 for a, b in zip(back, back[1:]))   # (the log keeps milliseconds)
