"""K-way merge of sorted runs by the store's total order ``(ts_event, seq, epoch, ord)``.

The tick store keeps its rows ordered by ``(instrument, ts_event, seq, epoch, ord)``: a read
in the table's own order (cheap for ClickHouse: no sort) returns one run per instrument, each
already in time order. :func:`merge_events` interleaves those runs into the one total order a
replay needs and builds the events from the columns as it goes, in C without the GIL, with a
tournament (loser) tree over the runs' heads: ``log2(k)`` comparisons a row for ``k`` runs, no
allocation per row, no permutation array.
"""

from libc.stdint cimport INT64_MAX, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

import numpy as np

from tickwire.ext.defs cimport tw_event, tw_misaligned
from tickwire.ext.records import EVENT_DTYPE


cdef struct _cols:
    const int64_t* ts_event
    const int64_t* ts_recv
    const uint64_t* seq
    const uint64_t* order_id
    const int64_t* price
    const int64_t* qty
    const uint32_t* instrument
    const uint16_t* channel
    const uint8_t* kind
    const uint8_t* side
    const uint32_t* flags
    const uint64_t* epoch
    const uint64_t* ord


cdef struct _tree:
    const _cols* c
    int64_t* pos           # next row of each run
    int64_t* end           # one past each run's last row
    int64_t* head          # ts_event of each run's next row (INT64_MAX once exhausted)


