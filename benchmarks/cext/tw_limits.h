/* Benchmark-only: the plain C loops that are the "limits" of bench_ring.py and bench_hdr.py.
 *
 * They run over a tickwire ring segment (tw_ring.h's layout: head and tail on their own cache
 * lines) with nothing tickwire's ring adds but its wait protocol (below): no ownership checks,
 * no handle struct, no policy branches.  Each side caches the other side's index and reloads
 * it only when full / empty.
 *
 * Batching is the same as tickwire's own batched path: the producer fills slots in place and
 * publishes head once per `batch` records; the consumer copies out everything available (at
 * most `batch` records, at most two memcpy at the wrap) and commits tail once per copy, which
 * is what tw_ring_pop_n does.  Record i carries i at byte `seq_off`; the consumer returns the
 * sum of those, so nothing is optimised away and the benchmark checks what arrived.
 */
#ifndef TW_LIMITS_H
#define TW_LIMITS_H

#include "tw_ring.h"

/* Waiting, as plainly as it can be done with tickwire's wait protocol: spin up to spin_ns
 * re-reading the other side's index, then announce the wait (waiting word, full fence),
 * re-check, and sleep on the futex word.  The other side, after its release store, fences and
 * wakes only when the waiting word is set.  (A pure spin is not a limit on a shared machine:
 * a spinning side keeps the core while the other side is descheduled, and loses far more than
 * the few nanoseconds of the protocol.) */
static uint64_t twb_wait_change(const uint64_t *word, uint64_t seen, int64_t spin_ns,
                                uint32_t *waiting, uint32_t *futex) {
    uint64_t v;
    int64_t end = tw_mono_ns() + spin_ns;
    int i;
    for (;;) {
        for (i = 0; i < 64; i++) {
            tw_cpu_relax();
            if ((v = tw_load_acq64(word)) != seen) return v;
        }
        if (tw_mono_ns() >= end) break;
    }
    for (;;) {
        uint32_t epoch = tw_load_acq32(futex);
        tw_store_seq32(waiting, 1);
        tw_fence_seq();
        if ((v = tw_load_acq64(word)) != seen) return v;
        tw_futex_wait(futex, epoch, 100000000LL);
    }
}

static inline void twb_store_and_wake(uint64_t *word, uint64_t v, uint32_t *waiting, uint32_t *futex) {
    tw_store_rel64(word, v);
    tw_fence_seq();
    if (tw_load_rlx32(waiting) && tw_xchg32(waiting, 0)) {
        tw_fetch_add32(futex, 1);
        tw_futex_wake_all(futex);
    }
}

static void twb_limit_produce(tw_ring_hdr *h, char *data, uint64_t n, const char *tmpl,
                              uint64_t batch, size_t seq_off, int64_t spin_ns) {
    const uint64_t cap = h->capacity, mask = cap - 1;
    const size_t rs = (size_t)h->record_size;
    uint64_t head = tw_load_rlx64(&h->head), published = head;
    uint64_t tail_cache = tw_load_acq64(&h->tail), i;
    for (i = 0; i < n; i++) {
        char *slot;
        if (TW_UNLIKELY(head - tail_cache >= cap)) {
            if (published != head) {
                twb_store_and_wake(&h->head, head, &h->cons_waiting, &h->cons_futex);
                published = head;
            }
            tail_cache = tw_load_acq64(&h->tail);
            while (head - tail_cache >= cap)
                tail_cache = twb_wait_change(&h->tail, tail_cache, spin_ns, &h->prod_waiting, &h->prod_futex);
        }
        slot = data + (head & mask) * rs;
        memcpy(slot, tmpl, rs);
        memcpy(slot + seq_off, &i, sizeof(i));
        head++;
        if (head - published >= batch) {
            twb_store_and_wake(&h->head, head, &h->cons_waiting, &h->cons_futex);
            published = head;
        }
    }
    if (published != head) twb_store_and_wake(&h->head, head, &h->cons_waiting, &h->cons_futex);
}

