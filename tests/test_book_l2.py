"""L2 book: differential tests against the plain-Python reference, and its API contract."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from reference import ASK, BID, RefL2
from tickwire.ext import EVENT_DTYPE, BookError, BookSet, Flag, Kind, L2Book, L3Book, Reject, Side, empty_events
from tickwire.ext.book import allocation_count
from budget import examples

CENTER = 1_000_000


def assert_same(book, ref, k_values=(1, 3)):
    """Full state and every query of ``book`` equal the reference's."""
    from tickwire.ext._testing import top_qty
    assert book.state() == ref.state()
    for side in (BID, ASK):                      # the top k: its sum and the k-th level's price
        best_first = sorted(ref.sides[side].items(), reverse=side == BID)
        for k in (*k_values, 70):
            top = best_first[:k]
            assert book.depth_qty(side, k) == sum(q for _, q in top)
            assert top_qty(book, side, k) == (min(sum(q for _, q in top), 2**63 - 1),
                                              top[-1][0] if len(top) == k else None)
    for side in (BID, ASK):
        price, qty = ref.best(side)
        assert book.best_price(side) == price
        assert book.best_qty(side) == qty
        assert book.level_count(side) == len(ref.sides[side])
    assert book.spread == ref.spread()
    for got, want in ((book.mid, ref.mid()), (book.microprice, ref.microprice())):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12)
    for k in k_values:
        got, want = book.imbalance(k), ref.imbalance(k)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12)
    spread = ref.spread()
    assert book.crossed == (spread is not None and spread < 0)
    assert book.locked == (spread == 0)
    assert book.in_sync == ref.in_sync


def events_from(rows, instrument=0):
    """Events from rows ``(kind, side, price, qty[, flags])``."""
    ev = empty_events(len(rows))
    for i, (kind, side, price, qty, *flags) in enumerate(rows):
        ev[i] = (i, i, i, 0, price, qty, instrument, 0, kind, side, flags[0] if flags else 0, 0)
    return ev


prices = st.one_of(
    st.integers(CENTER - 40, CENTER + 40),                   # near the top: the dense window
    st.integers(CENTER - 3000, CENTER + 3000),               # beyond a 256-slot window
    st.sampled_from([1, 2, CENTER * 50, CENTER * 1000, 10**12]),  # far outliers, range edges
    st.sampled_from([0, -5, 10**12 + 1]),                    # outside min_price..max_price
)
quantities = st.one_of(st.integers(0, 1000), st.just(0), st.sampled_from([-1, 10**15, 2**63 - 1]))
sides = st.one_of(st.sampled_from([BID, ASK]), st.sampled_from([BID, ASK, 2, 200]))
# event flags: mostly none; snapshot BEGIN/END and STALE markers alone and combined; any bits
MARKERS = [Flag.STALE, Flag.SNAPSHOT_BEGIN, Flag.SNAPSHOT_END, Flag.SNAPSHOT | Flag.SNAPSHOT_BEGIN,
           Flag.SNAPSHOT | Flag.SNAPSHOT_END | Flag.LAST, Flag.STALE | Flag.SNAPSHOT_END,
           Flag.STALE | Flag.SNAPSHOT_BEGIN, Flag.SNAPSHOT_BEGIN | Flag.SNAPSHOT_END]
flag_bits = st.one_of(st.just(0), st.sampled_from([int(f) for f in MARKERS]), st.integers(0, 63))


