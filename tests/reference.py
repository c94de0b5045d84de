"""Plain-Python references: slow, obvious, and the oracle for the compiled code.

RefL2 and RefL3 implement the documented semantics of tickwire's books, reject codes and
snapshot markers included, with dicts and lists and nothing clever, so that a differential
test can compare the full state of a compiled book with them after every step.  RefEngine
does the same for the engine (ext/pipeline.pyx): every feature recomputed from the whole
history at each update, and the rules' signals.
"""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

from tickwire.ext.records import Flag, Kind, Reject, Side

BID, ASK = int(Side.BID), int(Side.ASK)
INT64_MAX = 2**63 - 1


def _better(side: int, a: int, b: int) -> bool:
    return a > b if side == BID else a < b


class RefL2:
    def __init__(self, instrument=0, max_depth=0, min_price=1, max_price=1 << 62, max_levels=1 << 20):
        self.instrument = instrument
        self.max_depth = max_depth
        self.min_price, self.max_price = min_price, max_price
        self.max_levels = max_levels
        self.sides = ({}, {})
        self.in_sync = True

    def set(self, side, price, qty):
        if side not in (BID, ASK):
            return Reject.BAD_SIDE
        if qty < 0:
            return Reject.BAD_QTY
        lv = self.sides[side]
        if price in lv:
            if qty == 0:
                del lv[price]
            else:
                lv[price] = qty
            return Reject.OK
        if qty == 0:
            return Reject.OK
        if not self.min_price <= price <= self.max_price:
            return Reject.PRICE_RANGE
        if len(lv) >= self.max_levels:
            return Reject.CAPACITY
        lv[price] = qty
        if self.max_depth and len(lv) > self.max_depth:
            worst = min(lv) if side == BID else max(lv)
            del lv[worst]
        return Reject.OK

    def delete(self, side, price):
        if side not in (BID, ASK):
            return Reject.BAD_SIDE
        if price not in self.sides[side]:
            return Reject.UNKNOWN_LEVEL
        del self.sides[side][price]
        return Reject.OK

    def clear(self):
        self.sides = ({}, {})

    def marker(self, flags):
        """A Kind.SNAPSHOT event: STALE marks the book out of sync (contents kept), BEGIN
        clears it and marks it out of sync, END marks it in sync; in that order when combined.
        Its side, price and quantity mean nothing."""
        if flags & Flag.STALE:
            self.in_sync = False
        if flags & Flag.SNAPSHOT_BEGIN:
            self.clear()
            self.in_sync = False
        if flags & Flag.SNAPSHOT_END:
            self.in_sync = True
        return Reject.OK

    def apply(self, ev):
        kind, side = int(ev["kind"]), int(ev["side"])
        if int(ev["instrument"]) != self.instrument:
            return Reject.UNKNOWN_INSTRUMENT
        if kind in (Kind.ADD, Kind.MODIFY):
            return self.set(side, int(ev["price"]), int(ev["qty"]))
        if kind == Kind.DELETE:
            return self.delete(side, int(ev["price"]))
        if kind == Kind.TRADE:
            if side > Side.NONE:
                return Reject.BAD_SIDE
            if int(ev["qty"]) < 0:
                return Reject.BAD_QTY
            return Reject.OK if self.min_price <= int(ev["price"]) <= self.max_price else Reject.PRICE_RANGE
        if kind == Kind.CLEAR:
            self.clear()
            return Reject.OK
        if kind == Kind.SNAPSHOT:
            return self.marker(int(ev["flags"]))
        return Reject.BAD_KIND

    # -- queries ---------------------------------------------------------------------------
    def levels(self, side):
        lv = self.sides[side]
        return sorted(lv.items(), reverse=(side == BID))

    def top(self, side, k):
        return self.levels(side)[:k]

    def state(self):
        return self.levels(BID), self.levels(ASK)

    def best(self, side):
        lv = self.levels(side)
        return lv[0] if lv else (None, 0)

    def qty_at(self, side, price):
        return self.sides[side].get(price, 0)

    def spread(self):
        (b, _), (a, _) = self.best(BID), self.best(ASK)
        return None if b is None or a is None else a - b

    def mid(self):
        (b, _), (a, _) = self.best(BID), self.best(ASK)
        return math.nan if b is None or a is None else (b + a) / 2

    def microprice(self):
        (b, qb), (a, qa) = self.best(BID), self.best(ASK)
        if b is None or a is None:
            return math.nan
        return (b * qa + a * qb) / (qa + qb)

    def imbalance(self, k):
        qb = sum(q for _, q in self.levels(BID)[:k])
        qa = sum(q for _, q in self.levels(ASK)[:k])
        return math.nan if qb + qa == 0 else (qb - qa) / (qb + qa)

    def vwap_to_size(self, side, qty):
        left, notional = qty, 0
        for price, q in self.levels(side):
            take = min(left, q)
            notional += take * price
            left -= take
            if left == 0:
                return notional / qty
        return math.nan


