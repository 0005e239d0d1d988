"""coordinator.reload against real things: files (uWSGI --touch-reload semantics), FIFOs, processes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from coordinator.config import Config, Layout
from coordinator.exceptions import ConfigError, ReloadError
from coordinator.reload import (
    FIFO_RELOAD_COMMANDS,
    CommandReloader,
    FifoReloader,
    SignalReloader,
    TouchReloader,
    make_reloader,
    parse_signal,
)

pytestmark = pytest.mark.anyio


def _mtime(path: Path) -> float:
    return os.lstat(path).st_mtime


def _set_mtime(path: Path, seconds: int) -> None:
    ns = seconds * 1_000_000_000
    os.utime(path, ns=(ns, ns))


async def test_reload_creates_missing_file(tmp_path: Path) -> None:
    """The reload file is created (as a regular file) when it does not exist."""
    r = TouchReloader(tmp_path / "reload")
    token = r.token(None)
    await r.reload(token)
    assert (tmp_path / "reload").is_file()
    assert not (tmp_path / "reload").is_symlink()
    assert _mtime(tmp_path / "reload") == token


async def test_reload_keeps_existing_content(tmp_path: Path) -> None:
    """Touching an existing reload file changes its mtime, not its content."""
    path = tmp_path / "reload"
    path.write_text("keep me\n")
    await TouchReloader(path).reload(None)
    assert path.read_text() == "keep me\n"


async def test_token_is_whole_second_not_before_now(tmp_path: Path) -> None:
    """A token is an int and at least the current whole second."""
    before = math.floor(time.time())
    token = TouchReloader(tmp_path / "reload").token(None)
    assert isinstance(token, int)
    assert before <= token <= math.floor(time.time())


async def test_token_is_greater_than_previous(tmp_path: Path) -> None:
    """A token is strictly greater than the previous token, even one in the future."""
    r = TouchReloader(tmp_path / "reload")
    last = math.floor(time.time()) + 10
    assert r.token(last) == last + 1


async def test_token_is_greater_than_file_mtime(tmp_path: Path) -> None:
    """A token is strictly greater than the reload file's current (future) mtime."""
    path = tmp_path / "reload"
    path.touch()
    future = math.floor(time.time()) + 7
    _set_mtime(path, future)
    assert TouchReloader(path).token(None) == future + 1
    assert TouchReloader(path).token(future - 3) == future + 1


async def test_reload_writes_token_as_mtime(tmp_path: Path) -> None:
    """reload sets the file's mtime to exactly the token, in whole seconds."""
    path = tmp_path / "reload"
    r = TouchReloader(path)
    token = r.token(None) + 5
    await r.reload(token)
    st = os.lstat(path)
    assert st.st_mtime_ns == token * 1_000_000_000


async def test_two_reloads_in_one_second_differ_by_a_second(tmp_path: Path) -> None:
    """Two reloads within the same second leave mtimes at least 1 s apart (uWSGI compares seconds)."""
    path = tmp_path / "reload"
    r = TouchReloader(path)
    first = r.token(None)
    await r.reload(first)
    m1 = _mtime(path)
    second = r.token(first)
    await r.reload(second)
    m2 = _mtime(path)
    assert second > first
    assert m2 - m1 >= 1


async def test_reload_without_token_still_advances_mtime(tmp_path: Path) -> None:
    """reload(None) twice in a row also advances the mtime by at least a whole second."""
    path = tmp_path / "reload"
    r = TouchReloader(path)
    await r.reload(None)
    m1 = _mtime(path)
    await r.reload(None)
    assert _mtime(path) - m1 >= 1


async def test_already_done_only_for_token_written(tmp_path: Path) -> None:
    """already_done is true for the token written and false for any other token or None."""
    r = TouchReloader(tmp_path / "reload")
    token = r.token(None)
    assert not await r.already_done(token)
    await r.reload(token)
    assert await r.already_done(token)
    assert not await r.already_done(token + 1)
    assert not await r.already_done(token - 1)
    assert not await r.already_done(None)


