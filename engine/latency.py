"""Latency on the Python side: tickwire's HDR recorders handed to ``hdrh``.

The recorders (:class:`tickwire.ext.hdr.Recorder`, one per pipeline stage in
:class:`tickwire.ext.hdr.StageRecorders`) count nanoseconds in C, in the exact counts layout of
``hdrh``'s ``HdrHistogram(1, 60_000_000_000, 3)``.  This module hands them over: a copy of the
counts plus total/min/max (:func:`to_hdrh`), and hdrh does the rest: percentiles, merging
(``HdrHistogram.add``), the standard compressed encoding, interval logs.

- :func:`percentiles`: the p50/p90/p99/p99.9/p99.99/max summary as a dict.
- :func:`hgrm`: the full percentile spectrum in HdrHistogram's ``.hgrm`` text layout.
- :class:`IntervalLogWriter`: an interval log per worker, one tagged histogram per stage every
  N seconds, in the HdrHistogram log format (``hdrh``'s ``HistogramLogReader``, HdrHistogram's
  ``HistogramLogProcessor`` and HdrHistogram plotters read it); :func:`read_interval_log`.

Two hdrh quirks are worked around here: ``HistogramLogWriter.output_start_time`` raises (it hands
milliseconds to ``datetime.fromtimestamp`` and calls a nonexistent ``iso_format``), so the
``#[StartTime: ...]`` and ``#[BaseTime: ...]`` lines are written here, and its
``output_interval_histogram`` writes neither tags nor a fractional max, so interval lines are
formatted here too (the encoding is hdrh's).  hdrh's ``record_corrected_value`` also records the
remainder below the interval (250 at 100: 250, 150, 50), where HdrHistogram (Java, C) records 250
and 150; tickwire's recorder follows HdrHistogram.
"""

from __future__ import annotations

import io
import math
import numbers
import operator
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader, HistogramLogWriter

import tickwire
from tickwire.ext.hdr import (HIGHEST_TRACKABLE, LOWEST_TRACKABLE, SIGNIFICANT_FIGURES, STAGES,
                              Recorder, StageRecorders)

__all__ = [
    "STAGES",
    "SUMMARY_PERCENTILES",
    "Interval",
    "IntervalLogWriter",
    "Recorder",
    "StageRecorders",
    "hgrm",
    "keep_previous_log",
    "merged",
    "new_hdrh",
    "percentiles",
    "read_interval_log",
    "iter_interval_log",
    "summary_table",
    "to_hdrh",
]

#: The percentiles of :func:`percentiles` (the max is added).
SUMMARY_PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)
#: HdrHistogram interval log format version written.
LOG_FORMAT_VERSION = "1.3"

_TAG_BAD = re.compile(r"[,\s]")


def new_hdrh() -> HdrHistogram:
    """An empty hdrh histogram with the recorders' parameters (1 ns .. 60 s, 3 digits)."""
    return HdrHistogram(LOWEST_TRACKABLE, HIGHEST_TRACKABLE, SIGNIFICANT_FIGURES)


def to_hdrh(recorder: Recorder, *, start_time: float | None = None,
            end_time: float | None = None, tag: str | None = None) -> HdrHistogram:
    """An ``hdrh`` HdrHistogram holding exactly the recorder's values.

    The counts array is copied as is (same layout) and total, min and max are set as hdrh's
    own ``record_value`` would have left them, so every hdrh query (percentiles, min/max
    equivalents, mean, iteration, ``encode``) gives what it gives for the same values
    recorded one by one.

    Parameters
    ----------
    recorder : Recorder
    start_time, end_time : float, optional
        Interval bounds (seconds since the epoch) stored in the histogram (hdrh keeps ms).
    tag : str, optional
        The histogram's tag (interval logs).
    """
    hist = new_hdrh()
    recorder._copy_counts_into(hist.counts)
    total = recorder.total
    if total:
        hist.total_count = total
        hist.min_value = recorder.min_value
        hist.max_value = recorder.max_value
    if start_time is not None:
        hist.set_start_time_stamp(start_time * 1000.0)
    if end_time is not None:
        hist.set_end_time_stamp(end_time * 1000.0)
    if tag is not None:
        hist.set_tag(tag)
    return hist