class RefL3(RefL2):
    """Orders in a dict, FIFO queues as lists per (side, price)."""

    def __init__(self, instrument=0, min_price=1, max_price=1 << 62, max_levels=1 << 20, max_orders=1 << 24):
        super().__init__(instrument, 0, min_price, max_price, max_levels)
        self.max_orders = max_orders
        self.orders = {}                 # id -> [side, price, qty, ts]
        self.queues = ({}, {})           # price -> [ids], per side

    def _sync_levels(self, side, price):
        q = self.queues[side].get(price)
        if q:
            self.sides[side][price] = sum(self.orders[i][2] for i in q)
        else:
            self.queues[side].pop(price, None)
            self.sides[side].pop(price, None)

    def add(self, oid, side, price, qty, ts=0):
        if side not in (BID, ASK):
            return Reject.BAD_SIDE
        if qty <= 0:
            return Reject.BAD_QTY
        if oid == 0:
            return Reject.UNKNOWN_ORDER
        if not self.min_price <= price <= self.max_price:
            return Reject.PRICE_RANGE
        if oid in self.orders:
            return Reject.DUPLICATE_ORDER
        if len(self.orders) >= self.max_orders:
            return Reject.CAPACITY
        if price not in self.queues[side] and len(self.sides[side]) >= self.max_levels:
            return Reject.CAPACITY
        if self.sides[side].get(price, 0) + qty > INT64_MAX:       # a level's total is an int64
            return Reject.BAD_QTY
        self.orders[oid] = [side, price, qty, ts]
        self.queues[side].setdefault(price, []).append(oid)
        self._sync_levels(side, price)
        return Reject.OK

    def delete_order(self, oid):
        if oid not in self.orders:
            return Reject.UNKNOWN_ORDER
        side, price, _, _ = self.orders.pop(oid)
        self.queues[side][price].remove(oid)
        self._sync_levels(side, price)
        return Reject.OK

    def modify(self, oid, price, qty, ts=0):
        if oid not in self.orders:
            return Reject.UNKNOWN_ORDER
        if qty < 0:
            return Reject.BAD_QTY
        if qty == 0:
            return self.delete_order(oid)
        side, old_price, old_qty, _ = self.orders[oid]
        if price == old_price and qty <= old_qty:
            self.orders[oid][2] = qty
            self._sync_levels(side, price)
            return Reject.OK
        if price != old_price:
            if not self.min_price <= price <= self.max_price:
                return Reject.PRICE_RANGE
            alone = len(self.queues[side][old_price]) == 1       # its level goes as the new one comes
            if price not in self.queues[side] and len(self.sides[side]) >= self.max_levels and not alone:
                return Reject.CAPACITY
        others = self.sides[side].get(price, 0) - (old_qty if price == old_price else 0)
        if others + qty > INT64_MAX:
            return Reject.BAD_QTY
        self.queues[side][old_price].remove(oid)
        self._sync_levels(side, old_price)
        self.orders[oid] = [side, price, qty, ts]
        self.queues[side].setdefault(price, []).append(oid)
        self._sync_levels(side, price)
        return Reject.OK

    def execute(self, oid, qty):
        if oid not in self.orders:
            return Reject.UNKNOWN_ORDER
        if qty <= 0:
            return Reject.BAD_QTY
        side, price, have, _ = self.orders[oid]
        if qty > have:
            return Reject.OVERFILL
        if qty == have:
            return self.delete_order(oid)
        self.orders[oid][2] -= qty
        self._sync_levels(side, price)
        return Reject.OK

    def clear(self):
        super().clear()
        self.orders.clear()
        self.queues = ({}, {})

    def apply(self, ev):
        kind, side, oid = int(ev["kind"]), int(ev["side"]), int(ev["order_id"])
        price, qty, ts = int(ev["price"]), int(ev["qty"]), int(ev["ts_event"])
        if int(ev["instrument"]) != self.instrument:
            return Reject.UNKNOWN_INSTRUMENT
        if kind == Kind.ADD:
            return self.add(oid, side, price, qty, ts)
        if kind == Kind.MODIFY:
            return self.modify(oid, price, qty, ts)
        if kind == Kind.DELETE:
            return self.delete_order(oid)
        if kind == Kind.TRADE:
            if side > Side.NONE:
                return Reject.BAD_SIDE
            if qty < 0:
                return Reject.BAD_QTY
            if not self.min_price <= price <= self.max_price and not (oid and price == 0):
                return Reject.PRICE_RANGE          # (an execution's price 0: the resting order's)
            return self.execute(oid, qty) if oid else Reject.OK
        if kind == Kind.CLEAR:
            self.clear()
            return Reject.OK
        if kind == Kind.SNAPSHOT:
            return self.marker(int(ev["flags"]))
        return Reject.BAD_KIND

    def queue(self, side, price):
        return [(oid, self.orders[oid][2]) for oid in self.queues[side].get(price, [])]

    def order(self, oid):
        """``(side, price, qty, ts)`` of a resting order, or None."""
        o = self.orders.get(oid)
        return tuple(o) if o is not None else None

    def queue_position(self, oid):
        side, price, _, _ = self.orders[oid]
        q = self.queues[side][price]
        ahead = q[: q.index(oid)]
        return len(ahead), sum(self.orders[i][2] for i in ahead)

    def levels3(self, side):
        return [(p, q, len(self.queues[side][p])) for p, q in self.levels(side)]


