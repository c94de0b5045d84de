"""Instruments: exact decimal <-> integer conversions at the edges."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickwire.engine.instruments import Instrument, decimal_to_int, make_books
from tickwire.ext import L2Book, L3Book


def test_decimal_to_int_exact():
    assert decimal_to_int("61737.63000000", 2) == 6173763
    assert decimal_to_int("0.00002250", 8) == 2250
    assert decimal_to_int("-1.5", 1) == -15
    assert decimal_to_int("7", 3) == 7000
    assert decimal_to_int(".5", 1) == 5
    with pytest.raises(ValueError, match="more than 2 decimals"):
        decimal_to_int("1.001", 2)
    for bad in ("1e5", "abc", "", "1.2.3", "--1"):
        with pytest.raises(ValueError):
            decimal_to_int(bad, 2)


@given(st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"), places=4, allow_nan=False))
def test_decimal_to_int_matches_decimal(value):
    assert decimal_to_int(f"{value:f}", 6) == int(value.scaleb(6))


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_price_round_trip(ticks):
    inst = Instrument(0, "X", tick_size="0.25", lot_size="0.001")
    assert inst.price_to_ticks(inst.ticks_to_price(ticks)) == ticks
    assert inst.price_to_ticks(inst.format_price(ticks)) == ticks


def test_instrument_validation_names_the_field():
    with pytest.raises(ValueError, match="tick_size"):
        Instrument(0, "X", tick_size="0")
    with pytest.raises(ValueError, match="book must be"):
        Instrument(0, "X", book="L4")
    with pytest.raises(ValueError, match="not a multiple of 0.25"):
        Instrument(0, "X", tick_size="0.25").price_to_ticks("1.1")
    with pytest.raises(ValueError, match="price_decimals"):
        Instrument(0, "X", tick_size="0.01", price_decimals=1)


def test_make_books_uses_the_instrument_settings():
    a = Instrument(0, "A", book="L2", max_depth=10, window=1024)
    b = Instrument(3, "B", book="L3", max_orders=50)
    books = make_books([a, b])
    assert isinstance(books[0], L2Book) and books[0].max_depth == 10 and books[0].window == 1024
    assert books[0].max_window == 1 << 20                           # L2Book's default
    assert isinstance(books[3], L3Book)
    assert make_books([Instrument(0, "A", window=1024, max_window=4096)])[0].max_window == 4096
    with pytest.raises(ValueError, match="max_window is for L2 books"):
        Instrument(3, "B", book="L3", max_window=4096)
    assert a.format_price(6173763) == "61737.63"
    assert Instrument(1, "K", tick_size="0.01", price_decimals=8).format_price(35413) == "354.13000000"
