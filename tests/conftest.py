"""Shared fixtures: the real captures (skipped with a reason where ../shared is absent)."""

import os

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
