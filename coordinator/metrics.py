"""Prometheus metrics of one coordinator, kept in its own registry (never the process-global one).

The :class:`~coordinator.report.Reporter` feeds them through two hooks: ``on_phase`` (the end of
every phase) and ``on_attempt`` (an attempt started, then finished and journaled); the
:class:`~coordinator.deployer.Deployer` through ``on_fetch_failure`` and ``on_canary``; the
:class:`~coordinator.notify.Notifier` through ``on_failure`` (a notification failed). What can be read
back from the volume (the release ``current`` points to, the last success, readiness, a pause) is refreshed
by the HTTP server just before each scrape, so it is right even after a restart or a change made
behind coordinator's back.

Every label takes values from a fixed set (results, phases, hooks) except the release info, which has
exactly one series at a time: the old one is removed when ``current`` changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from coordinator import __version__
from coordinator.plan import Step
from coordinator.records import AttemptAction, AttemptResult
from coordinator.report import Attempt

__all__ = [
    "CANARY_RESULTS",
    "DEPLOY_BUCKETS",
    "FETCH_COMMANDS",
    "HOOKS",
    "PHASES",
    "PHASE_BUCKETS",
    "RESULTS",
    "STAGE_RESULTS",
    "Metrics",
]

log = structlog.get_logger("coordinator")

#: attempt results, as in the status file's ``last_attempt.result`` (every final AttemptResult)
RESULTS = tuple(r.value for r in AttemptResult if r.final)
#: stage attempt results (a stage is never swapped in, so never rolled back)
STAGE_RESULTS = tuple(r for r in RESULTS if r != AttemptResult.ROLLED_BACK)
#: phase names, as in the logs and the status file's ``phases_ms``
PHASES = tuple(s.value for s in Step)
#: how a canary (--canary-command) ended: passed, failed, or cancelled (a newer marker, a pause)
CANARY_RESULTS = ("passed", "failed", "cancelled")
#: notification hooks whose failures are counted
HOOKS = ("notify", "webhook")
#: git commands that reach the repository, whose failures are counted
FETCH_COMMANDS = ("fetch", "ls-remote")
#: from a 1 ms swap to a 10-minute build
PHASE_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
#: a whole deploy: a swap to a release on disk (a few ms) to a long fetch and build
DEPLOY_BUCKETS = (*PHASE_BUCKETS[2:], 1800.0)


class Metrics:
    """The coordinator's metrics. Updated on the event loop only; never raises into the deployer."""

    def __init__(self, version: str = __version__) -> None:
        # no `*_created` series: they double the output and say only when the daemon started. The
        # switch is process-wide; the coordinator process exports no other prometheus-client metrics.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Gauge(
            "coordinator_build_info", "Always 1; the coordinator version as a label", ["version"], registry=r
        )
        self.build_info.labels(version).set(1)
        self.deploys = Counter(
            "coordinator_deploys",
            "Deploy attempts by result: success, failed, rolled_back (health check failed) or cancelled (superseded)",
            ["result"],
            registry=r,
        )
        self.stages = Counter(
            "coordinator_stages",
            "Stage attempts (coordinator stage: built and published, not swapped in) by result: success, "
            "failed or cancelled (a deploy came first)",
            ["result"],
            registry=r,
        )
        self.rollbacks = Counter(
            "coordinator_rollbacks",
            "Automatic rollbacks performed after a failed health check (successful or not)",
            registry=r,
        )
        self.phases = Histogram(
            "coordinator_phase_duration_seconds",
            "Duration of each deploy phase, including phases that failed or were cancelled",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=r,
        )
        self.deploy_duration = Histogram(
            "coordinator_deploy_duration_seconds",
            "Duration of successful deploy attempts, from the marker read to the last phase",
            buckets=DEPLOY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "coordinator_deploy_in_progress", "1 while a deploy attempt is running, else 0", registry=r
        )
        self.last_success = Gauge(
            "coordinator_last_success_timestamp_seconds",
            "Unix time the last successful deploy finished (0: none recorded)",
            registry=r,
        )
        self.current_release = Gauge(
            "coordinator_current_release_info",
            "Always 1; the release ROOT/current points to, with its tag and commit (no series: none)",
            ["release", "tag", "sha"],
            registry=r,
        )
        self.ready = Gauge(
            "coordinator_ready", "1 when /readyz answers 200: current is the marker's release, deployed", registry=r
        )
        self.paused = Gauge(
            "coordinator_paused",
            "1 while deploys are paused (ROOT/deploy.pause exists, even unreadable), else 0",
            registry=r,
        )
        self.reconcile_errors = Counter(
            "coordinator_reconcile_errors",
            "Reconciles that ended in an error outside a deploy attempt (the daemon logs and retries)",
            registry=r,
        )
        self.hook_failures = Counter(
            "coordinator_hook_failures",
            "Notifications that failed (--notify-command: non-zero, timeout, cannot start; --webhook-url: "
            "no 2xx after its tries; either: dropped); the attempt's result is unchanged",
            ["hook"],
            registry=r,
        )
        self.fetch_failures = Counter(
            "coordinator_fetch_failures",
            "git fetch (of a tag) and git ls-remote (--follow) calls that failed; each waits a growing back-off",
            ["command"],
            registry=r,
        )
        self.signature_refusals = Counter(
            "coordinator_signature_refusals",
            "Deploy and stage attempts refused by --verify-signatures: the tag was not signed by an allowed key",
            registry=r,
        )
        self.canaries = Counter(
            "coordinator_canary",
            "Canaries (--canary-command: the new release started privately before the swap) by result: "
            "passed, failed (the release was refused) or cancelled (a newer marker or a pause)",
            ["result"],
            registry=r,
        )
        for result in CANARY_RESULTS:
            self.canaries.labels(result)
        for command in FETCH_COMMANDS:
            self.fetch_failures.labels(command)
        for result in RESULTS:
            self.deploys.labels(result)
        for result in STAGE_RESULTS:
            self.stages.labels(result)
        for hook in HOOKS:
            self.hook_failures.labels(hook)
        for phase in PHASES:
            self.phases.labels(phase)
        self._current: tuple[str, str, str] | None = None
        self._last_success = 0.0

    # ------------------------------------------------------------------ hooks of the Deployer

    def phase_finished(self, phase: str, ms: float) -> None:
        """``Reporter.on_phase``: a phase ended after ``ms`` milliseconds."""
        self._safely(self._phase_finished, phase, ms)

    def _phase_finished(self, phase: str, ms: float) -> None:
        if phase in PHASES:  # a fixed label set, whatever a future phase is called
            self.phases.labels(phase).observe(max(ms, 0.0) / 1000)

    def attempt_changed(self, attempt: Attempt) -> None:
        """``Reporter.on_attempt``: an attempt started (result ``running``) or finished."""
        self._safely(self._attempt_changed, attempt)

    def _attempt_changed(self, attempt: Attempt) -> None:
        if attempt.result.final and attempt.error is not None and attempt.error.get("kind") == "signature":
            self.signature_refusals.inc()
        if attempt.action is AttemptAction.STAGE:  # builds a release, serves nothing: counted apart
            if attempt.result.final:
                self.stages.labels(attempt.result.value).inc()
            return
        if not attempt.result.final:
            self.in_progress.set(1)
            return
        self.in_progress.set(0)
        self.deploys.labels(attempt.result.value).inc()
        if "rollback" in attempt.phases:
            self.rollbacks.inc()
        if attempt.result is AttemptResult.SUCCESS:
            finished = attempt.finished or time.time()
            self.deploy_duration.observe(max(finished - attempt.started, 0.0))
            self.seen_success(finished)
            if attempt.release:
                self.set_current(attempt.release, attempt.tag, attempt.sha)

    def hook_failed(self, hook: str) -> None:
        """``Notifier.on_failure``: a notification hook failed."""
        self._safely(self._hook_failed, hook)

    def _hook_failed(self, hook: str) -> None:
        if hook in HOOKS:
            self.hook_failures.labels(hook).inc()

    def fetch_failed(self, command: str) -> None:
        """``Deployer.on_fetch_failure`` and ``Follower.on_failure``: git ``command`` failed."""
        self._safely(self._fetch_failed, command)

    def _fetch_failed(self, command: str) -> None:
        if command in FETCH_COMMANDS:
            self.fetch_failures.labels(command).inc()

    def canary_finished(self, result: str) -> None:
        """``Deployer.on_canary``: a canary ended (passed, failed or cancelled)."""
        self._safely(self._canary_finished, result)

    def _canary_finished(self, result: str) -> None:
        if result in CANARY_RESULTS:
            self.canaries.labels(result).inc()

    # ------------------------------------------------------------------ state read back from the volume

    def set_current(self, release: str | None, tag: str | None = None, sha: str | None = None) -> None:
        """The release ``current`` points to (None: no release). Keeps exactly one series, or none."""
        new = (release, tag or "", sha or "") if release else None
        if new == self._current:
            return
        if self._current is not None:
            self.current_release.remove(*self._current)
        if new is not None:
            self.current_release.labels(*new).set(1)
        self._current = new

    def seen_success(self, finished: float) -> None:
        """A successful deploy finished at ``finished`` (e.g. read back from the status file)."""
        if finished > self._last_success:
            self._last_success = finished
            self.last_success.set(finished)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def set_paused(self, paused: bool) -> None:
        self.paused.set(1 if paused else 0)

    # ------------------------------------------------------------------ exposition

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format the ``Accept`` header asks for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def _safely(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # metrics must never fail a deploy
            log.exception("metrics_update_failed")
