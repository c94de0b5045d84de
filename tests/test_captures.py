"""Real exchange data: the books reproduce the exchanges' own checksums and best levels."""

import numpy as np
import pytest

from tickwire.engine.instruments import make_books
from tickwire.ext import Flag, Kind
from tickwire.feeds.captures import kraken_checksum, message_ends

pytestmark = pytest.mark.data


def test_kraken_all_4269_checksums(kraken):
    assert len(kraken.checks) == 4269
    books = make_books(kraken.instruments)
    out = np.empty((10, 3), np.int64)
    start = 0
    matched = 0
    for end, iid, crc in kraken.checks:
        books.apply(kraken.events[start:end])
        start = end
        got = kraken_checksum(books[int(iid)], kraken.instruments[int(iid)], out)
        assert got == crc, f"checksum after event {end} of {kraken.instruments[int(iid)].symbol}"
        matched += 1
    assert matched == 4269
    assert books.rejects == {}
    # depth 1000 is honoured: Kraken never deletes levels pushed out of it
    for book in books:
        assert book.level_count(0) <= 1000 and book.level_count(1) <= 1000


def test_kraken_checksum_detects_a_wrong_book(kraken):
    books = make_books(kraken.instruments)
    end, iid, crc = kraken.checks[0]
    books.apply(kraken.events[:end])
    book = books[int(iid)]
    bid, qty = book.best_bid, book.best_bid_qty
    book.set(0, bid, qty + 1)
    assert kraken_checksum(book, kraken.instruments[int(iid)]) != crc


def test_kraken_batch_in_one_call_equals_message_by_message(kraken):
    whole = make_books(kraken.instruments)
    whole.apply(kraken.events)
    stepped = make_books(kraken.instruments)
    start = 0
    for end in message_ends(kraken.events):
        stepped.apply(kraken.events[start:end])
        start = end
    for a, b in zip(whole, stepped):
        assert a.state() == b.state()


def test_binance_book_matches_every_book_ticker(binance):
    assert len(binance.checks) == 564
    books = make_books(binance.instruments)
    book = books[0]
    start = 0
    for c in binance.checks:
        books.apply(binance.events[start:c["end"]])
        start = c["end"]
        assert book.bbo() == (c["bid"], c["bid_qty"], c["ask"], c["ask_qty"]), f"update id {c['update_id']}"
        assert not book.crossed
    books.apply(binance.events[start:])
    assert books.rejects == {}


def test_binance_events_are_well_formed(binance):
    ev = binance.events
    assert binance.stats["diffs_dropped"] >= 1           # diffs older than the snapshot
    trades = ev[ev["kind"] == Kind.TRADE]
    assert len(trades) == binance.stats["trades_kept"] > 9000
    assert (trades["flags"] & int(Flag.LAST)).all()
    diffs = ev[(ev["kind"] == Kind.MODIFY)]
    assert (np.diff(diffs["seq"].astype(np.int64)) >= 0).all()  # update ids never go back


def test_bookbench_over_the_real_captures_exits_0_when_every_check_matches(kraken, binance):
    """`tickwire bookbench` printed every checksum and best level matching, then a stray `0` on
    stderr and exit status 1 (a numpy bool as the exit status)."""
    import subprocess
    import sys

    from tickwire.feeds.captures import KRAKEN_FILE, find_shared_data

    res = subprocess.run([sys.executable, "-m", "tickwire", "bookbench", "--events", "20000", "--repeats", "1",
                          "--data", str(find_shared_data(KRAKEN_FILE).parent)], capture_output=True, text=True,
                         timeout=300)
    assert "4269/4269 exchange checksums match" in res.stdout, res.stdout[-2000:]
    assert res.returncode == 0 and res.stderr == "", (res.returncode, res.stderr)


def test_a_capture_line_nested_too_deep_is_a_malformed_line_not_a_traceback(tmp_path):
    """Found by an adversarial pass: a capture line nested 200,000 deep was a RecursionError
    traceback; it is "malformed capture line N" like any other line that cannot be read."""
    import gzip

    from tickwire.feeds.captures import CaptureError, load_binance, load_kraken

    head = '2021-04-17 10:00:00.000000 1618653600.000000: {"event": "heartbeat"}\n'
    kraken = tmp_path / "kraken.ws"
    for body in ("[" * 200_000, '{"event": ' + "[" * 200_000):
        kraken.write_text(head + f"2021-04-17 10:00:00.100000 1618653600.100000: {body}\n")
        with pytest.raises(CaptureError, match=r"line 2: malformed capture line \(RecursionError"):
            load_kraken(kraken)
    binance = tmp_path / "binance.gz"
    with gzip.open(binance, "wt") as fh:
        fh.write('1723075200000000000 {"lastUpdateId": 10, "bids": [], "asks": []}\n')
        fh.write("1723075200100000000 " + '{"a": ' * 200_000 + "\n")
    with pytest.raises(CaptureError, match=r"line 2: malformed capture line \(RecursionError"):
        load_binance(binance)
