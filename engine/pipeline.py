"""The engine pipeline's configuration, and the engine itself.

:class:`~tickwire.ext.pipeline.Engine` (compiled) runs batches of canonical events through
books, rolling statistics and signal rules; this module holds what configures it:

- :class:`StatsConfig`: which windows feed the statistics of an instrument.
- :class:`RuleConfig`: one built-in rule (kind, thresholds with hysteresis, instruments).

Custom rules are :class:`~tickwire.ext.pipeline.Rule` subclasses written in Cython (fast)
or plain Python callables (slow; see docs/rules.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from tickwire.ext.pipeline import STAGES, Engine, PyRule, Rule, RuleContext
from tickwire.ext.stats import MAX_WINDOW_NS, MAX_WINDOW_SAMPLES

__all__ = ["Engine", "Rule", "PyRule", "RuleContext", "RuleConfig", "StatsConfig", "STAGES", "RULE_KINDS", "own_rules"]

#: Built-in rule kinds and what their value measures.
RULE_KINDS = {
    "microprice": "microprice minus mid, in ticks (two-sided)",
    "imbalance": "top-k book imbalance (bid - ask) / (bid + ask), -1..1 (two-sided)",
    "zscore": "z-score of mid against its rolling window (two-sided)",
    "spread": "spread over its rolling mean, a ratio (one-sided: fires on a blow-out)",
    "vwap": "mid minus the rolling trade VWAP, in basis points of the VWAP (two-sided)",
    "ewma_cross": "fast minus slow EWMA of mid, in ticks (fires on each crossing beyond enter)",
}


def _positive_int(owner: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{owner}.{name}: expected a positive integer, got {value!r}")


def _finite(x) -> bool:
    """A finite int or float, not a bool (True would be a threshold of 1; inf, one never reached)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class StatsConfig:
    """Statistics of one instrument.

    Parameters
    ----------
    window : {"count", "time"}
        Window of the book series (mid, spread, mid log-returns).
    window_size : int
        Samples (count) or nanoseconds (time).
    trade_window, trade_window_size :
        The same for trades (VWAP, trade-flow imbalance).
    imbalance_depth : int
        Levels per side in the top-k imbalance.
    ewma_fast_halflife_ns, ewma_slow_halflife_ns : int
        Half-lives of the two EWMAs of mid.
    sample : {"event", "message"}
        Feed the book series after every book change, or only at the end of each exchange
        message (events flagged LAST), where the book is consistent.
    extrema : bool
        Track rolling min/max of mid (two monotonic deques, ~15 ns an update).
    max_capacity : int
        Largest number of samples a time window holds.
    """

    window: str = "count"
    window_size: int = 1000
    trade_window: str = "count"
    trade_window_size: int = 1000
    imbalance_depth: int = 5
    ewma_fast_halflife_ns: int = 1_000_000_000
    ewma_slow_halflife_ns: int = 10_000_000_000
    sample: str = "event"
    extrema: bool = True
    max_capacity: int = 1 << 22

    def __post_init__(self):
        for name in ("window", "trade_window"):
            if getattr(self, name) not in ("count", "time"):
                raise ValueError(f"stats.{name}: expected 'count' or 'time', got {getattr(self, name)!r}")
        for name in ("window_size", "trade_window_size", "imbalance_depth", "ewma_fast_halflife_ns",
                     "ewma_slow_halflife_ns", "max_capacity"):
            _positive_int("stats", name, getattr(self, name))
        if self.sample not in ("event", "message"):
            raise ValueError(f"stats.sample: expected 'event' or 'message', got {self.sample!r}")
        for name, kind in (("window_size", self.window), ("trade_window_size", self.trade_window),
                           ("max_capacity", "count")):
            limit = MAX_WINDOW_SAMPLES if kind == "count" else MAX_WINDOW_NS
            if getattr(self, name) > limit:
                raise ValueError(f"stats.{name}: expected at most {limit} "
                                 f"({'samples' if kind == 'count' else 'ns'}), got {getattr(self, name)!r}")