def _as_hdrh(source) -> HdrHistogram:
    if isinstance(source, HdrHistogram):
        return source
    if isinstance(source, Recorder):
        return to_hdrh(source)
    raise TypeError(f"expected a Recorder or an hdrh HdrHistogram, got {type(source).__name__}")


def _key(p: float) -> str:
    return f"p{p:g}"


def percentiles(source, levels: Iterable[float] = SUMMARY_PERCENTILES) -> dict:
    """The percentile summary of a recorder (or hdrh histogram), in ns.

    Returns
    -------
    dict
        ``{"count": n, "min": ..., "p50": ..., "p90": ..., "p99": ..., "p99.9": ...,
        "p99.99": ..., "max": ..., "mean": ...}``: values as hdrh reports them (the highest
        value equivalent to the bucket reached, 3 significant digits); all 0 when empty.
    """
    hist = _as_hdrh(source)
    levels = [float(p) for p in levels]
    for p in levels:
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentiles must be within 0..100, got {p}")
    total = hist.get_total_count()
    values = hist.get_percentile_to_value_dict(levels) if total else {}
    out = {"count": total, "min": hist.get_min_value() if total else 0}
    for p in levels:
        out[_key(p)] = values.get(p, 0)
    out["max"] = hist.get_max_value() if total else 0
    out["mean"] = hist.get_mean_value() if total else 0.0
    return out


def hgrm(source, unit_ratio: float = 1000.0, ticks_per_half_distance: int = 5) -> str:
    """The full percentile spectrum in HdrHistogram's ``.hgrm`` layout.

    The same text HdrHistogram's ``outputPercentileDistribution`` prints (and that
    HdrHistogram's plotter reads): a ``Value Percentile TotalCount 1/(1-Percentile)`` table
    from hdrh's percentile iterator, then the ``#[Mean ...]``, ``#[Max ...]`` and
    ``#[Buckets ...]`` footer.  (hdrh's own ``output_percentile_distribution`` leaves the
    standard deviation unscaled and prints the total count as a float; this does not.)

    Parameters
    ----------
    source : Recorder or hdrh.histogram.HdrHistogram
    unit_ratio : float
        Values are divided by it: 1000 prints microseconds, 1e6 milliseconds, 1 ns.
    ticks_per_half_distance : int
        Percentile ticks per halving of the distance to 100% (HdrHistogram's default 5).
    """
    if isinstance(unit_ratio, bool) or not isinstance(unit_ratio, numbers.Real) or not 0 < unit_ratio < math.inf:
        raise ValueError(f"unit_ratio must be a positive finite number (1000: microseconds), got {unit_ratio!r}")
    try:
        ticks = operator.index(ticks_per_half_distance)
    except TypeError:
        ticks = 0
    if isinstance(ticks_per_half_distance, bool) or ticks < 1:
        raise ValueError(f"ticks_per_half_distance must be an int >= 1, got {ticks_per_half_distance!r}")
    hist = _as_hdrh(source)
    d = hist.significant_figures
    out = io.StringIO()
    out.write("%12s %14s %10s %14s\n\n" % ("Value", "Percentile", "TotalCount", "1/(1-Percentile)"))
    if hist.get_total_count():
        line = f"%12.{d}f %2.12f %10d %14.2f\n"
        last = f"%12.{d}f %2.12f %10d\n"
        for it in hist.get_percentile_iterator(ticks_per_half_distance):
            value = it.value_iterated_to / unit_ratio
            level = it.percentile_level_iterated_to
            if level != 100:
                out.write(line % (value, level / 100, it.total_count_to_this_value, 1 / (1 - level / 100)))
            else:
                out.write(last % (value, level / 100, it.total_count_to_this_value))
        mean = hist.get_mean_value() / unit_ratio
        stddev = hist.get_stddev() / unit_ratio
        top = hist.get_max_value() / unit_ratio
    else:
        mean = stddev = top = 0.0
    out.write(f"#[Mean    = %12.{d}f, StdDeviation   = %12.{d}f]\n" % (mean, stddev))
    out.write(f"#[Max     = %12.{d}f, Total count    = %12d]\n" % (top, hist.get_total_count()))
    out.write("#[Buckets = %12d, SubBuckets     = %12d]\n" % (hist.bucket_count, hist.sub_bucket_count))
    return out.getvalue()


