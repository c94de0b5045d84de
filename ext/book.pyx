"""L2 and L3 order books over a dense price ladder, with a batch API that runs without the GIL.

See ``book.pxd`` for the C API and the data layout.  The Python classes here
(:class:`L2Book`, :class:`L3Book`, :class:`BookSet`) are thin wrappers: the per-event
methods and the batch :meth:`Book.apply` call the same C functions.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongLongAndOverflow
from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t, uint8_t, uintptr_t, INT64_MAX, INT64_MIN
from libc.stdlib cimport calloc, malloc, realloc, free
from libc.string cimport memcpy, memmove, memset

from tickwire.ext.defs cimport (
    tw_event, tw_misaligned, tw_msb64, tw_lsb64, tw_popcount64, TW_NO_PRICE, TW_DEBUG_BUILD, TW_LIKELY, TW_UNLIKELY,
    TW_KIND_ADD, TW_KIND_MODIFY, TW_KIND_DELETE, TW_KIND_TRADE, TW_KIND_CLEAR, TW_KIND_SNAPSHOT,
    TW_SIDE_BID, TW_SIDE_ASK, TW_SIDE_NONE, TW_FLAG_SNAPSHOT_BEGIN, TW_FLAG_SNAPSHOT_END,
    TW_FLAG_STALE, TW_FLAG_SNAPSHOT, TW_FLAG_LAST, TW_KIND_SNAPSHOT as _SNAP,
    TW_OK, TW_REJ_UNKNOWN_INSTRUMENT, TW_REJ_BAD_KIND, TW_REJ_BAD_SIDE, TW_REJ_BAD_QTY,
    TW_REJ_PRICE_RANGE, TW_REJ_UNKNOWN_ORDER, TW_REJ_DUPLICATE_ORDER, TW_REJ_OVERFILL,
    TW_REJ_UNKNOWN_LEVEL, TW_REJ_CAPACITY, TW_REJ_NO_MEMORY, TW_REJ_WRONG_CHANNEL, TW_REJ_COUNT,
)

import operator

import numpy as np

from tickwire.ext.records import EVENT_DTYPE, Reject, Side

#: "release" or "debug": which build of the extension is loaded.
BUILD = "debug" if TW_DEBUG_BUILD else "release"

#: Defaults: accepted prices (ticks), dense window slots per side, levels per side.
DEFAULT_MIN_PRICE = 1
DEFAULT_MAX_PRICE = 1 << 62
#: The lowest price a book takes: -(2**62 - 1), so that a price range, and a spread, fit in int64.
LOWEST_PRICE = -DEFAULT_MAX_PRICE + 1
DEFAULT_WINDOW = 1 << 17
DEFAULT_MAX_WINDOW = 1 << 20
DEFAULT_MAX_LEVELS = 1 << 20
WINDOW_MIN = TW_WINDOW_MIN
WINDOW_MAX = TW_WINDOW_MAX
MAX_ORDERS_LIMIT = 1 << 30

cdef enum:
    _RELEASE_GIL_AT = 64          # batches shorter than this keep the GIL (releasing costs more)
    _PREFETCH_MAP = 16            # batch apply: events ahead whose order-map slot is prefetched
    _PREFETCH_ORDER = 8           # ... and whose order record is prefetched (map slot read)
    _PREFETCH_LEVEL = 8           # L2 batch apply: events ahead whose level slot is prefetched
    _PREFETCH_LEVELS_MIN = 32768  # ... when the set holds at least this many levels
    _FAR_HINT_BITS = 10           # far-level hints per ladder: 2 ** this
    _FAR_PERIOD = 4096            # an L2 side's window doubles (up to max_window) when, over the
    _FAR_SHARE = 256              # last _FAR_PERIOD of its updates outside it, they were more than
                                  # 1 in _FAR_SHARE of the book's applied events

# Heap allocations made by books (window, overflow and order-pool growth), process-wide:
# a steady-state stream must leave it unchanged (tests check this).  Diagnostic only.
cdef uint64_t _allocations = 0


def allocation_count():
    """How many times books in this process have allocated or grown memory."""
    return _allocations


# ---------------------------------------------------------------------------------------
# Ladder: one side of a book, in keys (higher key = better price)
# ---------------------------------------------------------------------------------------

cdef inline void _ladder_reset(tw_ladder *L, int64_t sign) noexcept nogil:
    memset(L, 0, sizeof(tw_ladder))
    L.best = -1
    L.sign = sign


cdef void _ladder_fast_window(tw_ladder *L) noexcept nogil:
    """Set fast_lo/fast_n, the window slots whose keys are inside key_lo..key_hi, after the
    window or the range changed (unsigned differences: exact whatever the int64 values)."""
    cdef uint64_t lo = 0, hi = 0
    if L.key_lo > L.base:
        lo = min(<uint64_t>L.key_lo - <uint64_t>L.base, <uint64_t>L.cap)
    if L.key_hi >= L.base:
        hi = min(<uint64_t>L.key_hi - <uint64_t>L.base, <uint64_t>L.cap - 1) + 1 if L.cap > 0 else 0
    L.fast_lo = <int64_t>lo
    L.fast_n = <int64_t>(hi - lo) if hi > lo else 0


cdef void _ladder_release(tw_ladder *L) noexcept nogil:
    cdef int k
    free(L.qty)
    free(L.norders)
    free(L.head)
    free(L.tail)
    free(L.over)
    free(L.far_hint)
    for k in range(TW_LADDER_LEVELS):
        free(L.bits[k])
        free(L.spare[k])
    _ladder_reset(L, L.sign)


cdef int _ladder_alloc(tw_ladder *L, int64_t cap, bint with_orders) noexcept nogil:
    """Allocate an empty window of ``cap`` slots into a reset ladder; -1 when out of memory."""
    cdef int k
    cdef int64_t n = cap
    cdef bint ok
    global _allocations
    _allocations += 1
    L.cap = cap
    L.qty = <int64_t *>calloc(cap, sizeof(int64_t))
    L.far_hint = <Py_ssize_t *>calloc(1 << _FAR_HINT_BITS, sizeof(Py_ssize_t))
    ok = L.qty != NULL and L.far_hint != NULL
    for k in range(TW_LADDER_LEVELS):
        n = (n + 63) >> 6
        L.nwords[k] = n
        L.bits[k] = <uint64_t *>calloc(n, sizeof(uint64_t))
        L.spare[k] = <uint64_t *>calloc(n, sizeof(uint64_t))
        ok = ok and L.bits[k] != NULL and L.spare[k] != NULL
    if with_orders:
        L.norders = <int32_t *>calloc(cap, sizeof(int32_t))
        L.head = <int32_t *>calloc(cap, sizeof(int32_t))
        L.tail = <int32_t *>calloc(cap, sizeof(int32_t))
        ok = ok and L.norders != NULL and L.head != NULL and L.tail != NULL
    if not ok:
        _ladder_release(L)
        return -1
    return 0


cdef inline void _bits_set(uint64_t **bits, int64_t s) noexcept nogil:
    cdef int k
    cdef uint64_t w
    for k in range(TW_LADDER_LEVELS):
        w = bits[k][s >> 6]
        bits[k][s >> 6] = w | ((<uint64_t>1) << (s & 63))
        if w != 0:
            return
        s >>= 6


cdef inline void _bits_clear(uint64_t **bits, int64_t s) noexcept nogil:
    cdef int k
    cdef uint64_t w
    for k in range(TW_LADDER_LEVELS):
        w = bits[k][s >> 6] & ~((<uint64_t>1) << (s & 63))
        bits[k][s >> 6] = w
        if w != 0:
            return
        s >>= 6


cdef inline int64_t _find_prev(const tw_ladder *L, int64_t i) noexcept nogil:
    """Highest occupied window slot <= i (the next better-to-worse level), or -1."""
    cdef int k = 0
    cdef uint64_t m
    if i < 0 or L.cap == 0:
        return -1
    if i >= L.cap:
        i = L.cap - 1
    while True:
        m = L.bits[k][i >> 6] & ((~<uint64_t>0) >> (63 - (i & 63)))
        if m:
            i = (i & ~(<int64_t>63)) | tw_msb64(m)
            break
        if k == TW_LADDER_LEVELS - 1:
            return -1
        i = (i >> 6) - 1
        if i < 0:
            return -1
        k += 1
    while k > 0:
        k -= 1
        i = (i << 6) | tw_msb64(L.bits[k][i])
    return i


cdef inline int64_t _find_next(const tw_ladder *L, int64_t i) noexcept nogil:
    """Lowest occupied window slot >= i, or -1."""
    cdef int k = 0
    cdef uint64_t m
    if i < 0:
        i = 0
    if i >= L.cap:
        return -1
    while True:
        m = L.bits[k][i >> 6] & ((~<uint64_t>0) << (i & 63))
        if m:
            i = (i & ~(<int64_t>63)) | tw_lsb64(m)
            break
        if k == TW_LADDER_LEVELS - 1:
            return -1
        i = (i >> 6) + 1
        if i >= L.nwords[k]:
            return -1
        k += 1
    while k > 0:
        k -= 1
        i = (i << 6) | tw_lsb64(L.bits[k][i])
    return i


# -- the overflow array ------------------------------------------------------------------

cdef inline Py_ssize_t _over_find(const tw_ladder *L, int64_t key) noexcept nogil:
    """Index of ``key`` in the overflow, or ``-(insertion point) - 1``.

    A branch-free lower bound: the far levels a feed updates are anywhere in the overflow, so
    each step of a branching search is a coin toss, and its mispredictions cost more than the
    rest of the update; here each step is a conditional move."""
    cdef const tw_level *base = L.over
    cdef Py_ssize_t n = L.nover, half, lo
    if n == 0:
        return -1
    while n > 1:
        half = n >> 1
        base += half & -<Py_ssize_t>(base[half - 1].key < key)      # (no branch: a mask)
        n -= half
    lo = (base - L.over) + (base[0].key < key)
    if lo < L.nover and L.over[lo].key == key:
        return lo
    return -lo - 1


cdef inline Py_ssize_t _over_find_hinted(tw_ladder *L, int64_t key) noexcept nogil:
    """_over_find, first trying the index this key's hash slot remembers: a feed updates the same
    far levels again and again, and a hit reads one entry where the search reads ten, one after
    another.  A hint is only an index; it is right when the entry there holds ``key`` (keys are
    unique in the overflow), so one left stale by an insert or a window move just misses."""
    cdef uint64_t h = (<uint64_t>key * <uint64_t>0x9E3779B97F4A7C15) >> (64 - _FAR_HINT_BITS)
    cdef Py_ssize_t i = L.far_hint[h]
    if <size_t>i < <size_t>L.nover and L.over[i].key == key:
        return i
    i = _over_find(L, key)
    if i >= 0:
        L.far_hint[h] = i
    return i


cdef int _over_reserve(tw_ladder *L, int64_t n) noexcept nogil:
    cdef int64_t cap = max(L.over_cap, <int64_t>16)
    cdef tw_level *p
    global _allocations
    if n <= L.over_cap:
        return TW_OK
    _allocations += 1
    while cap < n:
        cap *= 2
    p = <tw_level *>realloc(L.over, cap * sizeof(tw_level))
    if p == NULL:
        return TW_REJ_NO_MEMORY
    L.over = p
    L.over_cap = cap
    return TW_OK


cdef inline tw_level *_over_insert(tw_ladder *L, Py_ssize_t pos, int64_t key) noexcept nogil:
    """A new empty overflow level at ``pos`` (capacity reserved by the caller)."""
    cdef tw_level *lv
    memmove(&L.over[pos + 1], &L.over[pos], (L.nover - pos) * sizeof(tw_level))
    L.nover += 1
    lv = &L.over[pos]
    memset(lv, 0, sizeof(tw_level))
    lv.key = key
    return lv


cdef inline void _over_remove(tw_ladder *L, Py_ssize_t pos) noexcept nogil:
    memmove(&L.over[pos], &L.over[pos + 1], (L.nover - pos - 1) * sizeof(tw_level))
    L.nover -= 1


# Dead entries (L2 books only).  A far level that goes is left in place with qty 0 (and no
# orders) instead of being cut out of the array, so that its removal moves nothing; a level
# that comes back at that price, or next to a dead entry, takes the entry without a move.
# Readers skip dead entries; the last entry is never dead (a level removed there is cut off),
# so the overflow's best level is always over[nover - 1]; and the array is compacted when more
# than half of it is dead.

cdef inline bint _dead(const tw_level *lv) noexcept nogil:
    return lv.qty == 0 and lv.norders == 0


cdef void _over_compact(tw_ladder *L) noexcept nogil:
    """Cut the dead entries out, in one pass."""
    cdef Py_ssize_t i, j = 0
    for i in range(L.nover):
        if not _dead(&L.over[i]):
            if j != i:
                L.over[j] = L.over[i]
            j += 1
    L.nover = j
    L.ndead = 0


cdef inline void _over_trim(tw_ladder *L) noexcept nogil:
    """Drop the dead entries at the end (the best end) of the overflow."""
    while L.nover > 0 and _dead(&L.over[L.nover - 1]):
        L.nover -= 1
        L.ndead -= 1


cdef void _over_kill(tw_ladder *L, Py_ssize_t i) noexcept nogil:
    """Remove the (L2) far level at overflow entry ``i``: it stays, dead."""
    L.over[i].qty = 0
    L.ndead += 1
    L.nlevels -= 1
    _over_trim(L)
    if L.ndead > 16 and 2 * L.ndead > L.nover:
        _over_compact(L)


# -- moving the window -------------------------------------------------------------------

cdef int _ladder_move(tw_ladder *L, int64_t new_base) noexcept nogil:
    """Re-base the window at ``new_base`` (no level may be better than its top).

    Window levels below the new base go to the overflow; overflow levels inside the new
    window come into it.  O(window/64 + levels moved); returns TW_OK or TW_REJ_NO_MEMORY,
    the ladder unchanged on failure.
    """
    cdef int64_t delta = new_base - L.base, s, d
    cdef int k
    cdef uint64_t *tmp
    cdef tw_level *lv
    cdef bint orders = L.norders != NULL
    if delta == 0:
        return TW_OK
    if delta > 0 and _over_reserve(L, L.nlevels + L.ndead) != TW_OK:      # (nover + window levels)
        return TW_REJ_NO_MEMORY                   # (moving down sends nothing to the overflow)
    for k in range(TW_LADDER_LEVELS):
        memset(L.spare[k], 0, L.nwords[k] * sizeof(uint64_t))
    if delta > 0:
        # window levels under the new base join the overflow, best of the overflow last
        s = _find_next(L, 0)
        while s >= 0 and s < delta:
            lv = _over_insert(L, L.nover, L.base + s)
            lv.qty = L.qty[s]
            if orders:
                lv.norders = L.norders[s]
                lv.head = L.head[s]
                lv.tail = L.tail[s]
            s = _find_next(L, s + 1)
        while s >= 0:
            _bits_set(L.spare, s - delta)
            s = _find_next(L, s + 1)
        d = min(delta, L.cap)
        memmove(L.qty, L.qty + d, (L.cap - d) * sizeof(int64_t))
        memset(L.qty + (L.cap - d), 0, d * sizeof(int64_t))
        if orders:
            memmove(L.norders, L.norders + d, (L.cap - d) * sizeof(int32_t))
            memset(L.norders + (L.cap - d), 0, d * sizeof(int32_t))
            memmove(L.head, L.head + d, (L.cap - d) * sizeof(int32_t))
            memmove(L.tail, L.tail + d, (L.cap - d) * sizeof(int32_t))
    else:
        d = min(-delta, L.cap)
        s = _find_next(L, 0)
        while s >= 0:
            if s - delta >= L.cap:       # cannot happen: nothing is better than the best
                return TW_REJ_NO_MEMORY
            _bits_set(L.spare, s - delta)
            s = _find_next(L, s + 1)
        memmove(L.qty + d, L.qty, (L.cap - d) * sizeof(int64_t))
        memset(L.qty, 0, d * sizeof(int64_t))
        if orders:
            memmove(L.norders + d, L.norders, (L.cap - d) * sizeof(int32_t))
            memset(L.norders, 0, d * sizeof(int32_t))
            memmove(L.head + d, L.head, (L.cap - d) * sizeof(int32_t))
            memmove(L.tail + d, L.tail, (L.cap - d) * sizeof(int32_t))
    for k in range(TW_LADDER_LEVELS):
        tmp = L.bits[k]
        L.bits[k] = L.spare[k]
        L.spare[k] = tmp
    L.base = new_base
    _over_pull_in(L)
    return TW_OK


cdef void _over_pull_in(tw_ladder *L) noexcept nogil:
    """After the window moved or grew (base and cap set): the overflow levels that now fall
    inside it come back into it, dead entries there go, and the best is found again."""
    cdef tw_level *lv
    cdef int64_t t
    _ladder_fast_window(L)
    while L.nover > 0 and L.over[L.nover - 1].key >= L.base:
        lv = &L.over[L.nover - 1]
        if _dead(lv):
            L.ndead -= 1
        else:
            t = lv.key - L.base
            L.qty[t] = lv.qty
            if L.norders != NULL:
                L.norders[t] = lv.norders
                L.head[t] = lv.head
                L.tail[t] = lv.tail
            _bits_set(L.bits, t)
        L.nover -= 1
    L.best = _find_prev(L, L.cap - 1)


cdef int _ladder_grow(tw_ladder *L) noexcept nogil:
    """Double an L2 side's window, the best three quarters up as after a move: the window's
    levels are copied over and the far levels that fall inside the larger window come into it.
    O(new window / 64 + levels moved); TW_OK, or TW_REJ_NO_MEMORY with the ladder unchanged."""
    cdef tw_ladder T
    cdef int64_t nb, s, t
    cdef int k
    _ladder_reset(&T, L.sign)
    if L.norders != NULL or _ladder_alloc(&T, 2 * L.cap, False) != 0:
        _ladder_release(&T)
        return TW_REJ_NO_MEMORY
    nb = _home_base(&T, L.base + L.best) if L.best >= 0 else L.base
    s = _find_next(L, 0)
    while s >= 0:                                 # (every level is at most the best: inside)
        t = L.base + s - nb
        T.qty[t] = L.qty[s]
        _bits_set(T.bits, t)
        s = _find_next(L, s + 1)
    free(L.qty)
    free(T.far_hint)                              # (the side keeps its hints: each is checked)
    L.qty = T.qty
    for k in range(TW_LADDER_LEVELS):
        free(L.bits[k])
        free(L.spare[k])
        L.bits[k] = T.bits[k]
        L.spare[k] = T.spare[k]
        L.nwords[k] = T.nwords[k]
    L.cap = T.cap
    L.base = nb
    _over_pull_in(L)
    return TW_OK


cdef inline int64_t _home_base(const tw_ladder *L, int64_t key) noexcept nogil:
    """Window base that puts ``key`` (the best) three quarters up, leaving room above it."""
    return key - (L.cap - (L.cap >> 2))


cdef inline void _win_add(tw_ladder *L, int64_t s) noexcept nogil:
    """A level appeared at window slot ``s`` (its qty already set)."""
    _bits_set(L.bits, s)
    L.nlevels += 1
    if s > L.best:
        L.best = s


cdef void tw_ladder_best_removed(tw_ladder *L, int64_t s) noexcept nogil:
    """The best level (slot ``s``) emptied: find the next one; follow it down if it sank low."""
    L.best = _find_prev(L, s - 1)
    _over_trim(L)                                 # (so that over[nover - 1] is a level)
    if L.nover > 0 and L.best < (L.cap >> 3):
        # the best sank to the bottom of the window: bring the window down after it
        _ladder_move(L, _home_base(L, L.base + L.best if L.best >= 0 else L.over[L.nover - 1].key))


cdef inline void _win_remove(tw_ladder *L, int64_t s) noexcept nogil:
    """The level at window slot ``s`` emptied (its qty already 0)."""
    _bits_clear(L.bits, s)
    L.nlevels -= 1
    if s == L.best:
        tw_ladder_best_removed(L, s)


cdef void tw_ladder_bits_carry(uint64_t **bits, int64_t s, bint now) noexcept nogil:
    """Level-0 word of slot ``s`` turned empty (now=0) or non-empty (now=1): update the levels above."""
    if now:
        _bits_set(bits + 1, s >> 6)
    else:
        _bits_clear(bits + 1, s >> 6)


cdef inline int _ladder_make_room(tw_book *b, tw_ladder *L, int64_t key) noexcept nogil:
    """Before a new level at ``key`` outside the window: move the window when ``key`` should
    be in it (better than the window, an empty side, or a best near the bottom).  TW_OK."""
    cdef int64_t top
    if L.nlevels == 0:
        L.base = _home_base(L, key)           # empty side: nothing to move
        _ladder_fast_window(L)
        L.nover = 0                           # (dead entries only: they would be above the base)
        L.ndead = 0
        return TW_OK
    if key >= L.base + L.cap:
        return _ladder_move(L, _home_base(L, key))
    if L.best < (L.cap >> 3):
        top = L.base + L.best
        if key > top - L.cap + (L.cap >> 2):
            return _ladder_move(L, _home_base(L, top))
    return TW_OK


cdef inline bint _price_ok(const tw_book *b, int64_t price) noexcept nogil:
    return b.p.min_price <= price <= b.p.max_price


cdef inline bint _can_add_level(const tw_book *b, const tw_ladder *L) noexcept nogil:
    return L.nlevels < b.p.max_levels


cdef void _drop_worst(tw_ladder *L) noexcept nogil:
    """Remove the worst level of an L2 side (for max_depth)."""
    cdef int64_t s
    cdef Py_ssize_t i = 0
    if L.nover > L.ndead:
        while _dead(&L.over[i]):
            i += 1
        _over_kill(L, i)
    else:
        s = _find_next(L, 0)
        L.qty[s] = 0
        _win_remove(L, s)


# ---------------------------------------------------------------------------------------
# L2 operations
# ---------------------------------------------------------------------------------------

cdef int _l2_set_outside(tw_book *b, tw_ladder *L, int64_t price, int64_t key, int64_t qty) noexcept nogil:
    """tw_book_set_level for a key outside the window."""
    cdef Py_ssize_t i = 0, pos
    cdef int64_t base = L.base
    cdef int r
    cdef bint found = False
    cdef tw_level *lv
    if key < L.base and L.nlevels > 0:
        i = _over_find_hinted(L, key)
        found = True
        if i >= 0 and not _dead(&L.over[i]):         # an existing far level
            if qty != 0:
                L.over[i].qty = qty
            elif L.norders == NULL:
                _over_kill(L, i)
            else:
                _over_remove(L, i)
                L.nlevels -= 1
            return TW_OK
    if qty == 0:
        return TW_OK                                 # no such level: nothing to remove
    if not _price_ok(b, price):
        return TW_REJ_PRICE_RANGE
    if not _can_add_level(b, L):
        return TW_REJ_CAPACITY
    r = _ladder_make_room(b, L, key)
    if r != TW_OK:
        return r
    if <uint64_t>(key - L.base) < <uint64_t>L.cap:
        L.qty[key - L.base] = qty
        _win_add(L, key - L.base)
    else:
        if not found or L.base != base:              # (the search above holds while the window stays)
            i = _over_find(L, key)
        pos = -i - 1
        if i >= 0:                                   # a dead entry at this price
            lv = &L.over[i]
        elif pos > 0 and _dead(&L.over[pos - 1]):    # a dead neighbour (keys stay in order)
            lv = &L.over[pos - 1]
        elif pos < L.nover and _dead(&L.over[pos]):
            lv = &L.over[pos]
        else:
            lv = NULL
        if lv != NULL:
            lv.key = key
            L.ndead -= 1
        else:
            if _over_reserve(L, L.nover + 1) != TW_OK:
                return TW_REJ_NO_MEMORY
            lv = _over_insert(L, pos, key)
        lv.qty = qty
        L.nlevels += 1
    if b.p.max_depth and L.nlevels > b.p.max_depth:
        _drop_worst(L)
    return TW_OK


cdef inline int _set_level(tw_book *b, int side, int64_t price, int64_t qty) noexcept nogil:
    """tw_book_set_level, inlined into the batch loops; the window path is the hot one."""
    cdef tw_ladder *L
    cdef int64_t key, s
    if TW_UNLIKELY(<unsigned int>side > 1):
        return TW_REJ_BAD_SIDE
    if TW_UNLIKELY(qty < 0):
        return TW_REJ_BAD_QTY
    L = &b.side[side]
    key = L.sign * price
    s = key - L.base
    if TW_UNLIKELY(<uint64_t>s >= <uint64_t>L.cap):
        return _l2_set_outside(b, L, price, key, qty)
    if TW_UNLIKELY((1 - tw_ladder_has(L, s)) & (qty != 0)
                   & ((<uint64_t>price - <uint64_t>b.p.min_price > b.price_span) | (L.nlevels >= b.p.max_levels))):
        return TW_REJ_PRICE_RANGE if not _price_ok(b, price) else TW_REJ_CAPACITY
    tw_ladder_store(L, s, qty)
    if TW_UNLIKELY(b.p.max_depth != 0 and L.nlevels > b.p.max_depth):
        _drop_worst(L)
    return TW_OK


cdef int tw_book_set_level(tw_book *b, int side, int64_t price, int64_t qty) noexcept nogil:
    """Set the level at ``price`` to ``qty`` lots (absolute; 0 removes it)."""
    return _set_level(b, side, price, qty)


cdef int _delete_level(tw_book *b, int side, int64_t price) noexcept nogil:
    cdef tw_ladder *L
    if <unsigned int>side > 1:
        return TW_REJ_BAD_SIDE
    if tw_book_qty_at(b, side, price) == 0:
        return TW_REJ_UNKNOWN_LEVEL
    return tw_book_set_level(b, side, price, 0)


# ---------------------------------------------------------------------------------------
# L3 operations: an order pool with a free list and an id -> index hash map
# ---------------------------------------------------------------------------------------

cdef inline uint64_t _hash(uint64_t k, uint64_t key) noexcept nogil:
    """The first half of MurmurHash3's 64-bit finaliser, of ``k`` mixed with the book's random
    ``key``: order ids come from the feed, and with a fixed hash a publisher could choose ids that
    share one home slot (40,000 adds took 1.75 s instead of 5 ms: every add walked the whole
    cluster).  (The full finaliser's second multiply cost the engine's per-event L3 call 11%.)"""
    k ^= key
    k ^= k >> 33
    k *= <uint64_t>0xff51afd7ed558ccd
    k ^= k >> 33
    return k


cdef inline uint64_t _tag(const tw_book *b, uint64_t order_id) noexcept nogil:
    """The map tag of an id: the high half of its keyed hash (its low bits give the home slot)."""
    return _hash(order_id, b.hash_key) >> 32


cdef inline int32_t _entry_idx(uint64_t e) noexcept nogil:
    return <int32_t>(<uint32_t>e) - 1


cdef inline int64_t _map_slot(const tw_book *b, uint64_t order_id) noexcept nogil:
    """Map slot of a resting order, or -1 (also for id 0 and books without orders)."""
    cdef uint64_t t, i, e
    if b.map == NULL or order_id == 0:
        return -1
    t = _tag(b, order_id)
    i = t & b.map_mask
    while True:
        e = b.map[i]
        if e == 0:
            return -1
        if (e >> 32) == t and b.orders[_entry_idx(e)].id == order_id:
            return <int64_t>i
        i = (i + 1) & b.map_mask


cdef int32_t tw_book_find_order(const tw_book *b, uint64_t order_id) noexcept nogil:
    """Pool index of a resting order, or -1."""
    cdef int64_t i = _map_slot(b, order_id)
    return _entry_idx(b.map[i]) if i >= 0 else -1


cdef inline void _map_put(uint64_t *m, uint64_t mask, uint64_t tag, int32_t idx) noexcept nogil:
    cdef uint64_t i = tag & mask
    while m[i] != 0:
        i = (i + 1) & mask
    m[i] = (tag << 32) | <uint64_t>(<uint32_t>(idx + 1))


cdef void _map_remove_at(tw_book *b, uint64_t i) noexcept nogil:
    """Empty map slot ``i``, shifting later entries of its probe run back (no tombstones)."""
    cdef uint64_t mask = b.map_mask, j = i, home, e
    while True:
        j = (j + 1) & mask
        e = b.map[j]
        if e == 0:
            break
        home = (e >> 32) & mask
        # entry j may move to the hole at i unless its home lies cyclically in (i, j]
        if (i <= j and (home <= i or home > j)) or (i > j and home <= i and home > j):
            b.map[i] = e
            i = j
    b.map[i] = 0


cdef extern from *:
    """
    /* Order pool and map: large blocks read at random, one line per event.  On Linux those
       of 2 MB and more are mapped with transparent huge pages asked for (MADV_HUGEPAGE), so
       that a lookup does not also miss the TLB; smaller ones, and other systems, use calloc. */
    #include <stdlib.h>
    #if defined(__linux__)
    #  include <sys/mman.h>
    #endif
    #define TW_HUGE ((size_t)2 << 20)
    static int tw_huge_ok(size_t n) {
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        return n >= TW_HUGE;
    #else
        (void)n; return 0;
    #endif
    }
    static void *tw_big_alloc(size_t n) {           /* zeroed; NULL when out of memory */
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (tw_huge_ok(n)) {
            size_t sz = (n + TW_HUGE - 1) & ~(TW_HUGE - 1);
            void *p = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED)
                return NULL;
            madvise(p, sz, MADV_HUGEPAGE);      /* a hint: failure leaves 4 KB pages */
            return p;
        }
    #endif
        return calloc(1, n ? n : 1);
    }
    static void tw_big_free(void *p, size_t n) {    /* n: the size p was allocated with */
        if (p == NULL)
            return;
    #if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (tw_huge_ok(n)) {
            munmap(p, (n + TW_HUGE - 1) & ~(TW_HUGE - 1));
            return;
        }
    #endif
        free(p);
    }
    """
    void *tw_big_alloc(size_t n) noexcept nogil
    void tw_big_free(void *p, size_t n) noexcept nogil


cdef int _orders_reserve(tw_book *b, int64_t cap) noexcept nogil:
    """Grow the pool to ``cap`` orders and the map to twice that; rare, may allocate.
    Out of memory: TW_REJ_NO_MEMORY and the book as it was."""
    cdef tw_order *orders
    cdef uint64_t *m
    cdef uint64_t mcap = 16, i
    cdef int64_t k
    global _allocations
    _allocations += 1
    while mcap < <uint64_t>(2 * cap):
        mcap *= 2
    orders = <tw_order *>tw_big_alloc(cap * sizeof(tw_order))
    m = <uint64_t *>tw_big_alloc(mcap * sizeof(uint64_t))
    if orders == NULL or m == NULL:
        tw_big_free(orders, cap * sizeof(tw_order))
        tw_big_free(m, mcap * sizeof(uint64_t))
        return TW_REJ_NO_MEMORY
    if b.orders != NULL:
        memcpy(orders, b.orders, b.order_cap * sizeof(tw_order))
    tw_big_free(b.orders, b.order_cap * sizeof(tw_order))
    b.orders = orders
    if b.map != NULL:
        for i in range(b.map_mask + 1):
            if b.map[i] != 0:
                _map_put(m, mcap - 1, b.map[i] >> 32, _entry_idx(b.map[i]))
    tw_big_free(b.map, (b.map_mask + 1) * sizeof(uint64_t))
    b.map = m
    b.map_mask = mcap - 1
    # the new pool entries join the free list
    for k in range(cap - 1, b.order_cap - 1, -1):
        b.orders[k].next = b.free_head
        b.orders[k].id = 0
        b.free_head = <int32_t>k
    b.order_cap = cap
    return TW_OK


cdef struct _lvl:
    # pointers to one level's fields, wherever it lives (window slot or overflow entry)
    int64_t *qty
    int32_t *norders
    int32_t *head
    int32_t *tail
    int64_t slot                                  # window slot, or -1 in the overflow


cdef inline bint _lvl_find(tw_ladder *L, int64_t key, _lvl *v) noexcept nogil:
    """Point ``v`` at the existing level at ``key``; False when there is none."""
    cdef int64_t s = key - L.base
    cdef Py_ssize_t i
    memset(v, 0, sizeof(_lvl))
    v.slot = -1
    if <uint64_t>s < <uint64_t>L.cap:
        if L.norders[s] == 0:
            return False
        v.qty = &L.qty[s]
        v.norders = &L.norders[s]
        v.head = &L.head[s]
        v.tail = &L.tail[s]
        v.slot = s
        return True
    if key >= L.base:
        return False
    i = _over_find(L, key)
    if i < 0:
        return False
    v.qty = &L.over[i].qty
    v.norders = &L.over[i].norders
    v.head = &L.over[i].head
    v.tail = &L.over[i].tail
    v.slot = -1
    return True


cdef int _lvl_create(tw_book *b, tw_ladder *L, int64_t key, _lvl *v) noexcept nogil:
    """Make an empty level at ``key`` (none there yet) and point ``v`` at it."""
    cdef int r
    cdef Py_ssize_t i
    cdef int64_t s
    if not _can_add_level(b, L):
        return TW_REJ_CAPACITY
    s = key - L.base
    if <uint64_t>s >= <uint64_t>L.cap:
        r = _ladder_make_room(b, L, key)
        if r != TW_OK:
            return r
        s = key - L.base
    if <uint64_t>s < <uint64_t>L.cap:
        v.qty = &L.qty[s]
        v.norders = &L.norders[s]
        v.head = &L.head[s]
        v.tail = &L.tail[s]
        v.slot = s
        return TW_OK
    if _over_reserve(L, L.nover + 1) != TW_OK:
        return TW_REJ_NO_MEMORY
    i = -_over_find(L, key) - 1
    _over_insert(L, i, key)
    L.nlevels += 1
    v.qty = &L.over[i].qty
    v.norders = &L.over[i].norders
    v.head = &L.over[i].head
    v.tail = &L.over[i].tail
    v.slot = -1
    return TW_OK


cdef inline void _lvl_push(tw_book *b, tw_ladder *L, _lvl *v, int32_t idx) noexcept nogil:
    """Queue order ``idx`` at the back of level ``v``."""
    cdef tw_order *o = &b.orders[idx]
    o.next = -1
    if v.norders[0] == 0:
        o.prev = -1
        v.head[0] = idx
        v.tail[0] = idx
        v.qty[0] = o.qty
        v.norders[0] = 1
        if v.slot >= 0:
            _win_add(L, v.slot)
    else:
        o.prev = v.tail[0]
        b.orders[v.tail[0]].next = idx
        v.tail[0] = idx
        v.qty[0] += o.qty
        v.norders[0] += 1


cdef void _lvl_unlink(tw_book *b, tw_ladder *L, int32_t idx) noexcept nogil:
    """Take order ``idx`` out of its level, removing the level when it empties."""
    cdef tw_order *o = &b.orders[idx]
    cdef _lvl v
    cdef int64_t key = L.sign * o.price
    _lvl_find(L, key, &v)
    if o.prev >= 0:
        b.orders[o.prev].next = o.next
    else:
        v.head[0] = o.next
    if o.next >= 0:
        b.orders[o.next].prev = o.prev
    else:
        v.tail[0] = o.prev
    v.qty[0] -= o.qty
    v.norders[0] -= 1
    if v.norders[0] == 0:
        v.qty[0] = 0
        if v.slot >= 0:
            _win_remove(L, v.slot)
        else:
            _over_remove(L, _over_find(L, key))
            L.nlevels -= 1


cdef int _place_order(tw_book *b, tw_ladder *L, int32_t idx) noexcept nogil:
    """Queue order ``idx`` (price set) at the back of its level, creating the level; refused
    (TW_REJ_BAD_QTY) when the level's total would pass INT64_MAX."""
    cdef _lvl v
    cdef int r
    cdef int64_t key = L.sign * b.orders[idx].price
    if not _lvl_find(L, key, &v):
        r = _lvl_create(b, L, key, &v)
        if r != TW_OK:
            return r
    elif TW_UNLIKELY(v.qty[0] > INT64_MAX - b.orders[idx].qty):
        return TW_REJ_BAD_QTY
    _lvl_push(b, L, &v, idx)
    return TW_OK


