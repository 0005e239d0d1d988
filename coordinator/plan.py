"""The pure core: from what was observed (marker, git cache, disk, state file) to what to do.

Nothing here touches the filesystem, git or the clock, so every decision is tested as plain data.
:mod:`coordinator.deployer` observes, asks :func:`plan` what to do, performs the steps, and asks again
after a fetch (the only step that changes what is known about the tag). The other decisions live
here too:

* :func:`reload_to_confirm` / :func:`recover_reload`: at start-up, a reload that was started but not
  recorded (a crash in between) is recorded as done when the reload strategy can tell it happened;
* :func:`resume_verify`: at start-up, a release swapped in but never verified is verified again
  (:attr:`Action.RESUME_VERIFY`);
* :func:`rollback_target`: where a release that failed its health check goes back to, if anywhere;
* :func:`failure_blocks_marker`: whether a failure waits for the marker to change;
* a deploy runs the canary (``--canary-command``) before the swap, except to go back to the release
  served before ``current`` (:attr:`Observation.previous`: it served, and a rollback must be fast);
* a request whose last fetch failed waits out its back-off (:attr:`Action.BACKOFF`, the observed
  :attr:`Observation.retry_in`) instead of fetching again;
* :func:`settled_state` and :func:`status_error`: what the status file says when nothing is deploying;
* :func:`plan_prune`: which releases to delete (the staged one is kept);
* :func:`plan_stage`: what to do about the stage request (``ROOT/stage.request``), once deploys are
  converged; :func:`staged_after`: whether the staged release is still staged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from coordinator.marker import DeployRequest, release_name
from coordinator.records import ErrorInfo, StageState, StatusState
from coordinator.statefile import PendingReload, PendingVerify, StageDone, StagedRelease, State

__all__ = [
    "Action",
    "Observation",
    "Plan",
    "ReleaseInfo",
    "StageAction",
    "StageObservation",
    "StagePlan",
    "Step",
    "failure_blocks_marker",
    "plan",
    "plan_prune",
    "plan_stage",
    "recover_reload",
    "reload_to_confirm",
    "resume_verify",
    "rollback_target",
    "settled_state",
    "staged_after",
    "status_error",
]


class Step(StrEnum):
    """One step of a deploy, in the order they run. Phase names in logs and status use these."""

    FETCH = "fetch"
    PREPARE = "prepare"
    BUILD = "build"
    PUBLISH = "publish"
    PRE_SWAP = "pre_swap"  # --pre-swap-command, before every swap a request makes
    CANARY = "canary"  # --canary-command: the release started privately and probed, before the swap
    SWAP = "swap"
    RELOAD = "reload"
    VERIFY = "verify"
    ROLLBACK = "rollback"  # not planned: done only when VERIFY fails
    PRUNE = "prune"


class Action(StrEnum):
    NOOP = "noop"  # converged: nothing to do
    WAIT = "wait"  # the marker's request failed for good before: wait for the marker to change
    FETCH = "fetch"  # the tag (or the requested sha) is not in the cache yet
    DEPLOY = "deploy"  # make `target` current
    RELOAD = "reload"  # `current` changed but its reload was never recorded (crash): reload once
    ERROR = "error"  # the request cannot be satisfied (sha mismatch after a fetch)
    RESUME_VERIFY = "resume_verify"  # `target` (current) was never verified (crash): verify it now
    PAUSED = "paused"  # deploys are paused (ROOT/deploy.pause): the marker's request waits for `resume`
    BACKOFF = "backoff"  # the request's last fetch failed: no fetch before `delay` seconds have passed


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything the planner needs, gathered by the executor."""

    request: DeployRequest | None
    invalid: bool = False  # the marker was refused (request is None then)
    current: str | None = None
    reloaded: str | None = None
    releases: frozenset[str] = frozenset()
    cached_sha: str | None = None
    fetched: bool = False
    blocked: bool = False
    has_build: bool = False
    has_health: bool = False
    has_pre_swap: bool = False
    has_canary: bool = False
    previous: str | None = None  # the release served before current (state.previous): no canary to go back to it
    failed_kind: str | None = None  # the error kind of the permanent failure that blocks the marker
    resume_verify: PendingVerify | None = None  # offered once after start-up (see resume_verify())
    paused: bool = False  # a pause file exists (readable or not)
    retry_in: float | None = None  # this request's last fetch failed: seconds until it may fetch again


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    steps: tuple[Step, ...] = ()
    target: str | None = None
    sha: str | None = None
    reason: str = ""
    delay: float | None = None  # BACKOFF: seconds until the fetch may be tried again


