"""benchmarks/hotpath_report.py, the guard of "no Python in per-tick code": it sees every kind of
per-tick code (nogil functions and methods, signatures on several lines, `with nogil:` blocks),
fails on Python interaction there, and the shipped extensions pass it."""

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tickwire.ext import BUILD

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import hotpath_report  # noqa: E402

SAMPLE = textwrap.dedent('''
    # cython: language_level=3
    cdef int helper(int x) nogil:          # no noexcept: each caller checks for an exception
        return x + 1

    cdef int clean(int x) noexcept nogil:
        return x * 2

    cdef class Rule:
        cdef int evaluate(self,
                          int a,
                          int b) noexcept nogil:
            """A docstring with a ( that never closes, and "quotes"."""
            cdef int s = clean(a)
            s += helper(b)                  # BAD: re-takes the GIL to check for an exception
            return s

        cdef int slow(self, int a) noexcept nogil:
            with gil:
                print(a)                    # explicit: listed, not counted
            return clean(a)

    def batch(int n):
        cdef int i, s = len(str(n))         # Python, but not per tick
        with nogil:
            for i in range(n):
                s += helper(i)              # BAD
        return s
''')


def annotated(tmp_path, source):
    pyx = tmp_path / "sample.pyx"
    pyx.write_text(source)
    subprocess.run([sys.executable, "-m", "cython", "-a", str(pyx)], check=True, capture_output=True)
    return pyx, tmp_path / "sample.html"


def test_report_catches_python_in_a_nogil_method_and_a_with_nogil_block(tmp_path):
    pyx, html = annotated(tmp_path, SAMPLE)
    out = io.StringIO()
    assert hotpath_report.report(pyx, html, out) == 2
    text = out.getvalue()
    bad = [no for no, line in enumerate(SAMPLE.splitlines(), 1) if "# BAD" in line]
    assert f"sample.pyx:{bad[0]}: " in text and "in Rule.evaluate:" in text
    assert f"sample.pyx:{bad[1]}: " in text and "in `with nogil:` in batch" in text
    assert "`with gil:` at line" in text and "takes the GIL on purpose" in text
    assert "in 4 nogil functions and 1 `with nogil` blocks, 2 with Python interaction" in text
    # the same code with the error contract spelled out is clean
    pyx, html = annotated(tmp_path, SAMPLE.replace("cdef int helper(int x) nogil:", "cdef int helper(int x) noexcept nogil:"))
    assert hotpath_report.report(pyx, html, io.StringIO()) == 0


def test_report_refuses_to_pass_on_nothing(tmp_path, capsys):
    assert hotpath_report.main(["--html", str(tmp_path)]) == 2                 # no HTML at all
    (tmp_path / "book.html").write_text("<html>not an annotate page</html>")
    assert hotpath_report.main(["--html", str(tmp_path)]) == 2
    assert "format" in capsys.readouterr().err


def test_the_extensions_per_tick_code_is_found():
    regions, gil = hotpath_report.per_tick_regions((ROOT / "ext" / "pipeline.pyx").read_text())
    names = {r.name.split(" (line")[0] for r in regions if r.lines}
    assert {"Engine.process_c", "Rule.evaluate", "_update_book", "_hysteresis",
            "`with nogil:` in Engine._run"} <= names
    assert [g.name.split(" at")[0] for g in gil] == ["`with gil:`"]          # PyRule.evaluate
    regions, _ = hotpath_report.per_tick_regions((ROOT / "ext" / "book.pyx").read_text())
    names = {r.name.split(" (line")[0] for r in regions}
    assert {"tw_book_add_order", "tw_bookset_apply", "`with nogil:` in Book.apply"} <= names


@pytest.mark.skipif(BUILD == "debug", reason="the release build's sources are annotated in the release run")
def test_shipped_extensions_have_no_python_in_per_tick_code(tmp_path):
    """Annotates the release build into a temporary directory (cythonize only, ~15 s; the
    in-place build is not touched) and runs the report on it."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "hotpath_report.py"),
                          "--annotate", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "pipeline.pyx:" in run.stdout and "book.pyx:" in run.stdout
    assert "total: 0 per-tick lines with Python interaction" in run.stdout


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
