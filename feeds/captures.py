"""Real exchange captures turned into canonical events, with the exchange's own checks.

Two captures are understood (see ``../shared/data/README.md`` in the development tree):

- Kraken websocket v1 ``book-1000`` (ten pairs): snapshots and level updates, and the CRC32
  checksum Kraken sent after 4,269 of the updates (:func:`load_kraken`, :func:`kraken_checksum`).
- Binance spot BTCUSDT ``depth@100ms`` diffs with a REST snapshot, ``bookTicker`` and
  ``trade`` messages (:func:`load_binance`): every bookTicker whose update id equals an applied
  diff's is a check of the book's best levels after that diff.

Both give a :class:`Capture`: instruments, one array of canonical events in arrival order
(the last event of each exchange message carries ``Flag.LAST``) and an array of checks,
each saying "after ``events[:end]`` the book of ``instrument`` must show this".
These files are inputs for tests, benchmarks, the simulator and the demo; they are not part
of tickwire and are never required by it.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np

from tickwire.engine.instruments import Instrument, decimal_to_int, decimals_of
from tickwire.ext.records import EVENT_DTYPE, Flag, Kind, Side

__all__ = [
    "Capture",
    "CaptureError",
    "KRAKEN_FILE",
    "BINANCE_FILE",
    "find_shared_data",
    "load_kraken",
    "load_binance",
    "kraken_checksum",
    "message_ends",
]

KRAKEN_FILE = "kraken_book1000_2021-04-17.ws"
BINANCE_FILE = "binance_spot_btcusdt_2024-08-08.gz"

KRAKEN_CHECK_DTYPE = np.dtype([("end", "<i8"), ("instrument", "<u4"), ("crc", "<u4")])
BINANCE_CHECK_DTYPE = np.dtype([
    ("end", "<i8"), ("instrument", "<u4"), ("update_id", "<u8"),
    ("bid", "<i8"), ("bid_qty", "<i8"), ("ask", "<i8"), ("ask_qty", "<i8"),
])


class CaptureError(ValueError):
    """A capture line that cannot be read: names the file and the line (1-based)."""

    def __init__(self, path, line: int, cause):
        self.path, self.line = str(path), int(line)
        super().__init__(f"{path}, line {line}: malformed capture line ({type(cause).__name__}: {cause})")


@dataclass
class Capture:
    """A capture as canonical events.

    Attributes
    ----------
    name : str
    instruments : list of Instrument
        Ids ``0..n-1`` in order of first appearance.
    events : numpy.ndarray
        EVENT_DTYPE, arrival order; snapshots are bracketed by SNAPSHOT markers.
    checks : numpy.ndarray
        The exchange's own checks; ``end`` is the number of leading events applied.
    stats : dict
        What the loader saw and skipped (messages by type, gaps, dropped diffs...).
    """

    name: str
    instruments: list
    events: np.ndarray
    checks: np.ndarray
    stats: dict


def find_shared_data(filename: str | None = None) -> Path | None:
    """The directory of the shared captures (or one file in it), or None when absent.

    Looks at ``$TICKWIRE_SHARED_DATA``, then ``../shared/data`` beside the source tree and
    beside the current directory.
    """
    candidates = []
    if os.environ.get("TICKWIRE_SHARED_DATA"):
        candidates.append(Path(os.environ["TICKWIRE_SHARED_DATA"]))
    src_root = Path(__file__).resolve().parent.parent
    candidates += [src_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for cand in candidates:
        path = cand / filename if filename else cand
        if path.exists():
            return path
    return None


def _decimals(text: str) -> tuple[int, int]:
    """(decimals as written, decimals that carry a non-zero digit) of a decimal string."""
    frac = text.partition(".")[2]
    return len(frac), len(frac.rstrip("0"))


class _EventBuilder:
    """Appends canonical events to growing numpy columns (loaders are not a hot path)."""

    def __init__(self):
        self.rows = []

    def add(self, ts_event, ts_recv, seq, instrument, kind, side, price=0, qty=0, flags=0, order_id=0):
        self.rows.append((ts_event, ts_recv, seq, order_id, price, qty, instrument, 0, kind, side, flags, 0))

    def mark_last(self):
        if self.rows:
            row = list(self.rows[-1])
            row[10] |= int(Flag.LAST)
            self.rows[-1] = tuple(row)

    def __len__(self):
        return len(self.rows)

    def array(self) -> np.ndarray:
        return np.array(self.rows, dtype=EVENT_DTYPE)


# ---------------------------------------------------------------------------------------
# Kraken
# ---------------------------------------------------------------------------------------

def _lines(fh, path):
    """(line number, line) of a text file, a byte that is not UTF-8 (or a damaged gzip stream) a
    :class:`CaptureError` naming the line (a UnicodeDecodeError traceback before)."""
    lineno = 0
    it = iter(fh)
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except (UnicodeDecodeError, EOFError, OSError, zlib.error) as exc:
            raise CaptureError(path, lineno + 1, exc) from None
        lineno += 1
        yield lineno, line


def _kraken_messages(path: Path):
    """(local receive time in ns, message list) for every book message of the capture."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in _lines(fh, path):
            head, sep, body = line.partition(": ")
            if not sep:
                if not line.strip() or line.startswith("wss://"):
                    continue                  # the connection's own lines
                # (a line whose separator was damaged, or the last one cut short, was skipped
                # unsaid: 660 events gone, exit 0)
                raise CaptureError(path, lineno, ValueError(
                    f"not a capture line (time, ': ', message){' - the file cut short?' if not line.endswith(chr(10)) else ''}: "
                    f"{line.strip()[:40]!r}"))
            if body.startswith("{"):          # subscription, status, heartbeat records: an event each
                try:
                    record = json.loads(body)
                except (ValueError, RecursionError) as exc:   # (a book message whose '[' was damaged was skipped unsaid)
                    raise CaptureError(path, lineno, exc) from None
                if not isinstance(record, dict) or "event" not in record:
                    raise CaptureError(path, lineno, ValueError("an object without 'event': not a Kraken record"))
                continue
            if not body.startswith("["):
                raise CaptureError(path, lineno, ValueError(f"neither a book message nor a record: {body[:40]!r}"))
            try:
                msg = json.loads(body)
                ts_recv = int(Decimal(head.rsplit(" ", 1)[-1]) * 1_000_000_000)
            except (ValueError, ArithmeticError, RecursionError) as exc:   # (nested 200,000 deep: a traceback)
                raise CaptureError(path, lineno, exc) from None
            yield ts_recv, msg


