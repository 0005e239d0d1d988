"""The canary in a deploy (--canary-command), in-process against real git repositories and a real
volume: a release whose canary fails is refused before the swap; one whose canary passes deploys."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from coordinator.canaryproc import CANARY_ENV
from coordinator.deployer import Deployer
from coordinator.report import Attempt
from coordinator.state import load_state
from coordinator.statefile import CanaryRecord
from tests.helpers import CANARY_SERVER, GitRepo, live_pids_with_env, read_status, started_deployer, write_marker

pytestmark = pytest.mark.anyio


class CanaryServer:
    """The canary command of these tests, and the starts it logged."""

    def __init__(self, tmp: Path) -> None:
        self.script = tmp / "canary_server.py"
        self.script.write_text(CANARY_SERVER)
        self.log = tmp / "canary_starts.jsonl"
        self.mark = uuid.uuid4().hex
        self.results: list[str] = []  # what Deployer.on_canary was told

    @property
    def command(self) -> str:
        return f"{shlex.quote(sys.executable)} {self.script} $PORT {self.log}"

    def starts(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def running(self) -> list[int]:
        """Live processes started by a canary of this test."""
        return live_pids_with_env(f"TEST_MARK={self.mark}".encode())


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[CanaryServer]:
    c = CanaryServer(tmp_path)
    yield c
    assert c.running() == [], "a canary was left running"


async def started(root: Path, repo: GitRepo, canary: CanaryServer, **kw: object) -> Deployer:
    d = await started_deployer(
        root,
        repo,
        canary_command=canary.command,
        canary_url="/health",
        canary_timeout=kw.pop("canary_timeout", 10.0),
        extra_env={"TEST_MARK": canary.mark},
        **kw,
    )
    d.on_canary = canary.results.append
    return d


async def deploy(d: Deployer, root: Path, marker: str) -> Attempt:
    write_marker(root, marker)
    attempt = await d.reconcile()
    assert attempt is not None
    return attempt


async def commit(repo: GitRepo, files: dict[str, str | None], tag: str) -> None:
    await anyio.to_thread.run_sync(lambda: repo.commit(files, tag=tag))


async def test_a_release_whose_canary_passes_is_deployed(root: Path, repo: GitRepo, canary: CanaryServer) -> None:
    """The canary ran in the new release before the swap, passed; swap and reload as without one."""
    d = await started(root, repo, canary)
    old = await deploy(d, root, "v1")
    new = await deploy(d, root, "v2")
    assert new.result == "success"
    assert list(new.phases) == ["fetch", "prepare", "publish", "canary", "swap", "reload", "prune"]
    assert os.readlink(root / "current") == f"releases/{new.release}"
    assert [s["tag"] for s in canary.starts()] == ["v1", "v2"]
    assert canary.starts()[-1]["cwd"] == str(root / "releases" / str(new.release))
    assert old.release != new.release and canary.results == ["passed", "passed"]
    assert not (root / ".coordinator" / "canary.json").exists()


@pytest.mark.parametrize(("broken", "reason"), [("BROKEN", "exited with code 1"), ("SICK", "HTTP 500")])
async def test_a_release_whose_canary_fails_is_refused_before_the_swap(
    root: Path, repo: GitRepo, canary: CanaryServer, broken: str, reason: str
) -> None:
    """Failed canary: kind canary with its output, current untouched, no reload, the release discarded."""
    d = await started(root, repo, canary, canary_timeout=2.0)
    old = await deploy(d, root, "v1")
    reload_mtime = (root / "reload.touch").stat().st_mtime
    await commit(repo, {broken: "yes\n"}, "bad")
    attempt = await deploy(d, root, "bad")
    assert attempt.result == "failed" and attempt.error is not None
    assert attempt.error["kind"] == "canary" and reason in attempt.error["message"]
    if broken == "BROKEN":
        assert "RuntimeError: this release cannot be imported" in attempt.error.get("output", "")
    assert "canary" in attempt.phases and "swap" not in attempt.phases
    assert os.readlink(root / "current") == f"releases/{old.release}"
    assert (root / "reload.touch").stat().st_mtime == reload_mtime
    assert load_state(root / ".coordinator" / "state.json").reloaded == old.release
    assert not (root / "releases" / str(attempt.release)).exists()  # discarded
    st = read_status(root)
    assert st is not None and st["state"] == "failed" and st["error"]["kind"] == "canary"
    assert "canary" in st["last_attempt"]["phases_ms"]
    assert canary.results == ["passed", "failed"]


async def test_a_refused_marker_is_not_retried_until_it_changes(
    root: Path, repo: GitRepo, canary: CanaryServer
) -> None:
    """The same marker waits (no second canary); a new marker deploys a good tag."""
    d = await started(root, repo, canary, canary_timeout=2.0)
    await deploy(d, root, "v1")
    await commit(repo, {"BROKEN": "yes\n"}, "bad")
    await deploy(d, root, "bad")
    assert await d.reconcile() is None and await d.reconcile() is None
    assert [s["tag"] for s in canary.starts()] == ["v1", "bad"]
    good = await deploy(d, root, "v2")
    assert good.result == "success"
    assert [s["tag"] for s in canary.starts()] == ["v1", "bad", "v2"]


async def test_a_newer_marker_stops_the_canary(root: Path, repo: GitRepo, canary: CanaryServer) -> None:
    """A marker change while the canary runs cancels it: stopped, nothing swapped; the newer tag deploys."""
    d = await started(root, repo, canary, canary_timeout=30.0)
    v1 = await deploy(d, root, "v1")
    await commit(repo, {"SICK": "yes\n"}, "slow")  # answers 500: the canary would run 30 s
    write_marker(root, "slow")
    attempts: list[Attempt | None] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            attempts.append(await d.reconcile())

        tg.start_soon(run)
        while len(canary.starts()) < 2:
            await anyio.sleep(0.05)
        write_marker(root, "v2")
        await d.check_superseded()
    attempt = attempts[0]
    assert attempt is not None and attempt.result == "cancelled" and "canary" in attempt.phases
    assert os.readlink(root / "current") == f"releases/{v1.release}"
    assert canary.running() == []
    assert canary.results == ["passed", "cancelled"]
    assert (await d.reconcile()) is not None and os.readlink(root / "current").startswith("releases/v2-")


async def test_going_back_to_the_previous_release_runs_no_canary(
    root: Path, repo: GitRepo, canary: CanaryServer
) -> None:
    """A rollback to the release served before current swaps at once; an older release gets a canary."""
    d = await started(root, repo, canary)
    await deploy(d, root, "v1")
    await deploy(d, root, "v2")
    await deploy(d, root, "v3")
    back = await deploy(d, root, json.dumps({"tag": "v2", "id": "rollback"}))
    assert back.result == "success" and "canary" not in back.phases
    older = await deploy(d, root, "v1")
    assert older.result == "success" and "canary" in older.phases and "prepare" not in older.phases
    assert [s["tag"] for s in canary.starts()] == ["v1", "v2", "v3", "v1"]


async def test_start_up_kills_a_canary_a_crash_left_running(root: Path, repo: GitRepo, canary: CanaryServer) -> None:
    """A recorded canary whose processes hold its token is killed when the daemon starts again."""
    token = uuid.uuid4().hex
    env = {**os.environ, CANARY_ENV: token, "TEST_MARK": canary.mark}
    proc = await anyio.open_process([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    (root / ".coordinator").mkdir(parents=True, exist_ok=True)
    record = root / ".coordinator" / "canary.json"
    record.write_text(json.dumps(CanaryRecord(token, "v1-x", "2025-01-01T00:00:00Z", proc.pid).to_json()))
    try:
        await started(root, repo, canary)
        assert await proc.wait() == -signal.SIGKILL
        assert not record.exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