cdef inline void _op_level(tw_book *b, int side, int64_t price, int64_t price2) noexcept nogil:
    """Record the level(s) an L3 order operation changes (tw_book.op_*)."""
    b.op_side = side
    b.op_price = price
    b.op_price2 = price2


cdef int tw_book_add_order(tw_book *b, uint64_t order_id, int side, int64_t price, int64_t qty,
                           int64_t ts) noexcept nogil:
    """Rest a new order at the back of the queue at ``price``."""
    cdef tw_ladder *L
    cdef int32_t idx, nxt
    cdef int r
    cdef tw_order *o
    if b.p.book_type != TW_BOOK_L3:
        return TW_REJ_BAD_KIND
    if <unsigned int>side > 1:
        return TW_REJ_BAD_SIDE
    if qty <= 0:
        return TW_REJ_BAD_QTY
    if order_id == 0:
        return TW_REJ_UNKNOWN_ORDER
    if not _price_ok(b, price):
        return TW_REJ_PRICE_RANGE
    if tw_book_find_order(b, order_id) >= 0:
        return TW_REJ_DUPLICATE_ORDER
    if b.free_head < 0:
        if b.order_cap >= b.p.max_orders:
            return TW_REJ_CAPACITY
        r = _orders_reserve(b, min(2 * b.order_cap, b.p.max_orders))
        if r != TW_OK:
            return r
    L = &b.side[side]
    idx = b.free_head
    o = &b.orders[idx]
    nxt = o.next
    o.price = price
    o.qty = qty
    r = _place_order(b, L, idx)
    if r != TW_OK:
        o.next = nxt
        return r
    b.free_head = nxt
    o.id = order_id
    o.ts = ts
    o.side = <uint8_t>side
    _op_level(b, side, price, TW_NO_PRICE)
    _map_put(b.map, b.map_mask, _tag(b, order_id), idx)
    b.norders += 1
    return TW_OK
