"""Rolling statistics against exact numpy/pandas references."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickwire.ext.stats import Ewma, RollingWindow, SumWindow, allocation_count
from reference import _ewma, _in_window
from budget import examples


def close(got, want, rel=1e-9, abs_=1e-12):
    if isinstance(want, float) and math.isnan(want):
        return math.isnan(got)
    return got == pytest.approx(want, rel=rel, abs=abs_)


def reference(window_values, ddof=1):
    """Exact statistics of a window's values (two-pass, float64 via math.fsum)."""
    v = np.asarray(window_values, dtype=float)
    n = len(v)
    if n == 0:
        return dict(count=0, mean=math.nan, var=math.nan, min=math.nan, max=math.nan, sum=0.0)
    mean = math.fsum(v) / n
    var = math.fsum((v - mean) ** 2) / (n - ddof) if n > ddof else math.nan
    return dict(count=n, mean=mean, var=var, min=v.min(), max=v.max(), sum=math.fsum(v))


def check_against(w, values, scale):
    ref = reference(values)
    assert w.count == ref["count"]
    tol = 1e-9 * max(scale, 1e-300)
    assert close(w.mean, ref["mean"], abs_=tol)
    assert close(w.sum, ref["sum"], abs_=tol * max(len(values), 1))
    if not math.isnan(ref["var"]):
        # absolute error of any float algorithm scales with the data's magnitude squared
        assert w.var() == pytest.approx(ref["var"], rel=1e-9, abs=1e-12 * scale * scale)
    else:
        assert math.isnan(w.var())
    assert close(w.min, ref["min"]) and close(w.max, ref["max"])


floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=examples(200), deadline=None)
@given(values=st.lists(floats, max_size=200), size=st.integers(1, 40))
def test_count_window_matches_numpy_after_every_add(values, size):
    w = RollingWindow(size, "count")
    for i, x in enumerate(values):
        w.add(i, x)
        window = values[max(0, i + 1 - size): i + 1]
        check_against(w, window, scale=max(1.0, max(abs(v) for v in window)))


@settings(max_examples=examples(200), deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 50), floats), max_size=150),
       size=st.integers(1, 200))
def test_time_window_matches_numpy_with_irregular_and_equal_timestamps(data, size):
    ts = np.cumsum([d for d, _ in data]).astype(np.int64) if data else np.zeros(0, np.int64)
    xs = [x for _, x in data]
    w = RollingWindow(size, "time")
    for i, (t, x) in enumerate(zip(ts, xs)):
        w.add(int(t), x)
        window = [xs[j] for j in range(i + 1) if ts[j] > t - size]
        check_against(w, window, scale=max(1.0, max(abs(v) for v in window)))


def test_infinite_and_huge_samples_do_not_poison_the_window_after_they_leave():
    """Found by an adversarial pass: after an inf sample left a window of 100, mean was NaN and
    std 0 for 114 more samples (inf - inf in the running sums until a re-base); a 1e300 sample
    did the same (its square is inf). +-inf is ignored and counted (``nonfinite``), as NaN is
    ignored; a huge finite sample counts while it is in the window, and its leaving recomputes
    the sums."""
    rng = np.random.default_rng(5)
    xs = 100 + rng.standard_normal(400) * 2
    for bad, counted in ((math.inf, 1), (-math.inf, 1), (1e300, 0), (-3e200, 0)):
        w, sw = RollingWindow(100, "count"), SumWindow(100, "count")
        kept = []
        for i, x in enumerate(xs):
            v = bad if i == 50 else x
            w.add(i, v)
            sw.add(i, v * 2.0, 1.0)
            if math.isfinite(v):
                kept.append(v)
            window = kept[-100:]
            if i > 0 and (i > 50 + 100 or not math.isfinite(bad)):
                assert w.mean == pytest.approx(np.mean(window), rel=1e-12), (bad, i)
                assert w.std == pytest.approx(np.std(window, ddof=1), rel=1e-9), (bad, i)
                assert sw.sum_a == pytest.approx(2.0 * math.fsum(window), rel=1e-12), (bad, i)
        assert w.nonfinite == counted and sw.nonfinite == counted


