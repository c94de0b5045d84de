"""L3 book: differential tests against the reference, FIFO order and queue positions."""

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from reference import ASK, BID, RefL3
from test_book_l2 import flag_bits
from tickwire.ext import BookError, BookSet, Flag, Kind, L2Book, L3Book, Reject, Side, empty_events
from tickwire.ext.book import allocation_count
from budget import examples

CENTER = 500_000


def assert_same_l3(book, ref):
    for side in (BID, ASK):
        got = [tuple(int(x) for x in r) for r in book.levels(side)]
        assert got == ref.levels3(side)
        for price, _, _ in got:
            assert [tuple(int(x) for x in r) for r in book.orders_at(side, price)] == ref.queue(side, price)
        assert book.best_price(side) == ref.best(side)[0]
        assert book.best_qty(side) == ref.best(side)[1]
    assert book.order_count == len(ref.orders)
    assert book.in_sync == ref.in_sync


def l3_events(rows, instrument=0):
    """Events from rows ``(kind, order_id, side, price, qty[, flags])``."""
    ev = empty_events(len(rows))
    for i, (kind, oid, side, price, qty, *flags) in enumerate(rows):
        ev[i] = (1000 + i, 2000 + i, i + 1, oid, price, qty, instrument, 0, kind, side, flags[0] if flags else 0, 0)
    return ev


prices = st.one_of(
    st.integers(CENTER - 2, CENTER + 2),            # crowded levels: queues of several orders
    st.integers(CENTER - 30, CENTER + 30),
    st.integers(CENTER - 2000, CENTER + 2000),
    st.sampled_from([1, CENTER * 100, 0, -3]),
)