async def test_symlink_reload_file_is_refused(tmp_path: Path) -> None:
    """A reload file that is a symlink raises ReloadError and its target's mtime is untouched."""
    target = tmp_path / "target"
    target.write_text("x")
    _set_mtime(target, 1_000_000_000)
    link = tmp_path / "reload"
    link.symlink_to(target)
    r = TouchReloader(link)
    with pytest.raises(ReloadError) as info:
        await r.reload(r.token(None))
    assert "symlink" in info.value.message
    assert info.value.retryable
    assert os.stat(target).st_mtime_ns == 1_000_000_000 * 1_000_000_000
    assert link.is_symlink()


async def test_dangling_symlink_reload_file_creates_nothing(tmp_path: Path) -> None:
    """A dangling symlink as reload file raises ReloadError and does not create its target."""
    link = tmp_path / "reload"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ReloadError):
        await TouchReloader(link).reload(None)
    assert not os.path.lexists(tmp_path / "elsewhere")


async def test_missing_directory_names_the_directory(tmp_path: Path) -> None:
    """A reload file in a directory that does not exist gives a ReloadError naming that directory."""
    missing = tmp_path / "no" / "such-dir"
    with pytest.raises(ReloadError) as info:
        await TouchReloader(missing / "reload").reload(None)
    assert re.search(re.escape(str(missing)) + "(?!/)", info.value.message), info.value.message
    assert info.value.fix
    assert not os.path.lexists(tmp_path / "no")


async def test_fifo_reload_file_fails_without_hanging(tmp_path: Path) -> None:
    """A FIFO planted as reload file gives ReloadError at once instead of blocking on open."""
    path = tmp_path / "reload"
    os.mkfifo(path)

    def unblock() -> None:  # if open() blocked waiting for a reader, become one so the test fails, not hangs
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))

    watchdog = threading.Timer(5, unblock)
    watchdog.start()
    try:
        with pytest.raises(ReloadError):
            await TouchReloader(path).reload(None)
    finally:
        watchdog.cancel()


async def test_directory_reload_file_is_refused(tmp_path: Path) -> None:
    """A directory at the reload path gives ReloadError."""
    path = tmp_path / "reload"
    path.mkdir()
    with pytest.raises(ReloadError):
        await TouchReloader(path).reload(None)


async def test_touch_reload_accepts_release_keyword(tmp_path: Path) -> None:
    """TouchReloader.reload takes the release name as a keyword and ignores it."""
    r = TouchReloader(tmp_path / "reload")
    token = r.token(None)
    await r.reload(token, release="v1-abc")
    assert _mtime(tmp_path / "reload") == token


# --- FIFO (uWSGI --master-fifo) ---------------------------------------------------------------------


