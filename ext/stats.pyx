"""Rolling statistics: count and time windows, window sums, and time-decayed EWMA.

The C kernels (see ``stats.pxd``) keep their state in small structs and cost O(1)
amortised per update without allocating; the Python classes here wrap one state each and
take values one at a time or as whole numpy arrays (``run``), which is how the benchmarks
compare them with pandas and numpy.
"""

from libc.math cimport NAN, exp, fabs, isfinite, isnan, sqrt, log
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memset

from tickwire.ext.defs cimport TW_UNLIKELY

cdef extern from "<stdint.h>":
    const int64_t _INT64_MIN "INT64_MIN"

import numpy as np

cdef enum:
    _INITIAL_TIME_CAP = 64
    _REFRESH_SLACK = 64

#: Samples above this (in magnitude) can take a window's sums to inf; their leaving recomputes
#: them (a pop of any other sample leaves them, so a window that holds one costs nothing more).
cdef double _HUGE = 1e150

#: Largest ring a time window grows to (samples) unless told otherwise.
DEFAULT_MAX_CAPACITY = 1 << 24
#: Bounds of a window: samples of a count window and of max_capacity (2**32: 32 GiB of values
#: already), nanoseconds of a time window (below 2**62: ``now - size`` fits in int64).
MAX_WINDOW_SAMPLES = 1 << 32
MAX_WINDOW_NS = (1 << 62) - 1

cdef uint64_t _allocations = 0


def allocation_count():
    """How many times rolling windows in this process have allocated or grown memory."""
    return _allocations


cdef inline void _nadd(double *s, double *c, double v) noexcept nogil:
    """Neumaier's compensated addition of v to the sum (s, c).

    Both error terms are computed and one is selected, so that the compiler emits a
    select rather than a branch that the data's signs make unpredictable."""
    cdef double t = s[0] + v
    cdef double e1 = (s[0] - t) + v
    cdef double e2 = (v - t) + s[0]
    c[0] += e1 if fabs(s[0]) >= fabs(v) else e2
    s[0] = t


cdef inline int64_t _pow2_at_least(int64_t n) noexcept nogil:
    cdef int64_t c = 1
    while c < n:
        c <<= 1
    return c


# ---------------------------------------------------------------------------------------
# tw_window
# ---------------------------------------------------------------------------------------

cdef int _window_alloc(tw_window *w, int64_t cap) noexcept nogil:
    """(Re)allocate the ring and deques for ``cap`` slots, keeping the live samples."""
    global _allocations
    cdef int64_t *ts = <int64_t *>malloc(cap * sizeof(int64_t))
    cdef double *x = <double *>malloc(cap * sizeof(double))
    cdef uint64_t *minq = <uint64_t *>malloc(cap * sizeof(uint64_t))
    cdef uint64_t *maxq = <uint64_t *>malloc(cap * sizeof(uint64_t))
    cdef uint64_t i
    cdef int64_t om = w.cap - 1, nm = cap - 1
    if ts == NULL or x == NULL or minq == NULL or maxq == NULL:
        free(ts)
        free(x)
        free(minq)
        free(maxq)
        return -1
    _allocations += 1
    if w.cap:
        i = w.first
        while i != w.next:
            ts[i & nm] = w.ts[i & om]
            x[i & nm] = w.x[i & om]
            i += 1
        i = w.min_h
        while i != w.min_t:
            minq[i & nm] = w.minq[i & om]
            i += 1
        i = w.max_h
        while i != w.max_t:
            maxq[i & nm] = w.maxq[i & om]
            i += 1
    free(w.ts)
    free(w.x)
    free(w.minq)
    free(w.maxq)
    w.ts = ts
    w.x = x
    w.minq = minq
    w.maxq = maxq
    w.cap = cap
    return 0


cdef int tw_window_init(tw_window *w, int kind, int64_t size, int64_t max_cap, bint extrema) noexcept nogil:
    """A count window of ``size`` samples or a time window of ``size`` ns; 0, or -1."""
    memset(w, 0, sizeof(tw_window))
    w.kind = kind
    w.extrema = extrema
    w.size = size
    if kind == TW_WIN_COUNT:
        w.max_cap = _pow2_at_least(size)
        return _window_alloc(w, w.max_cap)
    w.max_cap = _pow2_at_least(max_cap)
    return _window_alloc(w, min(<int64_t>_INITIAL_TIME_CAP, w.max_cap))