class L3Machine(RuleBasedStateMachine):
    orders = Bundle("orders")
    max_orders = 1 << 24
    max_levels = 1 << 20

    def __init__(self):
        super().__init__()
        self.book = L3Book(0, window=256, max_orders=self.max_orders, max_levels=self.max_levels,
                           initial_orders=4)
        self.ref = RefL3(0, max_orders=self.max_orders, max_levels=self.max_levels)
        self.next_id = 1

    def _check(self, want, call):
        if want == Reject.OK:
            call()
        else:
            with pytest.raises(BookError) as err:
                call()
            assert err.value.reason == want

    @rule(target=orders, side=st.sampled_from([BID, ASK]), price=prices,
          qty=st.one_of(st.integers(1, 100), st.sampled_from([0, -2, 2**62, 2**63 - 1])))
    def add(self, side, price, qty):
        oid = self.next_id
        self.next_id += 1
        self._check(self.ref.add(oid, side, price, qty, ts=oid), lambda: self.book.add(oid, side, price, qty, ts=oid))
        return oid

    @rule(target=orders, behind=orders, qty=st.integers(1, 100))
    def add_behind(self, behind, qty):
        """Join the queue of a resting order (queues of several orders are where FIFO bugs hide)."""
        if behind not in self.ref.orders:
            return behind
        side, price, _, _ = self.ref.orders[behind]
        oid = self.next_id
        self.next_id += 1
        self._check(self.ref.add(oid, side, price, qty), lambda: self.book.add(oid, side, price, qty))
        return oid

    @rule(oid=orders, side=st.sampled_from([BID, ASK]), price=prices, qty=st.integers(1, 100))
    def add_duplicate(self, oid, side, price, qty):
        self._check(self.ref.add(oid, side, price, qty), lambda: self.book.add(oid, side, price, qty))

    @rule(oid=orders, qty=st.one_of(st.integers(-1, 150), st.just(2**63 - 1)),
          delta=st.sampled_from([None, -1, 0, 1]), move=st.one_of(st.none(), prices))
    def modify(self, oid, qty, delta, move):
        if oid in self.ref.orders:
            price = self.ref.orders[oid][1] if move is None else move
            if delta is not None:                   # the edges of keeping queue priority
                qty = min(max(0, self.ref.orders[oid][2] + delta), 2**63 - 1)
        else:
            price = move or CENTER
        want = self.ref.modify(oid, price, qty, ts=7)
        self._check(want, lambda: self.book.modify(oid, qty, price=price, ts=7))

    @rule(oid=st.integers(0, 10**6), qty=st.integers(0, 5))
    def modify_unknown(self, oid, qty):
        self._check(self.ref.modify(oid, CENTER, qty), lambda: self.book.modify(oid, qty, price=CENTER))

    @rule(oid=st.one_of(orders, st.integers(0, 10**6)))
    def delete(self, oid):
        self._check(self.ref.delete_order(oid), lambda: self.book.delete(oid))

    @rule(oid=orders, qty=st.integers(-1, 120))
    def execute(self, oid, qty):
        self._check(self.ref.execute(oid, qty), lambda: self.book.execute(oid, qty))

    @rule(rows=st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 4, 5, 6, 6]), st.integers(0, 40),
                                  st.sampled_from([BID, ASK, 2]), prices, st.integers(0, 50), flag_bits),
                        max_size=60))
    def apply_batch(self, rows):
        self._apply_both(l3_events(rows))

    def _apply_both(self, ev):
        want = [int(self.ref.apply(e)) for e in ev]
        status = np.full(len(ev), 255, np.uint8)
        assert self.book.apply(ev, status) == want.count(0)
        assert status.tolist() == want

    @rule(flags=flag_bits, side=st.sampled_from([BID, ASK, 2, 7]))
    def marker(self, flags, side):
        """A lone snapshot marker: STALE keeps the orders, BEGIN clears them, END resyncs."""
        self._apply_both(l3_events([(Kind.SNAPSHOT, 0, side, 0, 0, flags)]))

    @rule(orders=st.lists(st.tuples(st.integers(1, 60), st.sampled_from([BID, ASK]), prices,
                                    st.integers(1, 50)), max_size=20),
          end=st.booleans(), stale_first=st.booleans())
    def snapshot(self, orders, end, stale_first):
        """A snapshot as a recovery sends it (maybe after a STALE marker; maybe cut short
        before its END): BEGIN, the orders in queue order, END."""
        rows = [(Kind.SNAPSHOT, 0, 2, 0, 0, Flag.STALE)] if stale_first else []
        rows.append((Kind.SNAPSHOT, 0, 2, 0, 0, Flag.SNAPSHOT | Flag.SNAPSHOT_BEGIN))
        rows += [(Kind.ADD, oid, side, price, qty, Flag.SNAPSHOT) for oid, side, price, qty in orders]
        if end:
            rows.append((Kind.SNAPSHOT, 0, 2, 0, 0, Flag.SNAPSHOT | Flag.SNAPSHOT_END | Flag.LAST))
        self._apply_both(l3_events(rows))
        self.next_id = max([self.next_id] + [oid + 1 for oid, *_ in orders])

    @rule()
    def resync_from_own_snapshot(self):
        """The book's own snapshot_events, applied back, rebuild it in queue order and in sync."""
        before = {side: [tuple(r) for r in self.book.levels(side).tolist()] for side in (BID, ASK)}
        self._apply_both(self.book.snapshot_events(seq=3, ts=5))
        assert {side: [tuple(r) for r in self.book.levels(side).tolist()] for side in (BID, ASK)} == before
        assert self.book.in_sync

    @rule(oid=orders)
    def queue_position(self, oid):
        if oid in self.ref.orders:
            assert self.book.queue_position(oid) == self.ref.queue_position(oid)
            side, price, qty, ts = self.ref.orders[oid]
            assert self.book.order(oid)[:3] == (side, price, qty)
        else:
            assert self.book.queue_position(oid) is None and self.book.order(oid) is None

    @invariant()
    def same_state(self):
        assert_same_l3(self.book, self.ref)


class L3CapacityMachine(L3Machine):
    max_orders = 6
    max_levels = 4


