"""coordinator.spare against real git: prune retires a release into the spare instead of deleting it,
the idle pass readies it (checked, cleaned, advanced to current), the next deploy is prepared from it
exactly, other releases untouched; a changed spare is discarded; a marker change cancels the readying;
start-up removes a spare without a record; a crash while readying."""

from __future__ import annotations

import os
import subprocess
from collections.abc import MutableMapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator.deployer import Deployer
from coordinator.layout import list_releases
from coordinator.spare import MANIFEST, RECORD, TREE, read_ready
from tests.helpers import Daemon, GitRepo, contents, deployed, snapshot, wait_until, write_marker
from tests.recycling import chain, deploy, deployer, full_tree, name

pytestmark = pytest.mark.anyio


async def ready(d: Deployer) -> list[MutableMapping[str, Any]]:
    """The idle pass, with its spare events."""
    with capture_logs() as logs:
        await d.ready_spare()
    return [e for e in logs if str(e["event"]).startswith("spare_")]


def published(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root / "releases") if not n.endswith(".json"))


async def test_prune_fills_the_spare_instead_of_deleting(root: Path, repo6: GitRepo) -> None:
    """With --keep 3 the fourth deploy's prune moves v1 into the spare: releases/ keeps exactly 3, the
    spare is not listed, v1's metadata and manifest moved with it; not ready yet."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"))
    spare = d.layout.spare_dir
    assert await anyio.to_thread.run_sync(published, root) == sorted(name(repo6, t) for t in ("v2", "v3", "v4"))
    listed = await anyio.to_thread.run_sync(list_releases, d.layout)
    assert sorted(r.name for r in listed) == sorted(name(repo6, t) for t in ("v2", "v3", "v4"))
    assert sorted(os.listdir(spare)) == [MANIFEST, "release.json", TREE]
    assert not (d.layout.meta_dir / f"{name(repo6, 'v1')}.json").exists()
    assert not (root / "releases" / f"{name(repo6, 'v1')}.json").exists()
    assert await anyio.to_thread.run_sync(read_ready, d.layout) is None


async def test_the_idle_pass_checks_cleans_and_advances_the_spare_to_current(root: Path, repo6: GitRepo) -> None:
    """Readied, the spare holds exactly current's tree (an app's __pycache__ removed) and a record."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"))
    tree = d.layout.spare_dir / TREE

    def litter() -> None:
        (tree / "__pycache__").mkdir()
        (tree / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")

    await anyio.to_thread.run_sync(litter)
    events = await ready(d)
    assert [(e["event"], e["release"], e["sha"]) for e in events] == [
        ("spare_ready", name(repo6, "v1"), repo6.tag_sha("v4"))
    ]
    got = await anyio.to_thread.run_sync(contents, tree)
    assert got == await full_tree(d, repo6, "v4", root.parent / "full-v4")
    spare = await anyio.to_thread.run_sync(read_ready, d.layout)
    assert spare is not None and (spare.name, spare.sha) == (name(repo6, "v1"), repo6.tag_sha("v4"))
    assert await ready(d) == []  # ready and at current's commit: nothing to do


async def test_the_next_deploy_is_prepared_from_the_spare_exactly(root: Path, repo6: GitRepo) -> None:
    """v5 is prepared from the ready spare: exactly its tag, v3 and v4 inode-for-inode unchanged, the
    slot then refilled by the prune (v2), and --keep still counts 3 published releases."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"))
    await ready(d)
    releases = root / "releases"

    def others() -> dict[str, dict[str, tuple[Any, ...]]]:
        return {t: snapshot(releases / name(repo6, t)) for t in ("v3", "v4")}

    kept = await anyio.to_thread.run_sync(others)
    event = await deploy(d, root, "v5")
    assert (event["mode"], event["recycled"], event["written"], event["deleted"]) == ("spare", name(repo6, "v1"), 3, 0)
    got = await anyio.to_thread.run_sync(contents, releases / name(repo6, "v5"))
    assert got == await full_tree(d, repo6, "v5", root.parent / "full-v5")
    assert await anyio.to_thread.run_sync(others) == kept
    assert await anyio.to_thread.run_sync(published, root) == sorted(name(repo6, t) for t in ("v3", "v4", "v5"))
    assert [(e["event"], e["release"]) for e in await ready(d)] == [("spare_ready", name(repo6, "v2"))]
    event = await deploy(d, root, "v6")
    assert (event["mode"], event["recycled"]) == ("spare", name(repo6, "v2"))


async def test_a_spare_modified_before_readying_is_discarded_and_the_deploy_falls_back(
    root: Path, repo6: GitRepo
) -> None:
    """A file of the spare rewritten (a new inode, other releases untouched) fails the check: the spare
    is discarded and the next deploy is prepared without it, exactly."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"))
    target = d.layout.spare_dir / TREE / "app.py"

    def modify() -> None:
        target.unlink()
        target.write_text("VERSION = 'evil'\n")

    await anyio.to_thread.run_sync(modify)
    events = await ready(d)
    assert [(e["event"], e["reason"]) for e in events] == [("spare_discarded", "retired_changed")]
    assert not d.layout.spare_dir.exists()
    event = await deploy(d, root, "v5")
    assert event["mode"] in ("recycled", "incremental")
    got = await anyio.to_thread.run_sync(contents, root / "releases" / name(repo6, "v5"))
    assert got == await full_tree(d, repo6, "v5", root.parent / "full-v5")


