"""K-way merge of sorted runs by the store's total order ``(ts_event, seq, epoch, ord)``.

The tick store keeps its rows ordered by ``(instrument, ts_event, seq, epoch, ord)``: a read
in the table's own order (cheap for ClickHouse: no sort) returns one run per instrument, each
already in time order. :func:`merge_order` interleaves those runs into the one total order a
replay needs, in C without the GIL, with a binary heap over the runs' heads: O(n log k) for
``k`` runs, no allocation per row. :func:`gather_events` builds the events from the columns in that order.
"""

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

import numpy as np

from tickwire.ext.defs cimport tw_event
from tickwire.ext.records import EVENT_DTYPE


cdef struct _keys:
    const int64_t* ts
    const uint64_t* seq
    const uint64_t* epoch
    const uint64_t* ord


cdef inline bint _before(const _keys* k, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    """Row ``a`` comes strictly before row ``b`` in the total order (ties: the lower row,
    which is the earlier run, so that equal keys keep a deterministic order)."""
    if k.ts[a] != k.ts[b]:
        return k.ts[a] < k.ts[b]
    if k.seq[a] != k.seq[b]:
        return k.seq[a] < k.seq[b]
    if k.epoch[a] != k.epoch[b]:
        return k.epoch[a] < k.epoch[b]
    if k.ord[a] != k.ord[b]:
        return k.ord[a] < k.ord[b]
    return a < b


cdef int _merge(const _keys* k, const int64_t* bounds, Py_ssize_t nruns, int64_t* perm) noexcept nogil:
    """Write the merged order of the runs ``[bounds[r], bounds[r+1])`` into ``perm``; -1 when
    out of memory."""
    cdef int64_t* pos = <int64_t*>malloc(nruns * sizeof(int64_t))
    cdef Py_ssize_t* heap = <Py_ssize_t*>malloc(nruns * sizeof(Py_ssize_t))
    cdef Py_ssize_t h = 0, r, i, c, top, out = 0
    cdef int64_t end, nxt
    if pos == NULL or heap == NULL:
        free(pos)
        free(heap)
        return -1
    for r in range(nruns):
        pos[r] = bounds[r]
        if bounds[r] < bounds[r + 1]:
            # sift up
            i = h
            h += 1
            while i > 0 and _before(k, pos[r], pos[heap[(i - 1) >> 1]]):
                heap[i] = heap[(i - 1) >> 1]
                i = (i - 1) >> 1
            heap[i] = r
    while h > 0:
        top = heap[0]
        end = bounds[top + 1]
        # take rows of the top run while they still come before every other head
        # (long stretches of one instrument cost one comparison a row)
        while True:
            perm[out] = pos[top]
            out += 1
            pos[top] += 1
            if pos[top] == end:
                break
            if h == 1:
                continue
            c = 1
            if h > 2 and _before(k, pos[heap[2]], pos[heap[1]]):
                c = 2
            if not _before(k, pos[top], pos[heap[c]]):
                break
        if pos[top] == end:
            h -= 1
            if h == 0:
                break
            top = heap[h]
        # sift the (new) top down
        i = 0
        while True:
            c = 2 * i + 1
            if c >= h:
                break
            if c + 1 < h and _before(k, pos[heap[c + 1]], pos[heap[c]]):
                c += 1
            if not _before(k, pos[heap[c]], pos[top]):
                break
            heap[i] = heap[c]
            i = c
        heap[i] = top
    free(pos)
    free(heap)
    return 0


def merge_order(const int64_t[::1] ts, const uint64_t[::1] seq, const uint64_t[::1] epoch,
                const uint64_t[::1] ord, const int64_t[::1] bounds):
    """The permutation that merges sorted runs into ``(ts_event, seq, epoch, ord)`` order.

    Parameters
    ----------
    ts, seq, epoch, ord : 1-d contiguous arrays (int64, uint64, uint64, uint64), equal lengths
        The sort keys of every row.
    bounds : int64 array of ``k + 1`` offsets
        Run ``r`` is rows ``bounds[r]:bounds[r+1]``, each already in key order.

    Returns
    -------
    numpy.ndarray of int64
        ``perm`` such that ``rows[perm]`` is in key order (rows with equal keys: earlier run first).
    """
    cdef Py_ssize_t n = ts.shape[0], nruns = bounds.shape[0] - 1, r
    if seq.shape[0] != n or epoch.shape[0] != n or ord.shape[0] != n:
        raise ValueError(f"merge_order: key arrays differ in length ({n}, {seq.shape[0]}, "
                         f"{epoch.shape[0]}, {ord.shape[0]})")
    if nruns < 0 or bounds[0] != 0 or bounds[nruns] != n:
        raise ValueError(f"merge_order: bounds must run from 0 to {n}")
    for r in range(nruns):
        if bounds[r + 1] < bounds[r]:
            raise ValueError("merge_order: bounds must not decrease")
    perm = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] p = perm
    cdef _keys k
    cdef int rc = 0
    if n == 0:
        return perm
    k.ts = &ts[0]
    k.seq = &seq[0]
    k.epoch = &epoch[0]
    k.ord = &ord[0]
    with nogil:
        rc = _merge(&k, &bounds[0], nruns, &p[0])
    if rc:
        raise MemoryError("merge_order: no memory for the heap")
    return perm


