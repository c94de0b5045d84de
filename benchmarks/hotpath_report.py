"""Report Python interaction in per-tick code, from Cython's annotated HTML; exit 1 when any.

    ./dev annotate                                      # rebuilds in place with annotations, runs this
    python benchmarks/hotpath_report.py                 # reads build/cython-release/ext/*.html
    python benchmarks/hotpath_report.py --annotate [DIR]  # writes fresh HTML to DIR (default: a
                                                        # temporary one) without touching the build

Per-tick code is every line that runs without the GIL: the bodies of ``nogil`` functions (module
functions and methods of ``cdef class`` alike, signatures on one line or several) and of
``with nogil:`` blocks.  A line there that Cython scores above 0 touches the Python C-API (an
exception check that re-takes the GIL, a refcount, a Python call): a defect.  ``with gil:``
blocks inside are explicit requests for the GIL (a Python rule's documented slow path): they are
listed, not counted.  Signature lines and the ``with nogil:`` line itself are not checked (their
score is the function's prologue and the release of the GIL).

Exit status: 0 clean, 1 Python interaction found, 2 nothing to read (no HTML, or HTML whose format
this script does not understand: a report that sees nothing must not pass).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r'<pre class="cython line score-(\d+)"[^>]*>.{0,20}?<span class="">(\d+)</span>:', re.S)
FUNCTION = re.compile(r"(?:cpdef|cdef|def)\s")
NOT_FUNCTION = re.compile(r"cdef\s+(?:(?:public|api|readonly)\s+)*(?:class|struct|union|enum|extern|cppclass|packed|fused)\b")
WITH_NOGIL = re.compile(r"with\s+nogil\s*:")
WITH_GIL = re.compile(r"with\s+gil\s*:")


@dataclass
class Statement:
    first: int                 # line numbers, 1-based, inclusive
    last: int
    indent: int
    text: str                  # the logical line: physical lines joined, comments and strings blanked


@dataclass
class Region:
    """Per-tick code: the body of a nogil function or of a `with nogil:` block."""
    name: str
    lines: set = field(default_factory=set)


def statements(source: str) -> list[Statement]:
    """The logical lines of a .pyx (a statement continues while brackets are open or after a
    backslash), with the contents of strings and comments blanked so that neither brackets in a
    docstring nor a verbatim C block can confuse the structure."""
    out, depth, quote, pending = [], 0, None, None
    for no, line in enumerate(source.splitlines(), 1):
        clean, i = [], 0
        while i < len(line):
            c = line[i]
            if quote:                                   # inside a string (maybe from earlier lines)
                if c == "\\":
                    i += 2
                    continue
                if line.startswith(quote, i):
                    i += len(quote)
                    quote = None
                    clean.append('"')
                    continue
                i += 1
                continue
            if c == "#":
                break
            if c in "\"'":
                quote = line[i:i + 3] if line.startswith(c * 3, i) else c
                clean.append('"')
                i += len(quote)
                continue
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth = max(depth - 1, 0)
            clean.append(c)
            i += 1
        text = "".join(clean)
        if quote and len(quote) == 1:
            quote = None                                # an unterminated one-line string: give up on it
        if pending is None:
            if not text.strip() and not quote:
                continue
            pending = Statement(no, no, len(line) - len(line.lstrip()), text.strip())
        else:
            pending.last = no
            pending.text += " " + text.strip()
        if depth == 0 and not quote and not text.rstrip().endswith("\\"):
            out.append(pending)
            pending = None
    if pending is not None:
        out.append(pending)
    return out


def _signature_tail(text: str) -> str:
    """What follows the argument list of a function signature (error spec, nogil, ...)."""
    start = text.find("(")
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[i + 1:]
    return ""


def per_tick_regions(source: str) -> tuple[list[Region], list[Region]]:
    """``(per-tick regions, explicit with-gil regions)`` of a .pyx source."""
    stmts = statements(source)
    regions, gil = [], []
    stack = []                                  # (indent, kind, name) of enclosing blocks
    for k, s in enumerate(stmts):
        while stack and s.indent <= stack[-1][0]:
            stack.pop()
        text = s.text
        kind, name = None, None
        if FUNCTION.match(text) and not NOT_FUNCTION.match(text) and "(" in text and text.endswith(":"):
            name = re.match(r"(?:cpdef|cdef|def)\s+(.*?)\s*\(", text).group(1).split()[-1].lstrip("*&")
            owner = [n for _, kd, n in stack if kd == "class"]
            name = ".".join(owner[-1:] + [name])
            kind = "nogil" if re.search(r"\bnogil\b", _signature_tail(text)) else "function"
        elif re.match(r"(?:cdef\s+)?class\s", text) and text.endswith(":"):
            kind, name = "class", re.match(r"(?:cdef\s+)?class\s+(\w+)", text).group(1)
        elif WITH_NOGIL.match(text):
            fn = [n for _, kd, n in stack if kd in ("function", "nogil")]
            kind, name = "nogil", f"`with nogil:` in {fn[-1] if fn else '<module>'} (line {s.first})"
        elif WITH_GIL.match(text) and any(kd == "nogil" for _, kd, _ in stack):
            kind, name = "gil", f"`with gil:` at line {s.first}"
        if kind is None:
            continue
        body = set()
        for t in stmts[k + 1:]:
            if t.indent <= s.indent:
                break
            body.update(range(t.first, t.last + 1))
        if kind == "nogil":
            regions.append(Region(name, body))
        elif kind == "gil":
            gil.append(Region(name, body | set(range(s.first, s.last + 1))))
        stack.append((s.indent, kind, name))
    explicit = set().union(*(g.lines for g in gil)) if gil else set()
    for r in regions:
        r.lines -= explicit
    return regions, gil


def report(pyx: Path, html: Path, out=sys.stdout) -> int:
    """Print the Python interaction in per-tick lines of ``pyx``; return how many lines have any.

    Raises ValueError when ``html`` holds no scored lines (not an annotate file, or a format
    this script does not understand)."""
    scores = {int(no): int(score) for score, no in LINE.findall(html.read_text())}
    if not scores:
        raise ValueError(f"{html}: no scored lines found: not Cython's annotate output, or its format changed")
    regions, gil = per_tick_regions(pyx.read_text())
    src = pyx.read_text().splitlines()
    found, checked, seen = 0, 0, set()
    for r in regions:
        for no in sorted(r.lines - seen):
            seen.add(no)
            checked += 1
            if scores.get(no, 0) > 0:
                print(f"{pyx.name}:{no}: score {scores[no]} in {r.name}: {src[no - 1].strip()}", file=out)
                found += 1
    for g in gil:
        print(f"{pyx.name}: note: {g.name} takes the GIL on purpose ({len(g.lines)} lines not checked)", file=out)
    nfun = sum(not r.name.startswith("`with") for r in regions)
    print(f"{pyx.name}: {checked} per-tick lines in {nfun} nogil functions and {len(regions) - nfun} "
          f"`with nogil` blocks, {found} with Python interaction", file=out)
    return found


def annotate(into: Path) -> Path:
    """Cythonize the release build with annotations into ``into`` (no compiling, the in-place
    build untouched); returns the directory of the HTML files."""
    env = dict(os.environ, TICKWIRE_ANNOTATE="1", TICKWIRE_CYTHON_DIR=str(into))
    env.pop("TICKWIRE_DEBUG", None)
    subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return into / "ext"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotate", nargs="?", const="", metavar="DIR",
                    help="write fresh annotated HTML first (into DIR, default a temporary directory)")
    ap.add_argument("--html", type=Path, default=ROOT / "build" / "cython-release" / "ext",
                    help="directory of the annotated HTML files [%(default)s]")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tickwire-annotate-") as tmp:
        html_dir = args.html
        if args.annotate is not None:
            html_dir = annotate(Path(args.annotate or tmp).resolve())
        pages = sorted(html_dir.glob("*.html"))
        if not pages:
            print(f"no annotated HTML in {html_dir}: run ./dev annotate, or pass --annotate", file=sys.stderr)
            return 2
        total = 0
        for html in pages:
            try:
                total += report(ROOT / "ext" / (html.stem + ".pyx"), html)
            except ValueError as exc:
                print(exc, file=sys.stderr)
                return 2
    print(f"total: {total} per-tick lines with Python interaction")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
