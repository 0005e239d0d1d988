"""Health-verified deploys on real servers under load: a release that cannot be imported, and one whose
health URL answers 500, are rolled back automatically; after the rollback no request fails and the
previous version is served again."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from tests.e2e.rig import Rig, coordinator_bin
from tests.e2e.servers import get, gunicorn_hup, uwsgi_fifo, uwsgi_touch
from tests.helpers import read_status, wait_until

pytestmark = pytest.mark.e2e

HEALTH_TIMEOUT = "6"


def _uwsgi_touch(rig: Rig) -> tuple[list[str], list[str], dict[str, str]]:
    return uwsgi_touch(rig.port, rig.root), [], {}


def _uwsgi_fifo(rig: Rig) -> tuple[list[str], list[str], dict[str, str]]:
    fifo = rig.tmp / "uwsgi.fifo"
    return uwsgi_fifo(rig.port, rig.root, fifo), ["--reload-fifo", str(fifo), "--reload-fifo-command", "r"], {}


def _gunicorn_hup_on_error_500(rig: Rig) -> tuple[list[str], list[str], dict[str, str]]:
    pidfile = rig.tmp / "gunicorn.pid"
    return (
        gunicorn_hup(rig.port, rig.root, pidfile),
        ["--reload-signal", "HUP", "--reload-pidfile", str(pidfile)],
        # without it gunicorn's master exits when the new workers fail to import ("Worker failed to boot")
        {"COORDINATOR_PIN_ON_ERROR": "500"},
    )


SERVERS: dict[str, Callable[[Rig], tuple[list[str], list[str], dict[str, str]]]] = {
    "uwsgi-touch": _uwsgi_touch,
    "uwsgi-fifo-r": _uwsgi_fifo,
    "gunicorn-hup": _gunicorn_hup_on_error_500,
}


def _deploy_broken(rig: Rig, server: str, broken: str) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """v1 on disk, the server and a health-checking daemon up, v2 deployed and verified under load; then
    `coordinator deploy BROKEN --wait`. Returns its result, when it started and when it returned
    (monotonic)."""
    argv, daemon_args, env = SERVERS[server](rig)
    rig.deploy_once("v1")
    rig.start_server(argv, "app=v1 late=v1", env=env)
    health = f"http://127.0.0.1:{rig.port}/health"
    rig.start_daemon(*daemon_args, "--health-url", health, "--health-timeout", HEALTH_TIMEOUT)
    rig.start_load()
    rig.deploy("v2")
    assert (read_status(rig.root) or {}).get("last_attempt", {}).get("phases_ms", {}).get("verify") is not None
    started = time.monotonic()
    out = subprocess.run(
        [coordinator_bin(), "deploy", broken, "--root", str(rig.root), "--wait", "--timeout", "90"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return out, started, time.monotonic()


def _check_rolled_back(
    rig: Rig, out: subprocess.CompletedProcess[str], started: float, returned: float, name: str
) -> None:
    assert rig.load is not None
    load = rig.load
    assert out.returncode != 0, out.stdout + out.stderr
    assert "rolled back" in out.stdout + out.stderr
    st = read_status(rig.root) or {}
    assert st.get("state") == "rolled_back", st
    assert (st.get("current") or {}).get("tag") == "v2"
    assert (st.get("last_attempt") or {}).get("result") == "rolled_back"
    assert "HTTP 500" in (st.get("error") or {}).get("message", ""), st  # the reason: the health check's answer
    # keep the load running for a while after the rollback completed
    wait_until(lambda: len([r for r in load.snapshot() if r.started >= returned]) >= 100, timeout=20)
    load.stop()
    print(rig.summary(name), f"deploy->rolled back {returned - started:.1f} s")
    after = [r for r in load.snapshot() if r.started >= returned]
    assert load.failures_started_after(returned) == [], load.failures_started_after(returned)[:5]
    assert {r.app for r in after} == {"v2"}
    assert load.mixed == []
    assert get(rig.port)[1].startswith("app=v2 late=v2 ")


@pytest.mark.parametrize("server", ["uwsgi-touch", "gunicorn-hup"])
def test_release_that_fails_to_import_is_rolled_back(rig: Rig, server: str) -> None:
    """broken-import: rolled back to v2, `deploy --wait` says so, no failed request afterwards."""
    out, started, returned = _deploy_broken(rig, server, "broken-import")
    assert rig.load is not None
    broken_window = [f for f in rig.load.failures if f.started < returned]
    assert broken_window, "the broken release was never loaded (the test would prove nothing)"
    _check_rolled_back(rig, out, started, returned, f"rollback broken-import ({server})")


def test_release_failing_its_health_check_is_rolled_back(rig: Rig) -> None:
    """broken-health (serves /, /health answers 500): rolled back to v2; no request fails but for a reset."""
    out, started, returned = _deploy_broken(rig, "uwsgi-fifo-r", "broken-health")
    assert rig.load is not None
    assert rig.load.versions()["broken-health"] > 0, "the broken release was never served"
    _check_rolled_back(rig, out, started, returned, "rollback broken-health (uwsgi-fifo-r)")
    # The broken release serves every page, so nothing should fail, except that a uWSGI graceful reload
    # can, rarely, reset a connection a worker accepted as it was told to stop (seen once: 1 request of
    # 2,039 across three `r` reloads; upstream unbit/uwsgi#1371). Anything else fails the test, and so
    # does any failure after the rollback (checked above).
    unexpected = [f for f in rig.load.failures if "ConnectionResetError" not in f.error]
    assert unexpected == [], unexpected[:5]
    print(f"[e2e] connection resets during the reloads: {len(rig.load.failures)}")