cdef void _delete_at(tw_book *b, int64_t slot) noexcept nogil:
    """Remove the resting order at map slot ``slot``."""
    cdef int32_t idx = _entry_idx(b.map[slot])
    _op_level(b, b.orders[idx].side, b.orders[idx].price, TW_NO_PRICE)
    _lvl_unlink(b, &b.side[b.orders[idx].side], idx)
    _map_remove_at(b, <uint64_t>slot)
    b.orders[idx].next = b.free_head
    b.orders[idx].id = 0
    b.free_head = idx
    b.norders -= 1


cdef inline int _resting(const tw_book *b, uint64_t order_id, int64_t *slot) noexcept nogil:
    """The map slot of a resting order of an L3 book into ``slot``: TW_OK, or why not."""
    if b.p.book_type != TW_BOOK_L3:
        return TW_REJ_BAD_KIND
    slot[0] = _map_slot(b, order_id)
    return TW_OK if slot[0] >= 0 else TW_REJ_UNKNOWN_ORDER


cdef int tw_book_delete_order(tw_book *b, uint64_t order_id) noexcept nogil:
    """Remove a resting order."""
    cdef int64_t slot
    cdef int r = _resting(b, order_id, &slot)
    if r != TW_OK:
        return r
    _delete_at(b, slot)
    return TW_OK


cdef int tw_book_modify_order(tw_book *b, uint64_t order_id, int64_t price, int64_t qty,
                              int64_t ts) noexcept nogil:
    """New quantity and price for a resting order.

    A reduction at the same price keeps the order's place in the queue; a larger quantity
    or a new price sends it to the back of the (new) level.  Quantity 0 deletes it.
    """
    cdef int32_t idx
    cdef int64_t slot
    cdef tw_order *o
    cdef tw_ladder *L
    cdef _lvl v
    cdef int r = _resting(b, order_id, &slot)
    if r != TW_OK:
        return r
    if qty < 0:
        return TW_REJ_BAD_QTY
    if qty == 0:
        _delete_at(b, slot)
        return TW_OK
    idx = _entry_idx(b.map[slot])
    o = &b.orders[idx]
    L = &b.side[o.side]
    if price == o.price and qty <= o.qty:
        _lvl_find(L, L.sign * price, &v)
        v.qty[0] -= o.qty - qty
        o.qty = qty
        _op_level(b, o.side, price, TW_NO_PRICE)
        return TW_OK
    # check everything that could fail before the order leaves its level
    if price != o.price:
        if not _price_ok(b, price):
            return TW_REJ_PRICE_RANGE
        if not _lvl_find(L, L.sign * price, &v):
            if not _can_add_level(b, L):
                # a full side: the move is refused unless the order leaves a level it was alone at
                # (the count stays: the exchange's replace of such an order must not be lost)
                _lvl_find(L, L.sign * o.price, &v)
                if v.norders[0] != 1:
                    return TW_REJ_CAPACITY
        elif v.qty[0] > INT64_MAX - qty:
            return TW_REJ_BAD_QTY                 # the new level's total would pass INT64_MAX
        if _over_reserve(L, L.nlevels + 1) != TW_OK:
            return TW_REJ_NO_MEMORY
    else:
        _lvl_find(L, L.sign * price, &v)
        if v.qty[0] - o.qty > INT64_MAX - qty:
            return TW_REJ_BAD_QTY                 # the level's total would pass INT64_MAX
    _op_level(b, o.side, o.price, price if price != o.price else TW_NO_PRICE)
    _lvl_unlink(b, L, idx)
    o.price = price
    o.qty = qty
    o.ts = ts
    return _place_order(b, L, idx)


