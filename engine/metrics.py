"""The daemon's Prometheus metrics (docs/monitoring.md lists each one).

The supervisor serves them (``metrics.host:port``, localhost by default) from what the workers
and the writer already write: each worker's status file (``worker-<i>.json``, written every
0.5 s by its housekeeping thread) and the writer's (``writer/<ring>/status.json``,
``writer/signals.json``). Nothing is computed on an engine's loop: the latency histograms
below are filled from the worker's HDR recorders on its housekeeping thread.

Conventions (https://prometheus.io/docs/practices/naming/): counters end in ``_total``, units
are in the names (``_seconds``, ``_bytes``, ``_ratio``); every counter that can be known at the
start is present from it (0), labelled by reason or rule where it has them, so ``rate()`` and
``increase()`` see the first occurrence; latency is a real histogram
(``tickwire_latency_seconds_bucket{le=...}``, ``_sum``, ``_count`` per worker and stage),
cumulative since the worker started, so ``histogram_quantile(0.99, rate(...[5m]))`` gives the
p99 of the last five minutes.
"""

from __future__ import annotations

import json
import time

import numpy as np

__all__ = ["LATENCY_BOUNDS_NS", "latency_histogram", "Collector", "histogram_quantile", "serve"]

#: Upper bounds (``le``) of the latency histograms, ns: 25 ns to 10 s in 1-2.5-5 steps.
LATENCY_BOUNDS_NS = tuple(int(m * 10 ** e) for e in range(1, 10) for m in (2.5, 5, 10))

_SLOT_VALUE = None          # per HDR counts slot: the value it stands for in sums (hdrh's median equivalent)
_BOUND_SLOT = None          # per bound: the counts slot holding it


def _tables():
    global _SLOT_VALUE, _BOUND_SLOT
    if _SLOT_VALUE is None:
        from tickwire.ext.hdr import COUNTS_LEN, Recorder

        i = np.arange(COUNTS_LEN, dtype=np.int64)
        b = (i >> 10) - 1
        sub = (i & 1023) + 1024
        first = b < 0
        sub[first] -= 1024
        b[first] = 0
        lowest = sub << b
        _SLOT_VALUE = (lowest + ((1 << b) >> 1)).astype(np.float64)
        _BOUND_SLOT = np.array([Recorder.index_of(v) for v in LATENCY_BOUNDS_NS], dtype=np.int64)
    return _SLOT_VALUE, _BOUND_SLOT


def latency_histogram(recorder) -> dict:
    """A since-start HDR recorder as a Prometheus histogram: ``{"buckets": [cumulative count at
    each of LATENCY_BOUNDS_NS], "count", "sum_ns"}``. A value counts under a bound when its
    HDR slot is the bound's or below (HDR keeps 3 significant digits: a value up to 0.1% above
    a bound may count under it); the sum is hdrh's (each value taken as its slot's middle).
    Every figure only grows while the recorder does (Prometheus counter semantics)."""
    slot_value, bound_slot = _tables()
    counts = recorder.counts()
    cum = np.cumsum(counts)
    return {"buckets": cum[bound_slot].tolist(), "count": int(cum[-1]),
            "sum_ns": float(counts.astype(np.float64) @ slot_value)}


def histogram_quantile(q: float, bounds, cumulative) -> float:
    """Prometheus's ``histogram_quantile`` on one histogram: linear within the bucket that holds
    rank ``q * count`` (``bounds`` ascending, the last may be inf); NaN when empty."""
    if not cumulative or cumulative[-1] <= 0:
        return float("nan")
    rank = q * cumulative[-1]
    lo_b, lo_c = 0.0, 0.0
    for b, c in zip(bounds, cumulative):
        if c >= rank:
            if b == float("inf"):
                return lo_b
            return lo_b + (b - lo_b) * ((rank - lo_c) / (c - lo_c) if c > lo_c else 1.0)
        lo_b, lo_c = b, c
    return lo_b