class L2Machine(RuleBasedStateMachine):
    """Random operations into an L2Book (small window: it moves a lot) and the reference."""

    max_depth = 0
    max_levels = 1 << 20

    def __init__(self):
        super().__init__()
        kw = dict(window=256, min_price=1, max_price=10**12, max_depth=self.max_depth,
                  max_levels=self.max_levels)
        self.book = L2Book(0, **kw)
        self.ref = RefL2(0, max_depth=self.max_depth, min_price=1, max_price=10**12,
                         max_levels=self.max_levels)
        self.seq_base = 10**6

    @rule(side=sides, price=prices, qty=quantities)
    def set_level(self, side, price, qty):
        want = self.ref.set(side, price, qty)
        if want == Reject.OK:
            self.book.set(side, price, qty)
        else:
            with pytest.raises(BookError) as err:
                self.book.set(side, price, qty)
            assert err.value.reason == want

    @rule(data=st.data(), side=st.sampled_from([BID, ASK]))
    def delete_existing_or_not(self, data, side):
        known = sorted(self.ref.sides[side])
        price = data.draw(st.sampled_from(known) if known and data.draw(st.booleans()) else prices)
        want = self.ref.delete(side, price)
        if want == Reject.OK:
            self.book.delete(side, price)
        else:
            with pytest.raises(BookError):
                self.book.delete(side, price)

    @rule(rows=st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 5, 6, 6, 9]), sides, prices, quantities,
                                  flag_bits), max_size=80),
          foreign=st.sets(st.integers(0, 79), max_size=3))
    def apply_batch(self, rows, foreign):
        ev = events_from(rows)
        ev["seq"] += self.seq_base                         # distinct per batch: last_seq is checked
        self.seq_base += 1000
        other = [i for i in foreign if i < len(ev)]
        ev["instrument"][other] = 1                        # not this book's: UNKNOWN_INSTRUMENT
        want = [Reject.UNKNOWN_INSTRUMENT if i in other else self.ref.apply(e) for i, e in enumerate(ev)]
        status = np.full(len(ev), 255, dtype=np.uint8)
        before, last = self.book.applied, self.book.last_seq
        rejects = dict(self.book.rejects)
        applied = self.book.apply(ev, status)
        assert list(status) == [int(w) for w in want]
        assert applied == sum(w == Reject.OK for w in want) == self.book.applied - before
        ok = [i for i, w in enumerate(want) if w == Reject.OK]
        assert self.book.last_seq == (int(ev["seq"][ok[-1]]) if ok else last)
        if ok:
            assert self.book.last_ts_event == int(ev["ts_event"][ok[-1]])
        got = dict(self.book.rejects)
        for w in set(map(Reject, want)) - {Reject.OK}:
            assert got.get(w.name, 0) - rejects.get(w.name, 0) == want.count(w), w

    @rule(qty=st.integers(1, 5000), side=st.sampled_from([BID, ASK]))
    def vwap(self, qty, side):
        got, want = self.book.vwap_to_size(side, qty), self.ref.vwap_to_size(side, qty)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12)

    @rule(side=st.sampled_from([BID, ASK]), price=prices)
    def qty_at(self, side, price):
        assert self.book.qty_at(side, price) == self.ref.qty_at(side, price)

    @rule()
    def clear(self):
        self.book.clear()
        self.ref.clear()

    def _apply_both(self, ev):
        want = [int(self.ref.apply(e)) for e in ev]
        status = np.full(len(ev), 255, np.uint8)
        assert self.book.apply(ev, status) == want.count(0)
        assert status.tolist() == want

    @rule(flags=flag_bits, side=sides)
    def marker(self, flags, side):
        """A lone snapshot marker: STALE keeps the levels, BEGIN clears them, END resyncs."""
        self._apply_both(events_from([(Kind.SNAPSHOT, side, 0, 0, flags)]))

    @rule(levels=st.lists(st.tuples(st.sampled_from([BID, ASK]), prices, st.integers(0, 1000)), max_size=20),
          end=st.booleans(), stale_first=st.booleans())
    def snapshot(self, levels, end, stale_first):
        """A snapshot as a recovery sends it (maybe after a STALE marker; maybe cut short
        before its END): BEGIN, the levels, END."""
        rows = [(Kind.SNAPSHOT, 2, 0, 0, Flag.STALE)] if stale_first else []
        rows.append((Kind.SNAPSHOT, 2, 0, 0, Flag.SNAPSHOT | Flag.SNAPSHOT_BEGIN))
        rows += [(Kind.ADD, side, price, qty, Flag.SNAPSHOT) for side, price, qty in levels]
        if end:
            rows.append((Kind.SNAPSHOT, 2, 0, 0, Flag.SNAPSHOT | Flag.SNAPSHOT_END | Flag.LAST))
        self._apply_both(events_from(rows))

    @rule()
    def resync_from_own_snapshot(self):
        """The book's own snapshot_events, applied back, rebuild it as it is and in sync."""
        before = self.book.state()
        self._apply_both(self.book.snapshot_events(seq=self.seq_base))
        assert self.book.state() == before and self.book.in_sync

    @invariant()
    def same_state(self):
        assert_same(self.book, self.ref)


class L2DepthMachine(L2Machine):
    max_depth = 5


class L2CapacityMachine(L2Machine):
    max_levels = 7


