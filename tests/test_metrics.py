"""Prometheus metrics as pure registry updates, `--http-bind` parsing, and the /readyz and /healthz rules.

The HTTP server itself, over real sockets and against the real daemon, is tested in test_http_probes.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY
from prometheus_client.samples import Sample

from coordinator.config import Config, parse_http_bind
from coordinator.exceptions import ConfigError, MarkerError
from coordinator.layout import Layout
from coordinator.marker import DeployRequest, MarkerReading
from coordinator.metrics import PHASES, RESULTS, Metrics
from coordinator.options import resolve_options
from coordinator.probes import Liveness, check_ready
from coordinator.records import AttemptAction, AttemptResult, StatusRecord, as_status
from coordinator.report import Attempt

# ---------------------------------------------------------------------- metrics


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def series(m: Metrics) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items()))) for f in m.registry.collect() for s in f.samples}


def info_samples(m: Metrics) -> list[Sample]:
    return [s for f in m.current_release.collect() for s in f.samples]


def finished(result: str, *, phases: dict[str, float] | None = None, release: str | None = "v1-abc") -> Attempt:
    a = Attempt(tag="v1", request_id=None, sha="a" * 40, release=release, started=100.0, finished=102.5)
    a.result = AttemptResult(result)
    a.phases = dict(phases or {})
    return a


def test_metrics_live_in_their_own_registry_with_the_coordinator_prefix() -> None:
    """Every sample is named coordinator_*, and nothing lands in prometheus-client's global registry."""
    m = Metrics()
    names = {s.name for family in m.registry.collect() for s in family.samples}
    assert names and all(n.startswith("coordinator_") for n in names)
    assert not any(n.endswith("_created") for n in names)
    assert REGISTRY.get_sample_value("coordinator_deploys_total", {"result": "success"}) is None


def test_every_result_and_phase_is_exported_from_the_start() -> None:
    """A fresh daemon exports each result counter and phase histogram at 0, so rate() works at once."""
    m = Metrics(version="9.9")
    for result in RESULTS:
        assert value(m, "coordinator_deploys_total", result=result) == 0
    for phase in PHASES:
        assert value(m, "coordinator_phase_duration_seconds_count", phase=phase) == 0
    assert value(m, "coordinator_build_info", version="9.9") == 1
    assert value(m, "coordinator_rollbacks_total") == 0
    assert value(m, "coordinator_last_success_timestamp_seconds") == 0


def test_hook_failures_are_counted_by_hook_and_exported_from_the_start() -> None:
    """notify and webhook failures each have their series at 0; an unknown hook name adds none."""
    m = Metrics()
    assert value(m, "coordinator_hook_failures_total", hook="notify") == 0
    m.hook_failed("webhook")
    m.hook_failed("webhook")
    m.hook_failed("other")
    assert value(m, "coordinator_hook_failures_total", hook="webhook") == 2
    assert value(m, "coordinator_hook_failures_total", hook="notify") == 0
    assert value(m, "coordinator_hook_failures_total", hook="other") is None


def test_fetch_failures_are_counted_by_git_command_and_exported_from_the_start() -> None:
    """fetch and ls-remote failures each have their series at 0; an unknown command adds none."""
    m = Metrics()
    assert value(m, "coordinator_fetch_failures_total", command="ls-remote") == 0
    m.fetch_failed("fetch")
    m.fetch_failed("fetch")
    m.fetch_failed("clone")
    assert value(m, "coordinator_fetch_failures_total", command="fetch") == 2
    assert value(m, "coordinator_fetch_failures_total", command="ls-remote") == 0
    assert value(m, "coordinator_fetch_failures_total", command="clone") is None


def test_the_paused_gauge_is_0_then_follows_the_pause() -> None:
    """coordinator_paused starts at 0, is 1 while paused, 0 again after resume."""
    m = Metrics()
    assert value(m, "coordinator_paused") == 0
    m.set_paused(True)
    assert value(m, "coordinator_paused") == 1
    m.set_paused(False)
    assert value(m, "coordinator_paused") == 0


def test_finished_attempts_are_counted_by_result() -> None:
    """Each finished attempt adds one to its result's counter."""
    m = Metrics()
    for result in ["success", "failed", "failed", "cancelled", "rolled_back"]:
        m.attempt_changed(finished(result))
    assert [value(m, "coordinator_deploys_total", result=r) for r in RESULTS] == [1, 2, 1, 1]


