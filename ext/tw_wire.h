/* tickwire wire format: constants, message types, drop reasons and little-endian helpers.
 *
 * The byte layout is documented in docs/wire-format.md and mirrored by the pure-Python
 * reference codec in feeds/wire.py (tests/test_wire.py checks that the two agree).
 * A message on a data socket is two ZeroMQ frames:
 *
 *     [topic: "tw." + 5 decimal digits of the channel + "."]  (9 bytes, for SUB prefix filters)
 *     [payload: 48-byte header + count * 64-byte tw_event]
 *
 * The events are the canonical tw_event records byte for byte (tw_defs.h), so decoding is a
 * header check and a copy; that holds on little-endian hosts only, which is checked here.
 */
#ifndef TW_WIRE_H
#define TW_WIRE_H

#include <stdint.h>
#include <string.h>
#include "tw_defs.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#  error "tickwire's wire codec copies little-endian tw_event records as they are: little-endian hosts only"
#endif

#define TW_WIRE_MAGIC        0x52495754u   /* the bytes "TWIR" read as a little-endian uint32 */
#define TW_WIRE_VERSION      1
#define TW_WIRE_HEADER_SIZE  48
#define TW_WIRE_EVENT_SIZE   64
#define TW_WIRE_TOPIC_SIZE   9             /* "tw.00042." */

_Static_assert(sizeof(tw_event) == TW_WIRE_EVENT_SIZE, "the wire carries tw_event records as they are");

/* Message types (header byte 5). */
enum {
    TW_MSG_DATA = 1,              /* count events, sequence numbers seq .. seq + count - 1 */
    TW_MSG_HEARTBEAT = 2,         /* no events; seq is the sequence number of the next event */
    TW_MSG_SNAPSHOT_REQUEST = 3,  /* client -> snapshot service (DEALER -> ROUTER) */
    TW_MSG_SNAPSHOT = 4,          /* one part of a snapshot reply; seq is the last sequence covered */
    TW_MSG_RETRANSMIT_REQUEST = 5,/* client -> recovery service: count events from seq, no payload */
    TW_MSG_RETRANSMIT = 6,        /* one part of a retransmission: events seq .. seq + count - 1;
                                     the FINAL part carries none, seq = the publisher's next */
    TW_MSG_TYPE_MAX = 7
};

/* Header flags (header bytes 6-7). */
enum {
    TW_WFLAG_FINAL = 1u << 0,        /* SNAPSHOT, RETRANSMIT: the last part of the reply */
    TW_WFLAG_UNAVAILABLE = 1u << 1,  /* SNAPSHOT: the service cannot serve this channel now;
                                        RETRANSMIT: not this channel or epoch */
    TW_WFLAG_END = 1u << 2,          /* HEARTBEAT: the publisher's last message of this epoch on
                                        this channel (seq: one past its last event) */
    TW_WFLAG_KNOWN = (1u << 3) - 1
};

/* Why a message was dropped (0: accepted).  Malformed messages are counted under the first
 * check that fails, in this order: frames, topic syntax, header length, magic, version,
 * header fields, topic/channel match, count limit, length, events. */
enum {
    TW_DROP_OK = 0,
    TW_DROP_BAD_FRAMES = 1,       /* not exactly [topic][payload] */
    TW_DROP_BAD_TOPIC = 2,        /* topic not "tw.NNNNN.", or not the header's channel */
    TW_DROP_TRUNCATED = 3,        /* shorter than the header, or than header + count events */
    TW_DROP_BAD_MAGIC = 4,        /* not a tickwire message (garbage) */
    TW_DROP_BAD_VERSION = 5,      /* a wire version this build does not speak */
    TW_DROP_BAD_HEADER = 6,       /* unknown type or flags, event size != 64, events in a heartbeat,
                                     a snapshot message on a data socket */
    TW_DROP_OVERSIZED = 7,        /* more events than the receiver's per-message limit */
    TW_DROP_BAD_LENGTH = 8,       /* bytes after the last event */
    TW_DROP_BAD_EVENT = 9,        /* an event with an unknown kind or side, a flag bit a publisher
                                     may not set on it, or reserved != 0 */
    TW_DROP_UNKNOWN_CHANNEL = 10, /* a channel this receiver does not serve */
    TW_DROP_DUPLICATE = 11,       /* every event already seen (seq + count <= next expected), or a
                                     heartbeat behind the stream (seq < next expected) */
    TW_DROP_OLD_EPOCH = 12,       /* from a publisher epoch older than the channel's */
    TW_DROP_OVERFLOW = 13,        /* recovery buffer full: the oldest buffered message went */
    TW_DROP_STALE_REPLY = 14,     /* a snapshot part for no outstanding request, or out of order */
    TW_DROP_UNSYNCED = 15,        /* data for a channel waiting to retry a failed recovery */
    TW_DROP_IMPLAUSIBLE = 16,     /* a sequence or epoch jump the publisher's service did not confirm */
    TW_DROP_COUNT = 17
};

/* A decoded header (host order). */
typedef struct tw_wire_header {
    uint32_t magic;
    uint8_t  version;
    uint8_t  type;
    uint16_t flags;
    uint16_t channel;
    uint16_t event_size;
    uint32_t count;
    uint64_t seq;
    int64_t  send_time;
    uint64_t epoch;
    uint32_t request_id;
    uint32_t part;
} tw_wire_header;

/* -- little-endian loads and stores at any alignment (memcpy compiles to one mov) ------- */
TW_INLINE uint16_t tw_ld16(const char *p) { uint16_t v; memcpy(&v, p, 2); return v; }
TW_INLINE uint32_t tw_ld32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
TW_INLINE uint64_t tw_ld64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
TW_INLINE void tw_st16(char *p, uint16_t v) { memcpy(p, &v, 2); }
TW_INLINE void tw_st32(char *p, uint32_t v) { memcpy(p, &v, 4); }
TW_INLINE void tw_st64(char *p, uint64_t v) { memcpy(p, &v, 8); }

/* Write the topic of `channel` ("tw." + 5 digits + ".") into out[0..8]. */
TW_INLINE void tw_wire_topic(char *out, uint16_t channel) {
    unsigned v = channel;
    int i;
    out[0] = 't'; out[1] = 'w'; out[2] = '.'; out[8] = '.';
    for (i = 7; i >= 3; i--) { out[i] = (char)('0' + v % 10); v /= 10; }
}

#endif /* TW_WIRE_H */
