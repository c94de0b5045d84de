/* tickwire shared-memory rings: the segment layout, C11 atomics, futex waits and shm helpers.
 *
 * The ring logic itself (push, publish, pop, lap detection) is Cython, in ring.pyx/ring.pxd;
 * this header holds what Cython cannot spell: memory orders, CPU pause, futexes, and the
 * POSIX shared-memory calls.  (The benchmark's plain C limit loops over the same segment live
 * in benchmarks/cext/tw_limits.h, outside the product.)
 *
 * Segment layout (docs/rings.md has the full description):
 *
 *     0      tw_ring_hdr: identity (magic, version, policy, record size, capacity, ...)
 *     128    producer line: head, consumer wake-up words, closed flag, producer owner
 *     256    consumer line: tail, producer wake-up words, consumer owner
 *     384    record dtype description (ASCII, numpy .npy-style descr), NUL-padded
 *     4096   records: capacity * record_size bytes, contiguous (position p lives in slot p % capacity)
 *     ...    broadcast only: one uint64 sequence word per slot (64-byte aligned)
 *
 * Positions (head, tail, per-consumer cursors) are 64-bit counts of records since creation;
 * they never wrap in practice (2**64 records).
 */
#ifndef TW_RING_H
#define TW_RING_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>

#include "tw_defs.h"

#define TW_RING_MAGIC 0x474E495257544B54ULL   /* "TKWTRING" read as a little-endian uint64 */
#define TW_RING_VERSION 1u
#define TW_RING_HEADER_SIZE 4096u
#define TW_RING_DESCR_OFFSET 384u
#define TW_RING_DESCR_MAX (TW_RING_HEADER_SIZE - TW_RING_DESCR_OFFSET)

enum { TW_RING_BLOCKING = 0, TW_RING_BROADCAST = 1 };

typedef struct tw_ring_hdr {
    /* identity: written once by the creator, magic last (release) */
    uint64_t magic;            /*   0 */
    uint32_t version;          /*   8 */
    uint32_t policy;           /*  12: TW_RING_BLOCKING / TW_RING_BROADCAST */
    uint64_t record_size;      /*  16: bytes per record */
    uint64_t capacity;         /*  24: records (a power of two) */
    uint64_t data_offset;      /*  32: bytes from the segment start to slot 0 */
    uint64_t seq_offset;       /*  40: broadcast: bytes to the per-slot sequence words; 0 otherwise */
    uint64_t segment_size;     /*  48: bytes of the whole segment */
    int64_t  created_ns;       /*  56: CLOCK_REALTIME at creation */
    int32_t  creator_pid;      /*  64 */
    uint32_t descr_len;        /*  68: bytes of the dtype description at TW_RING_DESCR_OFFSET */
    uint32_t header_size;      /*  72: TW_RING_HEADER_SIZE */
    uint32_t _pad0;            /*  76 */
    uint8_t  _pad1[48];        /*  80 */
    /* producer line: the producer writes head at every publish; consumers read it */
    uint64_t head;             /* 128: records published */
    uint32_t cons_waiting;     /* 136: set by a consumer about to sleep, cleared by the waker */
    uint32_t cons_futex;       /* 140: consumers sleep on this word; bumped on wake-up */
    uint32_t closed;           /* 144: the producer closed the ring (end of stream) */
    uint32_t _pad2;            /* 148 */
    uint64_t producer_owner;   /* 152: pid << 32 | handle nonce of the producing handle; 0: none */
    uint64_t producer_start;   /* 160: low 32 bits of that process's start time (clock ticks after
                                         boot) << 32 | the same nonce: tells a recycled pid apart */
    uint8_t  _pad3[88];        /* 168 */
    /* consumer line (blocking policy): the consumer writes tail at every commit */
    uint64_t tail;             /* 256: records consumed (committed) */
    uint32_t prod_waiting;     /* 264: set by a producer about to sleep on a full ring */
    uint32_t prod_futex;       /* 268: the producer sleeps on this word */
    uint64_t consumer_owner;   /* 272: the consuming handle (blocking policy), as producer_owner */
    uint64_t consumer_start;   /* 280: as producer_start */
    uint8_t  _pad4[96];        /* 288 */
    char     descr[TW_RING_DESCR_MAX];  /* 384 */
} tw_ring_hdr;

_Static_assert(sizeof(tw_ring_hdr) == TW_RING_HEADER_SIZE, "tw_ring_hdr is one page");
_Static_assert(offsetof(tw_ring_hdr, head) == 128, "producer line at 128");
_Static_assert(offsetof(tw_ring_hdr, tail) == 256, "consumer line at 256 (128 bytes apart)");
_Static_assert(offsetof(tw_ring_hdr, descr) == TW_RING_DESCR_OFFSET, "descr offset");
_Static_assert(sizeof(_Atomic uint64_t) == sizeof(uint64_t) && ATOMIC_LLONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free and plain-sized: they live in shared memory");
_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t) && ATOMIC_INT_LOCK_FREE == 2,
               "32-bit atomics must be lock-free and plain-sized");

/* ---- atomics on plain fields of the shared segment (the fields are not declared _Atomic so
 *      that Cython can name them; every concurrent access goes through these) ---------------- */

#define TW_A64(p) ((_Atomic uint64_t *)(p))
#define TW_A32(p) ((_Atomic uint32_t *)(p))

