"""The end-to-end rig: a volume, a real app server, the real coordinator daemon and the load generator
(the e2e tests get one from the ``rig`` fixture of tests/e2e/conftest.py)."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.daemon import run_argv
from tests.e2e.load import Load
from tests.e2e.servers import BIN, Process, free_port, pin_env, wait_http
from tests.helpers import Daemon, GitRepo, deployed, read_status, wait_until, write_marker


def coordinator_bin() -> str:
    """The venv's ``coordinator`` console script."""
    return str(BIN / "coordinator")


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
    #: worker processes of the app server: a deploy has converged only once this many distinct
    #: processes answered with the new version (see :meth:`deploy`)
    workers: int = 1

    def __post_init__(self) -> None:
        self.root = self.tmp / "volume"
        self.root.mkdir()

    # ------------------------------------------------------------------ parts

    def deploy_once(self, tag: str, *extra: str) -> None:
        """`coordinator run --once` for ``tag``: a release exists before the app server starts."""
        write_marker(self.root, tag)
        out = subprocess.run(
            run_argv(self.root, self.repo.path, "--once", "--log-format", "json", *extra),
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
            if load.first_response_of(tag, t0) is None or not deployed(self.root, tag):
                return False
            if done is not None and not done():
                return False
            # Every worker answers with the new version, not only the first one up: under load a
            # reload's second worker can still be starting when the first has served for 0.5 s, and
            # a uWSGI worker that gets the next graceful reload's SIGHUP before it installed its
            # handler loses it (the master then waits --worker-reload-mercy, 60 s, for it).
            if len({r.pid for r in load.snapshot() if r.app == tag and r.finished >= t0}) < self.workers:
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