cdef void tw_window_free(tw_window *w) noexcept nogil:
    free(w.ts)
    free(w.x)
    free(w.minq)
    free(w.maxq)
    memset(w, 0, sizeof(tw_window))


cdef void tw_window_clear(tw_window *w) noexcept nogil:
    w.first = w.next = 0
    w.min_h = w.min_t = w.max_h = w.max_t = 0
    w.s1 = w.c1 = w.s2 = w.c2 = 0.0
    w.since_refresh = 0


cdef void _window_refresh(tw_window *w) noexcept nogil:
    """Re-base the sums on the sample nearest the window's mean and recompute them exactly.

    The shift is a sample, not the mean itself: on integer (or half-integer) series such as
    spreads and mids in price units every ``x - shift`` and every sum is then exact, so a mean
    that is exactly 0 comes out as 0.0 (a rule's ``mean > 0`` guard depends on it). The
    nearest sample is within one standard deviation of the mean, which keeps the variance's
    cancellation to about one bit.
    """
    cdef int64_t m = w.cap - 1
    cdef uint64_t i
    cdef double total = 0.0, comp = 0.0, d, mean, best
    cdef int64_t n = tw_window_count(w)
    w.since_refresh = 0
    w.s1 = w.c1 = w.s2 = w.c2 = 0.0
    if n == 0:
        return
    i = w.first
    while i != w.next:
        _nadd(&total, &comp, w.x[i & m])
        i += 1
    mean = (total + comp) / n
    w.shift = w.x[w.first & m]
    best = fabs(w.shift - mean)
    i = w.first + 1
    while i != w.next:
        d = fabs(w.x[i & m] - mean)
        if d < best:
            best, w.shift = d, w.x[i & m]
        i += 1
    i = w.first
    while i != w.next:
        d = w.x[i & m] - w.shift
        _nadd(&w.s1, &w.c1, d)
        _nadd(&w.s2, &w.c2, d * d)
        i += 1


cdef inline void _window_pop(tw_window *w) noexcept nogil:
    """Evict the oldest sample."""
    cdef int64_t m = w.cap - 1
    cdef double x = w.x[w.first & m]
    cdef double d = x - w.shift
    _nadd(&w.s1, &w.c1, -d)
    _nadd(&w.s2, &w.c2, -(d * d))
    if w.min_h != w.min_t and w.minq[w.min_h & m] == w.first:
        w.min_h += 1
    if w.max_h != w.max_t and w.maxq[w.max_h & m] == w.first:
        w.max_h += 1
    w.first += 1
    w.since_refresh += 1
    if TW_UNLIKELY(not isfinite(w.s2)) and fabs(x) > _HUGE:
        _window_refresh(w)                    # a huge sample left (its square was inf): inf - inf


cdef inline void _window_check(tw_window *w) noexcept nogil:
    """Re-base when the window turned over, or when its mean strayed from the shift by more
    than twice its standard deviation (the variance would then come from cancelling large
    sums). With shift - mean = delta and population deviation sd, s1^2 > 0.8 n s2 is
    delta^2 > 4 sd^2; a re-base leaves delta <= sd, so a window does not re-base every add.
    After an add and after an eviction (checked at adds only, five samples of 61234.56 evicted
    from four of 0.1 left the variance 0 and the mean off in its tenth digit: an adversarial pass)."""
    if (w.since_refresh > tw_window_count(w) + _REFRESH_SLACK
            or (w.s1 * w.s1 > 0.8 * <double>tw_window_count(w) * w.s2 and tw_window_count(w) > 1)):
        _window_refresh(w)


cdef int64_t tw_window_evict(tw_window *w, int64_t now) noexcept nogil:
    """Time windows: evict the samples with ts <= now - size; returns how many (count
    windows: none)."""
    cdef int64_t m = w.cap - 1, n
    cdef uint64_t before = w.first
    if w.kind != TW_WIN_TIME:
        return 0
    # now - size is below every int64 (it overflowed) when now < INT64_MIN + size: nothing is
    # that old then
    if now >= _INT64_MIN + w.size:
        while w.first != w.next and w.ts[w.first & m] <= now - w.size:
            _window_pop(w)
    n = <int64_t>(w.first - before)
    if w.first == w.next:
        tw_window_clear(w)                    # empty: start the sums afresh
    elif n:
        _window_check(w)                      # (what is left may have strayed from the shift)
    return n


