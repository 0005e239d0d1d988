"""What the client commands do (deploy, wait, status, releases, rollback), as plain functions that
return data; :mod:`coordinator.cli` only parses arguments and prints."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from coordinator.config import Layout
from coordinator.deployer import new_request_id, read_current
from coordinator.exceptions import CoordinatorError, DeployFailed, WaitTimeoutError
from coordinator.fsutil import atomic_write
from coordinator.marker import DeployRequest, validate_sha, validate_tag
from coordinator.state import load_state, read_json, read_release_meta

__all__ = ["ReleaseRow", "list_releases", "read_status", "request_deploy", "request_rollback", "wait_for"]


async def request_deploy(layout: Layout, tag: str, sha: str | None = None) -> DeployRequest:
    """Write the marker atomically (temp + rename) for ``tag`` with a fresh request id."""
    req = DeployRequest(
        tag=validate_tag(tag),
        sha=validate_sha(sha) if sha else None,
        request_id=new_request_id(),
    )
    if not layout.marker.parent.is_dir():
        raise CoordinatorError(
            f"the marker's directory {layout.marker.parent} does not exist",
            fix="check --root / --marker",
        )
    await anyio.to_thread.run_sync(atomic_write, layout.marker, req.to_json().encode())
    return req


async def read_status(layout: Layout) -> dict[str, Any] | None:
    return await anyio.to_thread.run_sync(read_json, layout.status_file)


async def wait_for(
    layout: Layout,
    req: DeployRequest,
    seconds: float,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    interval: float = 0.01,
) -> dict[str, Any]:
    """Wait until ``req`` is current and reloaded; raise DeployFailed or WaitTimeoutError otherwise."""
    deadline = time.monotonic() + seconds
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        status = await read_status(layout)
        if status is not None and status != last:
            last = status
            if on_progress is not None:
                on_progress(status)
            done = _outcome(status, req)
            if done == "ok":
                return status
            if done is not None:
                raise DeployFailed(done, fix="see `coordinator status` and the daemon's log")
        await anyio.sleep(interval)
    raise WaitTimeoutError(
        f"{req.tag} was not deployed within {seconds:g} s",
        fix="is `coordinator run` running on this root? see `coordinator status`",
    )


def _outcome(status: dict[str, Any], req: DeployRequest) -> str | None:
    """'ok', an error message, or None while undecided."""
    desired = status.get("desired") or {}
    attempt = status.get("last_attempt") or {}
    if desired.get("id") != req.request_id:
        ours = hashlib.sha256(req.to_json().encode()).hexdigest()
        if status.get("state") == "invalid" and status.get("marker_digest") == ours:
            err = status.get("marker_error") or {}
            return f"the marker was refused: {err.get('message', 'invalid')}"
        return None
    if attempt.get("id") == req.request_id and attempt.get("result") == "failed":
        err = attempt.get("error") or {}
        return f"deploy of {req.tag} failed: {err.get('message', 'unknown error')}"
    if attempt.get("id") == req.request_id and attempt.get("result") == "rolled_back":
        err = attempt.get("error") or {}
        return f"deploy of {req.tag} was rolled back: {err.get('message', 'health check failed')}"
    current = status.get("current") or {}
    if (
        status.get("state") == "idle"
        and current.get("tag") == req.tag
        and status.get("reloaded") == current.get("release")
    ):
        return "ok"
    if status.get("state") in ("failed", "rolled_back"):
        err = status.get("error") or {}
        verb = "was rolled back" if status.get("state") == "rolled_back" else "failed"
        return f"deploy of {req.tag} {verb}: {err.get('message', 'unknown error')}"
    return None


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    name: str
    tag: str | None
    sha: str | None
    created: float | None
    current: bool
    previous: bool


def _list_releases(layout: Layout) -> list[ReleaseRow]:
    state = load_state(layout.state_file)
    try:
        current = read_current(layout.root)
    except CoordinatorError:
        current = None
    rows = []
    try:
        entries = list(os.scandir(layout.releases))
    except FileNotFoundError:
        return []
    for e in entries:
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
            continue
        meta = read_release_meta(layout.meta_dir, e.name)
        rows.append(
            ReleaseRow(
                name=e.name,
                tag=meta.tag if meta else None,
                sha=meta.sha if meta else None,
                created=meta.created if meta else None,
                current=e.name == current,
                previous=e.name == state.previous,
            )
        )
    rows.sort(key=lambda r: (r.created or 0.0, r.name), reverse=True)
    return rows


async def list_releases(layout: Layout) -> list[ReleaseRow]:
    """Releases on disk, newest first, with current and previous marked."""
    return await anyio.to_thread.run_sync(_list_releases, layout)


async def request_rollback(layout: Layout) -> DeployRequest:
    """Make the previous release desired (by tag and sha) by writing the marker."""
    rows = await list_releases(layout)
    prev = next((r for r in rows if r.previous), None)
    if prev is None or prev.tag is None or prev.sha is None:
        raise CoordinatorError(
            "there is no previous release to roll back to",
            fix="deploy a tag explicitly with `coordinator deploy TAG`",
        )
    return await request_deploy(layout, prev.tag, prev.sha)