def summary_table(recorders, unit_ratio: float = 1000.0, unit: str = "us") -> str:
    """A text table of the percentile summary of several recorders (a StageRecorders, a
    mapping name -> Recorder, or (name, Recorder) pairs), values in ``unit``."""
    pairs = _pairs(recorders)
    cols = ["count"] + [_key(p) for p in SUMMARY_PERCENTILES] + ["max"]
    width = max([len("stage")] + [len(n or "") for n, _ in pairs])
    lines = [f"{'stage':<{width}}  " + "  ".join(f"{c + (' ' + unit if c != 'count' else ''):>12}" for c in cols)]
    for name, rec in pairs:
        s = percentiles(rec)
        # a stage that recorded nothing has no percentiles: '-', not 0.000 as if measured
        cells = [f"{s['count']:>12,}"] + [f"{s[c] / unit_ratio:>12.3f}" if s["count"] else f"{'-':>12}"
                                          for c in cols[1:]]
        lines.append(f"{name or '':<{width}}  " + "  ".join(cells))
    return "\n".join(lines) + "\n"


def _pairs(recorders) -> list[tuple[str | None, Recorder]]:
    if isinstance(recorders, Recorder):
        return [(recorders.name, recorders)]
    if isinstance(recorders, StageRecorders):
        return recorders.items()
    if isinstance(recorders, Mapping):
        return list(recorders.items())
    return [(name, rec) for name, rec in recorders]


def _java_date(t: float) -> str:
    """Java's ``Date.toString()`` layout, which HdrHistogram writes after the StartTime."""
    local = datetime.fromtimestamp(t).astimezone()
    return local.strftime("%a %b %d %H:%M:%S ") + (local.tzname() or "UTC") + local.strftime(" %Y")


