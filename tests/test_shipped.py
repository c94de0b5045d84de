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
