"""ZeroMQ CURVE for feeds that cross machines: authenticated, encrypted tcp.

A publisher (``tickwire simulate``, the replay publisher, the cryptofeed bridge) is a CURVE
*server*: its data socket (PUB/XPUB/PUSH) and its recovery service (ROUTER) use its secret key,
and a ZAP authenticator on its context lets in only the client public keys found in a directory.
A receiver (the daemon's :class:`~tickwire.feeds.handler.FeedHandler`, its SUB/PULL sockets and
the DEALER of snapshots and retransmissions) is a CURVE *client*: it knows the server's public key
and has a certificate of its own.  Without the right server key the handshake fails and nothing
is delivered; a client whose key is not allowed is refused by the server.

Keys are ZeroMQ's certificate files (``zmq.auth.create_certificates``; ``tickwire keygen``):
``NAME.key`` holds the public key, ``NAME.key_secret`` the public and secret keys (0600).
"""

from __future__ import annotations

import glob
import os
import stat as statmod
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
import zmq.auth.certs
import zmq.utils.z85

__all__ = ["CurveClient", "CurveServer", "public_key", "secret_certificate", "keygen"]


def _checked_key(key: bytes, what: str, where) -> bytes:
    """``key`` (Z85 text) when it is a CURVE key (32 bytes, not all zero); ValueError otherwise:
    a key file with a garbled line passed the config check before and crashed every worker."""
    try:
        raw = zmq.utils.z85.decode(key)
    except (ValueError, KeyError, UnicodeError, IndexError):
        raw = b""
    if len(raw) != 32 or not any(raw):
        raise ValueError(f"{where}: its {what} is not a CURVE key (40 Z85 characters, not all zero), "
                         f"got {len(key)} characters")
    return key


def public_key(value: str) -> bytes:
    """A CURVE public key from its 40-character Z85 text or a certificate file holding it
    (``NAME.key`` or ``NAME.key_secret``); ValueError (one line) otherwise."""
    text = str(value).strip()
    if len(text) == 40 and not os.path.exists(text):
        try:
            return _checked_key(text.encode("ascii"), "text", repr(text))
        except (ValueError, UnicodeEncodeError):
            pass
        raise ValueError(f"{text!r} is not a Z85 CURVE public key (40 characters) nor a key file")
    try:
        mode = os.stat(text).st_mode
    except OSError as exc:
        raise ValueError(f"cannot read a CURVE public key from {text}: {exc.strerror or exc}") from None
    if not statmod.S_ISREG(mode):               # (a FIFO hung the daemon's start, silent: an adversarial pass)
        raise ValueError(f"cannot read a CURVE public key from {text}: not a regular file")
    try:
        pub, _ = zmq.auth.load_certificate(text)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a CURVE public key from {text}: {exc}") from None
    if not pub:
        raise ValueError(f"{text} holds no public-key line (a file made by `tickwire keygen` does)")
    return _checked_key(pub, "public-key", text)


def _only_ours_writes(path, st: os.stat_result, what: str) -> None:
    """ValueError (one line) unless ``path`` is this user's or root's and no one else can write it:
    whoever writes there chooses ``what``."""
    if st.st_uid not in (os.geteuid(), 0):
        raise ValueError(f"{path} is owned by another user (uid {st.st_uid}), who can change it: whoever writes "
                         f"there chooses {what}; make it yours (or root's)")
    if st.st_mode & 0o022:
        raise ValueError(f"{path} can be written by others (mode {st.st_mode & 0o7777:04o}): whoever writes "
                         f"there chooses {what}; chmod go-w {path}")