async def test_a_marker_change_cancels_the_readying_and_the_deploy_is_exact(root: Path, tmp_path: Path) -> None:
    """A marker written while the spare is being checked cancels the readying at once (the spare is
    discarded, not left half-advanced) and the deploy that follows is exactly its tag."""
    repo = GitRepo(tmp_path / "big")
    files = {f"d{i // 100}/f{i}.txt": f"{i}\n" * 20 for i in range(6000)}

    def commits() -> None:
        for v in range(1, 6):
            repo.commit({**(files if v == 1 else {}), "app.py": f"V = {v}\n"}, tag=f"v{v}")

    await anyio.to_thread.run_sync(commits)
    d = await chain(root, repo, ("v1", "v2", "v3", "v4"))
    lock = d.layout.spare_dir / f"{MANIFEST}.lock"
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.ready_spare)
            while not await anyio.Path(lock).exists():  # git holds the manifest's lock: readying
                await anyio.sleep(0.0005)
            await anyio.to_thread.run_sync((root / "deploy.request").write_text, "v5")
            await d.check_superseded()
    assert [(e["event"], e.get("reason")) for e in logs if str(e["event"]).startswith("spare_")] == [
        ("spare_interrupted", "the marker changed"),
        ("spare_discarded", "cancelled"),
    ]
    assert not d.layout.spare_dir.exists()
    event = await deploy(d, root, "v5")
    assert event["mode"] != "spare"
    got = await anyio.to_thread.run_sync(contents, root / "releases" / name(repo, "v5"))
    assert got == await full_tree(d, repo, "v5", root.parent / "full-v5")


async def test_startup_moves_a_spare_without_a_record_aside_and_the_idle_pass_removes_it(
    root: Path, repo6: GitRepo
) -> None:
    """A spare never readied (no spare.json) is removed from the slot at start-up; its files go at the
    next idle pass; a ready one survives a restart."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"))
    with capture_logs() as logs:
        again = deployer(root, repo6, keep=3, spare=True)
        await again.startup()
    assert [(e["event"], e["reason"]) for e in logs if e["event"] == "spare_discarded"] == [
        ("spare_discarded", "no_record")
    ]
    assert not d.layout.spare_dir.exists()
    await ready(again)
    assert [n for n in os.listdir(d.layout.state_dir) if "spare" in n] == []
    await deploy(again, root, "v5")
    events = await ready(again)
    assert [e["event"] for e in events] == ["spare_ready"], events
    third = deployer(root, repo6, keep=3, spare=True)
    await third.startup()
    assert await anyio.to_thread.run_sync(read_ready, d.layout) is not None


async def test_a_record_that_does_not_match_the_disk_is_not_ready(root: Path, repo6: GitRepo) -> None:
    """A spare whose manifest changed after its record was written is not used, and is discarded (by
    the next idle pass with something to do, or at start-up)."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"))
    await ready(d)
    manifest = d.layout.spare_dir / MANIFEST
    await anyio.to_thread.run_sync(lambda: os.utime(manifest, ns=(1, 1)))
    assert await anyio.to_thread.run_sync(read_ready, d.layout) is None
    assert await ready(d) == []  # nothing deployed since the last pass: the idle pass does no I/O
    restarted = deployer(root, repo6, keep=3, spare=True)
    with capture_logs() as logs:
        await restarted.startup()
    assert [(e["event"], e["reason"]) for e in logs if e["event"] == "spare_discarded"] == [
        ("spare_discarded", "record_mismatch")
    ]


