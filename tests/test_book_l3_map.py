"""L3 order map (one 8-byte tagged entry per slot, linear probing, backward-shift deletion):
differential tests against a dict."""

from hypothesis import given, settings
from hypothesis import strategies as st

from budget import examples
from tickwire.ext import BookError, L3Book, Reject

M64 = (1 << 64) - 1


def _tag(order_id):
    """book.pyx's map tag: the high half of the id's hash (its low bits pick the home slot)."""
    k = order_id
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M64
    k ^= k >> 33
    return k >> 32


def _colliding_ids(n, homes=(127, 0)):
    """Ids whose home slot is 127 or 0 in every map of up to 128 slots: one long probe run that
    wraps from the end of the table to its start, whatever size the map has grown to."""
    out, k = [], 1
    while len(out) < n:
        if _tag(k) & 127 in homes:
            out.append(k)
        k += 1
    return out


COLLIDING = _colliding_ids(48)
IDS = COLLIDING + [3, 2**63 + 5, 2**64 - 1]           # and a few whose homes differ

ops = st.lists(st.tuples(st.sampled_from(["add", "delete", "fill", "modify0", "execute1", "move"]),
                         st.sampled_from(IDS), st.integers(0, 3)), max_size=300)


@settings(max_examples=examples(150), deadline=None)
@given(ops)
def test_order_map_matches_a_dict_under_colliding_ids(steps):
    # initial_orders=1: the pool (and with it the map) grows 1 -> 64 orders on the way, each
    # growth re-inserting every entry; max_orders=40 also exercises the full-pool refusal
    book = L3Book(0, initial_orders=1, max_orders=40)
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