def _ns(seconds: str) -> int:
    return int(Decimal(seconds) * 1_000_000_000)


def load_kraken(path: str | Path | None = None, max_depth: int = 1000) -> Capture:
    """Load the Kraken ``book-1000`` capture.

    Each pair becomes an L2 instrument whose tick is the finest price step the capture
    uses and whose format keeps the decimals Kraken prints (for the checksum); quantities
    are in lots of 1e-8.  ``max_depth`` is the subscribed depth: Kraken does not send
    deletes for levels pushed out of it, so the book keeps only the best ``max_depth``.
    """
    path = Path(path) if path else find_shared_data(KRAKEN_FILE)
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"Kraken capture {KRAKEN_FILE} not found (set TICKWIRE_SHARED_DATA)")
    messages = list(_kraken_messages(Path(path)))

    # Decimals per pair: as written (for the checksum) and as needed (the tick).
    shown: dict[str, int] = {}
    needed: dict[str, int] = {}
    qty_dec: dict[str, int] = {}
    for _, msg in messages:
        pair = msg[-1]
        for payload in msg[1:-2]:
            for key in ("as", "bs", "a", "b"):
                for level in payload.get(key, ()):
                    w, n = _decimals(level[0])
                    shown[pair] = max(shown.get(pair, 0), w)
                    needed[pair] = max(needed.get(pair, 0), n)
                    qty_dec[pair] = max(qty_dec.get(pair, 0), _decimals(level[1])[0])

    instruments: dict[str, Instrument] = {}
    out = _EventBuilder()
    checks = []
    seq: dict[str, int] = {}
    stats = {"snapshots": 0, "updates": 0, "levels": 0, "checksums": 0}
    for ts_recv, msg in messages:
        pair = msg[-1]
        if pair not in instruments:
            instruments[pair] = Instrument(
                id=len(instruments), symbol=pair,
                tick_size=Decimal(1).scaleb(-needed[pair]), lot_size=Decimal(1).scaleb(-qty_dec[pair]),
                book="L2", max_depth=max_depth, price_decimals=shown[pair], qty_decimals=qty_dec[pair],
            )
        inst = instruments[pair]
        iid = inst.id
        pdec, qdec = needed[pair], qty_dec[pair]
        seq[pair] = seq.get(pair, 0) + 1
        s = seq[pair]
        payloads = msg[1:-2]
        if "as" in payloads[0] or "bs" in payloads[0]:
            stats["snapshots"] += 1
            out.add(ts_recv, ts_recv, s, iid, Kind.SNAPSHOT, Side.NONE, flags=Flag.SNAPSHOT_BEGIN | Flag.SNAPSHOT)
            for key, side in (("as", Side.ASK), ("bs", Side.BID)):
                for price, volume, ts in payloads[0].get(key, ()):
                    out.add(_ns(ts), ts_recv, s, iid, Kind.ADD, side, decimal_to_int(price, pdec),
                            decimal_to_int(volume, qdec), Flag.SNAPSHOT)
                    stats["levels"] += 1
            out.add(ts_recv, ts_recv, s, iid, Kind.SNAPSHOT, Side.NONE, flags=Flag.SNAPSHOT_END | Flag.SNAPSHOT)
            out.mark_last()
            continue
        stats["updates"] += 1
        crc = None
        for payload in payloads:
            for key, side in (("a", Side.ASK), ("b", Side.BID)):
                for level in payload.get(key, ()):
                    out.add(_ns(level[2]), ts_recv, s, iid, Kind.MODIFY, side,
                            decimal_to_int(level[0], pdec), decimal_to_int(level[1], qdec))
                    stats["levels"] += 1
            if "c" in payload:
                crc = int(payload["c"])
        out.mark_last()
        if crc is not None:
            checks.append((len(out), iid, crc))
            stats["checksums"] += 1
    return Capture(
        name="kraken",
        instruments=list(instruments.values()),
        events=out.array(),
        checks=np.array(checks, dtype=KRAKEN_CHECK_DTYPE),
        stats=stats,
    )


