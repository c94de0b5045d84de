"""Where the feed's ZeroMQ I/O thread runs and how it is scheduled, and busy-poll receiving."""

import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
import zmq

from tickwire.feeds import iothread
from tickwire.feeds.iothread import io_context, realtime_permitted

PROBE = r"""
import json, os, sys, zmq
from tickwire.feeds.iothread import io_context, io_thread_policies
cpus, prio = json.loads(sys.argv[1])
ctx, realtime = io_context(cpus, prio)
s = ctx.socket(zmq.PULL)                  # the first socket starts the I/O thread
s.bind("tcp://127.0.0.1:*")
import time
end = time.monotonic() + 10
while not (threads := io_thread_policies()) and time.monotonic() < end:
    time.sleep(0.01)                      # the thread names itself once it runs
print(json.dumps({"realtime": realtime,
                  "threads": {t: [p, sorted(os.sched_getaffinity(t))] for t, p in threads.items()}}))
s.close(0)
ctx.term()
"""


def probe(cpus, prio):
    """io_context in a fresh process (the only ZeroMQ context there): its I/O threads'
    scheduling policy and affinity."""
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps([cpus, prio])], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_io_thread_is_pinned_where_asked():
    last = os.cpu_count() - 1
    got = probe([last], 0)
    assert got["threads"], "no ZMQbg/IO thread found"
    for policy, affinity in got["threads"].values():
        assert affinity == [last]
        assert policy == os.SCHED_OTHER
    assert got["realtime"] is False


def test_io_thread_runs_under_sched_fifo_where_permitted():
    got = probe([0], 10)
    policies = {p for p, _ in got["threads"].values()}
    if realtime_permitted(10):
        assert got["realtime"] is True and policies == {os.SCHED_FIFO}
    else:                                  # e.g. an unprivileged user: normal scheduling, no abort
        assert got["realtime"] is False and policies == {os.SCHED_OTHER}


def test_refused_sched_fifo_warns_and_keeps_a_working_context(monkeypatch, caplog):
    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(iothread.os, "sched_setscheduler", refuse)
    assert realtime_permitted(10) is False
    with caplog.at_level(logging.WARNING, logger="tickwire.feeds.iothread"):
        ctx, realtime = io_context((), 10)
    try:
        assert realtime is False
        assert "SCHED_FIFO priority 10" in caplog.text and "normal scheduling" in caplog.text
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)   # the thread starts and works
        a.bind("inproc://x")
        b.connect("inproc://x")
        a.send(b"hi")
        assert b.recv() == b"hi"
        a.close(0)
        b.close(0)
    finally:
        ctx.term()


@pytest.mark.parametrize("kw, fragment", [
    ({"rt_priority": 100}, "SCHED_FIFO priority is 1..99"),
    ({"rt_priority": -1}, "SCHED_FIFO priority is 1..99"),
    ({"cpus": [4096]}, "core 4096 does not exist"),
])
def test_bad_arguments_name_what_was_wrong(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        io_context(**kw)


def test_feed_handler_refuses_io_options_with_a_context_of_yours(tmp_path):
    from tickwire.feeds.handler import FeedHandler

    ctx = zmq.Context()
    try:
        with pytest.raises(ValueError, match="own context"):
            FeedHandler(f"ipc://{tmp_path}/d", [0], lambda ev: None, context=ctx, io_cpus=[0])
    finally:
        ctx.term()


@pytest.mark.alone
def test_busy_poll_receives_as_soon_as_a_message_arrives_and_times_out_when_idle(tmp_path):
    from test_feed_handler import Harness

    hs = Harness(tmp_path, busy_poll=True)
    try:
        assert hs.h.receiver.spin is True
        hs.join()
        for _ in range(20):
            hs.publish(0)
            hs.publish(1)
        hs.pump(hs.caught_up)
        hs.assert_equal()
        # straight at the receive loop (the handler's poll also wakes for its timers)
        rx, buf = hs.h.receiver, hs.h._buf
        waits = rx.counters["waits"]
        t0 = time.monotonic()
        assert rx.drain(buf, 0.05) == 0            # nothing sent: the busy poll gives up at the timeout
        assert time.monotonic() - t0 >= 0.045
        assert rx.counters["waits"] == waits + 1
        # spinning is what it says: the wait keeps this thread on the CPU; a blocking one does not
        busy = time.thread_time()
        rx.drain(buf, 0.2)
        busy = time.thread_time() - busy
        rx.spin = False
        idle = time.thread_time()
        rx.drain(buf, 0.2)
        idle = time.thread_time() - idle
        rx.spin = True
        assert busy > 0.05 > idle
        # a message sent while the drain spins ends the wait, long before its 5 s timeout
        msg = hs.make(0, 10)
        timer = threading.Timer(0.05, hs.pub.send_multipart, (msg,))
        timer.start()
        t0 = time.monotonic()
        got = rx.drain(buf, 5.0)
        timer.join()
        assert got == 10 and time.monotonic() - t0 < 4.0
        hs.on_batch(buf[:got])
        hs.pump(hs.caught_up)
        hs.assert_equal()
    finally:
        hs.close()
