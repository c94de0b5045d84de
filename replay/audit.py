"""The stored history's sequence numbers, checked as a replay goes through them.

A store that misses ticks (rows deleted, a partial restore, a table dropped and refilled) or holds
some twice replays into other books and other signals than live had: 1,000 ticks deleted from one
channel of a 150,000-event run gave 480 signals against live's 71, and nothing said so. The feed's
own losses are not that: the feed handler marks each (a STALE marker after the last event before
the hole; a snapshot stamped with the sequence number it covers), and live met the same hole.

:class:`SeqAudit` follows each channel's sequence numbers through the stream a replay reads (ticks
and the snapshot rows merged in, in the store's order) and keeps what no marker explains: holes
(``(channel, first, last)``) and repeats (a sequence number met again within one publisher epoch).
It works per chunk and per channel with numpy (a sort of the chunk's sequence numbers, nearly
sorted already), never per tick in Python. The store's time order is not quite its sequence
order (exchange times that step back), so a sequence number is only missing once the stream is
two chunks past it; a hole that a range's bounds made (its events stamped outside the range) is
the caller's to rule out (:meth:`StoreSource.audit_findings`).
"""

from __future__ import annotations

import numpy as np

from tickwire.ext.merge import seq_in_order
from tickwire.ext.records import Flag, Kind

__all__ = ["SeqAudit"]

_SNAPSHOT, _STALE, _RESTART = int(Flag.SNAPSHOT), int(Flag.STALE), int(Flag.RESTART)
_BEGIN, _END = int(Flag.SNAPSHOT_BEGIN), int(Flag.SNAPSHOT_END)
_EMPTY = np.empty(0, np.uint64)
#: a sequence number 1 met after numbers past this starts a new numbering (a publisher's new epoch)
_RENUMBER = 64


class _Chan:
    __slots__ = ("_due", "_c", "pend", "tops", "epoch", "excused", "repeats", "stale_since", "stale", "owed", "base",
                 "fresh", "snapping", "expect", "met", "hold", "named")

    def __init__(self, due: np.ndarray, c: int):
        self._due, self._c = due, c  # the audit's array of next sequence numbers (0: not known)
        self.pend = _EMPTY          # sorted sequence numbers met above a hole, waiting for it to fill
        self.tops = []              # the highest number met by each of the last chunks (patience + 1)
        self.epoch = None           # the publisher epoch the markers name
        self.excused = set()        # first sequence numbers of holes a STALE marker announced
        self.repeats = 0
        self.stale_since = None     # the book out of sync after this number (a STALE marker), until
        self.stale = []             # ... a snapshot or END: then (first, last) of that stretch here
        self.owed = 0               # the highest number a STALE marker said was received (stored)
        self.base = 0               # where the numbering's start marker said the history resumes
        self.fresh = False          # a numbering its ticks started (a 1 after higher numbers): its
                                    # epoch's marker, naming the old one's end, is still to come
        self.snapping = False       # within a snapshot (its SNAPSHOT_BEGIN met, not its END yet)
        self.met = False            # a tick of this numbering met
        self.hold = 0               # chunks more its holes wait for the marker of a numbering its ticks started
        self.expect = None          # a STALE marker first naming an epoch, at this number: a restart's
                                    # (a 1 met before any number past it starts a new numbering) or a loss's
        self.named = None           # the epoch markers had named when a numbering its ticks started
                                    # began: a STALE marker naming it again is that numbering's own

    def restart(self) -> None:
        """The numbering starts anew (a publisher's new epoch, a receiver's restart)."""
        self.next, self.excused, self.stale_since, self.stale, self.tops = None, set(), None, [], []
        self.owed = self.base = 0
        self.fresh = self.snapping = False
        self.expect = None
        self.met = False
        self.hold = 0
        self.named = None

    def excuses(self, first: int) -> bool:
        """Whether a hole from ``first`` is the feed's own: announced by a STALE marker, or met
        while the book was out of sync (later losses of a channel without a recovery service
        have no marker of their own: the book is stale from the first one on)."""
        return first in self.excused or (self.stale_since is not None and first > self.stale_since) or \
            any(a <= first <= b for a, b in self.stale)

    @property
    def next(self):
        """The next sequence number due (None: learnt from the next tick)."""
        v = int(self._due[self._c])
        return v or None

    @next.setter
    def next(self, v) -> None:
        self._due[self._c] = v or 0


