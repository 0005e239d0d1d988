"""Staged releases (coordinator.stager) with real repositories: ``ROOT/stage.request`` builds and
publishes a release without swapping it in; a later deploy of it only swaps and reloads."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from coordinator import commands
from coordinator.layout import Layout
from coordinator.pause import new_pause, write_pause
from coordinator.state import load_state, read_journal
from tests.helpers import GitRepo, current_release, read_status, started_deployer, wait_for_workspace, write_marker

pytestmark = pytest.mark.anyio


def stage(root: Path, tag: str, request_id: str = "s1", sha: str | None = None) -> None:
    body = {"tag": tag, "id": request_id, **({"sha": sha} if sha else {})}
    write_marker(root, json.dumps(body), name="stage.request")


def releases(root: Path) -> set[str]:
    """The published release directories."""
    return {n.name for n in (root / "releases").iterdir() if n.is_dir() and not n.name.startswith(".")}


async def test_a_stage_builds_and_publishes_without_swapping(root: Path, repo: GitRepo) -> None:
    """A stage request fetches, prepares and publishes its release; current and the reload stay as they were."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    before = current_release(root)
    reloads = (root / "reload.touch").stat().st_mtime_ns
    stage(root, "v2")
    assert await d.reconcile() is None
    attempt = d.stager.last_attempt
    assert attempt is not None and attempt.result == "success"
    assert set(attempt.phases) == {"fetch", "prepare", "publish", "prune"}
    assert current_release(root) == before
    assert (root / "reload.touch").stat().st_mtime_ns == reloads
    assert attempt.release in releases(root) and (root / "releases" / str(attempt.release) / "app.py").exists()


async def test_the_status_file_shows_the_staged_release_and_the_stage_request(root: Path, repo: GitRepo) -> None:
    """The status shows `staged` {tag, release, sha, request_id, at} and `stage` (desired, state staged)."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    stage(root, "v2", "stage-42")
    await d.reconcile()  # deploys v1
    await d.reconcile()  # stages v2
    st = read_status(root) or {}
    assert st["state"] == "idle" and st["current"]["tag"] == "v1"
    staged = st["staged"]
    assert (staged["tag"], staged["sha"], staged["request_id"]) == ("v2", repo.tag_sha("v2"), "stage-42")
    assert staged["release"].startswith("v2-") and staged["at"]
    assert st["stage"]["desired"] == {"tag": "v2", "sha": None, "id": "stage-42"}
    assert st["stage"]["state"] == "staged" and st["stage"]["error"] is None
    assert st["stage"]["attempt"]["action"] == "stage" and st["stage"]["attempt"]["result"] == "success"
    assert st["last_attempt"]["tag"] == "v1"  # the deploy's, not the stage's


async def test_a_deploy_of_the_staged_tag_only_swaps_and_reloads(root: Path, repo: GitRepo) -> None:
    """After a stage, `deploy` of that tag does no fetch, prepare or build: swap, reload, prune only."""
    d = await started_deployer(root, repo, build_command="true")
    write_marker(root, "v1")
    await d.reconcile()
    stage(root, "v2")
    await d.reconcile()
    write_marker(root, "v2")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success"
    assert set(attempt.phases) == {"swap", "reload", "prune"}
    assert str(current_release(root)).startswith("releases/v2-")


async def test_a_deployed_staged_release_is_staged_no_more(root: Path, repo: GitRepo) -> None:
    """Once the staged release is current, the status and state name no staged release."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    stage(root, "v2")
    await d.reconcile()
    write_marker(root, "v2")
    await d.reconcile()
    assert (read_status(root) or {})["staged"] is None
    assert load_state(Layout.for_root(root).state_file).staged is None


