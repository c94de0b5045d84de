"""README.md as a newcomer reads it: the Python snippet runs as written, and the daemon's
commands (`tickwire run` on the example config, `simulate`, `status`, `signals --follow`, SIGTERM)
work as written, from the repository root, with the relative config path the README uses."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _block(after: str, lang: str) -> str:
    """The first fenced ``lang`` block after the heading ``after``."""
    rest = README[README.index(after):]
    m = re.search(rf"```{lang}\n(.*?)```", rest, re.S)
    assert m, f"no {lang} block after {after!r}"
    return m.group(1)


def test_readme_python_snippet_runs_as_written(tmp_path):
    code = _block("## The pieces, from Python", "python")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_dev_help_and_unknown_command():
    out = subprocess.run([str(ROOT / "dev")], capture_output=True, text=True)
    assert out.returncode == 0 and "TICKWIRE_VENV" in out.stdout           # the whole help, to its last line
    out = subprocess.run([str(ROOT / "dev"), "frobnicate"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr


@pytest.mark.alone
@pytest.mark.integration
def test_readme_daemon_commands_work_as_written(tmp_path):
    """The five lines of "The daemon", run from the repository root as written (`...` filled
    with the same config); the example config's state goes to the checkout's tickwire-data/."""
    lines = [ln.split("#")[0].strip() for ln in _block("## The daemon", "sh").splitlines() if ln.strip()]
    run, sig, status, books, sim = lines
    config = "engine/tickwire.example.toml"
    assert run == f"tickwire run --config {config}"
    daemon_md = (ROOT / "docs" / "daemon.md").read_text()
    d_run, d_sig, d_status, d_books, _ = [ln.split("#")[0].strip() for ln in re.search(
        r"```sh\n(.*?)```", daemon_md, re.S).group(1).splitlines() if ln.strip()]
    assert d_run == run                                 # docs/daemon.md's lines, run beside the README's
    sig, status, books = sig.replace("...", config), status.replace("...", config), books.replace("...", config)
    state = ROOT / "tickwire-data"
    for sub in ("example", "store"):
        if (state / sub).exists() and not os.environ.get("CI"):
            pytest.skip(f"{state / sub} exists: a daemon of the example config may be running here")
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen(run.split(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    follower = None
    try:
        end = time.monotonic() + 60
        while not (state / "example" / "metrics.url").exists():
            assert daemon.poll() is None and time.monotonic() < end, (tmp_path / "daemon.log").read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(1)
        follower = subprocess.Popen(sig.split(), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        follower2 = subprocess.Popen(d_sig.split(), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        # as written (no --wait-subscribers): the publisher sends before the daemon's subscription
        # takes effect, and the example config's history_from = "start" has those asked for again
        # (with "join" the first 2,000-11,000 events were missing from the store, nothing said)
        out = subprocess.run(sim.split() + ["--events", "200000", "--linger", "2", "--quiet"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "done: 200,000 events" in out.stdout, out.stdout + out.stderr
        st = subprocess.run(status.split(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert st.returncode == 0 and "history:" in st.stdout and "Traceback" not in st.stderr, st.stderr
        st2 = subprocess.run(d_status.split(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert st2.returncode == 0 and "history:" in st2.stdout, st2.stderr
        # the books of the running workers, as the README and docs/daemon.md ask for them
        bk = subprocess.run(books.split(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert bk.returncode == 0 and "SYN0 (id 0" in bk.stdout and "SYN1" not in bk.stdout, bk.stdout + bk.stderr
        assert "in sync" in bk.stdout and len(bk.stdout.splitlines()) == 2 + 10, bk.stdout
        bk2 = subprocess.run(d_books.split(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
        assert bk2.returncode == 0 and "SYN0" in bk2.stdout and "SYN1" in bk2.stdout, bk2.stdout + bk2.stderr
        # `tickwire status | head -2`: a closed pipe is no error
        piped = subprocess.run(f"{status} | head -2", shell=True, cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=30)
        assert "Traceback" not in piped.stderr and len(piped.stdout.splitlines()) == 2
    finally:
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=90)
        log.close()
    assert rc == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    # the follower ends by itself once the daemon has stopped
    got, err = follower.communicate(timeout=30)
    assert follower.returncode == 0 and "stopped" in err
    assert len([ln for ln in got.splitlines() if ln.startswith("{")]) > 0
    got2, err2 = follower2.communicate(timeout=30)                # text lines, one per signal
    assert follower2.returncode == 0 and "stopped" in err2
    # the same signals in the same order: each follower starts at the ring's newest record when it
    # attaches, so the one that attached later may lack the first few, never any after
    import json as jsonmod

    seq1 = [jsonmod.loads(ln)["seq"] for ln in got.splitlines() if ln.startswith("{")]
    seq2 = [int(ln.rsplit(" ", 1)[1]) for ln in got2.splitlines()]
    short, long_ = sorted((seq1, seq2), key=len)
    assert short and long_[len(long_) - len(short):] == short, (len(seq1), len(seq2))
    code = ("from tickwire.engine.store import Store\n"
            f"s = Store.open('chdb://{state / 'store'}')\n"
            "print(s.client.query('SELECT count(), uniqExact(channel, seq) FROM tickwire.ticks').result_rows[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(200000, 200000)"
    assert not (ROOT / "engine" / "tickwire-data").exists()        # no state inside the sources
    shutil.rmtree(state / "example", ignore_errors=True)
    shutil.rmtree(state / "store", ignore_errors=True)
    if not any(state.iterdir()):
        state.rmdir()                                   # (none of the run's state is left in the checkout)


def _doc_commands():
    """Every command line in a fenced block of README.md and docs/*.md that starts with
    ``tickwire``, ``./dev`` or ``.venv/bin/python`` at the line's start (backslash continuations
    joined, comments dropped): (file, line)."""
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split(" #")[0].strip() if not line.startswith(" ") else ""
                if re.match(r"(\$ )?(tickwire|\./dev|\.venv/bin/python) ", line + " "):
                    out.append((path.name, line.removeprefix("$ ")))
    return out


def test_every_documented_command_names_real_options_and_files():
    """What the docs tell a user to type exists: each `tickwire` line parses with the CLI's own
    parser (every option and choice as written; `...` stands for the config the text names),
    each `./dev` line names a command of ./dev, each script run with the venv's python exists."""
    import contextlib
    import io
    import shlex

    from tickwire.engine.cli import build_parser

    cmds = _doc_commands()
    assert len([c for c in cmds if c[1].startswith("tickwire ")]) >= 8, cmds
    dev_cmds = set(re.findall(r"^\s{4}([a-z]+)\)", (ROOT / "dev").read_text(), re.M))
    for doc, line in cmds:
        argv = shlex.split(line.replace("...", "tickwire.toml"))
        if argv[0] == "tickwire":
            parser = build_parser()
            try:
                with contextlib.redirect_stdout(io.StringIO()):      # `--help` lines print and exit 0
                    parser.parse_args(argv[1:])
            except SystemExit as exc:
                assert exc.code == 0, f"{doc}: `{line}` does not parse (exit {exc.code})"
        elif argv[0] == "./dev":
            assert len(argv) == 1 or argv[1] in dev_cmds, f"{doc}: `{line}`: no such ./dev command"
        else:
            script = ROOT / argv[1]
            assert script.exists(), f"{doc}: `{line}`: {argv[1]} does not exist"


# Where each command is described (README.md counts for all of them).
COMMAND_DOCS = {
    "run": ["daemon.md"], "signals": ["daemon.md"], "status": ["daemon.md", "monitoring.md"],
    "books": ["daemon.md", "books.md"], "demo": ["daemon.md"], "top": ["top.md"],
    "simulate": ["feeds.md"], "bridge": ["feeds.md"], "check-publisher": ["wire-format.md"],
    "keygen": ["security.md"], "bench": ["bench.md"], "replay": ["replay.md", "replay-report.md"],
    "plot": ["latency.md"], "bookbench": ["books.md"],
}


def _commands(parser, path=()):
    """(path, parser) of every command and subcommand under ``parser``."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_is_documented_where_the_command_is():
    """The other direction of the test above: each long option a command's `--help` shows is
    named in the docs that describe that command (options hidden from `--help` excepted)."""
    import argparse

    from tickwire.engine.cli import build_parser

    readme = README
    missing, seen = [], set()
    for path, parser in _commands(build_parser()):
        assert path[0] in COMMAND_DOCS, f"`tickwire {path[0]}` is described in no doc this test knows"
        seen.add(path[0])
        text = readme + "".join((ROOT / "docs" / d).read_text() for d in COMMAND_DOCS[path[0]])
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help" and not re.search(re.escape(opt) + r"(?![\w-])", text):
                    missing.append(f"tickwire {' '.join(path)} {opt}")
    assert not missing, "options in --help that the docs never name: " + ", ".join(missing)
    assert seen == set(COMMAND_DOCS)


NOT_RUN = "<!-- not run by the tests: "


def _python_blocks(path):
    """The ```python blocks of ``path`` in order: (line, code, reason not run or None)."""
    text = path.read_text()
    out = []
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        why = before[len(NOT_RUN):].removesuffix(" -->") if before.startswith(NOT_RUN) else None
        out.append((text[:m.start()].count("\n") + 1, m.group(1), why))
    return out


DOCS_WITH_PYTHON = sorted(p.name for p in (ROOT / "docs").glob("*.md")
                          if any(why is None for _, _, why in _python_blocks(p)))


@pytest.mark.parametrize("doc", DOCS_WITH_PYTHON)
def test_the_python_blocks_of_each_doc_run_as_written(doc, tmp_path):
    """A reader pasting a page's Python blocks, in order, into one interpreter started in an
    empty directory gets no error. A block that cannot run alone (a signature, a sketch, one that
    needs a running daemon) says so just above it, with the reason (NOT_RUN)."""
    runnable = [(line, code) for line, code, why in _python_blocks(ROOT / "docs" / doc) if why is None]
    # each block's first line is announced, so a failure names the block
    script = "".join(f"print('--- {doc}:{line}', flush=True)\n{code}" for line, code in runnable)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=180, env=env)
    where = re.findall(r"^--- (\S+)$", out.stdout, re.M)
    assert out.returncode == 0, f"{where[-1] if where else doc}: {out.stderr[-1500:]}"


@pytest.mark.alone
@pytest.mark.integration
def test_tickwire_demo_as_written_and_its_figures_add_up(tmp_path):
    """`tickwire demo` (docs/daemon.md, and what `./dev demo` runs) from a fresh directory: exit
    status 0, every published event stored once, the progress lines never show more processed
    than published or more received than emitted, and the files it names exist where it says."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(["tickwire", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    text = out.stdout
    assert "every published event stored exactly once: yes" in text, text[-3000:]
    published = int(re.search(r"published by the simulator\s+([\d,]+)", text).group(1).replace(",", ""))
    assert published == 2_000_000                                  # 20 s at 100,000 events/s
    for m in re.finditer(r"published\s+([\d,]+)\s+processed\s+([\d,]+)\s+stored\s+([\d,]+).*?signals\s+([\d,]+) "
                         r"\(received ([\d,]+)\)", text):
        pub, proc, stored, sig, rec = (int(g.replace(",", "")) for g in m.groups())
        assert proc <= pub <= published and stored <= published and rec <= sig, m.group(0)
    hdr = re.search(r"HDR interval logs: (.*)", text).group(1).split(", ")
    assert hdr and all(Path(p).exists() for p in hdr), hdr
    assert all(Path(p).parent == tmp_path / "tickwire-data" / "demo" / "hdr" for p in hdr), hdr
    assert re.search(r"store: chdb://" + re.escape(str(tmp_path / "tickwire-data" / "demo" / "store")), text)
    # permission audit: every directory and file the run left behind, and any ring segment of
    # the demo still in /dev/shm, is this user's alone (another local user reads no tick)
    exposed = [f"{p} {p.stat().st_mode & 0o777:04o}" for p in [tmp_path / "tickwire-data",
                                                                *(tmp_path / "tickwire-data").rglob("*")]
               if not p.is_symlink() and p.stat().st_mode & 0o077]
    exposed += [f"{p} {p.stat().st_mode & 0o777:04o}" for p in Path("/dev/shm").glob("tickwire-demo-*")
                if p.stat().st_mode & 0o077]
    assert not exposed, exposed[:20]


@pytest.mark.alone
@pytest.mark.integration
def test_feeds_md_capture_command_as_written(tmp_path):
    """docs/feeds.md's `tickwire simulate --capture kraken --rate 0` publishes the whole real
    capture and says so (the synthetic 10M-event line is checked by parsing only: 50 s at its rate)."""
    from tickwire.feeds import captures

    if captures.find_shared_data(captures.KRAKEN_FILE) is None:
        pytest.skip("the Kraken capture is in ../shared/data, which a fresh clone does not have")
    line = next(ln for doc, ln in _doc_commands() if doc == "feeds.md" and "--capture kraken" in ln)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(line.split(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    n = int(re.search(r"capture kraken: \d+ instruments, ([\d,]+) events", out.stdout).group(1).replace(",", ""))
    assert f"done: {n:,} events" in out.stdout, out.stdout[-2000:]


_LONG = [ln for doc, ln in _doc_commands()
         if ln.startswith(("./dev bench", "./dev annotate", ".venv/bin/python benchmarks/"))
         or (doc == "feeds.md" and "--events 10000000" in ln)]


@pytest.mark.slow
@pytest.mark.timeout(3600)                 # benchmarks: beyond the default run's 600 s a test
@pytest.mark.parametrize("line", _LONG)
def test_long_documented_commands_run_as_written(line):
    """The documented commands that take minutes (benchmarks, the annotated rebuild, the
    10M-event simulator line), run exactly as written from the repository root: on request,
    `pytest -m slow tests/test_docs.py` (`./dev bench` installs the bench extra first)."""
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "Traceback" not in out.stderr
