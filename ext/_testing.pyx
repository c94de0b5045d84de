"""Test-only helpers, built beside the product with its directives (as CPython's _testcapi):
nothing in tickwire imports this module."""

from libc.stdint cimport int64_t, uint64_t

from tickwire.ext.book cimport Book, tw_ladder, tw_book_top_qty
from tickwire.ext.defs cimport TW_NO_PRICE


def sum_first(const int64_t[::1] values, Py_ssize_t n):
    """Sum of ``values[:n]`` with no length check of its own: in a debug build Cython's
    bounds checking raises IndexError past the end (tests use it to tell the builds apart);
    never call it with a bad ``n`` on a release build."""
    cdef Py_ssize_t i
    cdef int64_t total = 0
    for i in range(n):
        total += values[i]
    return total


def ladder_size():
    """sizeof(tw_ladder): 256 bytes so that the per-event update finds a book's side with a
    shift (book.pxd); a field added past them shows here."""
    return sizeof(tw_ladder)


def top_qty(Book book, int side, Py_ssize_t k):
    """tw_book_top_qty of ``side``'s best ``k`` levels: ``(total, kth)``, the total saturating
    at 2**63-1 and ``kth`` the k-th level's price (None when the side has fewer than ``k``)."""
    cdef int64_t kth = 0
    cdef int64_t total = tw_book_top_qty(&book.c, side, k, &kth)
    return total, (None if kth == TW_NO_PRICE else kth)


def set_hash_key(Book book, uint64_t key):
    """Give an empty L3 book's order map the hash key ``key`` (each book draws a random one:
    tests that build colliding ids need to know it)."""
    if book.c.norders:
        raise ValueError("set_hash_key: the book holds orders")
    book.c.hash_key = key


def longest_probe(Book book):
    """The longest run of occupied slots in an L3 book's order map (what a lookup may walk)."""
    cdef uint64_t i, run = 0, best = 0, n
    if book.c.map == NULL:
        return 0
    n = book.c.map_mask + 1
    for i in range(2 * n):                        # twice round: a run may wrap past the end
        if book.c.map[i & book.c.map_mask]:
            run += 1
            best = max(best, run)
        else:
            run = 0
    return min(best, n)
