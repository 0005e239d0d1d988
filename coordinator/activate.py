"""Activation: the critical section that makes a published release serve, and undoes it when it fails.

1. ``current`` is replaced by renaming a temporary symlink over it, and ``ROOT`` is fsynced;
2. the state file records the reload about to be done (release and token, and the verification
   still owed), the reload is done, and the state file records it as done. At start, a ``current``
   whose reload is not recorded is reloaded once (unless the reload strategy can tell it already
   happened: the touch strategy compares mtimes);
3. with ``--health-url``, the health check must see the new release; if it does not, ``current``
   goes back to the release before it (same steps 1-2), which is checked in turn, and the failed
   release is marked failed. A daemon killed during the check checks again at start.

Steps 1 and 2, and a rollback, run shielded from cancellation: SIGTERM waits for them, so a swapped
``current`` is never left without its reload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import anyio
import structlog

from coordinator.config import Config
from coordinator.exceptions import CoordinatorError, RolledBack, VerifyError
from coordinator.failpoints import failpoint
from coordinator.fsutil import swap_symlink
from coordinator.health import expected_text, wait_healthy
from coordinator.logs import present
from coordinator.plan import Step, recover_reload, reload_to_confirm, rollback_target
from coordinator.releases import ReleaseStore
from coordinator.reload import BlockingReload, Reloader
from coordinator.report import Attempt, Reporter
from coordinator.state import save_state
from coordinator.statefile import PendingReload, PendingVerify, State

__all__ = ["Activator"]

log = structlog.get_logger("coordinator")


@dataclass(frozen=True, slots=True)
class _Done:
    """What the worker thread of an activation did."""

    state: State  # with the reload of the release recorded as pending
    swap_ms: float | None  # None: no swap
    reload_started: float  # time.monotonic() when the reload phase began (its record)
    reloaded: bool  # the reload itself was done in the thread
    error: Exception | None = None  # the reload failed (raised on the loop)


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 2)


class Activator:
    """Swaps ``current``, reloads the app server, verifies, and rolls back. Owns the reload and
    verification fields of the shared :class:`~coordinator.statefile.State`."""

    def __init__(
        self, config: Config, state: State, store: ReleaseStore, reporter: Reporter, reloader: Reloader
    ) -> None:
        self.config = config
        self.layout = config.layout
        self.state = state
        self.store = store
        self.reporter = reporter
        self.reloader = reloader

    async def save_state(self, *, durable: bool = True) -> None:
        await anyio.to_thread.run_sync(lambda: save_state(self.layout.state_file, self.state, durable=durable))

    async def confirm_pending_reload(self, current: str | None) -> None:
        """At start-up: a reload recorded as started for ``current`` that the strategy can tell did
        happen (a crash came before it was recorded) is recorded now, not done again."""
        pending = reload_to_confirm(self.state, current)
        if current is None or pending is None or not await self.reloader.already_done(pending.token):
            return
        self.state.assign(recover_reload(self.state, current, pending))
        await self.save_state()
        log.info("reload_recovered", **present(release=current, token=pending.token))

    async def activate(self, attempt: Attempt, name: str, back_to: str | None, *, verify: bool) -> None:
        """Make release ``name`` current and reloaded; with ``verify``, check it and roll back to
        ``back_to`` (the release that was current) when it fails (raises RolledBack or VerifyError).

        The swap, the record of the reload about to be done and, for a strategy whose reload is a few
        system calls (touch, FIFO, signal: :class:`~coordinator.reload.BlockingReload`), the reload
        itself are one trip to a worker thread: the marker -> reload path crosses no other hand-off."""
        pending = PendingVerify(name, back_to, self.state.previous) if verify else None
        with anyio.CancelScope(shield=True):
            done = await self._in_thread(name, pending, swap=True)
            assert done.swap_ms is not None
            self.reporter.phase_done(attempt, Step.SWAP, done.swap_ms)
            try:
                await self._finish_reload(name, done)
            finally:
                self.reporter.phase_done(attempt, Step.RELOAD, _ms(done.reload_started))
        if pending is not None:
            await self.verify_or_roll_back(attempt, pending)

    async def reload(self, name: str, verify: PendingVerify | None = None) -> None:
        """Reload for ``name`` (already current), recording it before and after in the state file.

        With ``verify``, the state also records that ``name`` still has to pass its health check
        (and where to go back to), in the same write.
        """
        await self._finish_reload(name, await self._in_thread(name, verify, swap=False))

    async def _in_thread(self, name: str, verify: PendingVerify | None, *, swap: bool) -> _Done:
        """:meth:`_activate_blocking` in a worker thread; its state adopted on the loop (the shared
        :class:`State` only ever changes on the event loop)."""
        quick = self.reloader if isinstance(self.reloader, BlockingReload) else None
        done = await anyio.to_thread.run_sync(self._activate_blocking, name, verify, swap, quick)
        self.state.assign(done.state)
        return done

    def _activate_blocking(
        self, name: str, verify: PendingVerify | None, swap: bool, quick: BlockingReload | None
    ) -> _Done:
        """Swap ``current`` to ``name`` (with ``swap``), record the reload about to be done, and do it
        with ``quick`` (blocking). A failure of the swap or the record raises (nothing recorded); a
        failure of the reload is returned, with the state that records it as pending."""
        swap_ms = None
        if swap:
            started = time.monotonic()
            swap_symlink(self.layout.current, f"releases/{name}")
            swap_ms = _ms(started)
        reload_started = time.monotonic()
        new = self._record_pending(name, verify)
        if quick is None:
            return _Done(new, swap_ms, reload_started, reloaded=False)
        assert new.pending is not None
        try:
            failpoint("before-reload")
            quick.reload_blocking(new.pending.token, name)
            failpoint("after-reload")
        except Exception as e:  # raised on the loop, once the pending record is adopted
            return _Done(new, swap_ms, reload_started, reloaded=False, error=e)
        return _Done(new, swap_ms, reload_started, reloaded=True)

    def _record_pending(self, name: str, verify: PendingVerify | None) -> State:
        """The state with the reload of ``name`` about to be done (its token from the strategy), and
        the verification still owed with ``verify``, written to the state file (blocking).

        Not fsynced: it only has to survive a kill -9 (the page cache does). After a power loss the
        pending record may be lost and the restart reloads once more: harmless, and it keeps disk
        flushes out of the marker -> reload path."""
        st = self.state
        token = self.reloader.token(st.last_reload_mtime)
        new = replace(
            st,
            previous=st.previous if st.reloaded == name else st.reloaded,
            verify=verify if verify is not None else st.verify,
            pending=PendingReload(name, token),
        )
        save_state(self.layout.state_file, new, durable=False)
        return new

    async def _finish_reload(self, name: str, done: _Done) -> None:
        """Do the reload whose pending record is written (unless the worker thread did it), then
        record it as done (fsynced)."""
        assert self.state.pending is not None
        token = self.state.pending.token
        if done.error is not None:
            raise done.error
        if not done.reloaded:
            failpoint("before-reload")
            await self.reloader.reload(token, release=name)
            failpoint("after-reload")
        st = self.state
        st.reloaded = name
        st.pending = None
        if isinstance(token, int):
            st.last_reload_mtime = token
        await self.save_state()
        failpoint("after-reload-recorded")
        log.debug("reloaded", **present(release=name, strategy=self.reloader.name, token=token))

    async def recovery_reload(self, current: str) -> None:
        """Reload ``current``, whose swap was never followed by a recorded reload (a crash)."""
        with anyio.CancelScope(shield=True):
            log.debug("reload_pending", **present(release=current, reloaded=self.state.reloaded))
            started = time.monotonic()
            try:
                await self.reload(current)
            except CoordinatorError as e:
                log.error("reload_failed", **{**e.as_dict(), "release": current, "retryable": e.retryable})
                raise
            log.info(
                "reload", release=current, duration_ms=round((time.monotonic() - started) * 1000, 2), recovery=True
            )

    async def verify_or_roll_back(self, attempt: Attempt, pending: PendingVerify) -> None:
        """Check that the health URL serves ``pending.release`` (the attempt's tag and sha); if not,
        go back to :func:`~coordinator.plan.rollback_target` and raise RolledBack, or raise
        VerifyError when there is nowhere to go back to."""
        url = self.config.health_url
        assert url is not None
        name = pending.release
        expect = expected_text(self.config.health_expect, attempt.tag, attempt.sha or "")
        async with self.reporter.phase(attempt, Step.VERIFY):
            result = await wait_healthy(url, expect, self.config.health_timeout)
        if result.ok:
            self.state.verify = None
            await self.save_state()
            log.debug("verified", release=name, url=url, checks=result.attempts)
            return
        log.error("verify_failed", release=name, url=url, reason=result.reason)
        _, on_disk = await self.store.observe()
        back_to = rollback_target(pending, (r.name for r in on_disk))
        if back_to is None:
            self.state.verify = None
            await self.save_state()
            raise VerifyError(
                f"{attempt.tag} failed its health check and there is no previous release to roll back to: "
                f"{result.reason}",
                fix="fix the release and deploy again; current still points to it",
                release=name,
            )
        with anyio.CancelScope(shield=True):
            async with self.reporter.phase(attempt, Step.ROLLBACK):
                await anyio.to_thread.run_sync(swap_symlink, self.layout.current, f"releases/{back_to}")
                log.warning("rolling_back", release=name, to=back_to)
                await self.reload(back_to)
                meta = await self.store.meta(back_to)
                back_ok: bool | None = None
                if meta is not None:
                    back_expect = expected_text(self.config.health_expect, meta.tag, meta.sha)
                    back = await wait_healthy(url, back_expect, self.config.health_timeout)
                    back_ok = back.ok
                    if not back.ok:
                        log.error("rollback_unverified", release=back_to, reason=back.reason)
            await self.store.mark_failed(name)
            self.state.previous = pending.previous_before
            self.state.verify = None
            await self.save_state()
        raise RolledBack(
            f"{attempt.tag} failed its health check and was rolled back to {meta.tag if meta else back_to}: "
            f"{result.reason}",
            fix="fix the release and deploy a new tag; this one is not retried until the marker changes",
            release=name,
            rolled_back_to=back_to,
            rollback_verified=back_ok,
        )
