"""coordinator.recycle against real git: a recycled release equals a full checkout, writes every
changed file as a new inode, leaves the releases sharing its inodes untouched, and falls back when the
retired release is not what it was published as; which release is picked; a crash mid-recycle."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from structlog.testing import capture_logs

from coordinator.git import GitCache
from coordinator.prepare import PrepareStats, prepare_release
from coordinator.recycle import Retired, manifest_path, pick_retired
from tests.helpers import GitRepo, app_repo, contents, current_release, leftovers, run_once, snapshot
from tests.recycling import deploy, deployer, name
from tests.trees import BASE, TRANSITIONS, F, Leaf, Tree, changed_paths, commit_tree, inodes, tree_pairs

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------------------------------ set-up


@dataclass
class Recycling:
    """A retired release of ``old`` (a full checkout with its manifest), another release sharing every
    one of its inodes (hard links, as incremental releases do), and an empty workspace."""

    base: Path
    cache: GitCache
    old_sha: str
    new_sha: str
    retired: Retired
    other: Path  # shares the retired release's inodes
    before: dict[str, tuple[Any, ...]]  # snapshot of `other` before recycling
    dest: Path

    async def prepare(self, retired: Retired | None = None) -> PrepareStats:
        r = self.retired if retired is None else retired
        return await prepare_release(self.cache, self.new_sha, self.dest, self.base / "index", None, retired=r)

    async def full(self) -> dict[str, tuple[Any, ...]]:
        out = self.base / "full"
        await anyio.to_thread.run_sync(out.mkdir)
        await self.cache.checkout(self.new_sha, out, self.base / "index-full")
        return await anyio.to_thread.run_sync(contents, out)


async def make_recycling(base: Path, old: Tree, new: Tree) -> Recycling:
    repo = await anyio.to_thread.run_sync(GitRepo, base / "src")
    old_sha = await anyio.to_thread.run_sync(commit_tree, repo, old, "old")
    new_sha = await anyio.to_thread.run_sync(commit_tree, repo, new, "new")
    cache = GitCache(base / "cache.git", str(repo.path), timeout=60)
    await cache.ensure()
    await cache.fetch_tag("old")
    await cache.fetch_tag("new")
    releases, meta = base / "releases", base / "meta"
    path = releases / "old-0123456789ab"
    await anyio.to_thread.run_sync(lambda: path.mkdir(parents=True))
    await anyio.to_thread.run_sync(meta.mkdir)
    manifest = meta / "old-0123456789ab.index"
    await cache.checkout(old_sha, path, manifest, keep_index=True)
    metadata = (meta / "old-0123456789ab.json", releases / "old-0123456789ab.json")
    other = releases / "other"

    def finish() -> None:
        for f in metadata:
            f.write_text("{}")
        subprocess.run(["cp", "-al", str(path), str(other)], check=True)
        (releases / ".new.tmp-1-0").mkdir()

    await anyio.to_thread.run_sync(finish)
    retired = Retired("old-0123456789ab", path, old_sha, manifest, metadata)
    before = await anyio.to_thread.run_sync(snapshot, other)
    return Recycling(base, cache, old_sha, new_sha, retired, other, before, releases / ".new.tmp-1-0")


async def assert_recycled_exactly(r: Recycling, stats: PrepareStats) -> None:
    """Recycled: the workspace is a full checkout of the new commit, the other release is untouched,
    the retired release and its metadata are gone, the manifest is the index."""
    assert stats.mode == "recycled", stats
    got = await anyio.to_thread.run_sync(contents, r.dest)
    assert got == await r.full()
    assert await anyio.to_thread.run_sync(snapshot, r.other) == r.before
    assert not os.path.lexists(r.retired.path)
    assert [f for f in (*r.retired.metadata, r.retired.manifest) if f.exists()] == []
    assert stats.manifest == r.base / "index" and stats.manifest.is_file()


# ------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_recycled_release_equals_a_full_checkout(tmp_path: Path, case: str) -> None:
    """A recycled release has exactly the tree of a full checkout; the release sharing its inodes is untouched."""
    r = await make_recycling(tmp_path, *TRANSITIONS[case])
    await assert_recycled_exactly(r, await r.prepare())


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_recycled_changed_files_are_new_inodes(tmp_path: Path, case: str) -> None:
    """Every changed file is a new inode (none shared with the other release); unchanged ones are kept."""
    old, new = TRANSITIONS[case]
    r = await make_recycling(tmp_path, old, new)
    was = await anyio.to_thread.run_sync(inodes, r.other)
    await r.prepare()
    got = await anyio.to_thread.run_sync(inodes, r.dest)
    unchanged, changed = changed_paths(old, new)
    assert {p for p in changed if got[p] in set(was.values())} == set()
    assert {p: got[p] for p in unchanged} == {p: was[p] for p in unchanged}


async def test_recycle_counts_written_and_deleted(tmp_path: Path) -> None:
    """The stats name the recycled release and count written and deleted paths."""
    r = await make_recycling(tmp_path, {**BASE, "a": F("1"), "gone": F("x")}, {**BASE, "a": F("2"), "n": F("z")})
    stats = await r.prepare()
    assert (stats.mode, stats.recycled, stats.written, stats.deleted, stats.restored) == (
        "recycled",
        "old-0123456789ab",
        2,
        1,
        0,
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=tree_pairs())
async def test_random_tree_pairs_recycle_like_a_full_checkout(
    tmp_path: Path, pair: tuple[dict[str, Leaf], dict[str, Leaf]]
) -> None:
    """For random pairs of small trees the recycled release equals a full checkout, the other release untouched."""
    old, new = pair
    base = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(dir=tmp_path)))
    r = await make_recycling(base, old, new)
    await assert_recycled_exactly(r, await r.prepare())


async def test_shared_links_are_removed_and_the_files_they_replaced_restored(tmp_path: Path) -> None:
    """The retired release's shared links go; the tag files they had replaced are written back, then checked."""
    tree = {**BASE, ".env": F("tracked\n"), "media/x": F("x\n")}
    r = await make_recycling(tmp_path, tree, {**tree, "keep.txt": F("new\n")})

    def link_shared() -> None:
        (r.retired.path / ".env").unlink()
        (r.retired.path / ".env").symlink_to("../../shared/.env")
        shutil.rmtree(r.retired.path / "media")
        (r.retired.path / "media").symlink_to("../../shared/media")
        (r.retired.path / "config").mkdir()  # a shared file whose parent the tag does not have
        (r.retired.path / "config" / "local.py").symlink_to("../../../shared/config/local.py")

    await anyio.to_thread.run_sync(link_shared)
    stats = await r.prepare(replace(r.retired, shared=frozenset({".env", "media", "config/local.py"})))
    assert stats.restored == 2
    got = await anyio.to_thread.run_sync(contents, r.dest)
    assert got == await r.full()


