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
import re
import secrets
import stat as statmod
from contextlib import contextmanager
from pathlib import Path

__all__ = ["NotReadable", "read_regular", "not_a_file", "file_kind", "replace_file", "dir_problem",
           "open_log", "log_stream", "daemon_running"]


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


@contextmanager
def replacing(path):
    """A temporary path beside ``path`` to write the new file at (by a writer that takes a path:
    an interval log, a PNG), renamed over ``path`` when the block ends and removed if it raises:
    a reader sees the old file or the new one, and a symlink at ``path`` is replaced, never
    written through. (:func:`replace_file` for data in memory.)"""
    path = Path(path)
    # the mode a new file gets (0666 less the umask): mkstemp's 0600 made every PNG and
    # interval log unreadable to the rest of the user's group
    tmp, fd = _fresh_temp(path, 0o666)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fresh_temp(path: Path, mode: int) -> tuple[Path, int]:
    """A new empty file beside ``path`` under a name of its own, and its descriptor (for writing).
    A name of its own each time, created O_EXCL | O_NOFOLLOW: a symlink planted at the fixed name
    used before (".NAME.tmp", opened O_CREAT | O_TRUNC) had a root daemon overwrite the link's
    target with a status file (an adversarial pass); a crash's leftover cannot block it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


#: the name :func:`_fresh_temp` gives: ``.NAME.<pid>-<8 hex>.tmp``
_TEMP_NAME = re.compile(r"^\..+\.([0-9]+)-[0-9a-f]{8}\.tmp$")


def remove_stale_temps(top) -> int:
    """Remove, in ``top`` and the directories under it (symlinks not followed), the temporary
    files of :func:`replace_file` and :func:`replacing` whose process is gone (killed between
    creating and renaming one: a status file of every worker twice a second, so a kill -9 of the
    daemon left one behind now and then, each run's adding to the last's). Only regular files of
    this user's are touched; the number removed is returned."""
    me, removed = os.geteuid(), 0
    for d, _dirs, names in os.walk(top):
        for name in names:
            m = _TEMP_NAME.match(name)
            if m is None or pid_alive(int(m.group(1))):
                continue
            p = os.path.join(d, name)
            try:
                st = os.lstat(p)
                if statmod.S_ISREG(st.st_mode) and st.st_uid == me:
                    os.unlink(p)
                    removed += 1
            except OSError:
                pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: where nothing reaps the orphans, as in a
    container whose first process is not an init, a killed daemon's children stay zombies)."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")


