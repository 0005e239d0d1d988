"""Crash points: the daemon killed (as by kill -9) at every named point of a deploy, then restarted.

After each crash and restart: `current` always names a complete release, the daemon converges to
the marker, the reload file is touched exactly once for the change, and no temporary leftovers
remain. Touches are counted with inotify (IN_ATTRIB on the reload file), not inferred from logs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.failpoints import POINTS
from tests.helpers import GitRepo, TouchCounter, current_release, leftovers, run_once


def assert_complete(root: Path, repo: GitRepo) -> str:
    """`current` names a published release holding exactly its tag's tracked files; returns its tag."""
    target = current_release(root)
    assert target is not None and target.startswith("releases/") and "/." not in target
    rel = root / target
    version = (rel / "VERSION").read_text().strip()
    tracked = set(repo.git("ls-tree", "-r", "--name-only", version).splitlines())
    assert {str(p.relative_to(rel)) for p in rel.rglob("*") if p.is_file()} == tracked
    return version


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_point_then_restart_converges_with_one_reload(point: str, root: Path, repo: GitRepo) -> None:
    """Killed at this point of a v1 -> v2 deploy, a restart converges to v2 with exactly one touch."""
    (root / "deploy.request").write_text("v1")
    assert run_once(root, repo).returncode == 0
    (root / "deploy.request").write_text("v2")
    counter = TouchCounter(root / "reload.touch")
    try:
        crashed = run_once(root, repo, failpoints=point)
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
    out = run_once(root, repo, failpoints="before-status@2")
    assert out.returncode == -9