def gather_events(const int64_t[::1] ts_event, const int64_t[::1] ts_recv, const uint64_t[::1] seq,
                  const uint64_t[::1] order_id, const int64_t[::1] price, const int64_t[::1] qty,
                  const uint32_t[::1] instrument, const uint16_t[::1] channel, const uint8_t[::1] kind,
                  const uint8_t[::1] side, const uint32_t[::1] flags, const int64_t[::1] perm=None):
    """EVENT_DTYPE events assembled from one array per field (a columnar read), row ``perm[i]``
    (or ``i`` without ``perm``) becoming event ``i``: the interleave and the merge's reordering in
    one pass, in C without the GIL."""
    cdef Py_ssize_t n = ts_event.shape[0], m, i
    lengths = (ts_recv.shape[0], seq.shape[0], order_id.shape[0], price.shape[0], qty.shape[0],
               instrument.shape[0], channel.shape[0], kind.shape[0], side.shape[0], flags.shape[0])
    if any(k != n for k in lengths):
        raise ValueError(f"gather_events: columns differ in length ({n} and {lengths})")
    m = perm.shape[0] if perm is not None else n
    out = np.empty(m, dtype=EVENT_DTYPE)
    if m == 0:
        return out
    cdef unsigned char[::1] ob = out.view(np.uint8)
    cdef tw_event* base = <tw_event*>&ob[0]
    cdef tw_event* e
    cdef int64_t j
    cdef bint bad = False
    with nogil:
        for i in range(m):
            if perm is not None:
                j = perm[i]
                if j < 0 or j >= n:
                    bad = True
                    break
            else:
                j = i
            e = base + i
            e.ts_event = ts_event[j]
            e.ts_recv = ts_recv[j]
            e.seq = seq[j]
            e.order_id = order_id[j]
            e.price = price[j]
            e.qty = qty[j]
            e.instrument = instrument[j]
            e.channel = channel[j]
            e.kind = kind[j]
            e.side = side[j]
            e.flags = flags[j]
            e.reserved = 0
    if bad:
        raise IndexError(f"gather_events: an index of perm is out of range for {n} rows")
    return out


def run_bounds(runs):
    """Offsets ``[0, ..., n]`` where the value of ``runs`` (e.g. the instrument column of a read in
    the table's order) changes."""
    runs = np.asarray(runs)
    n = len(runs)
    cut = np.flatnonzero(runs[1:n] != runs[0:n - 1]) + 1 if n else np.empty(0, np.int64)
    return np.concatenate(([0], cut, [n])).astype(np.int64)
