"""The executor: observes the marker, the git cache and the volume, asks :func:`coordinator.plan.plan`
what to do, and performs the steps.

Ordering that makes a crash at any instant harmless:

1. a new release is written under a hidden temporary name in ``releases/``, flushed to disk, then
   renamed to its final name (``releases/<name>``) and the directory fsynced: a release that has its
   final name is complete;
2. ``current`` is replaced by renaming a temporary symlink over it, and ``ROOT`` is fsynced;
3. the state file records the reload about to be done (release and token), the reload is done, and
   the state file records it as done. At start, a ``current`` whose reload is not recorded is reloaded
   once (unless the reload strategy can tell it already happened: the touch strategy compares mtimes).

Steps 2 and 3 run shielded from cancellation: SIGTERM waits for them, so a swapped ``current`` is never
left without its reload. Steps before the swap are cancellable (by SIGTERM, or when a newer marker
supersedes the deploy) and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import anyio
import structlog

from coordinator.config import Config
from coordinator.exceptions import BuildError, CoordinatorError, LayoutError, MarkerError, RolledBack, VerifyError
from coordinator.failpoints import failpoint
from coordinator.fsutil import (
    describe_os_error,
    fsync_dir,
    is_real_dir,
    remove_tree,
    swap_symlink,
    sync_tree,
    temp_name,
)
from coordinator.git import GitCache
from coordinator.health import expected_text, wait_healthy
from coordinator.inuse import releases_in_use
from coordinator.marker import MARKER_MAX_BYTES, DeployRequest, parse_marker
from coordinator.plan import Action, Observation, Plan, ReleaseInfo, Step, plan, plan_prune
from coordinator.prepare import load_previous, prepare_release
from coordinator.proc import run_in_group
from coordinator.reload import Reloader, make_reloader
from coordinator.state import (
    STATUS_VERSION,
    PendingReload,
    ReleaseMeta,
    State,
    append_journal,
    iso,
    load_state,
    read_journal,
    read_release_meta,
    save_state,
    write_json,
    write_release_meta,
)

__all__ = ["Attempt", "Deployer", "MarkerReading", "read_current"]

log = structlog.get_logger("coordinator")

#: phases not announced in the status file while they run: they are short, and swap and reload are on
#: the marker -> reload path (a status write there costs about 2 ms of it); they show once done
_UNANNOUNCED_PHASES = frozenset({Step.SWAP, Step.RELOAD, Step.PRUNE})


@dataclass(slots=True)
class MarkerReading:
    """The marker as read once: its request or its error, and a digest of its bytes."""

    request: DeployRequest | None
    error: CoordinatorError | None
    digest: str | None  # None when there is no marker


@dataclass(slots=True)
class Attempt:
    """One deploy attempt, as journaled and shown in the status file."""

    tag: str
    request_id: str | None
    sha: str | None = None
    release: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: str = "running"  # running | success | failed | cancelled
    error: dict[str, Any] | None = None
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def duration_ms(self) -> float | None:
        return round((self.finished - self.started) * 1000, 1) if self.finished else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tag": self.tag,
            "id": self.request_id,
            "sha": self.sha,
            "release": self.release,
            "result": self.result,
            "error": self.error,
            "started_at": iso(self.started),
            "finished_at": iso(self.finished) if self.finished else None,
            "duration_ms": self.duration_ms,
            "phases_ms": dict(self.phases),
        }
        return out


def read_current(layout_root: Path) -> str | None:
    """The release name ``ROOT/current`` points to, or None when it is missing or not ours.

    Raises LayoutError when ``current`` is a real directory (the old in-place layout), which
    coordinator refuses to replace.
    """
    current = layout_root / "current"
    try:
        st = os.lstat(current)
    except FileNotFoundError:
        return None
    if not stat.S_ISLNK(st.st_mode):
        raise LayoutError(
            f"{current} is not a symlink",
            fix="move the old tree away; coordinator manages current as a symlink to releases/<name>",
        )
    target = os.readlink(current)
    prefix = "releases/"
    name = target[len(prefix) :] if target.startswith(prefix) else ""
    if not name or "/" in name or name.startswith(".") or not is_real_dir(layout_root / "releases" / name):
        log.warning("current_not_ours", target=target)
        return None
    return name


class Deployer:
    """Converges the volume to the marker. One instance per daemon, used under the ROOT lock."""

    def __init__(self, config: Config, reloader: Reloader | None = None) -> None:
        self.config = config
        self.layout = config.layout
        self.git = GitCache(self.layout.git_dir, config.repo, config.git_timeout)
        self.reloader: Reloader = reloader or make_reloader(config)
        self.state = State()
        self._status: dict[str, Any] = {}
        self._last_attempt: Attempt | None = None
        self._last_success: dict[str, Any] | None = None
        self._supersede_scope: anyio.CancelScope | None = None
        self._inflight: DeployRequest | None = None
        self._inflight_digest: str | None = None
        self.on_phase: Callable[[str, float], None] | None = None
        # called when an attempt starts (result "running") and again once it is finished and journaled
        self.on_attempt: Callable[[Attempt], None] | None = None
        self._pending_verify: dict[str, Any] | None = None

    # ------------------------------------------------------------------ start-up

    async def startup(self) -> None:
        """Check the volume, create the layout, remove temporary leftovers, recover a pending reload."""
        await anyio.to_thread.run_sync(self._prepare_layout)
        self.state = await anyio.to_thread.run_sync(load_state, self.layout.state_file)
        await self.git.ensure()
        current = await anyio.to_thread.run_sync(read_current, self.layout.root)
        pending = self.state.pending
        if (
            current is not None
            and pending is not None
            and pending.release == current
            and await self.reloader.already_done(pending.token)
        ):
            # crashed after the reload but before recording it: record, do not reload again
            self.state.previous = self.state.reloaded if self.state.reloaded != current else self.state.previous
            self.state.reloaded = current
            self.state.pending = None
            if isinstance(pending.token, int):
                self.state.last_reload_mtime = pending.token
            await anyio.to_thread.run_sync(save_state, self.layout.state_file, self.state)
            log.info("reload_recovered", release=current, token=pending.token)
        self._last_success = await anyio.to_thread.run_sync(self._last_journal_success)
        verify = self.state.extra.get("verify")
        if isinstance(verify, dict) and verify.get("release") == current and self.config.health_url:
            self._pending_verify = verify

    def _prepare_layout(self) -> None:
        lay = self.layout
        root = lay.root
        if not root.is_dir():
            raise LayoutError(f"root {root} is not a directory", fix="create it or fix --root")
        for d in (lay.releases, lay.state_dir, lay.meta_dir, lay.tmp_dir, lay.git_dir):
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                os.mkdir(d, 0o755)
                fsync_dir(d.parent)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise LayoutError(
                    f"{d} is not a directory (a symlink or file was planted there)",
                    fix=f"remove {d}; coordinator recreates it",
                )
        read_current(root)  # refuse a real `current` directory up front
        removed: list[str] = []
        for d in (lay.releases, root, lay.state_dir, lay.meta_dir, lay.tmp_dir, lay.status_file.parent):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                if ".tmp-" in entry.name and entry.name.startswith("."):
                    remove_tree(Path(entry.path))
                    removed.append(
                        str(Path(entry.path).relative_to(root)) if d != lay.status_file.parent else entry.path
                    )
        if removed:
            log.info("leftovers_removed", paths=sorted(removed))

    def _last_journal_success(self) -> dict[str, Any] | None:
        for entry in reversed(read_journal(self.layout.journal, 200)):
            if entry.get("result") == "success":
                return dict(entry)
        return None

    # ------------------------------------------------------------------ observing

    async def read_marker(self) -> MarkerReading:
        """Read the marker with a size cap; never blocks on a FIFO; validates its content."""
        path = self.layout.marker
        try:
            async with aiofiles.open(path, "rb", opener=_regular_file_opener) as f:
                data = await f.read(MARKER_MAX_BYTES + 1)
        except FileNotFoundError:
            return MarkerReading(None, None, None)
        except _NotRegularFile:
            err = MarkerError(f"marker {path} is not a regular file", fix="write the tag to a regular file")
            return MarkerReading(None, err, "not-a-file")
        except OSError as e:
            err = MarkerError(f"cannot read marker {path}: {e.strerror}", fix="check the marker's permissions")
            return MarkerReading(None, err, f"oserror-{e.errno}")
        digest = hashlib.sha256(data).hexdigest()
        try:
            return MarkerReading(parse_marker(data, self.config.tag_pattern), None, digest)
        except MarkerError as e:
            return MarkerReading(None, e, digest)

    def _observe_disk(self) -> tuple[str | None, list[ReleaseInfo]]:
        """`current` and the releases on disk, in one trip to a worker thread."""
        return read_current(self.layout.root), self._list_releases()

    def _list_releases(self) -> list[ReleaseInfo]:
        out = []
        try:
            entries = list(os.scandir(self.layout.releases))
        except FileNotFoundError:
            return []
        for e in entries:
            if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
                continue
            meta = read_release_meta(self.layout.meta_dir, e.name)
            if meta is None:
                out.append(ReleaseInfo(e.name, known=False))
            else:
                out.append(ReleaseInfo(e.name, meta.created, meta.ok))
        return out

    # ------------------------------------------------------------------ reconciling

    async def reconcile(self) -> Attempt | None:
        """Converge once: returns the attempt made (None if nothing needed doing)."""
        reading = await self.read_marker()
        current, on_disk = await anyio.to_thread.run_sync(self._observe_disk)
        if self._pending_verify is not None:
            pending, self._pending_verify = self._pending_verify, None
            if pending.get("release") == current and current is not None:
                return await self._resume_verify(reading, current, pending)
        if reading.error is not None:
            self._log_marker_error(reading)
            if current is not None and self.state.reloaded != current:
                with contextlib.suppress(CoordinatorError):  # logged; retried on the next reconcile
                    await self._recovery_reload(current)
            await self._publish("invalid", reading, current)
            return None
        req = reading.request
        blocked = reading.digest is not None and reading.digest == self.state.failed_marker
        releases = frozenset(r.name for r in on_disk)
        cached = await self.git.resolve(req.tag) if req is not None and not blocked else None
        obs = Observation(
            request=req,
            current=current,
            reloaded=self.state.reloaded,
            releases=releases,
            cached_sha=cached,
            blocked=blocked,
            has_build=bool(self.config.build_command),
            has_health=self.config.health_url is not None,
        )
        p = plan(obs)
        if p.action is Action.NOOP:
            await self._publish("idle" if req is not None else "waiting", reading, current)
            return None
        if p.action is Action.WAIT:
            kind = (self.state.failed_error or {}).get("kind")
            await self._publish("rolled_back" if kind == "rolled_back" else "failed", reading, current)
            return None
        if p.action is Action.RELOAD:
            assert current is not None
            try:
                await self._recovery_reload(current)
            except CoordinatorError as e:  # logged by _recovery_reload; retried on the next reconcile
                await self._publish("failed", reading, current, error=e.as_dict())
                return None
            await self._publish("idle" if req is not None else "waiting", reading, current)
            return None
        assert req is not None
        attempt = self._start_attempt(Attempt(tag=req.tag, request_id=req.request_id))
        if p.action is Action.FETCH or Step.PREPARE in p.steps:
            # a long deploy: show it. A swap to a release on disk skips this write (it would delay the
            # swap by a file and a directory fsync); the status is written once it is done.
            await self._publish("deploying", reading, current)
        log.info("deploy_started", tag=req.tag, sha=req.sha, request_id=req.request_id, current=current)
        try:
            if p.action is Action.FETCH:
                with self._supersedable(req, reading.digest) as scope:
                    async with self._phase(attempt, Step.FETCH):
                        sha = await self.git.fetch_tag(req.tag)
                        failpoint("after-fetch")
                    p = plan(replace(obs, cached_sha=sha, fetched=True))
                if scope.cancelled_caught:
                    p = Plan(Action.NOOP, reason="superseded")
                    attempt.result = "cancelled"
            if p.action is Action.ERROR:
                raise MarkerError(p.reason, fix="fix the sha in the marker, or the tag", tag=req.tag)
            attempt.sha = p.sha
            attempt.release = p.target
            if p.action is Action.NOOP:
                if attempt.result == "running":
                    attempt.result = "success"
            else:
                assert p.action is Action.DEPLOY and p.target is not None and p.sha is not None
                cancelled = await self._deploy(attempt, req, reading.digest, p.target, p.sha, p.steps, current)
                attempt.result = "cancelled" if cancelled else "success"
        except CoordinatorError as e:
            await self._attempt_failed(attempt, e, reading, permanent=not e.retryable)
        except OSError as e:
            attempt.result = "failed"
            attempt.error = describe_os_error(e)
            log.error(
                "deploy_failed", **{**attempt.error, "tag": req.tag, "request_id": req.request_id, "retryable": True}
            )
        finally:
            if attempt.result == "running":
                attempt.result = "cancelled"
            with anyio.CancelScope(shield=True):
                await self._finish_attempt(attempt, reading)
        if attempt.result == "success":
            log.info(
                "deploy_succeeded",
                tag=req.tag,
                sha=attempt.sha,
                release=attempt.release,
                request_id=req.request_id,
                duration_ms=attempt.duration_ms,
            )
        elif attempt.result == "cancelled":
            log.info("deploy_superseded", tag=req.tag, release=attempt.release)
        return attempt

    async def _deploy(
        self,
        attempt: Attempt,
        req: DeployRequest,
        digest: str | None,
        name: str,
        sha: str,
        steps: tuple[Step, ...],
        previous_current: str | None,
    ) -> bool:
        """Perform the deploy steps; returns True if a newer marker cancelled it before the swap."""
        lay = self.layout
        if Step.PREPARE in steps:
            with self._supersedable(req, digest) as scope:
                await self._build_release(attempt, req, name, sha, previous_current)
            if scope.cancelled_caught:
                return True
        previous_before = self.state.previous
        with anyio.CancelScope(shield=True):
            async with self._phase(attempt, Step.SWAP):
                await anyio.to_thread.run_sync(swap_symlink, lay.current, f"releases/{name}")
            log.info("swapped", release=name, previous=previous_current)
            async with self._phase(attempt, Step.RELOAD):
                verify = {"release": name, "back_to": previous_current, "previous_before": previous_before}
                await self._reload(name, verify=verify if Step.VERIFY in steps else None)
        if Step.VERIFY in steps:
            await self._verify_or_roll_back(attempt, name, req.tag, sha, previous_current, previous_before)
        async with self._phase(attempt, Step.PRUNE):
            await self._prune()
        return False

    async def _resume_verify(self, reading: MarkerReading, current: str, pending: dict[str, Any]) -> Attempt:
        """A daemon killed while verifying ``current`` verifies it again at start, and rolls back."""
        meta = await anyio.to_thread.run_sync(read_release_meta, self.layout.meta_dir, current)
        tag, sha = (meta.tag, meta.sha) if meta else (current, "")
        attempt = self._start_attempt(Attempt(tag=tag, request_id=None, sha=sha, release=current))
        log.info("verify_resumed", release=current)
        try:
            back_to = pending.get("back_to")
            before = pending.get("previous_before")
            await self._verify_or_roll_back(
                attempt,
                current,
                tag,
                sha,
                back_to if isinstance(back_to, str) else None,
                before if isinstance(before, str) else None,
            )
            attempt.result = "success"
        except CoordinatorError as e:
            # permanent for the marker only when the marker asks for this very tag
            permanent = reading.request is not None and reading.request.tag == tag
            await self._attempt_failed(attempt, e, reading, permanent=permanent)
        await self._finish_attempt(attempt, reading)
        return attempt

    def _start_attempt(self, attempt: Attempt) -> Attempt:
        self._last_attempt = attempt
        if self.on_attempt is not None:
            self.on_attempt(attempt)
        return attempt

    async def _attempt_failed(
        self, attempt: Attempt, e: CoordinatorError, reading: MarkerReading, *, permanent: bool
    ) -> None:
        """Record a failed attempt; a permanent failure blocks these marker bytes until they change."""
        attempt.result = "rolled_back" if isinstance(e, RolledBack) else "failed"
        attempt.error = e.as_dict()
        if permanent:
            self.state.failed_marker = reading.digest
            self.state.failed_error = attempt.error
            await anyio.to_thread.run_sync(save_state, self.layout.state_file, self.state)
        log.error(
            "deploy_failed",
            **{**e.as_dict(), "tag": attempt.tag, "request_id": attempt.request_id, "retryable": not permanent},
        )

    async def _finish_attempt(self, attempt: Attempt, reading: MarkerReading) -> None:
        """Journal a finished attempt, remember a success, and publish the resulting state."""
        attempt.finished = time.time()
        failpoint("before-journal")
        await anyio.to_thread.run_sync(append_journal, self.layout.journal, {"event": "attempt", **attempt.to_dict()})
        failpoint("after-journal")
        if self.on_attempt is not None:
            self.on_attempt(attempt)
        current = await anyio.to_thread.run_sync(read_current, self.layout.root)
        if attempt.result == "success":
            self._last_success = attempt.to_dict()
            if self.state.failed_marker is not None:
                self.state.failed_marker = None
                self.state.failed_error = None
                await anyio.to_thread.run_sync(save_state, self.layout.state_file, self.state)
        state = {
            "success": "idle",
            "failed": "failed",
            "rolled_back": "rolled_back",
            "cancelled": "deploying",
        }.get(attempt.result, "failed")
        await self._publish(state, reading, current)

    async def _verify_or_roll_back(
        self,
        attempt: Attempt,
        name: str,
        tag: str,
        sha: str,
        back_to: str | None,
        previous_before: str | None,
    ) -> None:
        """Check the health URL serves ``name``; if not, go back to ``back_to`` and raise RolledBack.

        The state file records the verification as pending (with ``back_to``) from the reload on,
        so a daemon killed while verifying verifies again at restart instead of keeping an
        unchecked release.
        """
        url = self.config.health_url
        assert url is not None
        expect = expected_text(self.config.health_expect, tag, sha)
        async with self._phase(attempt, Step.VERIFY):
            result = await wait_healthy(url, expect, self.config.health_timeout)
        if result.ok:
            self.state.extra.pop("verify", None)
            await anyio.to_thread.run_sync(save_state, self.layout.state_file, self.state)
            log.info("verified", release=name, url=url, checks=result.attempts)
            return
        log.error("verify_failed", release=name, url=url, reason=result.reason)
        if back_to is None or not is_real_dir(self.layout.releases / back_to):
            self.state.extra.pop("verify", None)
            await anyio.to_thread.run_sync(save_state, self.layout.state_file, self.state)
            raise VerifyError(
                f"{tag} failed its health check and there is no previous release to roll back to: {result.reason}",
                fix="fix the release and deploy again; current still points to it",
                release=name,
            )
        with anyio.CancelScope(shield=True):
            async with self._phase(attempt, Step.ROLLBACK):
                await anyio.to_thread.run_sync(swap_symlink, self.layout.current, f"releases/{back_to}")
                log.warning("rolling_back", release=name, to=back_to)
                await self._reload(back_to)
                meta = await anyio.to_thread.run_sync(read_release_meta, self.layout.meta_dir, back_to)
                back_ok: bool | None = None
                if meta is not None:
                    back_expect = expected_text(self.config.health_expect, meta.tag, meta.sha)
                    back = await wait_healthy(url, back_expect, self.config.health_timeout)
                    back_ok = back.ok
                    if not back.ok:
                        log.error("rollback_unverified", release=back_to, reason=back.reason)
            failed = await anyio.to_thread.run_sync(read_release_meta, self.layout.meta_dir, name)
            if failed is not None:
                await anyio.to_thread.run_sync(write_release_meta, self.layout.meta_dir, replace(failed, ok=False))
            self.state.previous = previous_before
            self.state.extra.pop("verify", None)
            await anyio.to_thread.run_sync(save_state, self.layout.state_file, self.state)
        async with self._phase(attempt, Step.PRUNE):
            await self._prune()  # the failed release is marked, so it goes now and never counts
        back_tag = meta.tag if meta else back_to
        raise RolledBack(
            f"{tag} failed its health check and was rolled back to {back_tag}: {result.reason}",
            fix="fix the release and deploy a new tag; this one is not retried until the marker changes",
            release=name,
            rolled_back_to=back_to,
            rollback_verified=back_ok,
        )

    async def _build_release(
        self, attempt: Attempt, req: DeployRequest, name: str, sha: str, previous_current: str | None
    ) -> None:
        """Prepare, build and publish release ``name`` under a hidden temporary name.

        The release is prepared from ``previous_current`` (the release ``current`` points to) when
        that is exact and safe, sharing its unchanged files by hard links (see
        :mod:`coordinator.prepare`); otherwise, and always when a build command is configured, by a
        full checkout: a build could modify a file in place and so write through an inode shared
        with the published previous release.
        """
        lay = self.layout
        tmp = lay.releases / temp_name(name)
        try:
            async with self._phase(attempt, Step.PREPARE):
                await anyio.to_thread.run_sync(os.mkdir, tmp, 0o755)
                previous = await anyio.to_thread.run_sync(load_previous, lay, previous_current)
                stats = await prepare_release(
                    self.git,
                    sha,
                    tmp,
                    lay.tmp_dir / temp_name("index"),
                    previous,
                    build_command=bool(self.config.build_command),
                )
                log.info("prepare_stats", tag=req.tag, release=name, previous=previous_current, **stats.as_log())
                failpoint("during-prepare")
            if self.config.build_command:
                async with self._phase(attempt, Step.BUILD):
                    prev = str(lay.releases / previous_current) if previous_current else ""
                    await self._run_build(tmp, name, req.tag, sha, prev)
            async with self._phase(attempt, Step.PUBLISH):
                await anyio.to_thread.run_sync(self._publish_release, tmp, name, req.tag, sha)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_tree, tmp)
            raise

    def _publish_release(self, tmp: Path, name: str, tag: str, sha: str) -> None:
        lay = self.layout
        os.chmod(tmp, 0o755)
        failpoint("before-publish")
        sync_tree(tmp)
        failpoint("after-release-fsync")
        meta = ReleaseMeta(name=name, tag=tag, sha=sha, created=time.time())
        write_release_meta(lay.meta_dir, meta)
        # the app-facing metadata, next to the release directory (never modified once published)
        write_release_meta(lay.releases, meta, app_facing=True)
        os.rename(tmp, lay.releases / name)
        failpoint("after-release-rename")
        fsync_dir(lay.releases)

    async def _run_build(self, cwd: Path, name: str, tag: str, sha: str, previous: str) -> None:
        """Run the build command in its own process group; kill the whole group on timeout."""
        cmd = self.config.build_command
        assert cmd
        env = {
            **os.environ,
            **self.config.extra_env,
            "RELEASE_DIR": str(cwd),
            "RELEASE_NAME": name,
            "TAG": tag,
            "SHA": sha,
            "PREVIOUS_RELEASE": previous,
        }
        timeout = self.config.build_timeout
        result = await run_in_group(["/bin/sh", "-c", cmd], limit_s=timeout, cwd=cwd, env=env, merge_stderr=True)
        timed_out = result.timed_out
        tail = result.stdout.decode("utf-8", "replace").strip().splitlines()[-20:]
        if timed_out:
            raise BuildError(
                f"build command timed out after {timeout:g} s (its process group was killed)",
                fix="make the build faster or raise --build-timeout",
                output="\n".join(tail),
            )
        if result.returncode != 0:
            raise BuildError(
                f"build command failed with exit code {result.returncode}",
                fix="see the output in the log; current is unchanged",
                output="\n".join(tail),
                rc=result.returncode,
            )

    async def _reload(self, name: str, verify: dict[str, Any] | None = None) -> None:
        """Reload for ``name`` (already current), recording it before and after in the state file.

        With ``verify``, the state also records that ``name`` still has to pass its health check
        (and where to go back to), in the same write.
        """
        st = self.state
        token = self.reloader.token(st.last_reload_mtime)
        if st.reloaded != name:
            st.previous = st.reloaded
        if verify is not None:
            st.extra["verify"] = verify
        st.pending = PendingReload(name, token)
        # Not fsynced: it only has to survive a kill -9 (the page cache does). After a power loss the
        # pending record may be lost and the restart reloads once more: harmless, and it keeps disk
        # flushes out of the marker -> reload path.
        await anyio.to_thread.run_sync(partial(save_state, self.layout.state_file, st, durable=False))
        failpoint("before-reload")
        await self.reloader.reload(token, release=name)
        failpoint("after-reload")
        st.reloaded = name
        st.pending = None
        if isinstance(token, int):
            st.last_reload_mtime = token
        await anyio.to_thread.run_sync(save_state, self.layout.state_file, st)
        failpoint("after-reload-recorded")
        log.info("reloaded", release=name, strategy=self.reloader.name, token=token)

    async def _recovery_reload(self, current: str) -> None:
        with anyio.CancelScope(shield=True):
            log.info("reload_pending", release=current, reloaded=self.state.reloaded)
            started = time.monotonic()
            try:
                await self._reload(current)
            except CoordinatorError as e:
                log.error("reload_failed", **{**e.as_dict(), "release": current, "retryable": e.retryable})
                raise
            log.info("reload", release=current, duration_ms=_ms(started), recovery=True)

    async def _prune(self) -> None:
        releases = await anyio.to_thread.run_sync(self._list_releases)
        current = await anyio.to_thread.run_sync(read_current, self.layout.root)
        in_use = await anyio.to_thread.run_sync(releases_in_use, self.layout.releases)
        doomed = plan_prune(releases, current, self.state.previous, self.config.keep, sorted(in_use))
        for name in doomed:
            await anyio.to_thread.run_sync(remove_tree, self.layout.releases / name)
            await anyio.to_thread.run_sync(_unlink, self.layout.meta_dir / f"{name}.json")
            await anyio.to_thread.run_sync(_unlink, self.layout.releases / f"{name}.json")
        if doomed:
            log.info("pruned", releases=doomed)

    # ------------------------------------------------------------------ superseding

    @contextlib.contextmanager
    def _supersedable(self, req: DeployRequest, digest: str | None) -> Iterator[anyio.CancelScope]:
        """A cancel scope that :meth:`check_superseded` cancels when a newer marker asks for another
        release. Only fetch, prepare and build run inside one; the swap and reload never do."""
        scope = anyio.CancelScope()
        self._supersede_scope, self._inflight, self._inflight_digest = scope, req, digest
        try:
            with scope:
                yield scope
        finally:
            self._supersede_scope = None
            self._inflight = self._inflight_digest = None

    async def check_superseded(self) -> None:
        """Called on every watch event: cancel a deploy not yet swapped if the marker asks for another."""
        scope, inflight = self._supersede_scope, self._inflight
        if scope is None or inflight is None:
            return
        reading = await self.read_marker()
        if reading.request is None or reading.digest == self._inflight_digest:
            return
        new = reading.request
        if (new.tag, new.sha) != (inflight.tag, inflight.sha) and scope is self._supersede_scope:
            log.info("superseding", old_tag=inflight.tag, new_tag=new.tag)
            scope.cancel()

    # ------------------------------------------------------------------ status and logs

    @contextlib.asynccontextmanager
    async def _phase(self, attempt: Attempt, step: Step) -> AsyncIterator[None]:
        started = time.monotonic()
        try:
            if self._status and step not in _UNANNOUNCED_PHASES:
                await self._announce_phase(attempt, step)
                started = time.monotonic()
            yield
        finally:
            ms = _ms(started)
            attempt.phases[step.value] = ms
            if self._status.get("phase") is not None:
                self._status = {**self._status, "phase": None}
            log.info(step.value, duration_ms=ms, tag=attempt.tag, release=attempt.release)
            if self.on_phase is not None:
                self.on_phase(step.value, ms)

    async def _announce_phase(self, attempt: Attempt, step: Step) -> None:
        """Show the running phase (for `deploy --wait`): a copy of the last status with `phase` and the
        attempt in flight (its `phases_ms` are the phases done), written without fsync and without
        reading the volume (except after the swap, for `current`)."""
        live = {
            **self._status,
            "state": "deploying",
            "marker_error": None,
            "error": None,
            "reloaded": self.state.reloaded,
            "last_attempt": attempt.to_dict(),
            "phase": {"name": step.value, "tag": attempt.tag, "id": attempt.request_id, "started_at": iso()},
        }
        desired = live.get("desired") or {}
        if desired.get("id") != attempt.request_id or desired.get("tag") != attempt.tag:
            # a swap to a release on disk publishes nothing before it: the last status is older
            live["desired"] = {"tag": attempt.tag, "sha": None, "id": attempt.request_id}
        self._status = live
        after_swap = step in (Step.VERIFY, Step.ROLLBACK)

        def write() -> dict[str, Any]:
            if after_swap:
                with contextlib.suppress(CoordinatorError):
                    live["current"] = self._release_ref(read_current(self.layout.root))
                live["previous"] = self._release_ref(self.state.previous)
            with contextlib.suppress(OSError):  # a hint only: the final status write reports errors
                write_json(self.layout.status_file, {**live, "updated_at": iso()}, durable=False)
            return live

        self._status = await anyio.to_thread.run_sync(write)

    def _log_marker_error(self, reading: MarkerReading) -> None:
        assert reading.error is not None
        key = reading.digest
        if self._status.get("marker_digest") != key:
            log.error("marker_invalid", **reading.error.as_dict())

    def _release_ref(self, name: str | None) -> dict[str, Any] | None:
        if not name:
            return None
        meta = read_release_meta(self.layout.meta_dir, name)
        return {"release": name, "tag": meta.tag if meta else None, "sha": meta.sha if meta else None}

    async def _publish(
        self, state: str, reading: MarkerReading, current: str | None, error: dict[str, Any] | None = None
    ) -> None:
        """Write the status file if anything in it changed."""
        req = reading.request
        status: dict[str, Any] = {
            "version": STATUS_VERSION,
            "state": state,
            "pid": os.getpid(),
            "desired": {"tag": req.tag, "sha": req.sha, "id": req.request_id} if req else None,
            "marker_error": reading.error.as_dict() if reading.error else None,
            "marker_digest": reading.digest,
            "current": await anyio.to_thread.run_sync(self._release_ref, current),
            "previous": await anyio.to_thread.run_sync(self._release_ref, self.state.previous),
            "reloaded": self.state.reloaded,
            "last_attempt": self._last_attempt.to_dict() if self._last_attempt else None,
            "last_success": self._last_success,
            "phase": None,
            "error": None,
        }
        if error is not None:
            status["error"] = error
        elif reading.error:
            status["error"] = reading.error.as_dict()
        elif state in ("failed", "rolled_back"):
            status["error"] = (
                self._last_attempt.error if self._last_attempt and self._last_attempt.error else self.state.failed_error
            )
        if status == self._status:
            return
        self._status = status
        failpoint("before-status")
        await anyio.to_thread.run_sync(write_json, self.layout.status_file, {**status, "updated_at": iso()})
        failpoint("after-status")

    async def publish_stopped(self) -> None:
        if self._status:
            self._status = {**self._status, "state": "stopped"}
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    write_json, self.layout.status_file, {**self._status, "updated_at": iso()}
                )


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


class _NotRegularFile(OSError):
    pass


def _regular_file_opener(path: str, flags: int) -> int:
    """Open without blocking on a FIFO, and refuse anything but a regular file (runs in a thread)."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotRegularFile(path)
    return fd


def new_request_id() -> str:
    """A fresh request id for ``coordinator deploy``."""
    return uuid.uuid4().hex[:16]
