"""coordinator.reload.TouchReloader against the real filesystem (uWSGI --touch-reload semantics)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from pathlib import Path

import pytest

from coordinator.exceptions import ReloadError
from coordinator.reload import TouchReloader

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