cdef int tw_book_execute_order(tw_book *b, uint64_t order_id, int64_t qty) noexcept nogil:
    """A trade against a resting order: reduce it by ``qty`` in place, removing it when filled."""
    cdef int64_t slot
    cdef tw_order *o
    cdef tw_ladder *L
    cdef _lvl v
    cdef int r = _resting(b, order_id, &slot)
    if r != TW_OK:
        return r
    if qty <= 0:
        return TW_REJ_BAD_QTY
    o = &b.orders[_entry_idx(b.map[slot])]
    if qty > o.qty:
        return TW_REJ_OVERFILL
    if qty == o.qty:
        _delete_at(b, slot)
        return TW_OK
    L = &b.side[o.side]
    _lvl_find(L, L.sign * o.price, &v)
    v.qty[0] -= qty
    o.qty -= qty
    _op_level(b, o.side, o.price, TW_NO_PRICE)
    return TW_OK


# ---------------------------------------------------------------------------------------
# Lifecycle, dispatch and queries
# ---------------------------------------------------------------------------------------

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    #if defined(__linux__)
    #include <sys/random.h>
    #endif
    /* A key for the order map's hash: from the kernel's random source, or failing that from the
       clock and an address (unknown to a publisher either way). */
    static uint64_t tw_random_key(const void *salt) {
        uint64_t k = 0;
    #if defined(__linux__)
        if (getrandom(&k, sizeof k, GRND_NONBLOCK) == (ssize_t)sizeof k)
            return k;
    #endif
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        k = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)salt;
        k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33;
        return k;
    }
    """
    uint64_t tw_random_key(const void *salt) noexcept nogil


cdef int tw_book_init(tw_book *b, const tw_book_params *p) noexcept nogil:
    """Initialise a zeroed or freed book; -1 when out of memory."""
    memset(b, 0, sizeof(tw_book))
    b.p = p[0]
    b.price_span = <uint64_t>p.max_price - <uint64_t>p.min_price
    if p.book_type != TW_BOOK_L2 or p.max_depth != 0:
        b.fast_mask, b.fast_want = 0, 1           # no fast path: every event through tw_book_apply_slow
    elif p.channel >= 0:
        b.fast_mask, b.fast_want = 0xffffffff, 0x10000 | <uint32_t>p.channel
    else:
        b.fast_mask, b.fast_want = 0xffff0000, 0x10000
    _ladder_reset(&b.side[TW_SIDE_BID], 1)
    _ladder_reset(&b.side[TW_SIDE_ASK], -1)
    b.free_head = -1
    b.in_sync = 1
    if (_ladder_alloc(&b.side[TW_SIDE_BID], p.window, p.book_type == TW_BOOK_L3) != 0
            or _ladder_alloc(&b.side[TW_SIDE_ASK], p.window, p.book_type == TW_BOOK_L3) != 0):
        tw_book_free(b)
        return -1
    # keys: price on the bid side, -price on the ask side (INT64_MIN has no negation: saturate)
    b.side[TW_SIDE_BID].key_lo = p.min_price
    b.side[TW_SIDE_BID].key_hi = p.max_price
    b.side[TW_SIDE_ASK].key_lo = -p.max_price if p.max_price != INT64_MIN else INT64_MAX
    b.side[TW_SIDE_ASK].key_hi = -p.min_price if p.min_price != INT64_MIN else INT64_MAX
    _ladder_fast_window(&b.side[TW_SIDE_BID])
    _ladder_fast_window(&b.side[TW_SIDE_ASK])
    if p.book_type == TW_BOOK_L3:
        b.hash_key = tw_random_key(b)
        if _orders_reserve(b, max(p.initial_orders, <int64_t>1)) != TW_OK:
            tw_book_free(b)
            return -1
    return 0


cdef void tw_book_free(tw_book *b) noexcept nogil:
    _ladder_release(&b.side[0])
    _ladder_release(&b.side[1])
    tw_big_free(b.orders, b.order_cap * sizeof(tw_order))
    tw_big_free(b.map, (b.map_mask + 1) * sizeof(uint64_t))
    b.orders = NULL
    b.map = NULL
    b.map_mask = 0
    b.order_cap = 0
    b.norders = 0
    b.free_head = -1


cdef void tw_book_clear(tw_book *b) noexcept nogil:
    """Empty both sides; O(levels + orders), keeps the allocations."""
    cdef int side
    cdef int64_t s, k
    cdef tw_ladder *L
    for side in range(2):
        L = &b.side[side]
        s = _find_next(L, 0)
        while s >= 0:
            L.qty[s] = 0
            if L.norders != NULL:
                L.norders[s] = 0
            _bits_clear(L.bits, s)
            s = _find_next(L, s + 1)
        L.nover = 0
        L.ndead = 0
        L.nlevels = 0
        L.best = -1
    if b.map != NULL:
        memset(b.map, 0, (b.map_mask + 1) * sizeof(uint64_t))
        b.free_head = -1
        for k in range(b.order_cap - 1, -1, -1):
            b.orders[k].next = b.free_head
            b.orders[k].id = 0
            b.free_head = <int32_t>k
        b.norders = 0


cdef int _apply_op(tw_book *b, const tw_event *ev) noexcept nogil:
    """Carry out one event (no accounting); TW_OK or the reject code."""
    cdef int kind = ev.kind
    if kind == TW_KIND_ADD or kind == TW_KIND_MODIFY:
        if b.p.book_type == TW_BOOK_L2:
            return _set_level(b, ev.side, ev.price, ev.qty)
        if kind == TW_KIND_ADD:
            return tw_book_add_order(b, ev.order_id, ev.side, ev.price, ev.qty, ev.ts_event)
        return tw_book_modify_order(b, ev.order_id, ev.price, ev.qty, ev.ts_event)
    if kind == TW_KIND_DELETE:
        if b.p.book_type == TW_BOOK_L2:
            return _delete_level(b, ev.side, ev.price)
        return tw_book_delete_order(b, ev.order_id)
    if kind == TW_KIND_TRADE:
        if ev.side > TW_SIDE_NONE:
            return TW_REJ_BAD_SIDE
        if ev.qty < 0:
            return TW_REJ_BAD_QTY
        if b.p.book_type == TW_BOOK_L3 and ev.order_id != 0:
            # an execution: its price 0 means the resting order's (ITCH sends none)
            if ev.price != 0 and not _price_ok(b, ev.price):
                return TW_REJ_PRICE_RANGE
            return tw_book_execute_order(b, ev.order_id, ev.qty)
        if not _price_ok(b, ev.price):         # a print outside the range would go into the VWAP
            return TW_REJ_PRICE_RANGE
        return TW_OK                           # a print: the book does not change
    if kind == TW_KIND_CLEAR:
        tw_book_clear(b)
        return TW_OK
    if kind == TW_KIND_SNAPSHOT:
        if ev.flags & TW_FLAG_STALE:
            b.in_sync = 0
        if ev.flags & TW_FLAG_SNAPSHOT_BEGIN:
            tw_book_clear(b)
            b.in_sync = 0
        if ev.flags & TW_FLAG_SNAPSHOT_END:
            b.in_sync = 1
        return TW_OK
    return TW_REJ_BAD_KIND


cdef int tw_book_apply_slow(tw_book *b, const tw_event *ev) noexcept nogil:
    """tw_book_apply_inline for every event its fast path does not take: kept out of line, so
    that the fast path stays small enough to inline into each loop that applies events (the
    books' own and the engine's)."""
    cdef int r
    if TW_UNLIKELY(b.p.channel >= 0 and ev.channel != b.p.channel):
        r = TW_REJ_WRONG_CHANNEL                # another channel's sequence: not this book's
    else:
        r = _apply_op(b, ev)
    return tw_book_account(b, ev, r)


cdef int tw_book_apply_far(tw_book *b, const tw_event *ev) noexcept nogil:
    """tw_book_apply_inline for an event its fast path took (an L2 level update that passed the
    kind, side, quantity and channel tests) whose slot is outside the window's part in the price
    range: outside the window straight to the far-level update, without the slow path's dispatch;
    inside it (a price out of range) to the slow path, which refuses a new level there."""
    cdef tw_ladder *L = &b.side[ev.side]
    cdef int64_t key = <int64_t>(<uint64_t>L.sign * <uint64_t>ev.price)     # (uint64: no int64 overflow)
    cdef int r
    if <uint64_t>key - <uint64_t>L.base < <uint64_t>L.cap:
        return tw_book_apply_slow(b, ev)
    r = tw_book_account(b, ev, _l2_set_outside(b, L, ev.price, key, ev.qty))
    L.far_count += 1
    if TW_UNLIKELY((L.far_count & (_FAR_PERIOD - 1)) == 0):
        # many updates outside the window: a larger one (a failed allocation leaves it as it is)
        if b.applied - L.far_mark < _FAR_PERIOD * _FAR_SHARE and L.cap < b.p.max_window:
            _ladder_grow(L)
        L.far_mark = b.applied
    return r


cdef int tw_book_apply(tw_book *b, const tw_event *ev) noexcept nogil:
    """Apply one canonical event; TW_OK or the reject code (also counted in b.rejects)."""
    return tw_book_apply_inline(b, ev)


cdef extern from *:
    """
    /* GCC 12 deletes __builtin_prefetch here (it treats the hint as side-effect free and
       drops it with the function it sits in), so on x86 it is a volatile asm */
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #  define TW_PREFETCH(p) __asm__ __volatile__("prefetcht0 %0" : : "m"(*(const char *)(p)))
    #elif defined(__GNUC__) || defined(__clang__)
    #  define TW_PREFETCH(p) __builtin_prefetch((const void *)(p))
    #else
    #  define TW_PREFETCH(p) ((void)(p))
    #endif
    """
    void TW_PREFETCH(const void *p) noexcept nogil


cdef inline void _prefetch_level(const tw_book *b, const tw_event *ev) noexcept nogil:
    """Start loading the window slot and occupancy word an L2 level update will read (a hint:
    nothing when the price is outside the window)."""
    cdef const tw_ladder *L
    cdef int64_t s
    if ev.side > 1 or ev.kind > TW_KIND_DELETE:
        return
    L = &b.side[ev.side]
    s = L.sign * ev.price - L.base
    if <uint64_t>s < <uint64_t>L.cap:
        TW_PREFETCH(&L.qty[s])
        TW_PREFETCH(&L.bits[0][s >> 6])


cdef inline void _prefetch(const tw_book *b, const tw_event *ev, int stage) noexcept nogil:
    """Start loading what applying ``ev`` to book ``b`` will touch first (a hint: no effect
    on the book, harmless when the book changes in between).  L3, stage 0: the id's map
    slot; stage 1, some events later when that line has arrived: the order record it points
    to or, for an add, the record of the level's last order (which the add links to).  L2,
    stage 1 only: the level's window slot and occupancy word."""
    cdef uint64_t t, e
    cdef int64_t s
    cdef const tw_ladder *L
    cdef const tw_order *o
    if b.p.book_type == TW_BOOK_L2:
        if stage == 1:
            _prefetch_level(b, ev)
        return
    if b.map == NULL or ev.order_id == 0:
        return
    t = _tag(b, ev.order_id)
    if stage == 0:
        TW_PREFETCH(&b.map[t & b.map_mask])
        return
    if ev.kind == TW_KIND_ADD:
        if ev.side > 1:
            return
        L = &b.side[ev.side]
        s = <int64_t>(<uint64_t>L.sign * <uint64_t>ev.price - <uint64_t>L.base)   # (uint64: no overflow)
        if <uint64_t>s < <uint64_t>L.cap and L.norders[s] != 0:
            TW_PREFETCH(&b.orders[L.tail[s]].next)
        return
    e = b.map[t & b.map_mask]
    if e != 0 and (e >> 32) == t:
        o = &b.orders[_entry_idx(e)]
        TW_PREFETCH(o)
        TW_PREFETCH(<const char *>(o + 1) - 1)          # a record may straddle two lines


cdef void tw_book_prefetch(const tw_book *b, const tw_event *ev, int stage) noexcept nogil:
    """_prefetch for callers that apply events one by one (see book.pxd)."""
    _prefetch(b, ev, stage)


cdef inline const tw_book *_book_of(const tw_bookset *s, const tw_event *ev) noexcept nogil:
    return s.books[ev.instrument] if ev.instrument < s.nbooks else NULL


cdef inline bint _route(tw_bookset *s, const tw_event *ev, uint8_t *status, Py_ssize_t i) noexcept nogil:
    """Apply ``ev`` to its instrument's book; its status into ``status[i]`` (unless NULL)."""
    cdef tw_book *b = s.books[ev.instrument] if ev.instrument < s.nbooks else NULL
    cdef int r
    if b != NULL:
        r = tw_book_apply_inline(b, ev)
    else:
        r = TW_REJ_UNKNOWN_INSTRUMENT
        s.unknown_instrument += 1
    if status != NULL:
        status[i] = <uint8_t>r
    return r == TW_OK


cdef bint _bookset_is_big(const tw_bookset *s) noexcept nogil:
    """True when the set's L2 levels are too many for the cache (_PREFETCH_LEVELS_MIN or more):
    prefetching the level ahead then hides a miss; on a smaller set every slot is already in
    cache and the prefetch only adds instructions."""
    cdef uint32_t k
    cdef int64_t n = 0
    for k in range(s.nbooks):
        if s.books[k] != NULL:
            n += s.books[k].side[0].nlevels + s.books[k].side[1].nlevels
            if n >= _PREFETCH_LEVELS_MIN:
                return True
    return False


