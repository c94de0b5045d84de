"""`tickwire plot latency`: the numbers the plots are drawn from against numpy on the raw values,
real PNGs, clear errors for missing and garbled files. (A daemon's own interval log is plotted in
tests/test_top.py, against the daemon that test runs.)"""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the plots need matplotlib (the dev and report extras)")

from tickwire.engine import plots  # noqa: E402
from tickwire.engine.latency import IntervalLogWriter, hgrm  # noqa: E402
from tickwire.ext.hdr import Recorder  # noqa: E402

PY = sys.executable


def close(got, want, rel=2e-3):
    """HDR keeps 3 significant digits: a bucket's edge is within 0.1% of the values in it."""
    return abs(got - want) <= rel * want + 1


def every_point_matches(spec, values):
    """Each plotted (level, value) point: the value numpy finds at that level (the level is the
    fraction of values at or below the point's value) lies in the same HDR bucket."""
    levels, ys, _, count = spec
    assert count == len(values) and len(levels) > 50
    for lv, y in zip(levels, ys):
        if 0 < lv < 100:
            assert close(y, np.percentile(values, lv, method="inverted_cdf")), (lv, y)


def raw_values(seed, n, sigma=1.0, mu=8.0):
    return np.random.default_rng(seed).lognormal(mu, sigma, n).astype(np.int64) + 1


def write_log(path, per_interval):
    """An interval log of two stages; returns the raw values of each interval."""
    recs = {"book": Recorder(), "rules": Recorder()}
    raw = []
    with IntervalLogWriter(path, recs, start_time=1_700_000_000.0) as log:
        for k, n in enumerate(per_interval):
            vals = {"book": raw_values(k, n), "rules": raw_values(100 + k, n, 0.5, 6.0)}
            for tag, v in vals.items():
                recs[tag].record_many(v)
            log.write_interval(1_700_000_001.0 + k)
            raw.append(vals)
    return raw