_settings = settings(max_examples=examples(150), stateful_step_count=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestL2Differential = L2Machine.TestCase
TestL2Differential.settings = _settings
TestL2DepthDifferential = L2DepthMachine.TestCase
TestL2DepthDifferential.settings = _settings
TestL2CapacityDifferential = L2CapacityMachine.TestCase
TestL2CapacityDifferential.settings = _settings


def random_l2_rows(rng, n, center=CENTER, jump_every=5000):
    """A long random walk of L2 updates with occasional jumps (window moves both ways)."""
    rows = []
    mid = center
    for i in range(n):
        if i % jump_every == jump_every - 1:
            mid += int(rng.integers(-20000, 20000))
        mid += int(rng.integers(-2, 3))
        side = int(rng.integers(0, 2))
        dist = int(rng.geometric(0.05)) if rng.random() < 0.95 else int(rng.integers(1, 50000))
        price = max(1, mid - dist if side == BID else mid + dist)
        qty = 0 if rng.random() < 0.35 else int(rng.integers(1, 10000))
        rows.append((Kind.MODIFY, side, price, qty))
    return rows


@pytest.mark.parametrize("window", [256, 4096])
def test_long_random_walk_matches_reference(window):
    rng = np.random.default_rng(7 + window)
    rows = random_l2_rows(rng, 60_000)
    book, ref = L2Book(0, window=window), RefL2(0)
    ev = events_from(rows)
    for start in range(0, len(ev), 1000):
        chunk = ev[start:start + 1000]
        for e in chunk:
            ref.apply(e)
        assert book.apply(chunk) == len(chunk)
        assert_same(book, ref, k_values=(1, 5))


def test_batch_equals_per_event_and_bookset_routes():
    rng = np.random.default_rng(1)
    rows = random_l2_rows(rng, 20_000)
    ev = events_from(rows)
    ev["instrument"] = rng.integers(0, 4, len(ev))          # 0..2 have books, 3 does not
    books = [L2Book(i) for i in range(3)]
    singles = [L2Book(i) for i in range(3)]
    bs = BookSet(books)
    status = np.zeros(len(ev), np.uint8)
    applied = bs.apply(ev, status)
    unknown = int((ev["instrument"] == 3).sum())
    assert applied == len(ev) - unknown
    assert bs.unknown_instrument == unknown
    assert (status[ev["instrument"] == 3] == Reject.UNKNOWN_INSTRUMENT).all()
    for e in ev:
        if e["instrument"] < 3:
            singles[e["instrument"]].set(int(e["side"]), int(e["price"]), int(e["qty"]))
    for a, b in zip(books, singles):
        assert a.state() == b.state()
    assert 2 in bs and 3 not in bs and len(bs) == 3
    assert bs[1] is books[1]
    with pytest.raises(KeyError, match="instrument id 3"):
        bs[3]


def test_a_bookset_too_big_for_the_cache_prefetches_and_still_equals_per_event():
    """A set of L2 books holding more levels than the cache prefetches the level of the event
    a few ahead in ``BookSet.apply`` (smaller sets do not); the books must come out the same
    as from one ``set`` at a time, through window moves, the overflow and unknown instruments."""
    rng = np.random.default_rng(5)
    wide = []
    for inst in range(3):
        for side, sign in ((BID, -1), (ASK, 1)):
            for k in range(1, 6001):                  # 36,000 levels in all: past the threshold
                wide.append((inst, side, 1_000_000 + sign * 3 * k, k))
    rows = random_l2_rows(rng, 30_000)
    ev = events_from(rows)
    ev["instrument"] = rng.integers(0, 4, len(ev))      # 3 has no book
    pre = events_from([(Kind.MODIFY, side, price, qty) for _, side, price, qty in wide])
    pre["instrument"] = [inst for inst, _, _, _ in wide]
    books, singles = [L2Book(i, window=4096) for i in range(3)], [L2Book(i, window=4096) for i in range(3)]
    bs = BookSet(books)
    assert bs.apply(pre) == len(pre)
    assert sum(len(b.levels(BID)) + len(b.levels(ASK)) for b in books) >= 32768
    for inst, side, price, qty in wide:
        singles[inst].set(side, price, qty)
    applied = bs.apply(ev)
    assert applied == int((ev["instrument"] < 3).sum())
    for e in ev:
        if e["instrument"] < 3:
            singles[e["instrument"]].set(int(e["side"]), int(e["price"]), int(e["qty"]))
    for a, b in zip(books, singles):
        assert a.state() == b.state()


def test_book_apply_rejects_other_instruments():
    book = L2Book(5)
    ev = events_from([(Kind.ADD, BID, 100, 1), (Kind.ADD, BID, 101, 1)], instrument=5)
    ev[1]["instrument"] = 6
    assert book.apply(ev) == 1
    assert book.rejects == {"UNKNOWN_INSTRUMENT": 1}
    assert book.state() == ([(100, 1)], [])


def test_a_book_with_a_channel_rejects_events_from_another():
    """An instrument on feed channel 1 whose event arrives stamped channel 0 (a publisher putting it
    on the wrong channel, outside the sequence its book follows) is rejected on every path:
    the batch (L2 and L3) and the BookSet."""
    for book in (L2Book(5, channel=1), L3Book(5, channel=1)):
        ev = events_from([(Kind.ADD, BID, 100, 1), (Kind.ADD, BID, 101, 1), (Kind.ADD, BID, 102, 1)],
                         instrument=5)
        ev["order_id"] = [1, 2, 3]
        ev["channel"] = [1, 0, 1]
        status = np.zeros(3, np.uint8)
        assert book.apply(ev, status) == 2
        assert list(status) == [Reject.OK, Reject.WRONG_CHANNEL, Reject.OK]
        assert book.rejects == {"WRONG_CHANNEL": 1}
        assert [p for p, _ in book.state()[0]] == [102, 100]
        assert book.channel == 1
    books = BookSet([L2Book(5, channel=1), L2Book(6, channel=0)])
    ev = events_from([(Kind.ADD, BID, 100, 1)] * 2, instrument=5)
    ev["instrument"] = [5, 6]
    ev["channel"] = 1                                  # right for 5, wrong for 6
    assert books.apply(ev) == 1
    assert books.rejects == {"WRONG_CHANNEL": 1} and books[6].state() == ([], [])
    assert L2Book(5).channel is None and L2Book(5).apply(ev[:1]) == 1   # no channel: any
    with pytest.raises(ValueError, match="channel"):
        L2Book(5, channel=70_000)


def test_a_side_of_the_book_is_256_bytes():
    """The per-event update finds side i of a book at i << 8; a tw_ladder that grew past its
    padding would still work, at a multiply per event, so the size is held here."""
    from tickwire.ext._testing import ladder_size
    assert ladder_size() == 256


def test_every_kind_side_and_channel_takes_the_right_path():
    """The per-event update reads channel, kind and side as one word and sends only an ADD or
    MODIFY on side 0 or 1 (on the book's channel, if it has one) down its fast path.  Every
    combination of kind 0-8, side 0-3 and three channels, on a book with no channel, with
    channel 1, with channel 0xffff and with max_depth, against the reference (and the
    channel rule): a wrong constant in that word would let a bad event through or refuse a good
    one, and show here."""
    combos = [(k, sd, ch) for k in range(9) for sd in range(4) for ch in (0, 1, 0xFFFF)]
    for kw, want_ch in ((dict(), None), (dict(channel=1), 1), (dict(channel=0xFFFF), 0xFFFF),
                        (dict(max_depth=3), None)):
        book = L2Book(0, **kw)
        ref = RefL2(0, max_depth=kw.get("max_depth", 0))
        for i, (kind, side, ch) in enumerate(combos):
            price = CENTER + (i % 7) - 3
            ev = events_from([(kind, side, price, 1 + i % 5 if i % 3 else 0)])
            ev["channel"] = ch
            ev["flags"] = 0
            want = Reject.WRONG_CHANNEL if want_ch is not None and ch != want_ch else ref.apply(ev[0])
            status = np.zeros(1, np.uint8)
            book.apply(ev, status)
            assert status[0] == want, (kw, kind, side, ch, Reject(status[0]), want)
        assert book.state() == ref.state(), kw


def test_queries_on_a_small_book():
    b = L2Book(0)
    for price, qty in ((100, 5), (99, 3), (97, 2)):
        b.set(Side.BID, price, qty)
    for price, qty in ((102, 7), (105, 1)):
        b.set(Side.ASK, price, qty)
    assert b.bbo() == (100, 5, 102, 7)
    assert b.spread == 2 and b.mid == 101.0
    assert b.microprice == pytest.approx((100 * 7 + 102 * 5) / 12)
    assert b.imbalance(1) == pytest.approx((5 - 7) / 12)
    assert b.imbalance(10) == pytest.approx((10 - 8) / 18)
    assert b.vwap_to_size(Side.ASK, 8) == pytest.approx((102 * 7 + 105) / 8)
    assert math.isnan(b.vwap_to_size(Side.ASK, 9))
    assert b.depth_qty(Side.BID, 2) == 8
    assert b.qty_at(Side.BID, 99) == 3 and b.qty_at(Side.BID, 98) == 0
    out = np.zeros((2, 3), np.int64)
    view = b.levels(Side.BID, out=out)
    assert view.base is out or np.shares_memory(view, out)
    assert view.tolist() == [[100, 5, 0], [99, 3, 0]]
    assert b.levels(Side.BID, 1).tolist() == [[100, 5, 0]]
    assert b.levels(Side.ASK).tolist() == [[102, 7, 0], [105, 1, 0]]
    b.set(Side.BID, 102, 1)
    assert b.locked and not b.crossed
    b.set(Side.BID, 103, 1)
    assert b.crossed and b.spread == -1


def test_empty_book_queries():
    b = L2Book(0)
    assert b.bbo() == (None, 0, None, 0)
    assert b.spread is None and math.isnan(b.mid) and math.isnan(b.microprice)
    assert math.isnan(b.imbalance(1))
    assert b.levels(Side.BID).shape == (0, 3)
    assert not b.crossed and not b.locked


def test_bad_input_is_refused_and_counted_without_corrupting():
    b = L2Book(3, min_price=10, max_price=1000)
    b.set(Side.BID, 100, 5)
    before = b.state()
    cases = [
        (lambda: b.set(Side.BID, 5, 1), Reject.PRICE_RANGE, "min_price..max_price"),
        (lambda: b.set(Side.ASK, 10**9, 1), Reject.PRICE_RANGE, "instrument 3"),
        (lambda: b.set(Side.BID, 100, -1), Reject.BAD_QTY, "negative"),
        (lambda: b.set(7, 100, 1), Reject.BAD_SIDE, "side"),
        (lambda: b.delete(Side.ASK, 500), Reject.UNKNOWN_LEVEL, "no level"),
    ]
    for call, reason, text in cases:
        with pytest.raises(BookError, match=text) as err:
            call()
        assert err.value.reason == reason
        assert b.state() == before
    assert b.rejects == {"BAD_SIDE": 1, "BAD_QTY": 1, "PRICE_RANGE": 2, "UNKNOWN_LEVEL": 1}
    assert b.applied == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="power of two"):
        L2Book(0, window=1000)
    with pytest.raises(ValueError, match="min_price"):
        L2Book(0, min_price=10, max_price=5)
    with pytest.raises(ValueError, match="max_depth"):
        L2Book(0, max_depth=-1)
    b = L2Book(0)
    with pytest.raises(TypeError, match="EVENT_DTYPE"):
        b.apply(np.zeros(4, np.int64))
    ev = empty_events(8)
    with pytest.raises((ValueError, BufferError)):
        b.apply(ev[::2])
    with pytest.raises(ValueError, match="status holds 2"):
        b.apply(ev, np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="side"):
        b.best_price(5)
    with pytest.raises(TypeError, match="L2Book"):
        BookSet([object()])
    with pytest.raises(ValueError, match="two books for instrument id 1"):
        BookSet([L2Book(1), L2Book(1)])


