"""The signal reload strategy (coordinator/pidsignal.py) against real processes and pid files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from coordinator.exceptions import ConfigError, ReloadError
from coordinator.pidsignal import SignalReloader, parse_signal

pytestmark = pytest.mark.anyio


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
