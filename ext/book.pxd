# The C API of tickwire.ext.book: L2 and L3 order books over a dense price ladder.
#
# This file is the reviewed contract: other tickwire modules and users' own Cython
# `cimport tickwire.ext.book` and drive the books with these structs and functions,
# without Python objects and without the GIL.  Every function states its error
# contract.  Prices are int64 ticks, quantities int64 lots.
#
# Layout of one side (tw_ladder), in "keys": key = price on the bid side and -price on the
# ask side, so that a higher key is always a better price and one code path serves both.
#
# - A dense window of `cap` consecutive keys starting at `base` holds the levels near the
#   top: qty[slot] is the level's quantity (0: no level).  A four-level occupancy bitmap
#   (one bit per slot, then one bit per non-empty word, ...) finds the next level in a
#   handful of instructions whatever the depth, so the best slot is kept up to date in O(1)
#   and a BBO read is a load.
# - Levels worse than the window sit in `over`, a sorted array (ascending keys, so the
#   best of them is last, next to the window): real books carry far-away levels (asks at
#   a thousand times the price) that no dense array could span.
# - Invariants: no level is better than the window; whenever the side has a level, the
#   window has one (so the best is always in the window).  The window follows the best:
#   a better price than the window moves it up, and when the best sinks to the bottom
#   eighth it moves down, levels crossing between window and overflow (a rare memmove).

from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t, uint8_t
from libc.math cimport NAN
from libc.string cimport memcpy
from tickwire.ext.defs cimport (tw_event, TW_NO_PRICE, TW_REJ_COUNT, TW_SIDE_BID, TW_SIDE_ASK, TW_OK,
                                TW_LIKELY, TW_UNLIKELY)

cdef enum:
    TW_BOOK_L2 = 2
    TW_BOOK_L3 = 3
    TW_LADDER_LEVELS = 4          # bitmap levels: covers 64**4 slots
    TW_WINDOW_MIN = 256
    TW_WINDOW_MAX = 16777216      # 64**4

cdef struct tw_level:             # a level outside the window
    int64_t key
    int64_t qty
    int32_t norders
    int32_t head
    int32_t tail
    int32_t _pad

cdef struct tw_ladder:
    int64_t *qty                  # window: quantity per slot; 0 = no level
    int32_t *norders              # window, L3 only: orders per slot (NULL on L2 books)
    int32_t *head                 # window, L3 only: oldest order per slot (pool index)
    int32_t *tail                 # window, L3 only: newest order per slot
    uint64_t *bits[4]             # occupancy bitmaps; bits[0] has one bit per slot
    uint64_t *spare[4]            # second set of bitmaps, swapped in when the window moves
    int64_t nwords[4]             # words in each bitmap level
    int64_t base                  # key of slot 0
    int64_t cap                   # slots in the window (a power of two)
    int64_t best                  # slot of the best level, -1 when the side is empty
    tw_level *over                # levels worse than the window, ascending keys
    int64_t nover                 # entries of over, the dead ones included
    int64_t ndead                 # L2: dead entries (a far level removed, its entry left in place)
    int64_t over_cap
    int64_t nlevels               # all levels of the side
    int64_t sign                  # +1 bids, -1 asks: key = sign * price
    Py_ssize_t *far_hint          # overflow index last found per hash of a far key (a hint: checked)
    int64_t key_lo                # the book's price range in keys (inclusive)
    int64_t key_hi
    int64_t fast_lo               # the window slots inside the price range: fast_lo .. fast_lo + fast_n - 1
    int64_t fast_n                # (the per-event update takes a slot there without checking the price)
    int64_t far_count             # L2: updates outside the window (the window grows when they are many)
    int64_t far_mark              # the book's applied count at the last check of far_count
    # (256 bytes in all: side i is at i << 8, one shift per event; no room for another field)

cdef struct tw_order:
    uint64_t id
    int64_t price
    int64_t qty
    int64_t ts                    # ts_event of the add (time priority)
    int32_t prev                  # neighbours in the level's FIFO (pool index, -1 none)
    int32_t next                  # also links the free list
    uint8_t side

