"""Resource faults, with the real daemon: a full disk, permission denied, a read-only marker mount, a
missing reload directory, an unreachable remote.

Each fault must show as a clear status error (state ``failed``, an ``error`` with a message and a
fix) and a log event, lose nothing (``current`` names a complete release, the old release is
untouched, no temporary leftovers once resolved) and heal by itself once the fault is gone: the
daemon is level-triggered, so the next event or periodic resync converges.

Mounting (tmpfs, read-only bind mounts) and switching users need root; those tests skip otherwise.
A full disk is also simulated without root: ``COORDINATOR_FAILPOINTS=during-prepare:ENOSPC@2`` makes
the daemon's second pass through that point raise ENOSPC once (see coordinator/failpoints.py).

Where the other faults are covered:

* git remote that hangs (a TCP port that never answers): tests/test_git.py
  (``test_git_timeout_raises_git_error``, ``test_git_timeout_leaves_no_process_behind``) and
  tests/test_deployer.py (``test_newer_marker_cancels_a_hanging_fetch``);
* git remote unreachable: tests/test_git.py (``test_fetch_from_unreachable_repo_raises_git_error``)
  and, at the daemon level with recovery, here;
* a build that hangs or forks children: tests/test_deployer.py
  (``test_build_timeout_kills_the_whole_process_group``,
  ``test_build_leftover_background_processes_are_killed``) and tests/test_daemon.py
  (``test_sigterm_during_a_build_leaves_nothing_behind``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.daemon import run_argv
from tests.helpers import (
    NOBODY,
    Daemon,
    GitRepo,
    TouchCounter,
    app_repo,
    chown_to_nobody,
    current_release,
    deployed,
    leftovers,
    read_status,
    wait_until,
    write_marker,
)
from tests.nobody_env import NobodyPython

# ------------------------------------------------------------------------------------------ helpers


def mount(*args: str) -> None:
    """Run mount(8); skip the test when mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    out = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {out.stderr.strip()}")


def umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the duration of the block (always unmounted)."""
    path.mkdir(exist_ok=True)
    mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        umount(path)


def fill(volume: Path) -> Path:
    """Write a filler file until the volume is full; return its path."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"f" * 4096
        while True:
            os.write(fd, block)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def status_is(root: Path, state: str) -> dict[str, Any] | None:
    st = read_status(root)
    return st if st is not None and st.get("state") == state else None


def complete(root: Path, repo: GitRepo) -> str:
    """`current` names a published release holding exactly its tag's files; returns that tag."""
    target = current_release(root)
    assert target is not None and target.startswith("releases/") and not target.split("/")[1].startswith(".")
    rel = root / target
    tag = target.split("/")[1].rsplit("-", 1)[0]
    tracked = set(repo.git("-c", "safe.directory=*", "ls-tree", "-r", "--name-only", tag).splitlines())
    assert {str(p.relative_to(rel)) for p in rel.rglob("*") if p.is_file()} == tracked
    return tag


def events(d: Daemon, name: str) -> list[dict[str, Any]]:
    return [e for e in d.events() if e.get("event") == name]


# ------------------------------------------------------------------------------------------ disk full


@pytest.fixture
def big_repo(tmp_path: Path) -> GitRepo:
    """v1, v2 (tiny); `vbig`: 4 MiB that compress to almost nothing (fetch fits, checkout does not);
    `vrand`: 3 MB of random bytes (the fetch itself does not fit)."""
    repo = app_repo(tmp_path / "repo", 2)
    repo.commit({"big.txt": b"0123456789abcdef" * (1 << 18)}, tag="vbig")  # not zeros: git writes those sparse
    repo.git("checkout", "-q", "v2")
    repo.commit({"random.bin": os.urandom(3_000_000)}, tag="vrand")
    return repo


