"""Instruments: symbol, tick size, lot size and decimals, and exact conversions at the edges.

Inside tickwire a price is an int64 count of ticks and a quantity an int64 count of lots.
Decimal strings from exchanges become integers here, exactly (a price that is not a
multiple of the tick is an error, not a rounding), and go back to decimals only for
reports, checksums and storage views.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from typing import Iterable

from tickwire.ext.book import (
    DEFAULT_MAX_LEVELS,
    DEFAULT_MAX_PRICE,
    DEFAULT_MIN_PRICE,
    DEFAULT_WINDOW,
    LOWEST_PRICE,
    BookSet,
    L2Book,
    L3Book,
)

__all__ = ["Instrument", "make_books", "decimal_to_int", "decimals_of", "DEFAULT_MAX_PRICE", "LOWEST_PRICE"]


_INT64 = 1 << 63
_INT18 = 10**18
# exact decimal arithmetic for unit conversions: a quotient that needs rounding raises Inexact
# (an int64 count of steps has at most 19 digits; 60 leaves any exact one unrounded)
_EXACT = Context(prec=60, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[Inexact, InvalidOperation, DivisionByZero, Overflow])


def _decimal_steps(value, decimals: int) -> int | None:
    """``value * 10**decimals`` for a Decimal or an int, when that is a whole number under 10**18
    in magnitude (exactly: ``_EXACT`` never rounds); None otherwise (not whole, larger, NaN or
    infinite, another type: the caller's general path decides, and names the reason)."""
    if type(value) is not Decimal:
        if type(value) is int and -_INT18 < value < _INT18:
            units = value * 10**decimals
            return units if -_INT18 < units < _INT18 else None
        return None
    if value.adjusted() + decimals >= 18:        # (0 for NaN and infinities: int() refuses those)
        return None
    try:
        q = value.scaleb(decimals, _EXACT)
        units = int(q)
    except (ArithmeticError, ValueError):
        return None
    return units if units == q else None


def decimal_to_int(text: str, decimals: int) -> int:
    """Exact integer value of the decimal string ``text`` scaled by ``10**decimals``.

    ``decimal_to_int("61737.63000000", 2) == 6173763``.  Raises ValueError when ``text``
    has non-zero digits beyond ``decimals`` places or is not a plain decimal number.
    """
    neg = text.startswith("-")
    body = text[1:] if neg else text
    whole, dot, frac = body.partition(".")
    if not (whole.isdigit() or (whole == "" and frac)) or (dot and frac and not frac.isdigit()):
        raise ValueError(f"not a plain decimal number: {text!r}")
    if len(frac) > decimals:
        extra = frac[decimals:]
        if extra.strip("0"):
            raise ValueError(f"{text!r} has more than {decimals} decimals")
        frac = frac[:decimals]
    value = int((whole or "0") + frac.ljust(decimals, "0"))
    return -value if neg else value


def decimals_of(step: Decimal) -> int:
    """Decimal places of a step such as a tick size: ``decimals_of(Decimal("0.010")) == 2``."""
    exp = step.normalize().as_tuple().exponent
    return max(0, -int(exp))


@dataclass(frozen=True)
class Instrument:
    """One tradable instrument and how its prices and quantities map to integers.

    Parameters
    ----------
    id : int
        Dense small integer id carried in every event (routes to the instrument's book).
    symbol : str
    tick_size, lot_size : str or Decimal
        Price of one tick and quantity of one lot, e.g. ``"0.01"`` and ``"0.00000001"``.
    book : {"L2", "L3"}
        Price-level or order-by-order book.
    max_depth : int
        L2 only: keep at most this many levels per side (0: all).
    min_price, max_price : int
        Accepted prices in ticks.
    window, max_levels : int
        Dense window slots per side (a power of two) and most levels per side (see L2Book).
    max_window : int, optional
        L2 only: the size a side's window may grow to while many updates fall outside it
        (see L2Book; None: its default, ``max(window, 2**20)``).
    max_orders : int
        L3 only: most resting orders.
    price_decimals, qty_decimals : int, optional
        Decimals used when formatting (default: those of the tick and lot sizes).  Some
        venues print more decimals than the tick has, e.g. ``"354.13000000"``.
    """

    id: int
    symbol: str
    tick_size: Decimal = Decimal("0.01")
    lot_size: Decimal = Decimal("0.00000001")
    book: str = "L2"
    max_depth: int = 0
    min_price: int = DEFAULT_MIN_PRICE
    max_price: int = DEFAULT_MAX_PRICE
    window: int = DEFAULT_WINDOW
    max_levels: int = DEFAULT_MAX_LEVELS
    max_window: int | None = None
    max_orders: int = 1 << 24
    price_decimals: int | None = None
    qty_decimals: int | None = None

    def __post_init__(self):
        for name in ("tick_size", "lot_size"):
            value = Decimal(str(getattr(self, name)))
            if not value.is_finite() or value <= 0:
                raise ValueError(f"instrument {self.symbol!r}: {name} must be a positive decimal, got {value}")
            object.__setattr__(self, name, value)
        if self.book not in ("L2", "L3"):
            raise ValueError(f"instrument {self.symbol!r}: book must be 'L2' or 'L3', got {self.book!r}")
        if self.book == "L3" and self.max_window is not None:
            raise ValueError(f"instrument {self.symbol!r}: max_window is for L2 books (an L3 book's window "
                             f"stays at window), got {self.max_window}")
        if not 0 <= self.id < 1 << 24:
            raise ValueError(f"instrument {self.symbol!r}: id must be 0..2**24-1, got {self.id}")
        tick_dec, lot_dec = decimals_of(self.tick_size), decimals_of(self.lot_size)
        tick10 = self.tick_size == Decimal(1).scaleb(-tick_dec)        # a power of ten
        lot10 = self.lot_size == Decimal(1).scaleb(-lot_dec)
        object.__setattr__(self, "_units", {"price": (self.tick_size, tick_dec, tick10),
                                            "quantity": (self.lot_size, lot_dec, lot10)})
        # (both powers of ten: level_units' short route, by these decimals; else None)
        object.__setattr__(self, "_pow10", (tick_dec, lot_dec) if tick10 and lot10 else None)
        for name, least in (("price_decimals", tick_dec), ("qty_decimals", lot_dec)):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, least)
            elif not least <= value <= 18:
                raise ValueError(f"instrument {self.symbol!r}: {name} must be {least}..18, got {value}")

    # -- conversions -----------------------------------------------------------------------
    def price_to_ticks(self, price: str | Decimal | int) -> int:
        """Exact ticks of a decimal price; ValueError when it is not a multiple of the tick."""
        return self._to_units(price, "price")

    def qty_to_lots(self, qty: str | Decimal | int) -> int:
        """Exact lots of a decimal quantity; ValueError when it is not a multiple of the lot."""
        return self._to_units(qty, "quantity")

    def ticks_to_price(self, ticks: int) -> Decimal:
        return (self.tick_size * int(ticks)).quantize(Decimal(1).scaleb(-self.price_decimals))

    def lots_to_qty(self, lots: int) -> Decimal:
        return (self.lot_size * int(lots)).quantize(Decimal(1).scaleb(-self.qty_decimals))

    def format_price(self, ticks: int) -> str:
        """The price as a fixed-decimals string, e.g. ``"61737.63"``."""
        return f"{self.ticks_to_price(ticks):f}"

    def format_qty(self, lots: int) -> str:
        return f"{self.lots_to_qty(lots):f}"

    def level_units(self, price, qty) -> tuple[int, int]:
        """``(price_to_ticks(price), qty_to_lots(qty))`` in one call, for a feed handler's per-level
        path: Decimals on power-of-ten steps (the usual case) go by a short exact route; anything
        else, and every refusal, by the general one."""
        p10 = self._pow10
        if p10 is not None:
            p = _decimal_steps(price, p10[0])
            q = _decimal_steps(qty, p10[1])
            if p is not None and q is not None:
                return p, q
        return self._to_units(price, "price"), self._to_units(qty, "quantity")

    def _to_units(self, value, what: str) -> int:
        """``value`` (a decimal string, a Decimal, an int or a float) in steps of ``what``'s size,
        exactly: ValueError, naming the instrument and the value, when it is not a multiple of
        the step, not a finite number, or out of the int64 range.  Decimal arithmetic here is
        exact (``_EXACT`` traps Inexact), never the default context's 28 digits, which would round
        a long value into a multiple."""
        step, decimals, pow10 = self._units[what]
        units = None
        if pow10:
            if type(value) is Decimal or type(value) is int:
                units = _decimal_steps(value, decimals)
            elif isinstance(value, str):
                try:
                    units = decimal_to_int(value, decimals)
                except ValueError:
                    pass              # an exponent ("2.5E-7"), or not a multiple: the general path says
        if units is None:
            try:
                d = value if type(value) is Decimal else Decimal(str(value))
            except InvalidOperation:
                raise ValueError(f"instrument {self.symbol!r}: {what} {value!r} is not a decimal number") from None
            if not d.is_finite() or (d.adjusted() - step.adjusted() > 19 and not d.is_zero()):   # >= 10**21
                raise ValueError(f"instrument {self.symbol!r}: {what} {value} is not a number of steps of "
                                 f"{step} that fits in 64 bits")
            try:
                q = d.scaleb(decimals, _EXACT) if pow10 else _EXACT.divide(d, step)
            except Inexact:
                q = None
            if q is None or q != (units := int(q)):
                raise ValueError(f"instrument {self.symbol!r}: {what} {value} is not a multiple of {step}")
        if not -_INT64 <= units < _INT64:
            raise ValueError(f"instrument {self.symbol!r}: {what} {value} is not a number of steps of {step} "
                             f"that fits in 64 bits")
        return units

    # -- books -----------------------------------------------------------------------------
    def make_book(self, channel: int | None = None) -> L2Book | L3Book:
        """A new empty book configured for this instrument; ``channel``: the feed channel
        carrying it (events from another are rejected), None: any."""
        if self.book == "L3":
            return L3Book(self.id, min_price=self.min_price, max_price=self.max_price,
                          window=self.window, max_levels=self.max_levels, max_orders=self.max_orders,
                          channel=channel)
        return L2Book(self.id, max_depth=self.max_depth, min_price=self.min_price,
                      max_price=self.max_price, window=self.window, max_levels=self.max_levels,
                      max_window=self.max_window, channel=channel)


def make_books(instruments: Iterable[Instrument], channels: dict[int, int] | None = None) -> BookSet:
    """A :class:`BookSet` with one new book per instrument; ``channels`` maps instrument ids to
    the feed channel carrying each (see :meth:`Instrument.make_book`)."""
    channels = channels or {}
    return BookSet(inst.make_book(channels.get(inst.id)) for inst in instruments)
