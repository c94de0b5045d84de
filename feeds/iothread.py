"""Where ZeroMQ's I/O thread runs, and with what scheduling.

libzmq moves every message through a background I/O thread (``ZMQbg/IO/0``) that wakes for each
one. On the engine's dedicated core it preempts the engine in mid-batch; on a shared core it
waits behind whatever else runs there. :func:`io_context` makes a context whose I/O thread is
pinned to given cores and, where the process may, runs under ``SCHED_FIFO``, so that other work on
the shared core (the storage writer) delays it no more than an interrupt would.

libzmq applies the scheduling options when the thread starts and aborts the process if the
kernel refuses them, so permission is checked here first (:func:`realtime_permitted`).
"""

from __future__ import annotations

import logging
import os

import zmq

log = logging.getLogger(__name__)


def realtime_permitted(priority: int) -> bool:
    """Whether this process may run a thread under SCHED_FIFO at ``priority``: tried on the
    calling thread, which then gets its own policy back."""
    if not hasattr(os, "SCHED_FIFO"):
        return False
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError:
        return False
    os.sched_setscheduler(0, policy, param)
    return True


def check_priority(priority: int) -> int:
    """``priority`` if it is 0 (off) or a valid SCHED_FIFO priority, else ValueError."""
    priority = int(priority)
    if priority == 0:
        return 0
    hi = os.sched_get_priority_max(os.SCHED_FIFO) if hasattr(os, "SCHED_FIFO") else 99
    if not 1 <= priority <= hi:
        raise ValueError(f"a SCHED_FIFO priority is 1..{hi} (0: normal scheduling), got {priority}")
    return priority


def io_context(cpus=(), rt_priority: int = 0) -> tuple[zmq.Context, bool]:
    """A new context whose I/O thread will run on ``cpus`` (empty: anywhere) and under
    SCHED_FIFO at ``rt_priority`` (0: normal scheduling). Returns ``(context, realtime)``;
    ``realtime`` is False when SCHED_FIFO was asked for but not permitted (logged once), in
    which case the thread keeps normal scheduling. Set before any socket exists: the thread
    starts with the first socket."""
    rt_priority = check_priority(rt_priority)
    ncpu = os.cpu_count() or 1
    cpus = [int(c) for c in cpus]
    for c in cpus:
        if not 0 <= c < ncpu:
            raise ValueError(f"core {c} does not exist (this machine has {ncpu}: 0..{ncpu - 1})")
    ctx = zmq.Context()
    for c in cpus:
        ctx.set(zmq.THREAD_AFFINITY_CPU_ADD, c)
    realtime = False
    if rt_priority:
        if realtime_permitted(rt_priority):
            ctx.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
            ctx.set(zmq.THREAD_PRIORITY, rt_priority)
            realtime = True
        else:
            log.warning("SCHED_FIFO priority %d for the ZeroMQ I/O thread is not permitted here "
                        "(needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least %d): it keeps normal "
                        "scheduling", rt_priority, rt_priority)
    return ctx, realtime


def io_thread_policies() -> dict[int, int]:
    """``{thread id: scheduling policy}`` of this process's ZeroMQ I/O threads (Linux)."""
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                if fh.read().startswith("ZMQbg/IO"):
                    out[int(tid)] = os.sched_getscheduler(int(tid))
        except OSError:
            continue
    return out
