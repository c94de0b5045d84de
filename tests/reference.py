"""Plain-Python reference books: slow, obvious, and the oracle for the compiled ones.

They implement the documented semantics of tickwire's books, reject codes included, with
dicts and lists and nothing clever, so that a differential test can compare the full
state of a compiled book with them after every step.
"""

from __future__ import annotations

import math

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
            return Reject.BAD_QTY if int(ev["qty"]) < 0 else Reject.OK
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
            if price not in self.queues[side] and len(self.sides[side]) >= self.max_levels:
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
            return self.execute(oid, qty) if oid else Reject.OK
        if kind == Kind.CLEAR:
            self.clear()
            return Reject.OK
        if kind == Kind.SNAPSHOT:
            return self.marker(int(ev["flags"]))
        return Reject.BAD_KIND

    def queue(self, side, price):
        return [(oid, self.orders[oid][2]) for oid in self.queues[side].get(price, [])]

    def queue_position(self, oid):
        side, price, _, _ = self.orders[oid]
        q = self.queues[side][price]
        ahead = q[: q.index(oid)]
        return len(ahead), sum(self.orders[i][2] for i in ahead)

    def levels3(self, side):
        return [(p, q, len(self.queues[side][p])) for p, q in self.levels(side)]
