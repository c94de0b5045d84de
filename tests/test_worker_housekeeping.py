"""The worker's housekeeping thread: every value the engine's thread records reaches the totals
and the HDR interval log exactly once, across recorder swaps (no value lost, none counted twice)."""

from __future__ import annotations

import queue
import threading
import time
import types

from tickwire.engine.latency import IntervalLogWriter, read_interval_log
from tickwire.engine.worker import Worker
from tickwire.ext.hdr import STAGES, StageRecorders


class _Engine:
    def __init__(self):
        self.stages = None

    def set_timing(self, every, stages, *, to_ring):
        assert to_ring                      # a worker's tick-to-signal ends in the ring
        self.stages = stages


def _worker(tmp_path):
    """A Worker with only what the interval hand-off uses (no sockets, rings or config file)."""
    w = Worker.__new__(Worker)
    w.cfg = types.SimpleNamespace(timing_every=1)
    w.engine = _Engine()
    w.stages, w.totals, w._logged, w._spare = StageRecorders(), StageRecorders(), StageRecorders(), StageRecorders()
    w._handoff = queue.SimpleQueue()
    w._swap_lock = threading.Lock()
    w.hlog = IntervalLogWriter(tmp_path / "w.hlog", w._logged, interval=1.0)
    w.write_status = lambda: None
    return w


def test_swapped_intervals_reach_the_log_and_totals_once(tmp_path):
    w = _worker(tmp_path)
    stop = threading.Event()
    hk = threading.Thread(target=w.housekeeping, args=(stop,))
    hk.start()
    recorded = 0
    swaps = 0
    for i in range(200):                           # the engine's thread: record, now and then swap
        for name in STAGES:
            w.stages[name].record(1000 + i)
        recorded += 1
        assert w.engine.stages is None or w.engine.stages is w.stages
        if i % 10 == 9:
            if i % 20 == 19:                       # half the time: the last interval is logged by now
                end = time.monotonic() + 5
                while w._spare is None and time.monotonic() < end:
                    time.sleep(0.001)
            swaps += w.swap_stages()               # otherwise it may still be in flight: skipped
    stop.set()
    hk.join(5)
    w.write_hdr_interval()                         # shutdown: the rest, on the engine's thread
    w.hlog.close(final=False)
    assert swaps >= 10
    for name in STAGES:
        assert w.totals[name].total == recorded, name
    logged = {}
    for iv in read_interval_log(tmp_path / "w.hlog"):
        logged[iv.tag] = logged.get(iv.tag, 0) + iv.histogram.get_total_count()
    assert logged == {name: recorded for name in STAGES}


def test_since_start_counts_only_grow_across_swaps_and_end_exact(tmp_path):
    """What the latency histograms are made of (Prometheus counters): read on the housekeeping
    thread while the engine's thread records and swaps, every stage's total never goes back,
    and at the end it is every value recorded, once."""
    from tickwire.engine.metrics import latency_histogram

    w = _worker(tmp_path)
    seen = []
    stop = threading.Event()

    def housekeeping():                            # the status file's reads, back to back
        while not stop.is_set():
            seen.append({n: latency_histogram(r)["count"] for n, r in w.since_start().items()})
            time.sleep(0.001)

    hk = threading.Thread(target=housekeeping)
    hk.start()
    swaps = 0
    for i in range(3000):
        for name in STAGES:
            w.stages[name].record(500 + i)
        if i % 50 == 49:
            end = time.monotonic() + 5
            while time.monotonic() < end:          # held off while the totals are read: again
                if w.swap_stages():
                    swaps += 1
                    break
                time.sleep(0.0005)
    stop.set()
    hk.join(5)
    w.write_hdr_interval()
    final = {n: r.total for n, r in w.since_start().items()}
    assert swaps >= 10 and len(seen) > 10
    for name in STAGES:
        counts = [s[name] for s in seen]
        assert counts == sorted(counts), name               # never backwards (no counter reset)
        assert final[name] == 3000, name                    # every value, once


