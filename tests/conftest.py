"""Shared fixtures: the real captures (skipped with a reason where ../shared is absent); a tiny
tmpfs for a spill directory that fills up."""

import os
import subprocess

import pytest
from hypothesis import settings

from tickwire.feeds import captures

# Property-based tests draw the same examples on every run by default (``derandomize``), so
# what passes on a developer's machine passes in CI. ``TICKWIRE_HYPOTHESIS=explore`` draws
# fresh random examples each run (and keeps failures in .hypothesis/) to hunt for new cases;
# a case found that way goes into the suite as an explicit test.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("explore" if os.environ.get("TICKWIRE_HYPOTHESIS") == "explore" else "repeatable")


def _capture(loader, filename):
    path = captures.find_shared_data(filename)
    if path is None:
        pytest.skip(
            f"real capture {filename} not found: these tests need ../shared/data beside the "
            "checkout (or TICKWIRE_SHARED_DATA); a fresh clone does not have it"
        )
    return loader(path)


@pytest.fixture(scope="session")
def kraken():
    return _capture(captures.load_kraken, captures.KRAKEN_FILE)


@pytest.fixture(scope="session")
def binance():
    return _capture(captures.load_binance, captures.BINANCE_FILE)


# The compiled core's own tests: what the debug build's second pass runs (TICKWIRE_SUITE=core,
# set by ./dev test). Whole-system runs (processes, the store, the CLI) and pure-Python parts
# are left to the release pass: their C paths are the same ones these tests drive, with the
# bounds and initialisation checks on.
CORE_MODULES = {
    "test_book_l2", "test_book_l3", "test_build", "test_captures", "test_codec_fuzz", "test_cython_api",
    "test_feed_handler", "test_hdr", "test_instruments", "test_iothread", "test_pipeline", "test_records",
    "test_ring", "test_ring_procs", "test_rules", "test_stats", "test_wire",
}


def pytest_collection_modifyitems(config, items):
    suite = os.environ.get("TICKWIRE_SUITE", "all")
    if suite == "all":
        return
    if suite != "core":
        raise pytest.UsageError(f"TICKWIRE_SUITE: expected 'all' or 'core', got {suite!r}")
    keep, drop = [], []
    for item in items:
        (keep if item.module.__name__ in CORE_MODULES else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    from tickwire.ext import BUILD

    return f"tickwire extension build: {BUILD} (expected: {os.environ.get('TICKWIRE_EXPECT_BUILD', 'any')})"


@pytest.fixture
def tiny_disk():
    """A 1 MiB tmpfs to mount as a spill directory (root only; skipped where mounting is not
    allowed)."""
    mounted = []

    def mount(path):
        path.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True)
        if res.returncode:
            pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.decode().strip()}")
        mounted.append(path)
        return path
    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)])
