"""The pure core: from what was observed (marker, git cache, disk, journal) to the steps to take.

Nothing here touches the filesystem, git or the clock, so every decision is tested as plain data.
:mod:`coordinator.deployer` observes, asks :func:`plan` what to do, performs the steps, and asks again
after a fetch (the only step that changes what is known about the tag).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from coordinator.marker import DeployRequest, release_name

__all__ = ["Action", "Observation", "Plan", "ReleaseInfo", "Step", "plan", "plan_prune"]


class Step(StrEnum):
    """One step of a deploy, in the order they run. Phase names in logs and status use these."""

    FETCH = "fetch"
    PREPARE = "prepare"
    BUILD = "build"
    PUBLISH = "publish"
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


@dataclass(frozen=True, slots=True)
class Observation:
    """Everything the planner needs, gathered by the executor."""

    request: DeployRequest | None
    current: str | None = None
    reloaded: str | None = None
    releases: frozenset[str] = frozenset()
    cached_sha: str | None = None
    fetched: bool = False
    blocked: bool = False
    has_build: bool = False
    has_health: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    steps: tuple[Step, ...] = ()
    target: str | None = None
    sha: str | None = None
    reason: str = ""


def plan(obs: Observation) -> Plan:
    """Decide what to do next. See :class:`Action` for the possible outcomes."""
    pending_reload = obs.current is not None and obs.reloaded != obs.current
    reload_only = Plan(Action.RELOAD, (Step.RELOAD,), obs.current, reason="current was swapped but not reloaded")
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
    if target in obs.releases:
        steps: tuple[Step, ...] = (Step.SWAP, Step.RELOAD, *verify, Step.PRUNE)
    else:
        build = (Step.BUILD,) if obs.has_build else ()
        steps = (Step.PREPARE, *build, Step.PUBLISH, Step.SWAP, Step.RELOAD, *verify, Step.PRUNE)
    return Plan(Action.DEPLOY, steps, target, sha, reason="deploy")


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """A release directory on disk, with what its metadata says (``created`` 0 if it has none)."""

    name: str
    created: float = 0.0
    ok: bool = True
    known: bool = True  # False: no metadata, not created by us: never deleted


def plan_prune(
    releases: Iterable[ReleaseInfo],
    current: str | None,
    previous: str | None,
    keep: int,
    protected: Sequence[str] = (),
) -> list[str]:
    """The release names to delete.

    Rules: `current`, `previous` and `protected` are never deleted; releases without metadata (not
    made by coordinator) are never deleted; failed releases do not count toward ``keep`` and are
    deleted; of the successful ones, the newest ``keep`` (counting current and previous) are kept.
    """
    always = {n for n in (current, previous, *protected) if n}
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