# ---------------------------------------------------------------------------------------
# The engine: features and signals
# ---------------------------------------------------------------------------------------

def imbalance_both_sides(book, k):
    """The engine's top-k imbalance: like ``imbalance`` but NaN unless both sides have levels."""
    qb = sum(q for _, q in book.top(BID, k))
    qa = sum(q for _, q in book.top(ASK, k))
    return (qb - qa) / (qb + qa) if qb > 0 and qa > 0 else math.nan


def _in_window(samples, now, kind, size):
    """The samples ``(ts, value...)`` a rolling window holds at ``now``: the last ``size``
    (count) or those with ``ts > now - size`` (time)."""
    if kind == "count":
        return samples[-size:] if size else []
    return [s for s in samples if s[0] > now - size]


def _ewma(samples, halflife):
    """Mean and unbiased (reliability-weights) standard deviation of ``(ts, x)`` samples,
    each weighted 0.5 ** ((last ts - ts) / halflife): pandas' ``ewm(halflife, times).mean()``
    and ``.std()``.  In exact rational arithmetic: when one weight dominates, floating point
    would lose the others' deviations to the rounding of the mean."""
    if not samples:
        return math.nan, math.nan
    last = samples[-1][0]
    w = [Fraction(0.5 ** ((last - t) / halflife)) for t, _ in samples]
    x = [Fraction(v) for _, v in samples]
    sw = sum(w)
    mean = sum(wi * xi for wi, xi in zip(w, x)) / sw
    den = sw * sw - sum(wi * wi for wi in w)
    if not den > 0:
        return float(mean), math.nan
    var = sum(wi * (xi - mean) ** 2 for wi, xi in zip(w, x)) * sw / den
    return float(mean), math.sqrt(var)


#: tickwire.ext.pipeline.FUTURE_STAMP_NS and BAD_STREAK_MAX, written out: an event stamped more
#: than a day after its receipt (``ts_recv`` 0: unknown, not checked) and a day after its
#: instrument's previous update is a bad stamp, for which no time passes; past 16 in a row over a
#: minute of receipt time, not
FUTURE_STAMP_NS = 86_400 * 10**9
BAD_STREAK_MAX, BAD_STREAK_NS = 16, 60 * 10**9


def stats_time(s, e):
    """The time the statistics take event ``e`` at (counting a bad stamp)."""
    ts, recv = int(e["ts_event"]), int(e["ts_recv"])
    if recv > 0 and ts - recv > FUTURE_STAMP_NS and ts - s.ts > FUTURE_STAMP_NS:
        if s.bad_streak == 0:
            s.bad_since = recv
        if s.bad_streak < BAD_STREAK_MAX or recv - s.bad_since < BAD_STREAK_NS:
            s.bad_streak += 1
            s.future_stamps += 1
            return s.ts
    s.bad_streak = 0
    return ts