cdef struct tw_book_params:
    uint32_t instrument
    int book_type                 # TW_BOOK_L2 or TW_BOOK_L3
    int64_t min_price             # accepted price range, ticks (inclusive), within -(2**62 - 1)..2**62
                                  # (the range and a spread fit in int64; the Python classes check it)
    int64_t max_price
    int64_t window                # slots of the dense window per side (power of two)
    int64_t max_window            # L2: the window doubles, up to this, while many updates fall
                                  # outside it (<= window: it never grows; L3 windows never do)
    int64_t max_levels            # most levels per side
    int64_t max_depth             # L2: keep at most this many levels per side, dropping the worst (0: all)
    int64_t max_orders            # L3: most resting orders (<= 2**30)
    int64_t initial_orders        # L3: pool size allocated up front
    int32_t channel               # the feed channel carrying the instrument; -1: any

cdef struct tw_book:
    tw_ladder side[2]             # indexed by TW_SIDE_BID / TW_SIDE_ASK
    tw_book_params p
    # L3 order storage: a pool with a free list, and an open-addressing id -> index map
    # (linear probing, one 8-byte entry per slot so that a lookup touches one cache line:
    # tag << 32 | (pool index + 1), 0 = empty; the tag is the high half of the id's hash and
    # its low bits are the home slot; a tag match is confirmed against orders[index].id)
    tw_order *orders
    int64_t order_cap
    int64_t norders
    int32_t free_head
    uint64_t *map
    uint64_t map_mask
    uint64_t hash_key             # the map hash's key, random per L3 book (ids come from the feed)
    # the level(s) the last L3 order operation changed (for callers that track the top of the
    # book, like the engine): side, price, and a modify's new price (TW_NO_PRICE: none)
    int64_t op_price
    int64_t op_price2
    int32_t op_side
    # state and counters
    uint64_t applied
    uint64_t rejects[TW_REJ_COUNT]
    uint64_t last_seq
    int64_t last_ts_event
    int in_sync                   # 0 between a snapshot BEGIN and END marker
    uint64_t price_span           # p.max_price - p.min_price (one unsigned compare checks a price)
    # the L2 level-update fast path (tw_book_apply_inline) takes an event when, with v its channel | kind << 16
    # | side << 24, ((v & fast_mask) - fast_want) & ~0x01010000 == 0: kind ADD or MODIFY, side
    # 0 or 1, and the channel when the book has one (mask 0xffffffff, want 0x10000 | channel;
    # 0xffff0000 / 0x10000 for any channel; 0 / 1, never, on an L3 book or one with max_depth)
    uint32_t fast_mask
    uint32_t fast_want

cdef struct tw_level_cursor:      # walks one side from the best level down
    int64_t slot                  # next window slot, -1 once the window is done
    Py_ssize_t over               # next overflow index (counting down)

cdef struct tw_bookset:
    tw_book **books               # indexed by instrument id; NULL: unknown instrument
    uint32_t nbooks
    uint64_t unknown_instrument
    uint32_t nl3                  # L3 books among them (0: tw_bookset_apply does not prefetch)

# -- lifecycle --------------------------------------------------------------------------
cdef int tw_book_init(tw_book *b, const tw_book_params *p) noexcept nogil   # 0, or -1: no memory
cdef void tw_book_free(tw_book *b) noexcept nogil
cdef void tw_book_clear(tw_book *b) noexcept nogil