class FifoReader(threading.Thread):
    """Reads a FIFO the way the uWSGI master does: opened non-blocking, read until a writer closes."""

    def __init__(self, path: Path, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.delay = delay
        self.data = bytearray()
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        time.sleep(self.delay)
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.ready.set()
        deadline = time.monotonic() + 10
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                readable, _, _ = select.select([fd], [], [], 0.02)
                chunk = os.read(fd, 4096) if readable else b""
                if chunk:
                    self.data += chunk
                elif self.data:
                    return  # the writer closed after writing
                else:
                    time.sleep(0.005)  # no writer yet: a FIFO never written to polls as readable (EOF)
        finally:
            os.close(fd)

    def received(self, timeout: float = 5.0) -> bytes:
        self.join(timeout)
        self.stop.set()
        self.join(timeout)
        return bytes(self.data)


@contextlib.contextmanager
def _watchdog(unblock: Callable[[], object], after: float = 3.0) -> Iterator[None]:
    """Run ``unblock`` after ``after`` seconds: a writer that blocked by mistake then fails the test, not hangs."""

    def run() -> None:
        with contextlib.suppress(OSError):
            unblock()

    timer = threading.Timer(after, run)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _open_and_close_reader(path: Path) -> None:
    os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A real FIFO, nobody reading it yet."""
    path = tmp_path / "master.fifo"
    os.mkfifo(path, 0o600)
    return path


def _reader(path: Path) -> FifoReader:
    reader = FifoReader(path)
    reader.start()
    assert reader.ready.wait(5)
    return reader


async def test_fifo_writes_graceful_reload_by_default(fifo: Path) -> None:
    """By default the reader receives exactly the byte 'r' (graceful reload)."""
    reader = _reader(fifo)
    with anyio.fail_after(5):
        await FifoReloader(fifo).reload(None, release="v1-abc")
    assert reader.received() == b"r"


@pytest.mark.parametrize("command", sorted(FIFO_RELOAD_COMMANDS))
async def test_fifo_writes_configured_command(fifo: Path, command: str) -> None:
    """Each reload command is written to the FIFO as its single byte."""
    reader = _reader(fifo)
    with anyio.fail_after(5):
        await FifoReloader(fifo, command).reload(None)
    assert reader.received() == command.encode()


@pytest.mark.parametrize("command", ["q", "Q", "s", "f", "rr", "x", "", "1r", "é"])
def test_fifo_non_reload_command_is_config_error(tmp_path: Path, command: str) -> None:
    """A FIFO command that is not a uWSGI reload command (stop, stats, ...) is refused at construction."""
    with pytest.raises(ConfigError) as info:
        FifoReloader(tmp_path / "fifo", command)
    assert info.value.fix and "r (graceful reload)" in info.value.fix


async def test_fifo_without_reader_fails_fast(fifo: Path) -> None:
    """A FIFO nobody reads gives ReloadError 'no reader' quickly instead of hanging."""
    started = time.monotonic()
    with _watchdog(lambda: _open_and_close_reader(fifo)), anyio.fail_after(2), pytest.raises(ReloadError) as info:
        await FifoReloader(fifo).reload(None)
    assert "no reader" in info.value.message
    assert info.value.retryable
    assert time.monotonic() - started < 1.5


async def test_fifo_waits_briefly_for_a_reader(fifo: Path) -> None:
    """A reader that appears within retry_for (uWSGI recreating its FIFO) still gets the command."""
    reader = FifoReader(fifo, delay=0.1)
    reader.start()
    with anyio.fail_after(5):
        await FifoReloader(fifo, retry_for=3).reload(None)
    assert reader.received() == b"r"


async def test_fifo_missing_path_fails(tmp_path: Path) -> None:
    """A FIFO path that does not exist gives ReloadError and creates nothing."""
    path = tmp_path / "master.fifo"
    with anyio.fail_after(2), pytest.raises(ReloadError) as info:
        await FifoReloader(path).reload(None)
    assert "does not exist" in info.value.message
    assert not os.path.lexists(path)


async def test_fifo_regular_file_is_refused_and_not_written(tmp_path: Path) -> None:
    """A regular file planted at the FIFO path gives ReloadError and keeps its content and mtime."""
    path = tmp_path / "master.fifo"
    path.write_bytes(b"keep")
    _set_mtime(path, 1_000_000_000)
    with anyio.fail_after(2), pytest.raises(ReloadError) as info:
        await FifoReloader(path).reload(None)
    assert "not a FIFO" in info.value.message
    assert path.read_bytes() == b"keep"
    assert os.stat(path).st_mtime_ns == 1_000_000_000 * 1_000_000_000


async def test_fifo_symlink_to_fifo_is_refused(fifo: Path, tmp_path: Path) -> None:
    """A symlink at the FIFO path is refused even when it points at a FIFO with a reader."""
    link = tmp_path / "link.fifo"
    link.symlink_to(fifo)
    reader = _reader(fifo)
    with anyio.fail_after(2), pytest.raises(ReloadError) as info:
        await FifoReloader(link).reload(None)
    assert "symlink" in info.value.message
    reader.stop.set()
    assert reader.received() == b""


async def test_fifo_full_pipe_fails_without_hanging(fifo: Path) -> None:
    """A FIFO whose reader never reads (pipe buffer full) gives ReloadError instead of blocking."""
    read_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fill_fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(fill_fd, b"\0" * 65536)
        with _watchdog(lambda: os.read(read_fd, 1 << 20)), anyio.fail_after(2), pytest.raises(ReloadError) as info:
            await FifoReloader(fifo).reload(None)
        assert "full" in info.value.message
    finally:
        os.close(fill_fd)
        os.close(read_fd)


async def test_fifo_has_no_token_and_is_never_already_done(fifo: Path) -> None:
    """The FIFO strategy has no token and never claims a reload already happened (at-least-once)."""
    r = FifoReloader(fifo)
    reader = _reader(fifo)
    assert r.token(41) is None
    await r.reload(None)
    assert reader.received() == b"r"
    assert not await r.already_done(None)


# --- signal (gunicorn HUP) ---------------------------------------------------------------------------

_HUP_CHILD = """
import os, signal, sys, time
out, pidfile = sys.argv[1], sys.argv[2]
def on_hup(signum, frame):
    with open(out, "a") as f:
        f.write(f"{signum}\\n")
signal.signal(signal.SIGHUP, on_hup)
with open(pidfile + ".tmp", "w") as f:
    f.write(f"{os.getpid()}\\n")
os.replace(pidfile + ".tmp", pidfile)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.01)
"""


class HupChild:
    """A real process that records each SIGHUP it receives in a file and writes its pid file."""

    def __init__(self, tmp_path: Path) -> None:
        self.out = tmp_path / "hups"
        self.pidfile = tmp_path / "app.pid"
        self.proc = subprocess.Popen([sys.executable, "-c", _HUP_CHILD, str(self.out), str(self.pidfile)])
        deadline = time.monotonic() + 10
        while not self.pidfile.exists():
            assert self.proc.poll() is None, "the child exited early"
            assert time.monotonic() < deadline, "the child wrote no pid file"
            time.sleep(0.01)

    def hups(self) -> list[str]:
        return self.out.read_text().split() if self.out.exists() else []

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def hup_child(tmp_path: Path) -> Iterator[HupChild]:
    child = HupChild(tmp_path)
    try:
        yield child
    finally:
        child.close()


def _exited_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


async def test_signal_reaches_process_in_pidfile(hup_child: HupChild) -> None:
    """SignalReloader sends HUP to the process whose pid is in the pid file."""
    await SignalReloader(hup_child.pidfile, "HUP").reload(None, release="v1-abc")
    with anyio.fail_after(5):
        while not hup_child.hups():
            await anyio.sleep(0.01)
    assert hup_child.hups() == [str(int(signal.SIGHUP))]
    assert hup_child.proc.poll() is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HUP", signal.SIGHUP),
        ("SIGHUP", signal.SIGHUP),
        ("hup", signal.SIGHUP),
        (" 1 ", signal.SIGHUP),
        ("USR2", signal.SIGUSR2),
        ("sigusr1", signal.SIGUSR1),
        (str(int(signal.SIGTERM)), signal.SIGTERM),
    ],
)
def test_signal_names_and_numbers_are_accepted(text: str, expected: signal.Signals) -> None:
    """Signal names with or without SIG, any case, and signal numbers are accepted."""
    assert parse_signal(text) == expected


@pytest.mark.parametrize("text", ["", "FOO", "SIGFOO", "0", "999", "-1", "1.0", "HUP;ls", "KILL", "SIGSTOP", "9"])
def test_unknown_or_unusable_signal_is_config_error(tmp_path: Path, text: str) -> None:
    """An unknown signal, 0, or one no process can handle (KILL, STOP) is refused at construction."""
    with pytest.raises(ConfigError):
        SignalReloader(tmp_path / "app.pid", text)


async def test_signal_stale_pid_fails_with_namespace_hint(tmp_path: Path) -> None:
    """A pid file naming a process that has exited gives ReloadError that mentions the PID namespace."""
    pidfile = tmp_path / "app.pid"
    pid = await anyio.to_thread.run_sync(_exited_pid)
    pidfile.write_text(f"{pid}\n")
    with pytest.raises(ReloadError) as info:
        await SignalReloader(pidfile, "HUP").reload(None)
    assert f"no process {pid}" in info.value.message
    assert info.value.fix and "PID namespace" in info.value.fix
    assert info.value.retryable


async def test_signal_missing_pidfile_fails(tmp_path: Path) -> None:
    """A missing pid file gives ReloadError saying so, with a fix."""
    with pytest.raises(ReloadError) as info:
        await SignalReloader(tmp_path / "app.pid", "HUP").reload(None)
    assert "does not exist" in info.value.message
    assert info.value.fix


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"abc\n", b"12abc", b"-5\n", b"+5\n", b"0\n", b"1 2\n", b"\xff\xfe", b"9" * 11, b" " * 63 + b"77"],
)
async def test_signal_garbage_pidfile_fails(tmp_path: Path, content: bytes) -> None:
    """A pid file that does not hold one positive process id (or is over 64 bytes) gives ReloadError."""
    pidfile = tmp_path / "app.pid"
    pidfile.write_bytes(content)
    with pytest.raises(ReloadError) as info:
        await SignalReloader(pidfile, "HUP").reload(None)
    assert "does not hold a process id" in info.value.message


async def test_signal_symlink_pidfile_is_refused(hup_child: HupChild, tmp_path: Path) -> None:
    """A pid file that is a symlink is refused and no signal is sent."""
    link = tmp_path / "link.pid"
    link.symlink_to(hup_child.pidfile)
    with pytest.raises(ReloadError) as info:
        await SignalReloader(link, "HUP").reload(None)
    assert "symlink" in info.value.message
    await anyio.sleep(0.1)
    assert hup_child.hups() == []


async def test_signal_own_pid_is_refused(tmp_path: Path) -> None:
    """A pid file naming coordinator itself (written in another PID namespace) is refused."""
    pidfile = tmp_path / "app.pid"
    pidfile.write_text(f"{os.getpid()}\n")
    with pytest.raises(ReloadError) as info:
        await SignalReloader(pidfile, "USR2").reload(None)
    assert "coordinator itself" in info.value.message
    assert info.value.fix and "PID namespace" in info.value.fix


async def test_signal_has_no_token_and_is_never_already_done(tmp_path: Path) -> None:
    """The signal strategy has no token and never claims a reload already happened."""
    r = SignalReloader(tmp_path / "app.pid", "HUP")
    assert r.token(41) is None
    assert not await r.already_done(None)


# --- command -----------------------------------------------------------------------------------------

_ARGV_SCRIPT = """
import json, os, sys
with open(sys.argv[1], "w") as f:
    json.dump({"argv": sys.argv[2:], "release": os.environ.get("COORDINATOR_RELEASE")}, f)
