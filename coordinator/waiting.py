"""``deploy --wait`` and ``stage --wait``: polling the status file until the request is done, failed,
paused, or no daemon is there to do it. Exit codes come from the errors raised (see
:mod:`coordinator.exceptions`); :mod:`coordinator.cli` prints the progress it is given."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio

from coordinator.commands import daemon_running, paused_error, read_pause, read_status
from coordinator.exceptions import DeployFailed, NoDaemonError, WaitTimeoutError
from coordinator.layout import Layout
from coordinator.marker import DeployRequest
from coordinator.records import AttemptResult, StageState, StatusRecord, StatusState

__all__ = ["NO_DAEMON_GRACE", "wait_for", "wait_for_stage"]

#: ``--wait`` gives up (exit 5) once no coordinator has held ROOT's lock for this many seconds
NO_DAEMON_GRACE = 5.0


async def wait_for(
    layout: Layout,
    req: DeployRequest,
    seconds: float,
    on_progress: Callable[[StatusRecord], None] | None = None,
    interval: float = 0.01,
    *,
    on_poll: Callable[[], None] | None = None,
    no_daemon_grace: float = NO_DAEMON_GRACE,
) -> StatusRecord:
    """Wait until ``req`` is current and reloaded; raise DeployFailed or WaitTimeoutError otherwise,
    and NoDaemonError (exit 5) once no coordinator has held ROOT's lock for ``no_daemon_grace``
    seconds (the marker stays written: a coordinator started later deploys it). PausedError (exit 6)
    at once when deploys are paused, or as soon as the daemon reports that it stopped deploying
    because of a pause that appeared meanwhile (a deploy already past its swap is waited for).

    ``on_progress`` gets every new status read; ``on_poll`` is called after every read without news
    (every ``interval`` seconds), e.g. to redraw elapsed times."""
    paused = await read_pause(layout)
    if paused is not None:
        raise paused_error(layout, req, paused)

    async def decide(status: StatusRecord) -> bool:
        done = _outcome(status, req)
        if done == "ok":
            return True
        if done is not None:
            message, fix = done
            raise DeployFailed(message, fix=fix or "see `coordinator status` and the daemon's log")
        if StatusState.parse(status.get("state")) is StatusState.PAUSED:
            paused = await read_pause(layout)  # the file too: a status left from before a resume does not count
            if paused is not None:
                raise paused_error(layout, req, paused)
        return False

    return await _poll_status(
        layout,
        seconds,
        decide,
        on_progress,
        interval,
        on_poll,
        no_daemon_grace,
        f"{req.tag} was not deployed",
        "deployed",
    )


async def wait_for_stage(
    layout: Layout,
    req: DeployRequest,
    seconds: float,
    on_progress: Callable[[StatusRecord], None] | None = None,
    interval: float = 0.01,
    *,
    on_poll: Callable[[], None] | None = None,
    no_daemon_grace: float = NO_DAEMON_GRACE,
) -> StatusRecord:
    """Wait until the stage request ``req`` is staged (or its release is already current); raise
    DeployFailed when its stage failed or it was refused, WaitTimeoutError and NoDaemonError as
    :func:`wait_for` does. A pause does not stop a stage (it changes nothing served)."""

    async def decide(status: StatusRecord) -> bool:
        done = _stage_outcome(status, req)
        if done is not None and done != "ok":
            message, fix = done
            raise DeployFailed(message, fix=fix or "see `coordinator status` and the daemon's log")
        return done == "ok"

    return await _poll_status(
        layout, seconds, decide, on_progress, interval, on_poll, no_daemon_grace, f"{req.tag} was not staged", "staged"
    )


async def _poll_status(
    layout: Layout,
    seconds: float,
    decide: Callable[[StatusRecord], Awaitable[bool]],
    on_progress: Callable[[StatusRecord], None] | None,
    interval: float,
    on_poll: Callable[[], None] | None,
    no_daemon_grace: float,
    not_done: str,
    verb: str,
) -> StatusRecord:
    """Read the status file every ``interval`` until ``decide`` says done (or raises), ``seconds``
    pass (WaitTimeoutError) or no coordinator held ROOT's lock for ``no_daemon_grace`` (NoDaemonError)."""
    deadline = time.monotonic() + seconds
    last: StatusRecord | None = None
    lock_free_since: float | None = None
    next_lock_check = 0.0
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_lock_check:  # a few times a second: the probe opens the lock file
            next_lock_check = now + 0.25
            if await daemon_running(layout):
                lock_free_since = None
            elif lock_free_since is None:
                lock_free_since = now
            elif now - lock_free_since >= no_daemon_grace:
                raise NoDaemonError(
                    f"no coordinator is running on {layout.root}; the request is saved and will be {verb} "
                    "when one starts",
                    fix=f"start one (`coordinator run --root {layout.root} --repo URL`); follow it with "
                    f"`coordinator status --root {layout.root}`",
                )
        status = await read_status(layout)
        if status is not None and status != last:
            last = status
            if on_progress is not None:
                on_progress(status)
            if await decide(status):
                return status
        elif on_poll is not None:
            on_poll()
        await anyio.sleep(interval)
    raise WaitTimeoutError(
        f"{not_done} within {seconds:g} s",
        fix=f"the request stays saved; follow it with `coordinator status --root {layout.root}`",
    )


