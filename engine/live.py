"""Reading a running daemon's books: asked of the workers, answered by their engine threads.

Each engine worker serves a REQ/REP socket in the run directory (``ipc://<run dir>/books-<i>.sock``;
the run directory is 0700, so only the daemon's user reaches it). A request is one JSON object::

    {"instruments": [0, 3] | null, "depth": 10}

and the answer, one JSON object per instrument the worker serves (``instruments`` null: all)::

    {"instruments": {"0": {"instrument": 0, "symbol": "BTCUSDT", "worker": "w0",
                           "tick_size": "0.01", "lot_size": "0.00001",
                           "bids": [[price_ticks, qty_lots, orders], ...],   best first
                           "asks": [...], "levels": [bid levels, ask levels],
                           "last_seq": 123, "last_ts_event": 1700000000000000000,
                           "in_sync": true, "updates": 42, "signals": 3,
                           "last_trade": [price_ticks, qty_lots, ts_event] | null}},
     "worker": "w0", "time": <unix ns>}

or ``{"error": "..."}`` for a malformed request. The request thread only hands the request to
the engine's thread, which answers between two batches (the books are never read while they
change); a worker that cannot answer within a second replies ``{"error": "busy"}``. A client that
asks and never reads costs the worker nothing: the socket is served by its own thread, and an
unread reply is dropped when the next request arrives.

:func:`request_books` asks the workers of a run (those serving the instruments asked for) and
merges the answers; ``tickwire books`` prints them. Snapshots of the books are not in the store at every moment; to read what the store holds
use :class:`~tickwire.engine.store.Store`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import zmq

from tickwire.engine.files import daemon_running
from tickwire.feeds.wire import ipc_claim, ipc_release

log = logging.getLogger("tickwire.live")

__all__ = ["Books", "DaemonNotRunning", "BookService", "request_books", "books_endpoint", "MAX_DEPTH"]

#: Most levels per side one request may ask for.
MAX_DEPTH = 10_000
#: Seconds the request thread waits for the engine's thread before answering "busy".
ANSWER_TIMEOUT = 1.0


class DaemonNotRunning(RuntimeError):
    """No worker of the run answered (the message says where it looked and how to start one)."""


def books_endpoint(run_dir, index: int) -> str:
    return f"ipc://{Path(run_dir).resolve()}/books-{index}.sock"


def parse_request(raw: bytes) -> tuple[list[int] | None, int]:
    """``(instruments or None, depth)`` of a request; ValueError naming what is wrong."""
    try:
        req = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("request is not JSON") from None
    if not isinstance(req, dict):
        raise ValueError("request must be a JSON object")
    unknown = set(req) - {"instruments", "depth"}
    if unknown:
        raise ValueError(f"unknown request keys: {sorted(unknown)}")
    depth = req.get("depth", 10)
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth: expected an integer 0..{MAX_DEPTH}, got {depth!r}")
    ids = req.get("instruments")
    if ids is not None and (not isinstance(ids, list)
                            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
        raise ValueError("instruments: expected null or a list of instrument ids")
    return ids, depth


class BookService:
    """The worker's side: a thread serving the REP socket, and :meth:`answer_pending`, called by
    the engine's thread between batches (a no-op unless a request waits)."""

    def __init__(self, endpoint: str, answer, name: str = "books", context: zmq.Context | None = None):
        self.endpoint = endpoint
        self._answer = answer                 # engine thread: (ids, depth) -> dict
        self.pending = None                   # (ids, depth) waiting for the engine's thread
        self._reply = None
        self._done = threading.Event()
        self._stop = threading.Event()
        self._ctx = context or zmq.Context.instance()   # the worker's: its I/O thread is pinned
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._ready = threading.Event()
        self.error = None

    def start(self) -> "BookService":
        self._thread.start()
        self._ready.wait(5)
        return self

    def answer_pending(self) -> None:
        """Engine thread: answer the waiting request (the books do not change meanwhile)."""
        req, self.pending = self.pending, None
        if req is None:
            return
        try:
            self._reply = self._answer(*req)
        except Exception as exc:              # noqa: BLE001 - the client gets the reason
            log.exception("book request failed")
            self._reply = {"error": f"{type(exc).__name__}: {exc}"}
        self._done.set()

    def _serve(self) -> None:
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            self.error = f"cannot serve books on {self.endpoint}: {exc}"
            log.error("%s (tickwire book and tickwire top cannot read this worker's books)", self.error)
            sock.close()
            self._ready.set()
            return
        claim = ipc_claim(sock)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(200):
                    continue
                frames = sock.recv_multipart()         # every frame: a REP must read the whole request
                try:
                    if len(frames) != 1:
                        raise ValueError(f"a book request is one frame, got {len(frames)}")
                    ids, depth = parse_request(frames[0])
                except ValueError as exc:
                    sock.send(json.dumps({"error": str(exc)}).encode())
                    continue
                self._done.clear()
                self._reply = None
                self.pending = (ids, depth)
                if not self._done.wait(ANSWER_TIMEOUT):
                    self.pending = None
                    if not self._done.wait(0.05):      # it may have just taken it
                        sock.send(b'{"error": "busy"}')
                        continue
                sock.send(json.dumps(self._reply).encode())
        finally:
            sock.close()
            ipc_release(claim)              # its inode: not a path a restarted worker bound since

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def worker_answer(engine, instruments, worker: str, ids, depth: int) -> dict:
    """The engine's books (and a few of its features) as :func:`request_books` returns them."""
    from tickwire.ext.records import Side

    mine = {i.id: i for i in instruments}
    want = list(mine) if ids is None else [i for i in ids if i in mine]
    out = {}
    for iid in want:
        inst = mine[iid]
        book = engine.book(iid)
        f = engine.features(iid)
        bids = book.levels(Side.BID, depth).tolist() if depth else []
        asks = book.levels(Side.ASK, depth).tolist() if depth else []
        out[str(iid)] = {
            "instrument": iid, "symbol": inst.symbol, "worker": worker,
            "tick_size": str(inst.tick_size), "lot_size": str(inst.lot_size),
            "bids": bids, "asks": asks, "levels": [book.level_count(Side.BID), book.level_count(Side.ASK)],
            "last_seq": int(book.last_seq), "last_ts_event": int(book.last_ts_event),
            "in_sync": bool(book.in_sync), "updates": int(f["updates"]), "signals": int(f["signals"]),
            "last_trade": ([int(f["last_trade_price"]), int(f["last_trade_qty"]), int(f["last_trade_ts"])]
                           if f["last_trade_ts"] or f["last_trade_qty"] else None),
        }
    return {"instruments": out, "worker": worker, "time": time.time_ns()}


