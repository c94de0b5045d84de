"""Monitoring (issue 20): the daemon's metrics in Prometheus's conventions, and what ships in
monitoring/ working against a real Prometheus server scraping a real daemon.

A daemon (default metrics host, any free port) is fed by the simulator with 1% of messages
dropped (so gaps, retransmissions and recoveries happen); Debian's ``prometheus`` (installed
by ``./dev test`` where it can be) scrapes it every second with the shipped scrape config and
alert rules; every PromQL expression of the shipped dashboard and of the shipped rules must
return data through Prometheus's HTTP API. Without a ``prometheus`` binary those tests skip,
saying so; the others run."""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from test_daemon import publisher_done_and_settled, start_daemon, start_sim, status, stop_daemon, wait_for, write_config
from ports import free_tcp_port
from tickwire.engine.config import to_toml
from tickwire.engine.metrics import LATENCY_BOUNDS_NS, histogram_quantile, latency_histogram
from tickwire.ext.hdr import Recorder

ROOT = Path(__file__).resolve().parent.parent
MON = ROOT / "monitoring"
DASHBOARD = MON / "tickwire-dashboard.json"
RULES = MON / "tickwire-alerts.yml"
SCRAPE = MON / "prometheus.yml"


# -- the histogram conversion (no daemon) --------------------------------------------------------

