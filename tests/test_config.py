"""Config validation: every error is one line naming the key and what was expected."""

import os

import pytest

from tickwire.engine.config import EXAMPLE_PATH, ConfigError, from_dict, load

BASE = {
    "instruments": [{"id": 0, "symbol": "A", "tick_size": "0.01", "lot_size": "1"},
                    {"id": 1, "symbol": "B", "tick_size": "0.5", "lot_size": "0.001", "book": "L3"}],
}


def cfg(**over):
    d = {k: v for k, v in BASE.items()}
    d.update(over)
    return d


def error_of(raw):
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("config error: ")
    return msg


def test_example_config_loads():
    c = load(EXAMPLE_PATH)
    assert [i.symbol for i in c.instruments] == ["SYN0", "SYN1"]
    assert c.workers[0].instruments == (0, 1) and c.rules[0].kind == "zscore"
    assert c.store.dsn.startswith("chdb:///") and c.metrics.host == "127.0.0.1"


def test_defaults_fill_in():
    c = from_dict(cfg())
    assert c.workers[0].instruments == (0, 1)
    assert c.instruments[1].tick_size == c.instruments[1].tick_size.__class__("0.5")
    assert c.stats.window == "count" and c.clock == "wall"
    assert c.store.writer_sched == "idle" and c.store.writer_nice == 0
    # the feed's I/O thread goes to the housekeeping core, on normal scheduling; waits block
    assert c.feeds.io_cpu == c.supervisor_cpu == 0 and c.feeds.io_rt_priority == 0
    assert c.feeds.busy_poll is False
    c = from_dict(cfg(daemon={"supervisor_cpu": os.cpu_count() - 1}, feeds={"busy_poll": True, "io_rt_priority": 10}))
    assert c.feeds.io_cpu == os.cpu_count() - 1 and c.feeds.io_rt_priority == 10 and c.feeds.busy_poll


@pytest.mark.parametrize("raw, fragment", [
    ({}, "instruments: expected a non-empty array of tables"),
    (cfg(instruments=[{"id": 0, "tick_size": "0.01", "lot_size": "1"}]), "instruments[0].symbol: expected a string (required)"),
    (cfg(instruments=[{"id": "zero", "symbol": "A", "tick_size": "0.01", "lot_size": "1"}]), "instruments[0].id: expected an integer"),
    (cfg(instruments=[{"id": 0, "symbol": "A", "tick_size": "-1", "lot_size": "1"}]), "instruments[0].tick_size: expected a positive decimal"),
    (cfg(instruments=[{"id": 0, "symbol": "A", "tick_size": "0.01", "lot_size": "1", "book": "L4"}]), "instruments[0].book: expected one of ['L2', 'L3']"),
    (cfg(workers=[{"cpu": 0, "instruments": [0, 7]}]), "workers[0].instruments: expected ids of configured instruments ([0, 1]), got 7"),
    (cfg(workers=[{"cpu": 0, "instruments": [0]}, {"cpu": 0, "instruments": [1]}]), "workers[1].cpu: expected a core no other worker uses (workers[0] is on core 0), got 0"),
    (cfg(workers=[{"cpu": 0, "instruments": [0]}, {"cpu": 1, "instruments": [0, 1]}]), "workers[1].instruments: expected instruments not already on workers[0], got 0"),
    (cfg(workers=[{"cpu": "one"}]), "workers[0].cpu: expected an integer in 0.."),
    (cfg(rules=[{"kind": "momentum", "enter": 1}]), "rules[0].kind: expected one of"),
    (cfg(rules=[{"kind": "zscore"}]), "rules[0].enter: expected a number (required)"),
    (cfg(rules=[{"kind": "zscore", "enter": 1, "exit": 3}]), "rules[0]: rule zscore: exit must satisfy"),
    (cfg(rules=[{"kind": "zscore", "enter": 1, "instruments": [9]}]), "rules[0].instruments: expected an array of configured instrument ids"),
    (cfg(stats={"window": "ticks"}), "stats.window: expected 'count' or 'time', got 'ticks'"),
    (cfg(stats={"windw": "count"}), "stats.windw: expected one of the known keys"),
    (cfg(feeds={"endpoints": ["udp://x"]}), "feeds.endpoints: expected an array of ZeroMQ endpoints"),
    (cfg(feeds={"io_cpu": 4096}), "feeds.io_cpu: expected an integer in 0.."),
    (cfg(feeds={"io_rt_priority": 100}), "feeds.io_rt_priority: expected an integer in 0..99, got 100"),
    (cfg(feeds={"busy_poll": "yes"}), "feeds.busy_poll: expected"),
    (cfg(store={"dsn": "mysql://x"}), "store.dsn: expected chdb:///absolute/dir or http(s)://host:port"),
    (cfg(store={"writer_sched": "fifo"}), "store.writer_sched: expected one of ['idle', 'normal'], got 'fifo'"),
    (cfg(metrics={"port": 99999}), "metrics.port: expected an integer in 0..65535, got 99999"),
    (cfg(engine={"clock": "gps"}), "engine.clock: expected one of ['wall', 'event'], got 'gps'"),
    (cfg(bogus=1), "bogus: expected one of the known keys"),
    # issue 14: accepted before, failing (or silently wrong) later
    (cfg(instruments=[{"id": 0, "symbol": "A", "tick_size": "1", "lot_size": "1", "min_price": 10, "max_price": 5}]),
     "instruments[0].min_price: expected at most instruments[0].max_price (5), got 10"),
    (cfg(stats={"window_size": 2 ** 40}), "stats.window_size: expected at most 16777216 samples"),
    (cfg(stats={"trade_window_size": 2 ** 25}), "stats.trade_window_size: expected at most 16777216 samples"),
    (cfg(stats={"window": "time", "window_size": 2 ** 63}), "stats.window_size: expected an integer below 2**62"),
    (cfg(stats={"max_capacity": 2 ** 30}), "stats.max_capacity: expected at most 16777216 samples"),
    (cfg(stats={"imbalance_depth": 2 ** 31}), "stats.imbalance_depth: expected at most 1048576"),
    (cfg(rules=[{"kind": "zscore", "enter": float("inf")}]), "rules[0].enter: expected a finite positive number, got inf"),
    (cfg(rules=[{"kind": "zscore", "enter": float("nan")}]), "rules[0].enter: expected a finite positive number, got nan"),
    (cfg(rules=[{"kind": "zscore", "enter": 2, "exit": float("nan")}]), "rules[0].exit: expected a finite number"),
    (cfg(workers=[{"cpu": 0, "instruments": [1]}]), "workers: expected every configured instrument on a worker"),
    (cfg(rings={"ticks_capacity": 2 ** 33}), "rings.ticks_capacity: expected an integer in 1024..4294967296, got 8589934592"),
    (cfg(rings={"signals_capacity": 3000}), "rings.signals_capacity: expected a power of two (records), got 3000"),
    (cfg(daemon={"run": "a/b"}), "daemon.run: expected 1 to 64 letters, digits, '_', '.' or '-'"),
    (cfg(daemon={"run": ".."}), "daemon.run: expected 1 to 64 letters"),
    (cfg(rings={"prefix": "tick/wire"}), "rings.prefix: expected 1 to 64 letters"),
    (cfg(daemon={"state_dir": "/proc/tickwire"}), "daemon.state_dir: expected a directory on a real file system"),
])
def test_errors_name_the_key(raw, fragment):
    assert fragment in error_of(raw)