# -- updates: return TW_OK (0) or a TW_REJ_* code; a rejected event leaves the book as it was
cdef int tw_book_apply(tw_book *b, const tw_event *ev) noexcept nogil
# (tw_book_apply_inline, below, is the same update inlined into the caller's loop; these are
# its out-of-line parts)
cdef int tw_book_apply_slow(tw_book *b, const tw_event *ev) noexcept nogil
cdef int tw_book_apply_far(tw_book *b, const tw_event *ev) noexcept nogil
cdef void tw_ladder_bits_carry(uint64_t **bits, int64_t s, bint now) noexcept nogil
cdef void tw_ladder_best_removed(tw_ladder *L, int64_t s) noexcept nogil
cdef int tw_book_set_level(tw_book *b, int side, int64_t price, int64_t qty) noexcept nogil
cdef int tw_book_add_order(tw_book *b, uint64_t order_id, int side, int64_t price, int64_t qty,
                           int64_t ts) noexcept nogil
cdef int tw_book_modify_order(tw_book *b, uint64_t order_id, int64_t price, int64_t qty,
                              int64_t ts) noexcept nogil
cdef int tw_book_delete_order(tw_book *b, uint64_t order_id) noexcept nogil
cdef int tw_book_execute_order(tw_book *b, uint64_t order_id, int64_t qty) noexcept nogil
cdef Py_ssize_t tw_bookset_apply(tw_bookset *s, const tw_event *ev, Py_ssize_t n,
                                 uint8_t *status) noexcept nogil
# A hint for callers that apply events one at a time (tw_bookset_apply does this itself):
# call with stage 0 for the event some 16 ahead and stage 1 for the one some 8 ahead; it
# starts loading the order-map slot, then the order record, that applying the event will need
# (L2 books: stage 1 loads the level's window slot and occupancy word; stage 0 does nothing).
# No effect on the book; harmless if the book changes in between.
cdef void tw_book_prefetch(const tw_book *b, const tw_event *ev, int stage) noexcept nogil

# -- queries (no copies of the book) ---------------------------------------------------
cdef Py_ssize_t tw_book_levels(const tw_book *b, int side, int64_t *out, Py_ssize_t n) noexcept nogil
cdef int64_t tw_book_qty_at(const tw_book *b, int side, int64_t price) noexcept nogil
# Sums over levels are exact (128-bit); the int64 results saturate at INT64_MAX (each level
# fits in int64, a sum of several need not), the double ones are the exact sum rounded once.
cdef int64_t tw_book_depth_qty(const tw_book *b, int side, Py_ssize_t k) noexcept nogil
cdef int64_t tw_book_top_qty(const tw_book *b, int side, Py_ssize_t k, int64_t *kth) noexcept nogil
cdef double tw_book_top_qty_d(const tw_book *b, int side, Py_ssize_t k, int64_t *kth) noexcept nogil
cdef double tw_book_imbalance(const tw_book *b, Py_ssize_t k) noexcept nogil
cdef double tw_book_vwap_to_size(const tw_book *b, int side, int64_t qty) noexcept nogil
cdef int32_t tw_book_find_order(const tw_book *b, uint64_t order_id) noexcept nogil
cdef void tw_book_cursor(const tw_book *b, int side, tw_level_cursor *c) noexcept nogil
cdef bint tw_book_cursor_next(const tw_book *b, int side, tw_level_cursor *c, int64_t *price,
                              int64_t *qty, int32_t *norders) noexcept nogil

cdef inline int64_t tw_book_best_price(const tw_book *b, int side) noexcept nogil:
    """Best price of ``side`` in ticks, or TW_NO_PRICE when that side is empty."""
    cdef const tw_ladder *L = &b.side[side]
    if L.best < 0:
        return TW_NO_PRICE
    return L.sign * (L.base + L.best)

cdef inline int64_t tw_book_best_qty(const tw_book *b, int side) noexcept nogil:
    """Quantity at the best price of ``side`` in lots, 0 when that side is empty."""
    cdef const tw_ladder *L = &b.side[side]
    if L.best < 0:
        return 0
    return L.qty[L.best]

cdef inline bint tw_book_has_bbo(const tw_book *b) noexcept nogil:
    """Whether both sides have a level."""
    return b.side[0].best >= 0 and b.side[1].best >= 0

