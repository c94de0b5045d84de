"""The tick store against the real embedded ClickHouse engine (chDB), no mocks."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tickwire.engine.store import MERGE_SELECTOR_BASE, SCHEMA_VERSION, Store, StoreError, cluster_ddl, redact
from tickwire.ext import EVENT_DTYPE, SIGNAL_DTYPE, Flag
from tickwire.feeds.synthetic import l3_orders


def in_fresh_process(code: str) -> str:
    """Run store code in its own process: chDB allows one data path per process."""
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def random_events(n, seed=0):
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    ev["ts_event"] = np.sort(rng.integers(1_600_000_000_000_000_000, 1_600_000_100_000_000_000, n))
    ev["ts_recv"] = ev["ts_event"] + rng.integers(0, 10**6, n)
    ev["seq"] = rng.integers(0, 2**63, n, dtype=np.uint64)
    ev["order_id"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64)
    ev["price"] = rng.integers(-(2**62), 2**62, n)
    ev["qty"] = rng.integers(-(2**62), 2**62, n)
    ev["instrument"] = rng.integers(0, 5, n)
    ev["channel"] = rng.integers(0, 2**16, n)
    ev["kind"] = rng.integers(0, 7, n)
    ev["side"] = rng.integers(0, 3, n)
    ev["flags"] = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    return ev


def total_order(ev, epoch_ord=None):
    ords = np.arange(len(ev)) if epoch_ord is None else epoch_ord
    return ev[np.lexsort((ords, ev["seq"], ev["ts_event"]))]


def test_round_trip_bit_for_bit_in_total_order(tmp_path):
    store = Store.open(f"chdb://{tmp_path}/db")
    ev = random_events(50_000, seed=1)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)                 # market events (snapshots: their own test)
    assert store.insert_ticks(ev, epoch=3, first_ord=0, token="3:0") == len(ev)
    back = np.concatenate(list(store.read_ticks(chunk_rows=7_000)))
    assert back.tobytes() == total_order(ev).tobytes()
    assert all(len(c) <= 7_000 for c in store.read_ticks(chunk_rows=7_000))
    # filters: instruments and a time range
    t0, t1 = int(ev["ts_event"][10_000]), int(ev["ts_event"][30_000])
    got = np.concatenate(list(store.read_ticks(instruments=[1, 3], start_ns=t0, end_ns=t1)))
    want = ev[np.isin(ev["instrument"], [1, 3]) & (ev["ts_event"] >= t0) & (ev["ts_event"] < t1)]
    assert got.tobytes() == total_order(want).tobytes()
    assert store.count_ticks(instruments=[1, 3], start_ns=t0, end_ns=t1) == len(want)
    assert list(store.read_ticks(instruments=[])) == []


def test_same_token_is_stored_once_and_epochs_keep_streams_apart(tmp_path):
    store = Store.open(f"chdb://{tmp_path}/db")
    ev = random_events(1000, seed=2)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    for _ in range(3):
        store.insert_ticks(ev, epoch=1, first_ord=0, token="1:0:1000")
    assert store.count_ticks() == 1000
    store.insert_ticks(ev, epoch=2, first_ord=0, token="2:0:1000")    # a new stream: new rows
    assert store.count_ticks() == 2000


@pytest.mark.parametrize("write_path", ["python", "arrow"])
def test_both_write_paths_store_the_same_rows_and_honour_the_token(tmp_path, write_path):
    """The embedded store's own insert (chDB ``Python()``) and clickhouse-connect's give the
    same bytes back; a retry under the same token is stored once even when its rows differ (the
    token, not the content, deduplicates), and a token with quotes in it is passed intact."""
    store = Store.open(f"chdb://{tmp_path}/db")
    store.write_path = write_path
    store.prepare_writes()                                                  # stores nothing
    assert store.count_ticks() == 0
    ev = random_events(5000, seed=7)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    token = "1:0:5000 o'clock \\ run"
    store.insert_ticks(ev, epoch=1, first_ord=0, token=token)
    store.insert_ticks(ev[:10], epoch=1, first_ord=0, token=token)       # another body, same token
    assert store.count_ticks() == 5000
    store.insert_ticks(ev, epoch=1, first_ord=0, token="another")          # same rows, new token
    assert store.count_ticks() == 10_000
    back = np.concatenate(list(store.read_ticks(start_ns=None)))
    assert back[::2].tobytes() == total_order(ev).tobytes()
    assert back[1::2].tobytes() == total_order(ev).tobytes()
    sig = np.zeros(50, dtype=SIGNAL_DTYPE)
    sig["ts_signal"] = np.arange(50) + 1_700_000_000_000_000_000
    sig["value"] = np.linspace(-1, 1, 50)
    store.insert_signals(sig, "it's-a-run", token="s")
    store.insert_signals(sig[:5], "it's-a-run", token="s")
    assert store.read_signals("it's-a-run").tobytes() == sig.tobytes()
    store.close()


def test_snapshot_rows_go_to_their_own_table_once_each(tmp_path):
    """Rows with Flag.SNAPSHOT (snapshot replies and their markers) land in `snapshots`, the rest
    in `ticks`; `ord` keeps each row's place in the batch; a retried batch (same token) adds
    nothing to either table, and a retry after only one table got its rows completes the other."""
    store = Store.open(f"chdb://{tmp_path}/db")
    ev = random_events(20_000, seed=5)
    snap = (ev["flags"] & Flag.SNAPSHOT) != 0
    assert 0 < snap.sum() < len(ev)
    for _ in range(2):
        store.insert_ticks(ev, epoch=4, first_ord=100, token="4:100:20000")
    market = np.concatenate(list(store.read_ticks()))
    snaps = np.concatenate(list(store.read_snapshots()))
    assert market.tobytes() == total_order(ev[~snap], np.arange(100, 20_100)[~snap]).tobytes()
    assert snaps.tobytes() == total_order(ev[snap], np.arange(100, 20_100)[snap]).tobytes()
    assert store.count_ticks() == (~snap).sum() and store.count_ticks(table="snapshots") == snap.sum()
    ords = store.client.query("SELECT ord FROM tickwire.snapshots ORDER BY ord").result_rows
    assert [o for (o,) in ords] == list(np.flatnonzero(snap) + 100)
    # a batch whose market part was inserted but not its snapshot part (a crash in between)
    ev2 = random_events(1_000, seed=6)
    s2 = (ev2["flags"] & Flag.SNAPSHOT) != 0
    store.insert_ticks(ev2[~s2], epoch=5, token="5:0:1000")   # what the first attempt stored
    store.insert_ticks(ev2, epoch=5, token="5:0:1000")        # the retry
    assert store.count_ticks() == (~snap).sum() + (~s2).sum()
    assert store.count_ticks(table="snapshots") == snap.sum() + s2.sum()
    with pytest.raises(ValueError, match="table"):
        store.count_ticks(table="signals")


def test_a_batch_spanning_hundreds_of_days_is_stored_once(tmp_path):
    """The store partitions by day of ts_event and ClickHouse refuses an insert touching more
    than 100 partitions by default: a snapshot whose levels carry the times they last changed
    (Kraken's, over 324 days) was refused, and the writer, taking it for an outage, stopped
    storing anything for good. One batch over 400 days is stored, and once under its token."""
    store = Store.open(f"chdb://{tmp_path}/db")
    ev = random_events(4_000, seed=8)
    day = 86_400 * 10**9
    ev["ts_event"] = 1_600_000_000_000_000_000 + (np.arange(len(ev)) % 400) * day + np.arange(len(ev))
    snap = (ev["flags"] & Flag.SNAPSHOT) != 0
    for _ in range(2):
        store.insert_ticks(ev, epoch=2, first_ord=0, token="2:0:4000")
    assert store.count_ticks() == (~snap).sum() and store.count_ticks(table="snapshots") == snap.sum()
    assert np.concatenate(list(store.read_ticks())).tobytes() == total_order(ev[~snap], np.flatnonzero(~snap)).tobytes()
    days = store.client.query("SELECT uniqExact(toYYYYMMDD(ts_event)) FROM tickwire.ticks").result_rows[0][0]
    assert days == 400


def test_garbage_stamps_make_no_partition_each_and_read_back_exactly(tmp_path, monkeypatch):
    """A publisher's garbage stamps (random over int64) made one partition per day they named, and
    ClickHouse never merges partitions: past its 100,000 parts every insert failed, good ticks'
    too. A row whose ts_event is more than a day from its ts_recv is partitioned by its ts_recv
    now: 2,000 garbage stamps over centuries, one partition; read back by ts_event, whole and by
    range, bit for bit. A store made before keeps its key (toYYYYMMDD(ts_event)) and works."""
    import tickwire.engine.store as store_mod

    ev = random_events(40_000, seed=5)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    ev["ts_event"] = ev["ts_recv"] = 1_765_000_000_000_000_000 + np.arange(len(ev)) * 1000
    rng = np.random.default_rng(5)
    bad = np.zeros(len(ev), bool)
    bad[rng.choice(len(ev), 2000, replace=False)] = True
    ev["ts_event"][bad] = rng.integers(-(1 << 63), (1 << 63) - 1, int(bad.sum()), endpoint=True)
    ev["ts_recv"][rng.choice(np.flatnonzero(bad), 10, replace=False)] = 0    # (receipt unknown: its own day)
    for name, partition_time in (("new", store_mod.PARTITION_TIME), ("old", "ts_event")):
        monkeypatch.setattr(store_mod, "PARTITION_TIME", partition_time)
        store = Store.open(f"chdb://{tmp_path}/{name}")
        monkeypatch.undo()
        for k in range(4):                                    # four batches, each over centuries
            part = slice(k * 10_000, (k + 1) * 10_000)
            assert store.insert_ticks(ev[part], epoch=3, first_ord=k * 10_000, token=f"3:{k}") == 10_000
        store.close()
        store = Store.open(f"chdb://{tmp_path}/{name}")       # reopened: the key it was made with
        key = store.client.query("SELECT partition_key FROM system.tables WHERE database = 'tickwire' AND "
                                 "name = 'ticks'").result_rows[0][0]
        (parts,), = store.client.query("SELECT uniqExact(partition) FROM system.parts WHERE database = "
                                       "'tickwire' AND table = 'ticks' AND active").result_rows
        if name == "new":
            assert "ts_recv" in key and parts <= 12, (key, parts)
        else:
            assert key == "toYYYYMMDD(ts_event)" and parts > 1500, (key, parts)
        back = np.concatenate(list(store.read_ticks(chunk_rows=9_000)))
        assert back.tobytes() == total_order(ev).tobytes()
        t0, t1 = int(ev["ts_event"][~bad][100]), int(ev["ts_event"][~bad][30_000])
        got = np.concatenate(list(store.read_ticks(start_ns=t0, end_ns=t1)))
        want = ev[(ev["ts_event"] >= t0) & (ev["ts_event"] < t1)]
        assert got.tobytes() == total_order(want).tobytes() and len(got) >= 29_000
        store.close()


def test_schema_created_once_and_reopened(tmp_path):
    dsn = f"chdb://{tmp_path}/db"
    out = in_fresh_process(f"""
        from tickwire.engine.store import Store
        from tickwire.feeds.synthetic import l3_orders, synthetic_instruments
        s = Store.open("{dsn}")
        s.register_instruments(synthetic_instruments(2, "L3"))
        s.insert_ticks(l3_orders(3000, seed=1, instruments=2), epoch=1, token="a")
        print(s.count_ticks())
    """)
    n = int(out.strip())
    out = in_fresh_process(f"""
        from tickwire.engine.store import Store
        s = Store.open("{dsn}")                        # reopen: schema kept, data kept
        print(s.count_ticks(), s.ensure_schema(), s.client.query(
            "SELECT count() FROM tickwire.schema_version").result_rows[0][0])
        print(s.client.query("SELECT symbol, toString(price), price_ticks FROM tickwire.ticks_decimal "
                             "WHERE kind = 1 ORDER BY ts_event LIMIT 1").result_rows[0])
    """)
    first, second = out.strip().splitlines()
    assert first.split() == [str(n), str(SCHEMA_VERSION), "1"]
    symbol, price, ticks = eval(second)
    assert symbol.startswith("SYN") and price.rstrip("0") == f"{ticks / 100:.2f}".rstrip("0")


def test_version_1_store_is_migrated_keeping_its_data(tmp_path):
    """A store made by schema version 1 (no merge tuning) gets merge_selector_base on reopen,
    once, and keeps its ticks; a new store is created with it."""
    dsn = f"chdb://{tmp_path}/old"
    in_fresh_process(f"""
        import clickhouse_connect
        from tickwire.engine.store import schema_ddl, Store
        from tickwire.feeds.synthetic import l2_updates
        c = clickhouse_connect.get_client(dsn="{dsn}")
        for stmt in schema_ddl("tickwire", merge_tuning=False):
            c.command(stmt)
        c.command("INSERT INTO tickwire.schema_version (version) VALUES (1)")
        Store(c, "tickwire", "{dsn}").insert_ticks(l2_updates(1000, seed=2), epoch=1, token="a")
    """)
    out = in_fresh_process(f"""
        from tickwire.engine.store import Store
        for _ in range(2):                                  # the second open finds nothing to do
            s = Store.open("{dsn}")
        q = lambda sql: s.client.query(sql).result_rows
        print(s.count_ticks(), sorted(r[0] for r in q("SELECT version FROM tickwire.schema_version")))
        for t in ("ticks", "signals"):
            print(t, "merge_selector_base = {MERGE_SELECTOR_BASE}" in
                  q(f"SELECT create_table_query FROM system.tables WHERE database = 'tickwire' AND name = '{{t}}'")[0][0])
    """)
    assert out.split("\n")[:3] == [f"1000 [1, {SCHEMA_VERSION}]", "ticks True", "signals True"]
    fresh = Store.open(f"chdb://{tmp_path}/new")
    ddl = fresh.client.query("SELECT create_table_query FROM system.tables WHERE name = 'ticks'").result_rows[0][0]
    assert f"merge_selector_base = {MERGE_SELECTOR_BASE}" in ddl


def test_version_2_store_is_migrated_moving_snapshot_rows_out_of_ticks(tmp_path):
    """A version-2 store (snapshot events in `ticks`) gets the `snapshots` table on reopen and its
    snapshot rows move there, exactly once, keeping epoch and ord; market rows stay."""
    dsn = f"chdb://{tmp_path}/v2"
    ev = random_events(5000, seed=7)
    np.save(tmp_path / "ev.npy", ev)
    in_fresh_process(f"""
        import clickhouse_connect
        import numpy as np
        from tickwire.engine.store import schema_ddl, _arrow_table, TICK_COLUMNS
        c = clickhouse_connect.get_client(dsn="{dsn}")
        for stmt in schema_ddl("tickwire"):
            if "snapshots" not in stmt:                     # what version 2 created
                c.command(stmt)
        c.command("INSERT INTO tickwire.schema_version (version) VALUES (2)")
        ev = np.load("{tmp_path / 'ev.npy'}")
        t = _arrow_table(ev, TICK_COLUMNS, {{"epoch": np.full(5000, 9, np.uint64),
                                             "ord": np.arange(5000, dtype=np.uint64)}})
        c.insert_arrow("tickwire.ticks", t, settings={{"async_insert": 0}})
    """)
    snap = (ev["flags"] & Flag.SNAPSHOT) != 0
    out = in_fresh_process(f"""
        from tickwire.engine.store import Store
        for _ in range(2):                                  # the second open finds nothing to do
            s = Store.open("{dsn}")
        q = lambda sql: s.client.query(sql).result_rows
        print(s.count_ticks(), s.count_ticks(table="snapshots"),
              sorted(r[0] for r in q("SELECT version FROM tickwire.schema_version")))
        print(q("SELECT count() FROM tickwire.ticks WHERE bitAnd(flags, 2) != 0")[0][0],
              q("SELECT sum(ord) FROM tickwire.snapshots WHERE epoch = 9")[0][0])
    """)
    assert out.split("\n")[:2] == [f"{(~snap).sum()} {snap.sum()} [2, 3]", f"0 {np.flatnonzero(snap).sum()}"]


def test_signals_round_trip_by_run(tmp_path):
    store = Store.open(f"chdb://{tmp_path}/db")
    sig = np.zeros(100, dtype=SIGNAL_DTYPE)
    sig["ts_signal"] = np.arange(100) + 1_700_000_000_000_000_000
    sig["ts_event"] = sig["ts_signal"] - 5
    sig["ts_recv"] = sig["ts_signal"] - 2
    sig["seq"] = np.arange(100)
    sig["value"] = np.linspace(-3, 3, 100)
    sig["strength"] = sig["value"] / 2
    sig["instrument"] = 4
    sig["rule_id"] = 7
    sig["rule_kind"] = 3
    sig["direction"] = np.sign(sig["value"]).astype(np.int8)
    sig["flags"] = 1
    store.insert_signals(sig, "run-a")
    store.insert_signals(sig[:10], "run-b")
    assert store.read_signals("run-a").tobytes() == sig.tobytes()
    assert len(store.read_signals("run-b")) == 10 and store.runs() == ["run-a", "run-b"]


def test_errors_are_clear_and_never_show_credentials():
    assert redact("http://alice:s3cret@db:8123/?password=s3cret") == "http://alice:***@db:8123/?password=***"
    with pytest.raises(ValueError, match="absolute path"):
        Store.open("chdb://relative/dir")
    with pytest.raises(StoreError) as err:
        Store.open("http://alice:s3cret@127.0.0.1:1/")                 # nothing listens on port 1
    assert "s3cret" not in str(err.value) and "127.0.0.1:1" in str(err.value)
    with pytest.raises(ValueError, match="store.database"):
        Store.open("chdb:///tmp/x", database="bad-name;")


@pytest.mark.parametrize("scheme, tls", [("https", True), ("http", False)])
def test_an_https_dsn_speaks_tls_on_any_port(scheme, tls):
    """An adversarial pass: clickhouse-connect guesses TLS from the port (443/8443) and not from
    the DSN's scheme, so `https://alice:pw@host:38444` sent its first request, the password in
    it, in plain HTTP. The scheme decides now: a listener sees a TLS ClientHello, never the
    credentials."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(20)
    got = []

    def listen():
        try:
            conn, _ = srv.accept()
            srv.close()                                  # (the driver's retries: refused at once)
            conn.settimeout(10)
            got.append(conn.recv(4096))
            conn.close()
        except OSError:
            got.append(b"")

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    try:
        with pytest.raises(StoreError):
            Store.open(f"{scheme}://alice:Secr3tPw@127.0.0.1:{srv.getsockname()[1]}")
        t.join(30)
    finally:
        srv.close()
    assert got and got[0], got
    first = got[0]
    if tls:
        assert first[:1] == b"\x16" and b"Authorization" not in first, first[:80]   # a TLS handshake record
    else:
        assert first.startswith((b"GET", b"POST")), first[:80]


def test_cluster_ddl_text():
    ddl = cluster_ddl("tw", "prod")
    text = "\n".join(ddl)
    assert all(" ON CLUSTER prod" in stmt for stmt in ddl)
    assert "ReplicatedMergeTree('/clickhouse/tables/{shard}/tw/ticks_local', '{replica}')" in text
    assert "ENGINE = Distributed(prod, tw, ticks_local, cityHash64(instrument))" in text
    assert "CREATE TABLE IF NOT EXISTS tw.ticks ON CLUSTER prod AS tw.ticks_local" in text
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tw/instruments', '{replica}', updated)" in text
    assert "ORDER BY (instrument, ts_event, seq, epoch, ord)" in text
    assert "DateTime64(9) CODEC(DoubleDelta, ZSTD(1))" in text
    with pytest.raises(ValueError, match="store.cluster"):
        cluster_ddl("tw", "prod; DROP")


# -- the time-ordered read: windows in the table's order, merged per instrument -----------------

def _stored_total_order(rows):
    """``rows`` (events with their stream epoch and ord) in the store's total order."""
    ev, epoch, ordv = rows
    return ev[np.lexsort((ordv, epoch, ev["seq"], ev["ts_event"]))]


def _insert_streams(store, streams):
    """Insert ``[(events, epoch, first_ord)]``; return (all events, epochs, ords) as stored."""
    evs, eps, ords = [], [], []
    for i, (ev, epoch, first) in enumerate(streams):
        store.insert_ticks(ev, epoch=epoch, first_ord=first, token=f"s{i}")
        evs.append(ev)
        eps.append(np.full(len(ev), epoch, np.uint64))
        ords.append(np.arange(first, first + len(ev), dtype=np.uint64))
    return np.concatenate(evs), np.concatenate(eps), np.concatenate(ords)


@pytest.mark.parametrize("path", ["native", "arrow"])
def test_ticks_stamped_at_the_ends_of_time_are_read_back(tmp_path, path):
    """Found by an adversarial pass: one tick stamped 2262-04-11 (the largest ts_event, int64 ns)
    made the read's window end at 2**63, which toInt64 wrapped to -2**63: every window read empty,
    the gap query found the same row again, and `tickwire replay` looped for good (at 91% CPU,
    deaf to SIGTERM). Run in a child, so that a loop fails the test, not the run."""
    code = textwrap.dedent(f"""
        import numpy as np
        from tickwire.engine.store import Store
        from tickwire.ext import EVENT_DTYPE
        ev = np.zeros(5, EVENT_DTYPE)
        ev["ts_event"] = [-(1 << 63), -1, 0, 1_700_000_000_000_000_000, (1 << 63) - 1]
        ev["seq"] = np.arange(1, 6)
        store = Store.open("chdb://{tmp_path}/db")
        store.read_path = {path!r}
        store.insert_ticks(ev, epoch=1, first_ord=0, token="ends")
        for chunk in (1, 2, 1 << 20):
            back = np.concatenate(list(store.read_ticks(chunk_rows=chunk)))
            assert back["ts_event"].tolist() == ev["ts_event"].tolist(), (chunk, back["ts_event"])
            assert back["seq"].tolist() == [1, 2, 3, 4, 5]
        print("read")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "read", out.stderr[-3000:]


def test_ties_across_instruments_follow_epoch_then_ord(tmp_path):
    """Rows of different instruments with one ts_event and seq (one exchange message) come in
    (epoch, ord) order, across two streams, whatever the chunk size."""
    store = Store.open(f"chdb://{tmp_path}/db")
    ev = random_events(6000, seed=11)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    ev["ts_event"] = 1_600_000_000_000_000_000 + (np.arange(6000) // 40) * 1000   # 40 rows share a time
    ev["seq"] = np.arange(6000) // 20                                           # and a message
    ev["instrument"] = np.arange(6000)[::-1] % 7                                # instruments interleaved
    rows = _insert_streams(store, [(ev[:3000], 9, 0), (ev[3000:], 4, 0), (ev[:500], 2, 10_000)])
    want = _stored_total_order(rows)
    for chunk in (64, 1000, 1 << 20):
        back = np.concatenate(list(store.read_ticks(chunk_rows=chunk)))
        assert back.tobytes() == want.tobytes(), chunk


@pytest.mark.parametrize("path", ["native", "arrow"])
def test_an_instant_holding_more_rows_than_a_window_may_is_read_whole_in_pages(tmp_path, path):
    """A feed without exchange times stamps a whole burst with one ts_event. An instant with
    more rows than a window may hold (WINDOW_CAP x chunk_rows) is read in pages of its own, in
    the total order: before, the window was cut at the cap and the rest of the instant was lost
    without a word (4,194,305 of 4,500,000 events replayed)."""
    store = Store.open(f"chdb://{tmp_path}/db")
    store.read_path = path
    ev = random_events(5_000, seed=23)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    t0 = 1_600_000_000_000_000_000
    ev["ts_event"] = t0 + 5                                   # 4,000 rows at one instant ...
    ev["ts_event"][:500] = t0                                # ... between two ordinary stretches
    ev["ts_event"][4500:] = t0 + 9 + np.arange(500)
    ev["seq"] = np.random.default_rng(3).integers(0, 50, len(ev))    # seq ties across instruments
    rows = _insert_streams(store, [(ev[:2500], 7, 0), (ev[2500:], 3, 100)])
    want = _stored_total_order(rows)
    for chunk in (100, 333, 1000, 1 << 20):
        chunks = list(store.read_ticks(chunk_rows=chunk))
        assert max(len(c) for c in chunks) <= chunk
        back = np.concatenate(chunks)
        assert len(back) == len(ev), (chunk, len(back))
        assert back.tobytes() == want.tobytes(), chunk
    assert store.count_ticks() == len(ev)


def test_reused_buffers_never_overwrite_a_chunk_the_caller_keeps(tmp_path):
    """The read reuses its arrays from window to window (engine/store.py, ``_Reuse``): chunks a
    caller drops are written again, chunks (or views of them) a caller keeps never are."""
    store = Store.open(f"chdb://{tmp_path}/db")
    ev = random_events(40_000, seed=21)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    ev["instrument"] %= 5
    want = _stored_total_order(_insert_streams(store, [(ev, 3, 0)]))
    copies, kept = [], []
    for i, chunk in enumerate(store.read_ticks(chunk_rows=2_000)):
        copies.append(chunk.copy())
        kept.append((i, chunk if i % 3 == 0 else chunk[5:9]))   # the chunk or a view of it
    assert len(copies) >= 15                                      # many windows: reuse happened
    assert np.concatenate(copies).tobytes() == want.tobytes()
    for i, held in kept:                                          # nothing kept was overwritten
        ref = copies[i] if i % 3 == 0 else copies[i][5:9]
        assert held.tobytes() == ref.tobytes(), i


def test_reuse_pool_hands_out_only_free_arrays_and_does_not_grow():
    from tickwire.engine.store import _Reuse

    pool = _Reuse()
    a = pool.take(1000, np.int64)
    addr = a.ctypes.data                            # not a.base: holding that would hold the array
    assert len(a) == 1000 and len(pool.arrays) == 1
    b = pool.take(1000, np.int64)                   # ``a`` still held: a new array
    assert not np.shares_memory(a, b)
    del a
    c = pool.take(900, np.int64)                    # ``a``'s array is free again: reused
    assert c.ctypes.data == addr and len(c) == 900
    assert not np.shares_memory(c, pool.take(10, np.uint8))       # another dtype never matches
    del b, c
    n_before = len(pool.arrays)
    big = pool.take(100_000, np.int64)              # larger than the free ones: one replaced
    assert len(big) == 100_000 and len(pool.arrays) == n_before


def test_native_and_arrow_reads_agree_and_windows_split_when_dense(tmp_path):
    """The embedded store's Native read and the Arrow read a server gets give the same bytes;
    a burst far denser than the first window's estimate is split (chunks stay bounded)."""
    store = Store.open(f"chdb://{tmp_path}/db")
    ev = random_events(20_000, seed=12)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    ev["ts_event"][5000:15_000] = ev["ts_event"][5000] + np.arange(10_000)    # 10,000 rows in 10 us
    ev["ts_event"] = np.sort(ev["ts_event"])
    rows = _insert_streams(store, [(ev, 1, 0)])
    want = _stored_total_order(rows)
    got = {}
    for path in ("native", "arrow"):
        store.read_path = path
        chunks = list(store.read_ticks(chunk_rows=500))
        assert max(len(c) for c in chunks) <= 500
        got[path] = np.concatenate(chunks)
    assert got["native"].tobytes() == want.tobytes()
    assert got["arrow"].tobytes() == want.tobytes()


@pytest.mark.parametrize("codecs", ["compact", "fast"])
def test_both_codec_sets_read_back_bit_for_bit(tmp_path, codecs):
    """A store made with the codecs of earlier versions ("compact": DoubleDelta/Delta + ZSTD) and
    a new one ("fast": Delta + LZ4) read back the same; the DDL says which codecs it has."""
    store = Store.open(f"chdb://{tmp_path}/{codecs}", codecs=codecs)
    ddl = store.client.query("SELECT create_table_query FROM system.tables WHERE database = 'tickwire' "
                             "AND name = 'ticks'").result_rows[0][0]
    assert ("ZSTD" in ddl) == (codecs == "compact") and ("LZ4" in ddl) == (codecs == "fast")
    ev = random_events(30_000, seed=13)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    rows = _insert_streams(store, [(ev[:20_000], 5, 0), (ev[20_000:], 6, 0)])
    back = np.concatenate(list(store.read_ticks(chunk_rows=4096)))
    assert back.tobytes() == _stored_total_order(rows).tobytes()
    store.close()
    with pytest.raises(ValueError, match="store.codecs"):
        Store.open(f"chdb://{tmp_path}/x", codecs="zip")


def test_an_existing_store_keeps_its_codecs_on_reopen(tmp_path):
    dsn = f"chdb://{tmp_path}/db"
    with Store.open(dsn, codecs="compact") as s:
        s.insert_ticks(l3_orders(100, seed=1), epoch=1, token="a")
    with Store.open(dsn) as s:                                     # default "fast": not applied
        ddl = s.client.query("SELECT create_table_query FROM system.tables WHERE database = 'tickwire' "
                             "AND name = 'ticks'").result_rows[0][0]
        assert "ZSTD" in ddl and s.count_ticks() == 100


def test_a_single_block_window_keeps_the_store_memory_alive_until_it_is_merged(tmp_path, monkeypatch):
    """A window read as one Native block is merged from the store's memory itself (no copy),
    and chDB's views of a result do not keep it alive (``memoryview.obj`` is None): what holds
    that memory must outlive the merge. Released before it, the merge read freed memory (once in
    the suite, an event read back with kind 0 in place of 2)."""
    import tickwire.ext.merge as merge

    store = Store.open(f"chdb://{tmp_path}/db")
    ev = random_events(5_000, seed=21)
    ev["flags"] &= ~np.uint32(Flag.SNAPSHOT)
    store.insert_ticks(ev, epoch=1, first_ord=0, token="1:0")
    store.read_path = "native"
    windows = list(store._read_windows("ticks", None, None, None, 1_000_000))
    assert [len(w.blocks) for w in windows] == [1]              # the whole read: one block
    assert windows[0].held and all(p.get_memview().view().obj is None for p in windows[0].held)
    alive_at_merge, real = [], merge.merge_events

    def checking_merge(*args, **kwargs):
        alive_at_merge.append(bool(windows[0].held))
        return real(*args, **kwargs)

    monkeypatch.setattr(merge, "merge_events", checking_merge)
    got = windows[0].events()
    assert alive_at_merge == [True]
    assert windows[0].held is None                               # and let go once merged
    assert got.tobytes() == total_order(ev).tobytes()


def test_opening_a_store_another_process_holds_is_one_clear_error(tmp_path):
    """Found by a newcomer: Store.open on a store a daemon's writer held failed with "Error
    initializing EmbeddedServer: . (BAD_ARGUMENTS)" and a chDB "Cannot lock file" line of its own.
    Now a StoreError naming the holder, before chDB tries; this process's own hold is none."""
    import subprocess
    import sys

    dsn = f"chdb://{tmp_path}/db"
    Store.open(dsn).close()
    holder = subprocess.Popen([sys.executable, "-c", f"from tickwire.engine.store import Store; import sys, time; "
                               f"s = Store.open({dsn!r}); print('open', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match=rf"the store {tmp_path}/db is locked by another process "
                                             rf"\(pid {holder.pid}\): chDB allows one process per data directory"):
            Store.open(dsn)
    finally:
        holder.kill()
        holder.wait()
    Store.open(dsn).close()