def test_a_running_attempt_sets_deploy_in_progress_until_it_finishes() -> None:
    """deploy_in_progress is 1 between the start and the end of an attempt, and counts nothing yet."""
    m = Metrics()
    attempt = Attempt(tag="v1", request_id=None)
    m.attempt_changed(attempt)
    assert value(m, "coordinator_deploy_in_progress") == 1
    assert value(m, "coordinator_deploys_total", result="success") == 0
    attempt.result, attempt.finished = AttemptResult.FAILED, time.time()
    m.attempt_changed(attempt)
    assert value(m, "coordinator_deploy_in_progress") == 0


def test_a_success_records_its_time_duration_and_release() -> None:
    """A success sets the last-success time, observes the deploy duration and the current release."""
    m = Metrics()
    m.attempt_changed(finished("success"))
    assert value(m, "coordinator_last_success_timestamp_seconds") == 102.5
    assert value(m, "coordinator_deploy_duration_seconds_sum") == pytest.approx(2.5)
    assert value(m, "coordinator_deploy_duration_seconds_bucket", le="5.0") == 1
    assert value(m, "coordinator_current_release_info", release="v1-abc", tag="v1", sha="a" * 40) == 1


def test_a_failure_leaves_last_success_and_release_alone() -> None:
    """A failed attempt neither moves the last-success time nor names a release."""
    m = Metrics()
    m.attempt_changed(finished("failed"))
    assert value(m, "coordinator_last_success_timestamp_seconds") == 0
    assert value(m, "coordinator_deploy_duration_seconds_count") == 0
    assert not list(info_samples(m))


def test_rollbacks_are_counted_whenever_a_rollback_ran() -> None:
    """An attempt that ran the rollback phase counts one rollback, even if the rollback itself failed."""
    m = Metrics()
    m.attempt_changed(finished("rolled_back", phases={"swap": 1, "verify": 2000, "rollback": 5}))
    m.attempt_changed(finished("failed", phases={"swap": 1, "verify": 2000, "rollback": 5}))
    m.attempt_changed(finished("failed", phases={"swap": 1, "verify": 2000}))
    assert value(m, "coordinator_rollbacks_total") == 2
    assert value(m, "coordinator_deploys_total", result="rolled_back") == 1


def test_phase_durations_are_observed_in_seconds() -> None:
    """on_phase reports milliseconds; the histogram holds seconds, in buckets from 1 ms up."""
    m = Metrics()
    m.phase_finished("swap", 1.5)
    m.phase_finished("build", 90_000)
    assert value(m, "coordinator_phase_duration_seconds_sum", phase="swap") == pytest.approx(0.0015)
    assert value(m, "coordinator_phase_duration_seconds_bucket", phase="swap", le="0.001") == 0
    assert value(m, "coordinator_phase_duration_seconds_bucket", phase="swap", le="0.0025") == 1
    assert value(m, "coordinator_phase_duration_seconds_bucket", phase="build", le="60.0") == 0
    assert value(m, "coordinator_phase_duration_seconds_bucket", phase="build", le="120.0") == 1


def test_unknown_phases_add_no_series() -> None:
    """Label values come from fixed sets: an unexpected phase creates no new series (results are an enum)."""
    m = Metrics()
    before = series(m)
    m.phase_finished("teleport", 5.0)
    assert series(m) == before


def test_every_final_result_has_its_series_from_the_start() -> None:
    """coordinator_deploys_total has one series per final AttemptResult, at 0, before any deploy."""
    m = Metrics()
    assert {r: value(m, "coordinator_deploys_total", result=r.value) for r in AttemptResult if r.final} == {
        r: 0 for r in AttemptResult if r.final
    }


def test_release_info_keeps_exactly_one_series() -> None:
    """Changing the current release replaces its info series; no release removes it."""
    m = Metrics()
    m.set_current("v1-aaa", "v1", "a" * 40)
    m.set_current("v2-bbb", "v2", "b" * 40)
    samples = info_samples(m)
    assert [(s.labels["release"], s.value) for s in samples] == [("v2-bbb", 1)]
    m.set_current(None)
    assert info_samples(m) == []


def test_last_success_never_goes_back_in_time() -> None:
    """A success read back from an older status file does not move the timestamp backwards."""
    m = Metrics()
    m.seen_success(200.0)
    m.seen_success(100.0)
    assert value(m, "coordinator_last_success_timestamp_seconds") == 200.0