def trusted_key_file(path) -> None:
    """A public key file that says whom to trust (the publisher's, for a receiver): ValueError (one
    line) unless it is this user's or root's and no one else can write it. Whoever can write it
    chooses the publisher the daemon believes (an adversarial pass: one of nobody's, 0666, was
    taken without a word)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise ValueError(f"cannot read {p}: {exc.strerror or exc}") from None
    _only_ours_writes(p, st, "the publisher you trust")


def secret_certificate(path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``NAME.key_secret`` file, which must be a regular file owned by this
    user with no group/other permission; ValueError (one line) otherwise."""
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as exc:
        raise ValueError(f"cannot read {p}: {exc.strerror or exc}") from None
    if not statmod.S_ISREG(st.st_mode):
        raise ValueError(f"{p} is not a regular file")
    # what the file is comes first: a public key file given here was told to be made 0600, and
    # only after the chmod that it holds no secret key
    try:
        pub, sec = zmq.auth.load_certificate(str(p))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read a CURVE certificate from {p}: {exc}") from None
    if not pub or not sec:
        raise ValueError(f"{p} holds no secret key (use the NAME.key_secret file `tickwire keygen` writes)")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise ValueError(f"{p} must be yours and 0600 (it is owner uid {st.st_uid}, mode "
                         f"{st.st_mode & 0o7777:04o}): anyone who reads it can pose as you; chmod 600 {p}")
    pub, sec = _checked_key(pub, "public-key", p), _checked_key(sec, "secret-key", p)
    if zmq.curve_public(sec) != pub:
        raise ValueError(f"{p}: its public-key line is not the public key of its secret key (edited, or two files "
                         f"mixed): clients given that public key could not connect")
    return pub, sec


def _check_clients(d: Path) -> None:
    """A directory of client public keys, as the authenticator will load it (its ``*.key``
    files): ValueError (one line) when it cannot serve. One file that is not a public key made
    the authenticator load none, every allowed client shut out while the publisher ran on; a
    directory or key file others can write lets them add a key of their own, or shut everyone
    out so."""
    if not d.is_dir():
        raise ValueError(f"{d} is not a directory of client public keys")
    # exactly what zmq.auth.load_certificates reads (its pattern is not escaped: a directory
    # named with [ ] * ? is read as none, and refused so, below)
    files = sorted(glob.glob(os.path.join(str(d), "*.key")))
    if not files:
        raise ValueError(f"{d} holds no client public key (*.key): nobody could connect")
    for path in [str(d)] + files:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ValueError(f"{d}: cannot read {path}: {exc.strerror or exc}; one such file and the authenticator "
                             f"lets no client in (remove it)") from None
        _only_ours_writes(path, st, "who connects")
    for path in files:
        try:
            public_key(path)
        except ValueError as exc:
            raise ValueError(f"{d}: {exc}; one such file and the authenticator lets no client in (remove it)") from None


@dataclass(frozen=True)
class CurveClient:
    """A receiver's CURVE settings: the server's public key and this side's certificate."""

    server_key: bytes
    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def load(cls, server_key: str, secret_key_file) -> "CurveClient":
        pub, sec = secret_certificate(secret_key_file)
        return cls(public_key(server_key), pub, sec)

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client (before it connects)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


class CurveServer:
    """A publisher's CURVE settings: its certificate, and optionally a directory of the client
    public keys it lets in (any client that knows the server key is let in without one)."""

    def __init__(self, secret_key_file, clients_dir=None):
        self.public, self._secret = secret_certificate(secret_key_file)
        self.clients_dir = Path(clients_dir) if clients_dir else None
        if self.clients_dir is not None:
            _check_clients(self.clients_dir)
        self._auth = None

    def start(self, ctx: zmq.Context) -> None:
        """Start the ZAP authenticator on ``ctx`` (only with a clients directory); idempotent."""
        if self.clients_dir is None or self._auth is not None:
            return
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(self.clients_dir))

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server (before it binds)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret)

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


#: pyzmq's banners (zmq.auth.certs), so that a ``tickwire keygen`` file reads as its own
_PUBLIC_BANNER = getattr(zmq.auth.certs, "_cert_public_banner",
                         "#   ****  Generated on {0} by pyzmq  ****\n#   ZeroMQ CURVE Public Certificate\n"
                         "#   Exchange securely, or use a secure mechanism to verify the contents\n"
                         "#   of this file after exchange. Store public certificates in your home\n"
                         "#   directory, in the .curve subdirectory.\n\n")
_SECRET_BANNER = getattr(zmq.auth.certs, "_cert_secret_banner",
                         "#   ****  Generated on {0} by pyzmq  ****\n#   ZeroMQ CURVE **Secret** Certificate\n"
                         "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n\n")