cdef inline bint _wins(const _tree* t, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Run ``a``'s next row comes before run ``b``'s (an exhausted run never does; equal keys:
    the lower run, i.e. the earlier rows of the read)."""
    cdef int64_t i, j
    if t.head[a] != t.head[b]:
        return t.head[a] < t.head[b]
    if t.pos[b] == t.end[b]:
        return t.pos[a] != t.end[a] or a < b
    if t.pos[a] == t.end[a]:
        return False
    i, j = t.pos[a], t.pos[b]
    if t.c.seq[i] != t.c.seq[j]:
        return t.c.seq[i] < t.c.seq[j]
    if t.c.epoch[i] != t.c.epoch[j]:
        return t.c.epoch[i] < t.c.epoch[j]
    if t.c.ord[i] != t.c.ord[j]:
        return t.c.ord[i] < t.c.ord[j]
    return a < b


cdef inline void _emit(const _cols* c, int64_t j, tw_event* e) noexcept nogil:
    e.ts_event = c.ts_event[j]
    e.ts_recv = c.ts_recv[j]
    e.seq = c.seq[j]
    e.order_id = c.order_id[j]
    e.price = c.price[j]
    e.qty = c.qty[j]
    e.instrument = c.instrument[j]
    e.channel = c.channel[j]
    e.kind = c.kind[j]
    e.side = c.side[j]
    e.flags = c.flags[j]
    e.reserved = 0


cdef int _merge_events(const _cols* c, const int64_t* bounds, Py_ssize_t k, tw_event* out) noexcept nogil:
    """Write the rows of the ``k`` sorted runs ``[bounds[r], bounds[r+1])`` to ``out`` as events,
    in the total order, with a tournament (loser) tree: ``log2(k)`` comparisons a row, most of
    them of one ``ts_event`` each, and each event built as its row wins (no permutation pass).
    Returns -1 when out of memory."""
    cdef Py_ssize_t size = 1, r, node, cand, other, w
    cdef int64_t n = bounds[k] - bounds[0], i, j
    cdef _tree t
    while size < k:
        size <<= 1
    # the runs padded to a power of two with empty ones (they lose every match)
    cdef int64_t* mem = <int64_t*>malloc(3 * size * sizeof(int64_t))
    cdef Py_ssize_t* loser = <Py_ssize_t*>malloc(2 * size * sizeof(Py_ssize_t))
    if mem == NULL or loser == NULL:
        free(mem)
        free(loser)
        return -1
    t.c = c
    t.pos = mem
    t.end = mem + size
    t.head = mem + 2 * size
    for r in range(size):
        if r < k:
            t.pos[r] = bounds[r]
            t.end[r] = bounds[r + 1]
        else:
            t.pos[r] = 0
            t.end[r] = 0
        t.head[r] = c.ts_event[t.pos[r]] if t.pos[r] < t.end[r] else INT64_MAX
    # build: play every match bottom-up; loser[node] keeps the loser, the winner goes up
    cdef Py_ssize_t* winner = loser + size
    for r in range(size):
        winner[r] = r                      # scratch: winners of the level below, leaf order
    cdef Py_ssize_t width = size
    while width > 1:
        for node in range(width // 2):
            cand, other = winner[2 * node], winner[2 * node + 1]
            if _wins(&t, other, cand):
                cand, other = other, cand
            loser[width // 2 + node] = other
            winner[node] = cand
        width //= 2
    w = winner[0]
    for i in range(n):
        j = t.pos[w]
        _emit(c, j, out + i)
        j += 1
        t.pos[w] = j
        t.head[w] = c.ts_event[j] if j < t.end[w] else INT64_MAX
        # replay the winner's path from its leaf to the root
        node = (size + w) >> 1
        cand = w
        while node >= 1:
            other = loser[node]
            if _wins(&t, other, cand):
                loser[node] = cand
                cand = other
            node >>= 1
        w = cand
    free(mem)
    free(loser)
    return 0


def merge_events(const int64_t[::1] ts_event, const int64_t[::1] ts_recv, const uint64_t[::1] seq,
                 const uint64_t[::1] order_id, const int64_t[::1] price, const int64_t[::1] qty,
                 const uint32_t[::1] instrument, const uint16_t[::1] channel, const uint8_t[::1] kind,
                 const uint8_t[::1] side, const uint32_t[::1] flags, const uint64_t[::1] epoch,
                 const uint64_t[::1] ord, const int64_t[::1] bounds, out=None):
    """EVENT_DTYPE events from one array per field (a columnar read) whose rows form sorted
    runs, merged into the total order ``(ts_event, seq, epoch, ord)``: the merge and the
    interleave of the columns in one pass, in C without the GIL.

    Parameters
    ----------
    ts_event ... flags : 1-d contiguous arrays, the event's fields (EVENT_DTYPE's order and types)
    epoch, ord : uint64 arrays, the last two sort keys
    bounds : int64 array of ``k + 1`` offsets from 0 to the row count
        Run ``r`` is rows ``bounds[r]:bounds[r+1]``, each already in key order (the store's
        read in its table order: one run per instrument).
    out : optional contiguous EVENT_DTYPE array of the row count, written and returned

    Rows with equal keys come in row order (the earlier run first).
    """
    cdef Py_ssize_t n = ts_event.shape[0], k = bounds.shape[0] - 1, r
    lengths = (ts_recv.shape[0], seq.shape[0], order_id.shape[0], price.shape[0], qty.shape[0],
               instrument.shape[0], channel.shape[0], kind.shape[0], side.shape[0], flags.shape[0],
               epoch.shape[0], ord.shape[0])
    if any(m != n for m in lengths):
        raise ValueError(f"merge_events: columns differ in length ({n} and {lengths})")
    if k < 1 or bounds[0] != 0 or bounds[k] != n:
        raise ValueError(f"merge_events: bounds must run from 0 to {n}")
    for r in range(k):
        if bounds[r + 1] < bounds[r]:
            raise ValueError("merge_events: bounds must not decrease")
    if out is None:
        out = np.empty(n, dtype=EVENT_DTYPE)
    elif (not isinstance(out, np.ndarray) or out.dtype != EVENT_DTYPE or out.ndim != 1 or len(out) != n
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ValueError(f"merge_events: out must be a contiguous EVENT_DTYPE array of {n} events")
    if n == 0:
        return out
    cdef unsigned char[::1] ob = out.view(np.uint8)
    cdef _cols c
    c.ts_event = &ts_event[0]
    c.ts_recv = &ts_recv[0]
    c.seq = &seq[0]
    c.order_id = &order_id[0]
    c.price = &price[0]
    c.qty = &qty[0]
    c.instrument = &instrument[0]
    c.channel = &channel[0]
    c.kind = &kind[0]
    c.side = &side[0]
    c.flags = &flags[0]
    c.epoch = &epoch[0]
    c.ord = &ord[0]
    cdef int rc
    with nogil:
        rc = _merge_events(&c, &bounds[0], k, <tw_event*>&ob[0])
    if rc:
        raise MemoryError("merge_events: no memory for the tree")
    return out


def run_bounds(runs):
    """Offsets ``[0, ..., n]`` where the value of ``runs`` (e.g. the instrument column of a read in
    the table's order) changes."""
    runs = np.asarray(runs)
    n = len(runs)
    cut = np.flatnonzero(runs[1:n] != runs[0:n - 1]) + 1 if n else np.empty(0, np.int64)
    return np.concatenate(([0], cut, [n])).astype(np.int64)


def seq_in_order(const uint8_t[::1] raw, uint64_t[::1] nxt, const uint8_t[::1] followed):
    """Whether every event of ``raw`` (EVENT_DTYPE records' bytes) is a tick (no SNAPSHOT flag)
    whose sequence number is the next one due on its channel (``nxt[channel]``; 0: not known
    yet, which fails) or of a channel not ``followed``. True: ``nxt`` is advanced past them;
    False: ``nxt`` is as it was, and the caller looks closer (replay's sequence check,
    tickwire.replay.audit: one pass over the records, not a numpy pass per field)."""
    cdef const tw_event* ev = <const tw_event*>&raw[0] if raw.shape[0] else NULL
    cdef Py_ssize_t n = raw.shape[0] // sizeof(tw_event), j
    cdef Py_ssize_t nch = min(nxt.shape[0], followed.shape[0])
    cdef uint16_t c
    cdef Py_ssize_t done = 0
    why = tw_misaligned(ev, n, "raw", False)
    if why is not None:
        raise ValueError(why)
    with nogil:
        while done < n:
            c = ev[done].channel
            if ev[done].flags & 2 or c >= nch:          # (Flag.SNAPSHOT)
                break
            if followed[c]:
                if nxt[c] == 0 or ev[done].seq != nxt[c]:
                    break
                nxt[c] += 1
            done += 1
        if done < n:
            for j in range(done):                       # undone: each advanced by one
                c = ev[j].channel
                if followed[c]:
                    nxt[c] -= 1
    return done == n
