"""ZeroMQ CURVE on real sockets over loopback tcp: a CURVE feed reaches the FeedHandler whole
(data sockets and the recovery DEALER); a publisher without CURVE, one with another key, or
one that does not let this client in is not heard at all; keys from `tickwire keygen`."""

import os
import stat
import threading

import numpy as np
import pytest
import zmq

from ports import free_tcp_port
from tickwire.feeds.curve import CurveClient, CurveServer, keygen, public_key
from tickwire.feeds.handler import FeedHandler
from tickwire.feeds.simulator import Faults, Simulator, channel_map, synthetic_instruments

INSTRUMENTS, CHANNELS = 4, 2

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq was built without CURVE")


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


def receive(client, publisher, **handler_kw):
    """A FeedHandler (CURVE client ``client``) on fresh loopback tcp endpoints; ``publisher(ep, snap,
    insts)`` binds there and returns (run, close, next_seq); run() goes in a thread. Returns the
    (channel, seq) pairs the handler stored and its counters, once it caught up with ``next_seq()``
    or the publisher finished without anything received."""
    ep, snap = (f"tcp://127.0.0.1:{free_tcp_port()}" for _ in range(2))
    insts = synthetic_instruments(INSTRUMENTS)
    stored = []
    with FeedHandler(ep, channel_map(insts, CHANNELS), lambda ev: None, snapshot=snap, curve=client,
                     on_store=lambda ev: stored.append(ev[["channel", "seq"]].copy()),
                     reorder_window=0.001, snapshot_timeout=0.2, **handler_kw) as h:
        h.poll(0)
        run, close, next_seq = publisher(ep, snap, insts)
        try:
            done = threading.Event()
            t = threading.Thread(target=lambda: (run(), done.set()), daemon=True)
            t.start()

            def caught_up():
                st, want = h.channel_status(), next_seq()
                return all(st[c]["next_seq"] == want[c] for c in want) and h.all_live()

            h.run(until=lambda: done.is_set() and (caught_up() or not stored), duration=30)
            t.join(10)
        finally:
            close()
        pairs = np.concatenate(stored) if stored else np.zeros(0, [("channel", "u2"), ("seq", "u8")])
        return pairs, h.counters()


def feed(server, client, events=20_000, wait=5.0, faults=None, **handler_kw):
    """Publish ``events`` with `tickwire simulate`'s Simulator (CURVE server ``server`` or plain) to
    a FeedHandler (CURVE client ``client``): what :func:`receive` returns, and the simulator."""
    sims = []

    def publisher(ep, snap, insts):
        sim = Simulator(ep, snapshot=snap, instruments=insts, channels=CHANNELS, seed=3, batch=32,
                        heartbeat=0.02, wait_subscribers=wait, curve=server, faults=faults)
        sims.append(sim)
        return (lambda: sim.run(events=events, linger=0.5)), (lambda: sim.close(0)), (lambda: sim.next_seq)

    pairs, counters = receive(client, publisher, **handler_kw)
    return pairs, counters, sims[0]


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


def test_a_plain_receiver_of_a_curve_publisher_says_it_hears_nothing(keys, caplog):
    """The CURVE handshake fails without a word from libzmq: a daemon without CURVE facing a
    CURVE publisher logged nothing at all. The handler now says once that it has heard nothing
    (not even a heartbeat), naming the endpoint and CURVE; a receiver that hears says nothing."""
    import logging

    d, allowed = keys
    server = CurveServer(d / "server.key_secret", allowed)
    with caplog.at_level(logging.WARNING, logger="tickwire.feeds"):
        pairs, counters, sim = feed(server, None, events=5_000, wait=1.5, silence_timeout=0.5)
    assert len(pairs) == 0
    said = [r.getMessage() for r in caplog.records if "nothing received from tcp://127.0.0.1:" in r.getMessage()]
    assert len(said) == 1 and "both sides CURVE or neither" in said[0], caplog.text
    caplog.clear()
    client = CurveClient.load(str(d / "server.key"), d / "client.key_secret")
    with caplog.at_level(logging.WARNING, logger="tickwire.feeds"):
        pairs, _, _ = feed(server, client, events=5_000, wait=1.5, silence_timeout=0.5)
    assert len(pairs) == 5_000 and "nothing received" not in caplog.text


