/* tickwire canonical records and small C helpers shared by every extension module.
 *
 * The layouts here are the contract with tickwire.ext.records (numpy dtypes), the wire
 * format, the shared-memory rings and storage: change one, change all, and bump the
 * wire version.  Every struct is checked for size at compile time.
 */
#ifndef TW_DEFS_H
#define TW_DEFS_H

#include <stdint.h>
#include <stddef.h>

#if defined(__GNUC__)
#  define TW_LIKELY(x)   __builtin_expect(!!(x), 1)
#  define TW_UNLIKELY(x) __builtin_expect(!!(x), 0)
#  define TW_INLINE      static inline __attribute__((always_inline))
#else
#  define TW_LIKELY(x)   (x)
#  define TW_UNLIKELY(x) (x)
#  define TW_INLINE      static inline
#endif

/* The canonical event: one 64-byte record, one cache line. */
typedef struct tw_event {
    int64_t  ts_event;    /*  0: exchange event time, ns since the Unix epoch */
    int64_t  ts_recv;     /*  8: local receive time, ns since the Unix epoch */
    uint64_t seq;         /* 16: per-channel sequence number (0: none) */
    uint64_t order_id;    /* 24: L3 order id (0: none) */
    int64_t  price;       /* 32: price in instrument ticks */
    int64_t  qty;         /* 40: quantity in instrument lots */
    uint32_t instrument;  /* 48: instrument id */
    uint16_t channel;     /* 52: feed channel id */
    uint8_t  kind;        /* 54: TW_KIND_* */
    uint8_t  side;        /* 55: TW_SIDE_* */
    uint32_t flags;       /* 56: TW_FLAG_* bits */
    uint32_t reserved;    /* 60: zero */
} tw_event;

_Static_assert(sizeof(tw_event) == 64, "tw_event must be one 64-byte cache line");
_Static_assert(offsetof(tw_event, instrument) == 48, "tw_event layout");
_Static_assert(offsetof(tw_event, flags) == 56, "tw_event layout");

/* A signal: what a rule emits, fixed-size, one cache line. */
typedef struct tw_signal {
    int64_t  ts_event;    /*  0: exchange time of the triggering event, ns */
    int64_t  ts_recv;     /*  8: receive time of the triggering event, ns */
    int64_t  ts_signal;   /* 16: when the signal was produced, ns (wall clock, or ts_recv in event-clock mode) */
    uint64_t seq;         /* 24: sequence number of the triggering event */
    double   value;       /* 32: the rule's measured value (its units are the rule's) */
    double   strength;    /* 40: value / entry threshold, signed: |strength| >= 1 when it fires */
    uint32_t instrument;  /* 48 */
    uint16_t rule_id;     /* 52: index of the rule instance in the engine */
    uint8_t  rule_kind;   /* 54: TW_RULE_* */
    int8_t   direction;   /* 55: +1 up/buy, -1 down/sell, 0 none */
    uint32_t flags;       /* 56: TW_SIG_* bits */
    uint32_t reserved;    /* 60: zero */
} tw_signal;

_Static_assert(sizeof(tw_signal) == 64, "tw_signal must be one 64-byte cache line");
_Static_assert(offsetof(tw_signal, instrument) == 48, "tw_signal layout");

enum {
    TW_RULE_CUSTOM = 0,
    TW_RULE_MICROPRICE = 1,   /* microprice minus mid, ticks */
    TW_RULE_IMBALANCE = 2,    /* top-k book imbalance, -1..1 */
    TW_RULE_ZSCORE = 3,       /* z-score of mid against its rolling window */
    TW_RULE_SPREAD = 4,       /* spread over its rolling mean (a ratio) */
    TW_RULE_VWAP = 5,         /* mid minus rolling trade VWAP, basis points of the VWAP */
    TW_RULE_EWMA_CROSS = 6,   /* fast minus slow EWMA of mid, ticks */
    TW_RULE_MAX = 7
};

enum {
    TW_SIG_ENTER = 1u << 0,   /* the condition started (or changed direction) */
    TW_SIG_EXIT = 1u << 1     /* the condition ended (only when the rule asks for exit signals) */
};

enum {
    TW_KIND_NONE = 0,
    TW_KIND_ADD = 1,       /* L3: new order; L2: set level to qty (absolute) */
    TW_KIND_MODIFY = 2,    /* L3: change order qty/price; L2: set level to qty (absolute) */
    TW_KIND_DELETE = 3,    /* L3: remove order; L2: remove level */
    TW_KIND_TRADE = 4,     /* a print; L3 with order_id: execution against that resting order */
    TW_KIND_CLEAR = 5,     /* empty both sides of the instrument's book */
    TW_KIND_SNAPSHOT = 6,  /* snapshot marker: flags BEGIN clears the book, END marks it in sync */
    TW_KIND_MAX = 7
};

enum {
    TW_SIDE_BID = 0,       /* bid side; for trades: the buyer was the aggressor */
    TW_SIDE_ASK = 1,       /* ask side; for trades: the seller was the aggressor */
    TW_SIDE_NONE = 2       /* unknown / not applicable */
};

enum {
    TW_FLAG_LAST = 1u << 0,            /* last event of one exchange message (a consistent point) */
    TW_FLAG_SNAPSHOT = 1u << 1,        /* event belongs to a snapshot */
    TW_FLAG_SNAPSHOT_BEGIN = 1u << 2,  /* with TW_KIND_SNAPSHOT */
    TW_FLAG_SNAPSHOT_END = 1u << 3,    /* with TW_KIND_SNAPSHOT */
    TW_FLAG_REPLAY = 1u << 4,          /* produced by replay, not a live feed */
    TW_FLAG_STALE = 1u << 5,           /* with TW_KIND_SNAPSHOT: the book is stale (a feed gap);
                                          out of sync until a snapshot END, contents kept */
    TW_FLAG_RESTART = 1u << 6          /* with a STALE marker: a receiver (re)started here, its
                                          engine's state begins afresh (replay resets it) */
};

/* Why an event was not applied to a book.  0 means applied. */
enum {
    TW_OK = 0,
    TW_REJ_UNKNOWN_INSTRUMENT = 1,
    TW_REJ_BAD_KIND = 2,
    TW_REJ_BAD_SIDE = 3,
    TW_REJ_BAD_QTY = 4,         /* negative, or not positive where an order needs a quantity */
    TW_REJ_PRICE_RANGE = 5,
    TW_REJ_UNKNOWN_ORDER = 6,
    TW_REJ_DUPLICATE_ORDER = 7,
    TW_REJ_OVERFILL = 8,
    TW_REJ_UNKNOWN_LEVEL = 9,
    TW_REJ_CAPACITY = 10,
    TW_REJ_NO_MEMORY = 11,
    TW_REJ_WRONG_CHANNEL = 12,  /* the event came on a feed channel that does not carry its instrument */
    TW_REJ_COUNT = 13
};

/* 1 in a debug build (TICKWIRE_DEBUG=1 at build time), where setup.py defines it. */
#ifndef TW_DEBUG_BUILD
#define TW_DEBUG_BUILD 0
#endif

/* Price of an empty side. */
#define TW_NO_PRICE INT64_MIN

/* Bit helpers for the level bitmaps (x != 0). */
TW_INLINE int tw_msb64(uint64_t x) { return 63 - __builtin_clzll(x); }
TW_INLINE int tw_lsb64(uint64_t x) { return __builtin_ctzll(x); }
TW_INLINE int tw_popcount64(uint64_t x) { return __builtin_popcountll(x); }

#endif /* TW_DEFS_H */
