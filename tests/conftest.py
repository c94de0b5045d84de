"""Shared fixtures: the real captures (skipped with a reason where ../shared is absent); a tiny
tmpfs for a spill directory that fills up; at the end, any process the tests left running is
named and killed."""

import contextlib
import errno
import fcntl
import os
import signal
import tempfile
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import settings

from tickwire.feeds import captures

# Property-based tests draw the same examples on every run by default (``derandomize``), so
# what passes on a developer's machine passes in CI. ``TICKWIRE_HYPOTHESIS=explore`` draws
# fresh random examples each run (and keeps failures in .hypothesis/) to hunt for new cases;
# a case found that way goes into the suite as an explicit test.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("explore" if os.environ.get("TICKWIRE_HYPOTHESIS") == "explore" else "repeatable")


def _capture(loader, filename):
    path = captures.find_shared_data(filename)
    if path is None:
        pytest.skip(
            f"real capture {filename} not found: these tests need ../shared/data beside the "
            "checkout (or TICKWIRE_SHARED_DATA); a fresh clone does not have it"
        )
    return loader(path)


@pytest.fixture(scope="session")
def kraken():
    return _capture(captures.load_kraken, captures.KRAKEN_FILE)


@pytest.fixture(scope="session")
def binance():
    return _capture(captures.load_binance, captures.BINANCE_FILE)


# The compiled core's own tests: what the debug build's second pass runs (TICKWIRE_SUITE=core,
# set by ./dev test). Whole-system runs (processes, the store, the CLI) and pure-Python parts
# are left to the release pass: their C paths are the same ones these tests drive, with the
# bounds and initialisation checks on.
CORE_MODULES = {
    "test_book_l2", "test_book_l3", "test_build", "test_captures", "test_codec_fuzz", "test_cython_api",
    "test_feed_handler", "test_hdr", "test_instruments", "test_iothread", "test_pipeline", "test_records",
    "test_ring", "test_ring_procs", "test_rules", "test_stats", "test_wire",
}


def pytest_collection_modifyitems(config, items):
    suite = os.environ.get("TICKWIRE_SUITE", "all")
    if suite == "all":
        return
    if suite != "core":
        raise pytest.UsageError(f"TICKWIRE_SUITE: expected 'all' or 'core', got {suite!r}")
    keep, drop = [], []
    for item in items:
        (keep if item.module.__name__ in CORE_MODULES else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    from tickwire.ext import BUILD

    return f"tickwire extension build: {BUILD} (expected: {os.environ.get('TICKWIRE_EXPECT_BUILD', 'any')})"


@pytest.fixture
def tiny_disk():
    """A small tmpfs (1 MiB unless told) to mount as a spill or state directory (root only;
    skipped where mounting is not allowed); ``.fill(path)`` writes a file there until it is full."""
    mounted = []

    def mount(path, size="1m"):
        path.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True)      # (0700: a run directory must be its user's alone)
        if res.returncode:
            pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.decode().strip()}")
        mounted.append(path)
        return path

    held = []

    def fill(path, hold=False):
        """Write ``path`` until its filesystem is full; with ``hold``, keep it full until the
        file is removed (a page another process frees, a failed write's temporary file, is
        taken back within 5 ms: else the processes under test find room by turns)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

        def top_up():
            try:
                while os.write(fd, bytes(1 << 12)):
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        top_up()
        if not hold:
            os.close(fd)
            return

        def holding():
            try:
                while os.fstat(fd).st_nlink:          # until the test removes the file
                    top_up()
                    time.sleep(0.005)
            finally:
                os.close(fd)
        held.append(path)
        threading.Thread(target=holding, daemon=True).start()
    mount.fill = fill
    yield mount
    for path in held:
        try:
            os.unlink(path)
        except OSError:
            pass
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)])


# -- processes the tests left running ------------------------------------------------------------
# Every process the tests start inherits this marker. At the end of the run, any still running
# (a test that did not stop what it started) is named and killed: left alone it may hold the
# run's output open, and whatever reads it (CI) would wait for it. With pytest-xdist (./dev test
# runs two processes of tests) the workers keep the controller's marker and only the controller
# looks, once every worker is done: a worker that looked when it ran out of tests would kill the
# processes of the other's running test.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
_SESSION_MARK = ("TICKWIRE_TEST_SESSION", f"{os.getpid()}-{time.time_ns()}")
if _WORKER and os.environ.get(_SESSION_MARK[0]):
    _SESSION_MARK = (_SESSION_MARK[0], os.environ[_SESSION_MARK[0]])
os.environ[_SESSION_MARK[0]] = _SESSION_MARK[1]


def _left_running(skip=()) -> list[tuple[int, str]]:
    needle = f"{_SESSION_MARK[0]}={_SESSION_MARK[1]}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or int(entry.name) in skip:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry.name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:                                  # gone meanwhile, or not ours to read
            continue
        if "multiprocessing.resource_tracker" in cmd or "multiprocessing.forkserver" in cmd:
            continue                                     # Python's own helpers: they end with pytest
        found.append((int(entry.name), cmd))
    return found


def _children() -> set[int]:
    """This process's children (the controller's: its xdist workers, should any still be ending
    when this runs; xdist tears them down first)."""
    out = set()
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit():
                with open(f"/proc/{entry.name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid():
                        out.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def pytest_sessionfinish(session, exitstatus):
    if _WORKER:
        return                                           # the controller looks (above)
    for path in _LOCKS:
        with contextlib.suppress(OSError):
            os.unlink(path)
    xdist = getattr(session.config.option, "numprocesses", None) not in (None, 0)
    left = _left_running(skip=_children() if xdist else ())
    if not left:
        return
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    text = "\n".join([f"the tests left {len(left)} process(es) running; killed:",
                      *(f"  {pid} {cmd[:200]}" for pid, cmd in left)])
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write("\n" + text + "\n", yellow=True)
    else:
        print(text, file=sys.stderr)


# -- tests that need the machine alone ---------------------------------------------------------
# Under ./dev test's two test processes, a test marked ``alone`` runs while no other test does:
# the demos (one per machine: /tmp/tickwire-demo.lock), the example configs' default endpoints
# (their ipc feed, port 9464), a core kept busy on purpose, a bound on time. Every other test
# holds a lock shared and an ``alone`` one exclusive; while an ``alone`` test waits for it, no
# other test starts (the turnstile), so it is not put off for the rest of the run.
_LOCKS = [os.path.join(tempfile.gettempdir(), f"tickwire-tests-{_SESSION_MARK[1]}.{k}") for k in ("turn", "lock")]


@pytest.fixture(autouse=True)
def _share_the_machine(request):
    if not _WORKER:
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    with open(_LOCKS[0], "a") as turn, open(_LOCKS[1], "a") as lock:
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(turn, fcntl.LOCK_UN)
        try:
            yield
        finally:
            # (unlocked, not only closed: a child the test forked holds the same open file, and a
            # lock it kept would stop the next `alone` test in the other process until it ended)
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(turn, fcntl.LOCK_UN)