async def test_a_tag_moved_after_staging_is_rebuilt_by_the_deploy(root: Path, repo: GitRepo) -> None:
    """A deploy asking for the staged tag at its new commit (the tag moved) builds that commit."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    stage(root, "v2")
    await d.reconcile()
    staged = load_state(Layout.for_root(root).state_file).staged
    moved = repo.commit({"app.py": "VERSION = 'v2 moved'\n"}, tag="v2")
    write_marker(root, json.dumps({"tag": "v2", "sha": moved}))
    attempt = await d.reconcile()
    assert attempt is not None and attempt.result == "success"
    assert {"fetch", "prepare", "publish"} <= set(attempt.phases)
    assert staged is not None and attempt.release != staged.release
    assert (root / "current" / "app.py").read_text() == "VERSION = 'v2 moved'\n"


async def test_deploys_come_first(root: Path, repo: GitRepo) -> None:
    """With a new marker and a stage request, the reconcile deploys; the stage waits for the next one."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    stage(root, "v2")
    attempt = await d.reconcile()
    assert attempt is not None and attempt.tag == "v1" and d.stager.last_attempt is None
    await d.reconcile()
    assert d.stager.last_attempt is not None and d.stager.last_attempt.tag == "v2"


async def test_a_stage_works_while_deploys_are_paused(root: Path, repo: GitRepo) -> None:
    """A stage changes nothing served: it runs while deploys are paused, and the marker still waits."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    write_pause(Layout.for_root(root).pause_file, new_pause("freeze"))
    write_marker(root, "v3")
    stage(root, "v2")
    assert await d.reconcile() is None
    st = read_status(root) or {}
    assert st["state"] == "paused" and st["current"]["tag"] == "v1"
    assert st["stage"]["state"] == "staged" and st["staged"]["tag"] == "v2"


async def test_a_stage_of_the_current_release_builds_nothing(root: Path, repo: GitRepo) -> None:
    """A stage of the tag already current says so (state current), makes no attempt, stages nothing."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    stage(root, "v1")
    with capture_logs() as logs:
        await d.reconcile()
    st = read_status(root) or {}
    assert st["stage"]["state"] == "current" and st["staged"] is None
    assert d.stager.last_attempt is None
    assert any(e["event"] == "stage_not_needed" for e in logs)


async def test_a_failed_stage_is_not_retried_until_the_request_changes(root: Path, repo: GitRepo) -> None:
    """A build that fails fails the stage (status stage failed, with the error) once; the same request
    is not tried again, a new one is."""
    d = await started_deployer(root, repo, build_command='test "$TAG" != v2 || exit 3')
    write_marker(root, "v1")
    await d.reconcile()
    stage(root, "v2", "s1")
    await d.reconcile()
    first = d.stager.last_attempt
    assert first is not None and first.result == "failed" and first.error is not None
    st = read_status(root) or {}
    assert st["stage"]["state"] == "failed" and st["stage"]["error"]["kind"] == "build"
    assert st["state"] == "idle"  # the deploy is fine
    await d.reconcile()
    assert d.stager.last_attempt is first
    stage(root, "v2", "s2")
    await d.reconcile()
    assert d.stager.last_attempt is not first


async def test_a_stage_is_journaled_as_a_stage_and_history_shows_it(root: Path, repo: GitRepo) -> None:
    """The journal line of a stage attempt has action stage; history reads it as a stage, and an old
    line without action as a deploy."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    stage(root, "v2")
    await d.reconcile()
    await d.reconcile()
    lay = Layout.for_root(root)
    entries = read_journal(lay.journal, 10)
    assert [(e["action"], e["tag"], e["result"]) for e in entries] == [
        ("deploy", "v1", "success"),
        ("stage", "v2", "success"),
    ]
    with lay.journal.open("a") as f:
        f.write(json.dumps({"event": "attempt", "tag": "v0", "result": "success"}) + "\n")
    history = await commands.read_history(lay)
    assert [(h.action, h.tag) for h in history] == [("deploy", "v0"), ("stage", "v2"), ("deploy", "v1")]


async def test_releases_marks_the_staged_release(root: Path, repo: GitRepo) -> None:
    """`releases` marks the staged release, and only that one."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    stage(root, "v2")
    await d.reconcile()
    await d.reconcile()
    rows = await commands.list_releases(Layout.for_root(root))
    assert [(r.tag, r.current, r.staged) for r in rows] == [("v2", False, True), ("v1", True, False)]


