"""Benchmark-only C helpers for bench_book.py and test_book_micro.py (never shipped, never in
tickwire's modules): built on demand by ``benchmarks/cbuild.py`` against tickwire's public .pxd,
in release mode (-O3, no bounds checks)."""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from tickwire.ext.defs cimport tw_event, TW_SIDE_BID, TW_SIDE_ASK, TW_KIND_TRADE
from tickwire.ext.book cimport (Book, BookSet, tw_book, tw_book_apply, tw_book_best_price, tw_book_best_qty,
                                tw_book_prefetch, tw_book_set_level, TW_BOOK_L2)

cdef extern from *:
    """
    /* An empty asm statement that may read and write all memory: keeps the compiler from
       reusing a load across loop iterations, or dropping stores nobody reads. */
    static inline void tw_clobber_memory(void) { __asm__ __volatile__("" ::: "memory"); }
    """
    void tw_clobber_memory() nogil


cdef const tw_event *_events(object events, Py_buffer *view, Py_ssize_t *n) except NULL:
    """The events of a C-contiguous EVENT_DTYPE array (release ``view`` when done)."""
    PyObject_GetBuffer(events, view, PyBUF_C_CONTIGUOUS)
    n[0] = view.len // sizeof(tw_event)
    return <const tw_event *>view.buf


def bbo_reads(Book book, int64_t n):
    """Read the best bid and ask (price and quantity) ``n`` times in C; returns a checksum."""
    cdef int64_t i, acc = 0
    cdef tw_book *b = &book.c
    with nogil:
        for i in range(n):
            tw_clobber_memory()
            acc += tw_book_best_price(b, TW_SIDE_BID) + tw_book_best_qty(b, TW_SIDE_BID)
            acc += tw_book_best_price(b, TW_SIDE_ASK) + tw_book_best_qty(b, TW_SIDE_ASK)
    return acc


def top_churn(Book book, int64_t n):
    """Remove the best bid level and put it back, ``n`` times (finding the next best level each
    time); the book ends as it began.  Returns the best bid."""
    cdef int64_t i, price, qty
    cdef tw_book *b = &book.c
    if b.p.book_type != TW_BOOK_L2 or b.side[TW_SIDE_BID].best < 0:
        raise ValueError("needs an L2 book with a bid")
    price = tw_book_best_price(b, TW_SIDE_BID)
    qty = tw_book_best_qty(b, TW_SIDE_BID)
    with nogil:
        for i in range(n):
            tw_book_set_level(b, TW_SIDE_BID, price, 0)
            tw_book_set_level(b, TW_SIDE_BID, price, qty)
    return tw_book_best_price(b, TW_SIDE_BID)


cdef class PlainLadder:
    """The plain C price ladder, the limit of an L2 update: one dense int64 array per instrument
    and side, ``qty[inst][side][price - base[inst]] = qty`` per level update, trades skipped; no
    checks, no best level, no counts.  ``apply`` returns the updates stored."""
    cdef int64_t *qty
    cdef int64_t *base
    cdef readonly int64_t span, ninst

    def __cinit__(self, int64_t[::1] base, int64_t span):
        self.ninst = base.shape[0]
        self.span = span
        self.qty = <int64_t *>calloc(2 * self.ninst * span, sizeof(int64_t))
        self.base = <int64_t *>calloc(self.ninst, sizeof(int64_t))
        if self.qty == NULL or self.base == NULL:
            raise MemoryError(f"plain ladder of {2 * self.ninst * span:,} slots")
        tw_clobber_memory()                   # (so the compiler cannot drop the memset after calloc)
        memset(self.qty, 0, 2 * self.ninst * span * sizeof(int64_t))    # fault the pages in now
        for i in range(self.ninst):
            self.base[i] = base[i]

    def __dealloc__(self):
        free(self.qty)
        free(self.base)

    def apply(self, events):
        cdef Py_buffer view
        cdef const tw_event *ev
        cdef Py_ssize_t n, i, stored = 0
        cdef uint64_t s
        cdef int64_t span = self.span
        ev = _events(events, &view, &n)
        try:
            with nogil:
                for i in range(n):
                    if ev[i].kind == TW_KIND_TRADE:
                        continue
                    s = <uint64_t>(ev[i].price - self.base[ev[i].instrument])
                    if s < <uint64_t>span:
                        self.qty[(2 * ev[i].instrument + ev[i].side) * span + <int64_t>s] = ev[i].qty
                        stored += 1
                tw_clobber_memory()
        finally:
            PyBuffer_Release(&view)
        return stored

    def levels(self, int64_t inst, int side):
        """[(price, qty)] of one side's non-empty slots, best first."""
        cdef int64_t k, off = (2 * inst + side) * self.span
        out = [(self.base[inst] + k, self.qty[off + k]) for k in range(self.span) if self.qty[off + k] != 0]
        return out[::-1] if side == TW_SIDE_BID else out


def per_event(BookSet books, events, bint prefetch=False):
    """The engine's call pattern (Engine.process_c): route each event to its instrument's book
    and call tw_book_apply on it, one event at a time with nothing looked ahead; with
    ``prefetch``, also tw_book_prefetch for the events 16 and 8 ahead (what such a loop can
    add).  Returns how many were applied."""
    cdef Py_buffer view
    cdef const tw_event *ev
    cdef Py_ssize_t n, i, applied = 0
    cdef tw_book *b
    cdef uint32_t nb = books.c.nbooks
    ev = _events(events, &view, &n)
    try:
        with nogil:
            for i in range(n):
                if prefetch:
                    if i + 16 < n and ev[i + 16].instrument < nb and books.c.books[ev[i + 16].instrument] != NULL:
                        tw_book_prefetch(books.c.books[ev[i + 16].instrument], &ev[i + 16], 0)
                    if i + 8 < n and ev[i + 8].instrument < nb and books.c.books[ev[i + 8].instrument] != NULL:
                        tw_book_prefetch(books.c.books[ev[i + 8].instrument], &ev[i + 8], 1)
                if ev[i].instrument >= nb:
                    continue
                b = books.c.books[ev[i].instrument]
                if b != NULL:
                    applied += tw_book_apply(b, &ev[i]) == 0
    finally:
        PyBuffer_Release(&view)
    return applied