def _sockets(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("books-*.sock"), key=lambda p: int(p.stem.split("-")[1]))


class Books(dict):
    """``{instrument_id: answer}``, with ``silent``: the workers (``w0``, ...) that did not answer
    in time, whose instruments are missing (empty when every worker answered)."""

    silent: list = []


def _worker_names(run_dir: Path) -> list:
    """The running daemon's worker names, by index (its config.json), or [] when not known."""
    try:
        raw = json.loads((run_dir / "config.json").read_text())["raw"]
        return [w.get("name") or f"w{i}" for i, w in enumerate(raw.get("workers") or [{}])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _worker_instruments(run_dir: Path) -> list | None:
    """The instrument ids each worker of the running daemon serves, by index (its config.json),
    or None when not known."""
    from tickwire.engine import config as configmod

    try:
        cfg = configmod.load_frozen(run_dir / "config.json")
    except Exception:                       # noqa: BLE001 (any damage: ask every worker)
        return None
    return [set(w.instruments) for w in cfg.workers]


def request_books(run_dir, instruments=None, depth: int = 10, timeout: float = 1.0) -> Books:
    """The books of a running daemon's workers: ``{instrument_id: answer}`` (see the module doc).

    ``instruments``: ids (default all); only the workers serving one of them are asked (a
    stopped worker serving none of them kept the answer waiting, then failed it). Raises
    :class:`DaemonNotRunning` when no worker answers within ``timeout`` seconds (or every one
    asked answers "busy"), ValueError for a request a worker refuses. A worker that does not
    answer while another does (stopped, stalled, or "busy": its engine did not take the request
    within a second) is named in the result's ``silent``: its instruments are not in it (a busy
    one was once left out unsaid)."""
    run_dir = Path(run_dir)
    socks = _sockets(run_dir) if run_dir.is_dir() else []
    hint = "start one with `tickwire run --config FILE` (or `tickwire demo`)"
    if not socks:
        raise DaemonNotRunning(f"no tickwire daemon is running for {run_dir} (no worker book sockets there): {hint}")
    req = json.dumps({"instruments": None if instruments is None else [int(i) for i in instruments],
                      "depth": int(depth)}).encode()
    ctx = zmq.Context.instance()
    books, answered, errors, silent, busy = Books(), 0, [], [], []
    names = _worker_names(run_dir)
    if names:                                  # (a socket a killed daemon with more workers left behind)
        socks = [p for p in socks if int(p.stem.split("-")[1]) < len(names)]
    serving = _worker_instruments(run_dir) if instruments is not None else None
    if serving is not None:
        wanted = {int(i) for i in instruments}
        # (none of them serving any: ask them all, as before, rather than answer nothing unasked)
        socks = [p for p in socks if int(p.stem.split("-")[1]) >= len(serving)
                 or serving[int(p.stem.split("-")[1])] & wanted] or socks
    for path in socks:
        k = int(path.stem.split("-")[1])
        name = names[k] if k < len(names) else f"w{k}"
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"ipc://{path}")
            sock.send(req)
            if not sock.poll(int(timeout * 1000)):
                silent.append(name)
                continue
            reply = json.loads(sock.recv())
        finally:
            sock.close()
        if reply.get("error") == "busy":
            silent.append(name)
            busy.append(name)
            continue
        if "error" in reply:
            errors.append(f"{path.name}: {reply['error']}")
            continue
        answered += 1
        books.update({int(k): v for k, v in reply["instruments"].items()})
    if errors and not answered:
        raise ValueError("; ".join(errors))
    if busy and not answered:
        raise DaemonNotRunning(f"the daemon's worker{'s' if len(busy) > 1 else ''} {', '.join(busy)} answered busy "
                               f"(the engine did not take the request within a second: a full tick ring, a "
                               f"stopped writer?): tickwire status says more")
    if not answered and silent and daemon_running(run_dir):
        # (a daemon whose only worker was stopped was said not to run, "start one": an adversarial pass)
        raise DaemonNotRunning(f"the daemon for {run_dir} runs, but its worker{'s' if len(silent) > 1 else ''} "
                               f"{', '.join(silent)} did not answer within {timeout:g} s (stopped, stalled or "
                               f"still starting): tickwire status says more")
    if not answered:
        raise DaemonNotRunning(f"no tickwire daemon answers in {run_dir} (its workers' book sockets are there "
                               f"but silent for {timeout:g} s: stopped, or still starting): {hint}")
    books.silent = silent
    return books