def plan(obs: Observation) -> Plan:
    """Decide what to do next. See :class:`Action` for the possible outcomes.

    An unfinished verification comes first, whatever the marker says (a release that may be broken
    is serving); then an unrecorded reload (with an invalid marker too: ``current`` is what it is).
    Both finish a deploy already made, so they happen while paused too; a pause stops everything
    else (no fetch either): :attr:`Action.PAUSED`.
    """
    rv = obs.resume_verify
    if rv is not None and obs.has_health and obs.current is not None and rv.release == obs.current:
        return Plan(Action.RESUME_VERIFY, (Step.VERIFY,), obs.current, reason="verification interrupted")
    pending_reload = obs.current is not None and obs.reloaded != obs.current
    reload_only = Plan(Action.RELOAD, (Step.RELOAD,), obs.current, reason="current was swapped but not reloaded")
    if obs.paused:
        return reload_only if pending_reload else Plan(Action.PAUSED, reason="paused")
    req = obs.request
    if req is None:
        return reload_only if pending_reload else Plan(Action.NOOP, reason="no valid request")
    if obs.blocked:
        if pending_reload:
            return reload_only
        return Plan(Action.WAIT, reason="this marker failed before; waiting for it to change")
    sha = obs.cached_sha
    if sha is None or not req.matches(sha):
        if not obs.fetched:
            if obs.retry_in is not None:
                return Plan(
                    Action.BACKOFF,
                    delay=obs.retry_in,
                    reason=f"the last fetch failed; next try in {obs.retry_in:.1f} s",
                )
            why = "tag not in cache" if sha is None else "cached tag does not match the requested sha"
            return Plan(Action.FETCH, (Step.FETCH,), reason=why)
        if sha is None:
            return Plan(Action.ERROR, reason=f"tag {req.tag!r} not found after fetching")
        return Plan(
            Action.ERROR,
            sha=sha,
            reason=f"tag {req.tag!r} points to {sha[:12]}, not the requested {req.sha}",
        )
    target = release_name(req.tag, sha)
    if target == obs.current:
        if pending_reload:
            return reload_only
        return Plan(Action.NOOP, target=target, sha=sha, reason="already current")
    verify = (Step.VERIFY,) if obs.has_health else ()
    # the canary checks a release that has not served yet; going back to the release served before
    # current (a rollback) is the fast way back and runs none
    canary = (Step.CANARY,) if obs.has_canary and not (target in obs.releases and target == obs.previous) else ()
    swap = (*((Step.PRE_SWAP,) if obs.has_pre_swap else ()), *canary)
    if target in obs.releases:
        steps: tuple[Step, ...] = (*swap, Step.SWAP, Step.RELOAD, *verify, Step.PRUNE)
    else:
        build = (Step.BUILD,) if obs.has_build else ()
        steps = (Step.PREPARE, *build, Step.PUBLISH, *swap, Step.SWAP, Step.RELOAD, *verify, Step.PRUNE)
    return Plan(Action.DEPLOY, steps, target, sha, reason="deploy")


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """A release directory on disk, with what its metadata says (``created`` 0 if it has none)."""

    name: str
    created: float = 0.0
    ok: bool = True
    tag: str | None = None
    sha: str | None = None
    known: bool = True  # False: no metadata, not created by us: never deleted
    signer: str | None = None  # who signed its tag, when verified (--verify-signatures)


def plan_prune(
    releases: Iterable[ReleaseInfo],
    current: str | None,
    previous: str | None,
    keep: int,
    protected: Sequence[str] = (),
    *,
    staged: str | None = None,
) -> list[str]:
    """The release names to delete.

    Rules: `current`, `previous`, `staged` and `protected` are never deleted; releases without
    metadata (not made by coordinator) are never deleted; failed releases do not count toward
    ``keep`` and are deleted; of the successful ones, the newest ``keep`` (counting current, previous
    and staged) are kept. A release staged before the one staged now is an ordinary release.
    """
    always = {n for n in (current, previous, staged, *protected) if n}
    items = sorted(releases, key=lambda r: (r.created, r.name), reverse=True)
    kept_ok = sum(1 for r in items if r.name in always and r.ok and r.known)
    delete: list[str] = []
    for r in items:
        if r.name in always or not r.known:
            continue
        if not r.ok:
            delete.append(r.name)
        elif kept_ok < keep:
            kept_ok += 1
        else:
            delete.append(r.name)
    return delete