cdef inline double tw_book_mid(const tw_book *b) noexcept nogil:
    """Mid price in ticks (NaN without both sides)."""
    if not tw_book_has_bbo(b):
        return NAN
    return 0.5 * (<double>tw_book_best_price(b, TW_SIDE_BID) + <double>tw_book_best_price(b, TW_SIDE_ASK))

cdef inline double tw_book_microprice(const tw_book *b) noexcept nogil:
    """Size-weighted mid in ticks: the bid weighted by the ask size and vice versa (NaN without both sides)."""
    cdef double pb, pa, qb, qa
    if not tw_book_has_bbo(b):
        return NAN
    pb = <double>tw_book_best_price(b, TW_SIDE_BID)
    pa = <double>tw_book_best_price(b, TW_SIDE_ASK)
    qb = <double>tw_book_best_qty(b, TW_SIDE_BID)
    qa = <double>tw_book_best_qty(b, TW_SIDE_ASK)
    return (pb * qa + pa * qb) / (qa + qb)

cdef inline int64_t tw_book_spread(const tw_book *b) noexcept nogil:
    """Best ask minus best bid in ticks, TW_NO_PRICE without both sides (negative when crossed)."""
    if not tw_book_has_bbo(b):
        return TW_NO_PRICE
    return tw_book_best_price(b, TW_SIDE_ASK) - tw_book_best_price(b, TW_SIDE_BID)


cdef class Book:
    cdef tw_book c
    cdef int _busy                # 1 while a batch applies without the GIL (every call from Python is
                                  # refused); 2 while an engine batch with Python rules holds it
                                  # (queries allowed, changes refused); 0 otherwise
    cdef int _check(self, int code, object what) except -1
    cdef int _idle(self, str what) except -1        # before a change: refused while _busy
    cdef int _readable(self, str what) except -1    # before a query: refused while _busy == 1
    cdef int _refuse(self, str what) except -1


cdef class L2Book(Book):
    pass


cdef class L3Book(Book):
    cdef int _count(self, int r, str op, uint64_t order_id) except -1


cdef class BookSet:
    cdef tw_bookset c
    cdef list _books
    cdef dict _by_id
    cdef int _held                # the _busy its books were last given by _hold (a short batch checks it)
    cdef int _hold(self, int busy) except -1


