"""The .pxd C API works from a user's own Cython module (cimport tickwire.ext.book)."""

import subprocess
import sys
import textwrap

import tickwire
from tickwire.ext import L2Book, L3Book

DOWNSTREAM = textwrap.dedent('''
    # cython: language_level=3
    from libc.string cimport memset
    from tickwire.ext.defs cimport tw_event, TW_KIND_ADD, TW_KIND_DELETE, TW_SIDE_BID, TW_SIDE_ASK
    from tickwire.ext.book cimport (Book, tw_book_apply, tw_book_best_price, tw_book_best_qty,
                                    tw_book_add_order, tw_book_spread, tw_book_levels)

    def fill_ladder(Book book, long n):
        """Add n bid levels and n ask levels through the C API, without the GIL."""
        cdef tw_event ev
        cdef long i
        cdef int rejected = 0
        memset(&ev, 0, sizeof(ev))
        ev.instrument = book.c.p.instrument
        ev.kind = TW_KIND_ADD
        with nogil:
            for i in range(n):
                ev.side = TW_SIDE_BID
                ev.price = 1000 - i
                ev.qty = i + 1
                ev.order_id = 2 * i + 1
                rejected += tw_book_apply(&book.c, &ev) != 0
                ev.side = TW_SIDE_ASK
                ev.price = 1001 + i
                ev.order_id = 2 * i + 2
                rejected += tw_book_apply(&book.c, &ev) != 0
        return rejected, tw_book_best_price(&book.c, TW_SIDE_BID), tw_book_best_qty(&book.c, TW_SIDE_ASK), tw_book_spread(&book.c)
''')

SETUP = textwrap.dedent('''
    import sys
    from setuptools import setup, Extension
    from Cython.Build import cythonize
    inc = sys.argv.pop(1).split("|")
    setup(name="downstream", ext_modules=cythonize(
        [Extension("downstream", ["downstream.pyx"], include_dirs=inc)],
        include_path=inc, quiet=True), script_args=["build_ext", "--inplace", "-q"])
''')


def test_user_cython_module_drives_books_through_the_pxd(tmp_path):
    (tmp_path / "downstream.pyx").write_text(DOWNSTREAM)
    (tmp_path / "setup.py").write_text(SETUP)
    build = subprocess.run([sys.executable, "setup.py", "|".join(tickwire.get_include())],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    sys.path.insert(0, str(tmp_path))
    try:
        import downstream
    finally:
        sys.path.remove(str(tmp_path))
    l2 = L2Book(4)
    assert downstream.fill_ladder(l2, 100) == (0, 1000, 1, 1)
    assert l2.level_count(0) == 100 and l2.levels(1, 1).tolist() == [[1001, 1, 0]]
    l3 = L3Book(5)
    assert downstream.fill_ladder(l3, 10) == (0, 1000, 1, 1)
    assert l3.order_count == 20
