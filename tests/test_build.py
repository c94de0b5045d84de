"""Which build of the extension the tests run against (release or debug)."""

import os

import numpy as np
import pytest

from tickwire.ext import BUILD
from tickwire.ext._testing import sum_first as _sum_first


def test_expected_build_is_loaded():
    expected = os.environ.get("TICKWIRE_EXPECT_BUILD")
    if not expected:
        pytest.skip("TICKWIRE_EXPECT_BUILD not set (the ./dev test runs set it)")
    assert BUILD == expected


def test_sum_first_in_bounds():
    assert _sum_first(np.arange(5, dtype=np.int64), 5) == 10


@pytest.mark.skipif(BUILD != "debug", reason="bounds checks are compiled into the debug build only")
def test_debug_build_checks_bounds():
    with pytest.raises(IndexError):
        _sum_first(np.arange(3, dtype=np.int64), 5)


def test_the_signature_help_shows_matches_each_constructor():
    """Found by a newcomer's pass: help(L2Book) showed `L2Book(instrument=0, max_depth=0, *, ...)`
    (Cython 3.3's embedded signature put the '*' of a keyword-only __init__ one argument late),
    and `L2Book(0, 5)` as it suggests is a TypeError. Every class whose docstring opens with its
    signature has the keyword-only arguments its ``def __init__`` has in the source."""
    import ast
    import re
    from pathlib import Path

    import tickwire.ext as ext

    def kinds(args: str):
        a = ast.parse(f"def f({args}): pass").body[0].args
        return [x.arg for x in a.args], [x.arg for x in a.kwonlyargs]

    src = Path(ext.__file__).resolve().parent
    checked = 0
    for pyx in sorted(src.glob("*.pyx")):
        text = pyx.read_text()
        for m in re.finditer(r"^cdef class (\w+)\b.*?\n(?:    .*\n|\n)*?    def __init__\(self, ((?:.|\n)*?)\):\n", text, re.M):
            name, args = m.group(1), re.sub(r"\s+", " ", m.group(2))
            if "*" not in args or "<" in args:
                continue
            module = __import__(f"tickwire.ext.{pyx.stem}", fromlist=[name])
            first = getattr(module, name).__doc__.split("\n", 1)[0]
            assert first.startswith(f"{name}(") and first.endswith(")"), (name, first)
            assert kinds(first[len(name) + 1:-1]) == kinds(args), (name, first, args)
            checked += 1
    assert checked >= 3, checked
