"""Fixtures for the end-to-end tests: the test app's repository, a volume, and a rig that runs a real
app server, the real coordinator daemon and the load generator, and always stops all of them."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.app import make_app_repo
from tests.e2e.load import Load
from tests.e2e.servers import BIN, Process, free_port, pin_env, wait_http
from tests.helpers import Daemon, GitRepo, read_status, wait_until, write_marker


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.path).replace("\\", "/") and not item.get_closest_marker("e2e"):
            raise pytest.UsageError(f"{item.nodeid}: end-to-end tests must be marked @pytest.mark.e2e")


@pytest.fixture
def app_repo(tmp_path: Path) -> GitRepo:
    """The test app: tags v1, v2, v3, broken-import, broken-health."""
    return make_app_repo(tmp_path / "app-repo", 3)


def served(root: Path, tag: str) -> bool:
    """The status says ``tag`` is current, reloaded and the daemon idle."""
    st = read_status(root) or {}
    cur = st.get("current") or {}
    return st.get("state") == "idle" and cur.get("tag") == tag and st.get("reloaded") == cur.get("release")


COORDINATOR_ONCE = (sys.executable, "-m", "coordinator", "run", "--once")


@dataclass
class Rig:
    """One volume, one app server, one coordinator daemon, one load generator."""

    tmp: Path
    repo: GitRepo
    port: int = field(default_factory=free_port)
    server: Process | None = None
    daemon: Daemon | None = None
    load: Load | None = None
    latencies: list[float] = field(default_factory=list)  # marker written -> first new-version response, s
    deploys: int = 0

    def __post_init__(self) -> None:
        self.root = self.tmp / "volume"
        self.root.mkdir()

    # ------------------------------------------------------------------ parts

    def deploy_once(self, tag: str, *extra: str) -> None:
        """`coordinator run --once` for ``tag``: a release exists before the app server starts."""
        write_marker(self.root, tag)
        out = subprocess.run(
            [
                *COORDINATOR_ONCE,
                "--root",
                str(self.root),
                "--repo",
                str(self.repo.path),
                "--log-format",
                "json",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr

    def start_server(
        self,
        argv: Sequence[str],
        expect: str,
        path: str = "/",
        pinned: bool = True,
        env: dict[str, str] | None = None,
    ) -> Process:
        full = {**(pin_env(self.root) if pinned else {}), **(env or {})}
        self.server = Process(argv, self.tmp / "server.log", env=full, cwd=self.tmp).start()
        wait_http(self.port, expect, timeout=60, path=path, server=self.server)
        return self.server

    def start_daemon(self, *extra: str) -> Daemon:
        self.daemon = Daemon(self.root, self.repo.path, *extra).start()
        return self.daemon

    def start_load(self, **kwargs: Any) -> Load:
        self.load = Load(self.port, **kwargs).start()
        return self.load

    # ------------------------------------------------------------------ deploying under load

    def deploy(self, tag: str, timeout: float = 30.0, done: Callable[[], bool] | None = None) -> float:
        """Write the marker, wait until ``tag`` is served everywhere (and ``done()``, the server's own
        signal that its reload finished, if given); the marker -> first new-version response time."""
        assert self.load is not None
        t0 = time.monotonic()
        write_marker(self.root, tag)
        load = self.load

        def converged() -> bool:
            if load.first_response_of(tag, t0) is None or not served(self.root, tag):
                return False
            if done is not None and not done():
                return False
            recent = load.recent(0.5)
            return len(recent) >= 5 and all(r.app == tag for r in recent)

        try:
            wait_until(converged, timeout=timeout, interval=0.05)
        except AssertionError as e:
            raise AssertionError(f"{tag} not served within {timeout} s: {self.describe()}") from e
        first = load.first_response_of(tag, t0)
        assert first is not None
        self.latencies.append(first - t0)
        self.deploys += 1
        return first - t0

    def describe(self) -> str:
        st = read_status(self.root)
        tail = self.server.log()[-2000:] if self.server else ""
        dlog = self.daemon.log()[-2000:] if self.daemon else ""
        return f"status={st}\n--- server log ---\n{tail}\n--- daemon log ---\n{dlog}"

    def summary(self, name: str) -> str:
        assert self.load is not None
        load = self.load
        p50 = statistics.median(self.latencies) * 1000 if self.latencies else float("nan")
        pids = {r.pid for r in load.snapshot()}
        return (
            f"[e2e] {name}: requests={load.requests} failed={len(load.failures)} mixed={len(load.mixed)} "
            f"deploys={self.deploys} versions={dict(load.versions())} worker_pids={len(pids)} "
            f"marker->new-version p50={p50:.0f} ms max={max(self.latencies, default=0) * 1000:.0f} ms "
            f"request p50={load.latency_ms(0.5):.1f} ms p99={load.latency_ms(0.99):.1f} ms"
        )

    def stop(self) -> None:
        if self.load is not None:
            self.load.stop()
        if self.daemon is not None and self.daemon.proc is not None:
            self.daemon.__exit__()
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def rig(tmp_path: Path, app_repo: GitRepo) -> Iterator[Rig]:
    """A rig whose load generator, daemon and server are stopped whatever the test does."""
    r = Rig(tmp_path, app_repo)
    try:
        yield r
    finally:
        r.stop()


def coordinator_bin() -> str:
    return str(BIN / "coordinator")