cdef int tw_window_add(tw_window *w, int64_t ts, double x) noexcept nogil:
    """Add a sample (NaN is ignored); 0, or -1 when a time window could not grow."""
    cdef int64_t m
    cdef uint64_t j
    cdef double d
    cdef int r = 0
    if TW_UNLIKELY(not isfinite(x)):
        if not isnan(x):                      # +-inf: would poison the sums (inf - inf) long after it left
            w.nonfinite += 1
        return 0
    if w.kind == TW_WIN_TIME:
        tw_window_evict(w, ts)
    elif tw_window_count(w) >= w.size:
        _window_pop(w)
    if tw_window_count(w) == w.cap:                    # full: grow, or evict the oldest early
        if w.cap >= w.max_cap or _window_alloc(w, w.cap * 2) != 0:
            r = -1 if w.cap < w.max_cap else 0
            _window_pop(w)
            w.dropped += 1
    m = w.cap - 1
    if w.first == w.next:
        w.shift = x                        # an empty window re-bases on its first sample
    j = w.next
    w.ts[j & m] = ts
    w.x[j & m] = x
    w.next += 1
    d = x - w.shift
    _nadd(&w.s1, &w.c1, d)
    _nadd(&w.s2, &w.c2, d * d)
    if w.extrema:
        while w.min_h != w.min_t and w.x[w.minq[(w.min_t - 1) & m] & m] >= x:
            w.min_t -= 1
        w.minq[w.min_t & m] = j
        w.min_t += 1
        while w.max_h != w.max_t and w.x[w.maxq[(w.max_t - 1) & m] & m] <= x:
            w.max_t -= 1
        w.maxq[w.max_t & m] = j
        w.max_t += 1
    _window_check(w)
    return r



cdef double tw_window_sum(const tw_window *w) noexcept nogil:
    """Sum of the window's values (0 when empty)."""
    cdef int64_t n = tw_window_count(w)
    return n * w.shift + (w.s1 + w.c1) if n else 0.0


cdef double tw_window_mean(const tw_window *w) noexcept nogil:
    """Mean (NaN when empty)."""
    cdef int64_t n = tw_window_count(w)
    if n == 0:
        return NAN
    return (n * w.shift + (w.s1 + w.c1)) / n       # exact sums on integer series: correctly rounded


cdef double tw_window_var(const tw_window *w, int ddof) noexcept nogil:
    """Variance with ``ddof`` delta degrees of freedom (NaN when count <= ddof)."""
    cdef int64_t n = tw_window_count(w)
    cdef double s1, v
    if n <= ddof:
        return NAN
    s1 = w.s1 + w.c1
    v = ((w.s2 + w.c2) - s1 * s1 / n) / (n - ddof)
    return 0.0 if v < 0.0 else v                   # (rounding below 0; an overflow's NaN stays NaN, not 0)


cdef double tw_window_min(const tw_window *w) noexcept nogil:
    if w.min_h == w.min_t:
        return NAN
    return w.x[w.minq[w.min_h & (w.cap - 1)] & (w.cap - 1)]


cdef double tw_window_max(const tw_window *w) noexcept nogil:
    if w.max_h == w.max_t:
        return NAN
    return w.x[w.maxq[w.max_h & (w.cap - 1)] & (w.cap - 1)]


cdef double tw_window_zscore(const tw_window *w, double x) noexcept nogil:
    """(x - mean) / std (ddof 1); NaN with fewer than 2 samples or no dispersion."""
    cdef double sd = sqrt(tw_window_var(w, 1))
    if not sd > 0.0:
        return NAN
    return (x - tw_window_mean(w)) / sd


# ---------------------------------------------------------------------------------------
# tw_sumwin
# ---------------------------------------------------------------------------------------

