"""Replay memory stays flat whatever the range (issue 16): the peak resident set of a replay from
a real embedded store, each in a fresh process, of a store and of one four times as long (the
same stream repeated later in time), with three rules and the signals counted, not kept.
Anything kept per event across the run (events, the store's columns) would add about 100 MiB at
4x; the bound is far below that and far above what the store's allocator varies by. Peak RSS is
the process's own ``VmHWM``, not ``ru_maxrss`` (a process started by ``subprocess`` inherits its
parent's peak there)."""

import subprocess
import sys

import pytest

from tickwire.engine.store import Store
from tickwire.feeds.synthetic import l2_updates, synthetic_instruments

PY = sys.executable
N = 500_000                      # events of the 1x store (4 instruments)
CHUNK = 16_384                   # rows per read window and chunk: ~30 windows at 1x, ~120 at 4x
SCALE = 4
#: Allowed growth of the peak from 1x to 4x. Kept per event, 3 x N more events would add
#: 3 x 500,000 x 64 bytes = 92 MiB (keeping the chunks measured +100 MiB); the replay as it is
#: grows by 8-10 MiB (the store's allocator and caches over four times the parts and windows).
BOUND_MIB = 40


PEAK = """
def peak_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

API_CHILD = PEAK + """
import sys
from tickwire.engine.pipeline import RuleConfig, StatsConfig
from tickwire.replay import EngineSpec, Replay, StoreSource
spec = EngineSpec((RuleConfig("zscore", 3.0, 1.0, 100), RuleConfig("imbalance", 0.8, 0.3),
                   RuleConfig("microprice", 2.0, 0.5)), StatsConfig(window="count", window_size=500))
with StoreSource(sys.argv[1], chunk={chunk}) as src:
    res = Replay(src, spec, keep_signals=False).run()
print(res.events, res.signal_count, peak_mib())
"""

@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """chdb DSNs of the 1x and the 4x store."""
    root = tmp_path_factory.mktemp("mem")
    ev = l2_updates(N, seed=7, instruments=4)
    insts = synthetic_instruments(4)
    span = int(ev["ts_event"][-1] - ev["ts_event"][0]) + 1
    dsns = {}
    for scale in (1, SCALE):
        dsn = f"chdb://{root}/x{scale}"
        store = Store.open(dsn)
        store.register_instruments(insts)
        for r in range(scale):
            part = ev.copy()
            part["ts_event"] += r * span
            part["ts_recv"] += r * span
            store.insert_ticks(part, epoch=1, first_ord=r * N, token=f"r{r}")
        store.close()
        dsns[scale] = dsn
    return dsns


def run_child(code, *args):
    out = subprocess.run([PY, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_replay_peak_rss_does_not_grow_with_the_range(stores):
    dsns = stores
    code = API_CHILD.format(chunk=CHUNK)
    got = {s: run_child(code, dsns[s]) for s in (1, SCALE)}
    events = {s: int(got[s][0]) for s in got}
    signals = {s: int(got[s][1]) for s in got}
    peak = {s: float(got[s][2]) for s in got}
    assert events == {1: N, SCALE: SCALE * N}
    assert signals[1] > 1000 and signals[SCALE] > (SCALE - 1) * signals[1]
    assert peak[SCALE] - peak[1] < BOUND_MIB, f"peak RSS {peak[1]:.0f} MiB at 1x, {peak[SCALE]:.0f} MiB at {SCALE}x"