def test_an_eviction_that_leaves_the_mean_far_from_the_shift_re_bases():
    """Found by an adversarial pass: a time window checked whether its mean had strayed from its
    shift at adds only, so samples of 61234.56 evicted from four of 0.1 left var() 0, zscore NaN
    and the mean off in its tenth digit until the next add."""
    small = [0.1001, 0.1002, 0.1003, 0.1004]
    w = RollingWindow(100, "time")
    for t in range(5):
        w.add(t, 61234.56)
    for t, x in enumerate(small, start=5):
        w.add(t, x)
    w.evict(104)                                         # (ts <= 4 leave)
    assert w.count == 4
    assert w.mean == pytest.approx(math.fsum(small) / 4, rel=1e-15)
    assert w.var() == pytest.approx(np.var(small, ddof=1), rel=1e-9)
    assert w.zscore(0.1004) == pytest.approx((0.1004 - np.mean(small)) / np.std(small, ddof=1), rel=1e-9)


def test_an_ewma_ignores_infinite_samples_and_a_variance_that_overflows_is_not_zero():
    """Found by an adversarial pass: one +-inf sample made an Ewma's mean NaN for good (a
    thousand half-lives on), where the docs say +-inf is ignored; the variance of [0, 1e200]
    (its sums overflow) read 0, "no dispersion", instead of NaN."""
    for bad in (math.inf, -math.inf):
        e = Ewma(1000.0)
        e.add(0, 5.0)
        e.add(1, bad)
        for t in range(2, 200):
            e.add(t * 1000, 7.0)
        assert e.mean == pytest.approx(7.0, rel=1e-12), bad
    w = RollingWindow(10, "count")
    w.add(0, 0.0)
    w.add(1, 1e200)
    assert not w.var() == 0.0 and not w.std == 0.0


@settings(max_examples=examples(200), deadline=None)
@given(values=st.lists(st.integers(-2_000_000, 2_000_000), max_size=200), size=st.integers(1, 40),
       half=st.booleans())
def test_mean_of_an_integer_series_is_exact(values, size, half):
    """Spreads and mids in price units are integers and half-integers: the window's mean is
    then the correctly rounded exact mean, bit for bit, so a mean that is exactly 0 reads 0.0
    (the spread rule's ``mean > 0`` guard turned 1e-16 into a 1e16 signal when it was not)."""
    xs = [v / 2 if half else float(v) for v in values]
    w = RollingWindow(size, "count")
    for i, x in enumerate(xs):
        w.add(i, x)
        window = xs[max(0, i + 1 - size): i + 1]
        assert w.mean == math.fsum(window) / len(window), (i, window)
        assert w.sum == math.fsum(window)


def test_time_window_equals_pandas_rolling_offset():
    rng = np.random.default_rng(2)
    n = 20_000
    ts = np.cumsum(rng.integers(0, 3000, n)).astype(np.int64)          # equal stamps included
    x = 100 + np.cumsum(rng.normal(0, 1, n))
    got = RollingWindow(10_000, "time").run(ts, x)
    s = pd.Series(x, index=pd.to_datetime(ts))
    want_mean = s.rolling("10us").mean().to_numpy()
    want_count = s.rolling("10us").count().to_numpy()
    assert np.array_equal(got["count"], want_count.astype(np.int64))
    assert np.allclose(got["mean"], want_mean, rtol=1e-12, atol=0)
    assert np.array_equal(got["min"], s.rolling("10us").min().to_numpy())
    assert np.array_equal(got["max"], s.rolling("10us").max().to_numpy())


def test_count_window_std_is_exact_where_pandas_drifts():
    from numpy.lib.stride_tricks import sliding_window_view

    rng = np.random.default_rng(1)
    x = 1e6 + np.cumsum(rng.normal(0, 1, 100_000))                      # large mean, small spread
    got = RollingWindow(100).run(np.arange(len(x), dtype=np.int64), x)["std"][99:]
    exact = sliding_window_view(x, 100).std(axis=1, ddof=1)
    assert np.max(np.abs(got - exact) / exact) < 1e-12


def test_window_edge_cases():
    w = RollingWindow(3)
    assert w.count == 0 and math.isnan(w.mean) and math.isnan(w.var()) and math.isnan(w.min)
    assert w.sum == 0.0
    w.add(0, 5.0)
    assert w.mean == 5.0 and math.isnan(w.var()) and w.var(ddof=0) == 0.0 and w.min == w.max == 5.0
    assert math.isnan(w.zscore(6.0))                                  # no dispersion yet
    w.add(1, float("nan"))                                             # ignored
    assert w.count == 1
    for i, x in enumerate((1e150, -1e150, 3e150), start=2):
        w.add(i, x)
    check_against(w, [1e150, -1e150, 3e150], scale=3e150)
    tiny = RollingWindow(4)
    for i, x in enumerate((1e-150, 2e-150, 3e-150, 5e-150)):
        tiny.add(i, x)
    check_against(tiny, [1e-150, 2e-150, 3e-150, 5e-150], scale=5e-150)
    assert tiny.var() > 0
    z = RollingWindow(10)
    for i, x in enumerate((1.0, 2.0, 3.0)):
        z.add(i, x)
    assert z.zscore(3.0) == pytest.approx((3.0 - 2.0) / 1.0)


