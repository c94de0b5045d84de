"""The shipped extension modules carry no benchmark scaffolding (it lives in benchmarks/cext)."""

import importlib

import pytest


@pytest.mark.parametrize("name", ["ring", "hdr", "codec"])
def test_no_bench_helpers_in_shipped_modules(name):
    mod = importlib.import_module(f"tickwire.ext.{name}")
    helpers = [a for a in dir(mod) if a.startswith(("_bench", "_raw_"))]
    assert helpers == [], f"tickwire.ext.{name} ships benchmark helpers: {helpers}"


def test_ring_header_has_no_limit_loops():
    from pathlib import Path
    import tickwire.ext

    header = Path(tickwire.ext.__file__).with_name("tw_ring.h").read_text()
    assert "tw_limit_" not in header


def test_the_source_distribution_carries_the_sources_and_none_of_the_build(tmp_path):
    """Found by an adversarial pass: the sdist had no .pyx (setup.py would build no extension) but
    build/'s generated C and the pxd tree's links copied in as directories (IsADirectoryError), so
    `python -m build` failed on a fresh clone. MANIFEST.in now says what it carries."""
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    tar, = tmp_path.glob("tickwire-*.tar.gz")
    names = [n.split("/", 1)[1] for n in tarfile.open(tar).getnames() if "/" in n]
    pyx = sorted(p.name for p in (root / "ext").glob("*.pyx"))
    assert sorted(Path(n).name for n in names if n.startswith("ext/") and n.endswith(".pyx")) == pyx
    assert {"ext/book.pxd", "ext/tw_ring.h", "setup.py", "pyproject.toml", "engine/tickwire.example.toml"} <= set(names)
    assert not [n for n in names if n.startswith(("build/", "tests/")) or n.endswith((".so", ".c"))], names


def test_the_built_package_carries_what_the_installed_tickwire_reads(tmp_path):
    """Found by a packaging pass (a wheel installed in a fresh venv): the package data a wheel gets
    is what build_py copies. The example configs (config.EXAMPLE_PATH, `tickwire bench`'s default),
    the .pxd and headers users' Cython cimports (tickwire.get_include()), and, since the package
    claims py.typed, a stub for every compiled module: without one mypy failed
    `from tickwire.ext.ring import Ring` with import-not-found."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    pkg = tmp_path / "tickwire"
    assert (pkg / "py.typed").is_file()
    assert (pkg / "engine" / "tickwire.example.toml").is_file() and (pkg / "engine" / "kraken.example.toml").is_file()
    shipped = {p.name for p in (pkg / "ext").iterdir()}
    src = root / "ext"
    wanted = {p.name for p in src.iterdir() if p.suffix in (".pxd", ".h")}
    wanted |= {f"{p.stem}.pyi" for p in src.glob("*.pyx")}
    assert wanted <= shipped, sorted(wanted - shipped)
    # an installed tickwire (subpackages inside the package) is no checkout: its hints say so
    code = "import tickwire; print(tickwire.source_checkout())"
    out = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.stdout.strip() == "None", out.stderr[-2000:]


def test_an_installed_tickwire_names_its_own_example_config_and_extras():
    """Found by a packaging pass: from a wheel, `tickwire run --help` named engine/tickwire.example.toml
    (a checkout's path), `tickwire bridge` said "pip install -e '.[cryptofeed]' in the checkout" and a
    missing matplotlib "in the checkout: .venv/bin/pip install ...". Installed, they name the
    installed example (and say to copy it: its relative state_dir would put the store inside the
    package) and the extras."""
    import subprocess
    import sys

    import tickwire
    from tickwire.engine.config import EXAMPLE_PATH

    assert tickwire.source_checkout() is not None          # the tests run on the checkout's build
    code = ("import tickwire; tickwire.source_checkout = lambda: None\n"
            "from tickwire.engine.plots import MATPLOTLIB_HINT\n"
            "from tickwire.feeds.cryptofeed import EXTRA\n"
            "from tickwire.engine.cli import build_parser\n"
            "p = build_parser(); sub = p._subparsers._group_actions[0].choices\n"
            "print(MATPLOTLIB_HINT); print(EXTRA); print(sub['run'].description); print(sub['bridge'].description)\n")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    hint, extra, run, bridge = out.stdout.split("\n", 3)
    assert hint == "pip install 'tickwire[report]' (the report extra: matplotlib)"
    assert extra == "pip install 'tickwire[cryptofeed]'"
    assert str(EXAMPLE_PATH) in run and " engine/tickwire.example.toml" not in run and "Copy an example" in run
    assert str(EXAMPLE_PATH.with_name("kraken.example.toml")) in bridge and "-e '.[cryptofeed]'" not in bridge
    assert " engine/kraken.example.toml" not in bridge and "Copy an example" in bridge


def test_a_daemon_whose_state_dir_is_inside_the_package_is_refused(tmp_path):
    """Found by a packaging pass: an installed tickwire's example config run in place
    (`tickwire run --config .../site-packages/tickwire/engine/tickwire.example.toml`) resolves its
    relative state_dir ("../tickwire-data") inside the package, where the store, spill files and
    logs went (or the start failed on a root-owned install). Refused with one line, nothing made."""
    import subprocess
    import sys
    import uuid
    from pathlib import Path

    import tickwire
    from tickwire.engine.config import EXAMPLE_PATH

    inside = Path(tickwire.__file__).resolve().parent / f"tickwire-data-{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(EXAMPLE_PATH.read_text().replace('state_dir = "../tickwire-data"', f'state_dir = "{inside}"'))
    assert str(inside) in cfg.read_text()
    out = subprocess.run([sys.executable, "-m", "tickwire", "run", "--config", str(cfg), "--duration", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "is inside the installed tickwire package" in out.stderr \
        and "copy the config to a folder of your own" in out.stderr, out.stderr[-2000:]
    assert not inside.exists()
