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
