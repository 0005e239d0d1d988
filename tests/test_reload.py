"""coordinator.reload against real things: the touch file (uWSGI --touch-reload semantics), commands, the factory."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from coordinator.config import Config
from coordinator.exceptions import ConfigError, ReloadError
from coordinator.fifo import FifoReloader
from coordinator.layout import Layout
from coordinator.pidsignal import SignalReloader
from coordinator.reload import CommandReloader, TouchReloader, make_reloader

pytestmark = pytest.mark.anyio


def _mtime(path: Path) -> float:
    return os.lstat(path).st_mtime


def _set_mtime(path: Path, seconds: int) -> None:
    ns = seconds * 1_000_000_000
    os.utime(path, ns=(ns, ns))


async def test_reload_creates_missing_file(tmp_path: Path) -> None:
    """The reload file is created (as a regular file) when it does not exist."""
    r = TouchReloader(tmp_path / "reload")
    token = await anyio.to_thread.run_sync(r.token, None)
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
    token = await anyio.to_thread.run_sync(TouchReloader(tmp_path / "reload").token, None)
    assert isinstance(token, int)
    assert before <= token <= math.floor(time.time())


async def test_token_is_greater_than_previous(tmp_path: Path) -> None:
    """A token is strictly greater than the previous token, even one in the future."""
    r = TouchReloader(tmp_path / "reload")
    last = math.floor(time.time()) + 10
    assert await anyio.to_thread.run_sync(r.token, last) == last + 1


async def test_token_is_greater_than_file_mtime(tmp_path: Path) -> None:
    """A token is strictly greater than the reload file's current (future) mtime."""
    path = tmp_path / "reload"
    path.touch()
    future = math.floor(time.time()) + 7
    _set_mtime(path, future)
    assert await anyio.to_thread.run_sync(TouchReloader(path).token, None) == future + 1
    assert await anyio.to_thread.run_sync(TouchReloader(path).token, future - 3) == future + 1


async def test_reload_writes_token_as_mtime(tmp_path: Path) -> None:
    """reload sets the file's mtime to exactly the token, in whole seconds."""
    path = tmp_path / "reload"
    r = TouchReloader(path)
    token = await anyio.to_thread.run_sync(r.token, None) + 5
    await r.reload(token)
    st = os.lstat(path)
    assert st.st_mtime_ns == token * 1_000_000_000


async def test_two_reloads_in_one_second_differ_by_a_second(tmp_path: Path) -> None:
    """Two reloads within the same second leave mtimes at least 1 s apart (uWSGI compares seconds)."""
    path = tmp_path / "reload"
    r = TouchReloader(path)
    first = await anyio.to_thread.run_sync(r.token, None)
    await r.reload(first)
    m1 = _mtime(path)
    second = await anyio.to_thread.run_sync(r.token, first)
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
    token = await anyio.to_thread.run_sync(r.token, None)
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
        await r.reload(await anyio.to_thread.run_sync(r.token, None))
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
    token = await anyio.to_thread.run_sync(r.token, None)
    await r.reload(token, release="v1-abc")
    assert _mtime(tmp_path / "reload") == token


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