def test_time_window_empties_and_rebases():
    w = RollingWindow(100, "time")
    w.add(0, 1e9)
    w.add(10, 1e9 + 1)
    w.evict(500)
    assert w.count == 0 and math.isnan(w.mean)
    w.add(600, 3.0)
    w.add(601, 4.0)
    assert w.mean == 3.5 and w.var() == pytest.approx(0.5)


def test_long_run_has_no_drift():
    """10**7 updates, then the windowed mean/variance equal an exact recomputation to 1e-9."""
    rng = np.random.default_rng(11)
    n = 10_000_000
    x = 5e4 + np.cumsum(rng.normal(0, 0.5, n)) + rng.normal(0, 3, n)
    ts = np.cumsum(rng.integers(1, 2000, n)).astype(np.int64)
    mean = np.empty(n)
    std = np.empty(n)
    for w, window in ((RollingWindow(1000, "count", extrema=False), x[-1000:]),
                      (RollingWindow(2_000_000, "time", extrema=False), x[ts > ts[-1] - 2_000_000])):
        w.run_mean_std(ts, x, mean, std)
        exact = reference(window)
        assert w.count == len(window)
        assert abs(w.mean - exact["mean"]) <= 1e-9 * abs(exact["mean"])
        assert abs(w.var() - exact["var"]) <= 1e-9 * exact["var"]


def test_time_window_capacity_limit_drops_oldest_and_counts():
    w = RollingWindow(10**12, "time", max_capacity=64)
    for i in range(100):
        w.add(i, float(i))
    assert w.count == 64 and w.dropped == 36
    assert np.array_equal(w.values(), np.arange(36, 100, dtype=float))
    check_against(w, list(range(36, 100)), scale=100)


def test_steady_state_allocates_nothing():
    w = RollingWindow(10_000_000, "time")
    ts = np.arange(200_000, dtype=np.int64) * 100
    x = np.sin(np.arange(200_000) / 100.0)
    w.run(ts, x)
    before = allocation_count()
    w.run(ts + 200_000 * 100, x)                       # the same number of samples in flight
    assert allocation_count() == before


# ---------------------------------------------------------------------------------------
# EWMA
# ---------------------------------------------------------------------------------------

def ewma_reference(ts, x, halflife):
    """Weighted mean and unbiased variance with weights 0.5 ** ((t_n - t_i) / halflife)."""
    out_m, out_v = [], []
    for n in range(len(x)):
        w = 0.5 ** ((ts[n] - ts[: n + 1]) / halflife)
        m = np.sum(w * x[: n + 1]) / np.sum(w)
        W = np.sum(w)
        pairs = 2 * np.sum(np.triu(np.outer(w, w), 1))          # (sum w)^2 - sum w^2, exactly
        biased = np.sum(w * (x[: n + 1] - m) ** 2) / W
        out_m.append(m)
        out_v.append(biased * W * W / pairs if pairs > 0 else math.nan)
    return np.array(out_m), np.array(out_v)


@settings(max_examples=examples(100), deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 5000), st.floats(-1e4, 1e4, allow_nan=False)), min_size=1, max_size=60),
       halflife=st.floats(10.0, 1e5))
def test_ewma_matches_weighted_reference(data, halflife):
    ts = np.cumsum([d for d, _ in data]).astype(np.int64)
    x = np.array([v for _, v in data])
    mean, var = Ewma(halflife).run(ts, x)
    ref_m, ref_v = ewma_reference(ts, x, halflife)
    scale = max(1.0, np.max(np.abs(x)))
    assert np.allclose(mean, ref_m, rtol=1e-9, atol=1e-9 * scale)
    finite = ~np.isnan(ref_v)
    assert np.array_equal(np.isnan(var), ~finite)
    assert np.allclose(var[finite], ref_v[finite], rtol=1e-6, atol=1e-6 * scale * scale)


def test_ewma_mean_equals_pandas_with_times():
    rng = np.random.default_rng(4)
    n = 50_000
    ts = np.cumsum(rng.integers(0, 5000, n)).astype(np.int64)
    x = 1000 + np.cumsum(rng.normal(0, 1, n))
    mean, _ = Ewma(20_000.0).run(ts, x)
    want = pd.Series(x).ewm(halflife=pd.Timedelta(20_000, "ns"), times=pd.to_datetime(ts)).mean().to_numpy()
    assert np.max(np.abs(mean - want) / np.abs(want)) < 1e-12