cdef int _sumwin_alloc(tw_sumwin *w, int64_t cap) noexcept nogil:
    global _allocations
    cdef int64_t *ts = <int64_t *>malloc(cap * sizeof(int64_t))
    cdef double *a = <double *>malloc(cap * sizeof(double))
    cdef double *b = <double *>malloc(cap * sizeof(double))
    cdef uint64_t i
    cdef int64_t om = w.cap - 1, nm = cap - 1
    if ts == NULL or a == NULL or b == NULL:
        free(ts)
        free(a)
        free(b)
        return -1
    _allocations += 1
    if w.cap:
        i = w.first
        while i != w.next:
            ts[i & nm] = w.ts[i & om]
            a[i & nm] = w.a[i & om]
            b[i & nm] = w.b[i & om]
            i += 1
    free(w.ts)
    free(w.a)
    free(w.b)
    w.ts = ts
    w.a = a
    w.b = b
    w.cap = cap
    return 0


cdef int tw_sumwin_init(tw_sumwin *w, int kind, int64_t size, int64_t max_cap) noexcept nogil:
    memset(w, 0, sizeof(tw_sumwin))
    w.kind = kind
    w.size = size
    if kind == TW_WIN_COUNT:
        w.max_cap = _pow2_at_least(size)
        return _sumwin_alloc(w, w.max_cap)
    w.max_cap = _pow2_at_least(max_cap)
    return _sumwin_alloc(w, min(<int64_t>_INITIAL_TIME_CAP, w.max_cap))


cdef void tw_sumwin_free(tw_sumwin *w) noexcept nogil:
    free(w.ts)
    free(w.a)
    free(w.b)
    memset(w, 0, sizeof(tw_sumwin))


cdef void tw_sumwin_clear(tw_sumwin *w) noexcept nogil:
    w.first = w.next = 0
    w.sa = w.ca = w.sb = w.cb = 0.0
    w.since_refresh = 0


cdef void _sumwin_refresh(tw_sumwin *w) noexcept nogil:
    cdef int64_t m = w.cap - 1
    cdef uint64_t i = w.first
    w.sa = w.ca = w.sb = w.cb = 0.0
    w.since_refresh = 0
    while i != w.next:
        _nadd(&w.sa, &w.ca, w.a[i & m])
        _nadd(&w.sb, &w.cb, w.b[i & m])
        i += 1


cdef inline void _sumwin_pop(tw_sumwin *w) noexcept nogil:
    cdef int64_t m = w.cap - 1
    cdef double a = w.a[w.first & m], b = w.b[w.first & m]
    _nadd(&w.sa, &w.ca, -a)
    _nadd(&w.sb, &w.cb, -b)
    w.first += 1
    w.since_refresh += 1
    if TW_UNLIKELY(not (isfinite(w.sa) and isfinite(w.sb))) and (fabs(a) > _HUGE or fabs(b) > _HUGE):
        _sumwin_refresh(w)                    # a huge sample left: its sums were inf


cdef int64_t tw_sumwin_evict(tw_sumwin *w, int64_t now) noexcept nogil:
    """Time windows: evict the samples with ts <= now - size; returns how many."""
    cdef int64_t m = w.cap - 1, n
    cdef uint64_t before = w.first
    if w.kind != TW_WIN_TIME:
        return 0
    # now - size is below every int64 (it overflowed) when now < INT64_MIN + size: nothing is
    # that old then
    if now >= _INT64_MIN + w.size:
        while w.first != w.next and w.ts[w.first & m] <= now - w.size:
            _sumwin_pop(w)
    n = <int64_t>(w.first - before)
    if w.first == w.next:
        tw_sumwin_clear(w)                    # empty: start the sums afresh
    return n


cdef int tw_sumwin_add(tw_sumwin *w, int64_t ts, double a, double b) noexcept nogil:
    """Add (a, b) at ``ts`` (ignored when either is NaN); 0, or -1 when it could not grow."""
    cdef int64_t m
    cdef int r = 0
    if TW_UNLIKELY(not (isfinite(a) and isfinite(b))):
        if not (isnan(a) or isnan(b)):
            w.nonfinite += 1
        return 0
    if w.kind == TW_WIN_TIME:
        tw_sumwin_evict(w, ts)
    elif tw_sumwin_count(w) >= w.size:
        _sumwin_pop(w)
    if tw_sumwin_count(w) == w.cap:                    # full: grow, or evict the oldest early
        if w.cap >= w.max_cap or _sumwin_alloc(w, w.cap * 2) != 0:
            r = -1 if w.cap < w.max_cap else 0
            _sumwin_pop(w)
            w.dropped += 1
    m = w.cap - 1
    w.ts[w.next & m] = ts
    w.a[w.next & m] = a
    w.b[w.next & m] = b
    w.next += 1
    _nadd(&w.sa, &w.ca, a)
    _nadd(&w.sb, &w.cb, b)
    if w.since_refresh > tw_sumwin_count(w) + _REFRESH_SLACK:
        _sumwin_refresh(w)
    return r