@pytest.mark.parametrize(
    ("tag", "phase", "kind", "text"),
    [
        ("vbig", "prepare", "io", "No space left on device"),
        ("vrand", "fetch", "git", "No space left on device"),
    ],
)
def test_disk_full_fails_clearly_keeps_current_and_converges_once_space_is_freed(
    tmp_path: Path, big_repo: GitRepo, tag: str, phase: str, kind: str, text: str
) -> None:
    """A tag too big for the volume fails retryably with "no space left"; growing the volume converges."""
    with tmpfs(tmp_path / "volume", "2m") as root, Daemon(root, big_repo.path, "--resync-interval", "1") as d:
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        v1 = current_release(root)
        assert v1 is not None
        before = sorted(p.name for p in (root / v1).rglob("*"))
        write_marker(root, tag)
        st = wait_until(lambda: status_is(root, "failed"))
        err = st["error"]
        assert err["kind"] == kind and text in err["message"], err
        assert "free space" in err["fix"] and "retries" in err["fix"], err
        assert phase in st["last_attempt"]["phases_ms"]
        assert current_release(root) == v1 and complete(root, big_repo) == "v1"
        assert sorted(p.name for p in (root / v1).rglob("*")) == before
        assert leftovers(root) == []
        failed = events(d, "deploy_failed")
        assert failed and failed[-1]["retryable"] is True and text in failed[-1]["message"]
        mount("-o", "remount,size=16m", str(root))
        wait_until(lambda: deployed(root, tag), timeout=15)
        assert complete(root, big_repo) == tag
        assert leftovers(root) == []
        assert not events(d, "reconcile_crashed")