def test_render_is_prometheus_text_by_default_and_openmetrics_on_request() -> None:
    """The text format by default; OpenMetrics when the Accept header asks for it."""
    m = Metrics()
    body, content_type = m.render("")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE coordinator_deploys_total counter" in body
    body, content_type = m.render("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_a_failing_metric_update_never_reaches_the_deployer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooks swallow (and log) any error: a metrics bug must not fail a deploy."""
    m = Metrics()

    def boom(*_: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(m.deploys, "labels", boom)
    monkeypatch.setattr(m.phases, "labels", boom)
    m.attempt_changed(finished("success"))
    m.phase_finished("swap", 1.0)


# ---------------------------------------------------------------------- --http-bind


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("metrics.example.internal:80", ("metrics.example.internal", 80)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:0", ("::", 0)),
        ("[fe80::1%eth0]:9100", ("fe80::1%eth0", 9100)),
    ],
)
def test_http_bind_accepts_host_port_and_bracketed_ipv6(text: str, expected: tuple[str, int]) -> None:
    """HOST:PORT and [V6ADDR]:PORT parse to (host, port); port 0 is allowed."""
    assert parse_http_bind(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "9100",
        ":9100",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1: 80",
        "127.0.0.1:0x50",
        "127.0.0.1:\u0663",
        "127.0.0.1:000009100",
        "::1:9100",
        "[::1]9100",
        "[::1]",
        "[127.0.0.1]:80",
        "[nothost]:80",
        "bad host:80",
        "-leading-dash:80",
        "http://127.0.0.1:80",
        "a" * 300 + ":80",
        "",
    ],
)
def test_http_bind_refuses_malformed_values_with_a_clear_message(text: str) -> None:
    """Anything but HOST:PORT or [V6ADDR]:PORT with a port 0-65535 is a config error (exit 2)."""
    with pytest.raises(ConfigError, match=r"invalid --http-bind") as info:
        parse_http_bind(text)
    assert info.value.exit_code == 2
    assert info.value.fix and "HOST:PORT" in info.value.fix


def test_http_bind_is_off_by_default_and_set_from_env_or_toml(tmp_path: Path) -> None:
    """No server unless configured; the environment and a TOML file both set it."""
    assert resolve_options({}, env={}, names=["http-bind"]) == {"http_bind": None}
    assert Config.from_options({"root": tmp_path, "repo": "r"}).http_address is None
    env = resolve_options({}, env={"COORDINATOR_HTTP_BIND": "127.0.0.1:9100"}, names=["http-bind"])
    assert Config.from_options({"root": tmp_path, "repo": "r", **env}).http_address == ("127.0.0.1", 9100)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[coordinator]\nhttp_bind = "[::1]:0"\n')
    toml = resolve_options({}, env={}, config_file=cfg, names=["http-bind"])
    assert Config.from_options({"root": tmp_path, "repo": "r", **toml}).http_address == ("::1", 0)


def test_config_refuses_a_bad_http_bind() -> None:
    """Config validates --http-bind when it is built, before anything starts."""
    with pytest.raises(ConfigError, match="--http-bind"):
        Config(Layout.for_root(Path("/vol")), repo="r", http_bind="localhost")


# ---------------------------------------------------------------------- readiness (pure)

PID = 4242
SHA = "3f9c2a1b7d4e" + "0" * 28
RELEASE = "v1-3f9c2a1b7d4e"


def reading(tag: str = "v1", sha: str | None = None, digest: str = "d1") -> MarkerReading:
    return MarkerReading(DeployRequest(tag, sha), None, digest)


def status(**changes: Any) -> StatusRecord:
    base: dict[str, Any] = {
        "pid": PID,
        "state": "idle",
        "marker_digest": "d1",
        "current": {"release": RELEASE, "tag": "v1", "sha": SHA},
        "reloaded": RELEASE,
        "error": None,
    }
    return as_status({**base, **changes})


def test_ready_when_current_is_the_markers_release_deployed() -> None:
    """Converged (idle, same marker digest, current on disk = status current, reloaded): ready."""
    r = check_ready(reading(sha="3f9c2a"), status(), RELEASE, PID)
    assert r.ready
    assert r.body() == {"ready": True, "reason": r.reason, "release": RELEASE, "tag": "v1", "sha": SHA}