def test_far_levels_live_in_the_overflow_and_come_back():
    b, ref = L2Book(0, window=256), RefL2(0)
    # a dense top, a far tail, then the top is eaten away so the tail becomes the best
    for p in range(10_000, 10_100):
        for book in (b, ref):
            book.set(BID, p, p)
    for p in (5_000, 1_000, 10):
        for book in (b, ref):
            book.set(BID, p, 1)
    lo, hi, nwin, nover = b._layout(BID)
    assert nover >= 3 and nwin + nover == 103
    for p in range(10_099, 9_999, -1):
        for book in (b, ref):
            book.set(BID, p, 0)
        assert b.best_bid == ref.best(BID)[0]
    assert b.best_bid == 5_000 and b.state() == ref.state()
    lo, hi, _, _ = b._layout(BID)
    assert lo <= 5_000 <= hi                     # the window followed the best down


@pytest.mark.parametrize("side", [BID, ASK])
def test_a_window_with_many_updates_outside_grows_up_to_max_window_and_stays_exact(side):
    """A side whose updates keep landing outside its window (levels far from the best, as a
    1,000-level exchange depth updates them) doubles the window, up to ``max_window`` and no
    further; the book equals the reference after every batch, through every doubling, and one
    with ``max_window == window`` (a window that never grows) holds the same levels."""
    rng = np.random.default_rng(3 + side)
    sign = 1 if side == BID else -1
    rows = [(Kind.MODIFY, side, CENTER - sign * d, 5) for d in range(1, 21)]     # a top that stays
    for _ in range(80_000):
        far = rng.random() < 0.6
        d = int(rng.integers(300, 3000)) if far else int(rng.integers(21, 200))
        qty = 0 if rng.random() < 0.4 else int(rng.integers(1, 1000))
        rows.append((Kind.MODIFY, side if rng.random() < 0.9 else 1 - side,
                     CENTER - sign * d if rng.random() < 0.9 or not far else CENTER + sign * d, qty))
    ev = events_from(rows)
    grows, fixed, ref = L2Book(0, window=256, max_window=4096), L2Book(0, window=256, max_window=256), RefL2(0)
    assert (grows.window, grows.max_window, fixed.max_window) == (256, 4096, 256)
    windows = []
    for start in range(0, len(ev), 4000):
        chunk = ev[start:start + 4000]
        for e in chunk:
            ref.apply(e)
        assert grows.apply(chunk) == len(chunk) == fixed.apply(chunk)
        assert_same(grows, ref, k_values=(1, 5))
        assert fixed.state() == grows.state()
        lo, hi, nwin, nover = grows._layout(side)
        windows.append(hi - lo + 1)
        assert lo <= grows.best_price(side) <= hi and nwin + nover == grows.level_count(side)
        flo, fhi, _, _ = fixed._layout(side)
        assert fhi - flo + 1 == 256
    assert windows == sorted(windows) and set(windows) <= {256, 512, 1024, 2048, 4096}
    assert windows[0] < 4096 and windows[-1] == 4096                    # it grew, to max_window
    assert grows._layout(side)[3] < fixed._layout(side)[3]                # fewer levels left far


