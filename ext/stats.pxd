# The C API of tickwire.ext.stats: rolling statistics as small state structs with
# add / evict / value kernels, O(1) amortised per update, no allocation in steady state.
#
# - tw_window: a window of (time, value) samples, by count (the last N) or by time (the
#   samples with ts > now - size, as pandas' rolling("...") with closed="right").  Mean and
#   variance from Neumaier-compensated sums of (x - shift), re-based on the window's mean
#   (an exact O(n) pass) each time the window turns over, and whenever the mean strays from
#   the shift by more than the window's spread: amortised O(1), no drift after 10^7
#   updates, no cancellation after a jump; min and max from monotonic deques.
# - tw_sumwin: a window of (time, a, b) with compensated sums of a and b: trade VWAP
#   (a = price*qty, b = qty), trade-flow imbalance (a = signed qty, b = qty), realised
#   variance (a = r^2).
# - tw_ewma: exponentially weighted mean and variance for irregular spacing: every
#   earlier weight decays by 0.5 ** (dt / halflife), so equal timestamps add plain weight
#   (pandas' ewm(halflife=..., times=...) with adjust=True); West's weighted update keeps
#   the variance stable.
#
# Min and max cost a monotonic deque each (data-dependent branches on every update):
# windows that do not need them are made with extrema=0 (min/max then return NaN).
# NaN inputs are ignored (not added).  Time windows grow their ring by doubling up to
# max_cap samples (counted as allocations); past that the oldest samples are evicted early
# and counted in `dropped`.

from libc.stdint cimport int64_t, uint64_t

cdef enum:
    TW_WIN_COUNT = 0
    TW_WIN_TIME = 1

cdef struct tw_window:
    int64_t *ts
    double *x
    uint64_t *minq                # monotonic deque of sample numbers (values increasing)
    uint64_t *maxq                # monotonic deque of sample numbers (values decreasing)
    int64_t cap                   # ring slots (a power of two)
    int64_t max_cap
    uint64_t first                # number of the oldest sample in the window
    uint64_t next                 # number the next sample gets
    uint64_t min_h, min_t, max_h, max_t
    int kind                      # TW_WIN_COUNT or TW_WIN_TIME
    int extrema                   # keep the min/max deques (they cost a deque update each)
    int64_t size                  # samples, or nanoseconds
    double shift                  # sums are of (x - shift)
    double s1, c1, s2, c2         # Neumaier sums (and compensations) of d and d*d
    int64_t since_refresh
    uint64_t dropped
    uint64_t nonfinite            # +-inf samples ignored

cdef struct tw_sumwin:
    int64_t *ts
    double *a
    double *b
    int64_t cap
    int64_t max_cap
    uint64_t first
    uint64_t next
    int kind
    int64_t size
    double sa, ca, sb, cb
    int64_t since_refresh
    uint64_t dropped
    uint64_t nonfinite            # samples with a +-inf value ignored

cdef struct tw_ewma:
    double k                      # ln 2 / halflife, per ns
    double w                      # sum of weights
    double w2                     # sum of squared weights
    double den                    # w*w - w2, kept by its own recurrence (no cancellation)
    double mean
    double s                      # weighted sum of squared deviations
    int64_t last_ts
    int started

# -- windows ----------------------------------------------------------------------------
cdef int tw_window_init(tw_window *w, int kind, int64_t size, int64_t max_cap, bint extrema) noexcept nogil  # 0, -1: no memory
cdef void tw_window_free(tw_window *w) noexcept nogil
cdef void tw_window_clear(tw_window *w) noexcept nogil
cdef int tw_window_add(tw_window *w, int64_t ts, double x) noexcept nogil     # 0, -1: no memory (sample dropped)
cdef int64_t tw_window_evict(tw_window *w, int64_t now) noexcept nogil        # time windows: age to `now`; samples evicted
cdef double tw_window_mean(const tw_window *w) noexcept nogil
cdef double tw_window_var(const tw_window *w, int ddof) noexcept nogil
cdef double tw_window_sum(const tw_window *w) noexcept nogil
cdef double tw_window_min(const tw_window *w) noexcept nogil
cdef double tw_window_max(const tw_window *w) noexcept nogil
cdef double tw_window_zscore(const tw_window *w, double x) noexcept nogil

cdef inline int64_t tw_window_count(const tw_window *w) noexcept nogil:
    """Samples in the window."""
    return <int64_t>(w.next - w.first)

cdef int tw_sumwin_init(tw_sumwin *w, int kind, int64_t size, int64_t max_cap) noexcept nogil
cdef void tw_sumwin_free(tw_sumwin *w) noexcept nogil
cdef void tw_sumwin_clear(tw_sumwin *w) noexcept nogil
cdef int tw_sumwin_add(tw_sumwin *w, int64_t ts, double a, double b) noexcept nogil
cdef int64_t tw_sumwin_evict(tw_sumwin *w, int64_t now) noexcept nogil

cdef inline int64_t tw_sumwin_count(const tw_sumwin *w) noexcept nogil:
    return <int64_t>(w.next - w.first)

cdef inline double tw_sumwin_a(const tw_sumwin *w) noexcept nogil:
    """Sum of a over the window."""
    return w.sa + w.ca

cdef inline double tw_sumwin_b(const tw_sumwin *w) noexcept nogil:
    """Sum of b over the window."""
    return w.sb + w.cb

# -- EWMA ------------------------------------------------------------------------------
cdef void tw_ewma_init(tw_ewma *e, double halflife_ns) noexcept nogil
cdef void tw_ewma_add(tw_ewma *e, int64_t ts, double x) noexcept nogil
cdef void tw_ewma_add_decayed(tw_ewma *e, int64_t ts, double x, double decay) noexcept nogil
cdef double tw_ewma_var(const tw_ewma *e, bint bias) noexcept nogil