def test_ewma_equal_timestamps_average():
    e = Ewma(1e9)
    e.add(5, 1.0)
    e.add(5, 3.0)
    assert e.mean == 2.0 and e.var() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="halflife"):
        Ewma(0)


# ---------------------------------------------------------------------------------------
# Sum windows
# ---------------------------------------------------------------------------------------

def test_sum_window_vwap_and_flow():
    rng = np.random.default_rng(8)
    n = 5000
    ts = np.cumsum(rng.integers(0, 100, n)).astype(np.int64)
    px = 100 + rng.integers(-5, 6, n).astype(float)
    qty = rng.integers(1, 50, n).astype(float)
    side = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    vwap = SumWindow(2000, "time")
    flow = SumWindow(50, "count")
    sa, sb = vwap.run(ts, px * qty, qty)
    fa, fb = flow.run(ts, side * qty, qty)
    for i in range(0, n, 97):
        m = (ts[: i + 1] > ts[i] - 2000)
        assert sa[i] / sb[i] == pytest.approx(np.sum(px[: i + 1][m] * qty[: i + 1][m]) / np.sum(qty[: i + 1][m]), rel=1e-12)
        lo = max(0, i + 1 - 50)
        assert fa[i] == pytest.approx(np.sum(side[lo:i + 1] * qty[lo:i + 1]), abs=1e-9)
        assert fb[i] == pytest.approx(np.sum(qty[lo:i + 1]))
    assert flow.count == 50
    with pytest.raises(ValueError, match="'count' or 'time'"):
        SumWindow(5, "ticks")


# ---------------------------------------------------------------------------------------
# Extreme timestamps: now - size and ts - last_ts overflowed int64 near INT64_MIN / INT64_MAX
# ---------------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# clusters at both ends of the int64 range (and the jump between them)
extreme_ts = st.lists(st.one_of(st.integers(INT64_MIN, INT64_MIN + 1000), st.integers(INT64_MAX - 1000, INT64_MAX)),
                      min_size=1, max_size=40).map(sorted)


def test_time_window_keeps_samples_near_int64_min():
    # now - size wrapped to a large positive cutoff and evicted the first sample
    w = RollingWindow(2**62 - 1, "time")
    w.add(INT64_MIN, 1.0)
    w.add(INT64_MIN + 5, 2.0)
    assert w.count == 2 and w.sum == 3.0
    s = SumWindow(2**62 - 1, "time")
    s.add(INT64_MIN, 1.0, 2.0)
    s.add(INT64_MIN + 5, 2.0, 3.0)
    assert s.count == 2 and s.sum_a == 3.0 and s.sum_b == 5.0


@settings(max_examples=examples(200), deadline=None)
@given(ts=extreme_ts, size=st.one_of(st.integers(1, 2000), st.integers(1, 2**62 - 1)))   # (the largest span)
def test_time_windows_match_the_reference_at_extreme_timestamps(ts, size):
    xs = [float(i % 7) for i in range(len(ts))]
    w = RollingWindow(size, "time")
    s = SumWindow(size, "time")
    samples = []
    for t, x in zip(ts, xs):
        w.add(t, x)
        s.add(t, x, 1.0)
        samples.append((t, x))
        held = [v for _, v in _in_window(samples, t, "time", size)]    # Python integers: exact
        check_against(w, held, scale=7.0)
        assert s.count == len(held) and s.sum_a == sum(held) and s.sum_b == len(held)


def test_ewma_across_the_whole_int64_range_decays_everything():
    # ts - last_ts wrapped to -1: no decay at all, the mean of the two instead of the last
    e = Ewma(1e9)
    e.add(INT64_MIN, 1.0)
    e.add(INT64_MAX, 3.0)
    assert e.mean == 3.0


@settings(max_examples=examples(100), deadline=None)
@given(ts=extreme_ts, halflife=st.floats(10.0, 1e5))
def test_ewma_matches_the_reference_at_extreme_timestamps(ts, halflife):
    x = [float((i * 5) % 11) for i in range(len(ts))]
    mean, var = Ewma(halflife).run(np.array(ts, np.int64), np.array(x))
    for n in range(len(ts)):
        ref_m, ref_s = _ewma(list(zip(ts[: n + 1], x[: n + 1])), halflife)
        assert mean[n] == pytest.approx(ref_m, rel=1e-9, abs=1e-9)
        if math.isnan(ref_s):
            assert math.isnan(var[n]) or var[n] == pytest.approx(0.0, abs=1e-6)
        else:
            assert var[n] == pytest.approx(ref_s ** 2, rel=1e-6, abs=1e-6)