def _stage_outcome(status: StatusRecord, req: DeployRequest) -> Literal["ok"] | tuple[str, str | None] | None:
    """'ok' (staged, or already current), an error message with its fix, or None while undecided."""
    stage = status.get("stage")
    if not isinstance(stage, dict):
        return None
    desired = stage.get("desired")
    state = StageState.parse(stage.get("state"))
    err = stage.get("error")
    if not isinstance(desired, dict) or desired.get("id") != req.request_id:
        ours = hashlib.sha256(req.to_json().encode()).hexdigest()
        if state is StageState.INVALID and stage.get("digest") == ours:
            return f"the stage request was refused: {_message(err, 'invalid')}", _fix(err)
        return None
    if state in (StageState.STAGED, StageState.CURRENT):
        return "ok"
    if state is StageState.FAILED:
        return f"stage of {req.tag} failed: {_message(err, 'unknown error')}", _fix(err)
    return None


def _outcome(status: StatusRecord, req: DeployRequest) -> Literal["ok"] | tuple[str, str | None] | None:
    """'ok', an error message with its fix, or None while undecided."""
    desired = status.get("desired")
    attempt = status.get("last_attempt")
    state = StatusState.parse(status.get("state"))
    if not isinstance(desired, dict) or desired.get("id") != req.request_id:
        ours = hashlib.sha256(req.to_json().encode()).hexdigest()
        if state is StatusState.INVALID and status.get("marker_digest") == ours:
            err = status.get("marker_error")
            return f"the marker was refused: {_message(err, 'invalid')}", _fix(err)
        return None
    result = AttemptResult.parse(attempt.get("result")) if isinstance(attempt, dict) else None
    if isinstance(attempt, dict) and attempt.get("id") == req.request_id and result is not None and result.failed:
        err = attempt.get("error")
        if result is AttemptResult.ROLLED_BACK:
            return f"deploy of {req.tag} was rolled back: {_message(err, 'health check failed')}", _fix(err)
        return f"deploy of {req.tag} failed: {_message(err, 'unknown error')}", _fix(err)
    current = status.get("current")
    if (
        state is StatusState.IDLE
        and isinstance(current, dict)
        and current.get("tag") == req.tag
        and status.get("reloaded") == current.get("release")
    ):
        return "ok"
    if state is not None and state.failed:
        err = status.get("error")
        verb = "was rolled back" if state is StatusState.ROLLED_BACK else "failed"
        return f"deploy of {req.tag} {verb}: {_message(err, 'unknown error')}", _fix(err)
    return None


def _message(err: object, default: str) -> str:
    message = err.get("message") if isinstance(err, dict) else None
    return message if isinstance(message, str) and message else default


def _fix(err: object) -> str | None:
    fix = err.get("fix") if isinstance(err, dict) else None
    return fix if isinstance(fix, str) and fix else None
