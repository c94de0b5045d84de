"""What a quant writes instead of tickwire: numba kernels over numpy columns, for the book and
engine benchmarks (benchmark-only; numba comes with the `bench` extra)."""

from __future__ import annotations

import numpy as np

_KERNELS = {}


def _jit():
    if _KERNELS:
        return _KERNELS
    from numba import njit

    @njit(cache=True, inline="always")
    def level(k, side, s, q, bids, asks, best_bid, best_ask):
        """One level update on a dense ladder, keeping the best bid and ask (scan down on removal)."""
        span = bids.shape[1]
        if side == 0:
            bids[k, s] = q
            if q > 0:
                if s > best_bid[k]:
                    best_bid[k] = s
            elif s == best_bid[k]:
                j = s - 1
                while j >= 0 and bids[k, j] == 0:
                    j -= 1
                best_bid[k] = j
        else:
            asks[k, s] = q
            if q > 0:
                if s < best_ask[k]:
                    best_ask[k] = s
            elif s == best_ask[k]:
                j = s + 1
                while j < span and asks[k, j] == 0:
                    j += 1
                best_ask[k] = j

    @njit(cache=True, nogil=True)
    def ladder(inst, side, price, qty, base, bids, asks, best_bid, best_ask):
        for i in range(price.shape[0]):
            k = inst[i]
            level(k, side[i], price[i] - base[k], qty[i], bids, asks, best_bid, best_ask)
        return price.shape[0]

    @njit(cache=True, nogil=True)
    def pipeline_book(kind, inst, side, price, qty, base, bids, asks, best_bid, best_ask, mid, micro, spread):
        """The book stage of the peer pipeline: the ladder, and after every event the mid,
        microprice and spread of its instrument (NaN while a side is empty); trades skip the book."""
        span = bids.shape[1]
        for i in range(price.shape[0]):
            k = inst[i]
            if kind[i] != 4:
                level(k, side[i], price[i] - base[k], qty[i], bids, asks, best_bid, best_ask)
            b, a = best_bid[k], best_ask[k]
            if b >= 0 and a < span:
                pb, pa = base[k] + b, base[k] + a
                qb, qa = bids[k, b], asks[k, a]
                mid[i] = 0.5 * (pb + pa)
                micro[i] = (pb * qa + pa * qb) / (qa + qb)
                spread[i] = pa - pb
            else:
                mid[i] = np.nan
                micro[i] = np.nan
                spread[i] = np.nan
        return price.shape[0]

    _KERNELS.update(ladder=ladder, pipeline_book=pipeline_book)
    return _KERNELS


def ladder():
    return _jit()["ladder"]


def pipeline_book():
    return _jit()["pipeline_book"]


class Scratch:
    """Preallocated (and faulted-in) numpy buffers for the peer pipeline's statistics, so that the
    peer does not pay fresh temporaries' page faults on every run: numpy at its best."""

    def __init__(self, n):
        self.c1, self.c2 = np.ones(n + 1), np.ones(n + 1)
        self.t1, self.t2, self.t3 = np.ones(n), np.ones(n), np.ones(n)
        self.mean, self.std, self.z = np.ones(n), np.ones(n), np.ones(n)
        self.b1, self.b2 = np.ones(n, bool), np.ones(n, bool)


def rolling_mean_std(x, w, sc):
    """Rolling mean and std (ddof 1) over the last ``w`` points by cumulative sums (NaN before w),
    into ``sc.mean`` and ``sc.std`` (views of length ``len(x)``)."""
    n = len(x)
    c1, c2, sq, t1, t2 = sc.c1[: n + 1], sc.c2[: n + 1], sc.t1[:n], sc.t2[: n - w + 1], sc.t3[: n - w + 1]
    mean, std = sc.mean[:n], sc.std[:n]
    c1[0] = c2[0] = 0.0
    np.cumsum(x, out=c1[1:])
    np.multiply(x, x, out=sq)
    np.cumsum(sq, out=c2[1:])
    s1 = np.subtract(c1[w:], c1[:-w], out=t1[: n - w + 1])
    s2 = np.subtract(c2[w:], c2[:-w], out=t2)
    mean[: w - 1] = np.nan
    std[: w - 1] = np.nan
    np.divide(s1, w, out=mean[w - 1:])
    np.multiply(s1, mean[w - 1:], out=t1[: n - w + 1])       # s1 * s1 / w
    np.subtract(s2, t1[: n - w + 1], out=t2)
    np.divide(t2, w - 1, out=t2)
    np.maximum(t2, 0.0, out=t2)
    np.sqrt(t2, out=std[w - 1:])
    return mean, std


def entries(cond, prev):
    """Indices where a boolean array becomes true (a signal on entry); ``prev`` is scratch."""
    prev[0] = False
    prev[1:] = cond[:-1]
    np.logical_not(prev, out=prev)
    np.logical_and(cond, prev, out=prev)
    return np.flatnonzero(prev)
