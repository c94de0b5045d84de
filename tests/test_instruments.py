"""Instruments: exact decimal <-> integer conversions at the edges."""

from decimal import Decimal
from fractions import Fraction

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


def _reference_units(value, step):
    """Exact steps of ``value`` by rational arithmetic, or None: not a multiple, not finite, or
    out of int64 (the reference the conversion is checked against)."""
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    if not d.is_finite():
        return None
    q = Fraction(d) / Fraction(step)
    if q.denominator != 1 or not -(1 << 63) <= q.numerator < 1 << 63:
        return None
    return q.numerator


_STEPS = ["0.01", "0.25", "1", "0.00000001", "5", "0.5"]
_long_decimals = st.builds(lambda sign, digits, exp: Decimal((sign, digits, exp)),
                           st.integers(0, 1), st.lists(st.integers(0, 9), min_size=1, max_size=45).map(tuple),
                           st.integers(-40, 25))


@given(st.sampled_from(_STEPS), st.one_of(_long_decimals, st.decimals(allow_nan=True, allow_infinity=True), st.integers(),
                                          st.floats(allow_nan=True, allow_infinity=True)),
       st.booleans())
def test_unit_conversion_is_exact_or_refused_against_rational_arithmetic(step, value, as_text):
    """Prices and quantities become whole steps exactly, or a ValueError naming the value: never
    rounded by the 28-digit default context (a 40-digit value one unit past a multiple is not a
    multiple), never a Python int past int64, never a crash on NaN, infinity or 1E+999999."""
    inst = Instrument(0, "X", tick_size=step, lot_size=step)
    if as_text and isinstance(value, Decimal):
        value = f"{value:f}" if value.is_finite() and abs(value.adjusted()) < 60 else str(value)
    want = _reference_units(value, Decimal(step))
    for convert in (inst.price_to_ticks, inst.qty_to_lots):
        if want is None:
            with pytest.raises(ValueError, match="instrument 'X'"):
                convert(value)
        else:
            assert convert(value) == want


def test_a_long_value_one_unit_past_a_multiple_is_not_rounded_into_one():
    inst = Instrument(0, "X", tick_size="0.25", lot_size="0.01")
    past = Decimal("1." + "0" * 34 + "1")              # 36 significant digits: the default context keeps 28
    for value in (past, str(past)):
        with pytest.raises(ValueError, match="not a multiple of 0.25"):
            inst.price_to_ticks(value)
        with pytest.raises(ValueError, match="not a multiple of 0.01|more than 2 decimals"):
            inst.qty_to_lots(value)
    for value in (Decimal("1E+30"), Decimal("Infinity"), Decimal("NaN"), Decimal("1E+999999"), 1e300, "9" * 40):
        with pytest.raises(ValueError, match="fits in 64 bits|not a multiple"):
            inst.price_to_ticks(value)
    assert inst.price_to_ticks(Decimal("2305843009213693951.75")) == (1 << 63) - 1
    assert inst.qty_to_lots("92233720368547758.07") == (1 << 63) - 1
    with pytest.raises(ValueError, match="fits in 64 bits"):
        inst.qty_to_lots("92233720368547758.08")


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