# ------------------------------------------------------------------ start-up, verification, status


def reload_to_confirm(state: State, current: str | None) -> PendingReload | None:
    """The reload recorded as started for the release ``current`` still names (a crash came between
    "about to reload" and "reloaded"): ask the reload strategy whether it happened. None: nothing to ask."""
    pending = state.pending
    if current is None or pending is None or pending.release != current:
        return None
    return pending


def recover_reload(state: State, current: str, pending: PendingReload) -> State:
    """The state once the reload ``pending`` of ``current`` is known to have happened: recorded as
    done, so it is not repeated (the caller saves it)."""
    return replace(
        state,
        previous=state.reloaded if state.reloaded != current else state.previous,
        reloaded=current,
        pending=None,
        last_reload_mtime=pending.token if pending.token is not None else state.last_reload_mtime,
    )


def resume_verify(state: State, current: str | None, has_health: bool) -> PendingVerify | None:
    """The verification to resume at start-up: ``current`` was swapped in and reloaded, the daemon
    stopped before its health check ended, and a health check is still configured."""
    v = state.verify
    return v if v is not None and has_health and current is not None and v.release == current else None


def rollback_target(pending: PendingVerify, on_disk: Iterable[str]) -> str | None:
    """Where a release that failed its health check goes back to: the release that was current
    before it, if that is still a published directory (and not the failed release itself). None:
    nowhere, the failed release stays current and the attempt fails with a VerifyError."""
    back = pending.back_to
    return back if back is not None and back != pending.release and back in set(on_disk) else None


def failure_blocks_marker(request: DeployRequest | None, tag: str, retryable: bool) -> bool:
    """Whether a failed attempt for ``tag`` waits for the marker to change (instead of being retried
    on the next resync): only a permanent failure (a broken build, a failed health check, not a
    remote that was down) of the very tag the marker asks for. A resumed verification of a release
    the marker no longer asks for blocks nothing."""
    return not retryable and request is not None and request.tag == tag


def settled_state(obs: Observation, action: Action, *, reload_failed: bool = False) -> StatusState:
    """The status file's state after a reconcile that started no deploy attempt (paused: ``paused``
    unless the marker is invalid or a recovery reload failed; backing off: ``failed``)."""
    if obs.invalid:
        return StatusState.INVALID
    if reload_failed:
        return StatusState.FAILED
    if obs.paused:
        return StatusState.PAUSED
    if action is Action.BACKOFF:
        return StatusState.FAILED  # with that fetch's error and its next_retry_at
    if action is Action.WAIT:
        return StatusState.ROLLED_BACK if obs.failed_kind == "rolled_back" else StatusState.FAILED
    return StatusState.IDLE if obs.request is not None else StatusState.WAITING


def status_error(
    state: StatusState,
    *,
    explicit: ErrorInfo | None = None,
    marker_error: ErrorInfo | None = None,
    attempt_error: ErrorInfo | None = None,
    failed_error: ErrorInfo | None = None,
) -> ErrorInfo | None:
    """The one error the status file shows: the error of this reconcile, else the marker's, else,
    while the marker's request has failed, the last attempt's (or the remembered permanent one)."""
    if explicit is not None:
        return explicit
    if marker_error is not None:
        return marker_error
    if state.failed:
        return attempt_error or failed_error
    return None


# ------------------------------------------------------------------ staging


class StageAction(StrEnum):
    NONE = "none"  # no stage request
    INVALID = "invalid"  # the stage request was refused
    DONE = "done"  # these stage request bytes were handled for good (staged, current or failed)
    PENDING = "pending"  # deploys come first: the marker's request is not converged
    FETCH = "fetch"  # the tag (or the requested sha) is not in the cache yet
    ERROR = "error"  # the request cannot be satisfied (tag not found, sha mismatch after a fetch)
    CURRENT = "current"  # its release is current: nothing to stage
    STAGE = "stage"  # make `target` the staged release (building it unless it is on disk)


