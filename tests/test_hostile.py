"""A hostile volume: symlinks planted in ROOT, its state directory, the status file and the marker path.

The real daemon runs against a ROOT where someone planted symlinks pointing outside it. Canary files
outside ROOT must stay byte-for-byte unchanged and must still exist afterwards: coordinator never
writes or deletes through a link it did not create. Reading the marker through a symlink is allowed
(Kubernetes ConfigMap keys are symlinks); nothing is ever written where the marker lives.

Also here: the ROOT lock at the daemon level (a stale lock after kill -9), file modes under umask 000,
and a whole deploy as an unprivileged user.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.state import read_journal
from tests.helpers import (
    NOBODY,
    Daemon,
    GitRepo,
    app_repo,
    chown_to_nobody,
    current_release,
    deployed,
    read_status,
    run_once,
    wait_until,
    write_marker,
)
from tests.nobody_env import NobodyPython


def snapshot(base: Path) -> dict[str, tuple[str, bytes | str, int]]:
    """Every entry under ``base`` (not following symlinks): kind, content or link target, mode."""
    out: dict[str, tuple[str, bytes | str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[str(p.relative_to(base))] = ("link", os.readlink(p), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[str(p.relative_to(base))] = ("dir", b"", stat.S_IMODE(st.st_mode))
            else:
                out[str(p.relative_to(base))] = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside ROOT full of canaries: files, a sub-directory, a would-be state directory."""
    out = tmp_path / "outside"
    (out / "dir" / "sub").mkdir(parents=True)
    (out / "state").mkdir()
    for rel in ("canary", "dir/canary", "dir/sub/canary", "state/canary"):
        (out / rel).write_bytes(os.urandom(64) + rel.encode())
    (out / "marker").write_text("v1\n")
    return out


def test_symlinked_state_directory_is_refused_and_nothing_is_written_through_it(
    root: Path, repo: GitRepo, outside: Path
) -> None:
    """ROOT/.coordinator as a symlink to a directory outside: start-up exits 2 and writes nothing there."""
    before = snapshot(outside)
    os.symlink(outside / "state", root / ".coordinator")
    write_marker(root, "v1")
    out = run_once(root, repo)
    assert out.returncode == 2, out.stderr
    assert "symlink" in out.stderr and ".coordinator" in out.stderr and "Traceback" not in out.stderr
    assert snapshot(outside) == before
    assert current_release(root) is None


@pytest.mark.parametrize("name", ["tmp", "releases", "git"])
def test_symlinked_directory_in_the_state_directory_is_refused(
    root: Path, repo: GitRepo, outside: Path, name: str
) -> None:
    """.coordinator/{tmp,releases,git} as a symlink to a directory outside: exit 2, nothing written there."""
    (root / ".coordinator").mkdir()
    os.symlink(outside / "dir", root / ".coordinator" / name)
    before = snapshot(outside)
    write_marker(root, "v1")
    out = run_once(root, repo)
    assert out.returncode == 2, out.stderr
    assert name in out.stderr and "symlink" in out.stderr and "Traceback" not in out.stderr
    assert snapshot(outside) == before


