"""Build benchmark-only Cython modules on demand, in release mode (-O3), against tickwire's .pxd
and .h files: ``benchmarks/<name>.pyx`` or ``benchmarks/cext/<name>.pyx`` (with the C headers
beside it). Cached in build/bench and rebuilt when the source, a header beside it or one of
tickwire's .pxd/.h files changes. Never part of the wheel: setup.py does not see them."""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build" / "bench"

_SETUP = '''
import sys
from setuptools import setup, Extension
from Cython.Build import cythonize
name, src, inc = sys.argv[1], sys.argv[2], sys.argv[3].split("|")
sys.argv[1:] = ["build_ext", "--inplace", "-q"]
setup(name=name, ext_modules=cythonize(
    [Extension(name, [src], include_dirs=inc,
               extra_compile_args=["-O3", "-Wno-unused-function", "-Wno-unreachable-code"])],
    include_path=inc, quiet=True, build_dir="c",
    compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                         "initializedcheck": False, "cdivision": True}))
'''


def load(name: str):
    """Import benchmarks/<name>.pyx, compiling it first if it changed."""
    import tickwire
    from tickwire.ext import BUILD

    if BUILD != "release":
        sys.exit(f"tickwire's {BUILD} build is loaded: never benchmark a debug build (./dev build)")
    src = HERE / f"{name}.pyx"
    if not src.exists():
        src = HERE / "cext" / f"{name}.pyx"
    inc = [*tickwire.get_include(), str(src.parent)]
    deps = [src, *sorted(src.parent.glob("*.h"))]
    for d in tickwire.get_include():
        deps += sorted(Path(d).glob("*.pxd")) + sorted(Path(d).glob("*.h"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in deps) + "|".join(inc).encode()).hexdigest()[:16]
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = OUT / f"{name}.stamp"
    # one build at a time: a benchmark's two processes (producer and consumer) each built it at
    # their first use once tickwire's headers changed, and one's build deleted the other's .so
    # (bench_ring's child died; its parent waited 600 s, then a traceback)
    with open(OUT / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == digest and list(OUT.glob(f"{name}.*.so"))):
            print(f"# compiling benchmarks/{name}.pyx (benchmark-only helpers)", file=sys.stderr, flush=True)
            (OUT / f"setup_bench_{name}.py").write_text(_SETUP)
            run = subprocess.run([sys.executable, f"setup_bench_{name}.py", name, str(src), "|".join(inc)], cwd=OUT,
                                 capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"compiling benchmarks/{name}.pyx failed:\n{run.stderr[-3000:]}")
            stamp.write_text(digest)
    if str(OUT) not in sys.path:
        sys.path.insert(0, str(OUT))
    return importlib.import_module(name)