def test_disk_full_while_writing_state_and_status_recovers_with_one_reload(tmp_path: Path, repo: GitRepo) -> None:
    """A volume too full for state.json and status: io errors logged; once freed, one reload."""
    markers = tmp_path / "markers"  # outside the full volume, so the operator can still write the marker
    markers.mkdir()
    marker = markers / "deploy.request"
    with (
        tmpfs(tmp_path / "volume", "2m") as root,
        Daemon(root, repo.path, "--resync-interval", "1", "--marker", str(marker)) as d,
    ):
        for tag in ("v1", "v2"):
            write_marker(markers, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
        filler = fill(root)
        touches = TouchCounter(root / "reload.touch")
        try:
            write_marker(markers, "v1")  # on disk already: only a swap, then state.json must be written
            wait_until(lambda: len(events(d, "reconcile_failed")) >= 2)
            failed = events(d, "reconcile_failed")[-1]
            assert failed["kind"] == "io" and "No space left on device" in failed["message"], failed
            assert failed["message"].endswith((".coordinator/state.json", "deploy.status.json")), failed
            assert "free space" in failed["fix"] and "df -h" in failed["fix"]
            assert complete(root, repo) in ("v1", "v2")
            assert not events(d, "reconcile_crashed")
            assert touches.count == 0  # the reload waits until it can be recorded
            filler.unlink()
            wait_until(lambda: deployed(root, "v1"), timeout=10)
        finally:
            count = touches.close()
        assert count == 1
        assert complete(root, repo) == "v1"
        assert leftovers(root) == []


def test_startup_removes_what_a_killed_fetch_left_in_the_git_cache(root: Path, repo: GitRepo) -> None:
    """git's temporary objects and packs (a fetch killed with the daemon) are removed at the next start."""
    write_marker(root, "v1")
    argv = run_argv(root, repo.path, "--once")
    subprocess.run(argv, capture_output=True, timeout=60, check=True)
    objects = root / ".coordinator" / "git" / "objects"
    (objects / "ab").mkdir(exist_ok=True)
    planted = [
        objects / "ab" / "tmp_obj_Xy12Z9",
        objects / "pack" / "tmp_pack_Qw34Er",
        objects / "pack" / "tmp_idx_As5",
    ]
    for p in planted:
        p.write_bytes(os.urandom(1024))
    (objects / "incoming-Zx7Cv8").mkdir()
    write_marker(root, "v2")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert '"git_leftovers_removed"' in out.stderr
    assert leftovers(root) == []
    assert deployed(root, "v2")


@pytest.mark.parametrize("point", ["during-prepare", "before-publish", "before-reload"])
def test_injected_enospc_fails_clearly_and_the_next_resync_converges(root: Path, repo: GitRepo, point: str) -> None:
    """ENOSPC injected once (no root needed): a clear io error, then the resync converges, one reload."""
    env = {"COORDINATOR_FAILPOINTS": f"{point}:ENOSPC@2"}  # the 2nd hit: the v2 deploy
    with Daemon(root, repo.path, "--resync-interval", "1", env=env) as d:
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        touches = TouchCounter(root / "reload.touch")
        try:
            write_marker(root, "v2")
            wait_until(lambda: events(d, "deploy_failed"))
            failed = events(d, "deploy_failed")[0]
            assert failed["kind"] == "io" and failed["message"] == "No space left on device", failed
            assert "free space" in failed["fix"] and failed["retryable"] is True
            assert complete(root, repo) == ("v2" if point == "before-reload" else "v1")
            wait_until(lambda: deployed(root, "v2"), timeout=10)
        finally:
            count = touches.close()
        assert count == 1
        assert complete(root, repo) == "v2" and leftovers(root) == []
        assert not events(d, "reconcile_crashed")


def test_run_once_reports_a_failed_status_write_in_one_line(root: Path, repo: GitRepo) -> None:
    """`run --once` whose first status write (deploying) hits ENOSPC fails the attempt: exit 1 in one
    line; run again, it deploys."""
    write_marker(root, "v1")
    argv = run_argv(root, repo.path, "--once")
    env = {**os.environ, "COORDINATOR_FAILPOINTS": "before-status:ENOSPC@1"}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("coordinator: deploy of v1 failed: No space left on device") and "free space" in last, last
    assert "Traceback" not in out.stderr
    assert subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode == 0
    assert deployed(root, "v1") and leftovers(root) == []


# ------------------------------------------------------------------------------------ permissions


def nobody_repo(base: Path) -> GitRepo:
    """The v1..v2 app repository, owned by nobody (git refuses another user's repository)."""
    repo = app_repo(base / "repo", 2)
    chown_to_nobody(repo.path)
    return repo


@pytest.mark.parametrize("state_dir", ["missing", "owned-by-root", "owned-by-nobody"])
def test_root_not_writable_exits_2_with_a_clear_message(world_dir: Path, nobody: NobodyPython, state_dir: str) -> None:
    """The daemon as nobody on a ROOT owned by root (0755) exits 2 at start, saying what to fix."""
    root = world_dir / "volume"
    root.mkdir()
    if state_dir != "missing":
        (root / ".coordinator").mkdir()
    if state_dir == "owned-by-nobody":
        os.chown(root / ".coordinator", NOBODY, NOBODY)
    argv = run_argv(root, world_dir / "repo")
    out = subprocess.run(
        nobody.argv(argv),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=nobody.env({**os.environ, "HOME": "/"}),
    )
    assert out.returncode == 2, out.stderr
    assert "Permission denied" in out.stderr and "writable" in out.stderr and "Traceback" not in out.stderr
    assert f"uid {NOBODY}" in out.stderr, out.stderr
    assert sorted(os.listdir(root)) == ([] if state_dir == "missing" else [".coordinator"])


@pytest.mark.parametrize(
    ("setup", "text"),
    [
        ("file-0644", "Permission denied"),  # root's file, not writable by the daemon
        ("file-0666", "Operation not permitted"),  # writable, but only its owner may set its mtime
        ("dir-0755", "Permission denied"),  # no file yet, and its directory is not writable
    ],
)
def test_reload_file_not_writable_fails_retryably_then_reloads_exactly_once(
    world_dir: Path, nobody: NobodyPython, setup: str, text: str
) -> None:
    """A reload file the daemon cannot touch fails retryably; once chowned, exactly one reload."""
    repo = nobody_repo(world_dir)
    root = world_dir / "volume"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    reload_dir = world_dir / "app"
    reload_dir.mkdir()
    touch = reload_dir / "reload.touch"
    if setup.startswith("file"):
        touch.write_text("")
        touch.chmod(int(setup.split("-")[1], 8))
    # "reloaded" (one per reload done) is logged at debug
    d = Daemon(root, repo.path, "--resync-interval", "1", "--reload-file", str(touch), "--log-level", "debug")
    with nobody.daemon(d, world_dir):
        write_marker(root, "v1")
        st = wait_until(lambda: status_is(root, "failed"))
        err = st["error"]
        assert err["kind"] == "reload" and text in err["message"] and err.get("fix"), err
        assert complete(root, repo) == "v1"  # swapped: only the reload is missing
        failed = events(d, "deploy_failed")
        assert failed and failed[-1]["retryable"] is True
        touches = TouchCounter(touch)
        try:
            if setup == "dir-0755":
                os.chown(reload_dir, NOBODY, NOBODY)
            else:
                os.chown(touch, NOBODY, NOBODY)
            wait_until(lambda: deployed(root, "v1"), timeout=10)
        finally:
            count = touches.close()
        assert count == (1 if setup == "dir-0755" else 2)  # chown of the file itself is one IN_ATTRIB too
        assert len([e for e in events(d, "reloaded") if e.get("release", "").startswith("v1-")]) == 1


# ------------------------------------------------------------------------------- read-only marker


def test_marker_on_a_read_only_mount_works_normally(tmp_path: Path, root: Path, repo: GitRepo) -> None:
    """The marker on a read-only bind mount (a ConfigMap, a secret): deploys work, nothing is written there."""
    src = tmp_path / "marker-src"
    src.mkdir()
    ro = tmp_path / "marker-ro"
    ro.mkdir()
    mount("--bind", str(src), str(ro))
    try:
        mount("-o", "remount,bind,ro", str(ro))
        with Daemon(root, repo.path, "--marker", str(ro / "deploy.request")) as d:
            for tag in ("v1", "v2", "v1"):
                write_marker(src, tag)  # the writer sees it read-write; the daemon reads the ro mount
                wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
            bad = [
                e for e in d.events() if e.get("level") in ("error", "warning") and e.get("event") != "watch_restart"
            ]
            assert bad == []
        assert os.listdir(src) == ["deploy.request"]
    finally:
        umount(ro)


# ------------------------------------------------------------------------------ reload directory


def test_missing_reload_directory_is_a_clear_error_until_it_is_created(
    tmp_path: Path, root: Path, repo: GitRepo
) -> None:
    """A missing --reload-file directory is reported, not created; once created, one reload."""
    touch = tmp_path / "app" / "reload.touch"
    debug = ("--log-level", "debug")  # "reloaded" (one per reload done) is logged at debug
    with Daemon(root, repo.path, "--resync-interval", "1", "--reload-file", str(touch), *debug) as d:
        write_marker(root, "v1")
        st = wait_until(lambda: status_is(root, "failed"))
        err = st["error"]
        assert err["kind"] == "reload" and str(touch.parent) in err["message"] and "does not exist" in err["message"]
        assert "create it" in err["fix"]
        assert not touch.parent.exists()  # never created behind the operator's back
        touch.parent.mkdir()
        wait_until(lambda: deployed(root, "v1"), timeout=10)
        assert touch.exists()
        assert len(events(d, "reloaded")) == 1


# ------------------------------------------------------------------------------------- git remote


def test_unreachable_repository_fails_retryably_and_converges_when_it_appears(tmp_path: Path, root: Path) -> None:
    """A --repo that does not exist (yet) gives a git error with a fix; once it exists the resync deploys."""
    later = tmp_path / "later"
    with Daemon(root, later, "--resync-interval", "1") as d:
        write_marker(root, "v1")
        st = wait_until(lambda: status_is(root, "failed"))
        assert st["error"]["kind"] == "git" and "fetch" in st["error"]["message"] and st["error"]["fix"]
        app_repo(tmp_path / "building", 1).path.rename(later)
        wait_until(lambda: deployed(root, "v1"), timeout=10)
        assert events(d, "deploy_failed")[0]["retryable"] is True