def test_a_history_note_is_moved_across_a_publisher_restart_recorded_in_the_ring():
    """A worker killed just after the publisher restarted leaves a note of the old epoch while its
    tick ring holds the new epoch's first events (sequence 1 up). The restart's marker in the
    ring carries the new epoch: the note moves to it, past the events the ring holds, so that
    the next worker neither asks for them again (3,387 and 4,682 stored twice, seen) nor counts
    the old epoch's end as a loss that cannot be sized."""
    import uuid

    import numpy as np

    from tickwire.engine.worker import note_points
    from tickwire.ext import EVENT_DTYPE, Flag, Kind
    from tickwire.ext.ring import Ring

    old, new = 1_700_000_000_000_000_000, 1_700_000_100_000_000_000
    ev = np.zeros(60, EVENT_DTYPE)
    ev["channel"] = np.arange(60) % 2                       # channel 1 has no restart in the ring
    ev["seq"][0::2] = 5000 + np.arange(30)                  # channel 0: old epoch 5000..
    ev["seq"][1::2] = 700 + np.arange(30)                   # channel 1: 700.., old epoch all along
    ev["kind"] = Kind.ADD
    marker = np.zeros(1, EVENT_DTYPE)
    marker["kind"], marker["flags"], marker["order_id"] = Kind.SNAPSHOT, Flag.SNAPSHOT | Flag.STALE, new
    marker["seq"] = 5009
    restarted = np.zeros(20, EVENT_DTYPE)                   # channel 0, the new epoch from 1
    restarted["seq"], restarted["kind"] = np.arange(1, 21), Kind.ADD
    with Ring.create(f"tw-test-{uuid.uuid4().hex[:10]}", EVENT_DTYPE, 1 << 10) as ring:
        ring.push_many(ev[:20])                             # channel 0 up to 5009
        ring.push_many(marker)
        ring.push_many(restarted)
        note = {"channels": {"0": [old, 5003], "1": [old, 702]}, "ring_created_ns": ring.created_ns,
                "ring_position": 6}
        points = note_points(note, ring)
    assert points[0] == (new, 21)
    assert points[1] == (old, 710)                          # its last in the ring: 709


def test_ranges_lost_after_the_history_note_are_counted_by_the_next_worker(tmp_path):
    """Found by an adversarial pass: with the worker SIGKILLed four times, the lost-events total
    (metrics, status, the last line) was 256 short of the daemon's own per-range log lines and of
    the holes in the store: a loss counted within 100 ms before a kill was in no history note. The
    ticks past the note skip those ranges; the next worker (and the note settled for a replaced
    ring) counts each jump, within an epoch and from the note's next sequence number."""
    import json
    import uuid

    import numpy as np

    from tickwire.engine.worker import note_points, settle_history_note
    from tickwire.ext import EVENT_DTYPE, Flag, Kind
    from tickwire.ext.ring import Ring

    old, new = 1_700_000_000_000_000_000, 1_700_000_100_000_000_000

    def ticks(channel, seqs):
        ev = np.zeros(len(seqs), EVENT_DTYPE)
        ev["channel"], ev["seq"], ev["kind"] = channel, seqs, Kind.ADD
        return ev

    def marker(channel, seq, epoch):
        ev = np.zeros(1, EVENT_DTYPE)
        ev["channel"], ev["seq"], ev["kind"], ev["order_id"] = channel, seq, Kind.SNAPSHOT, epoch
        ev["flags"] = Flag.SNAPSHOT | Flag.STALE
        return ev

    with Ring.create(f"tw-test-{uuid.uuid4().hex[:10]}", EVENT_DTYPE, 1 << 10) as ring:
        ring.push_many(ticks(0, [96, 97, 99, 100, 101, 102, 103, 104]))   # before the note: its own count
        for part in (ticks(0, [107, 108, 109]),           # 105..106 lost after the note
                     marker(0, 109, old),                 # the STALE of the next loss (same epoch)
                     ticks(0, [115, 116, 117]),           # 110..114 lost
                     ticks(1, [50, 51, 52]),              # none lost
                     marker(1, 0, new),                   # the publisher restarted: numbers anew
                     ticks(1, [1, 2, 3, 7, 8])):          # 4..6 lost in the new epoch
            ring.push_many(part)
        note = {"channels": {"0": [old, 105], "1": [old, 50]}, "ring_created_ns": ring.created_ns,
                "ring_position": 8, "lost_events": 1, "losses": 1}
        lost = {}
        assert note_points(note, ring, lost) == {0: (old, 118), 1: (new, 9)}
        assert lost == {"lost_events": 2 + 5 + 3, "losses": 3}
        assert note_points(note, ring) == {0: (old, 118), 1: (new, 9)}     # (without: the points alone)
        path = tmp_path / "feed-w0.json"
        path.write_text(json.dumps(note))
        assert settle_history_note(path, ring)
    settled = json.loads(path.read_text())
    assert settled["lost_events"] == 1 + 10 and settled["losses"] == 1 + 3