"""


def _argv_command(tmp_path: Path, *args: str) -> tuple[str, Path]:
    """A --reload-command that records its argv and COORDINATOR_RELEASE in a JSON file."""
    out = tmp_path / "seen.json"
    script = tmp_path / "record.py"
    script.write_text(_ARGV_SCRIPT)
    return shlex.join([sys.executable, str(script), str(out), *args]), out


async def test_command_argv_reaches_program_without_shell(tmp_path: Path) -> None:
    """Shell syntax in the command reaches the program literally: no shell runs it."""
    tricky = ["$(touch pwned)", "a;touch pwned2", "*", "`id`", "x y", "|", "$HOME"]
    command, out = _argv_command(tmp_path, *tricky)
    await CommandReloader(command, 10).reload(None)
    assert json.loads(out.read_text())["argv"] == tricky
    assert not list(tmp_path.glob("pwned*"))
    assert not list(Path.cwd().glob("pwned*"))


async def test_command_splits_like_a_shell(tmp_path: Path) -> None:
    """The command is split with shell quoting rules: quotes group words and are removed."""
    out = tmp_path / "seen.json"
    script = tmp_path / "record.py"
    script.write_text(_ARGV_SCRIPT)
    command = (
        f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {shlex.quote(str(out))} 'one two' \"three\" four"
    )
    await CommandReloader(command, 10).reload(None)
    assert json.loads(out.read_text())["argv"] == ["one two", "three", "four"]


async def test_command_gets_release_in_environment(tmp_path: Path) -> None:
    """The command sees COORDINATOR_RELEASE set to the release passed to reload."""
    command, out = _argv_command(tmp_path)
    await CommandReloader(command, 10).reload(None, release="v2-0123abcd")
    assert json.loads(out.read_text())["release"] == "v2-0123abcd"


async def test_command_without_release_gets_no_stale_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a release, COORDINATOR_RELEASE inherited from coordinator's environment is not passed on."""
    monkeypatch.setenv("COORDINATOR_RELEASE", "stale")
    command, out = _argv_command(tmp_path)
    await CommandReloader(command, 10).reload(None)
    assert json.loads(out.read_text())["release"] is None