# ---------------------------------------------------------------------------------------
# tw_ewma
# ---------------------------------------------------------------------------------------

cdef void tw_ewma_init(tw_ewma *e, double halflife_ns) noexcept nogil:
    memset(e, 0, sizeof(tw_ewma))
    e.k = log(2.0) / halflife_ns
    e.mean = NAN


cdef void tw_ewma_add_decayed(tw_ewma *e, int64_t ts, double x, double decay) noexcept nogil:
    """Add ``x`` after every earlier weight was multiplied by ``decay`` (West's update); NaN and
    +-inf are ignored (an inf made the mean NaN for good, a thousand half-lives on)."""
    cdef double delta, wd
    if not isfinite(x):
        return
    if not e.started:
        e.started = 1
        e.w = 1.0
        e.w2 = 1.0
        e.den = 0.0
        e.mean = x
        e.s = 0.0
        e.last_ts = ts
        return
    wd = decay * e.w                                       # the old weight, decayed
    e.den = decay * decay * e.den + 2.0 * wd               # (wd + 1)^2 - (d^2 w2 + 1)
    e.w = wd + 1.0
    e.w2 = decay * decay * e.w2 + 1.0
    delta = x - e.mean
    e.mean += delta / e.w
    # West's update with x - new_mean written as delta * wd / w: no cancellation when the
    # new weight dominates (a long gap decays the old ones to almost nothing)
    e.s = decay * e.s + delta * delta * wd / e.w
    if ts > e.last_ts:
        e.last_ts = ts


cdef void tw_ewma_add(tw_ewma *e, int64_t ts, double x) noexcept nogil:
    """Add ``x`` at ``ts``: earlier weights decay by 0.5 ** (elapsed / halflife)."""
    # the elapsed time as an unsigned difference once ts > last_ts: exact, where ts - last_ts
    # overflowed int64 for timestamps at the two ends of the range (no decay instead of all)
    tw_ewma_add_decayed(e, ts, x, exp(-e.k * <double>(<uint64_t>ts - <uint64_t>e.last_ts))
                        if (ts > e.last_ts and e.started) else 1.0)


cdef double tw_ewma_var(const tw_ewma *e, bint bias) noexcept nogil:
    """Weighted variance; unbiased (reliability weights, as pandas) unless ``bias``."""
    cdef double den
    if not e.started:
        return NAN
    if bias:
        return e.s / e.w
    den = e.den
    if not den > 0.0:
        return NAN
    return e.s * e.w / den


# ---------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------

cdef int _kind_arg(str kind) except -1:
    if kind == "count":
        return TW_WIN_COUNT
    if kind == "time":
        return TW_WIN_TIME
    raise ValueError(f"window kind must be 'count' or 'time', got {kind!r}")


cdef int _check_window(int kind, int64_t size, int64_t max_capacity) except -1:
    """Each error names the argument: a count window of 2**61 samples wrapped its allocation's size
    (a write past the end), 2**62 + 1 looped for ever rounding up to a power of two."""
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    if kind == TW_WIN_COUNT and size > MAX_WINDOW_SAMPLES:
        raise ValueError(f"a count window holds at most {MAX_WINDOW_SAMPLES} (2**32) samples, got size {size}")
    if kind == TW_WIN_TIME and size > MAX_WINDOW_NS:
        raise ValueError(f"a time window spans at most {MAX_WINDOW_NS} ns (2**62 - 1), got size {size}")
    if not 1 <= max_capacity <= MAX_WINDOW_SAMPLES:
        raise ValueError(f"max_capacity must be 1..{MAX_WINDOW_SAMPLES} (2**32), got {max_capacity}")
    return 0