def test_out_of_range_latencies_are_counted_across_swaps_not_lost(tmp_path):
    """A latency the recorders cannot hold (negative: the wall clock stepped back between the two
    stamps; over 68.7 s) is left out of the histograms; its count reaches the status and the
    metrics (tickwire_latency_rejected_total) across recorder swaps, each once."""
    w = _worker(tmp_path)
    swaps = 0
    for i in range(300):
        w.stages["tick_to_signal"].record(-5 if i % 3 == 0 else (1 << 40) if i % 7 == 0 else 1000)
        if i % 25 == 24:
            w.since_start()                        # (hands off the swapped interval: a spare again)
            swaps += w.swap_stages()
    rejected = sum(1 for i in range(300) if i % 3 == 0 or i % 7 == 0)
    got = w.since_start()["tick_to_signal"]
    assert swaps >= 5 and got.rejected == rejected and got.total == 300 - rejected


def test_replace_file_never_writes_through_a_symlink_at_its_temporary_name(tmp_path, monkeypatch):
    """Found by an adversarial pass: replace_file opened a fixed temporary name (".NAME.tmp")
    with O_CREAT | O_TRUNC, following a symlink planted there: another user who could write the
    directory had a root daemon overwrite any file with a status file. The temporary file is now
    a new name of its own, created O_EXCL | O_NOFOLLOW; a crash's leftover blocks nothing."""
    import errno
    import os

    import pytest

    from tickwire.engine import files

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    target = tmp_path / "status.json"
    (tmp_path / ".status.json.tmp").symlink_to(victim)            # the name it used to take
    files.replace_file(target, '{"ok": 1}')
    assert target.read_text() == '{"ok": 1}' and victim.read_text() == "keep me\n"
    assert (tmp_path / ".status.json.tmp").is_symlink()            # left alone
    # even a link at the very name drawn: refused (EEXIST), nothing written through it
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "feedbeef")
    link = tmp_path / f".status.json.{os.getpid()}-feedbeef.tmp"
    link.symlink_to(victim)
    with pytest.raises(OSError) as exc:
        files.replace_file(target, '{"ok": 2}')
    assert exc.value.errno == errno.EEXIST and exc.value.filename == str(target)
    assert victim.read_text() == "keep me\n" and target.read_text() == '{"ok": 1}' and link.is_symlink()
    monkeypatch.undo()
    files.replace_file(target, '{"ok": 3}', mode=0o600)             # a stale temp file blocks nothing
    assert target.read_text() == '{"ok": 3}' and target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == sorted(
        [".status.json.tmp", link.name])                            # none of its own left


def test_a_file_written_by_path_gets_a_new_files_mode_and_replaces_a_link_at_its_name(tmp_path):
    """files.replacing (the interval log of `tickwire bench`, every PNG, the replay report's CSVs
    and summary): its temporary file was mkstemp's, 0600, so every plot and log came out
    unreadable to the user's group whatever the umask; and the report wrote a fixed ".NAME.tmp",
    following a symlink planted there. Now: 0666 less the umask, a name of its own, O_NOFOLLOW;
    a failed writer leaves the old file and no temporary one."""
    import os

    import pytest

    from tickwire.engine import files

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    out = tmp_path / "lat.png"
    out.symlink_to(victim)                                          # a link at the name itself
    (tmp_path / ".lat.png.tmp").symlink_to(victim)                  # and at the old fixed temporary name
    old = os.umask(0o027)
    try:
        with files.replacing(out) as tmp:
            tmp.write_bytes(b"new")
    finally:
        os.umask(old)
    assert out.read_bytes() == b"new" and not out.is_symlink() and victim.read_text() == "keep me\n"
    assert out.stat().st_mode & 0o777 == 0o640
    with pytest.raises(ZeroDivisionError), files.replacing(out) as tmp:
        tmp.write_bytes(b"half")
        1 / 0
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lat.png.tmp", "lat.png", "victim.txt"]