def test_the_replay_publisher_and_bridge_serve_curve_too(keys):
    from tickwire.feeds.simulator import Market
    from tickwire.replay.publish import Republisher

    d, allowed = keys
    events = Market(INSTRUMENTS, seed=4, resting=50).generate(10_000)
    pubs = []

    def publisher(ep, snap, insts):
        pub = Republisher(ep, snap, insts, CHANNELS, xpub=True, flags=0,
                          curve=CurveServer(d / "server.key_secret", allowed))
        pubs.append(pub)

        def run():
            assert pub.wait_subscribers(5)
            pub.send(events)
            pub.linger(0.3)
        return run, (lambda: pub.close(0)), (lambda: {c: pub.publisher.next_seq(c) for c in range(CHANNELS)})

    pairs, counters = receive(CurveClient.load(str(d / "server.key"), d / "client.key_secret"), publisher)
    assert len(pairs) == len(np.unique(pairs)) == 10_000 and counters["lost_events"] == 0
    stranger = CurveClient.load(str(d / "server.key"), d / "stranger.key_secret")
    pubs.clear()
    events = Market(INSTRUMENTS, seed=4, resting=50).generate(1_000)

    def refused(ep, snap, insts):
        run, close, seq = publisher(ep, snap, insts)
        return (lambda: (pubs[0].send(events), pubs[0].linger(0.5))), close, seq

    pairs, counters = receive(stranger, refused)
    assert len(pairs) == 0 and counters["events"] == 0


def test_bridge_config_makes_a_curve_server(keys):
    from tickwire.engine.config import ConfigError, from_dict

    d, allowed = keys
    raw = {**BASE, "feeds": {"endpoints": ["tcp://127.0.0.1:1"], "snapshot": "tcp://127.0.0.1:2"},
           "bridge": {"exchange": "KRAKEN", "curve_secret_key_file": "keys/server.key_secret",
                      "curve_clients_dir": "clients"}}
    server = from_dict(raw, d.parent).bridge.curve()
    assert server.public == public_key(str(d / "server.key")) and server.clients_dir == allowed
    del raw["bridge"]["curve_secret_key_file"]
    with pytest.raises(ConfigError, match=r"^config error: bridge\.curve_secret_key_file: expected set too"):
        from_dict(raw, d.parent)


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


def test_keygen_does_not_write_through_a_dangling_symlink(tmp_path):
    """A dangling NAME.key_secret link was followed: the secret written where the link pointed."""
    d = tmp_path / "k"
    d.mkdir(mode=0o700)
    (d / "daemon.key_secret").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="exists: not overwritten"):
        keygen(d, "daemon")
    assert not (tmp_path / "elsewhere").exists() and not (d / "daemon.key").exists()


def test_keygen_never_writes_into_a_file_or_link_planted_between_its_check_and_its_write(tmp_path, monkeypatch):
    """Found by an adversarial pass: keygen checked that NAME.key and NAME.key_secret did not
    exist, then zmq.auth.create_certificates opened them with "w" and chmod-ed them by path:
    another user watching a shared directory could plant NAME.key_secret in between, a file of
    theirs (it received the secret) or a symlink (written through, its target made 0600). Each
    file is now created O_EXCL | O_NOFOLLOW with its mode: the planted one is left as it was and
    no half pair stays."""
    d = tmp_path / "k"
    d.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    victim.chmod(0o644)                               # (whatever umask an earlier test left)
    real = zmq.curve_keypair

    for plant in ("file", "link"):
        def planting():                               # (between the check and the write)
            target = d / "daemon.key_secret"
            if plant == "file":
                target.write_text("theirs\n")
                target.chmod(0o666)
            else:
                target.symlink_to(victim)
            return real()
        monkeypatch.setattr(zmq, "curve_keypair", planting)
        with pytest.raises(ValueError, match="daemon.key_secret exists: not overwritten"):
            keygen(d, "daemon")
        if plant == "file":
            assert (d / "daemon.key_secret").read_text() == "theirs\n"
        assert victim.read_text() == "keep me\n" and stat.S_IMODE(victim.stat().st_mode) != 0o600
        assert not (d / "daemon.key").exists()
        (d / "daemon.key_secret").unlink()
    monkeypatch.undo()