static uint64_t twb_limit_consume(tw_ring_hdr *h, const char *data, uint64_t n, char *buf,
                                  uint64_t batch, size_t seq_off, int64_t spin_ns) {
    const uint64_t cap = h->capacity, mask = cap - 1;
    const size_t rs = (size_t)h->record_size;
    uint64_t tail = tw_load_rlx64(&h->tail), end = tail + n;
    uint64_t head_cache = tw_load_acq64(&h->head), sum = 0, v, k, j, at, first;
    while (tail < end) {
        if (TW_UNLIKELY(tail == head_cache)) {
            head_cache = tw_load_acq64(&h->head);
            while (tail == head_cache)
                head_cache = twb_wait_change(&h->head, head_cache, spin_ns, &h->cons_waiting, &h->cons_futex);
        }
        k = head_cache - tail;
        if (k > batch) k = batch;
        if (k > end - tail) k = end - tail;
        at = tail & mask;
        first = cap - at < k ? cap - at : k;
        memcpy(buf, data + at * rs, first * rs);
        if (k > first) memcpy(buf + first * rs, data, (k - first) * rs);
        for (j = 0; j < k; j++) {
            memcpy(&v, buf + j * rs + seq_off, sizeof(v));
            sum += v;
        }
        tail += k;
        twb_store_and_wake(&h->tail, tail, &h->prod_waiting, &h->prod_futex);
    }
    return sum;
}

/* Paced producer for the latency limit: record i is due at start_ns + i * interval_ns; the
 * producer spins until then and stamps bytes 8..16 with that intended time (so queueing
 * behind a late record counts, as with a constant-rate load generator). */
static void twb_limit_produce_paced(tw_ring_hdr *h, char *data, uint64_t n, const char *tmpl,
                                    int64_t start_ns, int64_t interval_ns) {
    const uint64_t cap = h->capacity, mask = cap - 1;
    const size_t rs = (size_t)h->record_size;
    uint64_t head = tw_load_rlx64(&h->head), tail_cache = tw_load_acq64(&h->tail), i;
    for (i = 0; i < n; i++) {
        char *slot;
        int64_t due = start_ns + (int64_t)i * interval_ns;
        while (tw_mono_ns() < due) tw_cpu_relax();
        while (TW_UNLIKELY(head - tail_cache >= cap)) {
            tw_cpu_relax();
            tail_cache = tw_load_acq64(&h->tail);
        }
        slot = data + (head & mask) * rs;
        memcpy(slot, tmpl, rs);
        memcpy(slot, &i, sizeof(i));
        memcpy(slot + 8, &due, sizeof(due));
        head++;
        tw_store_rel64(&h->head, head);
    }
}

/* Consumer for the latency limit: lat[i] = arrival time - the stamp in bytes 8..16. */
static void twb_limit_consume_latency(tw_ring_hdr *h, const char *data, uint64_t n, char *buf,
                                      int64_t *lat) {
    const uint64_t mask = h->capacity - 1;
    const size_t rs = (size_t)h->record_size;
    uint64_t tail = tw_load_rlx64(&h->tail), head_cache = tw_load_acq64(&h->head), i;
    int64_t stamp;
    for (i = 0; i < n; i++) {
        while (tail == head_cache) {
            tw_cpu_relax();
            head_cache = tw_load_acq64(&h->head);
        }
        memcpy(buf, data + (tail & mask) * rs, rs);
        memcpy(&stamp, buf + 8, sizeof(stamp));
        lat[i] = tw_mono_ns() - stamp;
        tail++;
        tw_store_rel64(&h->tail, tail);
    }
}

/* The HDR limit: the same bucket arithmetic as tw_hdr_index (HdrHistogram with 1 ns unit,
 * 3 significant digits: sub-bucket half magnitude 10) on a plain counts array, with the same
 * range check, and nothing else (no total, min or max). */
static int64_t twb_plain_hdr(const int64_t *values, int64_t n, int64_t *counts) {
    int64_t i, rejected = 0;
    for (i = 0; i < n; i++) {
        uint64_t v = (uint64_t)values[i];
        int b;
        if (TW_UNLIKELY((v >> 36) != 0)) { rejected++; continue; }
        b = (63 - __builtin_clzll(v | 2047)) - 10;
        counts[((int64_t)b << 10) + (int64_t)(v >> b)]++;
    }
    return rejected;
}

#endif /* TW_LIMITS_H */