def _read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Collector:
    """The metrics, read from the status files at each scrape (registered by the supervisor)."""

    def __init__(self, sup):
        self.sup = sup

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from tickwire.ext import Reject
        from tickwire.feeds.wire import Drop

        sup = self.sup
        now = time.time()
        W = ["worker"]

        def counters(specs, labels):
            return {k: CounterMetricFamily(f"tickwire_{name}", help_, labels=labels) for k, name, help_ in specs}

        def gauges(specs, labels):
            return {k: GaugeMetricFamily(f"tickwire_{name}", help_, labels=labels) for k, name, help_ in specs}

        c = counters((
            ("events", "events", "market events the engine processed (markers and snapshot events apart)"),
            ("markers", "markers", "SNAPSHOT markers the feed handler made (a channel's book STALE, or back in sync)"),
            ("snapshot_events", "snapshot_events", "events of the snapshots the books were repaired with"),
            ("messages", "feed_messages", "feed messages received (data and heartbeats)"),
            ("bytes", "feed_received_bytes", "bytes of feed messages received"),
            ("heartbeats", "feed_heartbeats", "feed heartbeats received"),
            ("gaps", "feed_gaps", "sequence gaps detected"),
            ("recoveries", "feed_recoveries", "snapshot recoveries (a channel's book repaired)"),
            ("retransmitted", "feed_retransmitted_events", "events the publisher sent again (holes filled)"),
            ("lost_events", "feed_lost_events", "events the publisher could no longer send: lost from the tick "
                                                "history (exact, over every restart of the worker)"),
            ("uncounted_losses", "feed_uncounted_losses", "ranges lost from the tick history whose size cannot be "
                                                          "known: the publisher restarted while the worker was away"),
            ("silences", "feed_silences", "times a live channel went silent longer than feeds.stale_after_ms"),
            ("future_stamps", "future_stamps", "statistics updates whose event was stamped (ts_event) more than a "
                                               "day after its receipt (ts_recv) and its instrument's previous "
                                               "update: a bad stamp, for which no time passed (docs/engine.md)"),
            ("window_dropped", "window_dropped_samples", "samples the time windows let go early, full at "
                                                         "stats.max_capacity: statistics over less than the window"),
            ("ring_waits", "tick_ring_waits", "times the engine waited for room in a full tick ring (back-pressure)"),
            ("restarts", "worker_restarts", "times the supervisor restarted the worker"),
            ("stall_restarts", "worker_stall_restarts", "times the supervisor killed the worker to restart it "
                                                        "because it wrote no status (daemon.stall_restart_s)"),
        ), W)
        drops = CounterMetricFamily("tickwire_feed_drops", "feed messages dropped, by reason (docs/feeds.md)",
                                    labels=["worker", "reason"])
        rejects = CounterMetricFamily("tickwire_book_rejects", "events a book did not apply, by reason",
                                      labels=["worker", "reason"])
        signals = CounterMetricFamily("tickwire_signals", "signals emitted, by rule (rule_id: its place in the "
                                      "config's rules)", labels=["worker", "rule_id", "rule"])
        g = gauges((
            ("up", "worker_up", "1 while the worker process runs"),
            ("depth", "tick_ring_depth", "ticks in the worker's tick ring not yet read by the writer"),
            ("fill", "tick_ring_fill_ratio", "tick ring depth over its capacity (1: full, the engine waits)"),
            ("head", "signal_ring_head", "signals published into the worker's signal ring since it was made"),
            ("status_age", "worker_status_age_seconds", "seconds since the worker last wrote its status (every 0.5 s), "
                                                       "or touched it when it could not write it"),
            ("status_frozen", "worker_status_frozen_seconds", "how far the worker's figures lag its last sign of life: "
                                                             "above 0, it runs but cannot write its status (the state "
                                                             "directory full or read-only) and these figures are "
                                                             "that old"),
        ), W)
        ch = gauges((
            ("event_age", "feed_last_event_age_seconds", "seconds since the channel's last market event (to within "
                                                         "0.5 s; before any: since the worker started)"),
            ("message_age", "feed_last_message_age_seconds", "seconds since the channel's last news: data or a "
                                                             "heartbeat at or past the stream (not a copy, a replay, "
                                                             "an old or unconfirmed epoch's)"),
            ("live", "feed_channel_live", "1 while the channel is LIVE and its books in sync"),
        ), ["worker", "channel"])
        lat = HistogramMetricFamily("tickwire_latency_seconds", "per-stage latency since the worker started: "
                                    "decode, book, stats, rules (one event in engine.timing_every), tick_to_signal "
                                    "(every signal)", labels=["worker", "stage"])
        lat_rejected = CounterMetricFamily("tickwire_latency_rejected", "latency values left out of "
                                           "tickwire_latency_seconds: negative (the wall clock stepped back "
                                           "between the two stamps) or over 68.7 s", labels=["worker", "stage"])
        drop_reasons = [d.name for d in Drop if d.name != "OK"]
        reject_reasons = [r.name for r in Reject if r.name != "OK"]
        for child, st in zip(sup.workers, sup.worker_status()):
            w = child.name
            g["up"].add_metric([w], 1.0 if child.proc and child.proc.returncode is None else 0.0)
            c["restarts"].add_metric([w], child.restarts)
            c["stall_restarts"].add_metric([w], child.stalls)
            if not st:
                continue
            feed = st["feed"]
            c["events"].add_metric([w], feed.get("events", 0))
            for k in ("markers", "snapshot_events", "messages", "bytes", "heartbeats", "gaps", "recoveries",
                      "retransmitted", "silences"):
                c[k].add_metric([w], feed.get(k, 0))
            c["lost_events"].add_metric([w], st.get("history", {}).get("lost_events", 0))
            c["uncounted_losses"].add_metric([w], st.get("history", {}).get("uncounted_losses", 0))
            c["ring_waits"].add_metric([w], st["counts"].get("tick_ring_waits", 0))
            c["future_stamps"].add_metric([w], st.get("future_stamps", 0))
            c["window_dropped"].add_metric([w], st.get("window_dropped", 0))
            for reason in drop_reasons:
                drops.add_metric([w, reason], feed["drops"].get(reason, 0))
            for reason in reject_reasons:
                rejects.add_metric([w, reason], st.get("book_rejects", {}).get(reason, 0))
            for rid, ((kind, _, _), n) in enumerate(zip(st.get("rules", []), st.get("rule_signals", []))):
                signals.add_metric([w, str(rid), kind], n)
            g["depth"].add_metric([w], st["tick_ring_depth"])
            cap = st.get("tick_ring_capacity")
            if cap:
                g["fill"].add_metric([w], st["tick_ring_depth"] / cap)
            g["head"].add_metric([w], st["signal_ring_head"])
            touched = max(st.get("_touched", 0.0), st.get("time", now))
            g["status_age"].add_metric([w], max(0.0, now - touched))
            # (a full state disk froze every figure and the age with them: the worker read as
            # stalled, its ring's fill stuck at 1% while it was 47% full: an adversarial pass)
            frozen = touched - st.get("time", touched)
            g["status_frozen"].add_metric([w], frozen if frozen > 2.0 else 0.0)     # (writes take 0.5 s apart)
            for cid, cs in st.get("channels", {}).items():
                last = cs.get("last_event_time") or st.get("started", now)
                ch["event_age"].add_metric([w, cid], max(0.0, now - last))
                last = cs.get("last_message_ns", 0) / 1e9 or st.get("started", now)
                ch["message_age"].add_metric([w, cid], max(0.0, now - last))
                ch["live"].add_metric([w, cid], 1.0 if cs.get("state") == "live" and cs.get("in_sync") else 0.0)
            hist = st.get("latency_hist")
            if hist:
                les = [f"{b / 1e9:.9g}" for b in hist["bounds_ns"]] + ["+Inf"]
                for stage, h in hist["stages"].items():
                    lat.add_metric([w, stage], list(zip(les, h["buckets"] + [h["count"]])), h["sum_ns"] / 1e9)
            for stage, q in st.get("latency_ns", {}).items():
                lat_rejected.add_metric([w, stage], q.get("rejected", 0))
        wc = counters((
            ("rows_written", "writer_rows_written", "rows written to the store: ticks, and the snapshot and marker "
                                                    "rows the books met"),
            ("rows_spilled", "writer_rows_spilled", "rows spilled to local files (the store was down or slow)"),
            ("batches_written", "writer_batches_written", "insert batches"),
            ("batches_spilled", "writer_batches_spilled", "batches spilled to local files"),
            ("batches_replayed", "writer_batches_replayed", "spilled batches replayed into the store"),
            ("sched_switches", "writer_sched_switches", "times the writer left or re-entered SCHED_IDLE"),
            ("rows_corrupt", "writer_rows_corrupt", "ticks of damaged spill files, set aside: NOT stored"),
            ("rows_missing", "writer_rows_missing", "ticks of spill files removed before they were stored: NOT "
                                                   "stored"),
        ), W)
        wg = gauges((
            ("lag", "writer_lag", "ticks in the ring not yet read by the writer"),
            ("unstored", "writer_unstored", "ticks in the ring not yet durable (neither inserted nor spilled)"),
            ("spill_bytes", "writer_spill_bytes", "bytes in spill files waiting for the store"),
            ("spill_files", "writer_spill_files", "spill files waiting for the store"),
            ("outage", "writer_outage", "1 while the store is unreachable"),
            ("sched_idle", "writer_sched_idle", "1 while the writer runs under SCHED_IDLE"),
        ), W)
        for child, st in zip(sup.workers, sup.writer_status()):
            if not st:
                continue
            for k in wc:
                wc[k].add_metric([child.name], st.get(k, 0))
            for k in wg:
                wg[k].add_metric([child.name], float(st.get(k, 0)))
        age = GaugeMetricFamily("tickwire_writer_status_age_seconds",
                                "seconds since the writer last wrote its status for this worker's rings (every 1 s, "
                                "busy or idle): a stopped or stuck writer", labels=W)
        wall = time.time()
        for child, mark in zip(sup.workers, sup.writer_status_marks()):
            if mark is not None and sup.writer is not None and sup.writer.proc and sup.writer.proc.returncode is None:
                age.add_metric([child.name], max(0.0, wall - mark[1] / 1e9))
        writer_up = GaugeMetricFamily("tickwire_writer_up", "1 while the writer process runs (absent with storage off)")
        restarts = CounterMetricFamily("tickwire_writer_restarts", "times the supervisor restarted the writer")
        if sup.writer is not None:
            writer_up.add_metric([], 1.0 if sup.writer.proc and sup.writer.proc.returncode is None else 0.0)
            restarts.add_metric([], sup.writer.restarts)
        stored = CounterMetricFamily("tickwire_signals_stored", "signals stored by the writer")
        missed = CounterMetricFamily("tickwire_signal_ring_missed", "signals the writer's reader missed (lapped)")
        # (the signals' spill and damage went unexported, so no alert saw signals waiting in
        # spill files or lost from damaged ones, and `tickwire top` disagreed with the scrape: an
        # adversarial pass)
        sig_spill = GaugeMetricFamily("tickwire_signals_spill_files", "signal spill files waiting for the store")
        sig_unstored = GaugeMetricFamily("tickwire_signals_unstored",
                                         "signals in the signal rings not yet durable (neither inserted nor spilled)")
        sig_corrupt = CounterMetricFamily("tickwire_signals_corrupt", "signals of damaged spill files, set aside: NOT "
                                                                      "stored")
        sig_missing = CounterMetricFamily("tickwire_signals_missing", "signals of spill files removed before they were "
                                                                      "stored: NOT stored")
        ss = sup.signal_status()
        if "written" in ss:
            stored.add_metric([], ss["written"])
            missed.add_metric([], ss.get("missed", 0))
            sig_spill.add_metric([], float(ss.get("spill_files", 0)))
            sig_unstored.add_metric([], float(ss.get("unstored", 0)))
            sig_corrupt.add_metric([], ss.get("corrupt", 0))
            sig_missing.add_metric([], ss.get("missing", 0))
        yield from c.values()
        yield from (drops, rejects, signals)
        yield from g.values()
        yield from ch.values()
        yield lat
        yield lat_rejected
        yield from wc.values()
        yield from wg.values()
        yield from (writer_up, age, restarts, stored, missed, sig_spill, sig_unstored, sig_corrupt, sig_missing)


