"""The example of docker/ for real, without Docker: docker/example/make-repo.sh makes the example Django
app's repository (tags v1, v2, v3-broken), uWSGI serves it with docker/uwsgi.ini as it is (pointed at a
temporary volume and port through the environment, as the app container's environment does), and the
real coordinator daemon deploys it with a health check, configured as docker/compose.yaml configures
the sidecar: v1, then v2, then the broken tag, which is rolled back to v2.

As in the compose set-up, uWSGI starts before anything is deployed (answering 500, no app) and the first
deploy, which creates the reload file, makes it load the app."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.servers import BIN, DOCKER_DIR, UWSGI_INI, Process, free_port, get, uwsgi_ini_env, wait_http
from tests.helpers import Daemon, read_status, wait_until

pytestmark = pytest.mark.e2e

MAKE_REPO = DOCKER_DIR / "example" / "make-repo.sh"
APP = "exampleapp.wsgi:application"
#: long enough for uWSGI to reload Django on a loaded 2-core machine (6 s was not, with the suite
#: running beside other CPU-bound work); the broken tag waits this long before it is rolled back
HEALTH_TIMEOUT = "20"


@dataclass
class Example:
    tmp: Path
    repo: Path
    root: Path
    port: int
    server: Process
    daemon: Daemon

    def sha(self, tag: str) -> str:
        out = subprocess.run(
            ["git", "rev-parse", f"refs/tags/{tag}^{{commit}}"],
            cwd=self.repo,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    def deploy(self, tag: str) -> subprocess.Popen[str]:
        """`coordinator deploy TAG --wait`, as `docker compose exec coordinator coordinator deploy` runs it."""
        return subprocess.Popen(
            [str(BIN / "coordinator"), "deploy", tag, "--root", str(self.root), "--wait", "--timeout", "60"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def health(self) -> dict[str, object]:
        status, body = get(self.port, "/health")
        assert status == 200, body
        data = json.loads(body)
        assert isinstance(data, dict)
        return data

    def describe(self) -> str:
        return (
            f"status={read_status(self.root)}\n--- uwsgi ---\n{self.server.log()[-3000:]}\n"
            f"--- coordinator ---\n{self.daemon.log()[-3000:]}"
        )


def _finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.fixture
def example_repo(tmp_path: Path) -> Path:
    """The example app's repository, made by docker/example/make-repo.sh."""
    repo = tmp_path / "example-repo"
    made = subprocess.run(["sh", str(MAKE_REPO), str(repo)], capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    return repo


@pytest.fixture
def example(tmp_path: Path, example_repo: Path) -> Iterator[Example]:
    """uWSGI (docker/uwsgi.ini) up on an empty volume; the daemon made but not started."""
    repo = example_repo
    root = tmp_path / "volume"
    root.mkdir()
    port = free_port()
    uwsgi = [str(BIN / "uwsgi"), "--ini", str(UWSGI_INI)]
    server = Process(uwsgi, tmp_path / "uwsgi.log", env=uwsgi_ini_env(port, root, APP), cwd=tmp_path)
    health = f"http://127.0.0.1:{port}/health"
    daemon = Daemon(root, repo, "--tag-pattern", "v*", "--health-url", health, "--health-timeout", HEALTH_TIMEOUT)
    ex = Example(tmp_path, repo, root, port, server, daemon)
    try:
        server.start()
        yield ex
    finally:
        if daemon.proc is not None:
            daemon.__exit__()
        server.stop()


def test_make_repo_tags(example_repo: Path) -> None:
    """The set-up script's repository: v1, v2 and v3-broken, each showing its version; re-running the
    script leaves an existing repository alone."""
    tags = subprocess.run(["git", "tag"], cwd=example_repo, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(tags) == ["v1", "v2", "v3-broken"]
    for tag in tags:
        shown = subprocess.run(
            ["git", "show", f"{tag}:exampleapp/version.py"],
            cwd=example_repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f'VERSION = "{tag}"' in shown
    again = subprocess.run(["sh", str(MAKE_REPO), str(example_repo)], capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "already a git repository" in again.stderr


def test_deploy_v1_v2_then_broken_tag_rolls_back(example: Example) -> None:
    ex = example
    # uWSGI is up with no release yet: no app loaded, 500 (need-app = false keeps it up)
    wait_until(lambda: get(ex.port)[0] == 500 or not ex.server.alive(), timeout=30)
    assert ex.server.alive(), ex.server.log()
    ex.daemon.start()

    # v1: the first deploy creates reload.touch, uWSGI reloads and loads the app from the release
    t0 = time.monotonic()
    code, out = _finish(ex.deploy("v1"))
    v1_s = time.monotonic() - t0
    assert code == 0, out + ex.describe()
    page = wait_http(ex.port, "Example app v1", timeout=5, server=ex.server)
    assert ex.sha("v1") in page
    health = ex.health()
    assert health["sha"] == ex.sha("v1") and health["tag"] == "v1" and health["version"] == "v1"

    # v2: marker written -> first response of v2 (measured by polling the page while `deploy --wait` runs)
    t0 = time.monotonic()
    proc = ex.deploy("v2")
    wait_http(ex.port, "Example app v2", timeout=30, server=ex.server)
    v2_served_s = time.monotonic() - t0
    code, out = _finish(proc)
    v2_wait_s = time.monotonic() - t0
    assert code == 0, out + ex.describe()
    st = read_status(ex.root) or {}
    assert (st.get("current") or {}).get("tag") == "v2" and st.get("reloaded") == st["current"]["release"], st
    assert "verify" in (st.get("last_attempt") or {}).get("phases_ms", {})  # the health check passed
    assert ex.health()["sha"] == ex.sha("v2")

    # v3-broken cannot be imported: the health check fails, coordinator swaps back to v2 and reloads
    t0 = time.monotonic()
    code, out = _finish(ex.deploy("v3-broken"))
    broken_s = time.monotonic() - t0
    assert code == 1, out + ex.describe()
    assert "rolled back" in out
    st = read_status(ex.root) or {}
    assert st.get("state") == "rolled_back", st
    assert (st.get("current") or {}).get("tag") == "v2"
    assert (st.get("error") or {}).get("kind") == "rolled_back"
    assert "ModuleNotFoundError" in ex.server.log()  # the broken release really failed to import
    status, page = get(ex.port)
    assert status == 200 and "Example app v2" in page, page
    assert ex.health()["sha"] == ex.sha("v2")
    assert (ex.root / "current").resolve().name.startswith("v2-")
    assert not [p for p in (ex.root / "releases").iterdir() if p.name.startswith("v3-broken")]
    print(
        f"[e2e] django example: deploy v1 --wait {v1_s:.2f} s; marker -> v2 served {v2_served_s:.2f} s "
        f"(deploy --wait returned after {v2_wait_s:.2f} s); v3-broken rolled back, deploy --wait exited 1 "
        f"after {broken_s:.2f} s (health timeout {HEALTH_TIMEOUT} s)"
    )
