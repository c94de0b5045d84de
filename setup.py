"""Build tickwire: the `tickwire` package with its four mapped subpackages and the Cython extensions.

Switches (environment variables read at build time):

- ``TICKWIRE_DEBUG=1``: debug build: -O0 -g, bounds/initialisation checks and C asserts on,
  Cython line tracing, annotated HTML beside the generated C in ``build/cython-debug``.
- ``TICKWIRE_NATIVE=1``: add ``-march=native`` (host-tuned; never for wheels you ship).
- ``TICKWIRE_ANNOTATE=1``: write Cython's annotated HTML for a release build too.
- ``TICKWIRE_BUILD_JOBS=N``: translate and compile the extensions N at a time (``./dev`` sets it
  to the number of cores).
- ``TICKWIRE_CYTHON_DIR=DIR``: where cythonize writes the generated C (and annotated HTML),
  default ``build/cython-<mode>``.  Cythonizing happens when this file is loaded, so
  ``TICKWIRE_ANNOTATE=1 TICKWIRE_CYTHON_DIR=/tmp/x python setup.py --name`` writes the release
  build's annotated HTML there without compiling anything or touching the in-place build
  (``benchmarks/hotpath_report.py --annotate`` does exactly that).
"""

import os
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).parent.resolve()
SUBPACKAGES = ("engine", "ext", "feeds", "replay")
DEBUG = os.environ.get("TICKWIRE_DEBUG", "0") not in ("", "0")
NATIVE = os.environ.get("TICKWIRE_NATIVE", "0") not in ("", "0")
ANNOTATE = DEBUG or os.environ.get("TICKWIRE_ANNOTATE", "0") not in ("", "0")
# (the debug build always annotates; its C is regenerated whenever a source changes)
MODE = "debug" if DEBUG else "release"
JOBS = int(os.environ.get("TICKWIRE_BUILD_JOBS", "0") or 0)
CYTHON_DIR = os.environ.get("TICKWIRE_CYTHON_DIR") or f"build/cython-{MODE}"


def pxd_tree() -> Path:
    """A tree ``build/pxd/tickwire/<sub> -> <sub>/`` so that `cimport tickwire.ext.x` finds
    ``tickwire/ext/x.pxd`` on disk, which the package_dir mapping alone does not provide."""
    top = ROOT / "build" / "pxd"
    pkg = top / "tickwire"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.pxd").touch()
    for sub in SUBPACKAGES:
        link = pkg / sub
        target = ROOT / sub
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return top


def extensions():
    from Cython.Build import cythonize

    if DEBUG:
        cflags = ["-O0", "-g3", "-UNDEBUG"]
        macros = [("TW_DEBUG_BUILD", "1"), ("CYTHON_TRACE", "1")]
    else:
        cflags = ["-O3"]
        macros = []
    if NATIVE:
        cflags.append("-march=native")
    cflags += ["-Wno-unused-function", "-Wno-unreachable-code"]
    mods = [
        Extension(
            f"tickwire.ext.{pyx.stem}",
            [f"ext/{pyx.name}"],
            include_dirs=["ext"],
            define_macros=macros,
            extra_compile_args=cflags,
        )
        for pyx in sorted((ROOT / "ext").glob("*.pyx"))
    ]
    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": False,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
        "linetrace": DEBUG,
    }
    return cythonize(
        mods,
        compiler_directives=directives,
        include_path=[str(pxd_tree()), "ext"],
        build_dir=CYTHON_DIR,
        annotate=ANNOTATE,
        force=ANNOTATE and not DEBUG,      # an explicit annotate request regenerates the C
        quiet=True,
        nthreads=JOBS if JOBS > 1 else 0,
    )


setup(
    packages=["tickwire"] + [f"tickwire.{sub}" for sub in SUBPACKAGES],
    package_dir={"tickwire": "tickwire", **{f"tickwire.{sub}": sub for sub in SUBPACKAGES}},
    package_data={
        "tickwire": ["py.typed"],
        "tickwire.ext": ["*.pxd", "*.h", "*.pyi"],
        "tickwire.engine": ["*.toml"],
    },
    ext_modules=extensions(),
    # release and debug builds keep their objects apart, so switching never links stale ones
    options={"build": {"build_base": f"build/{MODE}"},
             **({"build_ext": {"parallel": JOBS}} if JOBS > 1 else {})},
    zip_safe=False,
)