# -- the per-event update, inlined where events are applied (the books' loops, the engine) --

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    #  error "tickwire's book reads an event's channel, kind and side as one little-endian uint32: little-endian hosts only"
    #endif
    """


cdef inline bint tw_ladder_has(const tw_ladder *L, int64_t s) noexcept nogil:
    """Whether window slot ``s`` holds a level, from the occupancy bitmap rather than the slot:
    the bitmap is 64 times denser and stays in cache, where the slot of a level far from the
    best is a cache miss.  An update that reads only the bitmap leaves the slot to a store,
    which does not hold up the next update."""
    return (L.bits[0][s >> 6] >> (s & 63)) & 1


cdef inline void tw_ladder_commit(tw_ladder *L, int64_t s, int64_t qty, uint64_t *word, uint64_t w_old,
                                  uint64_t bit, int64_t nlev) noexcept nogil:
    """Set window slot ``s`` to ``qty`` (>= 0) and keep bitmap, count and best right, given its
    occupancy ``word`` (holding ``w_old``, ``bit`` the slot's) and the side's level count after
    the update ``nlev``, which the caller has read to check it: every window update, the
    per-event one (tw_book_apply_inline) and the slow path's (tw_ladder_store), ends here.

    Written to compile to conditional moves rather than branches on the data: whether a
    level appears, changes or goes is a coin toss on real streams, and each mispredicted
    branch costs more than the whole update.  Every field is loaded before the first store (an
    int64 store may alias any int64 field, so a load after it would be repeated), and the
    slot is only written, never read."""
    cdef int64_t best = L.best, now = qty != 0
    cdef int64_t s_now = s | (now - 1)              # s, or -1 when the level goes
    cdef uint64_t w_new = (w_old | bit) ^ (bit & <uint64_t>(now - 1))
    L.qty[s] = qty
    word[0] = w_new
    L.nlevels = nlev
    L.best = s_now if s_now > best else best        # (a conditional move)
    # the word turned empty or non-empty: the bitmap levels above follow (two tests, each well
    # predicted, rather than one compare of two flags that waits for the word's load)
    if TW_UNLIKELY(w_old == 0 or w_new == 0) and (w_old == 0) != (w_new == 0):
        tw_ladder_bits_carry(L.bits, s, w_new != 0)
    if TW_UNLIKELY(((s ^ best) | qty) == 0):       # the best level went (a level is at the best slot)
        tw_ladder_best_removed(L, s)


cdef inline void tw_ladder_store(tw_ladder *L, int64_t s, int64_t qty) noexcept nogil:
    """Set window slot ``s`` to ``qty`` (>= 0), bitmap, count and best kept right (tw_ladder_commit)."""
    cdef uint64_t *word = &L.bits[0][s >> 6]
    cdef uint64_t w_old = word[0], bit = (<uint64_t>1) << (s & 63)
    tw_ladder_commit(L, s, qty, word, w_old, bit, L.nlevels + (qty != 0) - ((w_old & bit) != 0))


cdef inline int tw_book_account(tw_book *b, const tw_event *ev, int r) noexcept nogil:
    """Account for an event: applied (counted, and remembered as the book's last) or refused
    (counted under its reject code); returns ``r``."""
    if TW_LIKELY(r == TW_OK):
        b.applied += 1
        b.last_seq = ev.seq
        b.last_ts_event = ev.ts_event
    else:
        b.rejects[r] += 1
    return r


cdef inline int tw_book_apply_inline(tw_book *b, const tw_event *ev) noexcept nogil:
    """Apply one event and account for it (applied count and last event, or the reject).

    The bulk of any feed is an L2 level update inside the window that passes every check;
    that case is done here in full, inlined into each loop that applies events, with every
    check one well-predicted branch and no branch on whether the level appears, changes or
    goes (a coin toss on real streams; conditional moves instead).  The price range is checked
    by the window test itself (fast_lo/fast_n cover only the window slots inside it) and the
    capacity by the level count the update would leave.  A slot outside that goes to
    tw_book_apply_far; everything else (another kind, a full side, an L3 book or one with
    max_depth, a channel filter that does not match) to tw_book_apply_slow.  Every field is
    loaded before the first store: an int64 store may alias any int64 field, so a load after
    it would be repeated."""
    cdef uint32_t v
    cdef int64_t qty = ev.qty, s, nlev
    cdef uint64_t w_old, bit
    cdef uint64_t *word
    cdef tw_ladder *L
    memcpy(&v, &ev.channel, 4)                    # channel | kind << 16 | side << 24 (little-endian)
    if TW_UNLIKELY(((((v & b.fast_mask) - b.fast_want) & ~<uint32_t>0x01010000) != 0) | (qty < 0)):
        return tw_book_apply_slow(b, ev)
    L = &b.side[v >> 24]
    # in uint64 (defined wrap-around, the same instructions): a price at INT64_MIN/MAX overflowed
    # int64 here; the slot test below refuses it either way
    s = <int64_t>(<uint64_t>L.sign * <uint64_t>ev.price - <uint64_t>L.base)
    if TW_UNLIKELY(<uint64_t>s - <uint64_t>L.fast_lo >= <uint64_t>L.fast_n):
        return tw_book_apply_far(b, ev)
    word = &L.bits[0][s >> 6]
    w_old = word[0]
    bit = (<uint64_t>1) << (s & 63)
    nlev = L.nlevels + (qty != 0) - ((w_old & bit) != 0)
    if TW_UNLIKELY(nlev > b.p.max_levels):        # a new level on a full side: refused there
        return tw_book_apply_slow(b, ev)
    tw_ladder_commit(L, s, qty, word, w_old, bit, nlev)
    return tw_book_account(b, ev, TW_OK)
