"""L3 order map (one 8-byte tagged entry per slot, linear probing, backward-shift deletion) and
the batch apply's prefetching: differential tests against a dict and against one-event calls."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from budget import examples
from test_book_l3 import l3_events, random_l3_rows
from tickwire.ext import BookError, BookSet, Kind, L2Book, L3Book, Reject, Side, empty_events
from tickwire.ext._testing import set_hash_key

M64 = (1 << 64) - 1


def _tag(order_id, key):
    """book.pyx's map tag: the high half of the id's hash under the book's key (its low bits pick
    the home slot)."""
    k = order_id ^ key
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    return k >> 32


def _unhash(h, key):
    """The id whose hash under ``key`` is ``h`` (each step of the hash is invertible)."""
    h ^= h >> 33
    h = (h * pow(0xFF51AFD7ED558CCD, -1, 1 << 64)) & M64
    h ^= h >> 33
    return h ^ key


def colliding_ids(n, key=0, tags=(127, 0)):
    """Ids whose map tags are 127 or 0 under hash key ``key``: their home slots are 127 and 0 in
    every map of up to 128 slots (one long probe run that wraps from the end of the table to its
    start, whatever size the map has grown to) and two slots in any larger map."""
    out = [_unhash((tags[j % len(tags)] << 32) | (j + 1), key) for j in range(n)]
    assert all(_tag(k, key) in tags for k in out) and 0 not in out
    return out


COLLIDING = colliding_ids(48)
IDS = COLLIDING + [3, 2**63 + 5, 2**64 - 1]           # and a few whose homes differ

ops = st.lists(st.tuples(st.sampled_from(["add", "delete", "fill", "modify0", "execute1", "move"]),
                         st.sampled_from(IDS), st.integers(0, 3)), max_size=300)


@settings(max_examples=examples(150), deadline=None)
@given(ops)
def test_order_map_matches_a_dict_under_colliding_ids(steps):
    # initial_orders=1: the pool (and with it the map) grows 1 -> 64 orders on the way, each
    # growth re-inserting every entry; max_orders=40 also exercises the full-pool refusal
    book = L3Book(0, initial_orders=1, max_orders=40)
    set_hash_key(book, 0)                             # (the key COLLIDING was made for)
    want = {}                                         # id -> [side, price, qty]
    for op, oid, x in steps:
        expect = Reject.OK
        if op == "add":
            if oid in want:
                expect = Reject.DUPLICATE_ORDER
            elif len(want) >= 40:
                expect = Reject.CAPACITY
        elif oid not in want:
            expect = Reject.UNKNOWN_ORDER
        try:
            if op == "add":
                book.add(oid, x & 1, 1000 + x, 5 + x)
            elif op == "delete":
                book.delete(oid)
            elif op == "fill":
                book.execute(oid, want[oid][2] if oid in want else 1)
            elif op == "modify0":
                book.modify(oid, 0)
            elif op == "execute1":
                book.execute(oid, 1)
            else:
                book.modify(oid, 3 + x, price=1010 + x)
            got = Reject.OK
        except BookError as exc:
            got = exc.reason
        assert got == expect, (op, oid)
        if expect == Reject.OK:
            if op == "add":
                want[oid] = [x & 1, 1000 + x, 5 + x]
            elif op in ("delete", "fill", "modify0"):
                del want[oid]
            elif op == "execute1":
                want[oid][2] -= 1
                if want[oid][2] == 0:
                    del want[oid]
            else:
                want[oid][1:] = [1010 + x, 3 + x]
        assert book.order_count == len(want)
        for k in IDS:                                 # every id: present ones found, removed ones gone
            o = book.order(k)
            assert (None if o is None else [int(o[0]), o[1], o[2]]) == want.get(k), k


def _full(book):
    if isinstance(book, L2Book):
        return book.state()
    out = []
    for side in (Side.BID, Side.ASK):
        for price, qty, n in book.levels(side):
            out.append((int(side), int(price), int(qty), int(n), book.orders_at(side, price).tolist()))
    return out


def test_bookset_batch_matches_one_event_at_a_time():
    """BookSet.apply prefetches the map slots and order records of events ahead of the one it
    applies: a hint only, so a batch must leave every book (and every status) exactly as the
    same events applied one call at a time, where there is nothing ahead to prefetch.  The
    stream mixes three L3 books, an L2 book, an unknown instrument, order id 0, unknown and
    re-used ids, and orders that events a few places ahead of them remove."""
    rng = np.random.default_rng(11)
    parts = []
    for inst in (0, 1, 2):
        ev = l3_events(random_l3_rows(rng, 6000, target=300), instrument=inst)
        ev["order_id"][ev["order_id"] != 0] += inst << 40          # ids distinct across books
        parts.append(ev)
    junk = empty_events(600)
    junk["kind"] = rng.choice([Kind.ADD, Kind.DELETE, Kind.TRADE, Kind.MODIFY], 600)
    junk["instrument"] = rng.choice([0, 1, 2, 3, 9], 600)           # 3: the L2 book, 9: unknown
    junk["order_id"] = rng.choice([0, 1, 2, 5, 1 << 41, 77], 600)
    junk["side"] = rng.integers(0, 3, 600)
    junk["price"] = 500_000 + rng.integers(-20, 20, 600)
    junk["qty"] = rng.integers(0, 4, 600)
    ev = np.concatenate(parts + [junk])
    ev = ev[rng.permutation(len(ev))]                                # instruments interleaved
    ev["seq"] = np.arange(1, len(ev) + 1)

    def books():
        return BookSet([L3Book(0, initial_orders=8), L3Book(1), L3Book(2, initial_orders=1 << 12),
                        L2Book(3)])

    batch, single = books(), books()
    st_batch = np.zeros(len(ev), dtype=np.uint8)
    st_single = np.zeros(len(ev), dtype=np.uint8)
    n_batch = batch.apply(ev, st_batch)
    n_single = 0
    for i in range(len(ev)):
        n_single += single.apply(ev[i:i + 1], st_single[i:i + 1])
    assert n_batch == n_single
    assert (st_batch == Reject.OK).sum() > len(ev) // 2             # the stream is mostly valid
    np.testing.assert_array_equal(st_batch, st_single)
    for inst in (0, 1, 2, 3):
        assert _full(batch[inst]) == _full(single[inst])
    for inst in (0, 1, 2):
        assert batch[inst].order_count == single[inst].order_count > 0


def test_large_pool_and_map_grow_across_the_huge_page_threshold():
    """Pools and maps of 2 MB and more are mapped separately (huge pages asked for on Linux):
    growth from a small block into a large one and between large ones keeps every order, and
    clear() and free work on them."""
    n = 150_000                                      # pool 50k -> 100k -> 200k; map 1 MB -> 4 MB
    rng = np.random.default_rng(3)
    ids = rng.permutation(np.arange(1, n + 1, dtype=np.uint64) * 7919)
    sides = rng.integers(0, 2, n)
    prices = 500_000 + np.where(sides == 0, -1, 1) * rng.integers(1, 3000, n)
    qty = rng.integers(1, 100, n)
    ev = l3_events([(Kind.ADD, int(i), int(s), int(p), int(q)) for i, s, p, q in zip(ids, sides, prices, qty)])
    book = L3Book(0, initial_orders=50_000)
    assert book.apply(ev) == n
    gone = ids[::3]
    dels = l3_events([(Kind.DELETE, int(i), 2, 0, 0) for i in gone])
    assert book.apply(dels) == len(gone)
    assert book.order_count == n - len(gone)
    keep = np.ones(n, bool)
    keep[::3] = False
    for k in rng.choice(np.flatnonzero(keep), 2000, replace=False).tolist():
        assert book.order(int(ids[k]))[1:3] == (int(prices[k]), int(qty[k]))
    for k in range(0, 6000, 3):
        assert book.order(int(ids[k])) is None
    for side in (Side.BID, Side.ASK):
        want = int(qty[keep & (sides == side)].sum())
        assert sum(int(q) for _, q, _ in book.levels(side)) == want
    book.clear()
    assert book.order_count == 0 and book.order(int(ids[1])) is None
    assert book.apply(ev[:1000]) == 1000
    del book
