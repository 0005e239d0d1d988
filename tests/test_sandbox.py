"""coordinator.sandbox: a build that writes in place into hard-linked files of an incremental release
never changes another release; the release gets the build's result; the next release can still be
prepared incrementally from it; where the sandbox is unavailable, a full checkout as before."""

from __future__ import annotations

import os
import stat
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator import sandbox as sandbox_module
from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.exceptions import ConfigError
from coordinator.layout import Layout
from coordinator.sandbox import MAX_CHANGES, collapse
from coordinator.state import read_release_meta
from tests.helpers import (
    NOBODY,
    Daemon,
    GitRepo,
    chown_to_nobody,
    contents,
    deployed,
    snapshot,
    wait_until,
    write_marker,
)
from tests.nobody_env import NobodyPython
from tests.recycling import sandbox_unavailable

pytestmark = pytest.mark.anyio


#: v1, v2, v3 differ only in VERSION: every other file is hard-linked from one release to the next
BASE = {
    "app.py": "APP = 1\n",
    "lib/util.py": "def f():\n    return 1\n",
    "lib/data.txt": "data\n",
    "static/site.css": "body {}\n",
    "olddir/a.txt": "a\n",
    "olddir/b.txt": "b\n",
    "gone.txt": "gone\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    r = GitRepo(tmp_path / "repo")
    for i in (1, 2, 3):
        r.commit({**BASE, "VERSION": f"v{i}\n"}, tag=f"v{i}", message=f"v{i}")
    return r


def name(repo: GitRepo, tag: str) -> str:
    return f"{tag}-{repo.tag_sha(tag)[:12]}"


def deployer(root: Path, repo: GitRepo, **kw: Any) -> Deployer:
    return Deployer(Config(layout=Layout.for_root(root), repo=str(repo.path), **kw))


async def deploy(d: Deployer, root: Path, tag: str) -> list[MutableMapping[str, Any]]:
    """Write the marker, reconcile once; return every event logged."""
    await anyio.to_thread.run_sync((root / "deploy.request").write_text, tag)
    with capture_logs() as logs:
        await d.reconcile()
    return logs


def stats(logs: list[MutableMapping[str, Any]]) -> MutableMapping[str, Any]:
    (event,) = [e for e in logs if e["event"] == "prepare_stats"]
    return event


async def full_checkout(d: Deployer, repo: GitRepo, tag: str, where: Path) -> dict[str, tuple[Any, ...]]:
    await anyio.to_thread.run_sync(where.mkdir)
    await d.git.checkout(repo.tag_sha(tag), where, where.parent / f"index-{tag}")
    return await anyio.to_thread.run_sync(contents, where)


async def two_releases(
    root: Path, repo: GitRepo, build: str
) -> tuple[Deployer, dict[str, tuple[Any, ...]], list[MutableMapping[str, Any]]]:
    """v1 deployed with a build that changes nothing, then v2 with ``build``: the deployer, a
    snapshot of v1's release taken before v2, and v2's logs."""
    first = deployer(root, repo, build_command="true")
    await first.startup()
    await deploy(first, root, "v1")
    d = deployer(root, repo, build_command=build)
    await d.startup()
    before = await anyio.to_thread.run_sync(snapshot, root / "releases" / name(repo, "v1"))
    logs = await deploy(d, root, "v2")
    return d, before, logs


IN_PLACE_WRITES = {
    "append with >>": ("echo x >> app.py", b"APP = 1\nx\n"),
    "python r+ write": (
        "python3 -c \"f = open('app.py', 'r+'); f.write('Z'); f.close()\"",
        b"ZPP = 1\n",
    ),
    "truncate": ("truncate -s 3 app.py", b"APP"),
    "truncate by > redirection": ("echo new > app.py", b"new\n"),
}


@pytest.mark.usefixtures("sandbox_works")
@pytest.mark.parametrize("build", IN_PLACE_WRITES.values(), ids=IN_PLACE_WRITES.keys())
async def test_a_build_writing_a_linked_file_in_place_leaves_the_previous_release_untouched(
    root: Path, repo: GitRepo, build: tuple[str, bytes]
) -> None:
    """v2 is prepared incrementally; its build writes a hard-linked file in place: v1 keeps every
    inode, mtime and byte, v2 has the written content in a new inode."""
    command, expected = build
    _d, before, logs = await two_releases(root, repo, command)
    assert stats(logs)["mode"] == "incremental" and stats(logs)["linked"] >= 6
    v1, v2 = root / "releases" / name(repo, "v1"), root / "releases" / name(repo, "v2")
    assert await anyio.to_thread.run_sync(snapshot, v1) == before
    assert (v2 / "app.py").read_bytes() == expected
    assert (v2 / "app.py").stat().st_ino != (v1 / "app.py").stat().st_ino
    assert (v2 / "lib" / "util.py").stat().st_ino == (v1 / "lib" / "util.py").stat().st_ino  # still shared
    meta = read_release_meta(root / ".coordinator" / "releases", name(repo, "v2"))
    assert meta is not None and meta.built is True and meta.build_changes == ("app.py",)


@pytest.mark.usefixtures("sandbox_works")
async def test_a_build_deleting_creating_and_replacing_gives_exactly_its_result(
    root: Path, repo: GitRepo, tmp_path: Path
) -> None:
    """A build that deletes a tracked file, makes new files and directories, replaces a directory and
    chmods a file: v2 is the full checkout with exactly those changes; v1 is untouched."""
    build = (
        "rm gone.txt && mkdir -p new/sub && echo n > new/sub/f && echo top > made.txt"
        " && rm -rf olddir && mkdir olddir && echo only > olddir/only.txt"
        " && chmod 755 lib/data.txt && echo more >> static/site.css && mkdir -p static/out && echo o > static/out/x"
    )
    d, before, logs = await two_releases(root, repo, build)
    assert stats(logs)["mode"] == "incremental"
    v1, v2 = root / "releases" / name(repo, "v1"), root / "releases" / name(repo, "v2")
    assert await anyio.to_thread.run_sync(snapshot, v1) == before
    want = await full_checkout(d, repo, "v2", tmp_path / "full")
    del want["gone.txt"], want["olddir/a.txt"], want["olddir/b.txt"]
    want["lib/data.txt"] = ("file", 0o755, b"data\n")
    want["static/site.css"] = ("file", 0o644, b"body {}\nmore\n")
    want.update(
        {
            "new": ("dir", 0o755),
            "new/sub": ("dir", 0o755),
            "new/sub/f": ("file", 0o644, b"n\n"),
            "made.txt": ("file", 0o644, b"top\n"),
            "olddir/only.txt": ("file", 0o644, b"only\n"),
            "static/out": ("dir", 0o755),
            "static/out/x": ("file", 0o644, b"o\n"),
        }
    )
    assert await anyio.to_thread.run_sync(contents, v2) == want
    meta = read_release_meta(root / ".coordinator" / "releases", name(repo, "v2"))
    assert meta is not None and meta.build_changes == ("gone.txt", "lib/data.txt", "olddir", "static/site.css")


@pytest.mark.usefixtures("sandbox_works")
async def test_the_next_release_from_a_sandbox_built_one_is_incremental_and_exact(
    root: Path, repo: GitRepo, tmp_path: Path
) -> None:
    """After v2 was built in the sandbox (a tracked file changed), v3 without a build is prepared
    incrementally from it, and is exactly v3's tree: the changed path is written fresh, not linked."""
    _d, _before, _logs = await two_releases(root, repo, "echo x >> app.py && rm gone.txt")
    plain = deployer(root, repo)
    await plain.startup()
    logs = await deploy(plain, root, "v3")
    assert stats(logs)["mode"] == "incremental" and stats(logs)["rewritten"] == 2
    v2, v3 = root / "releases" / name(repo, "v2"), root / "releases" / name(repo, "v3")
    assert await anyio.to_thread.run_sync(contents, v3) == await full_checkout(plain, repo, "v3", tmp_path / "full")
    assert (v3 / "lib" / "util.py").stat().st_ino == (v2 / "lib" / "util.py").stat().st_ino


@pytest.mark.usefixtures("sandbox_works")
async def test_a_failed_sandboxed_build_leaves_nothing_and_changes_nothing(root: Path, repo: GitRepo) -> None:
    """A build that writes in place then fails: v2 is not published, no sandbox directory is left,
    v1 is untouched."""
    _d, before, logs = await two_releases(root, repo, "echo x >> app.py; exit 3")
    assert [e["event"] for e in logs if e.get("kind") == "build"], logs
    v1 = root / "releases" / name(repo, "v1")
    assert await anyio.to_thread.run_sync(snapshot, v1) == before
    assert sorted(p.name for p in (root / "releases").iterdir() if p.is_dir()) == [name(repo, "v1")]
    assert list((root / ".coordinator" / "tmp").iterdir()) == []


@pytest.mark.usefixtures("sandbox_works")
async def test_the_build_sees_its_release_dir_and_cannot_write_other_releases(root: Path, repo: GitRepo) -> None:
    """In the sandbox RELEASE_DIR and the working directory are the same path as without it, and
    ROOT/releases is read-only: a write into the previous release by its path fails."""
    build = 'test "$(pwd)" = "$RELEASE_DIR" && ! echo x >> "$PREVIOUS_RELEASE/app.py" && echo ok > ran'
    _d, before, logs = await two_releases(root, repo, build)
    assert stats(logs)["mode"] == "incremental"
    assert (root / "releases" / name(repo, "v2") / "ran").read_text() == "ok\n"
    assert await anyio.to_thread.run_sync(snapshot, root / "releases" / name(repo, "v1")) == before


async def test_an_unavailable_sandbox_means_a_full_checkout_saying_why(
    root: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the probe fails (here: the sandbox program is missing), the release with a build command
    is a full checkout, logged as prepare_fallback build_sandbox_unavailable with the probe's detail."""
    monkeypatch.setattr(sandbox_module, "EXEC", root.parent / "no-such-sandbox_exec.py")
    _d, before, logs = await two_releases(root, repo, "echo x >> app.py")
    fallback = [e for e in logs if e["event"] == "prepare_fallback"]
    assert [e["reason"] for e in fallback] == ["build_sandbox_unavailable"]
    assert "no-such-sandbox_exec.py" in fallback[0]["detail"]
    assert stats(logs)["mode"] == "full"
    v1, v2 = root / "releases" / name(repo, "v1"), root / "releases" / name(repo, "v2")
    assert await anyio.to_thread.run_sync(snapshot, v1) == before
    assert (v2 / "app.py").read_text() == "APP = 1\nx\n"
    meta = read_release_meta(root / ".coordinator" / "releases", name(repo, "v2"))
    assert meta is not None and meta.built is True and meta.build_changes is None


async def test_build_sandbox_off_means_a_full_checkout(root: Path, repo: GitRepo) -> None:
    """--build-sandbox off: the build runs in place, in a full checkout (reason build_command)."""
    d = deployer(root, repo, build_command="echo x >> app.py", build_sandbox="off")
    await d.startup()
    await deploy(d, root, "v1")
    logs = await deploy(d, root, "v2")
    assert (stats(logs)["mode"], stats(logs)["fallback"]) == ("full", "build_command")


@pytest.mark.usefixtures("sandbox_works")
async def test_a_sandbox_that_fails_to_set_up_fails_the_build_and_the_next_is_in_place(
    root: Path, repo: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe worked at start but the sandbox fails at build time: the attempt fails saying so
    (retryable), and the same marker's next try is a full checkout built in place."""
    d = deployer(root, repo, build_command="echo x >> app.py")
    await d.startup()
    await deploy(d, root, "v1")
    monkeypatch.setattr(sandbox_module, "EXEC", root.parent / "gone_exec.py")
    logs = await deploy(d, root, "v2")
    failed = [e for e in logs if "could not be set up" in str(e.get("message", ""))]
    assert failed, [e["event"] for e in logs]
    assert [(e["kind"], e["retryable"]) for e in failed] == [("sandbox", True)]
    assert list((root / ".coordinator" / "tmp").iterdir()) == []
    with capture_logs() as logs:
        attempt = await d.reconcile()  # the same marker, as a resync would
    assert attempt is not None and attempt.result == "success"
    assert (stats(logs)["mode"], stats(logs)["fallback"]) == ("full", "build_sandbox_unavailable")
    assert (root / "releases" / name(repo, "v2") / "app.py").read_text() == "APP = 1\nx\n"


def test_build_sandbox_must_be_auto_or_off(root: Path) -> None:
    """--build-sandbox accepts auto and off only."""
    with pytest.raises(ConfigError, match="--build-sandbox must be auto or off"):
        Config(layout=Layout.for_root(root), repo="r", build_sandbox="on")


def test_many_changes_collapse_to_their_first_components() -> None:
    """Past MAX_CHANGES recorded paths, the first components are recorded instead (still covering all)."""
    many = [f"static/f{i}" for i in range(MAX_CHANGES)] + ["app.py", "lib/x/y"]
    assert collapse(many) == ("app.py", "lib", "static")
    assert collapse(["b", "a/c"]) == ("a/c", "b")


def test_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    """The probe removes its workspace, its linked file and its sandbox directory, whatever it found."""
    sandbox_unavailable(tmp_path)
    assert list((tmp_path / "releases").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []


def test_upper_entries_keep_no_overlay_attributes(tmp_path: Path) -> None:
    """A directory renamed in from the upper directory loses the overlay's user.overlay.* attributes."""
    upper, ws = tmp_path / "upper", tmp_path / "ws"
    (upper / "d").mkdir(parents=True)
    ws.mkdir()
    (ws / "d").mkdir()
    (ws / "d" / "old").write_text("old")
    try:
        os.setxattr(upper / "d", "user.overlay.opaque", b"y")
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e}")
    (upper / "d" / "new").write_text("new")
    changes: list[str] = []
    sandbox_module.apply_upper(upper, ws, "", changes)
    assert changes == ["d"] and sorted(os.listdir(ws / "d")) == ["new"]
    assert os.listxattr(ws / "d") == [] and stat.S_ISDIR(os.lstat(ws / "d").st_mode)


@pytest.mark.usefixtures("sandbox_works")
def test_the_daemon_as_nobody_builds_in_the_sandbox(world_dir: Path, nobody: NobodyPython) -> None:
    """The daemon as nobody (no capability): v2's build appends to a hard-linked file; v2 is
    incremental, v1 unchanged inode for inode, v2 has the appended content."""
    r = GitRepo(world_dir / "repo")
    for i in (1, 2):
        r.commit({**BASE, "VERSION": f"v{i}\n"}, tag=f"v{i}", message=f"v{i}")
    n1, n2 = name(r, "v1"), name(r, "v2")
    chown_to_nobody(r.path)  # git refuses to fetch from a repository another user owns
    root = world_dir / "volume"
    root.mkdir()
    os.chown(root, NOBODY, NOBODY)
    build = 'test "$TAG" = v1 || echo x >> app.py'
    with nobody.daemon(Daemon(root, r.path, "--build-command", build), world_dir):
        write_marker(root, "v1")
        wait_until(lambda: deployed(root, "v1"))
        v1 = root / "releases" / n1
        before = snapshot(v1)
        write_marker(root, "v2")
        wait_until(lambda: deployed(root, "v2"))
    v2 = root / "releases" / n2
    assert snapshot(v1) == before
    assert (v2 / "app.py").read_text() == "APP = 1\nx\n" and (v1 / "app.py").read_text() == "APP = 1\n"
    assert (v2 / "lib" / "util.py").stat().st_ino == (v1 / "lib" / "util.py").stat().st_ino
    assert (v2 / "app.py").stat().st_uid == NOBODY
    meta = read_release_meta(root / ".coordinator" / "releases", n2)
    assert meta is not None and meta.build_changes == ("app.py",)
