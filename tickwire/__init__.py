"""tickwire: low-latency tick processing with a Cython core.

The package is split into subpackages that live in their own top-level folders of the
source tree: :mod:`tickwire.engine` (pipeline, daemon, config, CLI), :mod:`tickwire.ext`
(the compiled Cython core), :mod:`tickwire.feeds` (ZeroMQ feeds, wire format, captures)
and :mod:`tickwire.replay` (stored ticks back through the engine).
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

__all__ = ["__version__", "get_include", "source_checkout"]


def source_checkout() -> Path | None:
    """The root of the source checkout this tickwire runs from (an editable install), or None when
    it is installed from a wheel or an sdist (then the subpackages live inside ``tickwire/``).

    Help texts and hints use it to name what a user of each can do: ``engine/tickwire.example.toml``
    and ``.venv/bin/pip`` exist only in a checkout; an installed tickwire has the extras
    (``pip install 'tickwire[report]'``) and the example configs inside the package.
    """
    pkg_dir = Path(__file__).resolve().parent
    if (pkg_dir / "ext").is_dir():
        return None
    root = pkg_dir.parent
    return root if (root / "setup.py").is_file() and (root / "ext").is_dir() else None


def get_include() -> list[str]:
    """Directories to add to Cython's include path (and the C compiler's) to ``cimport tickwire``.

    From an installed wheel this is the directory holding the ``tickwire`` package plus
    ``tickwire/ext`` for the C headers; from an editable install of a source checkout it
    is the checkout's ``build/pxd`` tree (made by ``setup.py``) plus ``ext/``.
    """
    import tickwire.ext as ext

    ext_dir = Path(ext.__file__).resolve().parent
    pkg_dir = Path(__file__).resolve().parent
    if (pkg_dir / "ext" / "book.pxd").exists():
        return [str(pkg_dir.parent), str(pkg_dir / "ext")]
    return [str(ext_dir.parent / "build" / "pxd"), str(ext_dir)]