def test_keygen_refuses_a_directory_others_can_write_or_another_users(tmp_path):
    """A key directory that others can write (a /tmp-like 1777 one, or its group 0770), or
    under one its group can write, is refused with one line naming it and a private directory
    to use: whoever writes there can swap NAME.key, or plant files as keygen writes."""
    from tickwire.engine.cli import main

    shared = tmp_path / "shared"
    shared.mkdir()
    if os.geteuid() == 0:
        os.chown(shared, -1, 65534)                     # a group that holds others (nogroup)
    for mode in (0o1777, 0o770) if os.geteuid() == 0 else (0o1777,):
        shared.chmod(mode)
        with pytest.raises(ValueError, match=f"the key directory {shared} is not yours alone .*mode {mode:04o}"):
            keygen(shared, "daemon")
        assert not list(shared.iterdir())
    if os.geteuid() == 0:
        with pytest.raises(ValueError, match=f"the directory above it {shared} can be written by its group"):
            keygen(shared / "sub" / "deeper", "daemon")  # (made 0700, but its parent lets it be swapped)
        assert not list(shared.iterdir())               # the directories it made are gone again
    shared.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(shared, 65534, 65534)
        with pytest.raises(ValueError, match="owner uid 65534"):
            keygen(shared, "daemon")
        os.chown(shared, 0, 0)
    assert main(["keygen", str(shared.parent / "tmpish"), "--name", "x"]) == 0
    (shared.parent / "tmpish").chmod(0o1777)
    assert main(["keygen", str(shared.parent / "tmpish"), "--name", "y"]) == 2


def test_keygen_files_are_pyzmqs_certificates_with_their_modes_whatever_the_umask(tmp_path):
    import zmq.auth

    old = os.umask(0o077)
    try:
        pub, sec = keygen(tmp_path / "k", "pub")
    finally:
        os.umask(old)
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644 and stat.S_IMODE(sec.stat().st_mode) == 0o600
    public, secret = zmq.auth.load_certificate(sec)
    assert zmq.auth.load_certificate(pub) == (public, None)
    assert len(public) == 40 and len(secret) == 40 and zmq.curve_public(secret) == public
    text = sec.read_text()
    assert text.startswith("#   ****  Generated on ") and "ZeroMQ CURVE **Secret** Certificate" in text
    assert text.endswith(f'curve\n    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n')
    # the same layout as pyzmq's own files, line for line but for the time
    ref_pub, ref_sec = zmq.auth.create_certificates(str(tmp_path), "ref")
    for ours, ref in ((pub, ref_pub), (sec, ref_sec)):
        a, b = ours.read_text().splitlines(), open(ref).read().splitlines()
        assert len(a) == len(b) and [x[:20] for x in a[1:-2]] == [x[:20] for x in b[1:-2]], (a, b)


def test_a_secret_key_others_can_read_is_refused(tmp_path):
    pub, sec = keygen(tmp_path, "s")
    os.chmod(sec, 0o644)
    with pytest.raises(ValueError, match="0600"):
        CurveServer(sec)
    # the public key file given as the secret one: said as such first (it was told to chmod 600,
    # and only after that that it holds no secret key)
    os.chmod(pub, 0o644)
    with pytest.raises(ValueError, match="holds no secret key"):
        CurveServer(pub)