def test_max_window_is_checked_and_an_l3_window_stays():
    assert L2Book(0).max_window == 1 << 20 and L2Book(0, window=1 << 21).max_window == 1 << 21
    assert L3Book(0, window=1024).max_window == 1024
    for bad in (128, 1000, 1 << 25, 4096.0):
        with pytest.raises((ValueError, TypeError), match=r"\bmax_window\b"):
            L2Book(0, window=256, max_window=bad)


@pytest.mark.parametrize("side", [BID, ASK])
def test_far_levels_that_come_and_go_leave_the_book_exact(side):
    """Far levels removed stay as dead entries in the overflow (no move), and a level that comes
    back there or next to one takes the entry: every query must still see exactly the levels
    there are, through heavy churn, compaction, and the window emptying onto the overflow."""
    rng = np.random.default_rng(11 + side)
    sign = 1 if side == BID else -1
    top = 1_000_000
    b, ref = L2Book(0, window=256), RefL2(0)
    for k in range(40):                                      # a small top, inside the window
        for book in (b, ref):
            book.set(side, top - sign * k, 100 + k)
    far = [top - sign * (1_000 + 3 * k) for k in range(600)]  # far past the window's 256 slots
    allocs = None
    for step in range(12_000):
        p = far[int(rng.integers(0, len(far)))]
        q = 0 if rng.random() < 0.5 else int(rng.integers(1, 1000))
        for book in (b, ref):
            book.set(side, p, q)
        if step == 6_000:                                    # every far price seen by now (coupon
            allocs = allocation_count()                      # collector: ~3,800 draws of 600)
        if step % 500 == 0:
            assert_same(b, ref, k_values=(1, 50, 100))
            live_far = sum(1 for price in ref.sides[side] if abs(price - top) >= 1_000)
            assert b._layout(side)[3] == live_far
    assert allocation_count() == allocs                      # steady churn in the overflow allocates nothing
    assert_same(b, ref, k_values=(1, 50, 1000))
    for k in range(40):                                      # eat the top away: the best is a far level
        for book in (b, ref):
            book.set(side, top - sign * k, 0)
        assert b.best_price(side) == ref.best(side)[0]
    assert_same(b, ref, k_values=(1, 50, 1000))
    for price in sorted(ref.sides[side], key=lambda x: -sign * x):   # then every level, best first
        for book in (b, ref):
            book.set(side, price, 0)
        assert b.best_price(side) == ref.best(side)[0]
    assert_same(b, ref)
    assert b._layout(side)[3] == 0