def test_merged_skips_empty_intervals_and_the_log_summary_reads_as_a_table(tmp_path):
    """Found by a newcomer: a daemon's log has empty intervals (an idle feed); merged() added
    their decoded histograms and every minimum came out 0. `python -m tickwire.engine.latency`
    printed raw dicts, took `--help` for a file name (a traceback) and broke on `| head`."""
    from tickwire.engine.latency import merged, read_interval_log

    raw = write_log(tmp_path / "run.hlog", [2_000, 0, 3_000, 0])
    ivs = read_interval_log(tmp_path / "run.hlog")
    allv = np.concatenate([r["book"] for r in raw])
    m = merged(ivs, "book")
    assert m.get_total_count() == len(allv)
    assert m.get_min_value() == pytest.approx(allv.min(), rel=1e-3) and m.get_min_value() > 0
    out = subprocess.run([PY, "-m", "tickwire.engine.latency", str(tmp_path / "run.hlog")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    head, book, rules = out.stdout.splitlines()
    assert head.split()[:3] == ["stage", "count", "p50"] and "us" in head
    assert book.split()[:2] == ["book", f"{len(allv):,}"] and rules.split()[0] == "rules"
    out = subprocess.run([PY, "-m", "tickwire.engine.latency", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "INTERVAL_LOG" in out.stdout and "Traceback" not in out.stderr
    out = subprocess.run([PY, "-m", "tickwire.engine.latency", str(tmp_path / "nope.hlog")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "nope.hlog" in out.stderr and "Traceback" not in out.stderr
    # found by an adversarial pass: a damaged interval (its cookie, a cut) was a raw hdrh traceback
    good = (tmp_path / "run.hlog").read_text().splitlines(keepends=True)
    rows = [i for i, line in enumerate(good) if line.startswith("Tag=")]
    bad = good[:]
    bad[rows[1]] = bad[rows[1]].rsplit(",", 1)[0] + ",HISTFAAAACh4nJNpYWBgYGZgYmBiYGBgAAAFKwDp\n"
    (tmp_path / "bad.hlog").write_text("".join(bad))
    out = subprocess.run([PY, "-m", "tickwire.engine.latency", str(tmp_path / "bad.hlog")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"{tmp_path / 'bad.hlog'}: not a readable HdrHistogram interval log: interval 2" in out.stderr


def test_a_stage_with_no_values_is_said_so_not_printed_as_zeros(tmp_path):
    """Found by a newcomer: a stage a log never recorded printed `p50 0.0 us ... max 0.0 us`."""
    recs = {"book": Recorder(), "rules": Recorder()}
    with IntervalLogWriter(tmp_path / "r.hlog", recs, start_time=1_700_000_000.0) as log:
        for k in range(3):
            recs["book"].record_many(raw_values(k, 1000))
            log.write_interval(1_700_000_001.0 + k)
    out = subprocess.run([PY, "-m", "tickwire", "plot", "latency", str(tmp_path / "r.hlog"), "-o",
                          str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rules = [ln for ln in out.stdout.splitlines() if "rules" in ln]
    book = [ln for ln in out.stdout.splitlines() if "book" in ln]
    assert rules == ["  rules: no values recorded"] and "n=3,000" in book[0], out.stdout


def test_interval_log_spectrum_and_over_time_match_numpy_on_the_raw_values(tmp_path):
    raw = write_log(tmp_path / "run.hlog", [20_000, 5_000, 30_000, 1])
    out = tmp_path / "lat.png"
    drawn = plots.plot_latency([tmp_path / "run.hlog"], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[0] > 500           # two panels
    for tag in ("book", "rules"):
        allv = np.concatenate([r[tag] for r in raw])
        spec = drawn["spectra"][tag]
        assert spec[2] == pytest.approx(allv.max(), rel=1e-3)
        every_point_matches(spec, allv)
        for p in (50, 99, 99.9):
            assert close(drawn["summary"][tag][f"p{p:g}"], np.percentile(allv, p, method="inverted_cdf")), (tag, p)
        rows = drawn["over_time"][tag]
        assert [r[0] for r in rows] == [1_700_000_001.0 + k for k in range(4)]
        for (_, count, p50, p99, mx), r in zip(rows, raw):
            v = r[tag]
            assert count == len(v)
            assert close(p50, np.percentile(v, 50, method="inverted_cdf"))
            assert close(p99, np.percentile(v, 99, method="inverted_cdf"))
            assert close(mx, v.max())


def test_hgrm_files_overlaid_with_a_log(tmp_path):
    """.hgrm as `tickwire bench` writes them (latency.hgrm): read back within HDR's precision."""
    vals = raw_values(7, 50_000, 1.2)
    r = Recorder()
    r.record_many(vals)
    (tmp_path / "a.hgrm").write_text(hgrm(r))
    (tmp_path / "b.hgrm").write_text(hgrm(r, unit_ratio=1000.0))
    write_log(tmp_path / "run.hlog", [1000, 1000])
    res = subprocess.run([PY, "-m", "tickwire", "plot", "latency", str(tmp_path / "a.hgrm"), str(tmp_path / "b.hgrm"),
                          str(tmp_path / "run.hlog"), "--stage", "book", "-o", str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "a: p50" in res.stdout and "run:book" in res.stdout and (tmp_path / "x.png").stat().st_size > 10_000
    every_point_matches(plots.load_latency(tmp_path / "a.hgrm").spectra[None], vals)
    # an .hgrm lists some levels only: each figure is its first row at or past the level, and
    # the row's own level is said where it is not the one named (p99.9 read 6,848.5 us, the
    # 99.93% row, against the histogram's 5,455.9: an adversarial pass)
    levels, values = plots.load_latency(tmp_path / "a.hgrm").spectra[None][:2]
    line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("a: p50"))
    for p in (50.0, 99.0, 99.9):
        k = next(i for i, lv in enumerate(levels) if lv >= p)
        assert f"p{p:g} {values[k] / 1e3:,.1f} us" in line
        if abs(levels[k] - p) > 1e-9:
            assert f"{levels[k]:.3f}%" in line and ".hgrm rows at" in line, line
    assert any(abs(lv - p) > 1e-9 for p in (50.0, 99.0, 99.9) for lv in [next(x for x in levels if x >= p)])


def test_a_file_name_that_is_not_utf8_is_drawn(tmp_path):
    """Found by an adversarial pass: a log named g\\xff.hlog was a matplotlib (FT2Font) traceback."""
    write_log(tmp_path / "run.hlog", [1000, 1000])
    odd = os.path.join(os.fsencode(tmp_path), b"g\xff.hlog")
    os.rename(tmp_path / "run.hlog", odd)
    res = subprocess.run([PY.encode(), b"-m", b"tickwire", b"plot", b"latency", odd, b"-o",
                          os.fsencode(tmp_path / "x.png")], capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert b"Traceback" not in res.stderr and (tmp_path / "x.png").stat().st_size > 10_000


def test_files_of_the_same_name_in_two_directories_are_two_lines(tmp_path):
    """bench's before/ and after/ each hold wire_to_signal-100k.hgrm, daemons' runs each a
    w0.hlog: plotted together they were labelled by the file's stem alone, and the second
    replaced the first (one spectrum drawn of two)."""
    fast, slow = raw_values(1, 20_000, 0.5, 6.0), raw_values(2, 20_000, 0.5, 9.0)
    for d, vals in (("before", slow), ("after", fast)):
        r = Recorder()
        r.record_many(vals)
        (tmp_path / d).mkdir()
        (tmp_path / d / "w2s.hgrm").write_text(hgrm(r))
        write_log(tmp_path / d / "w0.hlog", [1000, 1000])
    drawn = plots.plot_latency([tmp_path / "before" / "w2s.hgrm", tmp_path / "after" / "w2s.hgrm"], tmp_path / "a.png")
    assert sorted(drawn["spectra"]) == ["after/w2s", "before/w2s"]
    every_point_matches(drawn["spectra"]["before/w2s"], slow)
    every_point_matches(drawn["spectra"]["after/w2s"], fast)
    drawn = plots.plot_latency([tmp_path / "before" / "w0.hlog", tmp_path / "after" / "w0.hlog"], tmp_path / "b.png",
                               tags=["book"])
    assert sorted(drawn["spectra"]) == ["after/w0:book", "before/w0:book"]
    assert sorted(drawn["over_time"]) == ["after/w0:book", "before/w0:book"]


@pytest.mark.parametrize("content, fragment", [
    (None, "no such file"),
    (b"", "empty file"),
    (b"hello world\n", "not an HdrHistogram interval log"),
    (b"\xff\xfe\x00garbage", "not text"),
    ("#[StartTime: 1.000 (seconds since epoch), x]\n#[BaseTime: 1.000 (seconds since epoch)]\n"
     "Tag=book,0.000,1.000,0.010,HISTFAAAAnotbase64!!\n".encode(), "interval 1 cannot be decoded"),
    ("#[StartTime: 1.000 (seconds since epoch), x]\n".encode(), "no intervals yet"),
])
def test_bad_interval_logs_are_one_clear_line(tmp_path, content, fragment):
    path = tmp_path / "bad.hlog"
    if content is not None:
        path.write_bytes(content)
    res = subprocess.run([PY, "-m", "tickwire", "plot", "latency", str(path), "-o", str(tmp_path / "x.png")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert fragment in res.stderr and str(path) in res.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name", ["x.jpg", "x", "x.png.svg"])
def test_an_output_not_named_png_is_refused(tmp_path, name):
    """Found by an adversarial pass: -o x.jpg wrote PNG bytes into x.jpg without a word."""
    write_log(tmp_path / "run.hlog", [1000, 1000])
    res = subprocess.run([PY, "-m", "tickwire", "plot", "latency", str(tmp_path / "run.hlog"), "-o",
                          str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "the plot is written as a PNG: name it FILE.png" in res.stderr and not (tmp_path / name).exists()


def test_garbled_hgrm_and_unknown_stage(tmp_path):
    r = Recorder()
    r.record_many(raw_values(1, 100))
    text = hgrm(r).splitlines()
    (tmp_path / "bad.hgrm").write_text("\n".join(text[:6] + ["12.0 zzz 3 4"] + text[6:]))
    with pytest.raises(plots.PlotInputError, match=r"bad.hgrm: line 7 is not an .hgrm row"):
        plots.load_latency(tmp_path / "bad.hgrm")
    write_log(tmp_path / "run.hlog", [10])
    with pytest.raises(plots.PlotInputError, match=r"no intervals tagged wire \(it has: book, rules\)"):
        plots.load_latency(tmp_path / "run.hlog", tags=["wire"])


def test_bench_plots_draw_through_the_shared_module(tmp_path):
    """`tickwire bench`'s spectrum and sweep PNGs (engine/bench.py: plot), from its .hgrm files."""
    from tickwire.engine import bench

    r = Recorder()
    r.record_many(raw_values(3, 10_000))
    runs = []
    for rate in (1000, 10_000):
        (tmp_path / f"wire_to_signal-{bench._fmt_rate(rate)}.hgrm").write_text(hgrm(r))
        lat = {k: {lv: 1000.0 * (i + 1) for i, lv in enumerate(bench.LEVELS)} for k in ("floor", "wire_to_signal")}
        runs.append({"offered_rate": rate, "latency_ns": lat})
    made = bench.plot({"runs": runs, "target": "test"}, tmp_path)
    assert made == ["spectrum-1k.png", "spectrum-10k.png", "sweep.png"]
    assert all((tmp_path / m).read_bytes()[:4] == b"\x89PNG" for m in made)


def test_a_truncated_hgrm_is_refused_not_read_as_complete(tmp_path):
    """Found by an adversarial pass: an .hgrm cut short (a copy interrupted, a disk full) was
    plotted, and its last row printed as p99, p99.9 and the max (39 ms for a max of 245 ms)."""
    r = Recorder()
    r.record_many(raw_values(5, 5_000, 1.5))
    rows = [ln for ln in hgrm(r).splitlines() if ln.strip() and not ln.startswith("#")]
    (tmp_path / "cut.hgrm").write_text("\n".join(rows[:len(rows) // 2]) + "\n")
    res = subprocess.run([PY, "-m", "tickwire", "plot", "latency", str(tmp_path / "cut.hgrm"), "-o",
                          str(tmp_path / "x.png")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "cut short" in res.stderr and "not 100%" in res.stderr and str(tmp_path / "cut.hgrm") in res.stderr
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "whole.hgrm").write_text(hgrm(r))             # a whole one still reads
    assert plots.load_latency(tmp_path / "whole.hgrm").spectra[None][0][-1] == 100.0


def _log_past_the_range(path):
    """An interval log as another tool writes one, with a value of 100 s (past 2**36 ns)."""
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogWriter

    h = HdrHistogram(1, 3_600_000_000_000, 3)
    h.record_value(100_000_000_000)
    h.record_value(5_000)
    h.set_start_time_stamp(1000)
    h.set_end_time_stamp(2000)
    with open(path, "w") as f:
        HistogramLogWriter(f).output_interval_histogram(h)


@pytest.mark.parametrize("cmd", [["-m", "tickwire", "plot", "latency"], ["-m", "tickwire.engine.latency"]])
def test_an_interval_log_past_the_range_is_one_line_not_a_traceback(tmp_path, cmd):
    """Found by an adversarial pass: a log with values past 68.7 s (another tool's) was an
    IndexError traceback in `tickwire plot latency` and `python -m tickwire.engine.latency`."""
    _log_past_the_range(tmp_path / "big.hlog")
    extra = ["-o", str(tmp_path / "x.png")] if "plot" in cmd else []
    res = subprocess.run([PY, *cmd, str(tmp_path / "big.hlog"), *extra], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"{tmp_path / 'big.hlog'}: interval 1 holds values up to 100.1 s" in res.stderr, res.stderr
    assert "68.7 s" in res.stderr


def test_a_long_interval_log_is_read_one_interval_at_a_time(tmp_path):
    """Found by an adversarial pass: every interval's histogram (220 KB) was kept, so plotting a
    daemon's log of a day or more took all the machine's memory (24 GB, not done after 17
    minutes). Here 2,000 lines: 0.43 GB read whole, tens of MB now, and the figures are
    those of every interval."""
    from tickwire.engine.latency import merged, read_interval_log

    raw = write_log(tmp_path / "long.hlog", [50] * 1_000)
    # the peak of what Python allocated (the histograms' counts included), not the process's RSS:
    # how much the allocator keeps of what was freed varies from run to run
    code = ("import tracemalloc\nfrom tickwire.engine import plots\ntracemalloc.start()\n"
            f"src = plots.load_latency({str(tmp_path / 'long.hlog')!r})\n"
            "print(src.histograms['book'].get_total_count(), len(src.rows['book']), "
            "tracemalloc.get_traced_memory()[1])")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300)
    count, rows, peak = map(int, out.stdout.split())
    assert count == sum(len(r["book"]) for r in raw) and rows == 1_000, out.stderr
    assert peak < 150 << 20, f"{peak / 2**20:.0f} MiB"
    assert merged(read_interval_log(tmp_path / "long.hlog"), "book").get_total_count() == count


@pytest.mark.parametrize("line, fragment", [
    ("Tag=book,0.000,1.000,abc,{p}", "line 6 is not an interval line"),
    ("Tag=book,-5.000,1.000,0.010,{p}", "line 6 is not an interval line"),
    ("Tag=book,0.000,-1.000,0.010,{p}", "line 6 is not an interval line"),
    # (absolute times, BaseTime 0: the log's own lines at 0.000 and one of 2020 before its StartTime)
    ("Tag=book,1600000000.000,1.000,0.010,{p}", "3 of its 3 interval lines start before the log's StartTime"),
])
def test_an_interval_line_hdrh_would_skip_is_refused_not_left_out(tmp_path, line, fragment):
    """Found by an adversarial pass: hdrh's reader skips a line it cannot parse (a max of
    "abc", a negative start or length) and one starting before the log's StartTime; the plot
    and the summary were drawn from the rest (89 of 139 intervals), exit 0."""
    write_log(tmp_path / "ok.hlog", [10])
    lines = (tmp_path / "ok.hlog").read_text().splitlines()
    good = lines[-2]
    payload = good.rsplit(",", 1)[1]
    lines.insert(len(lines) - 2, line.format(p=payload))
    assert lines[5] == line.format(p=payload), lines
    if "1600000000" in line:
        lines[3] = "#[BaseTime: 0.000 (seconds since epoch)]"
    bad = tmp_path / "bad.hlog"
    bad.write_text("\n".join(lines) + "\n")
    for cmd in (["-m", "tickwire", "plot", "latency", str(bad), "-o", str(tmp_path / "x.png")],
                ["-m", "tickwire.engine.latency", str(bad)]):
        res = subprocess.run([PY, *cmd], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert fragment in res.stderr and str(bad) in res.stderr, res.stderr


@pytest.mark.parametrize("what", ["empty", "hgrm", "no interval"])
def test_the_log_summary_refuses_what_is_no_interval_log(tmp_path, what):
    """Found by an adversarial pass: `python -m tickwire.engine.latency` printed an empty table,
    exit 0, for an empty file or an .hgrm."""
    path = tmp_path / "x.hlog"
    if what == "empty":
        path.write_text("")
    elif what == "hgrm":
        r = Recorder()
        r.record_many(raw_values(1, 100))
        path.write_text(hgrm(r))
    else:
        path.write_text("#[StartTime: 1.000 (seconds since epoch), x]\n")
    res = subprocess.run([PY, "-m", "tickwire.engine.latency", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stdout == "", (res.stdout, res.stderr)
    assert str(path) in res.stderr
    assert {"empty": "an empty file", "hgrm": "an .hgrm percentile table", "no interval": "no interval in it"}[what] \
        in res.stderr


def test_a_directory_named_as_the_png_is_refused_and_leaves_nothing(tmp_path):
    """Found by an adversarial pass: -o D.png with D.png a directory left .D.png.tmp.png beside it."""
    write_log(tmp_path / "run.hlog", [1000])
    (tmp_path / "D.png").mkdir()
    res = subprocess.run([PY, "-m", "tickwire", "plot", "latency", str(tmp_path / "run.hlog"), "-o",
                          str(tmp_path / "D.png")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "a directory" in res.stderr, res.stderr
    fig, _ = plots.figure()
    with pytest.raises(OSError):                      # (save_png itself: no temporary file left)
        plots.save_png(fig, tmp_path / "D.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D.png", "run.hlog"]