def test_temporary_files_of_killed_processes_are_removed_and_no_others(tmp_path):
    """A kill -9 between creating a status file's temporary file and renaming it left
    ``.status-w0.json.<pid>-<hex>.tmp`` behind for good, one more now and then each run. The
    daemon now removes, under its run directory at start, those whose process is gone; a
    running process's, other names, symlinks and directories stay."""
    import os
    import subprocess
    import sys

    from tickwire.engine import files

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "writer" / "ticks").mkdir(parents=True)
    dead = [tmp_path / f".status-w0.json.{gone}-0badc0de.tmp",
            tmp_path / "writer" / "ticks" / f".journal.json.{gone}-12345678.tmp"]
    alive = tmp_path / f".status-w1.json.{os.getpid()}-0badc0de.tmp"
    others = [tmp_path / f"status.json.{gone}-0badc0de.tmp", tmp_path / f".x.{gone}-0BADC0DE.tmp",
              tmp_path / f".x.{gone}-0badc0de.tmp.npz", tmp_path / "status-w0.json"]
    for p in dead + [alive] + others:
        p.write_text("{")
    link = tmp_path / f".link.{gone}-0badc0de.tmp"
    link.symlink_to(others[-1])
    (tmp_path / f".dir.{gone}-0badc0de.tmp").mkdir()
    assert files.remove_stale_temps(tmp_path) == 2
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in [alive, *others]) and link.is_symlink()
    assert (tmp_path / f".dir.{gone}-0badc0de.tmp").is_dir()
    assert files.remove_stale_temps(tmp_path) == 0


def test_an_hdr_log_is_never_opened_through_a_symlink(tmp_path):
    """The workers' HDR interval logs were opened with open(path, "w"): a symlink planted as
    w0.hlog (in a metrics.hdr_dir another user could write) had the daemon create or truncate
    its target. O_NOFOLLOW now: refused (ELOOP); a worker's open_hdr_log moves such a link
    aside with the previous log and begins a file of its own."""
    import errno

    import pytest

    from tickwire.engine.worker import open_hdr_log

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "w0.hlog").symlink_to(victim)
    with pytest.raises(OSError) as exc:
        IntervalLogWriter(tmp_path / "w0.hlog", StageRecorders(), interval=1.0)
    assert exc.value.errno == errno.ELOOP
    assert victim.read_text() == "keep me\n"
    (tmp_path / "w1.hlog").symlink_to(tmp_path / "missing")        # dangling: never created
    hlog = open_hdr_log(tmp_path / "w1.hlog", StageRecorders(), interval=1.0)
    hlog.close()
    assert not (tmp_path / "missing").exists()
    hlog = open_hdr_log(tmp_path / "w0.hlog", StageRecorders(), interval=1.0)
    hlog.close()
    assert victim.read_text() == "keep me\n" and not (tmp_path / "w0.hlog").is_symlink()


def test_the_history_note_carries_the_exchange_time_each_history_stands_at(tmp_path):
    """A restart that meets no tick stamps its RESTART markers with the exchange time its history
    stands at (they took the local clock: a paced replay of the store waited for years, an
    adversarial pass): the note's ``exchange_ns``, moved up to the ticks the ring holds past it,
    and kept when the note is settled for a replaced ring."""
    import json
    import uuid

    import numpy as np

    from tickwire.engine.worker import note_points, settle_history_note
    from tickwire.ext import EVENT_DTYPE, Kind
    from tickwire.ext.ring import Ring

    epoch, t = 1_700_000_000_000_000_000, 1_600_000_000_000_000_000
    ev = np.zeros(6, EVENT_DTYPE)
    ev["channel"], ev["seq"], ev["kind"] = [0, 0, 0, 0, 1, 1], [10, 11, 12, 13, 20, 21], Kind.ADD
    ev["ts_event"] = t + np.arange(6) * 1000
    with Ring.create(f"tw-test-{uuid.uuid4().hex[:10]}", EVENT_DTYPE, 1 << 10) as ring:
        ring.push_many(ev)
        note = {"channels": {"0": [epoch, 12], "1": [epoch, 22], "2": [epoch, 5]},
                "exchange_ns": {"0": t + 1000, "1": t + 5000, "2": t - 7}, "ring_created_ns": ring.created_ns,
                "ring_position": 2}
        times = {}
        assert note_points(note, ring, None, times) == {0: (epoch, 14), 1: (epoch, 22), 2: (epoch, 5)}
        assert times == {0: t + 3000, 1: t + 5000, 2: t - 7}
        path = tmp_path / "feed-w0.json"
        path.write_text(json.dumps(note))
        times = {}
        note_points({"channels": {"0": [epoch, 12]}}, ring, None, times)    # an older note: none known
        assert times == {}
        assert settle_history_note(path, ring)
    assert json.loads(path.read_text())["exchange_ns"] == {"0": t + 3000, "1": t + 5000, "2": t - 7}


