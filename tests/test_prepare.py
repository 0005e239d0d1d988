"""coordinator.prepare against real git: incremental releases equal full checkouts, share only what
is unchanged, never touch the previous release, and fall back to a full checkout when they must."""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from structlog.testing import capture_logs

from coordinator import incremental as prepare_module
from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.git import GitCache
from coordinator.layout import Layout
from coordinator.prepare import PrepareStats, PreviousRelease, prepare_release
from coordinator.releases import load_previous
from tests.helpers import GitRepo, contents, read_status, snapshot
from tests.trees import BASE, TRANSITIONS, F, L, Leaf, Tree, changed_paths, commit_tree, inodes, tree_pairs

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------------------------------ trees

# ------------------------------------------------------------------------------------------ set-up


@dataclass
class Transition:
    """A previous release of ``old`` (a full checkout), and what preparing ``new`` from it gave."""

    base: Path
    cache: GitCache
    old_sha: str
    new_sha: str
    previous: PreviousRelease
    before: dict[str, tuple[Any, ...]]  # snapshot of the previous release before preparing
    dest: Path
    stats: PrepareStats | None = None

    async def full(self) -> Path:
        """A full checkout of the new commit, for comparison."""
        out = self.base / "full"
        await anyio.to_thread.run_sync(out.mkdir)
        await self.cache.checkout(self.new_sha, out, self.base / "index-full")
        return out

    async def prepare(self, previous: PreviousRelease | None = None, **kw: Any) -> PrepareStats:
        prev = self.previous if previous is None else previous
        self.stats = await prepare_release(self.cache, self.new_sha, self.dest, self.base / "index", prev, **kw)
        return self.stats


async def make_transition(base: Path, old: Tree, new: Tree) -> Transition:
    """Commit ``old`` and ``new`` in a real repository, fetch both into a cache, check ``old`` out as
    the previous release; nothing prepared yet."""
    repo = await anyio.to_thread.run_sync(GitRepo, base / "src")
    old_sha = await anyio.to_thread.run_sync(commit_tree, repo, old, "old")
    new_sha = await anyio.to_thread.run_sync(commit_tree, repo, new, "new")
    cache = GitCache(base / "cache.git", str(repo.path), timeout=60)
    await cache.ensure()
    await cache.fetch_tag("old")
    await cache.fetch_tag("new")
    prev = base / "releases" / "old-0123456789ab"
    await anyio.to_thread.run_sync(lambda: prev.mkdir(parents=True))
    await cache.checkout(old_sha, prev, base / "index-old")
    previous = PreviousRelease(prev, old_sha, created=time.time(), built=False)
    dest = base / "releases" / ".new.tmp-1-0"
    await anyio.to_thread.run_sync(dest.mkdir)
    before = await anyio.to_thread.run_sync(snapshot, prev)
    return Transition(base, cache, old_sha, new_sha, previous, before, dest)


async def prepared(base: Path, old: Tree, new: Tree) -> Transition:
    """``make_transition`` and the incremental prepare of ``new``."""
    t = await make_transition(base, old, new)
    await t.prepare()
    return t


async def assert_same_as_full(t: Transition) -> None:
    """The prepared release has exactly the content of a full checkout of the new commit."""
    full = await t.full()
    got, want = await anyio.to_thread.run_sync(lambda: (contents(t.dest), contents(full)))
    assert got == want


# ------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_incremental_release_equals_a_full_checkout(tmp_path: Path, case: str) -> None:
    """The incremental release has exactly the paths, types, modes, contents and targets of a full checkout."""
    t = await prepared(tmp_path, *TRANSITIONS[case])
    assert t.stats is not None and t.stats.mode == "incremental"
    await assert_same_as_full(t)


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_unchanged_files_share_the_inode_of_the_previous_release(tmp_path: Path, case: str) -> None:
    """Every file or symlink whose mode and content did not change is a hard link to the previous copy."""
    old, new = TRANSITIONS[case]
    t = await prepared(tmp_path, old, new)
    unchanged, _changed = changed_paths(old, new)
    prev, got = await anyio.to_thread.run_sync(lambda: (inodes(t.previous.path), inodes(t.dest)))
    assert {p: got[p] for p in unchanged} == {p: prev[p] for p in unchanged}


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_changed_files_are_new_inodes(tmp_path: Path, case: str) -> None:
    """Every added or changed file or symlink is a new inode, shared with nothing in the previous release."""
    old, new = TRANSITIONS[case]
    t = await prepared(tmp_path, old, new)
    _unchanged, changed = changed_paths(old, new)
    prev, got = await anyio.to_thread.run_sync(lambda: (inodes(t.previous.path), inodes(t.dest)))
    assert {p for p in changed if got[p] in set(prev.values())} == set()


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_previous_release_is_untouched(tmp_path: Path, case: str) -> None:
    """The previous release keeps every path, inode, mtime, size, mode and byte."""
    t = await prepared(tmp_path, *TRANSITIONS[case])
    assert await anyio.to_thread.run_sync(snapshot, t.previous.path) == t.before