cdef Py_ssize_t _bookset_apply_plain(tw_bookset *s, const tw_event *ev, Py_ssize_t n) noexcept nogil:
    """tw_bookset_apply's common case, a loop kept to the update itself (no prefetch, no
    status), with the set's fields in locals."""
    cdef Py_ssize_t i, applied = 0
    cdef tw_book **books = s.books
    cdef tw_book *b
    cdef uint32_t nbooks = s.nbooks
    for i in range(n):
        b = books[ev[i].instrument] if ev[i].instrument < nbooks else NULL
        if TW_LIKELY(b != NULL):
            applied += tw_book_apply_inline(b, &ev[i]) == TW_OK
        else:
            s.unknown_instrument += 1
    return applied


cdef Py_ssize_t tw_bookset_apply(tw_bookset *s, const tw_event *ev, Py_ssize_t n,
                                 uint8_t *status) noexcept nogil:
    """Route each event to its instrument's book; returns how many were applied.

    L3 books spend most of an event waiting for memory (an order's map slot, then its record,
    then its neighbours).  With L3 books in the set the loop prefetches the map slot of the
    event _PREFETCH_MAP ahead and the order record of the event _PREFETCH_ORDER ahead, so
    that the misses of several events overlap; a set of L2 books only prefetches the level slot
    and occupancy word of the event _PREFETCH_LEVEL ahead, and only when it holds more levels
    than the cache does (_bookset_is_big)."""
    cdef Py_ssize_t i, applied = 0, ahead
    cdef const tw_book *pb
    if s.nl3 == 0:
        # (ahead = 0 turns the prefetch off; a set with more books than the batch has events
        # is not counted, and prefetches)
        ahead = 0
        if n >= _PREFETCH_LEVEL * 8 and (s.nbooks > n or _bookset_is_big(s)):
            ahead = n - _PREFETCH_LEVEL
        if ahead == 0 and status == NULL:
            return _bookset_apply_plain(s, ev, n)
        for i in range(n):
            if i < ahead:
                pb = _book_of(s, &ev[i + _PREFETCH_LEVEL])
                if pb != NULL:
                    _prefetch_level(pb, &ev[i + _PREFETCH_LEVEL])
            applied += _route(s, &ev[i], status, i)
        return applied
    for i in range(n):
        if i + _PREFETCH_MAP < n:
            pb = _book_of(s, &ev[i + _PREFETCH_MAP])
            if pb != NULL:
                _prefetch(pb, &ev[i + _PREFETCH_MAP], 0)
        if i + _PREFETCH_ORDER < n:
            pb = _book_of(s, &ev[i + _PREFETCH_ORDER])
            if pb != NULL:
                _prefetch(pb, &ev[i + _PREFETCH_ORDER], 1)
        applied += _route(s, &ev[i], status, i)
    return applied


cdef Py_ssize_t _bookset_apply_top(tw_bookset *s, const tw_event *ev, Py_ssize_t n, uint8_t *status,
                                   int64_t *top, uint8_t *sync) noexcept nogil:
    """tw_bookset_apply, and after each event the top of its instrument's book into row i of
    ``top`` (best bid, best ask, their quantities) and whether that book is in sync.

    For the backtest report (one pass over history must know every mid): a separate loop so
    that tw_bookset_apply, the engine's path, stays as it is."""
    cdef Py_ssize_t i, applied = 0
    cdef tw_book *b
    cdef int r
    cdef int64_t *row
    for i in range(n):
        row = top + 4 * i
        b = s.books[ev[i].instrument] if ev[i].instrument < s.nbooks else NULL
        if b != NULL:
            r = tw_book_apply_inline(b, &ev[i])
            row[0] = tw_book_best_price(b, TW_SIDE_BID)
            row[1] = tw_book_best_price(b, TW_SIDE_ASK)
            row[2] = tw_book_best_qty(b, TW_SIDE_BID)
            row[3] = tw_book_best_qty(b, TW_SIDE_ASK)
            if sync != NULL:
                sync[i] = <uint8_t>(b.in_sync != 0)
        else:
            r = TW_REJ_UNKNOWN_INSTRUMENT
            s.unknown_instrument += 1
            row[0] = TW_NO_PRICE
            row[1] = TW_NO_PRICE
            row[2] = 0
            row[3] = 0
            if sync != NULL:
                sync[i] = 0
        applied += r == TW_OK
        if status != NULL:
            status[i] = <uint8_t>r
    return applied


cdef void tw_book_cursor(const tw_book *b, int side, tw_level_cursor *c) noexcept nogil:
    """Start walking ``side`` from its best level (see tw_book_cursor_next)."""
    c.slot = b.side[side].best
    c.over = b.side[side].nover - 1


cdef bint tw_book_cursor_next(const tw_book *b, int side, tw_level_cursor *c, int64_t *price,
                              int64_t *qty, int32_t *norders) noexcept nogil:
    """The next level from the best down (False when there are no more)."""
    cdef const tw_ladder *L = &b.side[side]
    cdef const tw_level *lv
    if c.slot >= 0:
        price[0] = L.sign * (L.base + c.slot)
        qty[0] = L.qty[c.slot]
        norders[0] = L.norders[c.slot] if L.norders != NULL else 0
        c.slot = _find_prev(L, c.slot - 1)
        return True
    while c.over >= 0 and _dead(&L.over[c.over]):
        c.over -= 1
    if c.over >= 0:
        lv = &L.over[c.over]
        price[0] = L.sign * lv.key
        qty[0] = lv.qty
        norders[0] = lv.norders
        c.over -= 1
        return True
    return False


cdef Py_ssize_t tw_book_levels(const tw_book *b, int side, int64_t *out, Py_ssize_t n) noexcept nogil:
    """Write up to ``n`` levels from the best as rows (price, qty, orders); returns the rows written.

    ``orders`` is the number of resting orders on an L3 book and 0 on an L2 book.
    """
    cdef tw_level_cursor c
    cdef Py_ssize_t k = 0
    cdef int64_t price, qty
    cdef int32_t norders
    tw_book_cursor(b, side, &c)
    while k < n and tw_book_cursor_next(b, side, &c, &price, &qty, &norders):
        out[3 * k] = price
        out[3 * k + 1] = qty
        out[3 * k + 2] = norders
        k += 1
    return k


cdef int64_t tw_book_qty_at(const tw_book *b, int side, int64_t price) noexcept nogil:
    """Quantity resting at ``price`` on ``side`` (0: no level)."""
    cdef const tw_ladder *L = &b.side[side]
    cdef int64_t key = <int64_t>(<uint64_t>L.sign * <uint64_t>price)         # (uint64: no int64 overflow)
    cdef int64_t s = <int64_t>(<uint64_t>key - <uint64_t>L.base)
    cdef Py_ssize_t i
    if <uint64_t>s < <uint64_t>L.cap:
        return L.qty[s]
    if key >= L.base:
        return 0
    i = _over_find(L, key)
    return L.over[i].qty if i >= 0 else 0


cdef extern from *:
    """
    /* Sums of level quantities (each 0..2**63-1): 128 bits cannot overflow (2**65 levels
       would).  _top_qty adds into two 64-bit halves, a carry into the high one: that compiled
       to fewer instructions per level than adding into an __int128. */
    typedef unsigned __int128 tw_u128;
    """
    ctypedef unsigned long long tw_u128   # (Cython only needs to know it is an unsigned integer)


cdef inline tw_u128 _top_qty(const tw_book *b, int side, Py_ssize_t k, int64_t *kth) noexcept nogil:
    """Exact total quantity of the best ``k`` levels of ``side``; ``kth`` (if not NULL) gets the
    price of the k-th level, or TW_NO_PRICE when the side has fewer than ``k`` levels.

    Walks the window's level-0 bitmap a word at a time (the top of a book is dense): the
    levels of one word come from that word in a register, each the highest bit left, so the
    next level does not wait for a load; it costs a few instructions a level."""
    cdef const tw_ladder *L = &b.side[side]
    cdef int64_t s = L.best, last = TW_NO_PRICE, w0, ls = -1
    cdef uint64_t lo = 0, hi = 0, q
    cdef Py_ssize_t n = 0, i
    cdef uint64_t m = 0
    if s >= 0:                                   # the best's word, the best and the levels below it
        m = L.bits[0][s >> 6] & ((~<uint64_t>0) >> (63 - (s & 63)))
    while s >= 0 and n < k:
        w0 = s & ~(<int64_t>63)
        while m != 0 and n < k:
            s = w0 | tw_msb64(m)
            m &= ~((<uint64_t>1) << (s & 63))
            q = <uint64_t>L.qty[s]
            lo += q
            hi += lo < q
            ls = s
            n += 1
        if n == k:
            break
        s = _find_prev(L, w0 - 1)                # the next non-empty word below
        if s >= 0:
            m = L.bits[0][s >> 6] & ((~<uint64_t>0) >> (63 - (s & 63)))
    if ls >= 0:
        last = L.sign * (L.base + ls)
    i = L.nover - 1
    while n < k and i >= 0:                                            # past the window
        if _dead(&L.over[i]):
            i -= 1
            continue
        q = <uint64_t>L.over[i].qty
        lo += q
        hi += lo < q
        last = L.sign * L.over[i].key
        n += 1
        i -= 1
    if kth != NULL:
        kth[0] = last if n == k else TW_NO_PRICE
    return ((<tw_u128>hi) << 64) | lo


cdef int64_t tw_book_top_qty(const tw_book *b, int side, Py_ssize_t k, int64_t *kth) noexcept nogil:
    """Total quantity of the best ``k`` levels of ``side``, saturating at INT64_MAX (each level
    fits in int64, their sum need not); ``kth`` as for _top_qty."""
    cdef tw_u128 total = _top_qty(b, side, k, kth)
    return <int64_t>total if total <= <uint64_t>INT64_MAX else INT64_MAX


cdef double tw_book_top_qty_d(const tw_book *b, int side, Py_ssize_t k, int64_t *kth) noexcept nogil:
    """tw_book_top_qty as a double: the exact sum, rounded once (no saturation)."""
    cdef tw_u128 total = _top_qty(b, side, k, kth)
    if TW_LIKELY(total <= <uint64_t>INT64_MAX):
        return <double><int64_t>total       # one instruction (a 128-bit conversion is a libgcc call)
    return <double>total


cdef int64_t tw_book_depth_qty(const tw_book *b, int side, Py_ssize_t k) noexcept nogil:
    """Total quantity of the best ``k`` levels of ``side`` (saturating at INT64_MAX)."""
    return tw_book_top_qty(b, side, k, NULL)


cdef double tw_book_imbalance(const tw_book *b, Py_ssize_t k) noexcept nogil:
    """(bid qty - ask qty) / (bid qty + ask qty) over the best ``k`` levels; NaN when both are empty."""
    cdef double qb = tw_book_top_qty_d(b, TW_SIDE_BID, k, NULL)
    cdef double qa = tw_book_top_qty_d(b, TW_SIDE_ASK, k, NULL)
    if qb + qa == 0.0:
        return NAN
    return (qb - qa) / (qb + qa)


cdef double tw_book_vwap_to_size(const tw_book *b, int side, int64_t qty) noexcept nogil:
    """Average price (ticks) to take ``qty`` lots from ``side``'s levels, best first.

    NaN when ``side`` holds less than ``qty`` or ``qty`` is not positive.
    """
    cdef tw_level_cursor c
    cdef int64_t price, lvl_qty, left = qty, take
    cdef int32_t norders
    cdef double notional = 0.0
    if qty <= 0:
        return NAN
    tw_book_cursor(b, side, &c)
    while left > 0 and tw_book_cursor_next(b, side, &c, &price, &lvl_qty, &norders):
        take = min(left, lvl_qty)
        notional += <double>take * <double>price
        left -= take
    if left > 0:
        return NAN
    return notional / <double>qty


# ---------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------

_REASONS = {
    TW_REJ_UNKNOWN_INSTRUMENT: "unknown instrument",
    TW_REJ_BAD_KIND: "event kind does not apply to this book",
    TW_REJ_BAD_SIDE: "side must be 0 (bid) or 1 (ask)",
    TW_REJ_BAD_QTY: ("quantity must not be negative, an order's must be positive, and a level's "
                     "total must stay within int64 (2**63-1 lots)"),
    TW_REJ_PRICE_RANGE: "price outside the book's range min_price..max_price",
    TW_REJ_UNKNOWN_ORDER: "no resting order with this id",
    TW_REJ_DUPLICATE_ORDER: "an order with this id is already resting",
    TW_REJ_OVERFILL: "execution larger than the order's remaining quantity",
    TW_REJ_UNKNOWN_LEVEL: "no level at this price",
    TW_REJ_CAPACITY: "the book is full (max_levels levels on the side, or max_orders orders)",
    TW_REJ_NO_MEMORY: "out of memory",
    TW_REJ_WRONG_CHANNEL: "the event's feed channel does not carry this instrument",
}


