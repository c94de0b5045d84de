"""Report Python interaction inside the per-tick (nogil) functions, from Cython's annotate HTML.

    ./dev annotate            # regenerates build/cython-release/ext/*.html and runs this

A line that Cython scores above 0 touches the Python C-API; inside a `nogil` function that is a
defect (an exception check re-taking the GIL, a refcount, a Python call).  Exit status 1 when
any is found.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r'<pre class="cython line score-(\d+)"[^>]*>.{0,20}?<span class="">(\d+)</span>:', re.S)
DEF = re.compile(r"^(cdef|cpdef|def|class|cdef class)\b")


def report(pyx: Path, html: Path) -> int:
    src = pyx.read_text().splitlines()
    scores = {int(no): int(score) for score, no in LINE.findall(html.read_text())}
    current, nogil_lines, found = None, 0, 0
    for no, text in enumerate(src, 1):
        if DEF.match(text):
            current = text.strip() if "nogil" in text else None
        elif text[:1] not in ("", " ", "#", ")"):
            current = None                     # module-level code ends the function
        if current is None or no not in scores:
            continue
        nogil_lines += 1
        if scores[no] > 0 and not DEF.match(text):
            print(f"{pyx.name}:{no}: score {scores[no]} in `{current[:60]}`: {text.strip()}")
            found += 1
    print(f"{pyx.name}: {nogil_lines} lines in nogil functions, {found} with Python interaction")
    return found


def main() -> int:
    total = 0
    for html in sorted((ROOT / "build" / "cython-release" / "ext").glob("*.html")):
        total += report(ROOT / "ext" / (html.stem + ".pyx"), html)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
