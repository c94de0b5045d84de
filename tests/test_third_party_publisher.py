"""A third party's publisher, written from docs/wire-format.md alone (tests/third_party_publisher.py:
struct and pyzmq, no tickwire import), feeds the real Binance capture to a running `tickwire run`
daemon whose per-message limit it must split for; the store then holds every published market
event exactly once and the daemon's final books equal the capture's reference book at every
level. The conformance kit passes on that publisher too."""

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from tickwire.engine.config import to_toml
from tickwire.engine.demo import demo_raw_config
from tickwire.ext.records import Flag
from tickwire.feeds import captures, conformance

from reference import RefL2

PY = sys.executable
PUBLISHER = Path(__file__).resolve().parent / "third_party_publisher.py"
CAPTURE = captures.find_shared_data(captures.BINANCE_FILE)
needs_binance = pytest.mark.skipif(
    CAPTURE is None, reason=f"real capture {captures.BINANCE_FILE} not found: these tests need ../shared/data "
                            "beside the checkout (or TICKWIRE_SHARED_DATA); a fresh clone does not have it")
LIMIT = 1000          # the daemon's feeds.max_message_events here: the REST snapshot (2,002 events) and the
                      # largest diffs (1,226 levels) are over it, so the publisher has to split them


def endpoints():
    d = Path(tempfile.mkdtemp(prefix="tw3p", dir="/tmp"))          # ipc paths must stay short
    return f"ipc://{d}/feed", f"ipc://{d}/snap"


def publisher(data, snap, result, *args):
    return subprocess.Popen([PY, str(PUBLISHER), str(CAPTURE), "--data", data, "--snapshot", snap,
                             "--result", str(result), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def reference_levels(capture):
    book = RefL2(0)
    for ev in capture.events:
        book.apply(ev)
    return book.state()


def daemon_levels(path):
    with np.load(path) as z:
        ev = z["book_0"]
    ev = ev[ev["kind"] == 1]
    return tuple([(int(p), int(q)) for p, q in zip(ev["price"][ev["side"] == s], ev["qty"][ev["side"] == s])]
                 for s in (0, 1))


@needs_binance
@pytest.mark.integration
def test_a_publisher_written_from_the_doc_feeds_the_daemon_every_event_once_and_its_books(tmp_path):
    from test_daemon import query, start_daemon, status, stop_daemon, wait_for

    capture = captures.load_binance(CAPTURE)
    data, snap = endpoints()
    raw = demo_raw_config(tmp_path / "state", run="thirdparty")
    raw["instruments"] = [{"id": 0, "symbol": "BTCUSDT", "tick_size": "0.01", "lot_size": "0.00000001", "book": "L2",
                           "price_decimals": 2, "qty_decimals": 8}]
    raw["feeds"].update(endpoints=[data], snapshot=snap, channels=1, max_message_events=LIMIT)
    raw["rules"] = []
    cfg = tmp_path / "thirdparty.toml"
    cfg.write_text(to_toml(raw))
    run_dir = tmp_path / "state" / "thirdparty"
    ref = {}
    t = threading.Thread(target=lambda: ref.update(levels=reference_levels(capture)))   # meanwhile
    t.start()
    daemon, log = start_daemon(cfg, tmp_path)
    try:
        assert wait_for(lambda: status(run_dir)["pid"]), "the worker never reported"
        pub = publisher(data, snap, tmp_path / "pub.json", "--max-events", str(LIMIT), "--linger", "2")
        out, err = pub.communicate(timeout=180)
        assert pub.returncode == 0, err[-3000:]
        st = json.loads((tmp_path / "pub.json").read_text())
        total = st["next_seq"] - 1
        assert wait_for(lambda: status(run_dir)["feed"]["stored_events"] >= total, 60), (st, status(run_dir)["feed"])
        feed = status(run_dir)["feed"]
    finally:
        rc, _ = stop_daemon(daemon, log)
    t.join()
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    # the publisher imported nothing from tickwire, split what it had to, and followed the join sequence
    assert st["tickwire_modules"] == [] and st["split_messages"] >= 2 and st["snapshots_served"] >= 1
    assert st["market_events"] == int((capture.events["flags"] & Flag.SNAPSHOT == 0).sum())
    assert st["snapshot_events"] == 2002 and total == len(capture.events)
    assert not feed.get("drops", {}).get("OVERSIZED") and not feed.get("lost_events"), feed
    # every published market event in the store exactly once (an independent query: no markers, no
    # snapshot rows)
    dsn = f"chdb://{tmp_path}/state/store"
    (n, distinct, lo, hi), = query(dsn, "SELECT count(), uniqExact(channel, seq), min(seq), max(seq) FROM tickwire.ticks "
                                        "WHERE bitAnd(flags, 2) = 0 AND kind != 6")
    assert n == distinct == st["market_events"], (n, distinct, st)
    assert (lo, hi) == (2003, total)           # from the first event after the in-stream snapshot to the last
    # the daemon's final book equals the capture's reference book at every level
    bids, asks = daemon_levels(run_dir / "books-0.npz")
    ref_bids, ref_asks = ref["levels"]
    assert len(bids) > 1000 and len(asks) > 1000
    assert bids == ref_bids and asks == ref_asks


@needs_binance
def test_the_conformance_kit_passes_on_the_third_party_publisher(tmp_path):
    data, snap = endpoints()
    pub = publisher(data, snap, tmp_path / "pub.json", "--rate", "300", "--limit", "900", "--linger", "1",
                    "--max-events", str(LIMIT))
    try:
        import time

        end = time.monotonic() + 30
        while not Path(snap[6:]).exists() and time.monotonic() < end:
            time.sleep(0.05)
        report = conformance.check(data, snap, duration=3.0, max_events=LIMIT)
        assert report.ok and not report.findings, report.text()
        assert report.data_messages > 100 and report.snapshots == 2 and report.retransmissions == 1
    finally:
        out, err = pub.communicate(timeout=60)
    assert pub.returncode == 0, err[-2000:]