@pytest.mark.parametrize(
    ("marker", "st", "current", "reason"),
    [
        (MarkerReading(None, None, None), status(), RELEASE, "no marker"),
        (MarkerReading(None, MarkerError("bad tag"), "d1"), status(), RELEASE, "marker refused: bad tag"),
        (reading(), None, RELEASE, "not reconciled yet"),
        (reading(), status(pid=1), RELEASE, "not reconciled yet"),
        (reading(digest="d2"), status(), RELEASE, "marker changed"),
        (reading(), status(state="deploying"), RELEASE, "state is deploying"),
        (reading(), status(state="failed", error={"message": "tag 'v1' not found"}), RELEASE, "not found"),
        (reading(), status(state="rolled_back"), RELEASE, "state is rolled_back"),
        (reading(), status(), None, "does not name a release"),
        (reading(), status(), "v0-000000000000", "current changed"),
        (reading(tag="v2"), status(), RELEASE, "the marker asks for v2"),
        (reading(sha="ffff"), status(), RELEASE, "the marker asks for v1"),
        (reading(), status(reloaded="v0-000000000000"), RELEASE, "reload is not recorded"),
    ],
)
def test_not_ready_says_why(marker: MarkerReading, st: StatusRecord | None, current: str | None, reason: str) -> None:
    """Every way of not being converged gives 503 with a reason naming it."""
    r = check_ready(marker, st, current, PID)
    assert not r.ready
    assert reason in r.reason
    assert r.body() == {"ready": False, "reason": r.reason}


def test_a_pause_alone_does_not_make_the_daemon_unready() -> None:
    """State paused with the marker's release current and reloaded: still ready (/readyz is about convergence)."""
    assert check_ready(reading(), status(state="paused"), RELEASE, PID).ready


def test_paused_with_a_pending_marker_is_not_ready_because_of_the_marker() -> None:
    """Paused while the marker asks for another tag: 503, and the reason is the pending tag."""
    r = check_ready(reading(tag="v2"), status(state="paused"), RELEASE, PID)
    assert not r.ready and "the marker asks for v2" in r.reason


def test_a_refused_current_is_the_reason() -> None:
    """When ROOT/current cannot be read as a release, the reason says why."""
    r = check_ready(reading(), status(), None, PID, current_error="/vol/current is not a symlink")
    assert not r.ready and r.reason == "/vol/current is not a symlink"


# ---------------------------------------------------------------------- liveness (pure)


def test_alive_only_while_the_watcher_runs() -> None:
    """Liveness needs the watcher task running."""
    live = Liveness()
    assert live.check()[0] is False
    assert "watcher" in live.check()[1]["reason"]
    with live.running("watcher"):
        alive, body = live.check()
        assert alive and body["tasks"] == ["watcher"]
    assert live.check()[0] is False


@pytest.mark.anyio
async def test_not_alive_once_stopping() -> None:
    """After SIGTERM (the stop event), /healthz answers 503 "stopping"."""
    stop = anyio.Event()
    live = Liveness(stop)
    with live.running("watcher"):
        assert live.check()[0]
        stop.set()
        assert live.check() == (False, {**live.check()[1], "reason": "stopping"})


def test_stage_attempts_are_counted_apart_from_deploys() -> None:
    """A stage attempt counts in coordinator_stages_total only: no deploy, no current release, no in-progress."""
    m = Metrics()
    stage = finished("success", release="v2-abc")
    stage.action = AttemptAction.STAGE
    m.attempt_changed(stage)
    assert value(m, "coordinator_stages_total", result="success") == 1
    assert value(m, "coordinator_deploys_total", result="success") == 0
    assert value(m, "coordinator_deploy_in_progress") == 0
    assert not [s for s in info_samples(m) if s.labels.get("release") == "v2-abc"]


def test_canaries_are_counted_by_result_and_exported_from_the_start() -> None:
    """passed, failed and cancelled each have their series at 0; an unknown result adds none."""
    m = Metrics()
    assert value(m, "coordinator_canary_total", result="cancelled") == 0
    m.canary_finished("passed")
    m.canary_finished("failed")
    m.canary_finished("failed")
    m.canary_finished("exploded")
    assert value(m, "coordinator_canary_total", result="passed") == 1
    assert value(m, "coordinator_canary_total", result="failed") == 2
    assert value(m, "coordinator_canary_total", result="exploded") is None