def test_markers_in_the_ring_give_no_exchange_time_to_the_note(tmp_path):
    """An upgrade pass: after a note without ``exchange_ns`` (an older daemon's), a restart that
    met no tick stamped its markers with the local clock; settled at the stop, that time became
    the note's exchange time for good (2026 in a 2023 stream, every later tickless restart stamped
    there). Only the ring's events move the time; its markers do not."""
    import json
    import uuid

    import numpy as np

    from tickwire.engine.worker import note_points, settle_history_note
    from tickwire.ext import EVENT_DTYPE, Flag, Kind
    from tickwire.ext.ring import Ring

    epoch, t, local = 1_700_000_000_000_000_000, 1_600_000_000_000_000_000, 1_800_000_000_000_000_000
    rows = np.zeros(4, EVENT_DTYPE)
    rows["channel"] = [0, 1, 1, 1]
    rows["kind"] = [Kind.SNAPSHOT, Kind.SNAPSHOT, Kind.ADD, Kind.SNAPSHOT]
    rows["flags"] = [Flag.SNAPSHOT | Flag.STALE | Flag.RESTART, Flag.SNAPSHOT | Flag.STALE | Flag.RESTART, 0,
                     Flag.SNAPSHOT | Flag.STALE]
    rows["order_id"] = [epoch, epoch, 0, epoch]
    rows["seq"] = [9, 4, 5, 5]
    rows["ts_event"] = [local, local, t, local]
    with Ring.create(f"tw-test-{uuid.uuid4().hex[:10]}", EVENT_DTYPE, 1 << 10) as ring:
        ring.push_many(rows)
        note = {"channels": {"0": [epoch, 10], "1": [epoch, 5]}, "ring_created_ns": ring.created_ns,
                "ring_position": 0}
        times = {}
        assert note_points(note, ring, None, times) == {0: (epoch, 10), 1: (epoch, 6)}
        assert times == {1: t}
        path = tmp_path / "feed-w0.json"
        path.write_text(json.dumps(note))
        assert settle_history_note(path, ring)
    assert json.loads(path.read_text())["exchange_ns"] == {"1": t}