async def test_retention_keeps_the_staged_release_until_another_is_staged(root: Path, repo: GitRepo) -> None:
    """keep=2: the staged release survives deploys of other tags; staged over, it is pruned as any other."""
    repo.commit({"app.py": "VERSION = 'v4'\n"}, tag="v4")
    d = await started_deployer(root, repo, keep=2)
    write_marker(root, "v1")
    await d.reconcile()
    stage(root, "v2", "s1")
    await d.reconcile()
    for tag in ("v3", "v4"):
        write_marker(root, tag)
        await d.reconcile()
    tags = {n.split("-")[0] for n in releases(root)}
    assert tags == {"v2", "v3", "v4"}  # v1 pruned, v2 (staged) kept
    stage(root, "v1", "s2")
    await d.reconcile()
    assert {n.split("-")[0] for n in releases(root)} == {"v1", "v3", "v4"}  # v2 ordinary now: pruned


async def test_a_marker_change_cancels_a_stage_in_flight_and_the_stage_resumes(root: Path, repo: GitRepo) -> None:
    """A new marker while a stage builds cancels it (journaled cancelled, no workspace left); the next
    reconcile deploys, the one after stages again."""
    d = await started_deployer(root, repo, build_command='test "$TAG" != v2 || test -e ../../go || sleep 30')
    write_marker(root, "v1")
    await d.reconcile()
    stage(root, "v2")
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.reconcile)
            await wait_for_workspace(root)
            write_marker(root, "v3")
            await d.check_superseded()
    cancelled = d.stager.last_attempt
    assert cancelled is not None and cancelled.result == "cancelled"
    assert not [n for n in (root / "releases").iterdir() if n.name.startswith(".")]
    assert (read_status(root) or {})["stage"]["state"] == "pending"
    (root / "go").touch()  # the stage's build ends at once from now on
    attempt = await d.reconcile()
    assert attempt is not None and attempt.tag == "v3" and attempt.result == "success"
    await d.reconcile()
    resumed = d.stager.last_attempt
    assert resumed is not None and resumed is not cancelled and resumed.result == "success"
    journal = read_journal(Layout.for_root(root).journal, 10)
    assert [(e["action"], e["tag"], e["result"]) for e in journal][1:] == [
        ("stage", "v2", "cancelled"),
        ("deploy", "v3", "success"),
        ("stage", "v2", "success"),
    ]


async def test_a_refused_stage_request_is_invalid_and_logged_once(root: Path, repo: GitRepo) -> None:
    """A stage request with a bad tag shows stage invalid with the reason, logged once; the deploy is untouched."""
    d = await started_deployer(root, repo)
    write_marker(root, "v1")
    await d.reconcile()
    write_marker(root, "bad tag;", name="stage.request")
    with capture_logs() as logs:
        await d.reconcile()
        await d.reconcile()
    st = read_status(root) or {}
    assert st["state"] == "idle" and st["stage"]["state"] == "invalid" and st["stage"]["desired"] is None
    assert st["stage"]["error"]["kind"] == "marker"
    assert [e["event"] for e in logs].count("stage_request_invalid") == 1


async def test_the_staged_release_is_never_recycled(root: Path, repo: GitRepo) -> None:
    """A staged release is never the retired release a new one is recycled from, even the oldest."""
    repo.commit({"app.py": "VERSION = 'v4'\n"}, tag="v4")
    d = await started_deployer(root, repo, keep=3)
    stage(root, "v1", "s1")
    await d.reconcile()
    [staged] = releases(root)
    for tag in ("v2", "v3"):
        write_marker(root, tag)
        await d.reconcile()
    write_marker(root, "v4")
    with capture_logs() as logs:
        await d.reconcile()
    [stats] = [e for e in logs if e["event"] == "prepare_stats"]
    assert stats.get("recycled") != staged
    assert staged in releases(root)
    assert load_state(Layout.for_root(root).state_file).staged is not None
