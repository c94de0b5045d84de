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


def rolling_mean_std(x, w):
    """Rolling mean and std (ddof 1) over the last ``w`` points by cumulative sums (NaN before w)."""
    c1 = np.cumsum(np.concatenate(([0.0], x)))
    c2 = np.cumsum(np.concatenate(([0.0], x * x)))
    mean = np.full(len(x), np.nan)
    std = np.full(len(x), np.nan)
    s1 = c1[w:] - c1[:-w]
    s2 = c2[w:] - c2[:-w]
    mean[w - 1:] = s1 / w
    std[w - 1:] = np.sqrt(np.maximum((s2 - s1 * s1 / w) / (w - 1), 0.0))
    return mean, std


def entries(cond):
    """Indices where a condition becomes true (a signal on entry, as a hysteresis-free rule fires)."""
    c = np.asarray(cond, bool)
    return np.flatnonzero(c & ~np.concatenate(([False], c[:-1])))