# ------------------------------------------------------------------------------------------ fallbacks


async def fallback(r: Recycling) -> tuple[PrepareStats, list[MutableMapping[str, Any]]]:
    with capture_logs() as logs:
        stats = await r.prepare()
    return stats, [e for e in logs if e["event"] == "prepare_fallback"]


def _modify(r: Recycling) -> None:
    (r.other / "keep.txt").unlink()  # so that the other release keeps its copy...
    shutil.copy2(r.retired.path / "keep.txt", r.other / "keep.txt")
    (r.retired.path / "keep.txt").write_text("KEPT\n")  # ...while this one is written in place, same size


CHANGES = {
    "modified_file": (_modify, "retired_changed"),
    "missing_file": (lambda r: (r.retired.path / "keep.txt").unlink(), "retired_changed"),
    "changed_mode": (lambda r: (r.retired.path / "pkg" / "mod.py").chmod(0o755), "retired_changed"),
    "file_replaced_by_symlink": (
        lambda r: ((r.retired.path / "keep.txt").unlink(), (r.retired.path / "keep.txt").symlink_to("x")),
        "retired_changed",
    ),
    "dot_git": (lambda r: (r.retired.path / ".git").mkdir(), "retired_untracked"),
}


@pytest.mark.parametrize("case", CHANGES)
async def test_a_changed_retired_release_falls_back(tmp_path: Path, case: str) -> None:
    """A retired release that is not what it was published as is not recycled: the workspace is
    emptied, the release prepared otherwise (here a full checkout), and the event says why."""
    change, reason = CHANGES[case]
    r = await make_recycling(tmp_path, BASE, {**BASE, "a": F("new\n")})
    await anyio.to_thread.run_sync(change, r)
    r.before = await anyio.to_thread.run_sync(snapshot, r.other)
    stats, events = await fallback(r)
    assert (stats.mode, stats.recycle_fallback, stats.recycled) == ("full", reason, "old-0123456789ab")
    assert [(e["reason"], e["retired"]) for e in events] == [(reason, "old-0123456789ab")]
    assert await anyio.to_thread.run_sync(contents, r.dest) == await r.full()
    assert await anyio.to_thread.run_sync(snapshot, r.other) == r.before
    assert sorted(os.listdir(r.base / "releases")) == [".new.tmp-1-0", "other"]  # no trash left either


