"""Shared fixtures: the real captures (skipped with a reason where ../shared is absent); a tiny
tmpfs for a spill directory that fills up."""

import os
import subprocess

import pytest

from tickwire.feeds import captures


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