async def test_command_failure_raises_with_output(tmp_path: Path) -> None:
    """A command exiting non-zero gives ReloadError with its exit code and last output lines."""
    code = "import sys; [print(f'line {i}') for i in range(50)]; print('boom', file=sys.stderr); sys.exit(3)"
    r = CommandReloader(shlex.join([sys.executable, "-c", code]), 10)
    with pytest.raises(ReloadError) as info:
        await r.reload(None)
    assert "exit code 3" in info.value.message
    output = info.value.fields["output"]
    assert output.splitlines()[-1] == "boom"
    assert "line 49" in output
    assert "line 0\n" not in output
    assert info.value.fields["rc"] == 3


async def test_command_timeout_raises(tmp_path: Path) -> None:
    """A command that outlives --reload-timeout is killed and gives ReloadError with its output."""
    code = "import time; print('starting', flush=True); time.sleep(60)"
    r = CommandReloader(shlex.join([sys.executable, "-c", code]), 0.5)
    started = time.monotonic()
    with anyio.fail_after(10), pytest.raises(ReloadError) as info:
        await r.reload(None)
    assert "timed out" in info.value.message
    assert info.value.fields["output"] == "starting"
    assert time.monotonic() - started < 5


async def test_command_missing_program_raises(tmp_path: Path) -> None:
    """A program that does not exist gives ReloadError, not an OSError."""
    with pytest.raises(ReloadError) as info:
        await CommandReloader(str(tmp_path / "no-such-program"), 10).reload(None)
    assert "cannot run" in info.value.message


