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


def pin(core: int = 1) -> str:
    """Pin this process to ``core`` (the engine's core on a 2-core machine) if it exists."""
    try:
        cores = os.sched_getaffinity(0)
        target = core if core in cores or core < os.cpu_count() else min(cores)
        os.sched_setaffinity(0, {target})
        return f"pinned to core {target} of {os.cpu_count()}"
    except (AttributeError, OSError) as exc:
        return f"not pinned ({exc})"


def bench_ext(name: str = "io_bench"):
    """Import the benchmark-only extension ``benchmarks/cext/<name>.pyx``, compiling it first
    (release flags, -O3) into ``build/bench-ext`` when it is missing or older than its sources or
    tickwire's ``.pxd``/``.h`` files.  It is never part of the wheel: setup.py does not see it."""
    import importlib
    import subprocess

    root = Path(__file__).resolve().parent.parent
    src = root / "benchmarks" / "cext"
    out = root / "build" / "bench-ext"
    deps = [*src.glob("*.pyx"), *src.glob("*.h"), *(root / "ext").glob("*.pxd"), *(root / "ext").glob("*.h")]
    built = sorted(out.glob(f"{name}.*.so"))
    if not built or built[0].stat().st_mtime < max(d.stat().st_mtime for d in deps):
        print(f"(compiling benchmarks/cext/{name}.pyx into build/bench-ext)", file=sys.stderr, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        code = f"""
from Cython.Build import cythonize
from setuptools import Extension, setup
ext = Extension({name!r}, [{str(src / (name + ".pyx"))!r}], include_dirs=[{str(root / "ext")!r}, {str(src)!r}],
                extra_compile_args=["-O3", "-Wno-unused-function", "-Wno-unreachable-code"])
setup(name="tickwire-bench-ext", packages=[], py_modules=[],
      script_args=["-q", "build_ext", "--build-lib", ".", "--build-temp", "tmp"],
      ext_modules=cythonize([ext], include_path=[{str(root / "build" / "pxd")!r}, {str(root / "ext")!r}],
                            build_dir="c", quiet=True, compiler_directives={{"language_level": 3}}))
"""
        subprocess.run([sys.executable, "-c", code], check=True, cwd=out)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module(name)


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