@dataclass(frozen=True)
class RuleConfig:
    """One built-in signal rule.

    Parameters
    ----------
    kind : str
        One of :data:`RULE_KINDS`.
    enter : float
        Fires when the value reaches it (in absolute value for two-sided rules).
    exit : float
        Re-arms when the value falls back to it (hysteresis: ``0 <= exit < enter``); until
        then the rule does not fire again in the same direction (not ewma_cross: it fires at
        each change of side).
    min_count : int
        Samples its window must hold first (zscore, spread, vwap, ewma_cross; the others have
        no window: 1).
    instruments : sequence of int, optional
        Instrument ids it applies to (default all).
    emit_exit : bool
        Also emit a signal (flag EXIT, direction 0) when the condition ends (not ewma_cross).
    """

    kind: str
    enter: float
    exit: float = 0.0
    min_count: int = 1
    instruments: Optional[Sequence[int]] = None
    emit_exit: bool = False

    def __post_init__(self):
        if self.kind not in RULE_KINDS:
            raise ValueError(f"rule.kind: expected one of {sorted(RULE_KINDS)}, got {self.kind!r}")
        if not (_finite(self.enter) and self.enter > 0):
            raise ValueError(f"rule {self.kind}: enter must be a positive finite number, got {self.enter!r}")
        if not (_finite(self.exit) and 0 <= self.exit < self.enter):
            raise ValueError(f"rule {self.kind}: exit must satisfy 0 <= exit < enter ({self.enter}), got {self.exit!r}")
        _positive_int(f"rule {self.kind}", "min_count", self.min_count)
        # settings a kind has no use for are refused, not taken and ignored (an adversarial pass:
        # SIGHUP said 'rule thresholds reloaded' for an ewma_cross exit that changed nothing)
        if self.kind in ("microprice", "imbalance") and self.min_count != 1:
            raise ValueError(f"rule {self.kind}: min_count does not apply (it counts a window's samples: "
                             f"zscore, ewma_cross, spread, vwap); leave it out, got {self.min_count!r}")
        if self.kind == "ewma_cross" and (self.exit != 0 or self.emit_exit):
            key = "exit" if self.exit != 0 else "emit_exit"
            raise ValueError(f"rule ewma_cross: {key} does not apply (the crossover fires at each change of "
                             f"side beyond enter and never re-arms or ends); leave it out, got "
                             f"{getattr(self, key)!r}")
        if self.instruments is not None:
            ids = self.instruments
            # ("10" was instruments 1 and 0, [2.9] instrument 2, 5 a bare TypeError: an adversarial pass)
            ok = not isinstance(ids, (str, bytes)) and hasattr(ids, "__iter__")
            ids = list(ids) if ok else ids
            # (empty is taken here: own_rules narrows a rule to none of a worker's or a replay's
            # instruments; the config files refuse it, a rule that could never fire)
            if not ok or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 for i in ids):
                raise ValueError(f"rule {self.kind}: instruments must be a sequence of instrument ids "
                                 f"(integers >= 0; for all of them, leave it out), got {self.instruments!r}")
            object.__setattr__(self, "instruments", tuple(int(i) for i in ids))


def own_rules(rules, instruments) -> list:
    """``rules`` (in their order: a signal's ``rule_id`` is its index) with each rule's
    ``instruments`` narrowed to ``instruments``, those a worker serves or a replay has: a rule
    named for others only applies to none there (the engine refused ids it has no book for: a
    worker died at every start until the daemon gave up, and a replay with ``--instruments`` was
    a traceback; both found by adversarial passes). Rules that are not :class:`RuleConfig`
    (Python rules) are kept as they are."""
    mine = set(instruments)
    return [dataclasses.replace(r, instruments=[i for i in r.instruments if i in mine])
            if isinstance(r, RuleConfig) and r.instruments is not None else r for r in rules]