class _RefInstrument:
    def __init__(self, book, l3, cfg, rules):
        self.book, self.l3, self.cfg, self.rules = book, l3, cfg, rules   # rules: [(id, RuleConfig)]
        self.pending = False                 # the book changed since its last sample
        self.ts = 0                          # time of the last statistics update
        self.bbo = (None, None)              # best prices when the mid series last took a sample
        self.mid = self.spread = self.microprice = self.imbalance = self.micro_edge = math.nan
        self.samples = []                    # (ts, mid, spread) each time a best price moved
        self.trades = []                     # (ts, price, qty, signed qty)
        self.state = {rid: 0 for rid, _ in rules}               # hysteresis: 0 armed, +1/-1 fired
        self.updates = self.signals = self.suppressed = self.future_stamps = self.bad_streak = self.bad_since = 0

    def sample_book(self, ts):
        b = self.book
        self.microprice = b.microprice()
        self.micro_edge = micro_edge(b)
        self.imbalance = imbalance_both_sides(b, self.cfg.imbalance_depth)
        bbo = (b.best(BID)[0], b.best(ASK)[0])
        if bbo != self.bbo:
            self.bbo = bbo
            self.mid = b.mid()
            self.spread = math.nan if None in bbo else float(bbo[1] - bbo[0])
            self.samples.append((ts, self.mid, self.spread))

    def features(self):
        """Every feature, recomputed from the whole history as of the last update."""
        c, now = self.cfg, self.ts
        f = {"mid": self.mid, "microprice": self.microprice, "spread": self.spread,
             "imbalance": self.imbalance, "micro_edge": self.micro_edge, "ts": self.ts}
        mids = [m for _, m in _in_window([(t, m) for t, m, _ in self.samples if not math.isnan(m)],
                                         now, c.window, c.window_size)]
        f["mid_count"] = len(mids)
        f["mid_mean"] = math.fsum(mids) / len(mids) if mids else math.nan
        f["mid_std"] = sd = statistics.stdev(mids) if len(mids) > 1 else math.nan
        f["mid_min"] = min(mids) if mids else math.nan
        f["mid_max"] = max(mids) if mids else math.nan
        f["zscore"] = (self.mid - f["mid_mean"]) / sd if sd > 0 else math.nan
        spreads = [s for _, s in _in_window([(t, s) for t, _, s in self.samples if not math.isnan(s)],
                                            now, c.window, c.window_size)]
        f["spread_count"] = len(spreads)
        f["spread_mean"] = math.fsum(spreads) / len(spreads) if spreads else math.nan
        valid = [(t, m) for t, m, _ in self.samples if m > 0]
        rets = [(valid[i][0], math.log(valid[i][1] / valid[i - 1][1]) ** 2) for i in range(1, len(valid))]
        r2 = [r for _, r in _in_window(rets, now, c.window, c.window_size)]
        f["realized_vol"] = math.sqrt(math.fsum(r2)) if r2 else math.nan
        f["ewma_fast"], f["ewma_fast_std"] = _ewma(valid, c.ewma_fast_halflife_ns)
        f["ewma_slow"], _ = _ewma(valid, c.ewma_slow_halflife_ns)
        tr = _in_window(self.trades, now, c.trade_window, c.trade_window_size)
        qty = sum(q for _, _, q, _ in tr)
        f["trade_count"] = len(tr)
        f["vwap"] = sum(p * q for _, p, q, _ in tr) / qty if qty else math.nan
        f["buy_minus_sell"] = float(sum(s for *_, s in tr))
        f["flow"] = f["buy_minus_sell"] / qty if qty else math.nan
        f.update(updates=self.updates, signals=self.signals, suppressed=self.suppressed,
                 future_stamps=self.future_stamps)
        return f


def micro_edge(book):
    """Microprice minus mid in ticks, as the engine computes it: (ask - bid)(qb - qa) / 2(qb + qa),
    with integer operands (the difference of two large prices lost 2e-10 of a 0.3-tick edge)."""
    (b, qb), (a, qa) = book.best(BID), book.best(ASK)
    if b is None or a is None:
        return math.nan
    return float(a - b) * float(qb - qa) / (2.0 * (float(qb) + float(qa)))


def rule_value(rule, f):
    """A built-in rule's value from the features (NaN: cannot be computed yet)."""
    k = rule.kind
    if k == "microprice":
        return f["micro_edge"]
    if k == "imbalance":
        return f["imbalance"]
    if k == "zscore":
        return f["zscore"] if f["mid_count"] >= rule.min_count else math.nan
    if k == "spread":
        ok = f["spread_count"] >= rule.min_count and f["spread_mean"] > 0
        return f["spread"] / f["spread_mean"] if ok else math.nan
    if k == "vwap":
        ok = f["trade_count"] >= rule.min_count and f["vwap"] > 0
        return (f["mid"] - f["vwap"]) / f["vwap"] * 1e4 if ok else math.nan
    if k == "ewma_cross":
        return f["ewma_fast"] - f["ewma_slow"] if f["mid_count"] >= rule.min_count else math.nan
    raise ValueError(k)