def test_symlinked_state_files_are_replaced_never_written_through(root: Path, repo: GitRepo, outside: Path) -> None:
    """state.json, journal.jsonl and the status file planted as symlinks are replaced by our own files."""
    state = root / ".coordinator"
    state.mkdir()
    os.symlink(outside / "canary", state / "state.json")
    os.symlink(outside / "dir" / "canary", state / "journal.jsonl")
    os.symlink(outside / "dir" / "sub" / "canary", root / "deploy.status.json")
    before = snapshot(outside)
    with Daemon(root, repo.path) as d:
        for tag in ("v1", "v2"):
            write_marker(root, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
        assert not any(e.get("event") in ("reconcile_crashed", "reconcile_failed") for e in d.events())
        assert [e["path"] for e in d.events() if e.get("event") == "journal_symlink_replaced"] == [
            str(state / "journal.jsonl")
        ]
    assert snapshot(outside) == before
    for p in (state / "state.json", state / "journal.jsonl", root / "deploy.status.json"):
        assert stat.S_ISREG(p.lstat().st_mode), p
    assert [e["tag"] for e in read_journal(state / "journal.jsonl")] == ["v1", "v2"]


def test_symlinks_planted_in_releases_are_never_followed(root: Path, repo: GitRepo, outside: Path) -> None:
    """Links in releases/ (a stray one, a temp-looking one, metadata) and `current` to outside survive pruning."""
    rel = root / "releases"
    rel.mkdir()
    os.symlink(outside / "dir", rel / "evil")
    os.symlink(outside / "dir", rel / ".v0-000000000000.tmp-1-deadbeef")  # looks like a crash leftover
    os.symlink(outside / "canary", rel / "v0-000000000000.json")
    os.symlink(outside / "dir", root / "current")  # absolute, not ours: replaced, never followed
    before = snapshot(outside)
    with Daemon(root, repo.path, "--keep", "1"):
        for tag in ("v1", "v2", "v3", "v1"):
            write_marker(root, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
    assert snapshot(outside) == before
    assert os.readlink(rel / "evil") == str(outside / "dir")  # not ours: left alone
    assert not os.path.lexists(rel / ".v0-000000000000.tmp-1-deadbeef")  # the link removed, not its target


def test_release_name_taken_by_a_symlink_fails_clearly_and_recovers(root: Path, repo: GitRepo, outside: Path) -> None:
    """A symlink squatting a release's name fails that deploy with a clear error; removing it recovers."""
    name = f"v1-{repo.tag_sha('v1')[:12]}"
    (root / "releases").mkdir()
    os.symlink(outside / "dir", root / "releases" / name)
    before = snapshot(outside)
    with Daemon(root, repo.path, "--resync-interval", "1"):
        write_marker(root, "v1")
        st = wait_until(lambda: (s := read_status(root)) and s["state"] == "failed" and s)
        assert st["error"]["kind"] == "io" and name in st["error"]["message"], st["error"]
        assert "in the way" in st["error"]["fix"]
        assert [n for n in os.listdir(root / "releases") if n.startswith(".")] == []
        (root / "releases" / name).unlink()
        wait_until(lambda: deployed(root, "v1"), timeout=10)
    assert snapshot(outside) == before


def test_marker_symlink_to_a_file_outside_is_read_never_written(root: Path, repo: GitRepo, outside: Path) -> None:
    """A marker that is a symlink to a file outside ROOT is followed for reading; nothing is written there."""
    os.symlink(outside / "marker", root / "deploy.request")
    before = snapshot(outside)
    with Daemon(root, repo.path):
        wait_until(lambda: deployed(root, "v1"))
        assert snapshot(outside) == before
        (outside / "marker").write_text("v2\n")  # the operator edits the target: seen (its directory is watched)
        wait_until(lambda: deployed(root, "v2"), timeout=10)
    assert sorted(os.listdir(outside)) == ["canary", "dir", "marker", "state"]


def test_marker_directory_symlink_gets_nothing_written(root: Path, repo: GitRepo, outside: Path) -> None:
    """--marker through a symlinked directory: deploys work and the directory only ever holds the marker."""
    mdir = outside / "markers"
    mdir.mkdir()
    os.symlink(mdir, root.parent / "marker-link")
    marker = root.parent / "marker-link" / "deploy.request"
    with Daemon(root, repo.path, "--marker", str(marker)):
        for tag in ("v1", "v2"):
            write_marker(mdir, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
    assert os.listdir(mdir) == ["deploy.request"]


def test_daemon_takes_over_a_stale_lock_after_kill9(root: Path, repo: GitRepo) -> None:
    """After kill -9 the lock file stays, naming a dead pid; a new daemon starts at once and deploys."""
    d = Daemon(root, repo.path).start()
    write_marker(root, "v1")
    wait_until(lambda: deployed(root, "v1"))
    assert d.proc is not None
    dead = d.proc.pid
    d.kill9()
    assert (root / ".coordinator" / "lock").read_text().strip() == str(dead)
    with Daemon(root, repo.path) as again:
        assert again.proc is not None
        write_marker(root, "v2")
        wait_until(lambda: deployed(root, "v2"))
        assert (root / ".coordinator" / "lock").read_text().strip() == str(again.proc.pid)


def world_writable(root: Path) -> list[str]:
    """Paths under ``root`` (symlinks excepted) that others may write to."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            p = Path(dirpath) / name
            st = p.lstat()
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o002:
                bad.append(str(p.relative_to(root)))
    return bad


@pytest.mark.parametrize("build", [False, True])
def test_nothing_is_world_writable_even_under_umask_000(root: Path, repo: GitRepo, build: bool) -> None:
    """With umask 000, releases (full, incremental or built), state, status and reload file are not o+w."""
    extra = ["--build-command", "echo built > BUILT; mkdir -p out"] if build else []
    d = Daemon(root, repo.path, *extra)
    d.args = ["/bin/sh", "-c", 'umask 000; exec "$@"', "sh", *d.args]
    with d:
        for tag in ("v1", "v2"):
            write_marker(root, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
    assert world_writable(root) == []


def test_whole_deploy_as_an_unprivileged_user(world_dir: Path, nobody: NobodyPython) -> None:
    """The daemon as nobody, on a ROOT nobody owns, deploys v1 then v2 and touches the reload file."""
    repo = app_repo(world_dir / "repo", 2)
    chown_to_nobody(repo.path)  # git refuses to fetch from a repository another user owns ("dubious ownership")
    root = world_dir / "volume"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    with nobody.daemon(Daemon(root, repo.path), world_dir) as d:
        for tag in ("v1", "v2"):
            write_marker(root, tag)
            wait_until(lambda tag=tag: deployed(root, tag))  # type: ignore[misc]
        assert d.proc is not None
        assert Path(f"/proc/{d.proc.pid}/status").read_text().count(f"\t{NOBODY}\t") >= 2  # Uid and Gid lines
    owners = {p.lstat().st_uid for p in root.rglob("*") if p.name != "deploy.request"}  # the marker is ours
    assert owners == {NOBODY}, owners
    assert (root / "reload.touch").stat().st_uid == NOBODY


def test_read_journal_does_not_follow_a_symlink_or_read_a_device(tmp_path: Path) -> None:
    """A journal planted as a symlink (say to /dev/zero) reads as empty instead of hanging or blowing up."""
    path = tmp_path / "journal.jsonl"
    os.symlink("/dev/zero", path)
    assert read_journal(path) == []


def test_status_file_is_valid_json_after_hostile_setup(root: Path, repo: GitRepo, outside: Path) -> None:
    """After the daemon replaced a planted status-file symlink, `coordinator status --json` reads it."""
    os.symlink(outside / "canary", root / "deploy.status.json")
    with Daemon(root, repo.path):
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
    out = subprocess.run(
        [sys.executable, "-m", "coordinator", "status", "--root", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert json.loads(out.stdout)["current"]["tag"] == "v1"