def _create_exclusive(path: Path, mode: int, text: str) -> None:
    """Create ``path`` (``O_CREAT | O_EXCL | O_NOFOLLOW``: never an existing file, never through
    a symlink) with ``mode``, set on the open file whatever the umask, and write ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(text.encode("utf-8"))
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def keygen(directory, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) in ``directory`` (made
    0700 when new); refuses to overwrite. Returns both paths. The files are pyzmq's certificate
    format (``zmq.auth.load_certificate`` reads them).

    Each file is created ``O_CREAT | O_EXCL | O_NOFOLLOW``, its mode set on the open file, and
    a directory another user owns, or that group or others can write (``/tmp``), or one under a
    directory another user could replace, is refused (ValueError naming it): pyzmq's
    ``create_certificates`` opens with ``"w"``, after a check of ours that nothing was there,
    and the modes were set after by path; in a shared directory another user could plant
    ``NAME.key_secret`` (a file of theirs: it received the secret) or a symlink in between (an
    adversarial pass)."""
    import datetime

    from tickwire.engine.files import dir_problem

    d = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--name: expected a file name, got {name!r}")
    pub, sec = d / f"{name}.key", d / f"{name}.key_secret"
    made, p = [], d.absolute()
    while not os.path.lexists(p) and p != p.parent:
        made.append(p)                     # (deepest first: what a refusal removes again)
        p = p.parent
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    problem = dir_problem(d, "key directory", "refusing to write keys there")
    if problem:
        for p in made:                     # nothing of ours left in a place refused
            try:
                p.rmdir()
            except OSError:
                pass
        raise ValueError(f"{problem} (a new directory is made 0700: `tickwire keygen ~/tickwire-keys --name {name}`)")
    for p in (pub, sec):
        if os.path.lexists(p):             # a symlink too, dangling or not: never written through
            raise ValueError(f"{p} exists: not overwritten (remove it first, or choose another --name)")
    public, secret = zmq.curve_keypair()
    now = datetime.datetime.now()
    body = f"metadata\ncurve\n    public-key = \"{public.decode()}\"\n"
    try:
        _create_exclusive(sec, 0o600, _SECRET_BANNER.format(now) + body + f"    secret-key = \"{secret.decode()}\"\n")
    except FileExistsError:
        raise ValueError(f"{sec} exists: not overwritten (remove it first, or choose another --name)") from None
    try:
        _create_exclusive(pub, 0o644, _PUBLIC_BANNER.format(now) + body)
    except BaseException as exc:
        sec.unlink(missing_ok=True)        # (ours, just made: no half pair left)
        if isinstance(exc, FileExistsError):
            raise ValueError(f"{pub} exists: not overwritten (remove it first, or choose another --name)") from None
        raise
    return pub, sec


def serve_curve(curve: "CurveServer | None", *sockets: zmq.Socket) -> None:
    """Make each of ``sockets`` a CURVE server of ``curve`` (before they bind); nothing when None.
    Every publisher (simulator, replay, bridge) calls this on its data socket and ROUTER."""
    if curve is not None:
        for s in sockets:
            curve.apply(s)


def add_server_arguments(group, what: str = "") -> None:
    """``--curve-secret-key FILE`` and ``--curve-clients DIR`` of a publishing command."""
    group.add_argument("--curve-secret-key", metavar="FILE",
                       help=f"{what}publish as a ZeroMQ CURVE server with this certificate (NAME.key_secret "
                            "from `tickwire keygen`, 0600): data and snapshots are then authenticated and "
                            "encrypted; receivers set feeds.curve_server_key to its NAME.key (docs/security.md)")
    group.add_argument("--curve-clients", metavar="DIR",
                       help="with --curve-secret-key: let in only the client public keys (*.key) in DIR "
                            "[any client that knows the server key]")


def server_from_arguments(args) -> "CurveServer | None":
    """The :class:`CurveServer` of those arguments, or None; ValueError (one line naming the option)."""
    secret, clients = getattr(args, "curve_secret_key", None), getattr(args, "curve_clients", None)
    if clients and not secret:
        raise ValueError("--curve-clients: needs --curve-secret-key")
    if not secret:
        return None
    try:
        return CurveServer(secret, clients)
    except ValueError as exc:
        raise ValueError(f"--curve-secret-key/--curve-clients: {exc}") from None