cdef class RollingWindow:
    """Rolling mean, variance, standard deviation, min, max, sum and z-score.

    Parameters
    ----------
    size : int
        Samples (``kind="count"``: the last ``size``) or nanoseconds (``kind="time"``: the
        samples with ``ts > now - size``, like pandas' ``rolling("...")``).
    kind : {"count", "time"}
    max_capacity : int
        Time windows: most samples held; past it the oldest are evicted early (counted
        in :attr:`dropped`).
    extrema : bool
        Keep min and max (two monotonic deques: data-dependent branches on every update); without them
        :attr:`min` and :attr:`max` are NaN.
    """

    cdef tw_window w

    def __cinit__(self, int64_t size, str kind="count", int64_t max_capacity=DEFAULT_MAX_CAPACITY,
                  bint extrema=True):
        cdef int k = _kind_arg(kind)
        _check_window(k, size, max_capacity)
        if tw_window_init(&self.w, k, size, max_capacity, extrema) != 0:
            raise MemoryError("could not allocate the window")

    def __dealloc__(self):
        tw_window_free(&self.w)

    def add(self, int64_t ts, double x):
        """Add one sample (NaN is ignored)."""
        tw_window_add(&self.w, ts, x)

    def evict(self, int64_t now):
        """Age a time window to ``now`` without adding a sample."""
        tw_window_evict(&self.w, now)

    def clear(self):
        tw_window_clear(&self.w)

    def run(self, const int64_t[::1] ts, const double[::1] x, int ddof=1):
        """Add every sample in order; return the statistics after each one.

        Returns
        -------
        dict of numpy.ndarray
            ``count``, ``mean``, ``std``, ``var``, ``min``, ``max``, ``sum``, each as long as ``x``.
        """
        cdef Py_ssize_t n = x.shape[0], i
        if ts.shape[0] != n:
            raise ValueError(f"ts has {ts.shape[0]} values, x has {n}")
        out = {name: np.empty(n) for name in ("mean", "std", "var", "min", "max", "sum")}
        count = np.empty(n, dtype=np.int64)
        cdef double[::1] mean = out["mean"], std = out["std"], var = out["var"]
        cdef double[::1] mn = out["min"], mx = out["max"], sm = out["sum"]
        cdef int64_t[::1] cnt = count
        with nogil:
            for i in range(n):
                tw_window_add(&self.w, ts[i], x[i])
                cnt[i] = tw_window_count(&self.w)
                mean[i] = tw_window_mean(&self.w)
                var[i] = tw_window_var(&self.w, ddof)
                std[i] = sqrt(var[i])
                mn[i] = tw_window_min(&self.w)
                mx[i] = tw_window_max(&self.w)
                sm[i] = tw_window_sum(&self.w)
        out["count"] = count
        return out

    def run_mean_std(self, const int64_t[::1] ts, const double[::1] x, double[::1] mean, double[::1] std):
        """Add every sample; write the rolling mean and standard deviation (ddof 1) into
        the given arrays (no allocation: what a batch consumer uses)."""
        cdef Py_ssize_t n = x.shape[0], i
        if ts.shape[0] != n or mean.shape[0] < n or std.shape[0] < n:
            raise ValueError("ts, mean and std must be at least as long as x")
        with nogil:
            for i in range(n):
                tw_window_add(&self.w, ts[i], x[i])
                mean[i] = tw_window_mean(&self.w)
                std[i] = sqrt(tw_window_var(&self.w, 1))

    @property
    def count(self):
        return tw_window_count(&self.w)

    @property
    def mean(self):
        return tw_window_mean(&self.w)

    def var(self, int ddof=1):
        """Variance with ``ddof`` (1: the sample variance, as pandas)."""
        return tw_window_var(&self.w, ddof)

    @property
    def std(self):
        """Standard deviation (ddof 1)."""
        return sqrt(tw_window_var(&self.w, 1))

    @property
    def min(self):
        return tw_window_min(&self.w)

    @property
    def max(self):
        return tw_window_max(&self.w)

    @property
    def sum(self):
        return tw_window_sum(&self.w)

    def zscore(self, double x):
        """(x - mean) / std of the window (NaN without dispersion)."""
        return tw_window_zscore(&self.w, x)

    @property
    def dropped(self):
        """Samples evicted early because the window reached max_capacity."""
        return self.w.dropped

    @property
    def nonfinite(self):
        """Samples of +-inf ignored (NaN is ignored too, uncounted)."""
        return self.w.nonfinite

    def values(self):
        """The samples in the window, oldest first (a copy; for tests)."""
        cdef Py_ssize_t n = tw_window_count(&self.w), k = 0
        cdef uint64_t i = self.w.first
        out = np.empty(n)
        cdef double[::1] v = out
        while i != self.w.next:
            v[k] = self.w.x[i & (self.w.cap - 1)]
            k += 1
            i += 1
        return out