class BookError(ValueError):
    """An update a book refused; the book is unchanged.  ``reason`` is a :class:`Reject`."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = Reject(reason)


# -- arguments of the Python API: integers only, never a float's truncation ---------------

cdef object _integer(object x, str name, object lo, object hi):
    """``x`` as a Python int in ``lo..hi``; TypeError for anything that is not an integer
    (float, str, bool, None), ValueError out of range; both name the argument."""
    if isinstance(x, bool):
        raise TypeError(f"{name} must be an integer, got {x!r} (bool)")
    try:
        v = operator.index(x)                   # int and numpy integers; not float or Decimal
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {x!r} ({type(x).__name__})") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be within {'int64' if hi == INT64_MAX else f'{lo}..{hi}'}, got {v}")
    return v


cdef extern from *:
    """
    /* An exact int small enough that Cython's inline conversion to int64 cannot overflow: at
       most two 30-bit digits before CPython 3.12, a "compact" int (one digit) from 3.12 on. */
    static inline int tw_small_int(PyObject *x) {
    #if PY_VERSION_HEX >= 0x030C0000
        return PyLong_CheckExact(x) && _PyLong_IsCompact((PyLongObject *)x);
    #else
        return PyLong_CheckExact(x) && Py_SIZE(x) >= -2 && Py_SIZE(x) <= 2;
    #endif
    }
    """
    bint tw_small_int(object x)


cdef inline int64_t _int_arg(object x, str name) except? -1:
    """An int64 argument: a plain int on the fast path (a few instructions, inlined: it is
    paid on every per-event API call), _int_arg_slow for anything else."""
    if tw_small_int(x):
        return <int64_t>x
    return _int_arg_slow(x, name)


cdef int64_t _int_arg_slow(object x, str name) except? -1:
    cdef int overflow = 0
    cdef long long v
    if PyLong_CheckExact(x):
        v = PyLong_AsLongLongAndOverflow(x, &overflow)
        if overflow == 0:
            return v
    return _integer(x, name, -INT64_MAX - 1, INT64_MAX)


cdef inline uint64_t _id_arg(object x) except? 0:
    """An order id argument (uint64)."""
    cdef int64_t v
    if tw_small_int(x):
        v = <int64_t>x
        if v >= 0:
            return <uint64_t>v
    return _integer(x, "order_id", 0, 0xFFFFFFFFFFFFFFFF)


cdef inline int _side_code(object side) except? -1:
    """A side argument for an update: 0 and 1 as they are, any other integer as 2 (which
    the C functions refuse with TW_REJ_BAD_SIDE, counted like a batch's bad side)."""
    cdef int64_t s = _int_arg(side, "side")
    return <int>s if <uint64_t>s <= 1 else TW_SIDE_NONE


cdef int _side_arg(object side) except -1:
    """A side argument for a query: Side.BID or Side.ASK, ValueError otherwise."""
    cdef int64_t s = _int_arg(side, "side")
    if s != TW_SIDE_BID and s != TW_SIDE_ASK:
        raise ValueError(f"side must be Side.BID (0) or Side.ASK (1), got {side!r}")
    return <int>s


cdef const tw_event *_event_buffer(object events, Py_buffer *view) except NULL:
    """Borrow the memory of a C-contiguous, 8-byte aligned EVENT_DTYPE array (release with
    PyBuffer_Release)."""
    dt = getattr(events, "dtype", None)
    if dt is not EVENT_DTYPE and dt != EVENT_DTYPE:
        raise TypeError(f"events must be a numpy array of tickwire EVENT_DTYPE, got dtype {dt!r}")
    try:
        PyObject_GetBuffer(events, view, PyBUF_C_CONTIGUOUS)
    except (ValueError, BufferError) as exc:     # (numpy's bare "ndarray is not C-contiguous")
        raise ValueError(f"events: {exc}: a slice with a step, or a column of a wider array? "
                         f"np.ascontiguousarray(events) makes a contiguous copy") from None
    why = tw_misaligned(view.buf, view.len, "events", False)
    if why is not None:
        PyBuffer_Release(view)
        raise ValueError(why)
    return <const tw_event *>view.buf


cdef uint8_t *_status_buffer(object status, Py_ssize_t n, Py_buffer *view, str what="status") except? NULL:
    if status is None:
        return NULL
    if getattr(status, "dtype", None) != np.uint8:
        raise TypeError(f"{what} must be a numpy uint8 array")
    try:
        PyObject_GetBuffer(status, view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
    except (ValueError, BufferError) as exc:
        raise ValueError(f"{what} must be a writable, C-contiguous numpy uint8 array: {exc}") from None
    if view.len < n:
        PyBuffer_Release(view)
        raise ValueError(f"{what} holds {view.len} entries, the batch has {n} events")
    return <uint8_t *>view.buf


cdef class Book:
    """Common queries of :class:`L2Book` and :class:`L3Book` (not constructed directly).

    Prices are int64 ticks and quantities int64 lots.  Queries read the book in place:
    the best bid/ask is a load whatever the depth, and :meth:`levels` writes into a
    caller's array.
    """

    def __cinit__(self, *args, **kwargs):
        memset(&self.c, 0, sizeof(tw_book))
        _ladder_reset(&self.c.side[TW_SIDE_BID], 1)
        _ladder_reset(&self.c.side[TW_SIDE_ASK], -1)
        self.c.free_head = -1
        self.c.fast_want = 1                      # (no fast path until tw_book_init)

    def __dealloc__(self):
        tw_book_free(&self.c)

    cdef int _check(self, int code, object what) except -1:
        if code != TW_OK:
            raise BookError(code, f"instrument {self.c.p.instrument}: {what} refused: {_REASONS[code]}")
        return 0

    cdef int _idle(self, str what) except -1:
        """Refuse a change (``what``) while the book is in use elsewhere: a batch applying to it
        without the GIL (another thread's :meth:`apply`, or a :class:`BookSet`'s or an
        :class:`~tickwire.ext.pipeline.Engine`'s), or an engine batch with Python rules (which
        may read the book between events, not change it).  A re-initialisation then freed the
        memory the batch wrote into, two batches at once left the level counts wrong."""
        if self._busy:
            self._refuse(what)
        return 0

    cdef int _readable(self, str what) except -1:
        """Refuse a query (``what``) while a batch applies to the book without the GIL: it could
        read an array the batch had just moved.  (An engine batch with Python rules keeps the
        GIL and stops only between events: the book is whole, and its rules may read it.)
        Called right before the C code reads the book: converting an argument or allocating
        the result may let another thread run, and start a batch."""
        if self._busy == 1:
            self._refuse(what)
        return 0

    cdef int _refuse(self, str what) except -1:
        if self._busy == 2:
            raise RuntimeError(f"{type(self).__name__}.{what}: instrument {self.c.p.instrument}'s book is in an "
                               f"engine batch with Python rules; a rule may read the book, not change it")
        raise RuntimeError(f"{type(self).__name__}.{what}: instrument {self.c.p.instrument}'s book is being "
                           f"updated by a batch on another thread; a book is used by one thread at a time")

    def _setup(self, int book_type, instrument, min_price, max_price, window, max_levels,
               max_depth, max_orders, initial_orders, channel, max_window=None):
        """Check the constructor's arguments (each error names its argument) and allocate."""
        self._idle("__init__")
        cdef tw_book_params p
        instrument = _integer(instrument, "instrument", 0, 0xFFFFFFFF)
        min_price = _integer(min_price, "min_price", LOWEST_PRICE, DEFAULT_MAX_PRICE)
        max_price = _integer(max_price, "max_price", LOWEST_PRICE, DEFAULT_MAX_PRICE)
        window = _integer(window, "window", -INT64_MAX - 1, INT64_MAX)
        max_levels = _integer(max_levels, "max_levels", -INT64_MAX - 1, INT64_MAX)
        max_depth = _integer(max_depth, "max_depth", -INT64_MAX - 1, INT64_MAX)
        max_orders = _integer(max_orders, "max_orders", -INT64_MAX - 1, INT64_MAX)
        initial_orders = _integer(initial_orders, "initial_orders", -INT64_MAX - 1, INT64_MAX)
        channel = -1 if channel is None else _integer(channel, "channel", 0, 0xFFFF)
        if min_price > max_price:
            raise ValueError(f"min_price {min_price} is above max_price {max_price}")
        if not TW_WINDOW_MIN <= window <= TW_WINDOW_MAX or window & (window - 1):
            raise ValueError(f"window must be a power of two in {TW_WINDOW_MIN}..{TW_WINDOW_MAX}, got {window}")
        if max_window is None:
            max_window = max(window, DEFAULT_MAX_WINDOW) if book_type == TW_BOOK_L2 else window
        max_window = _integer(max_window, "max_window", -INT64_MAX - 1, INT64_MAX)
        if not window <= max_window <= TW_WINDOW_MAX or max_window & (max_window - 1):
            raise ValueError(f"max_window must be a power of two in window ({window})..{TW_WINDOW_MAX}, "
                             f"got {max_window}")
        if max_levels < 1:
            raise ValueError(f"max_levels must be >= 1, got {max_levels}")
        if max_depth < 0:
            raise ValueError(f"max_depth must be >= 0 (0: keep every level), got {max_depth}")
        if not 1 <= max_orders <= MAX_ORDERS_LIMIT:
            raise ValueError(f"max_orders must be 1..{MAX_ORDERS_LIMIT}, got {max_orders}")
        if initial_orders < 0:
            raise ValueError(f"initial_orders must be >= 0 (orders allocated up front), got {initial_orders}")
        memset(&p, 0, sizeof(p))
        p.instrument = instrument
        p.book_type = book_type
        p.min_price = min_price
        p.max_price = max_price
        p.window = window
        p.max_window = max_window
        p.max_levels = max_levels
        p.max_depth = max_depth
        p.max_orders = max_orders
        p.initial_orders = min(max(initial_orders, 1), max_orders)
        p.channel = channel
        tw_book_free(&self.c)
        if tw_book_init(&self.c, &p) != 0:
            raise MemoryError("could not allocate the order book")

    # -- batch ---------------------------------------------------------------------------
    def apply(self, events, status=None):
        """Apply a batch of canonical events in order; returns how many were applied.

        Parameters
        ----------
        events : numpy.ndarray
            C-contiguous array of :data:`~tickwire.ext.records.EVENT_DTYPE`.  Events for
            another instrument are rejected (``Reject.UNKNOWN_INSTRUMENT``).
        status : numpy.ndarray, optional
            uint8 array receiving each event's :class:`Reject` code (0: applied).

        Rejected events are counted in :attr:`rejects` and leave the book unchanged; the
        GIL is released for batches of 64 events or more.
        """
        cdef Py_buffer ev_view, st_view
        cdef const tw_event *ev = _event_buffer(events, &ev_view)
        cdef Py_ssize_t n = ev_view.len // sizeof(tw_event), i, applied = 0
        cdef uint8_t *st = NULL
        cdef int r
        try:
            self._idle("apply")
            st = _status_buffer(status, n, &st_view)
            if n >= _RELEASE_GIL_AT:
                self._busy = 1
                try:
                    with nogil:
                        applied = _book_apply_many(&self.c, ev, n, st)
                finally:
                    self._busy = 0
            else:
                applied = _book_apply_many(&self.c, ev, n, st)
        finally:
            PyBuffer_Release(&ev_view)
            if st != NULL:
                PyBuffer_Release(&st_view)
        return applied

    def clear(self):
        """Remove every level and order."""
        self._idle("clear")
        tw_book_clear(&self.c)

    # -- queries ---------------------------------------------------------------------------
    @property
    def instrument(self):
        """Instrument id this book serves."""
        return self.c.p.instrument

    @property
    def channel(self):
        """The feed channel whose events this book takes (None: any)."""
        return None if self.c.p.channel < 0 else self.c.p.channel

    @property
    def best_bid(self):
        """Best bid price in ticks, or None."""
        self._readable("best_bid")
        cdef int64_t p = tw_book_best_price(&self.c, TW_SIDE_BID)
        return None if p == TW_NO_PRICE else p

    @property
    def best_ask(self):
        """Best ask price in ticks, or None."""
        self._readable("best_ask")
        cdef int64_t p = tw_book_best_price(&self.c, TW_SIDE_ASK)
        return None if p == TW_NO_PRICE else p

    @property
    def best_bid_qty(self):
        """Quantity at the best bid in lots (0 when there is none)."""
        self._readable("best_bid_qty")
        return tw_book_best_qty(&self.c, TW_SIDE_BID)

    @property
    def best_ask_qty(self):
        """Quantity at the best ask in lots (0 when there is none)."""
        self._readable("best_ask_qty")
        return tw_book_best_qty(&self.c, TW_SIDE_ASK)

    def bbo(self):
        """``(bid, bid_qty, ask, ask_qty)``; a missing side gives ``None, 0``."""
        self._readable("bbo")
        cdef int64_t bid = tw_book_best_price(&self.c, TW_SIDE_BID)
        cdef int64_t ask = tw_book_best_price(&self.c, TW_SIDE_ASK)
        return (None if bid == TW_NO_PRICE else bid, tw_book_best_qty(&self.c, TW_SIDE_BID),
                None if ask == TW_NO_PRICE else ask, tw_book_best_qty(&self.c, TW_SIDE_ASK))

    def best_price(self, side):
        """Best price of ``side`` in ticks, or None."""
        cdef int sd = _side_arg(side)
        self._readable("best_price")
        cdef int64_t p = tw_book_best_price(&self.c, sd)
        return None if p == TW_NO_PRICE else p

    def best_qty(self, side):
        """Quantity at the best price of ``side`` (0 when empty)."""
        cdef int sd = _side_arg(side)
        self._readable("best_qty")
        return tw_book_best_qty(&self.c, sd)

    def level_count(self, side):
        """Number of price levels on ``side``."""
        cdef int sd = _side_arg(side)
        self._readable("level_count")
        return self.c.side[sd].nlevels

    def qty_at(self, side, price):
        """Quantity resting at ``price`` on ``side`` (0: no level)."""
        cdef int sd = _side_arg(side)
        cdef int64_t p = _int_arg(price, "price")
        self._readable("qty_at")
        return tw_book_qty_at(&self.c, sd, p)

    def levels(self, side, n=None, out=None):
        """The best ``n`` levels of ``side`` as rows ``(price, qty, orders)``, best first.

        Parameters
        ----------
        side : Side
        n : int, optional
            How many levels at most; default all (or ``len(out)``).
        out : numpy.ndarray, optional
            C-contiguous int64 array of shape ``(m, 3)`` to write into, reused across
            calls so that no memory is allocated.

        Returns
        -------
        numpy.ndarray
            ``out[:k]`` (a view) where ``k`` is the number of levels written.  ``orders``
            is the order count on an L3 book and 0 on an L2 book.
        """
        self._readable("levels")
        cdef int s = _side_arg(side)
        cdef int64_t[:, ::1] view
        cdef Py_ssize_t k, cap
        if out is None:
            cap = self.c.side[s].nlevels if n is None else min(<Py_ssize_t>n, self.c.side[s].nlevels)
            out = np.empty((max(cap, 0), 3), dtype=np.int64)
        view = out
        if view.shape[1] != 3:
            raise ValueError(f"out must have shape (n, 3), got {out.shape}")
        cap = view.shape[0] if n is None else min(<Py_ssize_t>n, view.shape[0])
        if cap <= 0:
            return out[:0]
        self._readable("levels")                    # (again: the allocation may have let a batch start)
        k = tw_book_levels(&self.c, s, &view[0, 0], cap)
        return out[:k]

    @property
    def spread(self):
        """Best ask minus best bid in ticks, None without both sides (negative when crossed)."""
        self._readable("spread")
        cdef int64_t sp = tw_book_spread(&self.c)
        return None if sp == TW_NO_PRICE else sp

    @property
    def mid(self):
        """Mid price in ticks (float; NaN without both sides)."""
        self._readable("mid")
        return tw_book_mid(&self.c)

    @property
    def microprice(self):
        """Size-weighted mid in ticks (float; NaN without both sides)."""
        self._readable("microprice")
        return tw_book_microprice(&self.c)

    def imbalance(self, k=1):
        """(bid qty - ask qty) / (bid qty + ask qty) over the best ``k`` levels of each side.

        The sums are exact (no overflow however large the levels); NaN when both sides are empty.
        """
        cdef int64_t n = _int_arg(k, "k")
        if n < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self._readable("imbalance")
        return tw_book_imbalance(&self.c, n)

    def depth_qty(self, side, k):
        """Total quantity of the best ``k`` levels of ``side``: exact, a Python int (it may
        pass 2**63-1; the C API's tw_book_depth_qty saturates there)."""
        cdef int s = _side_arg(side)
        cdef int64_t n = _int_arg(k, "k")
        self._readable("depth_qty")
        return int(_top_qty(&self.c, s, max(n, 0), NULL))

    def vwap_to_size(self, side, qty):
        """Average price (ticks) to take ``qty`` lots from ``side``, best level first.

        A buy takes from ``Side.ASK``, a sell from ``Side.BID``.  NaN when ``side``
        holds less than ``qty``.
        """
        cdef int64_t q = _int_arg(qty, "qty")
        cdef int sd = _side_arg(side)
        if q <= 0:
            raise ValueError(f"qty must be positive, got {qty}")
        self._readable("vwap_to_size")
        return tw_book_vwap_to_size(&self.c, sd, q)

    @property
    def crossed(self):
        """Best bid above best ask."""
        self._readable("crossed")
        return tw_book_has_bbo(&self.c) and tw_book_spread(&self.c) < 0

    @property
    def locked(self):
        """Best bid equal to best ask."""
        self._readable("locked")
        return tw_book_has_bbo(&self.c) and tw_book_spread(&self.c) == 0

    @property
    def applied(self):
        """Events applied since the book was made."""
        return self.c.applied

    @property
    def rejects(self):
        """Rejected events by reason: ``{Reject.X.name: count}`` for the non-zero ones."""
        return {Reject(i).name: self.c.rejects[i] for i in range(1, TW_REJ_COUNT) if self.c.rejects[i]}

    @property
    def last_seq(self):
        """Sequence number of the last applied event."""
        return self.c.last_seq

    @property
    def last_ts_event(self):
        """Event time (ns) of the last applied event."""
        return self.c.last_ts_event

    @property
    def in_sync(self):
        """False after a STALE or snapshot BEGIN marker, until a snapshot END marker."""
        return bool(self.c.in_sync)

    def snapshot_events(self, seq=0, ts=0):
        """The whole book as canonical events: a snapshot another book can apply to become equal.

        ``[SNAPSHOT BEGIN] + one ADD per level (L2) or per order in queue order (L3) +
        [SNAPSHOT END | LAST]``, every event carrying ``seq`` and ``ts`` (and Flag.SNAPSHOT) and
        channel 0 (a receiver stamps its own; to apply them to a book made for a channel, set
        their ``channel``). Levels come best first, bids then asks; an L3 order rebuilt from them
        has ``ts`` for its own time (the queues keep the order).
        """
        seq = _integer(seq, "seq", 0, 0xFFFFFFFFFFFFFFFF)     # (a float was truncated)
        ts = _integer(ts, "ts", -INT64_MAX - 1, INT64_MAX)
        cdef tw_book *b = &self.c
        cdef Py_ssize_t n = -1
        while True:
            # the allocation may let another thread run, and change the book: the events are
            # written only once the count, read again with the GIL held, still fits them
            self._readable("snapshot_events")
            if n == _snapshot_len(b):
                return _fill_snapshot(b, out, seq, ts)
            n = _snapshot_len(b)
            out = np.zeros(n, dtype=EVENT_DTYPE)

    @property
    def window(self):
        """Slots of the dense window per side it was made with."""
        return self.c.p.window

    @property
    def max_window(self):
        """Slots the window of a side may grow to (L2; an L3 book's stays at ``window``)."""
        return self.c.p.max_window

    @property
    def max_levels(self):
        """Most levels per side."""
        return self.c.p.max_levels

    @property
    def min_price(self):
        return self.c.p.min_price

    @property
    def max_price(self):
        return self.c.p.max_price

    def state(self):
        """Every level of both sides as ``(bids, asks)`` lists of ``(price, qty)``, best first."""
        self._readable("state")
        return ([(int(r[0]), int(r[1])) for r in self.levels(TW_SIDE_BID)],
                [(int(r[0]), int(r[1])) for r in self.levels(TW_SIDE_ASK)])

    def _layout(self, side):
        """``(window_low_price, window_high_price, levels_in_window, levels_in_overflow)``
        of one side, for tests and diagnostics."""
        cdef int sd = _side_arg(side)
        self._readable("_layout")
        cdef tw_ladder *L = &self.c.side[sd]
        lo, hi = L.sign * L.base, L.sign * (L.base + L.cap - 1)
        cdef int64_t nwin = 0, k
        for k in range(L.nwords[0]):
            nwin += tw_popcount64(L.bits[0][k])
        return min(lo, hi), max(lo, hi), nwin, L.nover - L.ndead


cdef Py_ssize_t _book_apply_many(tw_book *b, const tw_event *ev, Py_ssize_t n, uint8_t *status) noexcept nogil:
    """Book.apply's loop: the engine's per-event update (tw_book_apply_inline), events of other instruments refused."""
    cdef Py_ssize_t i, applied = 0
    cdef int r
    for i in range(n):
        if ev[i].instrument == b.p.instrument:
            r = tw_book_apply_inline(b, &ev[i])
        else:
            r = TW_REJ_UNKNOWN_INSTRUMENT
            b.rejects[r] += 1
        applied += r == TW_OK
        if status != NULL:
            status[i] = <uint8_t>r
    return applied


cdef class L2Book(Book):
    """L2Book(instrument=0, *, max_depth=0, min_price=DEFAULT_MIN_PRICE, max_price=DEFAULT_MAX_PRICE, window=DEFAULT_WINDOW, max_levels=DEFAULT_MAX_LEVELS, channel=None, max_window=None)

    A price-level book: each level is a price and its total quantity.

    Parameters
    ----------
    instrument : int
        Instrument id (routes events in a :class:`BookSet`).
    max_depth : int
        Keep at most this many levels per side, dropping the worst when a new level
        arrives (what exchanges with a subscribed depth expect); 0 keeps all.
    min_price, max_price : int
        Accepted prices in ticks; others are rejected (``Reject.PRICE_RANGE``).
    window : int
        Price slots (ticks) of the dense window that follows the best price on each side: a
        power of two, 8 bytes per slot.  Updates inside it cost O(1); levels farther from
        the best live in a sorted overflow array, so any spread of prices is held.
    max_window : int, optional
        A side's window doubles, up to this many slots, while more than 1 in 256 of the book's
        updates fall outside it (a feed that keeps updating levels far from the best, as
        Binance's 1,000-level depth does): a power of two, at least ``window``.  Default
        ``max(window, 2**20)`` (8 MiB a side at most); ``window`` keeps the window fixed.
    max_levels : int
        Most levels per side; a new level beyond it is rejected (``Reject.CAPACITY``).
    channel : int, optional
        The feed channel that carries the instrument: events stamped with another channel
        are rejected (``Reject.WRONG_CHANNEL``), so a publisher that puts an instrument on
        the wrong channel cannot move its book outside that channel's sequence. None (the
        default) accepts any channel.
    """

    @cython.embedsignature(False)    # (written above: Cython 3.3 put the class's '*' one argument late)
    def __init__(self, instrument=0, *, max_depth=0, min_price=DEFAULT_MIN_PRICE,
                 max_price=DEFAULT_MAX_PRICE, window=DEFAULT_WINDOW, max_levels=DEFAULT_MAX_LEVELS,
                 channel=None, max_window=None):
        self._setup(TW_BOOK_L2, instrument, min_price, max_price, window, max_levels, max_depth, 1, 16,
                    channel, max_window)

    @property
    def max_depth(self):
        return self.c.p.max_depth

    def set(self, side, price, qty):
        """Set the level at ``price`` to ``qty`` lots (absolute); 0 removes the level.

        Raises :class:`BookError` (the book unchanged) for a bad side, a negative quantity
        or a price outside the book's range; TypeError for an argument that is not an
        integer (a float price is refused, never truncated).
        """
        self._idle("set")
        cdef int r = tw_book_set_level(&self.c, _side_code(side), _int_arg(price, "price"),
                                       _int_arg(qty, "qty"))
        if r != TW_OK:
            self.c.rejects[r] += 1
            self._check(r, f"set side={side} price={price} qty={qty}")
        else:
            self.c.applied += 1

    def delete(self, side, price):
        """Remove the level at ``price``; :class:`BookError` when there is none."""
        self._idle("delete")
        cdef int r = _delete_level(&self.c, _side_code(side), _int_arg(price, "price"))
        if r != TW_OK:
            self.c.rejects[r] += 1
            self._check(r, f"delete side={side} price={price}")
        else:
            self.c.applied += 1

    def __repr__(self):
        return (f"L2Book(instrument={self.c.p.instrument}, bid={self.best_bid}x{self.best_bid_qty}, "
                f"ask={self.best_ask}x{self.best_ask_qty}, levels={self.c.side[0].nlevels}/"
                f"{self.c.side[1].nlevels})")


cdef class L3Book(Book):
    """L3Book(instrument=0, *, min_price=DEFAULT_MIN_PRICE, max_price=DEFAULT_MAX_PRICE, window=DEFAULT_WINDOW, max_levels=DEFAULT_MAX_LEVELS, max_orders=0x1000000, initial_orders=4096, channel=None)

    An order-by-order book: FIFO queues of orders at each price, so queue position is known.

    Parameters
    ----------
    instrument : int
    min_price, max_price, window, max_levels, channel : int
        As for :class:`L2Book` (the window holds 20 bytes per slot here).
    max_orders : int
        Most resting orders; an add beyond it is rejected (``Reject.CAPACITY``).
    initial_orders : int
        Orders allocated up front (>= 0; at least one is, at most ``max_orders``); the pool
        doubles when full (the only allocation).

    A level's total quantity must stay within int64: an add or modify that would take it past
    2**63-1 lots is refused (``Reject.BAD_QTY``).
    """

    @cython.embedsignature(False)    # (written above, as L2Book's)
    def __init__(self, instrument=0, *, min_price=DEFAULT_MIN_PRICE, max_price=DEFAULT_MAX_PRICE,
                 window=DEFAULT_WINDOW, max_levels=DEFAULT_MAX_LEVELS, max_orders=1 << 24,
                 initial_orders=4096, channel=None):
        self._setup(TW_BOOK_L3, instrument, min_price, max_price, window, max_levels, 0,
                    max_orders, initial_orders, channel)

    def add(self, order_id, side, price, qty, ts=0):
        """Rest a new order at the back of the queue at ``price``.

        Every argument is an integer (TypeError otherwise); order id 0 is never valid."""
        self._idle("add")
        cdef uint64_t oid = _id_arg(order_id)
        cdef int r = tw_book_add_order(&self.c, oid, _side_code(side), _int_arg(price, "price"),
                                       _int_arg(qty, "qty"), _int_arg(ts, "ts"))
        self._count(r, "add", oid)

    def modify(self, order_id, qty, price=None, ts=0):
        """Change an order's quantity (and price).

        A smaller quantity at the same price keeps the order's queue position; a larger one
        or a new price sends it to the back.  Quantity 0 deletes the order.
        """
        self._idle("modify")
        cdef uint64_t oid = _id_arg(order_id)
        cdef int64_t q = _int_arg(qty, "qty"), t = _int_arg(ts, "ts")
        cdef int32_t idx = tw_book_find_order(&self.c, oid)
        cdef int64_t px = 0
        if price is not None:
            px = _int_arg(price, "price")
        elif idx >= 0:
            px = self.c.orders[idx].price
        self._count(tw_book_modify_order(&self.c, oid, px, q, t), "modify", oid)

    def delete(self, order_id):
        """Remove a resting order."""
        self._idle("delete")
        cdef uint64_t oid = _id_arg(order_id)
        self._count(tw_book_delete_order(&self.c, oid), "delete", oid)

    def execute(self, order_id, qty):
        """Fill ``qty`` lots of a resting order (keeps its place; removes it when filled)."""
        self._idle("execute")
        cdef uint64_t oid = _id_arg(order_id)
        self._count(tw_book_execute_order(&self.c, oid, _int_arg(qty, "qty")), "execute", oid)

    cdef int _count(self, int r, str op, uint64_t order_id) except -1:
        if r == TW_OK:
            self.c.applied += 1
            return 0
        self.c.rejects[r] += 1
        if r == TW_REJ_UNKNOWN_ORDER and order_id == 0:
            raise BookError(r, f"instrument {self.c.p.instrument}: {op} order 0 refused: "
                               "order id 0 is never valid (0 means no order)")
        return self._check(r, f"{op} order {order_id}")

    @property
    def order_count(self):
        """Resting orders."""
        return self.c.norders

    def order(self, order_id):
        """``(side, price, qty, ts)`` of a resting order, or None."""
        cdef uint64_t oid = _id_arg(order_id)
        self._readable("order")
        cdef int32_t idx = tw_book_find_order(&self.c, oid)
        cdef tw_order *o
        if idx < 0:
            return None
        o = &self.c.orders[idx]
        return (Side(o.side), o.price, o.qty, o.ts)

    def queue_position(self, order_id):
        """``(orders_ahead, qty_ahead)`` of a resting order in its level's FIFO, or None."""
        cdef uint64_t oid = _id_arg(order_id)
        self._readable("queue_position")
        cdef int32_t idx = tw_book_find_order(&self.c, oid)
        cdef int64_t ahead = 0, qty = 0
        if idx < 0:
            return None
        idx = self.c.orders[idx].prev
        while idx >= 0:
            ahead += 1
            qty += self.c.orders[idx].qty
            idx = self.c.orders[idx].prev
        return ahead, qty

    def orders_at(self, side, price):
        """Orders resting at ``price`` in queue order, as an int64/uint64 array of rows
        ``(order_id, qty)`` (order ids as unsigned)."""
        cdef int s = _side_arg(side)
        cdef int64_t p = _int_arg(price, "price")
        cdef tw_ladder *L = &self.c.side[s]
        cdef _lvl lv
        cdef int32_t idx, n
        cdef Py_ssize_t k = 0
        cdef uint64_t[:, ::1] v
        while True:
            self._readable("orders_at")
            if not _lvl_find(L, L.sign * p, &lv):
                return np.empty((0, 2), dtype=np.uint64)
            n = lv.norders[0]
            out = np.empty((n, 2), dtype=np.uint64)
            # the allocation may have let another thread change the book: walk it only as it
            # was counted (the GIL is held from here on)
            self._readable("orders_at")
            if _lvl_find(L, L.sign * p, &lv) and lv.norders[0] == n:
                break
        v = out
        idx = lv.head[0]
        while idx >= 0:
            v[k, 0] = self.c.orders[idx].id
            v[k, 1] = <uint64_t>self.c.orders[idx].qty
            k += 1
            idx = self.c.orders[idx].next
        return out

    def __repr__(self):
        return (f"L3Book(instrument={self.c.p.instrument}, bid={self.best_bid}x{self.best_bid_qty}, "
                f"ask={self.best_ask}x{self.best_ask_qty}, orders={self.c.norders})")


cdef class BookSet:
    """The books of many instruments; :meth:`apply` routes each event by its instrument id.

    Parameters
    ----------
    books : iterable of Book
        One book per instrument id (ids need not be contiguous, but the routing table is
        as long as the largest id).
    """

    def __cinit__(self, *args, **kwargs):
        self.c.books = NULL
        self.c.nbooks = 0
        self.c.nl3 = 0
        self.c.unknown_instrument = 0

    def __init__(self, books):
        if self.c.books != NULL:
            # (an engine's BookSet re-initialised under it, from a rule or between batches, left it
            # routing through a freed table: a segfault, an adversarial pass)
            raise RuntimeError("BookSet.__init__: this BookSet is initialised already; make a new one")
        books = list(books)
        ids = {}
        for b in books:
            if not isinstance(b, Book):
                raise TypeError(f"BookSet takes L2Book/L3Book objects, got {type(b).__name__}")
            if b.instrument in ids:
                raise ValueError(f"two books for instrument id {b.instrument}")
            ids[b.instrument] = b
        n = max(ids) + 1 if ids else 0
        if n > 1 << 24:
            raise ValueError(f"instrument ids must be below 2**24, got {n - 1}")
        self.c.books = <tw_book **>calloc(max(n, 1), sizeof(tw_book *))
        if self.c.books == NULL:
            raise MemoryError()
        self.c.nbooks = n
        for i, b in ids.items():
            self.c.books[i] = &(<Book>b).c
            self.c.nl3 += (<Book>b).c.p.book_type == TW_BOOK_L3
        self._books = [ids[i] for i in sorted(ids)]
        self._by_id = ids

    def __dealloc__(self):
        free(self.c.books)

    cdef int _hold(self, int busy) except -1:
        """Mark every book of the set busy around a batch, or not (0), after checking that none
        is busy already (another thread's batch): 1 for a batch that runs without the GIL, 2 for
        an engine batch with Python rules (they may let other threads run while they hold the
        GIL, and read the books, but not change them).  (A batch short enough to keep the GIL,
        with no Python code in it, is not guarded: one thread at a time, as docs/books.md says.)"""
        cdef Book b
        if busy:
            for b in self._books:
                b._idle("apply (through a BookSet)")
        for b in self._books:
            b._busy = busy
        self._held = busy
        return 0

    def apply(self, events, status=None):
        """Apply a batch of events, each to its instrument's book; returns how many were applied.

        Same contract as :meth:`Book.apply`; events for instruments without a book are
        rejected and counted in :attr:`unknown_instrument`.
        """
        cdef Py_buffer ev_view, st_view
        cdef const tw_event *ev = _event_buffer(events, &ev_view)
        cdef Py_ssize_t n = ev_view.len // sizeof(tw_event), applied = 0
        cdef uint8_t *st = NULL
        try:
            st = _status_buffer(status, n, &st_view)
            if n >= _RELEASE_GIL_AT:
                self._hold(1)
                try:
                    with nogil:
                        applied = tw_bookset_apply(&self.c, ev, n, st)
                finally:
                    self._hold(0)
            else:
                if self._held:                        # (an engine's batch holds the set: refused)
                    self._hold(1)
                applied = tw_bookset_apply(&self.c, ev, n, st)
        finally:
            PyBuffer_Release(&ev_view)
            if st != NULL:
                PyBuffer_Release(&st_view)
        return applied

    def apply_top(self, events, top, status=None, in_sync=None):
        """Apply a batch like :meth:`apply`, writing the top of book after each event.

        Parameters
        ----------
        events : numpy.ndarray
            C-contiguous array of :data:`~tickwire.ext.records.EVENT_DTYPE`.
        top : numpy.ndarray
            C-contiguous int64 array of shape ``(len(events), 4)`` (or more rows): row ``i``
            receives the best bid and best ask prices (``TW_NO_PRICE``, the most negative
            int64, for an empty side) and their quantities (0 when empty) of event ``i``'s
            instrument's book just after event ``i``, whether or not the event was applied.
            An event for an instrument without a book gets an empty row.
        status : numpy.ndarray, optional
            uint8 array receiving each event's :class:`Reject` code (0: applied).
        in_sync : numpy.ndarray, optional
            uint8 array receiving 1 where that book is in sync after the event, else 0
            (stale, or between a snapshot's BEGIN and END markers).

        Returns
        -------
        int
            How many events were applied.  The books end exactly as :meth:`apply` leaves
            them; this is the per-event top of book of the backtest report
            (:mod:`tickwire.replay.report`), one C loop instead of a query per event.
        """
        cdef Py_buffer ev_view, top_view, st_view, sy_view
        cdef const tw_event *ev = _event_buffer(events, &ev_view)
        cdef Py_ssize_t n = ev_view.len // sizeof(tw_event), applied = 0
        cdef uint8_t *st = NULL
        cdef uint8_t *sy = NULL
        cdef int64_t *tp = NULL
        try:
            if getattr(top, "dtype", None) != np.int64 or getattr(top, "ndim", 0) != 2 or top.shape[1] != 4:
                raise TypeError("top must be an int64 numpy array of shape (n, 4)")
            PyObject_GetBuffer(top, &top_view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
            tp = <int64_t *>top_view.buf
            if top_view.len < n * 4 * <Py_ssize_t>sizeof(int64_t):
                raise ValueError(f"top holds {top.shape[0]} rows, the batch has {n} events")
            why = tw_misaligned(tp, n, "top", True)
            if why is not None:
                raise ValueError(why)
            st = _status_buffer(status, n, &st_view)
            if in_sync is not None:
                if getattr(in_sync, "dtype", None) != np.uint8:
                    raise TypeError("in_sync must be a numpy uint8 array")
                sy = _status_buffer(in_sync, n, &sy_view, "in_sync")
            if n >= _RELEASE_GIL_AT:
                self._hold(1)
                try:
                    with nogil:
                        applied = _bookset_apply_top(&self.c, ev, n, st, tp, sy)
                finally:
                    self._hold(0)
            else:
                if self._held:
                    self._hold(1)
                applied = _bookset_apply_top(&self.c, ev, n, st, tp, sy)
        finally:
            PyBuffer_Release(&ev_view)
            if tp != NULL:
                PyBuffer_Release(&top_view)
            if st != NULL:
                PyBuffer_Release(&st_view)
            if sy != NULL:
                PyBuffer_Release(&sy_view)
        return applied

    def __getitem__(self, instrument):
        i = operator.index(instrument)             # (a uint32_t argument wrapped 2**32 to book 0)
        if not 0 <= i < self.c.nbooks or self.c.books[i] == NULL:
            raise KeyError(f"no book for instrument id {i}")
        return self._by_id[i]

    def __contains__(self, instrument):
        try:
            i = operator.index(instrument)          # (a str or a float was a TypeError from inside)
        except TypeError:
            return False
        return 0 <= i < self.c.nbooks and self.c.books[i] != NULL

    def __len__(self):
        return len(self._books)

    def __iter__(self):
        return iter(self._books)

    @property
    def unknown_instrument(self):
        """Events rejected because no book serves their instrument id."""
        return self.c.unknown_instrument

    @property
    def rejects(self):
        """Rejects by reason summed over the books, plus unknown instruments."""
        total = {}
        for b in self._books:
            for k, v in b.rejects.items():
                total[k] = total.get(k, 0) + v
        if self.c.unknown_instrument:
            total["UNKNOWN_INSTRUMENT"] = total.get("UNKNOWN_INSTRUMENT", 0) + self.c.unknown_instrument
        return total


def event_layout():
    """Offsets and size of the C ``tw_event`` as compiled, for checking against EVENT_DTYPE."""
    cdef tw_event e
    cdef char *base = <char *>&e
    return {
        "itemsize": sizeof(tw_event),
        "ts_event": <char *>&e.ts_event - base,
        "ts_recv": <char *>&e.ts_recv - base,
        "seq": <char *>&e.seq - base,
        "order_id": <char *>&e.order_id - base,
        "price": <char *>&e.price - base,
        "qty": <char *>&e.qty - base,
        "instrument": <char *>&e.instrument - base,
        "channel": <char *>&e.channel - base,
        "kind": <char *>&e.kind - base,
        "side": <char *>&e.side - base,
        "flags": <char *>&e.flags - base,
        "reserved": <char *>&e.reserved - base,
    }


cdef Py_ssize_t _snapshot_len(const tw_book *b) noexcept nogil:
    """Events of the book's snapshot: BEGIN, one per level (L2) or order (L3), END."""
    if b.p.book_type == TW_BOOK_L3:
        return 2 + b.norders
    return 2 + b.side[0].nlevels + b.side[1].nlevels


cdef object _fill_snapshot(tw_book *b, object out, uint64_t seq, int64_t ts):
    cdef Py_buffer view
    cdef tw_event *ev
    cdef Py_ssize_t k = 0
    cdef tw_level_cursor c
    cdef int64_t price, qty
    cdef int32_t norders, idx
    cdef int side
    cdef _lvl lv
    PyObject_GetBuffer(out, &view, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
    ev = <tw_event *>view.buf
    try:
        ev[k].kind = _SNAP
        ev[k].flags = TW_FLAG_SNAPSHOT | TW_FLAG_SNAPSHOT_BEGIN
        k += 1
        for side in range(2):
            tw_book_cursor(b, side, &c)
            while tw_book_cursor_next(b, side, &c, &price, &qty, &norders):
                if b.p.book_type == TW_BOOK_L2:
                    ev[k].kind = TW_KIND_ADD
                    ev[k].side = side
                    ev[k].price = price
                    ev[k].qty = qty
                    ev[k].flags = TW_FLAG_SNAPSHOT
                    k += 1
                    continue
                _lvl_find(&b.side[side], b.side[side].sign * price, &lv)
                idx = lv.head[0]
                while idx >= 0:
                    ev[k].kind = TW_KIND_ADD
                    ev[k].side = side
                    ev[k].price = price
                    ev[k].qty = b.orders[idx].qty
                    ev[k].order_id = b.orders[idx].id
                    ev[k].flags = TW_FLAG_SNAPSHOT
                    k += 1
                    idx = b.orders[idx].next
        ev[k].kind = _SNAP
        ev[k].flags = TW_FLAG_SNAPSHOT | TW_FLAG_SNAPSHOT_END | TW_FLAG_LAST
        k += 1
        for idx in range(k):
            ev[idx].instrument = b.p.instrument
            ev[idx].seq = seq
            ev[idx].ts_event = ts
            ev[idx].ts_recv = ts
            if ev[idx].kind == _SNAP:
                ev[idx].side = TW_SIDE_NONE
    finally:
        PyBuffer_Release(&view)
    return out