class IntervalLogWriter:
    """Write recorders' interval histograms to an HdrHistogram interval log.

    Every :meth:`write_interval` (or :meth:`maybe_write` once ``interval`` seconds have passed)
    appends one line per recorder, tagged with its name (``Tag=book,...``): interval start
    (seconds after the BaseTime), length, max (ms) and the compressed histogram (hdrh's
    ``encode``); then resets the recorder, so that each line holds that interval alone.

    Call it from the thread that records (an engine worker between batches): the recorders
    are not locked.

    Parameters
    ----------
    out : str, pathlib.Path or text file
        Where to write; a path is opened (truncated) and closed by :meth:`close`.
    recorders : StageRecorders, Recorder, mapping of tag -> Recorder, or (tag, Recorder) pairs
        Tags must not contain commas or whitespace.
    interval : float
        Seconds between intervals for :meth:`maybe_write`.
    start_time : float, optional
        Seconds since the epoch (default now): the ``#[StartTime]`` and the first interval's start.
    base_time : float, optional
        Seconds since the epoch that interval timestamps are relative to (default: start_time),
        written as ``#[BaseTime]``.
    comment : str, optional
        An extra comment line in the header.
    reset : bool
        Reset each recorder after writing it (default True).
    skip_empty : bool
        Leave out recorders with nothing recorded in the interval.
    rotate_bytes : int, optional
        With ``out`` a path: once the log has reached this size, it is moved aside after an
        interval (as ``<stem>.<its last write, UTC>.hlog``, the ``keep`` newest of those kept,
        :func:`keep_previous_log`) and a new log begins, with its own header, where it ended.
        A daemon's worker runs for months: its log grew for as long (about 16 MB a day).
    """

    def __init__(self, out, recorders, *, interval: float = 1.0, start_time: float | None = None,
                 base_time: float | None = None, comment: str | None = None, reset: bool = True,
                 skip_empty: bool = False, max_value_unit_ratio: float = 1e6,
                 rotate_bytes: int | None = None, keep: int = 32):
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self._pairs = _pairs(recorders)
        for tag, rec in self._pairs:
            if not isinstance(rec, Recorder):
                raise TypeError(f"recorder {tag!r} is a {type(rec).__name__}, not a tickwire Recorder")
            if tag is not None and (not tag or _TAG_BAD.search(tag)):
                raise ValueError(f"bad interval log tag {tag!r}: no commas, spaces or line breaks")
        if rotate_bytes is not None and (rotate_bytes <= 0 or not isinstance(out, (str, Path))):
            raise ValueError(f"rotate_bytes must be > 0 and out a path, got {rotate_bytes} and {out!r}")
        if isinstance(out, (str, Path)):
            self._path = Path(out)
            self._file = _create(out)
            self._owns = True
        else:
            self._path = None
            self._file = out
            self._owns = False
        self.interval = float(interval)
        # "now" is the wall clock at the start moved on by the monotonic clock: a step of the wall
        # clock back (NTP at boot, a VM's resume) gave an interval a negative length, which hdrh's
        # reader skips without a word, and so every interval after it when the step passed the
        # log's age (an adversarial pass)
        self._anchor = (time.time(), time.monotonic())
        self.start_time = self._anchor[0] if start_time is None else float(start_time)
        self.base_time = self.start_time if base_time is None else float(base_time)
        self.reset = reset
        self.skip_empty = skip_empty
        self.max_value_unit_ratio = max_value_unit_ratio
        self.rotate_bytes, self.keep = rotate_bytes, keep
        self.comment = comment
        self._interval_start = self.start_time
        self.intervals_written = 0
        self.rotations = 0
        self._header()

    def _header(self) -> None:
        writer = HistogramLogWriter(self._file)
        writer.output_comment(f"[Logged with tickwire {tickwire.__version__}]")
        if self.comment:
            writer.output_comment(self.comment)
        writer.output_comment(f"[Histogram log format version {LOG_FORMAT_VERSION}]")  # tags: 1.3
        # hdrh's output_start_time raises: the StartTime and BaseTime lines are written here.
        # hdrh's reader leaves out an interval that starts before StartTime by BaseTime plus the
        # line's start, each as written (to the ms): a StartTime rounded up past that sum lost the
        # first interval (58 of 200 logs with a base_time of their own could not be read back)
        first = float("%.3f" % self.base_time) + float("%.3f" % (self.start_time - self.base_time))
        start_txt = "%.3f" % self.start_time
        while float(start_txt) > first:
            start_txt = "%.3f" % (float(start_txt) - 0.001)
        self._file.write("#[StartTime: %s (seconds since epoch), %s]\n" % (start_txt, _java_date(self.start_time)))
        self._file.write("#[BaseTime: %.3f (seconds since epoch)]\n" % self.base_time)
        writer.output_legend()
        self._file.flush()

    def _rotate(self) -> None:
        """Move the full log aside and begin a new one where it ended (see ``rotate_bytes``). A
        failure (a full disk) raises, the log written on where it is and not rotated again."""
        try:
            keep_previous_log(self._path, self.keep)  # (renamed open: what is written next goes there)
            new = _create(self._path)
        except OSError:
            self.rotate_bytes = None
            raise
        old, self._file = self._file, new
        old.close()
        self.start_time = self.base_time = self._interval_start
        self.rotations += 1
        self._header()

    def now(self) -> float:
        """Seconds since the epoch as the log counts them: the wall clock when it began plus the
        monotonic time since (the wall clock's steps left out)."""
        wall, mono = self._anchor
        return wall + (time.monotonic() - mono)

    def maybe_write(self, now: float | None = None) -> bool:
        """Write an interval if ``interval`` seconds have passed since the last one (cheap
        otherwise: one clock read).  Returns whether it wrote."""
        now = self.now() if now is None else now
        if now - self._interval_start < self.interval:
            return False
        self.write_interval(now)
        return True

    def write_interval(self, now: float | None = None) -> None:
        """Write every recorder's histogram for the interval ending ``now`` (and reset them)."""
        end = self.now() if now is None else float(now)
        start = self._interval_start
        for tag, rec in self._pairs:
            if self.skip_empty and not rec.total:
                continue
            hist = to_hdrh(rec, start_time=start, end_time=end, tag=tag)
            if self.reset:
                rec.reset()
            payload = hist.encode().decode("ascii")
            prefix = f"Tag={tag}," if tag else ""
            self._file.write("%s%.3f,%.3f,%.3f,%s\n" % (
                prefix, start - self.base_time, end - start,
                hist.get_max_value() / self.max_value_unit_ratio, payload))
        self._file.flush()
        self._interval_start = end
        self.intervals_written += 1
        if self.rotate_bytes is not None and self._file.tell() >= self.rotate_bytes:
            self._rotate()

    def close(self, final: bool = True) -> None:
        """Write a last interval if anything was recorded since the previous one (``final``),
        and close the file if this writer opened it."""
        if self._file is None:
            return
        if final and any(rec.total for _, rec in self._pairs):
            self.write_interval()
        if self._owns:
            self._file.close()
        self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@dataclass
