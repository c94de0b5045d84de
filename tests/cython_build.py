"""Build a user's Cython module against tickwire's installed .pxd files (the 'extending' tests)."""

import subprocess
import sys
import textwrap

import tickwire

_SETUP = textwrap.dedent('''
    import sys
    from setuptools import setup, Extension
    from Cython.Build import cythonize
    name = sys.argv.pop(1)
    inc = sys.argv.pop(1).split("|")
    setup(name=name, ext_modules=cythonize(
        [Extension(name, [name + ".pyx"], include_dirs=inc)],
        include_path=inc, quiet=True), script_args=["build_ext", "--inplace", "-q"])
''')


def build_module(tmp_path, name, source):
    """Compile ``source`` as module ``name`` in ``tmp_path`` with ``tickwire.get_include()`` and
    import it."""
    (tmp_path / f"{name}.pyx").write_text(source)
    (tmp_path / "setup.py").write_text(_SETUP)
    build = subprocess.run([sys.executable, "setup.py", name, "|".join(tickwire.get_include())],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
