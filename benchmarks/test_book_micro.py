"""pytest-benchmark micro benchmarks of the books, peers in the same groups.

    .venv/bin/python -m pytest benchmarks/test_book_micro.py --benchmark-columns=median,ops

Each group compares tickwire with a peer on identical work; pytest-benchmark prints the
groups side by side. Throughput figures with ratios are in bench_book.py.
"""

import pytest

from common import apply_levels, pin

from tickwire.ext import L2Book
import cbuild
from tickwire.feeds.synthetic import l2_updates

pin(1)
N = 200_000
EVENTS = l2_updates(N, seed=7)
ROWS = list(zip(EVENTS["side"].tolist(), EVENTS["price"].tolist(), EVENTS["qty"].tolist()))
PEDANTIC = dict(rounds=7, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="l2-200k-updates")
def test_tickwire_batch(benchmark):
    benchmark.pedantic(lambda b: b.apply(EVENTS), setup=lambda: ((L2Book(0),), {}), **PEDANTIC)


@pytest.mark.benchmark(group="l2-200k-updates")
def test_tickwire_per_event(benchmark):
    def run(b):
        set_level = b.set
        for side, price, qty in ROWS:
            set_level(side, price, qty)
    benchmark.pedantic(run, setup=lambda: ((L2Book(0),), {}), **PEDANTIC)


@pytest.mark.benchmark(group="l2-200k-updates")
def test_order_book_peer(benchmark):
    from order_book import OrderBook

    benchmark.pedantic(lambda ob: apply_levels(ob.bids, ob.asks, ROWS), setup=lambda: ((OrderBook(),), {}),
                       **PEDANTIC)


@pytest.mark.benchmark(group="l2-200k-updates")
def test_sortedcontainers_peer(benchmark):
    from sortedcontainers import SortedDict

    benchmark.pedantic(lambda books: apply_levels(books[0], books[1], ROWS),
                       setup=lambda: (((SortedDict(), SortedDict()),), {}), **PEDANTIC)


@pytest.fixture(scope="module")
def deep_book():
    book = L2Book(0)
    for i in range(20_000):
        book.set(0, 1_000_000 - 2 * i, 5)
        book.set(1, 1_000_002 + 2 * i, 5)
    return book


@pytest.mark.benchmark(group="bbo-read-depth-20000")
def test_bbo_c_million_reads(benchmark, deep_book):
    benchmark.pedantic(cbuild.load("_bookbench").bbo_reads, args=(deep_book, 1_000_000), **PEDANTIC)


@pytest.mark.benchmark(group="bbo-read-depth-20000")
def test_bbo_python_million_reads(benchmark, deep_book):
    benchmark.pedantic(lambda: [deep_book.bbo() for _ in range(1_000_000)], rounds=3, iterations=1)
