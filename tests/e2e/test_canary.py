"""The canary on real servers under load (--canary-command): a release that cannot be imported and one
whose health URL answers 500 are refused before the swap, so the live server never serves them (0 failed
requests, 0 mixed responses), and the good releases around them deploy as before."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from coordinator.daemon import run_argv
from tests.e2e.load import assert_no_failure
from tests.e2e.rig import Rig, coordinator_bin
from tests.e2e.servers import BIN, DOCKER_DIR, gunicorn_hup, uwsgi_touch
from tests.helpers import live_pids_with_env, read_status, write_marker

pytestmark = pytest.mark.e2e

#: the release's app, loaded through coordinator.pin (COORDINATOR_PIN_CURRENT is the release directory)
PIN_APP = "COORDINATOR_PIN_APP=wsgi:application"

#: uWSGI, one process, on $PORT: exits at once (--need-app) when the app cannot be imported
UWSGI_CANARY = (
    f"{BIN / 'uwsgi'} --need-app --die-on-term --disable-logging --http-socket 127.0.0.1:$PORT"
    f" --env {PIN_APP} --module coordinator.pin:application"
)


def gunicorn_canary(rig: Rig) -> str:
    """gunicorn, one worker, on $PORT: its master exits when the worker cannot boot (import error)."""
    return (
        f"{BIN / 'gunicorn'} --control-socket {rig.tmp / 'canary.ctl'} --bind 127.0.0.1:$PORT --workers 1"
        f" --env {PIN_APP} coordinator.pin:application"
    )


def _uwsgi_touch(rig: Rig) -> tuple[list[str], list[str], dict[str, str]]:
    return uwsgi_touch(rig.port, rig.root), ["--canary-command", UWSGI_CANARY], {}


def _gunicorn_hup(rig: Rig) -> tuple[list[str], list[str], dict[str, str]]:
    pidfile = rig.tmp / "gunicorn.pid"
    daemon = ["--reload-signal", "HUP", "--reload-pidfile", str(pidfile), "--canary-command", gunicorn_canary(rig)]
    return gunicorn_hup(rig.port, rig.root, pidfile), daemon, {"COORDINATOR_PIN_ON_ERROR": "500"}


SERVERS: dict[str, Callable[[Rig], tuple[list[str], list[str], dict[str, str]]]] = {
    "uwsgi-touch": _uwsgi_touch,
    "gunicorn-hup": _gunicorn_hup,
}


def _deploy_refused(rig: Rig, tag: str) -> dict[str, float]:
    """`coordinator deploy TAG --wait`: refused by the canary, its error is the status's; its phases."""
    out = subprocess.run(
        [coordinator_bin(), "deploy", tag, "--root", str(rig.root), "--wait", "--timeout", "90"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode != 0, out.stdout + out.stderr
    st = read_status(rig.root) or {}
    assert st.get("state") == "failed", st
    assert (st.get("error") or {}).get("kind") == "canary", st
    attempt = st.get("last_attempt") or {}
    phases: dict[str, float] = attempt.get("phases_ms", {})
    assert "canary" in phases and "swap" not in phases, attempt
    expected = "exited with code" if tag == "broken-import" else "HTTP 500"
    assert expected in st["error"]["message"], st["error"]
    return phases


@pytest.mark.parametrize("server", ["uwsgi-touch", "gunicorn-hup"])
def test_broken_releases_are_refused_by_the_canary_with_no_failed_request(rig: Rig, server: str) -> None:
    """v2 deploys; broken-import and broken-health are refused by their canary; v3 deploys; under load
    nothing fails, nothing mixes, and no broken version is ever served."""
    argv, daemon_args, env = SERVERS[server](rig)
    rig.deploy_once("v1")
    rig.start_server(argv, "app=v1 late=v1", env=env)
    health = f"http://127.0.0.1:{rig.port}/health"
    rig.start_daemon(*daemon_args, "--health-url", health, "--health-timeout", "6", "--canary-timeout", "10")
    load = rig.start_load()
    rig.deploy("v2")
    good = [(read_status(rig.root) or {}).get("last_attempt", {}).get("phases_ms", {}).get("canary")]
    refused = {tag: _deploy_refused(rig, tag) for tag in ("broken-import", "broken-health")}
    assert (read_status(rig.root) or {}).get("current", {}).get("tag") == "v2"
    rig.deploy("v3")
    good.append((read_status(rig.root) or {}).get("last_attempt", {}).get("phases_ms", {}).get("canary"))
    load.stop()
    canary_ms = {tag: phases.get("canary") for tag, phases in refused.items()}
    print(rig.summary(f"canary ({server})"), f"canary ms: good={good} refused={canary_ms}")
    # the refused releases reload nothing; the good ones' touch reloads may reset a connection (uWSGI)
    assert_no_failure(load, graceful_resets=server == "uwsgi-touch")
    assert load.mixed == []
    assert set(load.versions()) == {"v1", "v2", "v3"}
    assert all(ms is not None for ms in good)
    assert rig.daemon is not None and running_canaries(rig) == []


def running_canaries(rig: Rig) -> list[int]:
    """Live processes of a canary of this rig's volume: their environment holds COORDINATOR_CANARY and
    ROOT (none is left once each canary was stopped)."""
    return live_pids_with_env(b"COORDINATOR_CANARY=", f"ROOT={rig.root}".encode())


def test_the_canary_of_the_example_django_app(tmp_path: Path) -> None:
    """docker/example's Django app (docker/example/make-repo.sh): v1 and v2 pass their canary (uWSGI, as in
    the how-to); v3-broken, which cannot be imported, is refused by it. Prints the canary's cost."""
    repo = tmp_path / "example-repo"
    make_repo = ["sh", str(DOCKER_DIR / "example" / "make-repo.sh"), str(repo)]
    made = subprocess.run(make_repo, capture_output=True, check=False)
    assert made.returncode == 0, made
    root = tmp_path / "volume"
    root.mkdir()
    command = UWSGI_CANARY.replace(PIN_APP, "COORDINATOR_PIN_APP=exampleapp.wsgi:application")
    canary_ms: dict[str, float] = {}
    for tag, rc in (("v1", 0), ("v2", 0), ("v3-broken", 1)):
        write_marker(root, tag)
        argv = run_argv(
            root, repo, "--once", "--log-format", "json", "--canary-command", command, "--canary-url", "/health"
        )
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == rc, out.stderr[-3000:]
        attempt = (read_status(root) or {}).get("last_attempt") or {}
        canary_ms[tag] = attempt.get("phases_ms", {}).get("canary")
    st = read_status(root) or {}
    assert (st.get("error") or {}).get("kind") == "canary" and "ModuleNotFoundError" in st["error"].get("output", "")
    assert (st.get("current") or {}).get("tag") == "v2"
    print(f"[e2e] django example canary ms: {canary_ms}")