@pytest.mark.parametrize("side", [BID, ASK])
@pytest.mark.parametrize("then", ["nothing", "a level below the old window", "another instrument"])
def test_one_batch_that_empties_the_window_finds_the_best_in_the_overflow(side, then):
    """The batch loop leaves an emptied best for the next sync: a batch that eats the whole
    window away must still end (or reach its next general-path event) with the overflow's
    best level as the best, and the window moved down to it."""
    worse = -1 if side == BID else 1                        # direction of worse prices
    top = [10_000 + worse * d for d in range(100)]
    tail = [10_000 + worse * d for d in (5_000, 9_000, 9_990)]
    rows = [(Kind.MODIFY, side, p, 5 + i) for i, p in enumerate(top + tail)]
    rows += [(Kind.MODIFY, side, p, 0) for p in top]   # best first: the best empties each time
    if then == "a level below the old window":
        rows += [(Kind.MODIFY, side, 10_000 + worse * 4_000, 3)]
    ev = events_from(rows)
    if then == "another instrument":
        ev = np.concatenate([ev, events_from([(Kind.MODIFY, side, 10_000, 1)], instrument=9)])
    b, ref = L2Book(0, window=256), RefL2(0)
    for e in ev[:len(top) + len(tail)]:
        ref.apply(e)
    want = [Reject.UNKNOWN_INSTRUMENT if e["instrument"] else ref.apply(e)
            for e in ev[len(top) + len(tail):]]
    b.apply(ev[:len(top) + len(tail)])
    assert b._layout(side)[3] == len(tail)                  # the tail lives in the overflow
    status = np.zeros(len(ev) - len(top) - len(tail), np.uint8)
    b.apply(ev[len(top) + len(tail):], status)
    assert list(status) == [int(w) for w in want]
    assert_same(b, ref)
    best = 10_000 + worse * (4_000 if then == "a level below the old window" else 5_000)
    assert b.best_price(side) == best
    lo, hi, nwin, _ = b._layout(side)
    assert lo <= best <= hi and nwin >= 1                   # the window followed the best down


def test_max_depth_drops_the_worst_level():
    b = L2Book(0, max_depth=3)
    for p in (100, 99, 98, 97):
        b.set(Side.BID, p, 1)
    assert [lv[0] for lv in b.levels(Side.BID)] == [100, 99, 98]
    b.set(Side.BID, 96, 1)                       # worse than the worst: dropped at once
    assert [lv[0] for lv in b.levels(Side.BID)] == [100, 99, 98]
    for p in (200, 201, 202, 203):
        b.set(Side.ASK, p, 1)
    assert [lv[0] for lv in b.levels(Side.ASK)] == [200, 201, 202]


def test_snapshot_markers_and_clear():
    b = L2Book(0)
    ev = events_from([(Kind.ADD, BID, 100, 1), (Kind.SNAPSHOT, 2, 0, 0), (Kind.ADD, BID, 90, 2),
                      (Kind.SNAPSHOT, 2, 0, 0), (Kind.CLEAR, 2, 0, 0)])
    ev["flags"][1] = 4          # BEGIN
    ev["flags"][3] = 8          # END
    b.apply(ev[:2])
    assert b.state() == ([], []) and not b.in_sync
    b.apply(ev[2:4])
    assert b.state() == ([(90, 2)], []) and b.in_sync
    b.apply(ev[4:])
    assert b.state() == ([], [])
    assert b.last_seq == 4