def test_latency_histogram_buckets_match_the_values_to_hdr_precision():
    vals = np.random.default_rng(7).lognormal(9, 2.0, 200_000).astype(np.int64)
    r = Recorder()
    r.record_many(vals)
    h = latency_histogram(r)
    assert h["count"] == len(vals) and h["buckets"] == sorted(h["buckets"])
    for b, n in zip(LATENCY_BOUNDS_NS, h["buckets"]):
        # values <= b, plus at most those HDR cannot tell from b (3 significant digits)
        assert (vals <= b).sum() <= n <= (vals <= b + b // 1000).sum(), b
    assert h["sum_ns"] == pytest.approx(vals.sum(), rel=1e-3)
    bounds = [b / 1e9 for b in LATENCY_BOUNDS_NS] + [math.inf]
    p99 = histogram_quantile(0.99, bounds, h["buckets"] + [h["count"]])
    i = next(i for i, b in enumerate(bounds) if b * 1e9 >= np.quantile(vals, 0.99))
    assert (bounds[i - 1] if i else 0) <= p99 <= bounds[i]               # inside the right bucket
    assert math.isnan(histogram_quantile(0.99, bounds, [0] * len(bounds)))


def test_a_burst_of_connections_to_the_metrics_endpoint_is_not_held_back_by_the_listen_backlog():
    """socketserver listens with a backlog of 5: past it the kernel drops a connection's SYN and the
    client sends it again a second later. 100 connections at once (a scraper and a few `tickwire
    status`, or a local user's idle ones) took 14 s, one in six waiting a second; here every one
    is taken at once, and the endpoint still answers with all of them open."""
    import time

    from prometheus_client import CollectorRegistry, Counter

    from tickwire.engine import metrics

    reg = CollectorRegistry()
    Counter("tickwire_probe", "a probe", registry=reg).inc()
    httpd = metrics.serve("127.0.0.1", 0, reg)
    conns, waited = [], []
    try:
        for _ in range(100):
            t = time.monotonic()
            conns.append(socket.create_connection(("127.0.0.1", httpd.server_port), timeout=10))
            waited.append(time.monotonic() - t)
        # a dropped SYN is sent again after 1 s (the kernel's initial retransmission time-out)
        assert sum(w >= 0.95 for w in waited) == 0, sorted(waited)[-10:]
        body = urllib.request.urlopen(f"http://127.0.0.1:{httpd.server_port}/metrics", timeout=10).read()
        assert b"tickwire_probe_total 1.0" in body
    finally:
        for c in conns:
            c.close()
        httpd.shutdown()


# -- a daemon to watch -------------------------------------------------------------------------


def test_connections_trickling_their_headers_do_not_starve_scrapes(monkeypatch):
    """Found by an adversarial pass: 64 local connections each sending a request line, then one
    header line every 2 s (each within the 5 s read timeout), failed every scrape (0 of 15) for as
    long as they went on: a connection stopped being idle, evictable, once its request line was
    read. It is idle until its headers are in, and closed past REQUEST_TIMEOUT_S without them."""
    import threading

    from prometheus_client import CollectorRegistry, Counter

    from tickwire.engine import metrics

    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT_S", 2.0)
    reg = CollectorRegistry()
    Counter("tickwire_probe", "a probe", registry=reg).inc()
    httpd = metrics.serve("127.0.0.1", 0, reg)
    url = f"http://127.0.0.1:{httpd.server_port}/metrics"
    conns, stop = [], threading.Event()
    try:
        for _ in range(metrics.MAX_CONNECTIONS):
            c = socket.create_connection(("127.0.0.1", httpd.server_port))
            c.sendall(b"GET /metrics HTTP/1.1\r\n")
            conns.append(c)

        def trickle():
            k = 0
            while not stop.wait(0.5):
                k += 1
                for c in conns:
                    try:
                        c.sendall(b"X-Slow-%d: 1\r\n" % k)
                    except OSError:
                        pass

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        time.sleep(0.3)
        ok = 0
        for _ in range(5):
            try:
                ok += "tickwire_probe_total 1.0" in urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                pass
            time.sleep(0.2)
        assert ok == 5, f"{ok} of 5 scrapes answered"
        # the rest, never done with their headers, are closed past the 2 s even with no newcomer
        for c in conns:
            c.settimeout(10)
        deadline = time.monotonic() + 10
        for c in conns:
            try:
                while c.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            assert time.monotonic() < deadline
    finally:
        stop.set()
        for c in conns:
            c.close()
        httpd.shutdown()
        httpd.server_close()

def _scrape(url):
    return urllib.request.urlopen(url, timeout=5).read().decode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mon")
    cfg_path, raw = write_config(tmp, "mon")
    del raw["metrics"]["host"]                                   # the default: localhost only
    cfg_path.write_text(to_toml(raw))
    run_dir = tmp / "state" / "mon"
    proc, log = start_daemon(cfg_path, tmp)
    sim = None
    try:
        assert wait_for(lambda: (run_dir / "metrics.url").exists() and status(run_dir)["pid"], 60), \
            (tmp / "daemon.log").read_text()[-3000:]
        url = (run_dir / "metrics.url").read_text().strip()
        before = _scrape(url)                                    # before any feed message
        sim = start_sim(raw, 5_000_000, 20_000, "--drop", "0.01", "--linger", "5")  # runs longer than the module's tests
        assert wait_for(lambda: status(run_dir)["feed"]["events"] > 20_000, 60), (tmp / "daemon.log").read_text()[-3000:]
        yield {"url": url, "before": before, "run_dir": run_dir, "raw": raw, "tmp": tmp}
    finally:
        try:
            if sim is not None:
                # (stopped, it lingers, serving what --drop lost, and says END: a kill left a loss
                # found at the end unfilled, held at the daemon's stop and NOT stored, exit 1)
                sim.send_signal(signal.SIGTERM)
                publisher_done_and_settled(sim, run_dir)
        finally:
            if sim is not None and sim.poll() is None:
                sim.kill()
                sim.wait()
            rc, _ = stop_daemon(proc, log)
    assert rc == 0, (tmp / "daemon.log").read_text()[-3000:]


def _samples(text):
    """{(name, frozenset(labels)): value} of an exposition text."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


@pytest.mark.integration
def test_metrics_follow_prometheus_conventions_and_count_from_zero(daemon):
    from tickwire.ext import Reject
    from tickwire.feeds.wire import Drop

    before = _samples(daemon["before"])
    # every drop and reject reason is there at 0 before the first message
    for reason in (d.name for d in Drop if d.name != "OK"):
        assert before[("tickwire_feed_drops_total", frozenset({("worker", "w0"), ("reason", reason)}))] == 0
    for reason in (r.name for r in Reject if r.name != "OK"):
        assert ("tickwire_book_rejects_total", frozenset({("worker", "w0"), ("reason", reason)})) in before
    rules = daemon["raw"]["rules"]
    for rid, rule in enumerate(rules):                          # signals by rule, from 0
        assert before[("tickwire_signals_total", frozenset({("worker", "w0"), ("rule_id", str(rid)),
                                                            ("rule", rule["kind"])}))] == 0
    text = _scrape(daemon["url"])
    st = status(daemon["run_dir"])
    now = _samples(text)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    for name, kind in types.items():                            # units in names, _total counters
        assert name.startswith("tickwire_")
        assert (kind == "counter") == name.endswith("_total") or kind == "histogram", name
        assert "_ns" not in name and "latency_ns" not in name, name
    assert types["tickwire_latency_seconds"] == "histogram"
    doc = (ROOT / "docs" / "monitoring.md").read_text()          # every metric documented
    assert not [n for n in types if f"`{n}`" not in doc], [n for n in types if f"`{n}`" not in doc]
    # markers counted apart from market events
    w0 = frozenset({("worker", "w0")})
    assert now[("tickwire_markers_total", w0)] > 0 and now[("tickwire_events_total", w0)] > 0
    assert st["feed"]["markers"] > 0
    # each stage a cumulative histogram: le ascending, counts non-decreasing, +Inf == _count
    for stage in ("decode", "book", "stats", "rules", "tick_to_signal"):
        lab = {("worker", "w0"), ("stage", stage)}
        buckets = sorted((math.inf if dict(k[1])["le"] == "+Inf" else float(dict(k[1])["le"]), v)
                         for k, v in now.items() if k[0] == "tickwire_latency_seconds_bucket" and lab <= k[1])
        assert len(buckets) == len(LATENCY_BOUNDS_NS) + 1
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and counts[-1] == now[("tickwire_latency_seconds_count", frozenset(lab))] > 0
        assert now[("tickwire_latency_seconds_sum", frozenset(lab))] > 0
        # values out of the recorders' range are counted, not lost unsaid (none on a healthy run)
        assert now[("tickwire_latency_rejected_total", frozenset(lab))] == st["latency_ns"][stage]["rejected"] == 0
    # gauges: ring fill as a fraction, age of each channel's last event
    assert 0 <= now[("tickwire_tick_ring_fill_ratio", w0)] <= 1
    ages = [v for k, v in now.items() if k[0] == "tickwire_feed_last_event_age_seconds"]
    assert len(ages) == daemon["raw"]["feeds"]["channels"] and all(0 <= a < 5 for a in ages)
    # `tickwire status` reads the new names
    out = subprocess.run([sys.executable, "-m", "tickwire", "status",
                          "--url", daemon["url"]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "p99 w0 tick_to_signal" in out.stdout and "markers" in out.stdout, out.stderr
    assert "books: events not applied" in out.stdout


@pytest.mark.integration
def test_metrics_endpoint_stays_on_localhost_by_default(daemon):
    url = daemon["url"]
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            listening.append(local.rsplit(":", 1)[0])
    assert listening == ["0100007F"], listening                   # 127.0.0.1 only, no wildcard, no v6


def test_metrics_url_of_an_ipv6_host_is_a_url_curl_takes(tmp_path, capsys):
    """metrics.host = "::1": metrics.url read http://::1:PORT/metrics, which curl refuses
    (malformed URL, exit 3); the address is now in brackets, and `tickwire status` reads it."""
    from tickwire.engine.cli import main as cli_main

    try:
        socket.socket(socket.AF_INET6).close()
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here ({exc})")
    cfg_path, raw = write_config(tmp_path, "v6")
    raw["metrics"]["host"] = "::1"
    cfg_path.write_text(to_toml(raw))
    run_dir = tmp_path / "state" / "v6"
    proc, log = start_daemon(cfg_path, tmp_path)
    try:
        assert wait_for(lambda: (run_dir / "metrics.url").exists() and status(run_dir)["pid"], 60), \
            (tmp_path / "daemon.log").read_text()[-3000:]
        url = (run_dir / "metrics.url").read_text().strip()
        parts = urllib.parse.urlsplit(url)
        assert url.startswith("http://[::1]:") and parts.hostname == "::1" and parts.port, url
        assert "\ntickwire_events_total{" in _scrape(url)
        if shutil.which("curl"):
            out = subprocess.run(["curl", "-sf", "--max-time", "10", url], capture_output=True, text=True)
            assert out.returncode == 0 and "tickwire_events_total" in out.stdout, (out.returncode, out.stderr)
        capsys.readouterr()
        assert cli_main(["status", "--config", str(cfg_path)]) == 0, capsys.readouterr().err
        assert "workers up 1" in capsys.readouterr().out
    finally:
        rc, _ = stop_daemon(proc, log)
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]

# -- the shipped dashboard, read as Grafana would ----------------------------------------------

def _dashboard_exprs():
    """(panel title, expr) of every query of the shipped dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_has_what_grafana_needs_to_import_it():
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["title"] and dash["uid"] and dash.get("id") is None
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    used = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy") and g["x"] + g["w"] <= 24, p["title"]
        assert p["type"] and p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"]), p["title"]
        for t in p["targets"]:
            used |= set(re.findall(r"\$\{?(\w+)", t["expr"]))
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & used_cells(dash, p), f"panel {p['title']!r} overlaps another"
    # every variable a query uses is defined (Grafana's own ones aside)
    assert used - {"__rate_interval", "__interval", "__range"} <= set(variables), used
    # what the issue asks the dashboard to show
    text = json.dumps(dash)
    for metric in ("tickwire_latency_seconds_bucket", "tickwire_events_total", "tickwire_signals_total",
                   "tickwire_feed_gaps_total", "tickwire_feed_recoveries_total", "tickwire_writer_lag",
                   "tickwire_writer_spill_bytes", "tickwire_tick_ring_fill_ratio", "tickwire_worker_restarts_total",
                   "tickwire_feed_last_event_age_seconds"):
        assert metric in text, metric
    assert "histogram_quantile(0.99" in text


def used_cells(dash, panel):
    """The grid cells of every panel but ``panel``."""
    out = set()
    for p in dash["panels"]:
        if p is panel:
            continue
        g = p["gridPos"]
        out |= {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
    return out


# -- a real Prometheus ---------------------------------------------------------------------------


def _tool(name):
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.skip(f"no `{name}` on this machine: `./dev test` installs Debian's prometheus package with apt-get "
                    f"when run as root; elsewhere install it (apt-get install prometheus) to run this test")
    return path


def test_promtool_checks_the_shipped_rules_and_scrape_config():
    promtool = _tool("promtool")
    out = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "SUCCESS" in out.stdout + out.stderr, out.stdout + out.stderr
    out = subprocess.run([promtool, "check", "config", str(SCRAPE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _description(alert: str) -> str:
    block = RULES.read_text().split(f"- alert: {alert}\n", 1)[1].split("- alert:", 1)[0]
    return json.loads(re.search(r'description: (".*")', block).group(1))


def test_alerts_fire_on_a_crash_loop_a_stopped_writer_and_refused_events(tmp_path):
    """promtool's rule unit tests on series shaped like the faults an adversarial pass made:
    TickwireWorkerDown never fired on a crash loop (up flips back within seconds, then the
    daemon gives up: `up < 1 for 1m` never held); a SIGSTOPped writer and books refusing an L3
    feed into L2 books had no alert at all, nor a spill file removed by hand. Healthy series fire
    none of them."""
    promtool = _tool("promtool")
    lab = 'instance="d",job="tickwire",worker="w0"'
    test = {"rule_files": [str(RULES)], "evaluation_interval": "5s", "tests": [{
        "interval": "5s",
        "input_series": [
            {"series": f"tickwire_worker_restarts_total{{{lab}}}", "values": "0 1 2 3 4 5 5 5"},
            {"series": 'tickwire_worker_restarts_total{instance="d",job="tickwire",worker="w1"}', "values": "0 0 0 0 0 0 0 0"},
            {"series": f"tickwire_writer_status_age_seconds{{{lab}}}", "values": "0 1 2 5 10 15 20 25 30 35 40"},
            {"series": 'tickwire_writer_status_age_seconds{instance="e",job="tickwire",worker="w0"}', "values": "0 1 0 1 0 1 0 1 0 1 0"},
            {"series": f'tickwire_book_rejects_total{{{lab},reason="UNKNOWN_LEVEL"}}', "values": "0 0 100 200 300"},
            {"series": f'tickwire_book_rejects_total{{{lab},reason="CROSSED"}}', "values": "0 0 0 0 0"},
            {"series": f"tickwire_writer_rows_corrupt_total{{{lab}}}", "values": "0 0 0 0 0 0"},
            {"series": f"tickwire_writer_rows_missing_total{{{lab}}}", "values": "0 0 0 3000 3000 3000"},
            {"series": 'tickwire_writer_rows_corrupt_total{instance="e",job="tickwire",worker="w0"}',
             "values": "0 0 0 0 0 0"},
            {"series": 'tickwire_writer_rows_missing_total{instance="e",job="tickwire",worker="w0"}',
             "values": "0 0 0 0 0 0"},
            # what a lossy wire, a publisher restart and a retried request make: no alert (a slow
            # recovery service's late replies fired it); a forged message does
            *({"series": f'tickwire_feed_drops_total{{instance="e",job="tickwire",worker="w0",reason="{r}"}}',
               "values": "0 5 10 20 40 80"} for r in ("DUPLICATE", "OLD_EPOCH", "STALE_REPLY")),
            {"series": f'tickwire_feed_drops_total{{{lab},reason="BAD_MAGIC"}}', "values": "0 0 1 1 1 1"},
            # signals spilled, then a signal spill file removed by hand (neither was exported)
            {"series": 'tickwire_signals_spill_files{instance="d",job="tickwire"}', "values": "0 1x80"},
            {"series": 'tickwire_signals_spill_files{instance="e",job="tickwire"}', "values": "0x80"},
            {"series": 'tickwire_signals_corrupt_total{instance="d",job="tickwire"}', "values": "0x10"},
            {"series": 'tickwire_signals_missing_total{instance="d",job="tickwire"}', "values": "0 0 0 40 40 40"},
        ],
        "alert_rule_test": [
            {"eval_time": "20s", "alertname": "TickwireWorkerDown", "exp_alerts": [{
                "exp_labels": {"instance": "d", "worker": "w0", "severity": "critical"},
                "exp_annotations": {"summary": "w0 keeps dying: 4 restarts in 2 minutes",
                                    "description": _description("TickwireWorkerDown")}}]},
            {"eval_time": "45s", "alertname": "TickwireWriterStalled", "exp_alerts": [{
                "exp_labels": {"instance": "d", "severity": "critical"},
                "exp_annotations": {"summary": "the writer of d has written no status for 35 s",
                                    "description": _description("TickwireWriterStalled")}}]},
            {"eval_time": "15s", "alertname": "TickwireWriterStalled", "exp_alerts": []},    # not yet 15 s past 10
            {"eval_time": "20s", "alertname": "TickwireBookRejects", "exp_alerts": [{
                "exp_labels": {"instance": "d", "worker": "w0", "reason": "UNKNOWN_LEVEL", "severity": "warning"},
                "exp_annotations": {"summary": "w0: 300 events refused by the books (UNKNOWN_LEVEL) in 5 minutes",
                                    "description": _description("TickwireBookRejects")}}]},
            {"eval_time": "25s", "alertname": "TickwireSpillLost", "exp_alerts": [{
                "exp_labels": {"instance": "d", "worker": "w0", "severity": "critical"},
                "exp_annotations": {"summary": "w0: 3k ticks of damaged or removed spill files NOT stored",
                                    "description": _description("TickwireSpillLost")}}]},
            {"eval_time": "10s", "alertname": "TickwireSpillLost", "exp_alerts": []},
            {"eval_time": "25s", "alertname": "TickwireSignalSpillLost", "exp_alerts": [{
                "exp_labels": {"instance": "d", "severity": "critical"},
                "exp_annotations": {"summary": "40 signals of damaged or removed spill files of d NOT stored",
                                    "description": _description("TickwireSignalSpillLost")}}]},
            {"eval_time": "10s", "alertname": "TickwireSignalSpillLost", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "TickwireSignalsSpilling", "exp_alerts": [{
                "exp_labels": {"instance": "d", "severity": "warning"},
                "exp_annotations": {"summary": "1 signal spill files of d wait for the store",
                                    "description": _description("TickwireSignalsSpilling")}}]},
            {"eval_time": "4m", "alertname": "TickwireSignalsSpilling", "exp_alerts": []},
            {"eval_time": "25s", "alertname": "TickwireFeedDropsRising", "exp_alerts": [{
                "exp_labels": {"instance": "d", "worker": "w0", "reason": "BAD_MAGIC", "severity": "warning"},
                "exp_annotations": {"summary": "w0: feed messages dropped as BAD_MAGIC",
                                    "description": _description("TickwireFeedDropsRising")}}]},
        ]}]}
    (tmp_path / "t.yml").write_text(json.dumps(test))            # (JSON is YAML)
    out = subprocess.run([promtool, "test", "rules", str(tmp_path / "t.yml")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "SUCCESS" in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.fixture(scope="module")
def prometheus(daemon, tmp_path_factory):
    binary = _tool("prometheus")
    tmp = tmp_path_factory.mktemp("prom")
    target = daemon["url"].split("//")[1].split("/")[0]
    # the shipped scrape config, pointed at this daemon, scraping every second
    cfg = SCRAPE.read_text()
    for old, new in (('"127.0.0.1:9464"', f'"{target}"'), ("scrape_interval: 5s", "scrape_interval: 1s"),
                     ("evaluation_interval: 15s", "evaluation_interval: 1s"),
                     ("- tickwire-alerts.yml", f"- {RULES}")):
        assert old in cfg, f"{SCRAPE} no longer holds {old!r}"
        cfg = cfg.replace(old, new)
    (tmp / "prometheus.yml").write_text(cfg)
    port = free_tcp_port()
    log = open(tmp / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: urllib.request.urlopen(f"{api}/-/ready", timeout=2).status == 200, 30), \
            (tmp / "prometheus.log").read_text()[-3000:]
        yield {"api": api, "log": tmp / "prometheus.log"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _query(api, expr):
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _has_data(result):
    """Some series with a value that is a number (not NaN: a quantile over no observations)."""
    return any(not math.isnan(float(r["value"][1])) for r in result)


# Grafana's variables as the test fills them in: every daemon and worker, a 10 s rate window
_GRAFANA = {"__rate_interval": "10s", "__interval": "2s", "__range": "1m", "instance": ".+", "worker": ".+"}


def _fill(expr):
    return re.sub(r"\$\{?(\w+)\}?", lambda m: _GRAFANA[m.group(1)], expr)


_TOP_COMPARISON = re.compile(r"^(?P<query>.*\S)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>-?[0-9.]+(?:e-?[0-9]+)?)$", re.S)


def _alert_rules(api):
    body = json.loads(urllib.request.urlopen(f"{api}/api/v1/rules?type=alert", timeout=10).read())
    return [r for g in body["data"]["groups"] for r in g["rules"]]


@pytest.mark.integration
def test_every_dashboard_and_alert_query_returns_data_from_a_real_prometheus(daemon, prometheus):
    api = prometheus["api"]
    # the rules as Prometheus loaded them from the shipped file: every alert of it
    shipped = re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M)
    assert wait_for(lambda: len(_alert_rules(api)) == len(shipped), 30), prometheus["log"].read_text()[-2000:]
    rules = _alert_rules(api)
    assert sorted(r["name"] for r in rules) == sorted(shipped)
    queries = [(f"panel {title!r}", _fill(expr)) for title, expr in _dashboard_exprs()]
    for r in rules:
        m = _TOP_COMPARISON.match(r["query"])
        assert m, f"alert {r['name']}: expected `<query> <comparison> <threshold>`, got {r['query']!r}"
        # `bool`: 0 or 1 for every series instead of only those past the threshold
        queries.append((f"alert {r['name']}", f"{m['query']} {m['op']} bool {m['threshold']}"))
    assert len(queries) >= 25
    missing = queries

    def all_answer():
        nonlocal missing
        missing = [(who, q) for who, q in missing if not _has_data(_query(api, q))]
        return not missing

    assert wait_for(all_answer, 45, every=1.0), "no data for:\n" + "\n".join(f"  {w}: {q}" for w, q in missing)
    # Prometheus evaluated every rule without an error
    assert wait_for(lambda: all(r["health"] == "ok" for r in _alert_rules(api)), 15), \
        [(r["name"], r.get("lastError")) for r in _alert_rules(api) if r["health"] != "ok"]
    # and what it scraped is what the daemon counted: the gaps of the dropped messages...
    gaps = _query(api, 'sum(tickwire_feed_gaps_total{job="tickwire"})')
    assert float(gaps[0]["value"][1]) > 0
    # ...which the gap alert sees (pending: its `for` is minutes), while the feed is not silent
    def alerts():
        body = json.loads(urllib.request.urlopen(f"{api}/api/v1/alerts", timeout=10).read())
        return {a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]}

    assert wait_for(lambda: alerts().get("TickwireFeedGapsRising") in ("pending", "firing"), 30), alerts()
    assert "TickwireFeedSilent" not in alerts() and "TickwireDaemonDown" not in alerts(), alerts()


@contextlib.contextmanager
def page_server(body: bytes):
    """An HTTP server on loopback answering every GET with ``body``; yields its /metrics URL."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/metrics"
    finally:
        srv.shutdown()


def test_status_names_events_for_instruments_the_config_does_not_have(capsys):
    """Events for an instrument missing from the config are stored but applied to no book: the
    status summary says so, by reason (not only `--raw`)."""
    from tickwire.engine.cli import main as cli_main

    body = ("# HELP tickwire_book_rejects_total events a book did not apply, by reason\n"
            'tickwire_book_rejects_total{worker="w0",reason="UNKNOWN_INSTRUMENT"} 31652.0\n'
            'tickwire_book_rejects_total{worker="w1",reason="UNKNOWN_INSTRUMENT"} 10.0\n'
            'tickwire_book_rejects_total{worker="w0",reason="STALE"} 3.0\n'
            'tickwire_book_rejects_total{worker="w0",reason="CROSSED"} 0.0\n'
            'tickwire_events_total{worker="w0"} 100000.0\n').encode()

    with page_server(body) as url:
        assert cli_main(["status", "--url", url]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "books:" in x][0]
    assert "unknown instrument 31,662" in line and "stale 3" in line and "crossed" not in line
    assert "instruments not in the config" in line


def test_status_names_ticks_of_damaged_or_removed_spill_files(capsys):
    """Ticks of a spill file set aside as corrupt or removed by hand are lost from the store: the
    status summary says how many (it showed only rows written and spilled)."""
    from tickwire.engine.cli import main as cli_main

    body = ('tickwire_events_total{worker="w0"} 100000.0\n'
            'tickwire_writer_rows_corrupt_total{worker="w0"} 3000.0\n'
            'tickwire_writer_rows_missing_total{worker="w0"} 16384.0\n'
            'tickwire_writer_rows_missing_total{worker="w1"} 0.0\n'
            'tickwire_signals_missing_total 12.0\n').encode()
    with page_server(body) as url:
        assert cli_main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "19,384 ticks of damaged or removed spill files NOT stored" in out, out
    assert "12 signals of damaged or removed spill files NOT stored" in out, out
    with page_server(b'tickwire_events_total{worker="w0"} 1.0\n') as url:
        assert cli_main(["status", "--url", url]) == 0
    assert "spill files NOT stored" not in capsys.readouterr().out


def test_status_says_a_p99_past_the_top_bucket_and_the_writers_restarts(capsys):
    """Found by an adversarial pass: 66 of 5,276 decode samples over 10 s, and status printed the
    top bucket's edge (10,000,000.0 us) as the p99 (10.85 s in the HDR log); the writer's restarts
    were not in the summary (the restarts shown were the workers')."""
    from tickwire.engine.cli import main as cli_main

    def hist(stage, counts):
        les = ["0.001", "1.0", "10.0", "+Inf"]
        return "".join(f'tickwire_latency_seconds_bucket{{worker="w0",stage="{stage}",le="{le}"}} {c}.0\n'
                       for le, c in zip(les, counts))

    body = ('tickwire_events_total{worker="w0"} 100000.0\n'
            'tickwire_writer_up 1.0\ntickwire_writer_restarts_total 2.0\n'
            + hist("decode", [5000, 5200, 5210, 5276]) + hist("engine", [5000, 5270, 5276, 5276])).encode()
    with page_server(body) as url:
        assert cli_main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "p99 w0 decode: over 10,000,000 us, past the top bucket" in out, out
    engine = next(x for x in out.splitlines() if "p99 w0 engine" in x)
    assert "past the top bucket" not in engine and " us (since start" in engine
    assert "writer: up 1, restarts 2" in out
    # a worker that cannot write its status (its state disk full): figures frozen, not stalled
    body += b'tickwire_worker_status_frozen_seconds{worker="w0"} 42.0\ntickwire_worker_status_age_seconds{worker="w0"} 0.3\n'
    with page_server(body) as url:
        assert cli_main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "FIGURES FROZEN: w0 cannot write its status for 42 s" in out and "STALLED" not in out, out


@pytest.mark.parametrize("body", [b"<html>a web page</html>\n", b"tickwire_events_total{worker=\"w0\"} lots\n"])
def test_status_of_something_that_is_not_a_tickwire_metrics_endpoint_says_so(capsys, body):
    """Any page that answered 200 was summarised as a daemon with 0 events and 0 workers up, exit
    0; a tickwire_ line whose value is not a number was a ValueError traceback."""
    from tickwire.engine.cli import main as cli_main

    with page_server(body) as url:
        assert cli_main(["status", "--url", url]) == 1
    out = capsys.readouterr()
    assert "is not a tickwire daemon's metrics endpoint" in out.err and "daemon at" not in out.out


@pytest.mark.parametrize("body", [bytes(range(256)) * 4,
                                  b'tickwire_events_total{worker="w0"} 5\n'
                                  b'tickwire_latency_seconds_bucket{worker="w0",stage="book",le="abc"} 3\n'
                                  b'tickwire_latency_seconds_bucket{worker="w0",stage="book"} 3\n'])
def test_status_of_bytes_that_are_not_text_or_buckets_that_are_not_ours(capsys, body):
    """Bytes that are not UTF-8 were "--url: 'utf-8' codec can't decode ..." (exit 2, the URL
    blamed); a tickwire_latency_seconds_bucket line without a numeric le was a traceback (an
    adversarial pass)."""
    from tickwire.engine.cli import main as cli_main

    with page_server(body) as url:
        code = cli_main(["status", "--url", url])
    out = capsys.readouterr()
    if body.startswith(b"tickwire_"):
        assert code == 0 and "daemon at" in out.out, out
    else:
        assert code == 1 and "not UTF-8 text" in out.err and "--url" not in out.err, out


def test_status_of_a_daemon_with_no_figures_yet_says_it_is_starting(capsys):
    """A daemon waiting at its start (an earlier daemon's stopped worker holding a ring) serves its
    metrics' HELP and TYPE lines and no sample: it was called "not a tickwire daemon's metrics
    endpoint" (an adversarial pass)."""
    from tickwire.engine.cli import main as cli_main

    body = (b"# HELP tickwire_events_total Market events processed\n# TYPE tickwire_events_total counter\n"
            b"# HELP tickwire_signals_total Signals emitted\n# TYPE tickwire_signals_total counter\n")
    with page_server(body) as url:
        assert cli_main(["status", "--url", url]) == 1
    err = capsys.readouterr().err
    assert "has no figures yet: no worker of it has reported" in err and "not a tickwire daemon" not in err, err


def status_of_a_server_answering(reply: bytes) -> int:
    """``tickwire status --url`` against a one-shot server on loopback that answers ``reply`` to
    whatever it is sent: its exit status."""
    import socket
    import threading

    from tickwire.engine.cli import main as cli_main

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def answer():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(reply)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        return cli_main(["status", "--url", f"http://127.0.0.1:{srv.getsockname()[1]}/metrics"])
    finally:
        srv.close()


def test_status_of_a_server_that_speaks_no_http_is_one_line(capsys):
    """A port held by something that is not an HTTP server (it answers an SSH banner) was an
    http.client.BadStatusLine traceback."""
    assert status_of_a_server_answering(b"SSH-2.0-OpenSSH_9.2\r\n") == 1
    err = capsys.readouterr().err
    assert err.startswith("tickwire status: cannot read http://127.0.0.1:") and "BadStatusLine" in err and "Traceback" not in err


def test_status_prints_what_an_endpoint_answered_with_its_control_characters_escaped(capsys):
    """Found by an adversarial pass: a non-HTTP endpoint's status line was printed raw: its ESC
    sequences cleared the screen, set the terminal's title and printed a fake "daemon healthy".
    The labels of a page's samples (worker, stage names printed in the summary) are escaped too."""
    assert status_of_a_server_answering(b"\x1b[2J\x1b]0;PWNED\x07\x1b[31mfake: daemon healthy\x1b[0m\r\n\r\n") == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b[2J\\x1b]0;PWNED\\x07" in err, err
    body = ('tickwire_events_total{worker="w0"} 5.0\n'
            'tickwire_worker_status_frozen_seconds{worker="\x1b]0;PWNED\x07"} 42.0\n'
            'tickwire_latency_seconds_bucket{worker="\x1b[2J",stage="book",le="+Inf"} 3.0\n').encode()
    from tickwire.engine.cli import main as cli_main

    with page_server(body) as url:
        assert cli_main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "FIGURES FROZEN: \\x1b]0;PWNED\\x07 cannot" in out, out


@pytest.mark.parametrize("head", [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"HTTP/1.1 200 OK\r\nX-Slow: "],
                         ids=["page", "headers"])
def test_status_of_a_server_that_drips_its_page_gives_up_at_its_bound(capsys, monkeypatch, head):
    """The socket timeout is per read: a server sending a byte every 0.2 s held status for as long
    as it liked (81 s in an adversarial pass; its headers so, in a review). Now the request has a
    bound of its own."""
    import socket
    import threading

    from tickwire.engine import cli

    monkeypatch.setattr(cli, "STATUS_MAX_SECONDS", 1.0)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    stop = threading.Event()

    def answer():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(head)
        while not stop.wait(0.2):
            try:
                conn.sendall(b"#")
            except OSError:
                break
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    t0 = time.monotonic()
    try:
        assert cli.main(["status", "--url", f"http://127.0.0.1:{srv.getsockname()[1]}/metrics"]) == 1
    finally:
        stop.set()
        srv.close()
    assert time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert "took more than 1 s" in err and "Traceback" not in err, err


def test_status_of_a_run_whose_daemon_is_gone_says_so_even_if_its_metrics_port_answers(tmp_path, capsys):
    """A daemon killed -9 leaves its metrics.url; the port in it may be another daemon's by now
    (two runs on the default 9464): `tickwire status --config` asks the run's daemon lock first,
    rather than printing another daemon's figures as this run's."""
    from tickwire.engine.cli import main as cli_main
    from tickwire.engine.config import to_toml
    from tickwire.engine.demo import demo_raw_config

    with page_server(b"tickwire_events_total 123\n") as url:        # the other daemon's
        cfg = tmp_path / "gone.toml"
        cfg.write_text(to_toml(demo_raw_config(tmp_path / "state", run="gone")))
        run_dir = tmp_path / "state" / "gone"
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.url").write_text(url + "\n")
        (run_dir / "daemon.lock").write_text("12345\n")                # left behind, held by nobody
        assert cli_main(["status", "--config", str(cfg)]) == 1
        err = capsys.readouterr().err
        assert "no tickwire daemon is running for run 'gone'" in err, err
    assert cli_main(["status", "--url", "notaurl"]) == 2
    assert "--url: unknown url type" in capsys.readouterr().err