def _litter(r: Recycling) -> None:
    """What an app server leaves in a release it served: bytecode, an empty directory, a log, and a
    symlink into the other release (removing it must not touch its target)."""
    pycache = r.retired.path / "pkg" / "__pycache__"
    pycache.mkdir()
    (pycache / "mod.cpython-311.pyc").write_bytes(b"\0" * 64)
    (r.retired.path / "empty").mkdir()
    (r.retired.path / "app.log").write_text("served\n")
    (r.retired.path / "link-out").symlink_to(r.other)


async def test_untracked_paths_in_a_retired_release_are_removed_and_it_is_recycled(tmp_path: Path) -> None:
    """__pycache__, logs and empty directories an app wrote into a retired release go (names only);
    the release is still recycled, exactly, and the other release is untouched."""
    r = await make_recycling(tmp_path, BASE, {**BASE, "a": F("new\n")})
    await anyio.to_thread.run_sync(_litter, r)
    with capture_logs() as logs:
        stats = await r.prepare()
    await assert_recycled_exactly(r, stats)
    assert [e["paths"] for e in logs if e["event"] == "retired_untracked_removed"] == [4]


async def test_a_changed_shared_link_falls_back(tmp_path: Path) -> None:
    """A shared link that no longer points into ROOT/shared as coordinator made it is not removed: fall back."""
    r = await make_recycling(tmp_path, BASE, dict(BASE))
    await anyio.to_thread.run_sync(lambda: (r.retired.path / "media").symlink_to("/etc"))
    stats, _events = await fallback(replace(r, retired=replace(r.retired, shared=frozenset({"media"}))))
    assert (stats.mode, stats.recycle_fallback) == ("full", "retired_shared_link_changed")


async def test_a_retired_commit_missing_from_the_cache_is_left_alone(tmp_path: Path) -> None:
    """A retired release whose commit the cache lacks is not touched at all (retention deletes it later)."""
    r = await make_recycling(tmp_path, BASE, dict(BASE))
    before = await anyio.to_thread.run_sync(snapshot, r.retired.path)
    stats, _events = await fallback(replace(r, retired=replace(r.retired, sha="2" * 40)))
    assert (stats.mode, stats.recycle_fallback) == ("full", "retired_commit_missing")
    assert await anyio.to_thread.run_sync(snapshot, r.retired.path) == before
    assert all(f.exists() for f in (*r.retired.metadata, r.retired.manifest))


async def test_a_changed_gitattributes_is_left_alone(tmp_path: Path) -> None:
    """A changed .gitattributes can change how unchanged files check out: nothing is recycled."""
    r = await make_recycling(tmp_path, BASE, {**BASE, ".gitattributes": F("*.txt text\n")})
    stats, _events = await fallback(r)
    assert (stats.mode, stats.recycle_fallback) == ("full", "gitattributes_changed")
    assert r.retired.path.is_dir()


async def test_a_build_command_never_recycles(tmp_path: Path) -> None:
    """With a build command nothing is recycled (a build could write through a shared inode)."""
    r = await make_recycling(tmp_path, BASE, dict(BASE))
    stats = await prepare_release(
        r.cache, r.new_sha, r.dest, r.base / "index", None, build_command=True, retired=r.retired
    )
    assert (stats.mode, stats.recycled, stats.manifest) == ("full", None, None)
    assert r.retired.path.is_dir()


# ------------------------------------------------------------------------------------------ the deployer


@pytest.fixture
def repo5(tmp_path: Path) -> GitRepo:
    """The tiny app tagged v1..v5."""
    return app_repo(tmp_path / "repo5", 5)


async def test_deployer_recycles_the_release_retention_deletes_next(root: Path, repo5: GitRepo) -> None:
    """With --keep 3, v4 is made from v1 (neither current v3 nor previous v2), which is gone afterwards;
    v2 and v3 keep every inode and byte; v4 is exactly its tag."""
    d = deployer(root, repo5, keep=3)
    await d.startup()
    for tag in ("v1", "v2", "v3"):
        event = await deploy(d, root, tag)
    releases = root / "releases"

    def others() -> dict[str, dict[str, tuple[Any, ...]]]:
        return {t: snapshot(releases / name(repo5, t)) for t in ("v2", "v3")}

    kept = await anyio.to_thread.run_sync(others)
    event = await deploy(d, root, "v4")
    assert (event["mode"], event["recycled"]) == ("recycled", name(repo5, "v1"))
    assert await anyio.to_thread.run_sync(others) == kept
    full = root.parent / "full-v4"
    await anyio.to_thread.run_sync(full.mkdir)
    await d.git.checkout(repo5.tag_sha("v4"), full, root.parent / "index")
    got, want = await anyio.to_thread.run_sync(lambda: (contents(releases / name(repo5, "v4")), contents(full)))
    assert got == want
    lay = d.layout
    assert sorted(p for p in os.listdir(releases) if not p.endswith(".json")) == sorted(
        name(repo5, t) for t in ("v2", "v3", "v4")
    )
    assert not (lay.meta_dir / f"{name(repo5, 'v1')}.json").exists()
    assert [manifest_path(lay, name(repo5, t)).is_file() for t in ("v1", "v4")] == [False, True]
    event = await deploy(d, root, "v5")  # v4 was itself recycled: its manifest lets v2 be recycled now
    assert (event["mode"], event["recycled"]) == ("recycled", name(repo5, "v2"))