cdef class SumWindow:
    """Rolling sums of two values per sample: VWAP (a = price*qty, b = qty), trade-flow
    imbalance (a = signed qty, b = qty), realised variance (a = return**2, b = 1).

    Parameters are those of :class:`RollingWindow`.
    """

    cdef tw_sumwin w

    def __cinit__(self, int64_t size, str kind="count", int64_t max_capacity=DEFAULT_MAX_CAPACITY):
        cdef int k = _kind_arg(kind)
        _check_window(k, size, max_capacity)
        if tw_sumwin_init(&self.w, k, size, max_capacity) != 0:
            raise MemoryError("could not allocate the window")

    def __dealloc__(self):
        tw_sumwin_free(&self.w)

    def add(self, int64_t ts, double a, double b=1.0):
        tw_sumwin_add(&self.w, ts, a, b)

    def evict(self, int64_t now):
        tw_sumwin_evict(&self.w, now)

    def run(self, const int64_t[::1] ts, const double[::1] a, const double[::1] b):
        """Add every sample; return ``(sum_a, sum_b)`` arrays after each one."""
        cdef Py_ssize_t n = a.shape[0], i
        if ts.shape[0] != n or b.shape[0] != n:
            raise ValueError("ts, a and b must have the same length")
        sa_out = np.empty(n)
        sb_out = np.empty(n)
        cdef double[::1] sa = sa_out, sb = sb_out
        with nogil:
            for i in range(n):
                tw_sumwin_add(&self.w, ts[i], a[i], b[i])
                sa[i] = tw_sumwin_a(&self.w)
                sb[i] = tw_sumwin_b(&self.w)
        return sa_out, sb_out

    @property
    def count(self):
        return tw_sumwin_count(&self.w)

    @property
    def sum_a(self):
        return tw_sumwin_a(&self.w)

    @property
    def sum_b(self):
        return tw_sumwin_b(&self.w)

    @property
    def nonfinite(self):
        """Samples with a +-inf value ignored."""
        return self.w.nonfinite

    @property
    def ratio(self):
        """sum_a / sum_b (NaN when sum_b is 0): the VWAP, or the flow imbalance."""
        cdef double b = tw_sumwin_b(&self.w)
        return tw_sumwin_a(&self.w) / b if b != 0.0 else NAN


cdef class Ewma:
    """Exponentially weighted mean and variance for irregularly spaced samples.

    Every earlier weight decays by ``0.5 ** (elapsed_ns / halflife_ns)`` when a sample
    arrives; samples with equal timestamps weigh the same.  While sample times do not go back,
    the mean equals pandas' ``Series.ewm(halflife=..., times=...).mean()``; a sample stamped
    before the latest one counts as no time passed (docs/engine.md).
    """

    cdef tw_ewma e

    def __cinit__(self, double halflife_ns):
        if not halflife_ns > 0:
            raise ValueError(f"halflife_ns must be positive, got {halflife_ns}")
        tw_ewma_init(&self.e, halflife_ns)

    def add(self, int64_t ts, double x):
        tw_ewma_add(&self.e, ts, x)

    def run(self, const int64_t[::1] ts, const double[::1] x):
        """Add every sample; return ``(mean, var)`` arrays (unbiased variance) after each one."""
        cdef Py_ssize_t n = x.shape[0], i
        if ts.shape[0] != n:
            raise ValueError(f"ts has {ts.shape[0]} values, x has {n}")
        m_out = np.empty(n)
        v_out = np.empty(n)
        cdef double[::1] m = m_out, v = v_out
        with nogil:
            for i in range(n):
                tw_ewma_add(&self.e, ts[i], x[i])
                m[i] = self.e.mean
                v[i] = tw_ewma_var(&self.e, False)
        return m_out, v_out

    @property
    def mean(self):
        return self.e.mean

    def var(self, bint bias=False):
        return tw_ewma_var(&self.e, bias)

    @property
    def std(self):
        return sqrt(tw_ewma_var(&self.e, False))
