"""Helpers shared by the benchmark scripts: pinning, repeated timing, tables."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


#: the extra that installs each peer (pyproject.toml)
_EXTRA_OF = {"numba": "bench", "hftbacktest": "bench", "nautilus_trader": "bench", "pandas": "dev",
             "order_book": "dev", "sortedcontainers": "dev", "faster_fifo": "dev"}


def require(*modules: str) -> None:
    """Stop with one line naming the missing peers and the extra that installs them (a script
    run from the venv `./dev demo` makes died in a ModuleNotFoundError traceback)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        extras = sorted({_EXTRA_OF.get(m, "bench") for m in missing})
        print(f"{Path(sys.argv[0]).name}: needs {', '.join(missing)} (the {' and '.join(extras)} extra: "
              f"`./dev bench` installs both, or `.venv/bin/pip install -e '.[dev,bench]'`)", file=sys.stderr)
        sys.exit(2)


def pin(core: int = 1) -> str:
    """Pin this process to ``core`` (the engine's core on a 2-core machine) if it exists."""
    try:
        cores = os.sched_getaffinity(0)
        target = core if core in cores or core < os.cpu_count() else min(cores)
        os.sched_setaffinity(0, {target})
        return f"pinned to core {target} of {os.cpu_count()}"
    except (AttributeError, OSError) as exc:
        return f"not pinned ({exc})"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def median_time(fn, repeats: int = 5, setup=None) -> float:
    """Median wall time of ``fn(state)`` over ``repeats`` runs, each after a fresh ``setup()``."""
    times = []
    for _ in range(repeats):
        state = setup() if setup else None
        t0 = time.perf_counter()
        fn(state)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def describe_run(pinned: str) -> str:
    from tickwire.ext import BUILD

    return f"python {platform.python_version()}, tickwire {BUILD} build, {pinned}"


def apply_levels(bids, asks, rows) -> None:
    """The Python loop every dict-like peer book gets: set each level's quantity, delete at 0.

    One definition, so that every peer pays exactly the same loop overhead."""
    books = (bids, asks)
    for side, price, qty in rows:
        levels = books[side]
        if qty:
            levels[price] = qty
        elif price in levels:
            del levels[price]


def table(rows, columns) -> None:
    """Print rows (lists) under column titles, right-aligned numbers."""
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    line = "  " + "  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
                            for i, c in enumerate(columns))
    print(line)
    for r in rows:
        print("  " + "  ".join(str(v).ljust(widths[0]) if i == 0 else str(v).rjust(widths[i])
                               for i, v in enumerate(r)))
