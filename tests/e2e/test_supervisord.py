"""The single-container topology for real, with the very configuration files the image ships:
supervisord (docker/supervisord.conf) runs uWSGI (docker/uwsgi.ini, --touch-reload) and
`coordinator run` as supervised programs, configured by environment only; deploys go through under
load, and a coordinator killed with SIGKILL in the middle of a deploy is restarted by supervisord and
finishes it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.load import assert_no_failure
from tests.e2e.rig import Rig
from tests.e2e.servers import BIN, SUPERVISORD_CONF, Process, get, kill_group, supervisord_env, wait_http
from tests.helpers import read_status, wait_until, write_marker

pytestmark = pytest.mark.e2e


@dataclass
class Supervisor:
    conf: Path
    process: Process
    env: dict[str, str]
    seen_pids: set[int] = field(default_factory=set)

    def pid(self, program: str) -> int:
        """The pid of a RUNNING program (0 if it is not running)."""
        out = subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.conf), "pid", program],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={**os.environ, **self.env},  # the configuration expands %(ENV_SUPERVISOR_RUN_DIR)s
        )
        text = out.stdout.strip()
        pid = int(text) if text.isdigit() else 0
        if pid:
            self.seen_pids.add(pid)
        return pid

    def stop(self) -> None:
        self.process.stop(timeout=40)  # supervisord stops its programs (stopasgroup) on SIGTERM
        for pid in self.seen_pids:  # in case supervisord itself had to be killed
            kill_group(pid)


@pytest.fixture
def supervised(rig: Rig) -> Iterator[Supervisor]:
    """supervisord running uWSGI and coordinator (with a 1 s build, so that a deploy has a window),
    from docker/supervisord.conf as it is, configured by environment."""
    rig.deploy_once("v1")  # the release uWSGI starts on
    env = supervisord_env(rig.tmp, rig.port, rig.root, rig.repo.path, build_command="sleep 1")
    conf = SUPERVISORD_CONF
    proc = Process([str(BIN / "supervisord"), "-c", str(conf)], rig.tmp / "supervisord.out", env=env, cwd=rig.tmp)
    sup = Supervisor(conf, proc.start(), env)
    try:
        wait_http(rig.port, "app=v1 late=v1", timeout=60, server=proc)
        wait_until(lambda: sup.pid("coordinator") and (read_status(rig.root) or {}).get("state") == "idle", 30)
        sup.pid("uwsgi")
        yield sup
    finally:
        sup.stop()


def _tracked(rig: Rig, tag: str) -> dict[str, bytes]:
    names = rig.repo.git("ls-tree", "-r", "--name-only", tag).splitlines()
    return {
        n: subprocess.run(["git", "show", f"{tag}:{n}"], cwd=rig.repo.path, capture_output=True, check=True).stdout
        for n in names
    }


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_deploy_through_supervisord(rig: Rig, supervised: Supervisor) -> None:
    """A deploy under supervisord: v2 served, 0 failed and 0 mixed requests."""
    load = rig.start_load()
    rig.deploy("v2")
    rig.deploy("v3")
    load.stop()
    print(rig.summary("supervisord uwsgi-touch"))
    assert_no_failure(load, graceful_resets=True)  # docker/uwsgi.ini reloads by touch
    assert load.mixed == []
    assert load.requests > 100 and {"v1", "v2", "v3"} <= set(load.versions())
    assert get(rig.port)[1].startswith("app=v3 late=v3 ")


def test_coordinator_killed_mid_deploy_is_restarted_and_finishes(rig: Rig, supervised: Supervisor) -> None:
    """kill -9 of coordinator during the build: supervisord restarts it, the deploy completes."""
    load = rig.start_load()
    first = supervised.pid("coordinator")
    t0 = time.monotonic()
    write_marker(rig.root, "v2")
    releases = rig.root / "releases"
    wait_until(lambda: any(p.name.startswith(".v2-") for p in releases.iterdir()), timeout=20)  # building
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: supervised.pid("coordinator") not in (0, first), timeout=30)
    rig.deploy("v2", timeout=60)  # the marker is already there: this waits for it to be served
    load.stop()
    served_at = load.first_response_of("v2", t0)
    assert served_at is not None
    print(rig.summary("supervisord kill -9 mid-deploy"), f"marker->v2 across the restart {served_at - t0:.1f} s")
    assert supervised.pid("coordinator") != first
    assert '"leftovers_removed"' in (rig.tmp / "coordinator.log").read_text()  # the kill left a partial build
    assert get(rig.port)[1].startswith("app=v2 late=v2 ")
    current = (rig.root / "current").resolve()
    assert _tree(current) == _tracked(rig, "v2")
    assert [p.name for p in releases.iterdir() if p.name.startswith(".")] == []
    assert_no_failure(load, graceful_resets=True)  # docker/uwsgi.ini reloads by touch
    assert load.mixed == []
    assert load.requests > 100