@pytest.mark.parametrize("command", ["", "   ", "'unclosed", 'say "hi'])
def test_command_empty_or_unsplittable_is_config_error(command: str) -> None:
    """An empty command, or one with unbalanced quotes, is refused at construction."""
    with pytest.raises(ConfigError):
        CommandReloader(command, 10)


async def test_command_has_no_token_and_is_never_already_done() -> None:
    """The command strategy has no token and never claims a reload already happened."""
    r = CommandReloader("true", 10)
    assert r.token(41) is None
    assert not await r.already_done(None)


# --- make_reloader -----------------------------------------------------------------------------------


def _config(tmp_path: Path, **changes: Any) -> Config:
    return Config(layout=Layout.for_root(tmp_path), repo="r", **changes)


def test_make_reloader_defaults_to_touch_on_the_layout_reload_file(tmp_path: Path) -> None:
    """Without reload options, make_reloader gives a TouchReloader on the layout's reload file."""
    r = make_reloader(_config(tmp_path))
    assert isinstance(r, TouchReloader)
    assert r.path == tmp_path / "reload.touch"


def test_make_reloader_picks_fifo(tmp_path: Path) -> None:
    """--reload-fifo gives a FifoReloader with the configured command."""
    r = make_reloader(_config(tmp_path, reload_fifo=tmp_path / "fifo", reload_fifo_command="c"))
    assert isinstance(r, FifoReloader)
    assert (r.name, r.path, r.command) == ("fifo", tmp_path / "fifo", "c")


def test_make_reloader_picks_signal(tmp_path: Path) -> None:
    """--reload-signal with --reload-pidfile gives a SignalReloader."""
    r = make_reloader(_config(tmp_path, reload_signal="USR2", reload_pidfile=tmp_path / "app.pid"))
    assert isinstance(r, SignalReloader)
    assert (r.name, r.pidfile, r.signum) == ("signal", tmp_path / "app.pid", signal.SIGUSR2)


def test_make_reloader_picks_command(tmp_path: Path) -> None:
    """--reload-command gives a CommandReloader with the argv and --reload-timeout."""
    r = make_reloader(_config(tmp_path, reload_command="supervisorctl restart 'my app'", reload_timeout=7.5))
    assert isinstance(r, CommandReloader)
    assert (r.name, r.argv, r.timeout) == ("command", ["supervisorctl", "restart", "my app"], 7.5)


def test_make_reloader_validates_fifo_command(tmp_path: Path) -> None:
    """A --reload-fifo-command that does not reload is a ConfigError from make_reloader."""
    with pytest.raises(ConfigError):
        make_reloader(_config(tmp_path, reload_fifo=tmp_path / "fifo", reload_fifo_command="q"))