def test_steady_state_updates_allocate_nothing():
    rng = np.random.default_rng(3)
    ev = events_from(random_l2_rows(rng, 50_000, jump_every=10**9))
    book = L2Book(0, window=1 << 15)
    book.apply(ev)                                 # warm up: window placed, overflow sized
    before = allocation_count()
    for _ in range(3):
        book.apply(ev)                             # the same prices again: steady state
    assert allocation_count() == before


def test_events_dtype_views_are_accepted_without_copy():
    raw = np.zeros(10 * 64, np.uint8)
    ev = raw.view(EVENT_DTYPE)
    ev["kind"] = Kind.ADD
    ev["price"] = np.arange(100, 110)
    ev["qty"] = 1
    b = L2Book(0)
    assert b.apply(ev) == 10 and b.best_bid == 109


def test_snapshot_events_rebuild_an_equal_book():
    rng = np.random.default_rng(9)
    src = L2Book(3, window=256)
    src.apply(events_from(random_l2_rows(rng, 20_000), instrument=3))
    snap = src.snapshot_events(seq=77, ts=123)
    assert snap[0]["kind"] == Kind.SNAPSHOT and snap[-1]["kind"] == Kind.SNAPSHOT
    assert (snap["seq"] == 77).all() and (snap["instrument"] == 3).all()
    dst = L2Book(3)
    dst.set(Side.BID, 5, 5)                        # stale content the snapshot must clear
    assert dst.apply(snap) == len(snap)
    assert dst.state() == src.state() and dst.in_sync
    assert len(snap) == 2 + src.level_count(0) + src.level_count(1)


def test_stale_marker_keeps_the_book_but_marks_it_out_of_sync():
    b = L2Book(0)
    b.set(Side.BID, 100, 1)
    ev = events_from([(Kind.SNAPSHOT, 2, 0, 0)])
    ev["flags"] = 32                               # Flag.STALE
    b.apply(ev)
    assert not b.in_sync and b.state() == ([(100, 1)], [])
    b.apply(b.snapshot_events())
    assert b.in_sync and b.state() == ([(100, 1)], [])


@pytest.mark.parametrize("bad", [1002.5, 1002.0, np.float64(1002), "1002", None, True])
def test_per_event_api_refuses_non_integers_naming_the_argument(bad):
    """A float price used to be truncated (1002.5 -> 1002): prices, quantities, sides and
    query arguments must be integers (Python ints or numpy integers), never rounded."""
    b = L2Book(0)
    b.set(Side.ASK, 1003, 1)
    before = b.state()
    calls = [
        ("price", lambda: b.set(Side.ASK, bad, 1)),
        ("qty", lambda: b.set(Side.ASK, 1002, bad)),
        ("side", lambda: b.set(bad, 1002, 1)),
        ("price", lambda: b.delete(Side.ASK, bad)),
        ("price", lambda: b.qty_at(Side.ASK, bad)),
        ("qty", lambda: b.vwap_to_size(Side.ASK, bad)),
        ("k", lambda: b.imbalance(bad)),
        ("k", lambda: b.depth_qty(Side.ASK, bad)),
    ]
    for name, call in calls:
        with pytest.raises(TypeError, match=rf"\b{name} must be an integer") as err:
            call()
        assert repr(bad) in str(err.value)
    assert b.state() == before and b.rejects == {} and b.applied == 1
    b.set(np.int8(Side.ASK), np.int64(1002), np.uint16(7))      # numpy integers are integers
    assert b.best_ask == 1002 and b.best_ask_qty == 7


def test_per_event_api_refuses_integers_beyond_int64_naming_the_argument():
    b = L2Book(0)
    with pytest.raises(ValueError, match="price must be within int64"):
        b.set(Side.BID, 2**63, 1)
    with pytest.raises(ValueError, match="qty must be within int64"):
        b.set(Side.BID, 100, -2**63 - 1)
    with pytest.raises(BookError) as err:                        # an int64 side that is no side
        b.set(2**32, 100, 1)
    assert err.value.reason == Reject.BAD_SIDE and b.state() == ([], [])


def test_depth_and_imbalance_do_not_overflow():
    """Two levels of 2**63-1 lots used to make depth_qty -2 and imbalance 1.0."""
    big = 2**63 - 1
    b, ref = L2Book(0), RefL2(0)
    for side, price in ((BID, 100), (BID, 99), (ASK, 101)):
        b.set(side, price, big)
        ref.set(side, price, big)
    assert b.depth_qty(Side.BID, 2) == 2 * big                   # exact in Python
    assert b.depth_qty(Side.ASK, 5) == big
    assert b.imbalance(2) == pytest.approx(1 / 3, rel=1e-15) == ref.imbalance(2)
    assert b.microprice == pytest.approx(100.5)
    assert_same(b, ref, k_values=(1, 2, 3))


