"""Crash points: the daemon killed (as by kill -9) at every named point of a deploy, then restarted.

After each crash and restart: `current` always names a complete release, the daemon converges to
the marker, the reload file is touched exactly once for the change, and no temporary leftovers
remain. Touches are counted with inotify (IN_ATTRIB on the reload file), not inferred from logs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from coordinator.daemon import run_argv
from coordinator.failpoints import POINTS
from tests.helpers import GitRepo, current_release

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008


class TouchCounter:
    """Counts attribute changes (utime) of one file with a raw inotify watch on its directory."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        assert libc.inotify_add_watch(self.fd, str(path.parent).encode(), IN_ATTRIB) >= 0
        self.name = path.name.encode()
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                offset += 16 + length
                if mask & IN_ATTRIB and name == self.name:
                    self.count += 1

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        os.close(self.fd)
        return self.count


def run_once(root: Path, repo: GitRepo, failpoints: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COORDINATOR_FAILPOINTS"}
    if failpoints:
        env["COORDINATOR_FAILPOINTS"] = failpoints
    return subprocess.run(
        run_argv(root, repo.path, "--once"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_complete(root: Path, repo: GitRepo) -> str:
    """`current` names a published release holding exactly its tag's tracked files; returns its tag."""
    target = current_release(root)
    assert target is not None and target.startswith("releases/") and "/." not in target
    rel = root / target
    version = (rel / "VERSION").read_text().strip()
    tracked = set(repo.git("ls-tree", "-r", "--name-only", version).splitlines())
    assert {str(p.relative_to(rel)) for p in rel.rglob("*") if p.is_file()} == tracked
    return version


def leftovers(root: Path) -> list[str]:
    found = [n for n in os.listdir(root / "releases") if n.startswith(".")]
    found += [n for n in os.listdir(root) if ".tmp-" in n]
    found += [n for n in os.listdir(root / ".coordinator") if ".tmp-" in n]
    found += os.listdir(root / ".coordinator" / "tmp")
    return found


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_point_then_restart_converges_with_one_reload(point: str, root: Path, repo: GitRepo) -> None:
    """Killed at this point of a v1 -> v2 deploy, a restart converges to v2 with exactly one touch."""
    (root / "deploy.request").write_text("v1")
    assert run_once(root, repo).returncode == 0
    (root / "deploy.request").write_text("v2")
    counter = TouchCounter(root / "reload.touch")
    try:
        crashed = run_once(root, repo, point)
        assert crashed.returncode == -9, f"{point} was never reached: {crashed.stderr[-2000:]}"
        assert assert_complete(root, repo) in ("v1", "v2")
        again = run_once(root, repo)
        assert again.returncode == 0, again.stderr[-2000:]
    finally:
        touches = counter.close()
    assert assert_complete(root, repo) == "v2"
    assert touches == 1, f"{touches} touches for one change"
    assert leftovers(root) == []


def test_without_failpoints_nothing_is_killed(root: Path, repo: GitRepo) -> None:
    """The variable unset, a deploy runs through every point and exits 0."""
    (root / "deploy.request").write_text("v1")
    assert run_once(root, repo).returncode == 0


def test_failpoint_can_fire_on_the_nth_hit(root: Path, repo: GitRepo) -> None:
    """`name@2` lets the first hit pass and kills at the second."""
    (root / "deploy.request").write_text("v1")
    out = run_once(root, repo, "before-status@2")
    assert out.returncode == -9
