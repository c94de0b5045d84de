"""The compiled core of tickwire (Cython): books, and the canonical records they carry.

The canonical records (:mod:`tickwire.ext.records`) are pure Python and numpy; the
order books are in the compiled :mod:`tickwire.ext.book`.
"""

from tickwire.ext.records import EVENT_DTYPE, Flag, Kind, Reject, Side, empty_events
from tickwire.ext.book import BUILD, Book, BookError, BookSet, L2Book, L3Book

__all__ = [
    "BUILD",
    "Book",
    "BookError",
    "BookSet",
    "EVENT_DTYPE",
    "Flag",
    "Kind",
    "L2Book",
    "L3Book",
    "Reject",
    "Side",
    "empty_events",
]
