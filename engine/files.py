"""Reading a file a user names (a config, a saved run, a latency log), bounded; and replacing
one of the daemon's own files whole or not at all (:func:`replace_file`).

``Path.read_text`` reads whatever the path is: an adversarial pass gave ``--config /dev/zero``
(12.9 GB in 8 s, then the machine's memory), ``/dev/urandom``, and a FIFO (``run`` and ``status``
waited forever, not a word). :func:`read_regular` reads a regular file only, of a bounded size,
and says in one line what else the path is.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
from pathlib import Path

__all__ = ["NotReadable", "read_regular", "not_a_file", "file_kind", "replace_file"]


class NotReadable(ValueError):
    """The path is not a readable regular file within the size asked; the message is one line
    starting with the path."""


def read_regular(path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed) if it holds at most
    ``limit`` bytes; :class:`NotReadable` otherwise (missing, a directory, a device, a pipe, a
    socket, a symlink loop, unreadable, too large). A FIFO is opened without waiting for a writer."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotReadable(f"{p}: no such file") from None
    except IsADirectoryError:
        raise NotReadable(f"{p}: a directory, expected a {what}") from None
    except OSError as exc:
        why = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise NotReadable(f"{p}: cannot read it ({why})") from None
    try:
        st = os.fstat(fd)
        if statmod.S_ISDIR(st.st_mode):
            raise NotReadable(f"{p}: a directory, expected a {what}")
        kind = file_kind(st.st_mode)
        if kind:
            raise NotReadable(f"{p}: {kind}, expected a {what} (a regular file)")
        if st.st_size > limit:
            raise NotReadable(f"{p}: {st.st_size:,} bytes, more than a {what} holds (at most {limit:,})")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while True:                                   # (a file still growing: read up to the bound)
            b = os.read(fd, min(1 << 20, limit + 1 - size))
            if not b:
                break
            chunks.append(b)
            size += len(b)
            if size > limit:
                raise NotReadable(f"{p}: more than {limit:,} bytes, more than a {what} holds")
        return b"".join(chunks)
    except OSError as exc:
        raise NotReadable(f"{p}: cannot read it ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def not_a_file(path) -> str | None:
    """What ``path`` is when it is not a regular file (symlinks followed): ``"no such file"``,
    ``"a directory"``, ``"a pipe (FIFO)"``, ``"a device"``, ``"a socket"``, ``"a symlink loop"``
    or why it cannot be looked at; None for a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "a broken symlink" if os.path.islink(path) else "no such file"
    except OSError as exc:
        return "a symlink loop" if exc.errno == errno.ELOOP else f"cannot read it ({exc.strerror or exc})"
    return file_kind(st.st_mode)


def file_kind(mode: int, other: str = "not a regular file") -> str | None:
    """What a file of ``st_mode`` ``mode`` is when it is not a regular file: ``"a directory"``,
    ``"a pipe (FIFO)"``, ``"a device"``, ``"a socket"``, else ``other``; None for a regular file."""
    if statmod.S_ISREG(mode):
        return None
    return ("a directory" if statmod.S_ISDIR(mode) else "a pipe (FIFO)" if statmod.S_ISFIFO(mode) else
            "a device" if statmod.S_ISCHR(mode) or statmod.S_ISBLK(mode) else
            "a socket" if statmod.S_ISSOCK(mode) else other)


def replace_file(path, data, *, mode: int = 0o666, sync: bool = False) -> None:
    """Replace ``path`` with ``data`` (str or bytes), whole or not at all: written to a temporary
    file beside it and renamed over it, so a reader sees the old file or the new one. On failure
    (a full disk) the old file stays as it was, no temporary file is left taking room, and the
    error names ``path`` (a status file, a history note, ``metrics.url``: written in place, a
    full disk left them half written or empty). ``mode``: the new file's (before the umask);
    ``sync``: the file and then its directory fsynced (a journal that must survive a crash)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    view = memoryview(data.encode() if isinstance(data, str) else data)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if sync:
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise OSError(exc.errno, exc.strerror, str(path)) from None
