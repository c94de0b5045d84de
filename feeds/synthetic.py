"""Seeded synthetic market data as canonical events: realistic enough to measure with.

- :func:`l2_updates`: price-level updates clustered near the top of the book (geometric
  distance from the mid), a level's quantity set or cleared, the mid wandering a tick at a
  time; depth is stationary and the book is never crossed.
- :func:`l3_orders`: order flow: adds near the top, cancels of random resting orders,
  executions against the front of the best level, size reductions; the number of resting
  orders is stationary.

Both are deterministic for a seed, interleave several instruments, and give bursty
event times (exponential gaps with occasional bursts).  They are plain Python (about a
microsecond an event): fine for tests, benchmarks and the demo.
"""

from __future__ import annotations

import numpy as np

from tickwire.engine.instruments import Instrument
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind, Side

__all__ = ["l2_updates", "l3_orders", "synthetic_instruments"]

_T0 = 1_700_000_000_000_000_000        # 2023-11-14, a fixed origin: same seed, same bytes


def synthetic_instruments(n: int, book: str = "L2", first_id: int = 0) -> list[Instrument]:
    """``n`` instruments SYN0.. with a 0.01 tick and 0.001 lot."""
    return [Instrument(first_id + i, f"SYN{first_id + i}", tick_size="0.01", lot_size="0.001", book=book)
            for i in range(n)]


def _times(rng, n):
    gaps = rng.exponential(2_000.0, n)                      # ~2 us apart on average...
    burst = rng.random(n) < 0.3
    gaps[burst] = rng.exponential(50.0, int(burst.sum()))   # ...with bursts of ~50 ns gaps
    return _T0 + np.cumsum(gaps.astype(np.int64) + 1)


def _finish(rows, rng, message_size):
    ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
    if not rows:
        return ev
    cols = list(zip(*rows))
    ev["instrument"], ev["kind"], ev["side"], ev["price"], ev["qty"], ev["order_id"] = cols
    ts = _times(rng, len(rows))
    ev["ts_event"] = ts
    ev["ts_recv"] = ts + 20_000
    ev["seq"] = np.arange(1, len(rows) + 1, dtype=np.uint64)
    ev["flags"][message_size - 1::message_size] |= int(Flag.LAST)
    ev["flags"][-1] |= int(Flag.LAST)
    return ev


def l2_updates(n: int, seed: int = 1, instruments: int = 1, depth: int = 200, p_top: float = 0.2,
               start_price: int = 1_000_000, message_size: int = 16) -> np.ndarray:
    """``n`` L2 level updates (Kind.MODIFY, absolute quantity; 0 removes the level).

    Parameters
    ----------
    depth : int
        Farthest level from the mid that is touched, in ticks.
    p_top : float
        Parameter of the geometric distance from the mid: larger clusters harder at the top.
    message_size : int
        Events per exchange message (``Flag.LAST`` on each message's last event).
    """
    rng = np.random.default_rng(seed)
    mids = [start_price + 1000 * i for i in range(instruments)]
    books = [({}, {}) for _ in range(instruments)]
    inst_draw = rng.integers(0, instruments, n)
    u = rng.random(n)
    side_draw = rng.integers(0, 2, n)
    dist_draw = np.minimum(rng.geometric(p_top, n), depth)
    qty_draw = rng.lognormal(6.0, 1.0, n).astype(np.int64) + 1
    rows = []
    for i in range(n):
        k = int(inst_draw[i])
        bids, asks = books[k]
        mid = mids[k]
        if u[i] < 0.02:                                   # the mid moves a tick
            step = 1 if u[i] < 0.01 else -1
            mid += step
            mids[k] = mid
            doomed = (asks, Side.ASK) if step > 0 else (bids, Side.BID)
            if mid in doomed[0]:
                del doomed[0][mid]
                rows.append((k, Kind.MODIFY, doomed[1], mid, 0, 0))
                continue
        side = int(side_draw[i])
        levels = bids if side == Side.BID else asks
        price = mid - int(dist_draw[i]) if side == Side.BID else mid + int(dist_draw[i])
        if price in levels and u[i] > 0.7:
            del levels[price]
            qty = 0
        else:
            qty = int(qty_draw[i])
            levels[price] = qty
        rows.append((k, Kind.MODIFY, side, price, qty, 0))
    return _finish(rows, rng, message_size)