def test_credentials_are_not_echoed():
    raw = cfg(store={"dsn": "mysql://user:s3cret@h", "password": "s3cret"})
    assert "s3cret" not in error_of(raw)
    c = from_dict(cfg(store={"dsn": "http://db:8123", "password": "hunter2"}))
    assert "hunter2" not in repr(c)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("instruments = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
    rel = tmp_path / "rel.toml"
    rel.write_text('[daemon]\nstate_dir = "data"\n[[instruments]]\nid = 0\nsymbol = "A"\ntick_size = "1"\nlot_size = "1"\n')
    assert load(rel).state_dir == tmp_path / "data"


def test_workers_must_own_whole_channels():
    raw = cfg(instruments=[{"id": i, "symbol": f"S{i}", "tick_size": "0.01", "lot_size": "1"} for i in range(4)],
              feeds={"channels": 2}, workers=[{"cpu": 1, "instruments": [0, 1]}, {"cpu": 0, "instruments": [2, 3]}],
              daemon={"supervisor_cpu": 0})
    msg = error_of(raw)
    assert "whole feed channels: instrument 2 is on channel 0" in msg
    raw["workers"] = [{"cpu": 1, "instruments": [0, 2]}, {"cpu": 0, "instruments": [1, 3]}]
    assert [w.instruments for w in from_dict(raw).workers] == [(0, 2), (1, 3)]
    assert from_dict(cfg()).feeds.channels == 2             # default: one channel per instrument id


def test_log_and_hdr_paths_resolve_against_the_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[daemon]\nlog_file = "logs/tw.log"\n[metrics]\nhdr_dir = "hdr"\n'
                 '[[instruments]]\nid = 0\nsymbol = "A"\ntick_size = "1"\nlot_size = "1"\n')
    c = load(p)
    assert c.log_file == str(tmp_path / "logs/tw.log") and c.metrics.hdr_dir == str(tmp_path / "hdr")


def test_config_path_that_is_a_directory_or_binary(tmp_path):
    with pytest.raises(ConfigError, match="expected a TOML file, got a directory"):
        load(tmp_path)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\x00\xff\xfe\x89PNG")
    with pytest.raises(ConfigError, match="expected a UTF-8 TOML text file"):
        load(binary)


def test_state_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("")
    assert "daemon.state_dir: expected a directory" in error_of(cfg(daemon={"state_dir": str(f)}))


def test_restart_keys_name_what_a_reload_cannot_apply():
    from tickwire.engine.config import restart_keys

    old = from_dict(cfg(rules=[{"kind": "zscore", "enter": 3, "exit": 1}]))
    new = from_dict(cfg(rules=[{"kind": "zscore", "enter": 4, "exit": 2, "min_count": 7}],
                        rings={"ticks_capacity": 1 << 21}, daemon={"log_level": "debug"}))
    assert sorted(restart_keys(old, new)) == ["daemon.log_level", "rings.ticks_capacity", "rules[0].min_count"]
    assert restart_keys(old, from_dict(cfg(rules=[{"kind": "zscore", "enter": 5, "exit": 0}]))) == []
