"""coordinator.lock: the ROOT flock, contended by real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.exceptions import LayoutError, LockHeldError
from coordinator.lock import hold_lock

#: Try to take the lock once; print the outcome and exit 3 on LockHeldError.
TRY_LOCK = """
import sys
from pathlib import Path
from coordinator.exceptions import LockHeldError
from coordinator.lock import hold_lock
try:
    with hold_lock(Path(sys.argv[1])):
        print("acquired", flush=True)
except LockHeldError as e:
    print(f"LockHeldError pid={e.fields['pid']} {e.message}", flush=True)
    sys.exit(3)
"""

#: Take the lock, say so, then hold it until killed.
HOLD_LOCK = """
import sys, time
from pathlib import Path
from coordinator.lock import hold_lock
with hold_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(60)
"""

_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    """ROOT/.coordinator/lock, with its directory created."""
    state = tmp_path / "root" / ".coordinator"
    state.mkdir(parents=True)
    return state / "lock"


@pytest.fixture
def holder(lock_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A subprocess that holds the lock until the test ends (or kills it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_path)], stdout=subprocess.PIPE, text=True, env=_ENV
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _try_lock(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(path)], capture_output=True, text=True, env=_ENV, timeout=30
    )


def test_hold_lock_succeeds_and_records_pid(lock_path: Path) -> None:
    """hold_lock takes a free lock, creating the file, and writes our pid into it."""
    with hold_lock(lock_path):
        assert lock_path.read_text() == f"{os.getpid()}\n"


def test_hold_lock_can_be_taken_again_after_release(lock_path: Path) -> None:
    """After the block ends the lock is free again, also for another process."""
    with hold_lock(lock_path):
        pass
    with hold_lock(lock_path):
        pass
    assert _try_lock(lock_path).stdout.strip() == "acquired"


def test_second_process_gets_lock_held_error_naming_pid(lock_path: Path) -> None:
    """While we hold the lock, another process gets LockHeldError naming our pid."""
    with hold_lock(lock_path):
        result = _try_lock(lock_path)
    assert result.returncode == 3, result.stderr
    assert f"LockHeldError pid={os.getpid()} " in result.stdout
    assert f"(pid {os.getpid()})" in result.stdout
    assert str(lock_path.parent.parent) in result.stdout


def test_lock_held_by_subprocess_refuses_us(lock_path: Path, holder: subprocess.Popen[str]) -> None:
    """While a subprocess holds the lock, hold_lock here raises LockHeldError naming its pid."""
    with pytest.raises(LockHeldError) as info, hold_lock(lock_path):
        pytest.fail("took a lock that another process holds")
    assert info.value.fields["pid"] == str(holder.pid)
    assert f"pid {holder.pid}" in info.value.message


def test_refused_attempt_leaves_holder_pid_in_file(lock_path: Path, holder: subprocess.Popen[str]) -> None:
    """A refused attempt does not overwrite the holder's pid in the lock file."""
    with pytest.raises(LockHeldError), hold_lock(lock_path):
        pass
    assert lock_path.read_text() == f"{holder.pid}\n"


def test_stale_lock_is_taken_after_holder_is_killed(lock_path: Path, holder: subprocess.Popen[str]) -> None:
    """After the holder dies by SIGKILL the lock file remains but the lock is taken at once."""
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    assert lock_path.read_text() == f"{holder.pid}\n"  # the stale file is still there
    with hold_lock(lock_path):
        assert lock_path.read_text() == f"{os.getpid()}\n"


def test_symlink_at_lock_path_raises_layout_error(lock_path: Path, tmp_path: Path) -> None:
    """A symlink planted at the lock path raises LayoutError and its target is not touched."""
    target = tmp_path / "victim"
    target.write_text("do not truncate")
    lock_path.symlink_to(target)
    with pytest.raises(LayoutError) as info, hold_lock(lock_path):
        pytest.fail("followed a planted symlink")
    assert "symlink" in info.value.message
    assert target.read_text() == "do not truncate"


def test_dangling_symlink_at_lock_path_creates_nothing(lock_path: Path, tmp_path: Path) -> None:
    """A dangling symlink at the lock path raises LayoutError and does not create its target."""
    lock_path.symlink_to(tmp_path / "created-through-link")
    with pytest.raises(LayoutError), hold_lock(lock_path):
        pass
    assert not os.path.lexists(tmp_path / "created-through-link")


def test_missing_state_directory_raises_layout_error(tmp_path: Path) -> None:
    """A lock path whose directory does not exist raises LayoutError."""
    with pytest.raises(LayoutError), hold_lock(tmp_path / "missing" / "lock"):
        pass