class Interval:
    """One interval histogram read back from a log."""

    tag: str | None
    start: float            #: seconds since the epoch
    end: float              #: seconds since the epoch
    histogram: HdrHistogram


def _create(path):
    """``path`` opened to write afresh (ascii text), never through a symlink: ``O_NOFOLLOW``.
    (``open(path, "w")`` followed one planted in ``metrics.hdr_dir`` as ``w0.hlog``: a root
    daemon created or truncated its target: an adversarial pass.)"""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        return os.fdopen(fd, "w", encoding="ascii")
    except BaseException:
        os.close(fd)
        raise


def keep_previous_log(path, keep: int = 32) -> Path | None:
    """Before a log is written afresh at ``path`` (a restarted worker's): move a non-empty one
    there aside as ``<stem>.<its last write, UTC>.hlog`` beside it, and remove all but the
    ``keep`` newest of those, so that a restart keeps the history up to it (the latency before a
    crash is what an operator plots) and a crash loop cannot fill the disk. Returns where the old
    log went, or None."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if st.st_size == 0:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(st.st_mtime))
    dest = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while dest.exists():                        # two restarts within a second
        dest = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
        n += 1
    path.rename(dest)
    pattern = re.compile(re.escape(path.stem) + r"\.\d{8}T\d{6}Z(-\d+)?" + re.escape(path.suffix) + "$")
    old = sorted((q for q in path.parent.iterdir() if pattern.match(q.name)),
                 key=lambda q: (q.stat().st_mtime, q.name))
    for q in old[:max(len(old) - keep, 0)]:
        q.unlink(missing_ok=True)
    return dest


def read_interval_log(path) -> list[Interval]:
    """Every interval histogram of an HdrHistogram interval log, in file order, through
    hdrh's ``HistogramLogReader`` (absolute times from the log's StartTime/BaseTime). Each holds
    about 220 KB: a daemon's day of log is gigabytes this way, so :func:`iter_interval_log` for
    anything longer than a benchmark's."""
    return list(iter_interval_log(path))


#: the start of a line hdrh's reader takes for an interval ([Tag=T,]start,length,max,payload):
#: it skips every other line, unsaid
_INTERVAL_LINE = re.compile(r"(?:Tag=[^,]*,)?[0-9.]*,[0-9.]*,[0-9.]*,")


def iter_interval_log(path) -> Iterator[Interval]:
    """:func:`read_interval_log` one interval at a time (memory flat whatever the log's length:
    `tickwire plot latency` of a daemon's log held every interval's 220 KB, 24 GB for a day and
    more of it: an adversarial pass). A line that is not an interval line, or one hdrh leaves
    out (it starts before the log's StartTime), is a ValueError naming the file: hdrh skips
    them, and the figures were drawn from what was left, unsaid (the same pass)."""
    lines, bad = 0, None
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            line = raw.decode("ascii", "replace").strip()
            if not line or line.startswith("#") or line.startswith('"StartTimestamp"'):
                continue
            if not raw.endswith(b"\n"):
                break                                # (the line a writer is writing: hdrh's to judge)
            lines += 1
            if bad is None and not _INTERVAL_LINE.match(line):
                bad = (no, line)
    if bad is not None:
        raise ValueError(f"{path}: not a readable HdrHistogram interval log: line {bad[0]} is not an interval "
                         f"line ([Tag=T,]start,length,max,histogram): {bad[1][:60]!r}")
    reader = HistogramLogReader(str(path), new_hdrh())
    n = 0
    try:
        while True:
            try:
                hist = reader.get_next_interval_histogram()
            except OSError:
                raise
            except Exception as exc:                 # hdrh's, zlib's, base64's: none names the file
                raise ValueError(f"{path}: not a readable HdrHistogram interval log: interval {n + 1} "
                                 f"cannot be decoded ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
                                 ) from None
            if hist is None:
                break
            n += 1
            if hist.get_total_count() and hist.get_max_value() > _LIMIT:
                # (another tool's log, values past the recorders' range: merging it was an
                # IndexError traceback in `tickwire plot` and `python -m tickwire.engine.latency`)
                raise ValueError(f"{path}: interval {n} holds values up to {hist.get_max_value() / 1e9:,.1f} "
                                 f"s (read as ns), past the {_LIMIT / 1e9:.1f} s tickwire's histograms hold (2**36 ns): "
                                 f"an interval log of another tool's, or of another unit")
            yield Interval(hist.get_tag(), hist.get_start_time_stamp() / 1000.0,
                           hist.get_end_time_stamp() / 1000.0, hist)
    finally:
        reader.close()
    if n < lines:
        raise ValueError(f"{path}: not a readable HdrHistogram interval log: {lines - n} of its {lines} interval "
                         f"lines start before the log's StartTime (hdrh leaves them out)")


