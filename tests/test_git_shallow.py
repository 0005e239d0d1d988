"""The shallow git cache (--depth) against a real repository with a long history: what it holds, moved
tags, sha pins, incremental preparation, full history with depth 0, and tidying over many deploys."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from coordinator.config import Config
from coordinator.exceptions import ConfigError
from coordinator.git import GitCache
from coordinator.options import resolve_options
from coordinator.prepare import PreviousRelease, prepare_release
from tests.helpers import GitRepo, started_deployer, write_marker

pytestmark = pytest.mark.anyio

COMMITS = 50


@pytest.fixture
def long_repo(tmp_path: Path) -> GitRepo:
    """50 commits of a small app, each changing one of 20 modules; tags t10, t20, ..., t50."""
    r = GitRepo(tmp_path / "long")
    for i in range(1, COMMITS + 1):
        files = {f"pkg/mod{i % 20}.py": f"N = {i}\n", "VERSION": f"{i}\n"}
        if i == 1:
            files |= {f"pkg/mod{k}.py": "N = 0\n" for k in range(20)}
        r.commit(files, tag=f"t{i}" if i % 10 == 0 else None, message=f"commit {i}")
    return r


def _git(git_dir: Path, *args: str) -> str:
    out = subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True)
    return out.stdout.decode().strip()


def _commits(git_dir: Path) -> int:
    """Commits reachable from the cache's refs."""
    return int(_git(git_dir, "rev-list", "--count", "--all") or 0)


def _cache(tmp_path: Path, repo: GitRepo, depth: int = 1) -> GitCache:
    return GitCache(tmp_path / "cache.git", str(repo.path), timeout=30, depth=depth)


async def test_depth_1_fetch_keeps_one_commit(tmp_path: Path, long_repo: GitRepo) -> None:
    """A tag fetched with the default depth: the cache is shallow and holds that one commit."""
    cache = _cache(tmp_path, long_repo)
    await cache.ensure()
    assert await cache.fetch_tag("t50") == long_repo.tag_sha("t50")
    assert _git(cache.git_dir, "rev-parse", "--is-shallow-repository") == "true"
    assert _commits(cache.git_dir) == 1


async def test_depth_0_fetches_the_whole_history(tmp_path: Path, long_repo: GitRepo) -> None:
    """--depth 0: no depth limit, every ancestor of the tag is in the cache."""
    cache = _cache(tmp_path, long_repo, depth=0)
    await cache.ensure()
    await cache.fetch_tag("t50")
    assert _git(cache.git_dir, "rev-parse", "--is-shallow-repository") == "false"
    assert _commits(cache.git_dir) == COMMITS


async def test_depth_0_unshallows_a_shallow_cache(tmp_path: Path, long_repo: GitRepo) -> None:
    """A cache filled shallow, then used with depth 0: the next fetch completes its history."""
    shallow = _cache(tmp_path, long_repo)
    await shallow.ensure()
    await shallow.fetch_tag("t40")
    full = _cache(tmp_path, long_repo, depth=0)
    await full.fetch_tag("t50")
    assert _git(full.git_dir, "rev-parse", "--is-shallow-repository") == "false"
    assert _commits(full.git_dir) == COMMITS


async def test_moved_tag_is_refetched_in_a_shallow_cache(tmp_path: Path, long_repo: GitRepo) -> None:
    """A tag re-pointed in the repository: the next shallow fetch of it gets the new commit."""
    cache = _cache(tmp_path, long_repo)
    await cache.ensure()
    old = await cache.fetch_tag("t20")
    long_repo.git("tag", "-f", "t20", "t30")
    with capture_logs() as logs:
        new = await cache.fetch_tag("t20")
    assert new == long_repo.tag_sha("t30") != old
    assert [e["new_sha"] for e in logs if e["event"] == "tag_moved"] == [new]


async def test_incremental_prepare_works_between_shallow_commits(tmp_path: Path, long_repo: GitRepo) -> None:
    """Two tags fetched at depth 1 (no common history in the cache): incremental preparation is used,
    and gives exactly what a full checkout gives."""
    cache = _cache(tmp_path, long_repo)
    await cache.ensure()
    old, new = await cache.fetch_tag("t40"), await cache.fetch_tag("t50")
    prev_dir, full_dir, inc_dir = (tmp_path / n for n in ("prev", "full", "inc"))
    for d in (prev_dir, full_dir, inc_dir):
        d.mkdir()
    await cache.checkout(old, prev_dir, tmp_path / "i1")
    await cache.checkout(new, full_dir, tmp_path / "i2")
    previous = PreviousRelease(prev_dir, old, created=4e9, built=False)
    stats = await prepare_release(cache, new, inc_dir, tmp_path / "i3", previous)
    assert (stats.mode, stats.fallback) == ("incremental", None)
    assert stats.linked > 0
    assert _snapshot(inc_dir) == _snapshot(full_dir)


