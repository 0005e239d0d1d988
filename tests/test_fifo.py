"""The uWSGI master FIFO reload strategy (coordinator/fifo.py) against real FIFOs."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from coordinator.exceptions import ConfigError, ReloadError
from coordinator.fifo import FIFO_RELOAD_COMMANDS, FifoReloader

pytestmark = pytest.mark.anyio


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


async def _reader(path: Path) -> FifoReader:
    reader = FifoReader(path)
    reader.start()
    assert await anyio.to_thread.run_sync(reader.ready.wait, 5)
    return reader


async def test_fifo_writes_graceful_reload_by_default(fifo: Path) -> None:
    """By default the reader receives exactly the byte 'r' (graceful reload)."""
    reader = await _reader(fifo)
    with anyio.fail_after(5):
        await FifoReloader(fifo).reload(None, release="v1-abc")
    assert await anyio.to_thread.run_sync(reader.received) == b"r"


@pytest.mark.parametrize("command", sorted(FIFO_RELOAD_COMMANDS))
async def test_fifo_writes_configured_command(fifo: Path, command: str) -> None:
    """Each reload command is written to the FIFO as its single byte."""
    reader = await _reader(fifo)
    with anyio.fail_after(5):
        await FifoReloader(fifo, command).reload(None)
    assert await anyio.to_thread.run_sync(reader.received) == command.encode()


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
    assert await anyio.to_thread.run_sync(reader.received) == b"r"


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
    os.utime(path, ns=(10**18, 10**18))
    with anyio.fail_after(2), pytest.raises(ReloadError) as info:
        await FifoReloader(path).reload(None)
    assert "not a FIFO" in info.value.message
    assert path.read_bytes() == b"keep"
    assert os.stat(path).st_mtime_ns == 1_000_000_000 * 1_000_000_000


async def test_fifo_symlink_to_fifo_is_refused(fifo: Path, tmp_path: Path) -> None:
    """A symlink at the FIFO path is refused even when it points at a FIFO with a reader."""
    link = tmp_path / "link.fifo"
    link.symlink_to(fifo)
    reader = await _reader(fifo)
    with anyio.fail_after(2), pytest.raises(ReloadError) as info:
        await FifoReloader(link).reload(None)
    assert "symlink" in info.value.message
    reader.stop.set()
    assert await anyio.to_thread.run_sync(reader.received) == b""


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
    reader = await _reader(fifo)
    assert r.token(41) is None
    await r.reload(None)
    assert await anyio.to_thread.run_sync(reader.received) == b"r"
    assert not await r.already_done(None)
