"""Children that die with the process that started them, kill -9 included.

A parent starts a child with :func:`child_env` in its environment; the child calls
:func:`bind_to_parent` first thing. The child itself asks the kernel for a signal at its parent's
death (``prctl(PR_SET_PDEATHSIG)``), so the parent needs no ``preexec_fn``: Python code run between
``fork`` and ``exec`` in a parent with threads (the supervisor's metrics server, the demo's
consumer and pumps) can deadlock the child before it execs, and ``Popen`` then waits on it forever.
"""

from __future__ import annotations

import ctypes
import os
import signal

__all__ = ["ENV", "bind_to_parent", "child_env", "hold_stop_signals"]

#: ``"<parent pid>:<signal number>"``, taken out of the environment by the child that reads it.
ENV = "TICKWIRE_DIE_WITH"

_PR_SET_PDEATHSIG = 1


def child_env(sig: int = signal.SIGTERM, base=None) -> dict[str, str]:
    """The environment for a child that is to receive ``sig`` when this process dies: ``base``
    (default: this process's environment) plus :data:`ENV`."""
    return {**(os.environ if base is None else base), ENV: f"{os.getpid()}:{int(sig)}"}


def bind_to_parent() -> bool:
    """Arrange for the signal named by :data:`ENV` to reach this process when its parent dies,
    and send it at once when the parent is already gone (it died before this ran). Removes
    :data:`ENV` from the environment (this process's own children are not bound by it). Returns
    False when the variable is absent (a process started by hand), True otherwise."""
    spec = os.environ.pop(ENV, None)
    if not spec:
        return False
    try:
        parent, sig = (int(part) for part in spec.split(":"))
        signal.Signals(sig)
    except ValueError:
        raise SystemExit(f"{ENV}={spec!r}: expected '<parent pid>:<signal number>'") from None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:                        # the parent died before the prctl took
        os.kill(os.getpid(), sig)
    return True


def hold_stop_signals() -> list[int]:
    """For a child's first lines: a SIGTERM or SIGINT that comes while it starts (imports and
    set-up take up to seconds) is noted in the returned list instead of ending the process; the
    child installs its own handlers once it can stop cleanly and stops at once if the list holds
    one. (A daemon told to stop just after its start had its children die of the signal's default
    action, and exited 1 with errors though nothing was lost.)"""
    held: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: held.append(signum))
    return held
