"""The .pxd C API works from a user's own Cython module (cimport tickwire.ext.book)."""

import textwrap

from cython_build import build_module
from tickwire.ext import L2Book, L3Book

DOWNSTREAM = textwrap.dedent('''
    # cython: language_level=3
    from libc.string cimport memset
    from tickwire.ext.defs cimport tw_event, TW_KIND_ADD, TW_KIND_DELETE, TW_SIDE_BID, TW_SIDE_ASK
    from tickwire.ext.book cimport (Book, tw_book_apply, tw_book_apply_inline, tw_book_best_price, tw_book_best_qty,
                                    tw_book_add_order, tw_book_spread, tw_book_levels,
                                    tw_book_depth_qty, tw_book_top_qty_d)

    def depth(Book book, int side, Py_ssize_t k):
        """The C sums of the best k levels: int64 (saturating) and double (exact, rounded once)."""
        return tw_book_depth_qty(&book.c, side, k), tw_book_top_qty_d(&book.c, side, k, NULL)

    def fill_ladder(Book book, long n):
        """Add n bid levels and n ask levels through the C API, without the GIL (the asks through
        the inline update, compiled into this module)."""
        cdef tw_event ev
        cdef long i
        cdef int rejected = 0
        memset(&ev, 0, sizeof(ev))
        ev.instrument = book.c.p.instrument
        ev.kind = TW_KIND_ADD
        with nogil:
            for i in range(n):
                ev.side = TW_SIDE_BID
                ev.price = 1000 - i
                ev.qty = i + 1
                ev.order_id = 2 * i + 1
                rejected += tw_book_apply(&book.c, &ev) != 0
                ev.side = TW_SIDE_ASK
                ev.price = 1001 + i
                ev.order_id = 2 * i + 2
                rejected += tw_book_apply_inline(&book.c, &ev) != 0
        return rejected, tw_book_best_price(&book.c, TW_SIDE_BID), tw_book_best_qty(&book.c, TW_SIDE_ASK), tw_book_spread(&book.c)
''')

DOWNSTREAM_RULE = textwrap.dedent('''
    # cython: language_level=3
    from tickwire.ext.defs cimport tw_signal
    from tickwire.ext.pipeline cimport Rule, tw_rule_ctx

    cdef class WideSpread(Rule):
        """Fires (once per widening) when the spread reaches `limit` ticks."""
        cdef double limit
        cdef bint armed

        def __init__(self, double limit):
            super().__init__("wide_spread")
            self.limit = limit
            self.armed = True

        cdef int evaluate(self, const tw_rule_ctx *ctx, tw_signal *out) noexcept nogil:
            if ctx.f.spread >= self.limit:
                if not self.armed:
                    return 0
                self.armed = False
                out.value = ctx.f.spread
                out.strength = ctx.f.spread / self.limit
                out.direction = 1
                return 1
            self.armed = True
            return 0
''')



def test_user_cython_module_drives_books_through_the_pxd(tmp_path):
    downstream = build_module(tmp_path, "downstream", DOWNSTREAM)
    l2 = L2Book(4)
    assert downstream.fill_ladder(l2, 100) == (0, 1000, 1, 1)
    assert l2.level_count(0) == 100 and l2.levels(1, 1).tolist() == [[1001, 1, 0]]
    l3 = L3Book(5)
    assert downstream.fill_ladder(l3, 10) == (0, 1000, 1, 1)
    assert l3.order_count == 20
    assert downstream.depth(l2, 0, 3) == (1 + 2 + 3, 6.0)
    big = L2Book(6)
    big.set(0, 100, 2**63 - 1)
    big.set(0, 99, 2**63 - 1)
    assert downstream.depth(big, 0, 1) == (2**63 - 1, float(2**63 - 1))
    assert downstream.depth(big, 0, 2) == (2**63 - 1, float(2**64 - 2))     # saturates; exact in double


def test_user_cython_rule_runs_in_the_engine_without_the_gil(tmp_path):
    import numpy as np

    from tickwire.engine.instruments import Instrument
    from tickwire.engine.pipeline import Engine, StatsConfig
    from tickwire.ext import EVENT_DTYPE, Kind, RuleKind

    mod = build_module(tmp_path, "userrule", DOWNSTREAM_RULE)
    rule = mod.WideSpread(10.0)
    eng = Engine([Instrument(0, "X")], [rule], StatsConfig(sample="message"), clock="event")
    assert rule.rule_id == 0 and rule.name == "wide_spread"
    rows = [(100, 102), (100, 115), (100, 116), (100, 103), (100, 120)]   # (bid, ask) per message
    prev = None
    for i, (bid, ask) in enumerate(rows):
        ev = np.zeros(4 if prev else 2, dtype=EVENT_DTYPE)
        ev["kind"] = Kind.MODIFY
        ev["side"][:2] = [0, 1]
        ev["price"][:2] = [bid, ask]
        ev["qty"][:2] = 1
        if prev:
            ev["side"][2:] = [0, 1]
            ev["price"][2:] = prev
            ev["qty"][2:] = [0 if prev[0] != bid else 1, 0 if prev[1] != ask else 1]
        ev["seq"] = i + 1
        ev["flags"][-1] = 1
        eng.process(ev)
        prev = (bid, ask)
    s = eng.signals
    assert s["value"].tolist() == [15.0, 20.0]                           # not 16: it holds
    assert (s["rule_kind"] == RuleKind.CUSTOM).all() and s["seq"].tolist() == [2, 5]