_settings = settings(max_examples=examples(300), stateful_step_count=80, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestL3Differential = L3Machine.TestCase
TestL3Differential.settings = _settings
TestL3CapacityDifferential = L3CapacityMachine.TestCase
TestL3CapacityDifferential.settings = _settings


def random_l3_rows(rng, n, target=2000):
    """Adds, cancels, executions and modifies with a stationary order count."""
    live = []
    rows = []
    next_id = 1
    mid = CENTER
    for _ in range(n):
        mid += int(rng.integers(-1, 2))
        r = rng.random()
        if not live or (r < 0.5 and len(live) < 2 * target):
            side = int(rng.integers(0, 2))
            dist = int(rng.geometric(0.1)) if rng.random() < 0.97 else int(rng.integers(1, 30000))
            price = mid - dist if side == BID else mid + dist
            rows.append((Kind.ADD, next_id, side, price, int(rng.integers(1, 100))))
            live.append(next_id)
            next_id += 1
            continue
        j = int(rng.integers(0, len(live)))
        oid = live[j]
        if r < 0.85:
            rows.append((Kind.DELETE, oid, 2, 0, 0))
            live[j] = live[-1]
            live.pop()
        elif r < 0.93:
            rows.append((Kind.TRADE, oid, 2, 0, 1))          # may fully fill: reference decides
        else:
            rows.append((Kind.MODIFY, oid, 2, mid + int(rng.integers(-50, 50)), int(rng.integers(1, 100))))
    return rows


def test_long_random_l3_stream_matches_reference():
    rng = np.random.default_rng(11)
    ev = l3_events(random_l3_rows(rng, 40_000))
    book, ref = L3Book(0, window=1024, initial_orders=16), RefL3(0)
    for start in range(0, len(ev), 2000):
        chunk = ev[start:start + 2000]
        want = [int(ref.apply(e)) for e in chunk]
        status = np.zeros(len(chunk), np.uint8)
        book.apply(chunk, status)
        assert status.tolist() == want
        assert_same_l3(book, ref)


def test_fifo_and_queue_position():
    b = L3Book(0)
    for oid, qty in ((1, 5), (2, 3), (3, 4)):
        b.add(oid, Side.BID, 100, qty)
    assert b.orders_at(Side.BID, 100).tolist() == [[1, 5], [2, 3], [3, 4]]
    assert b.queue_position(3) == (2, 8)
    b.modify(1, 2)                                   # smaller: keeps its place
    assert b.orders_at(Side.BID, 100).tolist() == [[1, 2], [2, 3], [3, 4]]
    b.modify(1, 2)                                   # unchanged: keeps its place
    assert b.orders_at(Side.BID, 100).tolist() == [[1, 2], [2, 3], [3, 4]]
    b.modify(2, 4)                                   # one lot larger: to the back
    assert b.orders_at(Side.BID, 100).tolist() == [[1, 2], [3, 4], [2, 4]]
    b.modify(2, 10)                                  # larger again: still the back
    assert b.orders_at(Side.BID, 100).tolist() == [[1, 2], [3, 4], [2, 10]]
    b.execute(1, 1)                                  # partial fill keeps its place
    assert b.queue_position(1) == (0, 0) and b.order(1)[2] == 1
    b.execute(1, 1)                                  # full fill removes it
    assert b.order(1) is None and b.queue_position(3) == (0, 0)
    b.modify(3, 4, price=99)                         # new price: back of the new level
    assert b.levels(Side.BID).tolist() == [[100, 10, 1], [99, 4, 1]]
    assert b.best_bid == 100 and b.best_bid_qty == 10
    b.modify(2, 0)                                   # quantity 0 deletes
    assert b.best_bid == 99 and b.order_count == 1


def test_l3_bad_input():
    b = L3Book(2)
    b.add(1, Side.ASK, 200, 5)
    before = ([tuple(r) for r in b.levels(Side.ASK)], b.order_count)
    cases = [
        (lambda: b.add(1, Side.ASK, 201, 1), Reject.DUPLICATE_ORDER),
        (lambda: b.delete(99), Reject.UNKNOWN_ORDER),
        (lambda: b.modify(99, 3), Reject.UNKNOWN_ORDER),
        (lambda: b.execute(1, 6), Reject.OVERFILL),
        (lambda: b.execute(1, 0), Reject.BAD_QTY),
        (lambda: b.add(2, Side.ASK, 201, 0), Reject.BAD_QTY),
        (lambda: b.add(3, Side.ASK, 0, 1), Reject.PRICE_RANGE),
        (lambda: b.add(0, Side.ASK, 201, 1), Reject.UNKNOWN_ORDER),
        (lambda: b.add(4, 9, 201, 1), Reject.BAD_SIDE),
    ]
    for call, reason in cases:
        with pytest.raises(BookError) as err:
            call()
        assert err.value.reason == reason, reason
        assert ([tuple(r) for r in b.levels(Side.ASK)], b.order_count) == before
    assert "instrument 2" in str(err.value)
    assert sum(b.rejects.values()) == len(cases)


def test_l2_and_l3_in_one_bookset():
    l2, l3 = L2Book(0), L3Book(1)
    bs = BookSet([l2, l3])
    ev = empty_events(4)
    ev["instrument"] = [0, 1, 1, 1]
    ev["kind"] = [Kind.ADD, Kind.ADD, Kind.ADD, Kind.TRADE]
    ev["side"] = [Side.BID, Side.BID, Side.BID, Side.ASK]
    ev["order_id"] = [0, 10, 11, 10]
    ev["price"] = [100, 100, 100, 0]
    ev["qty"] = [5, 5, 7, 5]
    assert bs.apply(ev) == 4
    assert l2.state() == ([(100, 5)], [])
    assert l3.orders_at(Side.BID, 100).tolist() == [[11, 7]]


def test_l3_steady_state_allocates_nothing():
    rng = np.random.default_rng(5)
    ev = l3_events(random_l3_rows(rng, 30_000))
    book = L3Book(0, window=1 << 15, initial_orders=8192)
    book.apply(ev[:15_000])
    book.apply(ev[15_000:20_000])
    before = allocation_count()
    book.apply(ev[20_000:])
    assert allocation_count() == before


def test_pool_grows_past_initial_size_and_respects_max_orders():
    b = L3Book(0, initial_orders=2, max_orders=100)
    for oid in range(1, 101):
        b.add(oid, Side.BID, 1000 + oid % 7, 1)
    with pytest.raises(BookError, match="full"):
        b.add(101, Side.BID, 1000, 1)
    assert b.order_count == 100
    for oid in range(1, 101, 2):
        b.delete(oid)
    for oid in range(200, 250):
        b.add(oid, Side.ASK, 2000, 1)
    assert b.order_count == 100 and b.best_ask_qty == 50


def test_l3_snapshot_events_keep_queue_order():
    rng = np.random.default_rng(13)
    src = L3Book(1, window=512)
    src.apply(l3_events(random_l3_rows(rng, 20_000), instrument=1))
    snap = src.snapshot_events(seq=5)
    assert len(snap) == 2 + src.order_count
    dst = L3Book(1)
    assert dst.apply(snap) == len(snap)
    for side in (BID, ASK):
        assert dst.levels(side).tolist() == src.levels(side).tolist()
        for price in src.levels(side)[:, 0]:
            assert dst.orders_at(side, int(price)).tolist() == src.orders_at(side, int(price)).tolist()


def test_order_id_zero_is_refused_as_never_valid():
    b = L3Book(0)
    b.add(1, Side.BID, 100, 1)
    for call in (lambda: b.add(0, Side.BID, 100, 1), lambda: b.modify(0, 3),
                 lambda: b.delete(0), lambda: b.execute(0, 1)):
        with pytest.raises(BookError, match="order id 0 is never valid") as err:
            call()
        assert err.value.reason == Reject.UNKNOWN_ORDER           # the documented code
    with pytest.raises(BookError, match="no resting order with this id"):
        b.delete(2)
    assert b.order_count == 1


@pytest.mark.parametrize("bad", [1.5, 2.0, "7", None])
def test_l3_per_event_api_refuses_non_integers(bad):
    b = L3Book(0)
    b.add(1, Side.BID, 100, 5)
    calls = [
        ("order_id", lambda: b.add(bad, Side.BID, 100, 1)),
        ("price", lambda: b.add(2, Side.BID, bad, 1)),
        ("qty", lambda: b.add(2, Side.BID, 100, bad)),
        ("ts", lambda: b.add(2, Side.BID, 100, 1, ts=bad)),
        ("qty", lambda: b.modify(1, bad)),
        ("order_id", lambda: b.delete(bad)),
        ("qty", lambda: b.execute(1, bad)),
        ("price", lambda: b.orders_at(Side.BID, bad)),
    ]
    if bad is not None:                                           # price=None: keep the price
        calls.append(("price", lambda: b.modify(1, 3, price=bad)))
    for name, call in calls:
        with pytest.raises(TypeError, match=rf"\b{name} must be an integer"):
            call()
    assert b.orders_at(Side.BID, 100).tolist() == [[1, 5]] and b.rejects == {}


def test_l3_level_total_cannot_overflow():
    big = 2**63 - 1
    b, ref = L3Book(0), RefL3(0)
    for book in (b, ref):
        assert book.add(1, BID, 100, big - 10) in (None, Reject.OK)
    cases = [
        (lambda bk: bk.add(2, BID, 100, 11), Reject.BAD_QTY),             # the level would pass 2**63-1
        (lambda bk: bk.add(3, BID, 100, 10), Reject.OK),                  # exactly 2**63-1
        (lambda bk: bk.add(4, BID, 99, big), Reject.OK),
        (lambda bk: bk.modify(4, 100, 1), Reject.BAD_QTY),                # move onto the full level
        (lambda bk: bk.modify(3, 100, 11), Reject.BAD_QTY),               # grow in place past it
        (lambda bk: bk.modify(3, 100, 5), Reject.OK),
        (lambda bk: bk.modify(3, 100, 10), Reject.OK),
    ]
    for call, want in cases:
        assert call(ref) == want
        if want == Reject.OK:
            call(_Adapter(b))
        else:
            with pytest.raises(BookError, match="int64") as err:
                call(_Adapter(b))
            assert err.value.reason == want
        assert_same_l3(b, ref)
    assert b.depth_qty(Side.BID, 2) == 2 * big
    assert b.imbalance(2) == 1.0


class _Adapter:
    """The reference's call shapes on an L3Book (modify takes price before qty there)."""

    def __init__(self, book):
        self.book = book

    def add(self, oid, side, price, qty):
        return self.book.add(oid, side, price, qty)

    def modify(self, oid, price, qty):
        return self.book.modify(oid, qty, price=price)


def test_l3_constructor_refuses_nonsense_naming_the_argument():
    for kw, name in [(dict(initial_orders=-1), "initial_orders"), (dict(max_orders=0), "max_orders"),
                     (dict(max_orders=-3), "max_orders"), (dict(max_levels=-1), "max_levels"),
                     (dict(window=0), "window"), (dict(min_price=5, max_price=4), "min_price"),
                     (dict(initial_orders=2.5), "initial_orders")]:
        with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b") as err:
            L3Book(0, **kw)
        assert "\n" not in str(err.value)
    assert L3Book(0, initial_orders=0, max_orders=4).order_count == 0       # 0: allocate lazily
    assert L3Book(0, max_orders=4).order_count == 0                          # default clamped


def test_bookset_apply_top_equals_one_by_one():
    from test_book_l2 import check_apply_top
    check_apply_top("L3")


def test_a_modify_moving_an_order_alone_at_its_level_is_taken_on_a_full_side():
    """Found by an adversarial pass: with max_levels levels on a side, moving the only order of
    a level to a new price (the count stays) was refused as CAPACITY, where a delete and an add
    went through: an exchange's replace was lost and the order left where it no longer rests."""
    b = L3Book(0, max_levels=2)
    b.add(1, BID, 100, 5)
    b.add(2, BID, 101, 5)
    b.modify(2, 4, price=102)                               # 101 goes, 102 comes: two levels
    assert b.levels(BID).tolist() == [[102, 4, 1], [100, 5, 1]]
    b.add(3, BID, 102, 1)                                   # 102 now holds two orders
    with pytest.raises(BookError) as err:
        b.modify(3, 1, price=99)                            # 102 stays, 99 would be a third
    assert err.value.reason == Reject.CAPACITY
    assert b.levels(BID).tolist() == [[102, 5, 2], [100, 5, 1]] and b.order(3)[1] == 102
    # the same through events, against the reference
    ev = empty_events(3)
    ev["kind"], ev["side"], ev["order_id"], ev["price"], ev["qty"] = Kind.MODIFY, BID, [1, 3, 1], [98, 97, 96], [2, 1, 2]
    ref = RefL3(max_levels=2)
    for oid, p, q in ((1, 100, 5), (2, 102, 4), (3, 102, 1)):
        ref.add(oid, BID, p, q)
    st_ = np.zeros(3, np.uint8)
    b.apply(ev, st_)
    want = [ref.modify(int(e["order_id"]), int(e["price"]), int(e["qty"])) for e in ev]
    assert st_.tolist() == [int(w) for w in want] == [Reject.OK, Reject.CAPACITY, Reject.OK]
    assert b.levels(BID).tolist() == [[102, 5, 2], [96, 2, 1]]
    assert sorted(ref.sides[BID].items(), reverse=True) == [(102, 5), (96, 2)]