def daemon_running(run_dir) -> bool:
    """Whether a supervisor holds ``run_dir``'s daemon lock (an exclusive flock while it runs)."""
    import fcntl

    try:
        fd = os.open(os.path.join(run_dir, "daemon.lock"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def replace_file(path, data, *, mode: int = 0o666, sync: bool = False) -> None:
    """Replace ``path`` with ``data`` (str or bytes), whole or not at all: written to a temporary
    file beside it and renamed over it, so a reader sees the old file or the new one. On failure
    (a full disk) the old file stays as it was, no temporary file is left taking room, and the
    error names ``path`` (a status file, a history note, ``metrics.url``: written in place, a
    full disk left them half written or empty). ``mode``: the new file's (before the umask);
    ``sync``: the file and then its directory fsynced (a journal that must survive a crash)."""
    path = Path(path)
    view = memoryview(data.encode() if isinstance(data, str) else data)
    made = False                                     # (a name found taken is not ours to remove)
    try:
        tmp, fd = _fresh_temp(path, mode)
        made = True
        try:
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        made = False
        if sync:
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as exc:
        if made:
            try:
                tmp.unlink()
            except OSError:
                pass
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def dir_problem(d, what: str = "directory", action: str = "refusing to start", *, root_ok: bool = False) -> str | None:
    """Why the existing directory ``d`` is no safe place for files a daemon (perhaps root) writes
    and later trusts, or None: it must be this user's and not writable by its group or others,
    and every directory above it this user's or root's, not writable by group or others unless
    sticky (whoever can rename an entry on the way can put a directory of theirs in its place,
    their symlinks in it; a group of this user's alone, as a umask of 002 makes checkouts,
    counts as this user); no symlink on the way may be another user's. The text names the
    directory, its owner and mode, says ``action`` and what to do; OSError when ``d`` cannot be
    looked at (it does not exist, say). ``root_ok``: ``d`` itself may be root's too (a log
    directory such as /var/log).

    (Only the directory and its parent's others-write bit were checked: a parent writable by a
    group, or another user's, let that user swap the run directory for one of theirs: an
    adversarial pass.)"""
    me = os.geteuid()
    d = Path(os.path.abspath(d))
    lst = os.lstat(d)
    if statmod.S_ISLNK(lst.st_mode) and lst.st_uid not in (me, 0):
        return (f"the {what} {d} is a symlink of another user's (owner {_owner(lst.st_uid)}): they choose where "
                f"it leads; {action}. Remove it, or use a directory of yours")
    real = Path(os.path.realpath(d))
    st = os.stat(real)
    if not statmod.S_ISDIR(st.st_mode):
        return f"the {what} {d} is not a directory; {action}"
    mode = st.st_mode & 0o7777
    if st.st_uid not in ((me, 0) if root_ok else (me,)) or mode & 0o002 or (mode & 0o020 and not _group_is_mine(st.st_gid)):
        return (f"the {what} {d} is not yours alone (owner {_owner(st.st_uid)}, mode {mode:04o}): another user may "
                f"have made it or written into it; {action}. Remove it (or chmod go-w it if it is yours and holds "
                f"nothing of theirs), or use a directory of yours")
    seen = set()
    for chain in (d.parents, real.parents):            # the path as written, and where it leads
        for i, p in enumerate(chain):
            if p in seen:
                continue
            seen.add(p)
            name = "the directory that holds it" if i == 0 else "the directory above it"
            lst = os.lstat(p)
            if statmod.S_ISLNK(lst.st_mode) and lst.st_uid not in (me, 0):
                return (f"{name} {p} is a symlink of another user's (owner {_owner(lst.st_uid)}): they choose "
                        f"where the {what} is; {action}. Use a directory of yours")
            st = os.stat(p)
            mode = st.st_mode & 0o7777
            if st.st_uid not in (me, 0):
                return (f"{name} {p} belongs to another user (owner {_owner(st.st_uid)}, mode {mode:04o}), who can "
                        f"replace the {what} in it; {action}. Use a directory under ones only you or root own")
            if (mode & 0o002 or (mode & 0o020 and not _group_is_mine(st.st_gid))) and not mode & statmod.S_ISVTX:
                who = "anyone" if mode & 0o002 else "its group"
                return (f"{name} {p} can be written by {who} (mode {mode:04o}, no sticky bit): another user could "
                        f"replace the {what} in it; {action}. chmod go-w it, or use a directory of yours")
    return None


def _group_is_mine(gid: int) -> bool:
    """Whether group ``gid`` is this user's own and holds no one else (a user private group, as
    a umask of 002 leaves checkouts group-writable: writable by that group is by this user alone)."""
    import grp
    import pwd

    if gid != os.getegid():
        return False
    try:
        members = set(grp.getgrgid(gid).gr_mem)
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return False
    if not members <= {me}:
        return False
    try:                                               # nobody else's primary group either
        return all(u.pw_gid != gid or u.pw_uid == os.geteuid() for u in pwd.getpwall())
    except OSError:
        return False


def _owner(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid}, {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def open_log(path):
    """``path`` opened for appending text, line-buffered, never through a symlink (``O_NOFOLLOW``:
    a link planted as ``daemon.log_file`` had the daemon append its log to the link's target)
    and only if it is a regular file; OSError otherwise (ELOOP for a symlink)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    try:
        st = os.fstat(fd)
        if not statmod.S_ISREG(st.st_mode):         # (a FIFO: opened without waiting, refused)
            raise OSError(errno.EINVAL, f"{file_kind(st.st_mode)}, expected a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    except BaseException:
        os.close(fd)
        raise


def log_stream(path):
    """``daemon.log_file`` opened to append, never through a symlink (:func:`open_log`), for a
    worker's or the writer's logging; None (stderr) when there is none or it cannot be opened
    (said on stderr)."""
    if not path:
        return None
    try:
        return open_log(path)
    except OSError as exc:
        import sys

        print(f"tickwire: daemon.log_file: cannot append to {path} ({exc.strerror or exc}): logging to stderr",
              file=sys.stderr, flush=True)
        return None
