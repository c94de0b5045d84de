"""Latency plots (PNG, matplotlib), and the plotting plumbing the other reports share.

- :func:`load_latency`: a ``.hgrm`` file (``tickwire bench``, HdrHistogram's
  ``outputPercentileDistribution``) or an HdrHistogram interval log (``.hlog``: a daemon's
  ``<run dir>/hdr/<worker>.hlog``, ``tickwire bench``'s ``intervals-*.hlog``), read into
  :class:`LatencySource` (spectra per tag, intervals); :class:`PlotInputError` names what is
  wrong with a file that is missing, empty or garbled.
- :func:`spectrum` / :func:`over_time`: the numbers a plot is drawn from (tests check them).
- :func:`plot_latency`: the percentile spectrum on a log "nines" axis (HdrHistogram plotter
  style), several sources overlaid, and, for interval logs, p50/p99/max per interval over time.
  ``tickwire plot latency RUN.hlog|RUN.hgrm [...] -o FILE.png``.
- :func:`figure`, :func:`save_png`, :func:`nines_axis`, :func:`require_matplotlib`: what the
  backtest report (tickwire.replay.report) and the bench harness (tickwire.engine.bench) use
  too: no pyplot (no global state, no GUI), the Agg canvas, atomic writes.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tickwire import source_checkout
from tickwire.engine.files import replacing

__all__ = ["PlotInputError", "LatencySource", "load_latency", "spectrum", "over_time", "plot_latency",
           "figure", "save_png", "nines_axis", "require_matplotlib", "read_hgrm", "MATPLOTLIB_HINT"]

#: How to get matplotlib (it is the ``report`` extra, and in ``dev``): in a checkout, matplotlib
#: alone (installing the extra there rebuilds every extension); installed, the extra.
MATPLOTLIB_HINT = ("in the checkout: .venv/bin/pip install 'matplotlib>=3.7' (all the report extra holds; "
                   "installing the extra itself rebuilds every extension; dev has it too)"
                   if source_checkout() else "pip install 'tickwire[report]' (the report extra: matplotlib)")
#: The nines axis: 1/(1-p) at its ticks, and their labels.
NINES_TICKS = (1, 10, 100, 1_000, 10_000, 100_000, 1_000_000)
NINES_LABELS = ("0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%")
#: The percentiles of :func:`over_time`.
OVER_TIME = (("p50", 50.0), ("p99", 99.0), ("max", 100.0))


class PlotInputError(ValueError):
    """A latency file that cannot be plotted: the message names the file and what is wrong."""


def require_matplotlib(what: str = "the plots") -> None:
    """Raise ImportError with one clear line when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"{what}: matplotlib is not installed; {MATPLOTLIB_HINT}") from None


