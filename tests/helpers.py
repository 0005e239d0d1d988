"""Test helpers: real git repositories and the daemon as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class GitRepo:
    """A real git repository in a temporary directory, with helpers to commit and tag."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        out = subprocess.run(
            ["git", *args],
            cwd=self.path,
            env={**os.environ, **GIT_ENV},
            check=True,
            capture_output=True,
        )
        return out.stdout.decode().strip()

    def commit(
        self,
        files: Mapping[str, str | bytes | None],
        tag: str | None = None,
        *,
        annotated: bool = False,
        message: str = "commit",
        executable: tuple[str, ...] = (),
        symlinks: Mapping[str, str] | None = None,
    ) -> str:
        """Write (or delete, with None) files, commit, optionally tag; return the commit sha."""
        for rel, content in files.items():
            p = self.path / rel
            if content is None:
                if p.exists() or p.is_symlink():
                    p.unlink()
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.is_symlink():
                p.unlink()
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        for rel in executable:
            (self.path / rel).chmod(0o755)
        for rel, target in (symlinks or {}).items():
            p = self.path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if p.is_symlink() or p.exists():
                p.unlink()
            p.symlink_to(target)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        sha = self.git("rev-parse", "HEAD")
        if tag:
            if annotated:
                self.git("tag", "-a", "-f", "-m", tag, tag)
            else:
                self.git("tag", "-f", tag)
        return sha

    def tag_sha(self, tag: str) -> str:
        return self.git("rev-parse", f"refs/tags/{tag}^{{commit}}")


def app_repo(path: Path, versions: int = 3) -> GitRepo:
    """A repository of a tiny WSGI app with tags v1..vN, each file naming its version."""
    repo = GitRepo(path)
    for i in range(1, versions + 1):
        repo.commit(
            {
                "app.py": f"VERSION = 'v{i}'\n",
                "pkg/__init__.py": "",
                "pkg/late.py": f"VERSION = 'v{i}'\n",
                "VERSION": f"v{i}\n",
            },
            tag=f"v{i}",
            message=f"version {i}",
        )
    return repo


def read_status(root: Path) -> dict[str, Any] | None:
    try:
        data = (root / "deploy.status.json").read_text()
        obj = json.loads(data)
    except (FileNotFoundError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def current_release(root: Path) -> str | None:
    try:
        return os.readlink(root / "current")
    except FileNotFoundError:
        return None


def wait_until(pred: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class Daemon:
    """`coordinator run` as a real subprocess."""

    def __init__(self, root: Path, repo: Path | str, *extra: str, env: Mapping[str, str] | None = None) -> None:
        self.root = root
        self.log_path = root.parent / f"daemon-{root.name}.log"
        self.args = [
            sys.executable,
            "-m",
            "coordinator",
            "run",
            "--root",
            str(root),
            "--repo",
            str(repo),
            "--log-format",
            "json",
            *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        if wait_ready:
            wait_until(lambda: '"started"' in self.log_path.read_text() or self.proc_exited(), 20)
            assert not self.proc_exited(), self.log()
        return self

    def proc_exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._log.close()
        return rc

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


def write_marker(root: Path, text: str | bytes, name: str = "deploy.request") -> None:
    """Write a marker atomically (temp + rename), as a careful operator would."""
    tmp = root / f".{name}.writing"
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, root / name)