def test_a_daemon_killed_while_readying_leaves_nothing_published_and_recovers(root: Path, repo6: GitRepo) -> None:
    """Killed at ``during-spare`` (the spare checked, not advanced), the restart removes the spare,
    v4 stays current untouched, and the next deploy is exact."""
    v = {t: name(repo6, t) for t in ("v1", "v2", "v3", "v4", "v5")}
    args = ("--keep", "3", "--resync-interval", "600", "--log-level", "debug")
    with Daemon(root, repo6.path, *args, env={"COORDINATOR_FAILPOINTS": "during-spare"}) as daemon:
        for tag in ("v1", "v2", "v3", "v4"):
            write_marker(root, tag)
            wait_until(partial(lambda t: deployed(root, t) or daemon.proc_exited(), tag), 30)
            if daemon.proc_exited():
                break
        assert wait_until(daemon.proc_exited, 30)
        assert daemon.proc is not None and daemon.proc.returncode == -9
    assert deployed(root, "v4")
    assert (root / ".coordinator" / "spare" / TREE).is_dir() and not (root / ".coordinator" / "spare" / RECORD).exists()
    before = snapshot(root / "releases" / v["v4"])
    with Daemon(root, repo6.path, *args) as daemon:
        wait_until(lambda: any(e.get("event") == "spare_discarded" for e in daemon.events()), 30)
        write_marker(root, "v5")
        wait_until(lambda: deployed(root, "v5"), 30)
        assert snapshot(root / "releases" / v["v4"]) == before
        [stats] = [e for e in daemon.events() if e.get("event") == "prepare_stats" and e.get("tag") == "v5"]
        assert stats["mode"] != "spare"
        wait_until(lambda: any(e.get("event") == "spare_ready" for e in daemon.events()), 30)
    want = root.parent / "want-v5"
    repo6.git("worktree", "add", "-q", "--detach", str(want), "v5")
    (want / ".git").unlink()
    assert contents(root / "releases" / v["v5"]) == contents(want)
    assert next(e for e in daemon.events() if e.get("event") == "spare_discarded")["reason"] == "no_record"


async def test_a_release_from_the_spare_gets_its_manifest_at_the_next_idle_pass(root: Path, repo6: GitRepo) -> None:
    """v5's manifest is owed after its deploy (the spare's, of v4's commit) and complete after the idle
    pass: then it is what the next recycling of v5 checks against, and it lists v5's tree."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"))
    await ready(d)
    await deploy(d, root, "v5")
    meta_dir, v5 = root / ".coordinator" / "releases", name(repo6, "v5")
    owed = sorted(p.name for p in meta_dir.iterdir() if p.name.startswith(f"{v5}.index"))
    assert owed == [f"{v5}.index.from-{repo6.tag_sha('v4')}"]
    await ready(d)
    assert sorted(p.name for p in meta_dir.iterdir() if p.name.startswith(f"{v5}.index")) == [f"{v5}.index"]
    assert await d.git.refresh(root / "releases" / v5, meta_dir / f"{v5}.index") is None
    listed = await anyio.to_thread.run_sync(
        lambda: repo6.git("--git-dir", str(root / ".coordinator" / "git"), "ls-tree", "-r", "--name-only", "v5")
    )
    env = {"GIT_INDEX_FILE": str(meta_dir / f"{v5}.index")}
    indexed = await anyio.to_thread.run_sync(
        lambda: (
            subprocess.run(
                ["git", "ls-files"],
                cwd=repo6.path,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    )
    assert indexed.split() == listed.split()


async def test_a_release_changed_before_its_manifest_is_complete_gets_none(root: Path, repo6: GitRepo) -> None:
    """A file of v5 rewritten in place before the idle pass: the manifest is dropped, never made to
    bless the change; v5 is then never recycled (it has no manifest)."""
    d = await chain(root, repo6, ("v1", "v2", "v3", "v4"))
    await ready(d)
    await deploy(d, root, "v5")
    v5 = name(repo6, "v5")
    target = next(p for p in sorted((root / "releases" / v5).rglob("*.py")) if p.is_file())
    await anyio.Path(target).write_text("# changed in place\n")
    with capture_logs() as logs:
        await d.ready_spare()
    assert [e["release"] for e in logs if e["event"] == "manifest_dropped"] == [v5]
    assert not [p for p in (root / ".coordinator" / "releases").iterdir() if p.name.startswith(f"{v5}.index")]