_ALL = object()
#: The largest value a histogram of :func:`new_hdrh` holds (its counts reach 2**36 ns, 68.7 s).
_LIMIT = new_hdrh().get_highest_equivalent_value((1 << 36) - 1)


def merged(intervals: Iterable[Interval], tag=_ALL) -> HdrHistogram:
    """One hdrh histogram adding up the intervals (those of one ``tag`` if given; None selects
    the untagged ones)."""
    total = new_hdrh()
    for iv in intervals:
        # (an empty interval, an idle second of a daemon's log, decodes with a min of 0: added,
        # it made every merged minimum 0)
        if (tag is _ALL or iv.tag == tag) and iv.histogram.get_total_count():
            total.add(iv.histogram)
    return total


#: the pipeline's stages in the order a tick meets them (a log's tags are listed so)
_STAGE_ORDER = ("decode", "book", "stats", "rules", "tick_to_signal")


def _main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tickwire.engine.latency",
                                 description="Per-stage latency summary of an HdrHistogram interval log (a "
                                             "daemon's STATE/RUN/hdr/w0.hlog, tickwire bench's intervals-*.hlog), "
                                             "microseconds.")
    ap.add_argument("log", metavar="INTERVAL_LOG")
    args = ap.parse_args(argv)
    totals: dict = {}                          # tag -> the merged histogram (one interval held at a time)
    try:
        with open(args.log, "rb") as f:
            if f.read(4096).lstrip().startswith(b"Value"):
                print(f"{ap.prog}: {args.log}: an .hgrm percentile table, not an interval log (tickwire plot "
                      f"latency draws it)", file=sys.stderr)
                return 2
        for iv in iter_interval_log(args.log):
            total = totals.setdefault(iv.tag or "", new_hdrh())
            if iv.histogram.get_total_count():
                total.add(iv.histogram)
    except OSError as exc:
        print(f"{ap.prog}: {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except ValueError as exc:                  # (it names the file)
        print(f"{ap.prog}: {exc}", file=sys.stderr)
        return 2
    if not totals:
        # (an empty file, an .hgrm, a log with no interval yet: an empty table, exit 0)
        try:
            with open(args.log, "rb") as f:
                head = f.read(4096).lstrip()
        except OSError:
            head = b""
        why = ("an .hgrm percentile table, not an interval log (tickwire plot latency draws it)"
               if head.startswith(b"Value") else "an empty file" if not head else
               "no interval in it: not an HdrHistogram interval log, or one with no interval yet")
        print(f"{ap.prog}: {args.log}: {why}", file=sys.stderr)
        return 2
    tags = sorted(totals, key=lambda t: (t not in _STAGE_ORDER, _STAGE_ORDER.index(t) if t in _STAGE_ORDER else 0, t))
    print(summary_table([(t or "(untagged)", totals[t]) for t in tags]), end="")
    return 0


if __name__ == "__main__":                  # python -m tickwire.engine.latency LOG: per-stage summary
    try:
        sys.exit(_main())
    except BrokenPipeError:                 # (| head)
        sys.stdout = None
        sys.exit(0)
