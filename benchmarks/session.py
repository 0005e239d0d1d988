"""One running daemon with an observer and a deploy driver, and helpers reading the status file."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.deploys import Deployer, MarkerWriter
from benchmarks.harness import Daemon, DaemonError
from benchmarks.observer import Observer

__all__ = ["Session", "current_tag", "read_status", "wait_status"]


def read_status(root: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads((root / "deploy.status.json").read_bytes())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def wait_status(root: Path, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = read_status(root)
        if st is not None and pred(st):
            return st
        time.sleep(0.01)
    raise DaemonError(f"status file did not reach the expected state within {timeout:g} s: {read_status(root)}")


def current_tag(root: Path, releases: dict[str, str]) -> str:
    link = os.readlink(root / "current")
    for tag, name in releases.items():
        if link == f"releases/{name}":
            return tag
    raise DaemonError(f"current points to {link!r}, not to a known release")


class Session:
    """One running daemon with an observer and a deploy driver; closes both on exit.

    ``extra_args`` are passed to ``coordinator run`` (e.g. ``--marker``); ``writer`` replaces the
    default marker writer (rename of ``ROOT/deploy.request``).
    """

    def __init__(
        self,
        root: Path,
        repo: Path | str,
        log_path: Path,
        releases: dict[str, str],
        *,
        step_ms: int | None,
        log_level: str,
        seed: int,
        observer_sleep_s: float,
        extra_args: Sequence[str] = (),
        writer: MarkerWriter | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.root = root
        self.daemon = Daemon(root, repo, log_path, step_ms=step_ms, log_level=log_level, extra_args=extra_args)
        self.releases = releases
        self.seed = seed
        self.observer_sleep_s = observer_sleep_s
        self.writer = writer
        self.start_timeout_s = start_timeout_s
        self.observer: Observer | None = None
        self.driver: Deployer | None = None

    def __enter__(self) -> Deployer:
        self.daemon.start()
        pid = self.daemon.pid
        # the start-up reconcile publishes a status carrying the new pid
        wait_status(
            self.root,
            lambda st: st.get("pid") == pid and st.get("state") in ("idle", "waiting"),
            self.start_timeout_s,
        )
        self.observer = Observer(self.root, sleep_s=self.observer_sleep_s)
        self.driver = Deployer(self.root, self.daemon, self.observer, self.releases, self.seed, writer=self.writer)
        return self.driver

    def __exit__(self, *exc: object) -> None:
        try:
            if self.observer is not None:
                self.observer.close()
        finally:
            rc = self.daemon.stop()
            if rc not in (0, None) and exc[0] is None:
                raise DaemonError(f"daemon exited with {rc}; see {self.daemon.log_path}")
