"""Day two with a real Django project (tests/e2e/django_project.py) served by real uWSGI
(docker/uwsgi.ini) and deployed by the real daemon with every day-two option at once:

* ``--shared-file .env`` (the settings: secret key, SQLite path) and ``--shared-dir media``;
* ``--build-command`` running ``collectstatic`` (it imports the settings, so it reads the shared ``.env``);
* ``--pre-swap-command`` running ``migrate`` against SQLite in ``ROOT/shared/``;
* ``--notify-command`` and ``--webhook-url`` (a local HTTP server) after every attempt;
* ``--health-url`` with automatic rollback;
* ``coordinator check`` before the first deploy and with a broken prerequisite;
* ``coordinator pause`` holding a request until ``resume``.

The Django guide (docs/how-to/django.md) describes this set-up; each of its commands is run here.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.django_project import make_django_repo
from tests.e2e.servers import BIN, UWSGI_INI, Process, free_port, get, uwsgi_ini_env, wait_http
from tests.helpers import Daemon, GitRepo, read_status, wait_until

pytestmark = pytest.mark.e2e

APP = "mysite.wsgi:application"


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Site:
    tmp: Path
    repo: GitRepo
    root: Path
    port: int
    server: Process
    daemon: Daemon
    options: list[str]
    webhook: list[dict[str, Any]] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "coordinator"), *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def deploy_wait(self, tag: str) -> subprocess.CompletedProcess[str]:
        return self.cli("deploy", tag, "--root", str(self.root), "--wait", "--timeout", "120")

    def current_tag(self) -> str | None:
        return ((read_status(self.root) or {}).get("current") or {}).get("tag")

    def page(self) -> str:
        status, body = get(self.port)
        assert status == 200, body
        return body

    def notified(self) -> list[str]:
        path = self.tmp / "notify.log"
        return path.read_text().splitlines() if path.exists() else []

    def migrations(self) -> list[str]:
        with sqlite3.connect(self.root / "shared" / "db.sqlite3") as db:
            rows = db.execute("SELECT name FROM django_migrations WHERE app = 'notes' ORDER BY name").fetchall()
        return [r[0] for r in rows]

    def describe(self) -> str:
        return (
            f"status={read_status(self.root)}\n--- uwsgi ---\n{self.server.log()[-3000:]}\n"
            f"--- coordinator ---\n{self.daemon.log()[-4000:]}"
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """The project's repository, a volume with its shared .env, uWSGI up, a webhook receiver; the
    daemon made with every day-two option but not started."""
    repo = make_django_repo(tmp_path / "mysite-repo")
    root = tmp_path / "volume"
    (root / "shared").mkdir(parents=True)
    (root / "shared" / ".env").write_text(f"SECRET_KEY=day-two-test-key\nDB_PATH={root / 'shared' / 'db.sqlite3'}\n")
    received: list[dict[str, Any]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    hook_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=hook_server.serve_forever, daemon=True).start()
    port = free_port()
    python = BIN / "python"
    options = [
        "--tag-pattern",
        "v*",
        "--shared-file",
        ".env",
        "--shared-dir",
        "media",
        "--build-command",
        f"{python} manage.py collectstatic --noinput",
        "--pre-swap-command",
        f"{python} manage.py migrate --noinput",
        "--notify-command",
        f'echo "$TAG $RESULT" >> {tmp_path / "notify.log"}',
        "--webhook-url",
        f"http://127.0.0.1:{hook_server.server_address[1]}/deploys",
        "--health-url",
        f"http://127.0.0.1:{port}/health",
        "--health-timeout",
        "20",
        "--resync-interval",
        "1",
    ]
    server = Process(
        [str(BIN / "uwsgi"), "--ini", str(UWSGI_INI)], tmp_path / "uwsgi.log", env=uwsgi_ini_env(port, root, APP)
    )
    daemon = Daemon(root, repo.path, *options)
    s = Site(tmp_path, repo, root, port, server, daemon, options, received)
    try:
        server.start()
        yield s
    finally:
        if daemon.proc is not None:
            daemon.__exit__()
        server.stop()
        hook_server.shutdown()
        hook_server.server_close()


def test_django_day_two(site: Site) -> None:
    """Shared .env and media, collectstatic, migrate before the swap, a failed migration, a rolled back
    release, a rollback, notifications, the pre-flight check and a pause, on one real Django site."""
    s = site
    run_opts = ["--root", str(s.root), "--repo", str(s.repo.path), *s.options]

    # the pre-flight check passes on this set-up (uWSGI answers /health with 500 before any release: the
    # health line may fail, so only the other lines are required here)
    checked = s.cli("check", *run_opts, "--json")
    results = {r["name"]: r for r in json.loads(checked.stdout)}
    failing = [n for n, r in results.items() if not r["ok"] and "health" not in n]
    assert failing == [], checked.stdout + checked.stderr

    s.daemon.start()

    # v1: .env and media linked, static files collected with the shared settings, migrated, served
    out = s.deploy_wait("v1")
    assert out.returncode == 0, out.stdout + out.stderr + s.describe()
    assert wait_http(s.port, "app v1", timeout=10, server=s.server)
    release = (s.root / "current").resolve()
    assert (release / ".env").is_symlink() and not Path(str((release / ".env").readlink())).is_absolute()
    assert (release / ".env").resolve() == s.root / "shared" / ".env"
    assert (release / "media").resolve() == s.root / "shared" / "media"
    assert (release / "collected" / "admin").is_dir()  # collectstatic ran, with the shared .env
    assert s.migrations() == ["0001_initial"]
    (s.root / "current" / "media" / "upload.txt").write_text("a user's upload")

    # v2: migration 0002 applied before the swap; the upload is still there
    out = s.deploy_wait("v2")
    assert out.returncode == 0, out.stdout + out.stderr + s.describe()
    assert "app v2" in s.page()
    assert s.migrations() == ["0001_initial", "0002_note_done"]
    assert (s.root / "current" / "media" / "upload.txt").read_text() == "a user's upload"

    # v3-badmigration: migrate fails, the attempt fails before the swap; v2 keeps serving
    out = s.deploy_wait("v3-badmigration")
    assert out.returncode == 1, out.stdout + out.stderr + s.describe()
    st = read_status(s.root) or {}
    assert (st.get("error") or {}).get("kind") == "pre_swap", st
    assert "this migration always fails" in json.dumps(st.get("error"))
    assert s.current_tag() == "v2" and "app v2" in s.page()
    assert s.migrations() == ["0001_initial", "0002_note_done"]

    # v4-broken: migrates fine, but its /health answers 500: rolled back to v2
    out = s.deploy_wait("v4-broken")
    assert out.returncode == 1, out.stdout + out.stderr + s.describe()
    assert (read_status(s.root) or {}).get("state") == "rolled_back"
    assert s.current_tag() == "v2" and "app v2" in s.page()

    # rollback: back to v1 (a release on disk: migrate runs for it too), the upload still there
    out = s.cli("rollback", "--root", str(s.root), "--wait", "--timeout", "120")
    assert out.returncode == 0, out.stdout + out.stderr + s.describe()
    assert s.current_tag() == "v1" and "app v1" in s.page()
    assert (s.root / "current" / "media" / "upload.txt").read_text() == "a user's upload"

    # pause: a request is kept pending (deploy --wait says so, exit 6) until resume
    out = s.cli("pause", "--root", str(s.root), "--reason", "incident 42")
    assert out.returncode == 0, out.stdout + out.stderr
    out = s.cli("deploy", "v5", "--root", str(s.root), "--wait", "--timeout", "60")
    assert out.returncode == 6, out.stdout + out.stderr
    assert "incident 42" in out.stdout + out.stderr
    wait_until(lambda: (read_status(s.root) or {}).get("state") == "paused", timeout=20)
    assert s.current_tag() == "v1"
    out = s.cli("resume", "--root", str(s.root))
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(lambda: s.current_tag() == "v5" and (read_status(s.root) or {}).get("state") == "idle", timeout=60)
    assert wait_http(s.port, "app v5", timeout=10, server=s.server)

    # every attempt notified, in order, by the command and the webhook
    expected = [
        "v1 success",
        "v2 success",
        "v3-badmigration failed",
        "v4-broken rolled_back",
        "v1 success",
        "v5 success",
    ]
    wait_until(lambda: len(s.notified()) >= len(expected) and len(s.webhook) >= len(expected), timeout=20)
    assert s.notified() == expected
    assert [f"{w['tag']} {w['result']}" for w in s.webhook] == expected
    assert all(w.get("release") for w in s.webhook if w["result"] == "success")

    # the check names a missing shared file, and how to fix it
    (s.root / "shared" / ".env").rename(s.root / "shared" / "env.bak")
    checked = s.cli("check", *run_opts)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert ".env" in checked.stdout