@pytest.mark.parametrize("junk", ["empty", "garbage", "directory", "dangling", "passwd", "secret_mismatch"])
def test_a_clients_directory_the_authenticator_cannot_load_whole_is_refused(keys, junk):
    """Found by an adversarial pass: one file in --curve-clients that is not a public key (empty,
    garbage, a directory, a dangling link, a link to /etc/passwd) made the authenticator load none:
    every allowed client was shut out while the publisher ran on, exit 0, one pyzmq line."""
    d, allowed = keys
    bad = allowed / "evil.key"
    if junk == "empty":
        bad.write_bytes(b"")
    elif junk == "garbage":
        bad.write_bytes(b"curve\n    public-key = \"not a key\"\n")
    elif junk == "directory":
        bad.mkdir()
    elif junk == "dangling":
        bad.symlink_to(allowed / "nowhere")
    elif junk == "passwd":
        bad.symlink_to("/etc/passwd")
    else:
        # a secret file whose public line is another key's: refused as the server's secret key
        text = (d / "server.key_secret").read_text()
        other = public_key(str(d / "stranger.key")).decode()
        mine = public_key(str(d / "server.key")).decode()
        (d / "mixed.key_secret").write_text(text.replace(mine, other))
        os.chmod(d / "mixed.key_secret", 0o600)
        with pytest.raises(ValueError, match="is not the public key of its secret key"):
            CurveServer(d / "mixed.key_secret")
        return
    with pytest.raises(ValueError, match=r"evil\.key.*the authenticator lets no client in") as err:
        CurveServer(d / "server.key_secret", allowed)
    assert "\n" not in str(err.value)


def test_a_clients_directory_others_can_write_is_refused(keys):
    """Whoever can write the clients directory (or a key in it) chooses who connects."""
    d, allowed = keys
    os.chmod(allowed, 0o777)
    with pytest.raises(ValueError, match=r"can be written by others .*mode 0777.*chmod go-w"):
        CurveServer(d / "server.key_secret", allowed)
    os.chmod(allowed, 0o755)
    os.chmod(allowed / "client.key", 0o666)
    with pytest.raises(ValueError, match=r"client\.key can be written by others"):
        CurveServer(d / "server.key_secret", allowed)
    os.chmod(allowed / "client.key", 0o644)
    CurveServer(d / "server.key_secret", allowed)          # as it was: taken
    if os.geteuid() == 0:                                   # a key another user owns: chown is the advice
        os.chown(allowed / "client.key", 65534, 65534)
        with pytest.raises(ValueError, match=r"client\.key is owned by another user \(uid 65534\)"):
            CurveServer(d / "server.key_secret", allowed)
        os.chown(allowed / "client.key", 0, 0)
    # a directory whose name the authenticator reads as a pattern ([1]): it would load no key
    odd = allowed.parent / "clients[1]"
    allowed.rename(odd)
    with pytest.raises(ValueError, match="holds no client public key"):
        CurveServer(d / "server.key_secret", odd)

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
    os.chmod(secret, 0o600)
    # the publisher's key file says whom to trust: one others can write was taken without a word
    os.chmod(server, 0o666)
    msg = config_error({"curve_server_key": server, "curve_secret_key_file": secret}, d)
    assert msg.startswith("config error: feeds.curve_server_key:") and "can be written by others" in msg, msg
    os.chmod(server, 0o644)
    if os.geteuid() == 0:
        os.chown(server, 65534, 65534)
        msg = config_error({"curve_server_key": server, "curve_secret_key_file": secret}, d)
        assert "owned by another user (uid 65534)" in msg, msg
        os.chown(server, 0, 0)


