"""coordinator.changeset against real git: a checked tree turned into the next commit's by the paths
that change alone equals a full checkout, never writes into an inode another tree holds, and its
manifest completed afterwards matches the new tree."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings

from coordinator.changeset import Change, apply_change, read_change, read_change_file
from coordinator.git import GitCache
from tests.helpers import GitRepo, contents, snapshot
from tests.trees import TRANSITIONS, F, Leaf, Tree, commit_tree, tree_pairs

pytestmark = pytest.mark.anyio


@dataclass
class Applied:
    """The old commit's tree (a full checkout, then changed), its index, and a hard-linked twin."""

    base: Path
    cache: GitCache
    old_sha: str
    new_sha: str
    tree: Path
    index: Path
    twin_before: dict[str, tuple[Any, ...]]
    change: Change

    async def full(self) -> dict[str, tuple[Any, ...]]:
        out = self.base / "full"
        await anyio.to_thread.run_sync(out.mkdir)
        await self.cache.checkout(self.new_sha, out, self.base / "index-full")
        return await anyio.to_thread.run_sync(contents, out)


def _link_twin(tree: Path, twin: Path) -> None:
    """``twin``: every file and symlink of ``tree`` hard-linked (as an older release shares them)."""
    for dirpath, _dirnames, filenames in os.walk(tree):
        rel = Path(dirpath).relative_to(tree)
        (twin / rel).mkdir(parents=True, exist_ok=True)
        for f in filenames:
            os.link(Path(dirpath) / f, twin / rel / f, follow_symlinks=False)


async def applied(base: Path, old: Tree, new: Tree) -> Applied:
    """Commit ``old`` and ``new``, check ``old`` out (with its index), link a twin, apply the change."""
    repo = await anyio.to_thread.run_sync(GitRepo, base / "src")
    old_sha = await anyio.to_thread.run_sync(commit_tree, repo, old, "old")
    new_sha = await anyio.to_thread.run_sync(commit_tree, repo, new, "new")
    cache = GitCache(base / "cache.git", str(repo.path), timeout=60)
    await cache.ensure()
    for tag in ("old", "new"):
        await cache.fetch_tag(tag)
    tree, index, twin = base / "tree", base / "index", base / "twin"
    await anyio.to_thread.run_sync(tree.mkdir)
    await cache.checkout(old_sha, tree, index, keep_index=True)
    await anyio.to_thread.run_sync(_link_twin, tree, twin)
    twin_before = await anyio.to_thread.run_sync(snapshot, twin)
    assert await cache.diff_tree(old_sha, new_sha, base / "diff") is None
    change = await anyio.to_thread.run_sync(read_change_file, base / "diff")
    await apply_change(cache, change, tree, base / "scratch-index")
    return Applied(base, cache, old_sha, new_sha, tree, index, twin_before, change)


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_the_changed_tree_equals_a_full_checkout(tmp_path: Path, case: str) -> None:
    """Every named transition (retyped paths, emptied directories, symlinks, modes, submodules)."""
    a = await applied(tmp_path, *TRANSITIONS[case])
    assert await anyio.to_thread.run_sync(contents, a.tree) == await a.full()


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_a_tree_sharing_the_old_inodes_is_untouched(tmp_path: Path, case: str) -> None:
    """Changed files are new inodes: the hard-linked twin keeps every inode and every byte."""
    a = await applied(tmp_path, *TRANSITIONS[case])
    assert await anyio.to_thread.run_sync(snapshot, tmp_path / "twin") == a.twin_before


@pytest.mark.parametrize("case", TRANSITIONS)
async def test_the_old_manifest_completed_describes_the_new_tree(tmp_path: Path, case: str) -> None:
    """``read-tree -m -i`` then ``--refresh`` on the old index: every entry matches the changed tree."""
    a = await applied(tmp_path, *TRANSITIONS[case])
    await a.cache.merge_trees(a.old_sha, a.new_sha, a.tree, a.index, update=False)
    assert await a.cache.refresh(a.tree, a.index) is None


async def test_a_file_modified_before_completion_is_refused(tmp_path: Path) -> None:
    """A written file rewritten in place afterwards: the completion's refresh refuses it."""
    a = await applied(tmp_path, {"a.py": F("1\n")}, {"a.py": F("2\n")})
    with open(a.tree / "a.py", "r+b") as f:
        f.write(b"3")
    await a.cache.merge_trees(a.old_sha, a.new_sha, a.tree, a.index, update=False)
    assert await a.cache.refresh(a.tree, a.index) is not None


def test_counts_and_removals_from_diff_tree_output() -> None:
    """Deleted paths count and are removed; a retyped submodule is removed as a directory first."""
    z = "0" * 40
    raw = (
        f":100644 000000 {'1' * 40} {z} D\0gone.py\0"
        f":100644 100644 {'1' * 40} {'2' * 40} M\0kept.py\0"
        f":160000 100644 {'3' * 40} {'4' * 40} T\0vendor/sub\0"
        f":000000 120000 {z} {'5' * 40} A\0link\0"
    ).encode()
    change = read_change(raw)
    assert (change.written, change.deleted, change.attributes) == (3, 1, False)
    assert change.removed == [(b"gone.py", False), (b"vendor/sub", True)]


def test_unexpected_diff_tree_output_is_refused() -> None:
    """A rename record (never asked for) or a truncated output: ValueError, nothing applied."""
    with pytest.raises(ValueError):
        read_change(b":100644 100644 " + b"1" * 40 + b" " + b"2" * 40 + b" R100\0a\0b\0")
    with pytest.raises(ValueError):
        read_change(b":100644 100644 " + b"1" * 40 + b" " + b"2" * 40 + b" M\0")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=tree_pairs())
async def test_random_tree_pairs_change_like_a_full_checkout(
    tmp_path: Path, pair: tuple[dict[str, Leaf], dict[str, Leaf]]
) -> None:
    """For random pairs of small trees the changed tree equals a full checkout, the twin untouched."""
    base = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(dir=tmp_path)))
    a = await applied(base, *pair)
    assert await anyio.to_thread.run_sync(contents, a.tree) == await a.full()
    assert await anyio.to_thread.run_sync(snapshot, base / "twin") == a.twin_before
