"""ZeroMQ CURVE on real sockets over loopback tcp: a CURVE feed reaches the FeedHandler whole
(data sockets and the recovery DEALER); a publisher without CURVE, one with another key, or
one that does not let this client in is not heard at all; keys from `tickwire keygen`."""

import os
import socket
import stat
import threading
import time

import numpy as np
import pytest
import zmq

from tickwire.feeds.curve import CurveClient, CurveServer, keygen, public_key
from tickwire.feeds.handler import FeedHandler
from tickwire.feeds.simulator import Faults, Simulator, channel_map, synthetic_instruments

INSTRUMENTS, CHANNELS = 4, 2

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq was built without CURVE")


def free_tcp_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def keys(tmp_path):
    """server, client (allowed), stranger (not allowed), and the allowed clients' directory."""
    d = tmp_path / "keys"
    for name in ("server", "client", "stranger", "impostor"):
        keygen(d, name)
    allowed = tmp_path / "clients"
    allowed.mkdir()
    (allowed / "client.key").write_bytes((d / "client.key").read_bytes())
    return d, allowed


def feed(server, client, events=20_000, wait=5.0, faults=None):
    """Publish ``events`` over tcp (CURVE server ``server`` or plain) to a FeedHandler (CURVE
    client ``client``); returns the (channel, seq) pairs it stored, its counters, the publisher."""
    ep, snap = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(2))
    insts = synthetic_instruments(INSTRUMENTS)
    stored = []
    with FeedHandler(ep, channel_map(insts, CHANNELS), lambda ev: None, snapshot=snap, curve=client,
                     on_store=lambda ev: stored.append(ev[["channel", "seq"]].copy()),
                     reorder_window=0.001, snapshot_timeout=0.2) as h:
        h.poll(0)
        sim = Simulator(ep, snapshot=snap, instruments=insts, channels=CHANNELS, seed=3, batch=32,
                        heartbeat=0.02, wait_subscribers=wait, curve=server, faults=faults)
        try:
            done = threading.Event()
            t = threading.Thread(target=lambda: (sim.run(events=events, linger=0.5), done.set()), daemon=True)
            t.start()

            def caught_up():
                st = h.channel_status()
                return all(st[c]["next_seq"] == sim.next_seq[c] for c in sim.channels) and h.all_live()

            h.run(until=lambda: done.is_set() and (caught_up() or not stored), duration=30)
            t.join(10)
        finally:
            sim.close(0)
        pairs = np.concatenate(stored) if stored else np.zeros(0, [("channel", "u2"), ("seq", "u8")])
        return pairs, h.counters(), sim


def test_a_curve_feed_arrives_whole_with_the_recovery_service_over_curve_too(keys):
    d, allowed = keys
    server = CurveServer(d / "server.key_secret", allowed)
    client = CurveClient.load(str(d / "server.key"), d / "client.key_secret")
    # dropped messages: the holes are filled by retransmission over the CURVE DEALER -> ROUTER
    pairs, counters, sim = feed(server, client, faults=Faults(drop=0.02, seed=5))
    assert sim.stats["dropped"] > 0 and sim.stats["retransmissions"] > 0
    assert len(pairs) == 20_000
    assert len(np.unique(pairs)) == 20_000
    assert counters["lost_events"] == 0
    for c in sim.channels:
        got = np.sort(pairs["seq"][pairs["channel"] == c])
        assert got.tolist() == list(range(1, sim.next_seq[c]))


@pytest.mark.parametrize("case", ["plain publisher", "wrong server key", "client not allowed",
                                  "plain receiver"])
def test_an_unauthenticated_peer_is_not_heard(keys, case):
    d, allowed = keys
    server = CurveServer(d / "server.key_secret", allowed)
    client = CurveClient.load(str(d / "server.key"), d / "client.key_secret")
    if case == "plain publisher":
        server = None
    elif case == "wrong server key":                 # a publisher with another certificate
        server = CurveServer(d / "impostor.key_secret")
    elif case == "client not allowed":
        client = CurveClient.load(str(d / "server.key"), d / "stranger.key_secret")
    else:
        client = None
    pairs, counters, sim = feed(server, client, events=5_000, wait=1.0)
    assert sim.stats["events"] == 5_000                # published, into sockets nobody was let into
    assert len(pairs) == 0
    assert counters["events"] == 0 and counters["snapshot_events"] == 0


def test_keygen_writes_a_private_secret_and_a_public_key(tmp_path, capsys):
    from tickwire.engine.cli import main

    assert main(["keygen", str(tmp_path / "k"), "--name", "daemon"]) == 0
    pub, sec = tmp_path / "k" / "daemon.key", tmp_path / "k" / "daemon.key_secret"
    assert stat.S_IMODE(os.stat(sec).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700
    assert "secret-key" not in pub.read_text()
    assert public_key(str(pub)) == public_key(str(sec))
    out = capsys.readouterr().out
    assert str(pub) in out and str(sec) in out
    # never overwritten
    assert main(["keygen", str(tmp_path / "k"), "--name", "daemon"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists" in err


def test_a_secret_key_others_can_read_is_refused(tmp_path):
    _, sec = keygen(tmp_path, "s")
    os.chmod(sec, 0o644)
    with pytest.raises(ValueError, match="0600"):
        CurveServer(sec)


BASE = {"instruments": [{"id": 0, "symbol": "A", "tick_size": "0.01", "lot_size": "1"}]}


def config_error(feeds, base_dir):
    from tickwire.engine.config import ConfigError, from_dict

    with pytest.raises(ConfigError) as err:
        from_dict({**BASE, "feeds": {"endpoints": ["tcp://127.0.0.1:1"], **feeds}}, base_dir)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("config error: feeds.curve_")
    return msg


def test_config_takes_the_keys_as_files_or_text_and_builds_the_client(keys):
    from tickwire.engine.config import from_dict

    d, _ = keys
    raw = {**BASE, "feeds": {"endpoints": ["tcp://127.0.0.1:1"], "curve_server_key": "keys/server.key",
                             "curve_secret_key_file": "keys/client.key_secret"}}
    f = from_dict(raw, d.parent).feeds                      # relative paths: against the config's directory
    assert f.curve_server_key == public_key(str(d / "server.key")).decode()
    assert f.curve().public == public_key(str(d / "client.key"))
    raw["feeds"]["curve_server_key"] = f.curve_server_key   # the Z85 text itself
    assert from_dict(raw, d.parent).feeds.curve() == f.curve()
    assert from_dict(BASE).feeds.curve() is None


def test_config_errors_name_the_key(keys):
    d, _ = keys
    server, secret = str(d / "server.key"), str(d / "client.key_secret")
    msg = config_error({"curve_server_key": server}, d)
    assert msg.startswith("config error: feeds.curve_secret_key_file: expected set too")
    msg = config_error({"curve_secret_key_file": secret}, d)
    assert msg.startswith("config error: feeds.curve_server_key: expected set too")
    assert "feeds.curve_server_key:" in config_error({"curve_server_key": str(d / "nope.key"),
                                                      "curve_secret_key_file": secret}, d)
    assert "feeds.curve_secret_key_file:" in config_error({"curve_server_key": server,
                                                           "curve_secret_key_file": server}, d)   # no secret in it
    os.chmod(secret, 0o644)                                 # world-readable: anyone could pose as the daemon
    msg = config_error({"curve_server_key": server, "curve_secret_key_file": secret}, d)
    assert msg.startswith("config error: feeds.curve_secret_key_file:") and "0600" in msg and "0644" in msg