def test_an_older_daemon_s_note_says_no_channel_ended(tmp_path, caplog):
    """An upgrade pass: notes of daemons before 2026-12-07 (no ``exchange_ns``) listed in ``ended``
    channels whose publisher had only gone quiet; taken for an END, the next run said of the old
    epoch "nothing of it is missing" while 88,128 of its events had never been stored, exit 0.
    Such a note's ``ended`` is not taken (and said); a note of this daemon's is."""
    import json
    import logging

    from tickwire.engine.worker import note_ended

    epoch = 1_700_000_000_000_000_000
    old = {"channels": {"0": [epoch, 71477], "1": [epoch, 40397]}, "ended": [0, 1], "ring_created_ns": -1,
           "ring_position": 0}
    new = {**old, "exchange_ns": {"0": 5, "1": 6}}
    assert note_ended(old) == set() and note_ended(new) == {0, 1}
    assert note_ended({**new, "exchange_ns": {}}) == {0, 1}           # (a note that knew no time yet)
    for note, ended in ((old, set()), (new, {0, 1})):
        w = Worker.__new__(Worker)
        w.cursor_path = tmp_path / "feed-w0.json"
        w.cursor_path.write_text(json.dumps(note))
        w.lost_before = {"lost_events": 0, "losses": 0, "uncounted_losses": 0}
        w.ticks = types.SimpleNamespace(created_ns=1)                # another ring: the note's points alone
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tickwire"):
            assert w.resume_points() == {0: (epoch, 71477), 1: (epoch, 40397)}
        assert w._resume_ended == ended
        assert ("an older daemon's" in caplog.text) == (not ended), caplog.text
    # settled for a replaced ring whose ticks give it an exchange time, an older note still says no
    # channel ended (given ``exchange_ns``, its ``ended`` was taken at its word again: a review)
    import uuid

    import numpy as np

    from tickwire.engine.worker import settle_history_note
    from tickwire.ext import EVENT_DTYPE, Kind
    from tickwire.ext.ring import Ring

    ev = np.zeros(3, EVENT_DTYPE)
    ev["channel"], ev["seq"], ev["kind"], ev["ts_event"] = 0, [71477, 71478, 71479], Kind.ADD, 1_600_000_000_000_000_000
    for note, ended in ((old, []), (new, [0, 1])):
        with Ring.create(f"tw-test-{uuid.uuid4().hex[:10]}", EVENT_DTYPE, 1 << 10) as ring:
            ring.push_many(ev)
            w.cursor_path.write_text(json.dumps({**note, "ring_created_ns": ring.created_ns}))
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="tickwire"):
                assert settle_history_note(w.cursor_path, ring)
            # (said here: the settled note no longer shows it to the worker, a review)
            assert ("an older daemon's" in caplog.text) == (not ended), caplog.text
        settled = json.loads(w.cursor_path.read_text())
        assert settled["exchange_ns"]["0"] == 1_600_000_000_000_000_000 and settled["ended"] == ended
        assert note_ended(settled) == set(ended)


def test_rings_json_spill_files_and_replay_signals_are_written_under_fresh_names(tmp_path):
    """A review: rings.json was written at ``.rings.json.<pid>``, which the start's sweep did not
    know (a daemon killed mid-write left it for good); a spill file at a fixed ``.NAME.tmp`` and
    replay's ``--signals`` at ``NAME.tmp``, each opened through whatever was there (a symlink
    planted at it had its target overwritten). Each now goes through a fresh temporary name:
    a writer killed before its rename leaves a file the sweep removes, and no link is followed."""
    import subprocess
    import sys

    import numpy as np

    from tickwire.engine import files
    from tickwire.ext.records import SIGNAL_DTYPE
    from tickwire.replay.cli import _NpyWriter

    kill_at_rename = "import os; os.replace = lambda *a: os._exit(9)\n"
    for call in ("from tickwire.engine.worker import write_ring_names\n"
                 "write_ring_names(d, [('tw-a-ticks-0', 'tw-a-signals-0')])",
                 "import numpy as np; from tickwire.engine.writer import _Spill\n"
                 "from tickwire.ext.records import EVENT_DTYPE\n"
                 "_Spill(d).write(0, 1, 'tok', np.zeros(3, EVENT_DTYPE))"):
        d = tmp_path / "killed"
        d.mkdir()
        res = subprocess.run([sys.executable, "-c", kill_at_rename + f"from pathlib import Path; d = Path({str(d)!r})\n"
                              + call], capture_output=True, text=True)
        assert res.returncode == 9, res.stderr
        assert len(list(d.iterdir())) == 1, list(d.iterdir())       # the temporary file, unrenamed
        assert files.remove_stale_temps(d) == 1 and not list(d.iterdir())
        d.rmdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "sig.npy.tmp").symlink_to(victim)
    (tmp_path / ".00000000000000000001-00000000000000000000.tmp").symlink_to(victim)
    out = _NpyWriter(tmp_path / "sig.npy", SIGNAL_DTYPE)
    out.write(np.zeros(2, SIGNAL_DTYPE))
    out.close()
    from tickwire.engine.writer import _Spill
    from tickwire.ext.records import EVENT_DTYPE
    _Spill(tmp_path).write(0, 1, "tok", np.zeros(3, EVENT_DTYPE))
    assert victim.read_text() == "keep me\n"
    assert len(np.load(tmp_path / "sig.npy")) == 2
    assert (tmp_path / "00000000000000000001-00000000000000000000.spill").stat().st_size > 3 * EVENT_DTYPE.itemsize
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