#: the deploy plans that leave the daemon free to stage: converged, waiting on a failed marker or on
#: a fetch's back-off, or paused (a stage changes nothing served, so it works while paused)
_STAGE_WHEN = frozenset({Action.NOOP, Action.WAIT, Action.PAUSED, Action.BACKOFF})


@dataclass(frozen=True, slots=True)
class StageObservation:
    """What :func:`plan_stage` needs: the stage request, the deploy plan of this reconcile, the disk."""

    request: DeployRequest | None
    digest: str | None = None  # sha256 of the stage request bytes (None: no stage request)
    invalid: bool = False
    deploy_action: Action = Action.NOOP
    done: StageDone | None = None
    current: str | None = None
    releases: frozenset[str] = frozenset()
    cached_sha: str | None = None
    fetched: bool = False
    has_build: bool = False


@dataclass(frozen=True, slots=True)
class StagePlan:
    action: StageAction
    steps: tuple[Step, ...] = ()
    target: str | None = None
    sha: str | None = None
    reason: str = ""

    @property
    def state(self) -> StageState | None:
        """The stage state this plan shows before anything runs (None: no stage request, or it depends
        on what was handled before: :attr:`StageAction.DONE`)."""
        return _STAGE_STATE.get(self.action)


_STAGE_STATE = {
    StageAction.INVALID: StageState.INVALID,
    StageAction.PENDING: StageState.PENDING,
    StageAction.FETCH: StageState.STAGING,
    StageAction.ERROR: StageState.FAILED,
    StageAction.CURRENT: StageState.CURRENT,
    StageAction.STAGE: StageState.STAGING,
}


def plan_stage(obs: StageObservation) -> StagePlan:
    """Decide what to do about the stage request. Deploys come first: a stage request waits while the
    marker's request needs work (:attr:`StageAction.PENDING`). A request whose bytes were handled
    (staged, already current, or failed for good) is not handled again until they change, so a staged
    release that was deployed and later pruned is not built again. The release is named by tag and
    commit, like a deploy's: a later ``deploy`` of the staged tag at the same commit finds it on disk
    and only swaps; a tag that moved meanwhile names another release, which the deploy builds.
    """
    req = obs.request
    if req is None:
        return StagePlan(StageAction.INVALID if obs.invalid else StageAction.NONE)
    if obs.done is not None and obs.done.digest == obs.digest:
        return StagePlan(StageAction.DONE, reason=f"this stage request was handled: {obs.done.state}")
    if obs.deploy_action not in _STAGE_WHEN:
        return StagePlan(StageAction.PENDING, reason="deploys come first")
    sha = obs.cached_sha
    if sha is None or not req.matches(sha):
        if not obs.fetched:
            why = "tag not in cache" if sha is None else "cached tag does not match the requested sha"
            return StagePlan(StageAction.FETCH, (Step.FETCH,), reason=why)
        if sha is None:
            return StagePlan(StageAction.ERROR, reason=f"tag {req.tag!r} not found after fetching")
        return StagePlan(
            StageAction.ERROR, sha=sha, reason=f"tag {req.tag!r} points to {sha[:12]}, not the requested {req.sha}"
        )
    target = release_name(req.tag, sha)
    if target == obs.current:
        return StagePlan(StageAction.CURRENT, target=target, sha=sha, reason="already current")
    if target in obs.releases:
        return StagePlan(StageAction.STAGE, (), target, sha, reason="already on disk")
    build = (Step.BUILD,) if obs.has_build else ()
    return StagePlan(StageAction.STAGE, (Step.PREPARE, *build, Step.PUBLISH), target, sha, reason="stage")


def staged_after(
    staged: StagedRelease | None, current: str | None, on_disk: Iterable[str] | None = None
) -> StagedRelease | None:
    """The staged release, unless it is staged no more: deployed (it is current) or, when ``on_disk``
    is given, gone from disk (removed by hand)."""
    if staged is None or staged.release == current:
        return None
    if on_disk is not None and staged.release not in set(on_disk):
        return None
    return staged