async def test_deployer_never_recycles_current_or_previous(root: Path, repo5: GitRepo) -> None:
    """With --keep 2 only current and previous exist: the next release is incremental, nothing recycled."""
    d = deployer(root, repo5, keep=2)
    await d.startup()
    for tag in ("v1", "v2", "v3"):
        event = await deploy(d, root, tag)
        assert event["mode"] != "recycled" and "recycled" not in event


@pytest.fixture
def cwd_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


async def test_a_release_in_use_by_a_process_is_not_recycled(
    root: Path, repo5: GitRepo, cwd_process: list[subprocess.Popen[bytes]]
) -> None:
    """A live process whose cwd is in the retired release keeps it: nothing is recycled."""
    d = deployer(root, repo5, keep=3)
    await d.startup()
    for tag in ("v1", "v2", "v3"):
        await deploy(d, root, tag)
    v1 = root / "releases" / name(repo5, "v1")
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    cwd_process.append(await anyio.to_thread.run_sync(lambda: subprocess.Popen(argv, cwd=v1)))
    event = await deploy(d, root, "v4")
    assert event["mode"] == "incremental" and "recycled" not in event
    assert v1.is_dir()


async def test_pick_retired_skips_protected_releases(root: Path, repo5: GitRepo) -> None:
    """A release in `protected` (a staged release) is never picked; without it, the oldest is."""
    d = deployer(root, repo5, keep=3)
    await d.startup()
    for tag in ("v1", "v2", "v3"):
        await deploy(d, root, tag)
    lay, cur, prev = d.layout, name(repo5, "v3"), name(repo5, "v2")
    picked = await anyio.to_thread.run_sync(pick_retired, lay, cur, prev, 3, "v4-new", ())
    assert picked is not None and picked.name == name(repo5, "v1")
    assert await anyio.to_thread.run_sync(pick_retired, lay, cur, prev, 3, "v4-new", {name(repo5, "v1")}) is None


async def test_a_release_without_a_manifest_is_not_picked(root: Path, repo5: GitRepo) -> None:
    """A release published without a manifest (before coordinator kept them) is not recycled."""
    d = deployer(root, repo5, keep=3)
    await d.startup()
    for tag in ("v1", "v2", "v3"):
        await deploy(d, root, tag)
    await anyio.to_thread.run_sync(manifest_path(d.layout, name(repo5, "v1")).unlink)
    event = await deploy(d, root, "v4")
    assert event["mode"] == "incremental"


# ------------------------------------------------------------------------------------------ crash


def test_crash_mid_recycle_leaves_only_a_hidden_leftover(root: Path, repo5: GitRepo) -> None:
    """Killed while recycling v1 for v4, `current` still names v3 untouched and only hidden leftovers
    remain; the restart removes them (and v1's metadata) and converges to v4."""
    for tag in ("v1", "v2", "v3"):
        (root / "deploy.request").write_text(tag)
        assert run_once(root, repo5, "--keep", "3").returncode == 0
    v3 = root / "releases" / name(repo5, "v3")
    before = snapshot(v3)
    (root / "deploy.request").write_text("v4")
    crashed = run_once(root, repo5, "--keep", "3", failpoints="during-recycle")
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    assert current_release(root) == f"releases/{name(repo5, 'v3')}" and snapshot(v3) == before
    assert not (root / "releases" / name(repo5, "v1")).exists()
    assert [p for p in leftovers(root) if p.startswith("releases/")] != []
    again = run_once(root, repo5, "--keep", "3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert current_release(root) == f"releases/{name(repo5, 'v4')}"
    assert leftovers(root) == []
    assert [p.name for p in (root / ".coordinator" / "releases").iterdir() if p.name.startswith("v1-")] == []
    assert not (root / "releases" / f"{name(repo5, 'v1')}.json").exists()