def l3_orders(n: int, seed: int = 1, instruments: int = 1, resting: int = 5000, p_top: float = 0.08,
              start_price: int = 1_000_000, message_size: int = 16) -> np.ndarray:
    """``n`` L3 events: ADD, DELETE (cancel), TRADE with order_id (execution), MODIFY (reduce).

    ``resting`` is the order count per instrument the flow settles around.
    """
    rng = np.random.default_rng(seed)
    state = []
    for k in range(instruments):
        state.append({"mid": start_price + 1000 * k, "orders": {}, "live": [], "queues": ({}, {})})
    next_id = 1
    inst_draw = rng.integers(0, instruments, n)
    u = rng.random(n)
    v = rng.random(n)
    side_draw = rng.integers(0, 2, n)
    dist_draw = rng.geometric(p_top, n)
    qty_draw = rng.lognormal(4.0, 1.0, n).astype(np.int64) + 1
    rows = []
    for i in range(n):
        k = int(inst_draw[i])
        st = state[k]
        orders, live, queues = st["orders"], st["live"], st["queues"]
        if v[i] < 0.01:                                  # the mid moves a tick: the level
            step = 1 if v[i] < 0.005 else -1             # it moves onto trades away
            st["mid"] += step
            hit = Side.ASK if step > 0 else Side.BID
            for oid in list(queues[hit].get(st["mid"], ())):
                rows.append((k, Kind.TRADE, 1 - hit, st["mid"], orders[oid][2], oid))
                _remove(orders, live, queues, oid)
        mid = st["mid"]
        p_add = 0.5 + 0.4 * (1.0 - min(len(live) / resting, 2.0))   # pulls the count to `resting`
        if not live or u[i] < p_add:
            side = int(side_draw[i])
            price = mid - int(dist_draw[i]) if side == Side.BID else mid + int(dist_draw[i])
            qty = int(qty_draw[i])
            oid = next_id
            next_id += 1
            orders[oid] = [side, price, qty, len(live)]
            live.append(oid)
            queues[side].setdefault(price, []).append(oid)
            rows.append((k, Kind.ADD, side, price, qty, oid))
            continue
        r = (u[i] - p_add) / (1.0 - p_add)
        if r < 0.15:                                     # execution at the front of the best level
            side = int(side_draw[i])
            q = queues[side]
            if q:
                best = max(q) if side == Side.BID else min(q)
                oid = q[best][0]
                have = orders[oid][2]
                fill = have if v[i] < 0.6 else max(1, have // 2)
                rows.append((k, Kind.TRADE, 1 - side, best, fill, oid))   # side: the aggressor
                if fill == have:
                    _remove(orders, live, queues, oid)
                else:
                    orders[oid][2] -= fill
                continue
        oid = live[int(v[i] * len(live))]
        if r < 0.25:                                     # reduce in place
            o = orders[oid]
            if o[2] > 1:
                o[2] -= max(1, o[2] // 3)
                rows.append((k, Kind.MODIFY, o[0], o[1], o[2], oid))
                continue
        rows.append((k, Kind.DELETE, orders[oid][0], orders[oid][1], 0, oid))
        _remove(orders, live, queues, oid)
    return _finish(rows[:n], rng, message_size)     # a mid move adds trades: keep exactly ``n``


def _remove(orders, live, queues, oid):
    side, price, _, pos = orders.pop(oid)
    last = live.pop()
    if last != oid:
        live[pos] = last
        orders[last][3] = pos
    q = queues[side][price]
    q.remove(oid)
    if not q:
        del queues[side][price]