async def test_incremental_prepare_falls_back_when_previous_commit_left_the_cache(
    tmp_path: Path, long_repo: GitRepo
) -> None:
    """The previous release's commit is no longer in the shallow cache: a full checkout, same files."""
    cache = _cache(tmp_path, long_repo)
    await cache.ensure()
    old = await cache.fetch_tag("t40")
    prev_dir, inc_dir = tmp_path / "prev", tmp_path / "inc"
    prev_dir.mkdir()
    inc_dir.mkdir()
    await cache.checkout(old, prev_dir, tmp_path / "i1")
    cache.gc_min_kib = 0
    await cache.tidy(needed=set())  # t40 dropped, and its objects with it
    new = await cache.fetch_tag("t50")
    previous = PreviousRelease(prev_dir, old, created=4e9, built=False)
    stats = await prepare_release(cache, new, inc_dir, tmp_path / "i2", previous)
    assert (stats.mode, stats.fallback) == ("full", "previous_commit_missing")
    assert (inc_dir / "VERSION").read_text() == "50\n"


async def test_tidy_deletes_unneeded_tags_and_their_objects(tmp_path: Path, long_repo: GitRepo) -> None:
    """tidy keeps exactly the needed tags; a gc drops the commits only the others reached."""
    cache = _cache(tmp_path, long_repo)
    cache.gc_min_kib = 0
    await cache.ensure()
    for t in ("t10", "t20", "t30"):
        await cache.fetch_tag(t)
    assert await cache.tidy({"t30"}) == ["t10", "t20"]
    assert _git(cache.git_dir, "tag") == "t30"
    assert await cache.resolve("t10") is None
    assert _commits(cache.git_dir) == 1
    assert int(_git(cache.git_dir, "count-objects", "-v").split("count: ")[1].split()[0]) == 0  # no loose objects


async def test_tidy_skips_gc_while_the_cache_has_not_doubled(tmp_path: Path, long_repo: GitRepo) -> None:
    """After one gc, tidy only deletes refs until the cache is twice as big as after that gc."""
    cache = _cache(tmp_path, long_repo)
    cache.gc_min_kib = 0
    await cache.ensure()
    await cache.fetch_tag("t50")
    with capture_logs() as logs:
        await cache.tidy({"t50"})  # the first tidy of a process always collects
        await cache.tidy({"t50"})  # nothing grew
    assert [e["event"] for e in logs].count("git_cache_collected") == 1


async def test_many_deploys_keep_the_cache_bounded(root: Path, long_repo: GitRepo) -> None:
    """Deploying the 50 commits one tag after another (keep 2, depth 1): the cache never holds more
    commits than the releases on disk (and the spare) need, a rollback needs no fetch, and a sha pin is
    honoured."""
    for i in range(1, COMMITS + 1):
        long_repo.git("tag", "-f", f"d{i}", f"HEAD~{COMMITS - i}")
    d = await started_deployer(root, long_repo, keep=2)
    d.git.gc_min_kib = 0
    git_dir = root / ".coordinator" / "git"
    most = 0
    for i in range(1, COMMITS + 1):
        write_marker(root, json.dumps({"tag": f"d{i}", "sha": long_repo.tag_sha(f"d{i}")[:12]}))
        attempt = await d.reconcile()
        assert attempt is not None and attempt.result == "success", attempt
        most = max(most, _commits(git_dir))
    assert most <= 3  # the releases on disk: current, previous (and the new one before the prune)
    # the tags of the releases on disk, and of the release retired into the spare (d48)
    assert sorted(_git(git_dir, "tag").split()) == ["d48", "d49", "d50"]
    write_marker(root, json.dumps({"tag": "d49", "sha": long_repo.tag_sha("d49")}))
    with capture_logs() as logs:
        attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success"
    assert str(attempt.release).startswith("d49-")
    git_calls = [e["cmd"] for e in logs if e["event"] == "git"]
    assert "for-each-ref" in git_calls and "fetch" not in git_calls


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (p.stat().st_mode, p.read_bytes())
    return out


def test_depth_option_reaches_the_cache(tmp_path: Path) -> None:
    """--depth from the environment (0 allowed) becomes the cache's depth; a negative one is refused."""
    opts = resolve_options({"root": str(tmp_path), "repo": "https://example.com/a.git"}, env={"COORDINATOR_DEPTH": "0"})
    assert GitCache.from_config(Config.from_options(opts)).depth == 0
    with pytest.raises(ConfigError, match="depth"):
        resolve_options({"depth": -1}, env={}, names=["depth"])