def kraken_checksum(book, instrument: Instrument, out: np.ndarray | None = None) -> int:
    """Kraken's CRC32 of a book: top 10 asks (ascending) then top 10 bids (descending),
    price then volume as printed with the pair's decimals, '.' removed, leading zeros
    stripped, concatenated."""
    if out is None:
        out = np.empty((10, 3), dtype=np.int64)
    pscale = 10 ** (instrument.price_decimals - decimals_of(instrument.tick_size))
    qscale = 10 ** (instrument.qty_decimals - decimals_of(instrument.lot_size))
    parts = []
    for side in (Side.ASK, Side.BID):
        for price, qty, _ in book.levels(side, 10, out):
            parts.append(str(int(price) * pscale))
            parts.append(str(int(qty) * qscale))
    return zlib.crc32("".join(parts).encode())


# ---------------------------------------------------------------------------------------
# Binance
# ---------------------------------------------------------------------------------------

def load_binance(path: str | Path | None = None, include_trades: bool = True) -> Capture:
    """Load the Binance spot BTCUSDT capture, applying Binance's own sync rule.

    Diffs with ``u <= lastUpdateId`` of the REST snapshot are dropped; the first applied
    diff must straddle ``lastUpdateId + 1`` and each later one must start at the previous
    ``u + 1`` (a gap raises ValueError: the capture would need a new snapshot).  Events
    carry the diff's final update id ``u`` as their sequence number.  Trades become TRADE
    events (side: the aggressor).  Each bookTicker whose ``u`` equals an applied diff's
    ``u`` becomes a check of the best levels right after that diff.
    """
    path = Path(path) if path else find_shared_data(BINANCE_FILE)
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"Binance capture {BINANCE_FILE} not found (set TICKWIRE_SHARED_DATA)")
    inst = Instrument(id=0, symbol="BTCUSDT", tick_size=Decimal("0.01"), lot_size=Decimal("0.00000001"),
                      book="L2", price_decimals=2, qty_decimals=8)
    pdec, qdec = 2, 8
    out = _EventBuilder()
    stats = {"diffs": 0, "diffs_dropped": 0, "diffs_applied": 0, "tickers": 0, "trades": 0,
             "trades_kept": 0}
    snapshot_id = None
    last_u = None
    pre_snapshot = []
    diff_end: dict[int, int] = {}        # u -> events applied after that diff
    tickers = []

    def apply_diff(ts_recv, d):
        nonlocal last_u
        U, u = d["U"], d["u"]
        if u <= snapshot_id:
            stats["diffs_dropped"] += 1
            return
        if last_u is None:
            if not U <= snapshot_id + 1 <= u:
                raise ValueError(f"first diff U={U} u={u} does not straddle snapshot {snapshot_id} + 1")
        elif U != last_u + 1:
            raise ValueError(f"gap in Binance diffs: U={U} after u={last_u}")
        ts_event = d["E"] * 1_000_000
        for key, side in (("b", Side.BID), ("a", Side.ASK)):
            for price, qty in d[key]:
                out.add(ts_event, ts_recv, u, inst.id, Kind.MODIFY, side,
                        decimal_to_int(price, pdec), decimal_to_int(qty, qdec))
        out.mark_last()
        last_u = u
        diff_end[u] = len(out)
        stats["diffs_applied"] += 1

    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in _lines(fh, path):
            line = line.strip()
            if not line:
                continue
            ts_text, _, body = line.partition(" ")
            try:
                ts_recv = int(ts_text)
                msg = json.loads(body)
            except (ValueError, RecursionError) as exc:
                raise CaptureError(path, lineno, exc) from None
            if not isinstance(msg, dict):     # (a number or null: a TypeError traceback)
                raise CaptureError(path, lineno, ValueError("neither a REST snapshot nor a combined-stream "
                                                            "message ({'stream': ..., 'data': ...})"))
            if "lastUpdateId" in msg:
                snapshot_id = msg["lastUpdateId"]
                out.add(ts_recv, ts_recv, snapshot_id, inst.id, Kind.SNAPSHOT, Side.NONE,
                        flags=Flag.SNAPSHOT_BEGIN | Flag.SNAPSHOT)
                for key, side in (("bids", Side.BID), ("asks", Side.ASK)):
                    for price, qty in msg[key]:
                        out.add(ts_recv, ts_recv, snapshot_id, inst.id, Kind.ADD, side,
                                decimal_to_int(price, pdec), decimal_to_int(qty, qdec), Flag.SNAPSHOT)
                out.add(ts_recv, ts_recv, snapshot_id, inst.id, Kind.SNAPSHOT, Side.NONE,
                        flags=Flag.SNAPSHOT_END | Flag.SNAPSHOT)
                out.mark_last()
                stats["snapshot_levels"] = len(msg["bids"]) + len(msg["asks"])
                for ts, d in pre_snapshot:
                    apply_diff(ts, d)
                pre_snapshot.clear()
                continue
            if not isinstance(msg.get("stream"), str) or "data" not in msg:
                raise CaptureError(path, lineno, ValueError("neither a REST snapshot nor a combined-stream "
                                                            "message ({'stream': ..., 'data': ...})"))
            stream, data = msg["stream"], msg["data"]
            if stream.endswith("@depth@100ms"):
                stats["diffs"] += 1
                if snapshot_id is None:
                    pre_snapshot.append((ts_recv, data))
                else:
                    apply_diff(ts_recv, data)
            elif stream.endswith("@bookTicker"):
                stats["tickers"] += 1
                tickers.append(data)
            elif stream.endswith("@trade"):
                stats["trades"] += 1
                if include_trades and snapshot_id is not None:
                    stats["trades_kept"] += 1
                    side = Side.ASK if data["m"] else Side.BID   # buyer is maker: a sell hit the bid
                    out.add(data["T"] * 1_000_000, ts_recv, data["t"], inst.id, Kind.TRADE, side,
                            decimal_to_int(data["p"], pdec), decimal_to_int(data["q"], qdec), Flag.LAST)
            else:                             # (another stream's messages were dropped unsaid: a capture
                raise CaptureError(path, lineno, ValueError(   # of @depth@1000ms replayed its trades only)
                    f"stream {stream!r}: not one this loader reads (@depth@100ms, @bookTicker, @trade)"))
    checks = []
    for t in tickers:
        end = diff_end.get(t["u"])
        if end is None:
            continue
        checks.append((end, inst.id, t["u"], decimal_to_int(t["b"], pdec), decimal_to_int(t["B"], qdec),
                       decimal_to_int(t["a"], pdec), decimal_to_int(t["A"], qdec)))
    stats["checks"] = len(checks)
    return Capture(
        name="binance",
        instruments=[inst],
        events=out.array(),
        checks=np.array(checks, dtype=BINANCE_CHECK_DTYPE),
        stats=stats,
    )


def message_ends(events: np.ndarray) -> np.ndarray:
    """Indices one past each event that carries ``Flag.LAST`` (exchange message boundaries)."""
    return np.flatnonzero(events["flags"] & int(Flag.LAST)) + 1