def figure(width: float = 10, height: float = 5.5, rows: int = 1):
    """A matplotlib Figure (no pyplot) with ``rows`` stacked axes; returns (fig, [axes])."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
    return fig, list(axes)


def save_png(fig, path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary file renamed into place), with
    the Agg canvas whatever the session's backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    with replacing(path) as tmp:            # (-o D.png, D.png a directory: nothing left beside it)
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def nines_axis(ax, top: float = 100_000) -> None:
    """Log x axis in 1/(1-percentile), labelled 0%, 90%, 99%, ... (HdrHistogram's plotter)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ticks = [t for t in NINES_TICKS if t < max(top, 10) * 0.9999]
    ticks = list(NINES_TICKS[:len(ticks) + 1])          # and the next nine past the data
    ax.set_xticks(ticks, NINES_LABELS[:len(ticks)])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(1, ticks[-1])
    ax.set_xlabel("percentile")
    ax.grid(True, which="both", alpha=0.3)


# -- reading -----------------------------------------------------------------------------------

@dataclass
class LatencySource:
    """One file's latency data: spectra per tag (percentile levels 0..100, values in ns) and,
    for an interval log, each tag's merged histogram and its intervals' :func:`over_time` rows
    (the intervals themselves are not kept: 220 KB each)."""

    path: Path
    kind: str                                       #: "hgrm" or "hlog"
    spectra: dict = field(default_factory=dict)     #: tag -> (levels, values_ns, max_ns, count)
    rows: dict = field(default_factory=dict)        #: hlog: tag -> over_time rows of its non-empty intervals
    histograms: dict = field(default_factory=dict)  #: hlog: tag -> hdrh histogram of all its intervals


_HGRM_ROW = re.compile(r"^\s*([0-9.eE+-]+)\s+([0-9.eE+-]+)\s+(\d+)(\s+[0-9.eE+inf-]+)?\s*$")
_HGRM_MAX = re.compile(r"#\[Max\s*=\s*([0-9.eE+-]+),\s*Total count\s*=\s*(\d+)")


def read_hgrm(path, unit_ns: float = 1000.0):
    """The spectrum of a ``.hgrm`` file (values in microseconds, as tickwire and HdrHistogram
    write them by default; ``unit_ns`` ns per unit): ``(levels %, values ns, max ns, count)``."""
    path = Path(path)
    text = _read_text(path)
    levels, values, top, count = [], [], None, None
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("Value"):
            continue
        if s.startswith("#"):
            m = _HGRM_MAX.match(s)
            if m:
                top, count = float(m.group(1)) * unit_ns, int(m.group(2))
            continue
        m = _HGRM_ROW.match(s)
        if not m:
            raise PlotInputError(f"{path}: line {n} is not an .hgrm row (Value Percentile TotalCount "
                                 f"1/(1-Percentile)): {s[:60]!r}")
        level = float(m.group(2))
        if not 0.0 <= level <= 1.0:
            raise PlotInputError(f"{path}: line {n}: percentile {level} outside 0..1")
        levels.append(level * 100.0)
        values.append(float(m.group(1)) * unit_ns)
    if not levels:
        raise PlotInputError(f"{path}: no percentile rows: not an .hgrm file, or an empty histogram")
    if levels[-1] < 100.0:
        # (a file cut short was plotted and its last row printed as p99, p99.9 and the max: 39 ms
        # for a max of 245 ms)
        raise PlotInputError(f"{path}: its last row is at {levels[-1]:.6g}%, not 100%: cut short (an .hgrm's table "
                             f"ends at percentile 1.0)")
    if top is None:
        top, count = values[-1], None
    return levels, values, top, count


def _read_text(path: Path) -> str:
    from tickwire.engine.files import NotReadable, read_regular

    try:                                   # (a regular file: /dev/zero was read until memory ran out)
        data = read_regular(path, 8 << 30, ".hlog or .hgrm file")
    except NotReadable as exc:
        raise PlotInputError(str(exc)) from None
    return _ascii(path, data)


def _ascii(path: Path, data: bytes) -> str:
    if not data.strip():
        raise PlotInputError(f"{path}: empty file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise PlotInputError(f"{path}: not text (an .hgrm or HdrHistogram interval log is ASCII)") from None


def _read_head(path: Path, n: int = 1 << 16) -> str:
    """The first ``n`` bytes of the regular file at ``path``, as ASCII (:func:`_read_text`'s
    errors; a log of gigabytes read whole to look at its start held them twice: a review)."""
    from tickwire.engine.files import not_a_file

    what = not_a_file(path)
    if what:
        raise PlotInputError(f"{path}: {what}, expected a .hlog or .hgrm file (a regular file)")
    try:
        with open(path, "rb") as f:
            data = f.read(n)
    except OSError as exc:
        raise PlotInputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    return _ascii(path, data)


def spectrum(hist):
    """An hdrh histogram's percentile spectrum as ``.hgrm`` lists it (hdrh's percentile
    iterator, 5 ticks per half distance): ``(levels %, values ns, max ns, count)``."""
    levels, values = [], []
    if hist.get_total_count():
        for it in hist.get_percentile_iterator(5):
            levels.append(float(it.percentile_level_iterated_to))
            values.append(float(it.value_iterated_to))
    return levels, values, float(hist.get_max_value()), int(hist.get_total_count())


def _read_hlog(path: Path, head: str):
    """The intervals of an interval log, one at a time (:func:`~tickwire.engine.latency.iter_interval_log`);
    ``head``: the file's start, as :func:`_read_head` read it."""
    from tickwire.engine.latency import iter_interval_log

    if "#[StartTime" not in head and "#[BaseTime" not in head and not re.search(r"^(Tag=[^,]*,)?[0-9.]+,", head, re.M):
        raise PlotInputError(f"{path}: not an HdrHistogram interval log (no #[StartTime]/#[BaseTime] header "
                             f"and no interval lines)")
    try:
        yield from iter_interval_log(path)
    except ValueError as exc:                             # (it names the file and the interval)
        raise PlotInputError(str(exc)) from None


def load_latency(path, tags=None) -> LatencySource:
    """Read a ``.hgrm`` file or an interval log (by content: a ``.hgrm`` starts with its
    ``Value Percentile`` header). ``tags``: the interval log tags (stages) to keep."""
    path = Path(path)
    head = _read_head(path)                    # (the rest is read line by line: not held whole)
    # by content; by name (.hgrm) only when it does not start as an interval log does (an .hlog
    # named x.hgrm was read as a table: "line 6 is not an .hgrm row")
    if head.lstrip().startswith("Value") or path.suffix == ".hgrm" and not (
            "#[StartTime" in head or "#[BaseTime" in head or "#[Histogram log format" in head):
        return LatencySource(path, "hgrm", {None: read_hgrm(path)})
    # one interval at a time: each merged into its tag's total and summed up for the plot over
    # time, then dropped (every interval kept, 220 KB each, a daemon's log of a few days took
    # more memory than the machine had: an adversarial pass)
    from tickwire.engine.latency import new_hdrh

    src = LatencySource(path, "hlog")
    have, n = [], 0
    for iv in _read_hlog(path, head):
        n += 1
        if iv.tag not in have:
            have.append(iv.tag)
        if tags and iv.tag not in tags:
            continue
        total = src.histograms.setdefault(iv.tag, new_hdrh())
        if iv.histogram.get_total_count():   # (an empty one decodes with a min of 0: merged, every minimum 0)
            total.add(iv.histogram)
            src.rows.setdefault(iv.tag, []).extend(over_time([iv], iv.tag))
    if not n:
        raise PlotInputError(f"{path}: an interval log with no intervals yet (the daemon writes one every "
                             f"metrics.hdr_interval_s)")
    if tags:
        missing = [t for t in tags if t not in have]
        if missing:
            raise PlotInputError(f"{path}: no intervals tagged {', '.join(missing)} (it has: "
                                 f"{', '.join(str(t) for t in have)})")
    for t, h in src.histograms.items():
        src.spectra[t] = spectrum(h)
    return src


def over_time(intervals, tag):
    """Per interval of ``tag``: ``(end time s, count, p50 ns, p99 ns, max ns)``; empty intervals
    are left out."""
    rows = []
    for iv in intervals:
        if iv.tag != tag or not iv.histogram.get_total_count():
            continue
        h = iv.histogram
        rows.append((iv.end, h.get_total_count(), h.get_value_at_percentile(50.0),
                     h.get_value_at_percentile(99.0), h.get_max_value()))
    return rows


# -- drawing -----------------------------------------------------------------------------------

def _names(sources) -> list[str]:
    """A name per source: its file's stem, with as many parent directories as it takes to tell
    apart files of the same name (`sweep/w0` and `after/w0`: a before/after pair was drawn as one
    line, the second file's data replacing the first's)."""
    paths = [Path(s.path).resolve() for s in sources]
    depth = 0
    while True:
        names = ["/".join([*p.parts[len(p.parts) - 1 - depth:-1], p.stem]) for p in paths]
        if len(set(names)) == len(names) or depth >= max(len(p.parts) for p in paths):
            return names
        depth += 1


def _label(name: str, tag, several: bool) -> str:
    if tag is None:
        return name
    return f"{name}:{tag}" if several else str(tag)


def _shown(text: str) -> str:
    """``text`` as matplotlib can draw it: a file name's bytes that are not UTF-8 (surrogate
    escapes) as \\udcff (the font raised on them: a traceback for g\\xff.hlog)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def draw_spectra(ax, series, title: str = "") -> None:
    """``series``: (label, (levels %, values ns, max ns, count)) pairs, drawn in microseconds
    on a nines axis; the 100% point (the max) is marked at the right edge."""
    top = 10
    for label, (levels, values, mx, count) in series:
        xs = [1 / (1 - p / 100) for p in levels if p < 100]
        ys = [v / 1e3 for p, v in zip(levels, values) if p < 100]
        n = f", n={count:,}" if count else ""
        line, = ax.plot(xs, ys, label=_shown(f"{label} (max {mx / 1e3:,.1f} us{n})"))
        if xs:
            top = max(top, xs[-1])
            ax.plot([xs[-1]], [mx / 1e3], marker="o", color=line.get_color())
    nines_axis(ax, top)
    ax.set_yscale("log")
    ax.set_ylabel("latency (us)")
    if title:
        ax.set_title(_shown(title))
    if series:
        ax.legend(fontsize="small")


def plot_latency(paths, out, tags=None, title: str | None = None) -> dict:
    """``tickwire plot latency``: one PNG at ``out``. Returns what was drawn:
    ``{"spectra": {label: (levels, values_ns, max_ns, count)}, "over_time": {label: rows}}``."""
    require_matplotlib("the plot")
    sources = [load_latency(p, tags) for p in paths]
    several = len(sources) > 1
    names = _names(sources)
    spectra, summary, rows_at = {}, {}, {}
    for src, name in zip(sources, names):
        for tag, sp in src.spectra.items():
            label = _label(name, tag, several)
            spectra[label] = sp
            h = src.histograms.get(tag)
            if h is not None:
                summary[label] = {f"p{p:g}": h.get_value_at_percentile(p) for p in (50.0, 99.0, 99.9)}
            else:
                # an .hgrm: the first row at or past each level, whose own level is said beside it
                # (p99.9 read 6,848.5 us, the row at 99.93%, where the histogram's p99.9 is 5,455.9)
                got = {f"p{p:g}": _at(sp[0], sp[1], p) for p in (50.0, 99.0, 99.9)}
                summary[label] = {k: v for k, (_, v) in got.items()}
                rows_at[label] = {k: lv for k, (lv, _) in got.items()}
    timed = {}
    for src, name in zip(sources, names):
        for tag in src.spectra:
            if src.kind == "hlog":
                rows = src.rows.get(tag, [])
                if rows:
                    timed[_label(name, tag, several)] = rows
    fig, axes = figure(10, 9 if timed else 5.5, rows=2 if timed else 1)
    draw_spectra(axes[0], list(spectra.items()),
                 title or "latency percentile spectrum: " + ", ".join(s.path.name for s in sources))
    if timed:
        import numpy as np

        ax = axes[1]
        t0 = min(rows[0][0] for rows in timed.values())
        for label, rows in timed.items():
            r = np.array(rows, dtype=float)
            line, = ax.plot(r[:, 0] - t0, r[:, 3] / 1e3, label=_shown(f"{label} p99"))
            ax.plot(r[:, 0] - t0, r[:, 2] / 1e3, ls=":", color=line.get_color(), label=_shown(f"{label} p50"))
            ax.plot(r[:, 0] - t0, r[:, 4] / 1e3, ls="", marker=".", color=line.get_color(),
                    label=_shown(f"{label} max"))
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the first interval's end")
        ax.set_ylabel("latency (us)")
        ax.set_title("per interval: p50 (dotted), p99 (line), max (dots)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2)
    save_png(fig, out)
    return {"spectra": spectra, "over_time": timed, "summary": summary, "rows_at": rows_at}


# -- the command ---------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="plot latency files (.hlog interval logs, .hgrm spectra) as a PNG",
        description="Plot HDR latency files as a PNG (matplotlib): the percentile spectrum on a log "
                    "'nines' axis, several files and stages overlaid, and, for interval logs, p50/p99/max "
                    "per interval over time. Interval logs: a daemon's <state_dir>/<run>/hdr/<worker>.hlog, "
                    "`tickwire bench`'s intervals-*.hlog; .hgrm: `tickwire bench`'s outputs.",
    )
    what = p.add_subparsers(dest="what", metavar="WHAT")
    lat = what.add_parser("latency", help="percentile spectrum and latency over time",
                          description="Percentile spectrum (log nines axis) of each file (each stage of an "
                                      "interval log, merged over its intervals), overlaid; and for interval "
                                      "logs, p50/p99/max per interval over time.")
    lat.add_argument("files", nargs="+", metavar="FILE", help=".hlog (HdrHistogram interval log) or .hgrm files")
    lat.add_argument("-o", "--output", default="latency.png", metavar="FILE.png", help="the PNG to write [%(default)s]")
    lat.add_argument("--stage", action="append", metavar="TAG",
                     help="only these interval log tags (decode, book, stats, rules, tick_to_signal, ...; repeatable)")
    lat.add_argument("--title", help="the spectrum's title")
    lat.set_defaults(func=cmd_plot)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_plot(args) -> int:
    if Path(args.output).suffix.lower() != ".png":
        # (-o x.jpg wrote PNG bytes into x.jpg, unsaid)
        print(f"tickwire plot latency: -o {args.output}: the plot is written as a PNG: name it FILE.png",
              file=sys.stderr)
        return 2
    if Path(args.output).is_dir():
        print(f"tickwire plot latency: -o {args.output}: a directory: name the PNG file to write", file=sys.stderr)
        return 2
    try:
        drawn = plot_latency(args.files, args.output, tags=args.stage, title=args.title)
    except (PlotInputError, ImportError) as exc:
        print(f"tickwire plot latency: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tickwire plot latency: cannot write {args.output} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {len(drawn['spectra'])} spectra"
          + (f", {len(drawn['over_time'])} over time" if drawn["over_time"] else ""))
    for label, (levels, values, mx, count) in drawn["spectra"].items():
        s = drawn["summary"][label]
        if count == 0:                        # (it printed p50 0.0 us ... max 0.0 us, as if measured)
            print(f"  {label}: no values recorded")
            continue
        at = drawn["rows_at"].get(label, {})
        off = {k: lv for k, lv in at.items() if abs(lv - float(k[1:])) > 1e-9}
        print(f"  {label}: " + "  ".join(f"{k} {v / 1e3:,.1f} us" for k, v in s.items())
              + f"  max {mx / 1e3:,.1f} us" + (f"  n={count:,}" if count else "")
              + (f"  (.hgrm rows at {', '.join(f'{lv:.3f}%' for lv in off.values())} for "
                 f"{', '.join(off)}: the file lists some levels only, and each figure is its first row at or "
                 f"past the level; the interval log gives exact percentiles)" if off else ""))
    return 0


def _at(levels, values, p: float) -> tuple[float, float]:
    """``(level, value)`` of the spectrum's first row at or past percentile ``p`` (an .hgrm lists
    only some levels, so this is the value at the next level it lists: an upper bound)."""
    for lv, v in zip(levels, values):
        if lv >= p:
            return float(lv), v
    return (float(levels[-1]), values[-1]) if len(values) else (float(p), 0.0)