class SeqAudit:
    """Holes and repeats in each channel's sequence numbers that the stream's markers do not explain.

    Parameters
    ----------
    channels : set of int, optional
        The channels to follow (all: None). A replay of some of a channel's instruments meets its
        sequence numbers with holes (the others' events): leave such channels out.
    patience : int
        Chunks a hole may stay open (late events filling it) before it counts.
    """

    def __init__(self, channels=None, patience: int = 2):
        self.channels = None if channels is None else {int(c) for c in channels}
        self.patience = int(patience)
        self._ch: dict[int, _Chan] = {}
        self.holes: list[tuple[int, int, int]] = []
        self._due = np.zeros(1 << 16, np.uint64)
        self._followed = np.ones(1 << 16, np.uint8) if channels is None else np.zeros(1 << 16, np.uint8)
        if channels is not None:
            self._followed[[c for c in self.channels if 0 <= c < 1 << 16]] = 1

    def _state(self, c: int) -> _Chan:
        st = self._ch.get(c)
        if st is None:
            st = self._ch[c] = _Chan(self._due, c)
        return st

    # -- the stream ---------------------------------------------------------------------------
    def feed(self, chunk: np.ndarray) -> None:
        """Follow one chunk of the stream (in the order the replay reads it)."""
        if not len(chunk):
            return
        if not any(len(st.pend) for st in self._ch.values()):
            # the common case, every tick the next due on its channel, in one pass in C
            raw = np.require(chunk, requirements="CA").view(np.uint8).reshape(-1)   # (C reads int64s)
            if seq_in_order(raw, self._due, self._followed):
                return
        snap = (chunk["flags"] & np.uint32(_SNAPSHOT)) != 0
        if not snap.any():
            self._ticks(chunk)
            return
        cut = np.flatnonzero(snap[1:] != snap[:-1]) + 1
        bounds = [0] + cut.tolist() + [len(chunk)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            (self._marks if snap[a] else self._ticks)(chunk[a:b])

    def _channels_of(self, rows: np.ndarray):
        ch = rows["channel"]
        cs = np.unique(ch).tolist()
        for c in cs:
            if self.channels is None or c in self.channels:
                yield c, (rows if len(cs) == 1 else rows[ch == c])

    def _by_channel(self, rows: np.ndarray):
        """(channel, its sequence numbers in stream order) of a run of ticks: one stable sort of
        the 16-bit channel numbers (a radix sort), one gather of the sequence numbers."""
        ch, sq = rows["channel"], rows["seq"]
        if not len(ch) or ch[0] == ch[-1] and not (ch != ch[0]).any():
            groups = [(int(ch[0]), sq)] if len(ch) else []
        else:
            order = np.argsort(ch, kind="stable")
            ch, sq = ch[order], sq[order]
            cut = np.flatnonzero(ch[1:] != ch[:-1]) + 1
            bounds = [0] + cut.tolist() + [len(ch)]
            groups = [(int(ch[a]), sq[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        for c, s in groups:
            if self.channels is None or c in self.channels:
                yield c, s

    @staticmethod
    def _runs(r: np.ndarray):
        """``r`` (one channel's marker and snapshot rows) cut where its markers change (restart,
        STALE, epoch or sequence number: an instrument's markers of one event are alike): each
        cut is taken as a whole, as it is when the chunks cut there (a stop's STALE marker read
        with a restart's in one chunk counted as a restart's)."""
        marker = np.flatnonzero(r["kind"] == Kind.SNAPSHOT)
        if len(marker) < 2:
            yield r
            return
        flags = r["flags"][marker]
        restart, stale = (flags & np.uint32(_RESTART)) != 0, (flags & np.uint32(_STALE)) != 0
        epoch = r["order_id"][marker]
        seq = r["seq"][marker]
        cut = np.flatnonzero((restart[1:] != restart[:-1]) | (stale[1:] != stale[:-1]) | (epoch[1:] != epoch[:-1])
                             | (seq[1:] != seq[:-1]))
        at = 0
        for k in marker[cut + 1].tolist():
            yield r[at:k]
            at = k
        yield r[at:]

    def _marks(self, rows: np.ndarray) -> None:
        for c, whole in self._channels_of(rows):
            for r in self._runs(whole):
                self._marks_of(c, r)

    def _marks_of(self, c: int, r: np.ndarray) -> None:
        st = self._state(c)
        marker = r["kind"] == Kind.SNAPSHOT
        flags = r["flags"]
        stale = marker & ((flags & np.uint32(_STALE)) != 0)
        epochs = r["order_id"][marker]
        epochs = epochs[epochs != 0]                # (a start's marker, made before any epoch: 0)
        epoch = int(epochs[-1]) if len(epochs) else None
        restart = bool(((flags & np.uint32(_RESTART)) != 0).any())
        changed = bool(epoch and st.epoch is not None and epoch != st.epoch)
        # the marker of the numbering its ticks started (a new epoch's, met after its first ticks
        # in the store's order) names the old one's last number, not this one's
        fresh = st.fresh and bool(stale.any()) and epoch is not None
        if fresh and st.named is not None and epoch == st.named:
            # the epoch named before its ticks started it (its marker was met first, the old
            # epoch's held tail between them): a loss's or a stop's marker of this numbering
            fresh = st.fresh = False
            st.hold = 0
        if fresh:
            st.fresh = False
            st.hold = 0
        changed = changed and not fresh         # (its ticks already started the new numbering)
        anew = restart or changed
        # STALE markers of the epoch followed (the first to name one: the receiver's snapshot
        # markers carry none)
        ours = not anew and not fresh and epoch is not None and (st.epoch is None or epoch == st.epoch)
        if anew:
            # a receiver's (re)start, or the publisher's new epoch: the numbering starts anew
            if changed and not restart and stale.any():
                # the new epoch's marker (met before its ticks) names the old numbering's last
                # number: owed by the old one (its ticks deleted at its end, or all of them: a review)
                st.owed = max(st.owed, int(r["seq"][stale].max()))
            self._end_numbering(c, st)
            st.restart()
            # a receiver's restart resumes its history after its marker's number; a publisher's
            # new epoch numbers from 1 (its marker's number is the old epoch's end: taken for
            # where the new history resumes, it excused every deletion up to it, all of a new
            # epoch's ticks: a review)
            st.base = int(r["seq"][stale].max()) if stale.any() and restart else 0
            if changed and not restart:
                st.next = 1                         # (a publisher's new epoch is stored from 1)
                # out of sync from its start to its snapshot: a loss there has no marker of its own
                # ("misses 64 events" of a clean daemon store, the worker's logged losses: a review)
                st.stale_since = 0
        elif (epoch and st.epoch is None and stale.any() and not restart and not fresh
              and not ((flags & np.uint32(_END)) != 0).any()):
            # the first marker to name an epoch (a store's join markers name none): a loss's, or a
            # publisher restart's (the old epoch's last number): a 1 met before any number past it
            # says the latter (a review: the old epoch's ticks all deleted went unsaid; a first epoch
            # of 64 ticks or fewer read as 64 repeats)
            st.expect = int(r["seq"][stale].max())
        if epoch:
            st.epoch = epoch
        for m in r["seq"][stale].tolist():
            if ours:
                # every number up to it was received, and stored before it (a restart's
                # marker says where the history resumes, an epoch's new one the old one's
                # end: neither is of this numbering); checked when the numbering ends
                st.owed = max(st.owed, int(m))
            if not anew:
                st.excused.add(int(m) + 1)
            if st.stale_since is None and not (changed and not restart):
                # (the marker of a numbering its ticks started: the new epoch's books were out of
                # sync from its start to its snapshot, and a loss there has no marker of its own: a
                # stretch from m, the old epoch's end, excused none of them, "misses 64 events"
                # of a clean daemon store: a review)
                st.stale_since = 0 if fresh else int(m)
        below = r["seq"][~stale]
        if st.expect is not None and not stale.any() and len(below) and st.next is not None \
                and int(below.max()) + 1 < st.next:
            # a snapshot stamped below the numbers met, after a marker first naming an epoch: the
            # new epoch's (its ticks all gone): the old numbering ended at that marker
            self._end_numbering(c, st)
            st.restart()
            st.next = 1                             # (a publisher's new epoch is stored from 1)
        if (marker & ((flags & np.uint32(_BEGIN)) != 0)).any():
            st.snapping = True
        # END markers alone, outside a snapshot: a silent channel back with nothing lost (or a feed
        # in sync from its first message), no snapshot: the silence excuses nothing (taken for a
        # snapshot, its stretch excused every tick deleted in it, all of a channel's: a review)
        resume = not st.snapping and not stale.any() and bool(marker.all())
        covered = r["seq"][~stale]
        if resume:
            if st.stale_since is not None:
                st.excused.discard(st.stale_since + 1)
                st.stale_since = None
        elif len(covered) and st.stale_since is not None:
            st.stale.append((st.stale_since + 1, int(covered.max())))
            st.stale_since = None
        if (marker & ((flags & np.uint32(_END)) != 0)).any():
            st.snapping = False
        if resume:
            return
        if len(covered) and st.next is not None:
            # a snapshot stamped S (an END alone returned above): the book has every event up to S
            top = int(covered.max()) + 1
            if top > st.next:
                self._jump(c, st, top)

    def _ticks(self, rows: np.ndarray) -> None:
        for c, s in self._by_channel(rows):
            st = self._state(c)
            # a publisher's new epoch numbers from 1 again; its marker, stamped with the old epoch's
            # last number, is met after the new epoch's first ticks (the store's order): a 1 after
            # higher numbers starts the numbering anew here (they read as 39,712 repeats)
            # (past _RENUMBER only: a 1 met just after a 2 or a 3 is the stream's time order, not a
            # new numbering)
            ones = np.flatnonzero(s == 1)
            if st.expect is not None and len(s):
                # (after a restart's marker the new numbering's first ticks may be gone: a clear
                # drop below the numbers met says it too)
                seen = np.maximum.accumulate(np.concatenate(([np.uint64(max((st.next or 1) - 1, 0))], s[:-1])))
                drop = np.flatnonzero(s.astype(np.int64) + _RENUMBER < seen.astype(np.int64))[:1]
                ones = np.union1d(ones, drop)
            at = 0
            for k in ones.tolist():
                top = max(int(s[at:k].max()) if k > at else 0, (st.next or 1) - 1,
                          int(st.pend[-1]) if len(st.pend) else 0)
                # (a 1 after a restart's marker, before any number past it: whatever came before)
                expected = st.expect is not None and top <= st.expect
                if top > _RENUMBER or expected:
                    if k > at:
                        self._numbers(c, st, s[at:k])
                    self._end_numbering(c, st)
                    st.restart()
                    st.fresh = not expected
                    st.hold = 8 * (self.patience + 1) if st.fresh else 0
                    if expected:
                        st.next = 1                 # (a publisher's new epoch is stored from 1)
                        st.stale_since = 0          # (out of sync to its snapshot, as above)
                    elif st.epoch is not None:
                        # a store whose markers name epochs: a new epoch's books are out of sync
                        # from its start to its snapshot, whether its marker is still to come or
                        # was met before its 1 (the old epoch's held tail, stored past the book's
                        # number that marker names, came between them: "misses 22 events", the
                        # losses a daemon logged before the new epoch's snapshot came)
                        st.stale_since = 0
                        st.named = st.epoch
                    at = k
                elif st.expect is not None:
                    st.expect = None
            self._numbers(c, st, s[at:] if at else s)
            if st.expect is not None and (st.next or 0) - 1 > st.expect:
                st.expect = None                    # numbers past it: a loss's marker

    def _numbers(self, c: int, st: _Chan, s: np.ndarray) -> None:
        """One run of a channel's sequence numbers, in stream order, within one numbering."""
        s = np.sort(np.concatenate((st.pend, s)) if len(st.pend) else s, kind="stable")
        st.met = st.met or bool(len(s))
        if st.next is None:
            st.next = int(s[0])
        low = int(np.searchsorted(s, np.uint64(st.next)))
        if low:                                     # met again (a straggler of a hole closed: the same)
            st.repeats += low
            s = s[low:]
        if len(s) > 1:
            same = s[1:] == s[:-1]
            n = int(np.count_nonzero(same))
            if n:
                st.repeats += n
                s = s[np.concatenate(([True], ~same))]
        st.pend = s
        st.tops.append(max(st.next - 1, int(s[-1]) if len(s) else 0))
        if len(st.tops) > self.patience + 1:
            del st.tops[0]
        if st.hold:
            st.hold -= 1
        if not self._advance(st) and len(st.tops) > self.patience and not st.hold:
            # (not in a numbering its ticks started, before its marker, for a few chunks: the books
            # were out of sync from its start, which the marker, met later, says; a marker that never
            # comes holds them no longer, the numbers above them held in memory meanwhile)
            # a hole below a number met ``patience`` chunks ago is for good (late events fill
            # a hole within that); those above it may yet fill
            self._close(c, st, below=st.tops[0])

    def _advance(self, st: _Chan) -> bool:
        """Take the run of sequence numbers that continues from ``next``; True when none wait."""
        s = st.pend
        if len(s) and int(s[0]) == st.next:
            k = len(s)
            want = np.arange(st.next, st.next + k, dtype=np.uint64)
            off = np.flatnonzero(s != want)
            k = int(off[0]) if len(off) else k
            st.next += k
            st.pend = s = s[k:]
        return not len(s)

    def _jump(self, c: int, st: _Chan, top: int) -> None:
        """A snapshot stamped ``top - 1``: the book has every event below ``top``. The holes below
        it are said now, through the excuse rules (the stretch the book was out of sync in is the
        feed's own; numbers up to a loss's STALE marker were received, so deleted), not dropped:
        ticks deleted just before a loss's marker went unsaid, and so did a hole still waiting
        out its patience, as the chunks fell (a review)."""
        below = st.pend[st.pend < np.uint64(top)]
        met = np.unique(below) if len(below) else below
        edges = [st.next] + (met + np.uint64(1)).tolist()
        ends = met.tolist() + [top]
        for first, end in zip(edges, ends):          # the holes [first, end) among what waits
            first, end = int(first), int(end)
            if first >= end:
                continue
            for a, b in self._unexcused(st, first, end - 1):
                self.holes.append((c, a, b))
        st.next = top
        st.pend = st.pend[st.pend >= np.uint64(top)]
        self._advance(st)

    @staticmethod
    def _unexcused(st: _Chan, first: int, last: int):
        """The parts of the hole ``first..last`` outside the stretches the book was out of sync in
        that the excuse rules do not excuse."""
        parts = [(first, last)]
        for a, b in st.stale:
            out = []
            for x, y in parts:
                if b < x or a > y:
                    out.append((x, y))
                    continue
                if x < a:
                    out.append((x, a - 1))
                if y > b:
                    out.append((b + 1, y))
            parts = out
        return [(x, y) for x, y in parts if not st.excuses(x)]

    def _close(self, c: int, st: _Chan, below=None) -> None:
        """The holes below what waits are for good: all of them, or those below ``below`` (the
        highest number met some chunks ago). One pass over the waiting numbers whatever the
        holes' count (a hole at a time, each a pass, took 40 s for a store's 58,000 holes)."""
        s = st.pend
        if not len(s):
            return
        starts = np.concatenate(([0], np.flatnonzero(s[1:] != s[:-1] + np.uint64(1)) + 1))  # runs after a hole
        lasts = s[starts] - np.uint64(1)                # each hole's last number (increasing)
        n = len(starts) if below is None else int(np.searchsorted(lasts, np.uint64(below)))
        if not n:
            return
        firsts = [st.next] + (s[starts[1:n] - 1] + np.uint64(1)).tolist()
        for first, last in zip(firsts, lasts[:n].tolist()):
            if not st.excuses(first):
                self.holes.append((c, first, last))
        end = int(starts[n]) if n < len(starts) else len(s)    # the runs up to here are taken
        st.next, st.pend = int(s[end - 1]) + 1, s[end:]

    def _end_numbering(self, c: int, st: _Chan) -> None:
        """A numbering ends (the stream, a restart, a new epoch): every hole still open counts,
        and so do the numbers up to what its STALE markers said was received that never came (a
        channel's last ticks, or all of them: the ticks of a restore that missed the latest
        partition were not said, nor a channel's ticks all deleted: a review)."""
        self._close(c, st)
        if not st.owed or (st.next or 0) > st.owed:
            return
        # none met: from where the numbering's start said the history resumes, or past the
        # stretches the book was out of sync in (a start mid-stream stores from its first message)
        first = st.next if st.next is not None else max([st.base + 1] + [b + 1 for _, b in st.stale])
        # (none of the numbering met at all: a new epoch's out-of-sync start excuses its losses,
        # not every one of its ticks: all of them gone is a restore that missed them)
        excused = st.excuses(first) if st.met else (first in st.excused or any(a <= first <= b for a, b in st.stale))
        if first <= st.owed and not excused:
            self.holes.append((c, first, st.owed))
        st.next = st.owed + 1

    def finish(self) -> None:
        """The stream ended: every hole still open counts."""
        for c, st in self._ch.items():
            self._end_numbering(c, st)

    # -- what was found ----------------------------------------------------------------------
    @property
    def repeats(self) -> dict[int, int]:
        return {c: st.repeats for c, st in sorted(self._ch.items()) if st.repeats}

    @property
    def missing(self) -> int:
        return sum(last - first + 1 for _, first, last in self.holes)