TW_INLINE uint64_t tw_load_acq64(const uint64_t *p) {
    return atomic_load_explicit((const _Atomic uint64_t *)p, memory_order_acquire);
}
TW_INLINE uint64_t tw_load_rlx64(const uint64_t *p) {
    return atomic_load_explicit((const _Atomic uint64_t *)p, memory_order_relaxed);
}
TW_INLINE void tw_store_rel64(uint64_t *p, uint64_t v) {
    atomic_store_explicit(TW_A64(p), v, memory_order_release);
}
TW_INLINE void tw_store_rlx64(uint64_t *p, uint64_t v) {
    atomic_store_explicit(TW_A64(p), v, memory_order_relaxed);
}
TW_INLINE uint32_t tw_load_acq32(const uint32_t *p) {
    return atomic_load_explicit((const _Atomic uint32_t *)p, memory_order_acquire);
}
TW_INLINE uint32_t tw_load_rlx32(const uint32_t *p) {
    return atomic_load_explicit((const _Atomic uint32_t *)p, memory_order_relaxed);
}
TW_INLINE void tw_store_rel32(uint32_t *p, uint32_t v) {
    atomic_store_explicit(TW_A32(p), v, memory_order_release);
}
TW_INLINE void tw_store_seq32(uint32_t *p, uint32_t v) {
    atomic_store_explicit(TW_A32(p), v, memory_order_seq_cst);
}
TW_INLINE uint32_t tw_xchg32(uint32_t *p, uint32_t v) {
    return atomic_exchange_explicit(TW_A32(p), v, memory_order_seq_cst);
}
TW_INLINE uint32_t tw_fetch_add32(uint32_t *p, uint32_t v) {
    return atomic_fetch_add_explicit(TW_A32(p), v, memory_order_seq_cst);
}
/* Compare-and-swap (ownership words): 1 when *p was `expected` and is now `desired`. */
TW_INLINE int tw_cas64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return atomic_compare_exchange_strong_explicit(TW_A64(p), &expected, desired,
                                                   memory_order_acq_rel, memory_order_acquire);
}
TW_INLINE void tw_fence_acq(void) { atomic_thread_fence(memory_order_acquire); }
TW_INLINE void tw_fence_rel(void) { atomic_thread_fence(memory_order_release); }
TW_INLINE void tw_fence_seq(void) { atomic_thread_fence(memory_order_seq_cst); }

/* One spin-wait hint (PAUSE on x86, YIELD on arm64). */
TW_INLINE void tw_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* CLOCK_MONOTONIC in ns: the clock every tickwire process shares for latency stamps. */
TW_INLINE int64_t tw_mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

TW_INLINE int64_t tw_real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- futex (shared, not FUTEX_PRIVATE: the word lives in memory mapped by several processes) */

/* Sleep while *addr == expected, at most timeout_ns (< 0: no limit).  Returns 0 when woken,
 * or -1 with errno EAGAIN (the word had changed), ETIMEDOUT or EINTR. */
static inline long tw_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
    struct timespec ts, *tp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        tp = &ts;
    }
    return syscall(SYS_futex, addr, FUTEX_WAIT, expected, tp, NULL, 0);
}

/* Wake every process sleeping on addr. */
static inline long tw_futex_wake_all(uint32_t *addr) {
    return syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ---- POSIX shared memory ------------------------------------------------------------------ */

/* Create segment `name` ("/x") of `size` bytes, mode 0600, O_EXCL, mapped read-write and
 * prefaulted.  Returns the mapping, or NULL with *err set to an errno value. */
static inline void *tw_shm_create(const char *name, size_t size, int *err) {
    void *p;
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) { *err = errno; return NULL; }
    /* the umask can only narrow 0600; fchmod makes the mode exact whatever it is */
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)size) != 0) {
        *err = errno; close(fd); shm_unlink(name); return NULL;
    }
    /* reserve the pages now: /dev/shm (a container's is 64 MB) may hold less than the ring, and
       a store into a page it cannot back is a SIGBUS, not an error (ENOSPC here instead) */
    {
        int e;
        do { e = posix_fallocate(fd, 0, (off_t)size); } while (e == EINTR);   /* (tmpfs: any signal) */
        if (e != 0 && e != EINVAL && e != EOPNOTSUPP) { *err = e; close(fd); shm_unlink(name); return NULL; }
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) { *err = errno; close(fd); shm_unlink(name); return NULL; }
    close(fd);
    *err = 0;
    return p;
}

/* Map an existing segment read-write; its size comes from fstat.  NULL with *err on failure
 * (ENOENT: no such ring; EPERM: the segment is another user's, or others may open it: *uid and
 * *mode say whose and how, and nothing is mapped).  *size is 0 when the segment exists but is
 * still empty (being made). */
static inline void *tw_shm_attach(const char *name, size_t *size, int *err, long *uid, int *mode) {
    struct stat st;
    void *p;
    int fd = shm_open(name, O_RDWR, 0);
    *size = 0;
    if (fd < 0) { *err = errno; return NULL; }
    if (fstat(fd, &st) != 0) { *err = errno; close(fd); return NULL; }
    *uid = (long)st.st_uid;
    *mode = (int)(st.st_mode & 07777);
    if (st.st_uid != geteuid() || (st.st_mode & 077) != 0) { *err = EPERM; close(fd); return NULL; }
    if (st.st_size < (off_t)TW_RING_HEADER_SIZE) { *err = 0; close(fd); return NULL; }
    p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) { *err = errno; close(fd); return NULL; }
    close(fd);
    *size = (size_t)st.st_size;
    *err = 0;
    return p;
}

/* Mode bits of segment `name`, or -1 with errno. */
static inline int tw_shm_mode(const char *name) {
    struct stat st;
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0) return -1;
    if (fstat(fd, &st) != 0) { close(fd); return -1; }
    close(fd);
    return (int)(st.st_mode & 07777);
}

static inline int tw_shm_unmap(void *p, size_t size) { return munmap(p, size) == 0 ? 0 : errno; }
static inline int tw_shm_unlink(const char *name) { return shm_unlink(name) == 0 ? 0 : errno; }

#endif /* TW_RING_H */