def garble(path, key, value):
    """``path`` with the line of ``key`` set to ``value`` (a key file edited by hand, or damaged)."""
    lines = [f'    {key} = "{value}"' if line.strip().startswith(f"{key} =") else line
             for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("which, key, value", [
    ("server.key", "public-key", "abcde"),
    ("server.key", "public-key", "0" * 40),                        # all zero: not a key anyone holds
    ("client.key_secret", "secret-key", "abc"),
    ("client.key_secret", "public-key", "abcde"),
])
def test_a_key_file_whose_key_is_not_a_curve_key_is_a_config_error(keys, which, key, value):
    """Passed the config check before: then every worker died (a ValueError reading the key text
    as a file name, or ZMQError EINVAL at setsockopt) and the daemon gave up after five."""
    d, _ = keys
    garble(d / which, key, value)
    option = "curve_server_key" if which == "server.key" else "curve_secret_key_file"
    msg = config_error({"curve_server_key": str(d / "server.key"),
                        "curve_secret_key_file": str(d / "client.key_secret")}, d)
    assert msg.startswith(f"config error: feeds.{option}:") and f"its {key} is not a CURVE key" in msg, msg


def test_a_daemon_over_curve_stores_every_event_and_its_status_says_so(tmp_path, keys):
    """The config path end to end: `tickwire run` with feeds.curve_* over tcp, fed by
    `tickwire simulate --curve-secret-key --curve-clients`; every event stored once. Midway the
    daemon's key file is replaced by another certificate (made group-readable too) and the
    publisher's key file by another's, and its worker killed: the keys are the ones read at the
    start (a restarted worker read the file again, was refused by the
    publisher and stored nothing more, unsaid: an adversarial pass)."""
    import shutil
    import signal

    from test_daemon import (published_and_live, start_daemon, start_sim, status, stop_daemon, stored_ticks, wait_for,
                             write_config)

    from tickwire.engine.config import to_toml

    d, allowed = keys
    cfg_path, raw = write_config(tmp_path, "curve", instruments=4, channels=2)
    raw["feeds"].update(endpoints=[f"tcp://127.0.0.1:{free_tcp_port()}"], snapshot=f"tcp://127.0.0.1:{free_tcp_port()}",
                        curve_server_key=str(d / "server.key"), curve_secret_key_file=str(d / "client.key_secret"))
    cfg_path.write_text(to_toml(raw))
    run_dir = tmp_path / "state" / "curve"
    daemon, log = start_daemon(cfg_path, tmp_path)
    try:
        assert wait_for(lambda: status(run_dir)["pid"]), (tmp_path / "daemon.log").read_text()[-2000:]
        sim = start_sim(raw, 60_000, 20_000, "--curve-secret-key", str(d / "server.key_secret"),
                        "--curve-clients", str(allowed))
        assert wait_for(lambda: status(run_dir)["feed"]["events"] >= 15_000, 60)
        shutil.copyfile(d / "stranger.key_secret", d / "client.key_secret")     # (still 0600)
        shutil.copyfile(d / "impostor.key", d / "server.key")                   # and another publisher's key
        os.chmod(d / "client.key_secret", 0o640)                                # (a check would refuse it now)
        pid = status(run_dir)["pid"]
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: status(run_dir)["pid"] not in (0, pid), 60)
        published_and_live(sim, run_dir)
    finally:
        rc, _ = stop_daemon(daemon, log)
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    assert stored_ticks(tmp_path) == (60_000, 60_000)


def test_a_tcp_feed_off_this_host_without_curve_is_warned_about():
    from tickwire.engine.supervisor import plain_tcp_warnings

    eps = ["tcp://10.1.2.3:5555", "tcp://feed.example.com:5556", "tcp://127.0.0.1:5555", "tcp://localhost:1",
           "tcp://[::1]:2", "ipc:///x/feed"]
    got = plain_tcp_warnings(eps, curve=False)
    assert len(got) == 2 and "tcp://10.1.2.3:5555" in got[0] and "feed.example.com" in got[1]
    assert all("without CURVE" in w and "feeds.curve_server_key" in w for w in got)
    assert plain_tcp_warnings(eps, curve=True) == []


def test_a_fifo_given_as_a_public_key_file_is_refused_not_waited_on(tmp_path):
    """Found by an adversarial pass: a FIFO as feeds.curve_server_key, or as a *.key in
    --curve-clients, hung `tickwire run` / `simulate` at start with no output (the file was
    opened and read with no check of what it is)."""
    import threading

    from tickwire.feeds.curve import _check_clients

    fifo = tmp_path / "server.key"
    os.mkfifo(fifo)
    results = []

    def call(f, arg):
        try:
            f(arg)
        except ValueError as exc:
            results.append(str(exc))

    for f, arg in ((public_key, str(fifo)), (_check_clients, tmp_path)):
        t = threading.Thread(target=call, args=(f, arg), daemon=True)
        t.start()
        t.join(10)
        if t.is_alive():                       # (let the blocked open go: a writer end, then nothing)
            with open(fifo, "w"):
                pass
            pytest.fail(f"{f.__name__} waited on a FIFO")
    assert len(results) == 2 and all("not a regular file" in r for r in results), results