def test_constructor_refuses_nonsense_naming_the_argument():
    cases = [
        (dict(window=-256), "window"),
        (dict(window=256.0), "window"),
        (dict(max_levels=0), "max_levels"),
        (dict(max_levels=-5), "max_levels"),
        (dict(max_depth=-1), "max_depth"),
        (dict(min_price=10, max_price=5), "min_price"),
        (dict(min_price=-2**63), "min_price"),
        (dict(max_price=2**63 - 1), "max_price"),
        (dict(min_price=1.5), "min_price"),
    ]
    for kw, name in cases:
        with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b") as err:
            L2Book(0, **kw)
        assert "\n" not in str(err.value), kw
    for bad in (-1, 2**32, 1.0):
        with pytest.raises((ValueError, TypeError), match=r"\binstrument\b"):
            L2Book(bad)


# -- BookSet.apply_top (the backtest report's per-event top of book) ----------------------------
def check_apply_top(book):
    """``BookSet.apply_top`` on a mixed stream (snapshot markers, rejects, an unknown
    instrument) writes the top of book, status and sync that applying the events one at a
    time and querying after each gives, and leaves the same books."""
    from tickwire.engine.instruments import make_books
    from tickwire.feeds.synthetic import l2_updates, l3_orders, synthetic_instruments
    insts = synthetic_instruments(3, book=book)
    gen = l2_updates if book == "L2" else l3_orders
    events = gen(6000, seed=11, instruments=3)
    rng = np.random.default_rng(2)
    extra = events[rng.integers(0, len(events), 40)].copy()
    extra["kind"][:10] = Kind.SNAPSHOT
    extra["flags"][:10] = [Flag.STALE, Flag.SNAPSHOT_END] * 5
    extra["instrument"][10:15] = 9
    extra["price"][15:20] = -5
    events = np.insert(events, np.sort(rng.integers(0, len(events), 40)), extra)
    a, b = make_books(insts), make_books(insts)
    top = np.full((len(events) + 3, 4), 77, np.int64)
    status = np.zeros(len(events), np.uint8)
    sync = np.zeros(len(events), np.uint8)
    applied = a.apply_top(events, top, status=status, in_sync=sync)
    one = np.zeros(1, np.uint8)
    none = np.iinfo(np.int64).min
    total = 0
    for k in range(len(events)):
        total += b.apply(events[k:k + 1], one)
        assert status[k] == one[0]
        i = int(events["instrument"][k])
        if i in b:
            bk = b[i]
            want = [bk.best_bid, bk.best_ask, bk.best_bid_qty, bk.best_ask_qty]
            assert top[k].tolist() == [none if x is None else x for x in want], k
            assert sync[k] == bk.in_sync
        else:
            assert top[k].tolist() == [none, none, 0, 0] and sync[k] == 0
    assert applied == total and np.all(top[len(events):] == 77)       # rows past the batch untouched
    assert not all(sync) and any(status)
    assert a.rejects == b.rejects and a.unknown_instrument == b.unknown_instrument == 5
    for x, y in zip(a, b):
        assert x.state() == y.state()
    small = events[:10]                                               # below the GIL-release size
    assert make_books(insts).apply_top(small, np.zeros((10, 4), np.int64)) == make_books(insts).apply(small)
    with pytest.raises(TypeError, match="top"):
        a.apply_top(events, np.zeros((len(events), 3), np.int64))
    with pytest.raises(ValueError, match="rows"):
        a.apply_top(events, np.zeros((2, 4), np.int64))
    with pytest.raises(TypeError, match="in_sync"):
        a.apply_top(events, top, in_sync=np.zeros(len(events), np.int64))


def test_bookset_apply_top_equals_one_by_one():
    check_apply_top("L2")


def test_prices_at_the_ends_of_int64_are_refused_and_leave_the_book():
    # sign * price and key - base overflowed int64 in the apply paths and qty_at (defined only
    # under -fwrapv; now unsigned arithmetic): the event is refused, the book as it was
    for cls in (L2Book, L3Book):
        for side in (Side.BID, Side.ASK):
            b = cls(1)
            ev = empty_events(1)
            ev["kind"], ev["side"], ev["price"], ev["qty"], ev["instrument"], ev["order_id"] = \
                Kind.ADD, side, 100, 5, 1, 7
            assert b.apply(ev) == 1
            for price in (-2**63, -2**63 + 1, 2**63 - 1):
                for kind in (Kind.ADD, Kind.MODIFY, Kind.DELETE, Kind.TRADE):
                    bad = ev.copy()
                    bad["kind"], bad["price"], bad["order_id"] = kind, price, 9
                    b.apply(bad)
                    assert b.qty_at(side, price) == 0
                assert len(b.levels(side)) == 1 and b.qty_at(side, 100) == 5