def hysteresis(rule, state, v):
    """``(new state, signal)``: signal is None or ``(direction, flag)``, flag "enter"/"exit"."""
    if math.isnan(v):
        return state, None
    if rule.kind == "spread":                                    # one-sided: a blow-out
        if state == 0 and v >= rule.enter:
            return 1, (1, "enter")
        if state != 0 and v <= rule.exit:
            return 0, ((0, "exit") if rule.emit_exit else None)
        return state, None
    d = 1 if v > 0 else -1
    if abs(v) >= rule.enter and state != d:
        return d, (d, "enter")
    if rule.kind != "ewma_cross" and state != 0 and abs(v) <= rule.exit:
        return 0, ((0, "exit") if rule.emit_exit else None)
    return state, None


class RefEngine:
    """tickwire's Engine as documented (docs/engine.md), in plain Python over the reference
    books, with every feature recomputed from the whole history at each update.

    Per instrument, after each event its book applied while in sync: a trade updates the
    trade statistics; a book change (any applied event but a trade print) is sampled at once
    (``sample="event"``) or at the end of its message, the next event flagged LAST, applied
    or not (``sample="message"``); a sample reads microprice and the top-k imbalance from the
    book and adds to the mid and spread series when a best price moved.  After any update
    every rule of the instrument is evaluated (with hysteresis) and may emit a signal.

    ``signals`` holds them as ``(seq, instrument, rule_id, direction, flag, value, strength,
    ts_event, ts_recv)``: the engine's with ``clock="event"``.

    ``books`` (optional, ``{instrument id: book}``) replaces the reference books with others
    of the same interface (``apply(event) -> Reject``, ``in_sync``, ``best``, ``mid``,
    ``microprice``, ``top``): long real streams are too slow for dict books.
    """

    def __init__(self, instruments, rules, stats, stats_by_instrument=None, books=None):
        by_id = dict(stats_by_instrument or {})
        self.inst = {}
        for inst in instruments:
            if books is not None:
                book = books[inst.id]
            elif inst.book == "L3":
                book = RefL3(inst.id, inst.min_price, inst.max_price, inst.max_levels, inst.max_orders)
            else:
                book = RefL2(inst.id, inst.max_depth, inst.min_price, inst.max_price, inst.max_levels)
            mine = [(rid, r) for rid, r in enumerate(rules) if r.instruments is None or inst.id in r.instruments]
            self.inst[inst.id] = _RefInstrument(book, inst.book == "L3", by_id.get(inst.id, stats), mine)
        self.signals = []

    def process(self, events):
        for e in events:
            self.event(e)

    def event(self, e):
        s = self.inst.get(int(e["instrument"]))
        if s is None:
            return
        resting = None
        if s.l3 and int(e["kind"]) == Kind.TRADE and int(e["order_id"]):
            o = s.book.order(int(e["order_id"]))
            resting = (int(o[0]), int(o[1])) if o is not None else None
        ok = s.book.apply(e) == Reject.OK
        if not s.book.in_sync:
            s.suppressed += ok
            return
        kind = int(e["kind"])
        updated = False
        if ok and kind == Kind.TRADE:
            q, side, price = int(e["qty"]), int(e["side"]), int(e["price"])
            if s.l3 and int(e["order_id"]):       # an execution: the resting order's price and side, where left out
                oside, oprice = resting
                price = price or oprice
                side = (ASK if oside == BID else BID) if side == Side.NONE else side
            ts = stats_time(s, e)
            s.trades.append((ts, price, q, q if side == BID else -q if side == ASK else 0))
            s.ts, s.updates, updated = ts, s.updates + 1, True
        if ok and (kind != Kind.TRADE or (s.l3 and int(e["order_id"]))):
            s.pending = True
        if s.pending and (s.cfg.sample == "event" or int(e["flags"]) & Flag.LAST):
            s.pending = False
            ts = stats_time(s, e)
            s.sample_book(ts)
            s.ts, s.updates, updated = ts, s.updates + 1, True
        if not updated or not s.rules:
            return
        f = s.features()
        for rid, rule in s.rules:
            v = rule_value(rule, f)
            s.state[rid], sig = hysteresis(rule, s.state[rid], v)
            if sig is not None:
                s.signals += 1
                self.signals.append((int(e["seq"]), int(e["instrument"]), rid, sig[0], sig[1], v,
                                     v / rule.enter, int(e["ts_event"]), int(e["ts_recv"])))

    def features(self, instrument):
        return self.inst[instrument].features()