async def test_stats_count_linked_written_and_deleted_files(tmp_path: Path) -> None:
    """The stats count links for unchanged files, writes for changed ones and deleted paths."""
    old = {**BASE, "a": F("1"), "gone1": F("x"), "d/gone2": F("y")}
    new = {**BASE, "a": F("2"), "added": F("z")}
    t = await prepared(tmp_path, old, new)
    assert t.stats == PrepareStats(mode="incremental", linked=3, written=2, deleted=2, rewritten=0)


async def test_index_and_listing_files_are_removed(tmp_path: Path) -> None:
    """No temporary git output file is left next to the index path: only the index, as the manifest."""
    t = await prepared(tmp_path, {**BASE, "a": F("1")}, {**BASE, "a": F("2")})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("index")) == ["index"]
    assert t.stats is not None and t.stats.manifest == tmp_path / "index"


async def test_files_an_app_wrote_into_the_previous_release_are_not_copied(tmp_path: Path) -> None:
    """Untracked files in the previous release (__pycache__, logs) never reach the new release."""
    t = await make_transition(tmp_path, BASE, {**BASE, "pkg/mod.py": F("X = 2\n")})

    def litter() -> None:
        (t.previous.path / "pkg" / "__pycache__").mkdir()
        (t.previous.path / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00")
        (t.previous.path / "app.log").write_text("log\n")

    await anyio.to_thread.run_sync(litter)
    await t.prepare()
    await assert_same_as_full(t)


async def test_previous_file_modified_after_publication_is_written_fresh(tmp_path: Path) -> None:
    """A previous copy changed after its release was published is not shared: the new release gets git's."""
    t = await make_transition(tmp_path, BASE, {**BASE, "other": F("o")})
    await anyio.to_thread.run_sync(lambda: (t.previous.path / "keep.txt").write_text("KEPT\n"))  # same size
    stats = await t.prepare()
    assert (t.dest / "keep.txt").read_text() == "kept\n"
    assert stats.rewritten == 1
    assert os.lstat(t.dest / "keep.txt").st_ino != os.lstat(t.previous.path / "keep.txt").st_ino


async def test_previous_file_with_changed_permissions_is_written_fresh(tmp_path: Path) -> None:
    """A previous copy whose permission bits differ from a checkout's is not shared."""
    t = await make_transition(tmp_path, BASE, dict(BASE))
    await anyio.to_thread.run_sync(lambda: (t.previous.path / "keep.txt").chmod(0o600))
    stats = await t.prepare()
    assert stats.rewritten == 1
    await assert_same_as_full(t)


async def test_symlink_planted_for_a_previous_directory_is_not_followed(tmp_path: Path) -> None:
    """A directory of the previous release replaced by a symlink is treated as missing, never followed."""
    t = await make_transition(tmp_path, BASE, dict(BASE))
    outside = tmp_path / "outside"

    def plant() -> None:
        shutil.move(t.previous.path / "pkg", outside)
        os.symlink(outside, t.previous.path / "pkg")

    await anyio.to_thread.run_sync(plant)
    stats = await t.prepare()
    assert stats.rewritten == 1
    assert os.lstat(t.dest / "pkg" / "mod.py").st_ino != os.lstat(outside / "mod.py").st_ino
    await assert_same_as_full(t)


async def test_paths_of_the_previous_releases_shared_links_are_written_not_linked(tmp_path: Path) -> None:
    """Where the previous release has shared links (coordinator.shared), the tag's files are written, not
    linked: even a tracked symlink, which a link into ROOT/shared would otherwise pass for."""
    tree = {**BASE, ".env": L("keep.txt"), "media/x": F("x\n")}
    t = await make_transition(tmp_path, tree, dict(tree))

    def link_shared() -> None:
        (t.previous.path / ".env").unlink()
        (t.previous.path / ".env").symlink_to("../../shared/.env")
        shutil.rmtree(t.previous.path / "media")
        (t.previous.path / "media").symlink_to("../../shared/media")

    await anyio.to_thread.run_sync(link_shared)
    published = replace(t.previous, created=time.time(), shared=frozenset({".env", "media"}))
    stats = await t.prepare(published)
    assert (stats.mode, stats.rewritten) == ("incremental", 2)
    await assert_same_as_full(t)


async def test_directories_get_checkout_permissions_whatever_our_umask(tmp_path: Path) -> None:
    """Directories the incremental path makes are 0755 like checkout-index's, even under umask 077."""
    t = await make_transition(tmp_path, BASE, {**BASE, "new/dir/f": F("x")})
    old_umask = os.umask(0o077)
    try:
        await t.prepare()
    finally:
        os.umask(old_umask)
    await assert_same_as_full(t)


async def test_many_changed_paths_are_written_in_several_git_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed paths too long for one command line are split over several checkout-index calls."""
    monkeypatch.setattr(prepare_module, "_ARGS_CHUNK", 8)
    t = await make_transition(tmp_path, BASE, {**BASE, **{f"d{i}/f{i}": F(str(i)) for i in range(5)}})
    with capture_logs() as logs:
        stats = await t.prepare()
    assert stats.written == 5
    assert sum(1 for e in logs if e["event"] == "git" and e["cmd"] == "checkout-index") == 5
    await assert_same_as_full(t)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=tree_pairs())
async def test_random_tree_pairs_prepare_like_a_full_checkout(
    tmp_path: Path, pair: tuple[dict[str, Leaf], dict[str, Leaf]]
) -> None:
    """For random pairs of small trees the incremental release equals a full checkout of the new one."""
    # Drawn by @given, never with st.data() inside the coroutine: a draw that overruns raises
    # hypothesis' StopTest (a BaseException) in anyio's runner task, which asyncio then logs as
    # "Task exception was never retrieved" (seen in CI under load).
    old, new = pair
    base = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(dir=tmp_path)))
    t = await make_transition(base, old, new)
    stats = await t.prepare()
    assert stats.mode == "incremental"
    await assert_same_as_full(t)
    assert await anyio.to_thread.run_sync(snapshot, t.previous.path) == t.before


# ------------------------------------------------------------------------------------------ fallbacks


async def test_no_previous_release_means_a_full_checkout(tmp_path: Path) -> None:
    """Without a previous release the release is a full checkout, with the reason in the stats."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    stats = await prepare_release(t.cache, t.new_sha, t.dest, tmp_path / "index", None)
    assert (stats.mode, stats.fallback) == ("full", "no_previous_release")
    await assert_same_as_full(t)


async def test_unknown_previous_sha_means_a_full_checkout(tmp_path: Path) -> None:
    """A previous release without readable metadata (no sha) gives a full checkout."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    stats = await t.prepare(PreviousRelease(t.previous.path, None, None, False))
    assert (stats.mode, stats.fallback) == ("full", "previous_sha_unknown")
    await assert_same_as_full(t)


async def test_previous_commit_missing_from_the_cache_means_a_full_checkout(tmp_path: Path) -> None:
    """A previous sha the git cache does not have gives a full checkout."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    stats = await t.prepare(PreviousRelease(t.previous.path, "ab" * 20, time.time(), False))
    assert (stats.mode, stats.fallback) == ("full", "previous_commit_missing")
    await assert_same_as_full(t)


async def test_build_command_means_a_full_checkout(tmp_path: Path) -> None:
    """With a build command configured nothing is shared with the previous release."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    stats = await t.prepare(build_command=True)
    assert (stats.mode, stats.fallback) == ("full", "build_command")
    prev = await anyio.to_thread.run_sync(inodes, t.previous.path)
    assert not set((await anyio.to_thread.run_sync(inodes, t.dest)).values()) & set(prev.values())
    await assert_same_as_full(t)


async def test_previous_release_built_by_a_build_command_means_a_full_checkout(tmp_path: Path) -> None:
    """A previous release a build ran in is not a pristine checkout: it is not built from."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    p = t.previous
    stats = await t.prepare(PreviousRelease(p.path, p.sha, p.created, built=True))
    assert (stats.mode, stats.fallback) == ("full", "previous_was_built")
    await assert_same_as_full(t)


async def test_previous_release_built_in_the_sandbox_is_built_from_writing_its_changes_fresh(tmp_path: Path) -> None:
    """A previous release whose build ran in the sandbox is built from; the paths its build replaced
    (here keep.txt, rewritten in place after publication's check would pass) are written, not linked."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    p = t.previous
    assert p.created is not None
    prev_keep = p.path / "keep.txt"
    await anyio.to_thread.run_sync(prev_keep.unlink)
    await anyio.to_thread.run_sync(prev_keep.write_text, "the build's output\n")
    os.utime(prev_keep, (p.created - 10, p.created - 10))  # as old as the rest: only build_changes tells
    built = PreviousRelease(p.path, p.sha, p.created, built=True, build_changes=frozenset({"keep.txt"}))
    stats = await t.prepare(built)
    assert (stats.mode, stats.rewritten) == ("incremental", 1)
    assert (t.dest / "pkg" / "mod.py").stat().st_ino == (p.path / "pkg" / "mod.py").stat().st_ino
    await assert_same_as_full(t)


async def test_previous_release_of_unknown_provenance_means_a_full_checkout(tmp_path: Path) -> None:
    """A previous release with no journal entry for its publication is not built from."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    p = t.previous
    stats = await t.prepare(PreviousRelease(p.path, p.sha, p.created, built=None))
    assert (stats.mode, stats.fallback) == ("full", "previous_provenance_unknown")


async def test_previous_that_is_not_a_published_directory_means_a_full_checkout(tmp_path: Path) -> None:
    """A previous release that is a symlink (or a hidden temporary name) is not built from."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    link = tmp_path / "releases" / "linked-0123456789ab"
    await anyio.to_thread.run_sync(os.symlink, t.previous.path, link)
    p = t.previous
    stats = await t.prepare(PreviousRelease(link, p.sha, p.created, built=False))
    assert (stats.mode, stats.fallback) == ("full", "previous_not_published")
    await assert_same_as_full(t)


async def test_changed_gitattributes_means_a_full_checkout(tmp_path: Path) -> None:
    """A changed .gitattributes (it can change how unchanged blobs check out) gives a full checkout."""
    old = {**BASE, "w.txt": F("a\nb\n")}
    t = await make_transition(tmp_path, old, {**old, ".gitattributes": F("*.txt text eol=crlf\n")})
    stats = await t.prepare()
    assert (stats.mode, stats.fallback) == ("full", "gitattributes_changed")
    assert (t.dest / "w.txt").read_bytes() == b"a\r\nb\r\n"


def refuse_links_after(monkeypatch: pytest.MonkeyPatch, allowed: int, code: int = errno.EXDEV) -> None:
    """Make os.link succeed ``allowed`` times, then fail with ``code``."""
    real_link = os.link
    calls = itertools.count()

    def link(*args: Any, **kw: Any) -> None:
        if next(calls) >= allowed:
            raise OSError(code, os.strerror(code))
        real_link(*args, **kw)

    monkeypatch.setattr(os, "link", link)


async def test_filesystem_refusing_links_means_a_clean_full_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.link failing with EXDEV midway gives a full checkout into an emptied directory, and a warning."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    refuse_links_after(monkeypatch, 2)
    with capture_logs() as logs:
        stats = await t.prepare()
    assert (stats.mode, stats.fallback) == ("full", "link_failed_EXDEV")
    assert any(e["event"] == "prepare_fallback" and e["reason"] == "link_failed_EXDEV" for e in logs)
    await assert_same_as_full(t)


async def test_link_failure_midway_leaves_the_previous_release_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing the links made before a failed one never changes the previous release."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    refuse_links_after(monkeypatch, 2, errno.EPERM)
    stats = await t.prepare()
    assert stats.fallback == "link_failed_EPERM"
    assert await anyio.to_thread.run_sync(snapshot, t.previous.path) == t.before


async def test_other_link_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.link failing for another reason (disk full) is an error, not a silent fallback."""
    t = await make_transition(tmp_path, BASE, {**BASE, "a": F("1")})
    refuse_links_after(monkeypatch, 0, errno.ENOSPC)
    with pytest.raises(OSError) as info:
        await t.prepare()
    assert info.value.errno == errno.ENOSPC


# ------------------------------------------------------------------------------------------ deployer


def deployer(root: Path, repo: GitRepo, **kw: object) -> Deployer:
    cfg = Config(layout=Layout.for_root(root), repo=str(repo.path), **kw)  # type: ignore[arg-type]
    return Deployer(cfg)


async def deploy(d: Deployer, root: Path, tag: str) -> list[MutableMapping[str, Any]]:
    """Write the marker, reconcile once; return the prepare_stats events logged."""
    await anyio.to_thread.run_sync((root / "deploy.request").write_text, tag)
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success", attempt
    return [e for e in logs if e["event"] == "prepare_stats"]


async def test_deployer_prepares_the_second_release_incrementally(root: Path, repo: GitRepo) -> None:
    """Deploying v1 then v2 prepares v2 from v1: its prepare_stats event says incremental."""
    d = deployer(root, repo)
    await d.startup()
    first = await deploy(d, root, "v1")
    second = await deploy(d, root, "v2")
    assert [(e["mode"], e.get("fallback")) for e in first] == [("full", "no_previous_release")]
    assert [(e["mode"], e["linked"], e["written"], e["deleted"]) for e in second] == [("incremental", 1, 3, 0)]


async def test_deployer_incremental_release_shares_unchanged_files(root: Path, repo: GitRepo) -> None:
    """The v2 release shares pkg/__init__.py (unchanged) with v1 and has its own app.py."""
    d = deployer(root, repo)
    await d.startup()
    await deploy(d, root, "v1")
    await deploy(d, root, "v2")
    v1, v2 = (root / "releases" / f"{t}-{repo.tag_sha(t)[:12]}" for t in ("v1", "v2"))
    assert os.lstat(v1 / "pkg" / "__init__.py").st_ino == os.lstat(v2 / "pkg" / "__init__.py").st_ino
    assert os.lstat(v1 / "app.py").st_ino != os.lstat(v2 / "app.py").st_ino
    assert (v2 / "app.py").read_text() == "VERSION = 'v2'\n"


async def test_deployer_incremental_release_equals_a_full_checkout(root: Path, repo: GitRepo, tmp_path: Path) -> None:
    """The published v3 release (built from v2) has exactly the content of a full checkout of v3."""
    d = deployer(root, repo)
    await d.startup()
    for tag in ("v1", "v2", "v3"):
        await deploy(d, root, tag)
    full = tmp_path / "full-v3"
    await anyio.to_thread.run_sync(full.mkdir)
    await d.git.checkout(repo.tag_sha("v3"), full, tmp_path / "index")
    release = root / "releases" / f"v3-{repo.tag_sha('v3')[:12]}"
    got, want = await anyio.to_thread.run_sync(lambda: (contents(release), contents(full)))
    assert got == want


async def test_deployer_status_and_journal_keep_their_shape(root: Path, repo: GitRepo) -> None:
    """An incremental deploy writes the same status fields and journal keys as a full one."""
    d = deployer(root, repo)
    await d.startup()
    await deploy(d, root, "v1")
    first = read_status(root)
    await deploy(d, root, "v2")
    second = read_status(root)
    assert first is not None and second is not None
    assert set(second) == set(first) and set(second["last_attempt"]) == set(first["last_attempt"])
    assert set(second["last_attempt"]["phases_ms"]) == set(first["last_attempt"]["phases_ms"])
    first_line, second_line = (root / ".coordinator" / "journal.jsonl").read_text().splitlines()
    assert set(json.loads(first_line)) == set(json.loads(second_line))


async def test_deployer_with_build_command_prepares_full_checkouts(root: Path, repo: GitRepo) -> None:
    """With --build-command and --build-sandbox off every release is a full checkout, and the event says why."""
    d = deployer(root, repo, build_command="true", build_sandbox="off")
    await d.startup()
    await deploy(d, root, "v1")
    events = await deploy(d, root, "v2")
    assert [(e["mode"], e["fallback"]) for e in events] == [("full", "build_command")]


async def test_deployer_does_not_build_from_a_release_a_build_ran_in(root: Path, repo: GitRepo) -> None:
    """After a release built in place by a build command, the next deploy without one is a full checkout."""
    built = deployer(root, repo, build_command="echo changed > app.py", build_sandbox="off")
    await built.startup()
    await deploy(built, root, "v1")
    d = deployer(root, repo)
    await d.startup()
    events = await deploy(d, root, "v2")
    assert [(e["mode"], e["fallback"]) for e in events] == [("full", "previous_was_built")]


async def test_load_previous_reads_sha_and_provenance(root: Path, repo: GitRepo) -> None:
    """load_previous gives the current release's sha, publication time and whether a build ran in it."""
    d = deployer(root, repo)
    await d.startup()
    await deploy(d, root, "v1")
    name = f"v1-{repo.tag_sha('v1')[:12]}"
    prev = await anyio.to_thread.run_sync(load_previous, d.layout, name)
    assert prev is not None
    assert (prev.path, prev.sha, prev.built) == (root / "releases" / name, repo.tag_sha("v1"), False)
    assert prev.created is not None and prev.created <= time.time()


async def test_concurrent_steps_cancel_each_other_on_the_first_error() -> None:
    """When one concurrent step fails, the other is cancelled at once and the first error is raised as is."""
    cancelled = anyio.Event()

    async def fails() -> None:
        raise prepare_module._Fallback("boom")

    async def waits_forever() -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    with anyio.fail_after(30), pytest.raises(prepare_module._Fallback, match="boom"):  # deadlock guard only
        await prepare_module._concurrently(waits_forever, fails)
    assert cancelled.is_set()