#: Most connections the metrics endpoint serves at once. A connection past it evicts the oldest
#: one that has not sent its whole request yet (an idle one); with none idle, it is closed at once.
#: (Closing the newcomer let any local user who kept 64 idle connections open fail most scrapes
#: for as long as they liked.)
MAX_CONNECTIONS = 64
#: The listen backlog: connections the kernel completes before the server accepts them.
LISTEN_BACKLOG = 128
#: Seconds a connection may take to send its whole request (request line and headers), and each
#: read or write after, before it is closed.
REQUEST_TIMEOUT_S = 5.0


def serve(host: str, port: int, registry):
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread; returns the server
    (``server_port``, ``shutdown()``).

    prometheus_client's own ``start_http_server`` gives every connection a thread and waits for a
    request for ever: a thousand idle connections from any local user took the supervisor's file
    descriptors, and then its worker restarts failed. Here at most :data:`MAX_CONNECTIONS` are
    served at once (the rest closed at once) and each has :data:`REQUEST_TIMEOUT_S`."""
    import socket
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    class Handler(WSGIRequestHandler):
        timeout = REQUEST_TIMEOUT_S                    # (StreamRequestHandler: the socket's timeout)

        def log_message(self, *args):
            pass

    slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
    idle: dict = {}                                    # socket -> accept time, until its request is read
    idle_lock = threading.Lock()

    class Handler(Handler):                            # noqa: F811 - the one above, marking its request read
        def parse_request(self):
            # (the headers are read in here: popped before, a connection sending its header lines
            # one by one, each within the read timeout, was no longer idle, never evicted, and 64
            # of them failed every scrape for as long as they trickled: an adversarial pass)
            ok = super().parse_request()
            with idle_lock:
                # (reaped or evicted while its headers came in: shut down already, no reply)
                return idle.pop(self.request, None) is not None and ok

    def close(sock) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)            # its thread reads EOF, ends, frees its slot
        except OSError:
            pass

    def reap(stop: threading.Event) -> None:
        """Close connections that have not sent their whole request within REQUEST_TIMEOUT_S (a read
        timeout alone let one header line every few seconds hold a connection for ever)."""
        while not stop.wait(min(0.5, REQUEST_TIMEOUT_S / 4)):
            limit = time.monotonic() - REQUEST_TIMEOUT_S
            with idle_lock:                          # (closed under the lock: see parse_request)
                for sock in [sock for sock, t in idle.items() if t < limit]:
                    del idle[sock]
                    close(sock)

    def evict_one() -> bool:
        """Close the oldest connection still waiting for its request; False when there is none."""
        with idle_lock:
            if not idle:
                return False
            sock = min(idle, key=idle.get)
            del idle[sock]
            close(sock)
        return True

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        # socketserver's listen backlog is 5: a burst of connections (a scraper and a few
        # `tickwire status` calls, or the idle connections above) overflowed it, and each one
        # past it waited a second for the kernel to resend its SYN
        request_queue_size = LISTEN_BACKLOG

        def process_request(self, request, client_address):
            if not slots.acquire(blocking=False):
                if not (evict_one() and slots.acquire(timeout=1.0)):
                    self.shutdown_request(request)     # every slot busy with a request: closed, not queued
                    return
            with idle_lock:
                idle[request] = time.monotonic()
            super().process_request(request, client_address)

        def process_request_thread(self, request, client_address):
            try:
                super().process_request_thread(request, client_address)
            finally:
                with idle_lock:
                    idle.pop(request, None)
                slots.release()

        def handle_error(self, request, client_address):
            pass                                       # (a client gone or timed out: nothing to say)

    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    Server.address_family = infos[0][0]
    httpd = make_server(host, port, make_wsgi_app(registry), Server, handler_class=Handler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    reaping = threading.Event()
    threading.Thread(target=reap, args=(reaping,), name="metrics-reaper", daemon=True).start()
    stop_serving = httpd.shutdown

    def shutdown() -> None:
        reaping.set()
        stop_serving()

    httpd.shutdown = shutdown
    return httpd
