"""The shipped extension modules carry no benchmark scaffolding (it lives in benchmarks/cext)."""

import importlib

import pytest


@pytest.mark.parametrize("name", ["ring", "hdr", "codec"])
def test_no_bench_helpers_in_shipped_modules(name):
    mod = importlib.import_module(f"tickwire.ext.{name}")
    helpers = [a for a in dir(mod) if a.startswith(("_bench", "_raw_"))]
    assert helpers == [], f"tickwire.ext.{name} ships benchmark helpers: {helpers}"


def test_ring_header_has_no_limit_loops():
    from pathlib import Path
    import tickwire.ext

    header = Path(tickwire.ext.__file__).with_name("tw_ring.h").read_text()
    assert "tw_limit_" not in header
