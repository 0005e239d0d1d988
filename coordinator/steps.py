"""The steps of one deploy, performed in the order :func:`coordinator.plan.plan` gave them: fetch
(with its back-off), verify the tag's signature, prepare, build and publish the release, the pre-swap
command, the canary, then the swap by :class:`~coordinator.activate.Activator`; and pruning once the
attempt's result is known.

:class:`DeploySteps` only performs: the :class:`~coordinator.deployer.Deployer` decides (through the
planner), keeps the attempt's bookkeeping and owns superseding, whose cancel scope it lends to the
steps that a newer marker or a pause may stop (fetch, prepare, build, publish, canary).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager

import anyio
import structlog

from coordinator.activate import Activator
from coordinator.canary import Canary
from coordinator.canaryproc import record_path, stop_leftover
from coordinator.config import Config
from coordinator.exceptions import CanaryError, GitError
from coordinator.failpoints import failpoint
from coordinator.follow import Backoff
from coordinator.fsutil import describe_os_error
from coordinator.git import GitCache
from coordinator.hooks import run_pre_swap
from coordinator.logs import present
from coordinator.marker import DeployRequest
from coordinator.plan import Plan, Step
from coordinator.records import ErrorInfo, PauseRecord
from coordinator.releases import ReleaseStore
from coordinator.report import Attempt, Reporter
from coordinator.signing import TagVerifier
from coordinator.spare import spare_tag
from coordinator.state import iso
from coordinator.statefile import State

__all__ = ["DeploySteps", "Supersedable"]

log = structlog.get_logger("coordinator")

#: a cancel scope that a newer marker asking for another release (or a pause) cancels: (request, digest)
Supersedable = Callable[[DeployRequest, str | None], AbstractContextManager[anyio.CancelScope]]


class DeploySteps:
    """Performs each step of a deploy for the deployer; decides nothing the plan did not say."""

    def __init__(
        self,
        config: Config,
        git: GitCache,
        state: State,
        store: ReleaseStore,
        reporter: Reporter,
        activator: Activator,
        supersedable: Supersedable,
        read_pause: Callable[[], Awaitable[PauseRecord | None]],
    ) -> None:
        self.config = config
        self.git = git
        self.state = state  # shared with the deployer
        self.store = store
        self.reporter = reporter
        self.activator = activator
        self._supersedable = supersedable
        self._read_pause = read_pause
        self.verifier = TagVerifier.from_config(config, git)  # None without --verify-signatures
        self.canary = Canary.from_config(config)  # None without --canary-command
        self.on_canary: Callable[[str], None] | None = None  # called with passed, failed or cancelled (the metric)
        self.fetch_backoff = Backoff()  # a fetch that failed waits before the same request fetches again
        self.backoff_error: ErrorInfo | None = None  # the error of the fetch that waits out its back-off
        self.on_fetch_failure: Callable[[str], None] | None = None  # called with "fetch" (the metric)

    async def startup(self) -> None:
        """Stop a canary a crash left running; load the signing keys (usable, or exit 2)."""
        await stop_leftover(record_path(self.config.layout.state_dir))
        if self.verifier is not None:
            await self.verifier.load()

    async def fetch(self, tag: str, digest: str | None) -> str:
        """Fetch ``tag``; a failure makes this request (``digest``) wait a growing back-off before it
        fetches again (its error says until when: ``next_retry_at``), a success ends the back-off."""
        try:
            sha = await self.git.fetch_tag(tag)
        except GitError as e:
            if self.on_fetch_failure is not None:
                self.on_fetch_failure("fetch")
            if e.retryable and digest is not None:
                delay = self.fetch_backoff.failed(digest, time.monotonic(), random.random())
                e.fields["next_retry_at"] = iso(time.time() + delay)
                self.backoff_error = e.as_dict()  # shown while this request waits, whatever ran since
            raise
        self.fetch_backoff.succeeded()
        return sha

    async def deploy(
        self, attempt: Attempt, req: DeployRequest, digest: str | None, p: Plan, previous_current: str | None
    ) -> bool:
        """Perform the deploy steps; returns True if a newer marker or a pause cancelled it before the swap."""
        assert p.target is not None and p.sha is not None
        if Step.PREPARE in p.steps:
            with self._supersedable(req, digest) as scope:
                await self.build_release(attempt, req.tag, p.target, p.sha, previous_current)
            if scope.cancelled_caught:
                return True
        elif self.verifier is not None:
            attempt.signer = await self._signer_on_disk(req.tag, p.target, p.sha)
        # paused since the reconcile read the pause: no migration. A swap to a release on disk without
        # a signature to check follows that read within a millisecond, with nothing awaited between
        waited = Step.PREPARE in p.steps or self.verifier is not None
        if waited and await self._paused_before_swap(req, p.target):
            return True
        if Step.PRE_SWAP in p.steps:  # not supersedable: a migration is not stopped halfway for a newer marker
            assert self.config.pre_swap_command
            ctx = self.store.hook_context(req.tag, p.sha, p.target, previous_current, req.request_id)
            async with self.reporter.phase(attempt, Step.PRE_SWAP):
                await run_pre_swap(
                    self.config.pre_swap_command, ctx, self.config.pre_swap_timeout, self.config.extra_env
                )
        if Step.CANARY in p.steps:  # supersedable: the canary is stopped, nothing was swapped
            with self._supersedable(req, digest) as scope:
                await self._canary(attempt, req, p.target, p.sha, previous_current)
            if scope.cancelled_caught:
                self._canary_ended("cancelled")
                return True
        ran = Step.PRE_SWAP in p.steps or Step.CANARY in p.steps
        if ran and await self._paused_before_swap(req, p.target):  # paused meanwhile
            return True
        await self.activator.activate(attempt, p.target, previous_current, verify=Step.VERIFY in p.steps)
        return False

    async def _canary(
        self, attempt: Attempt, req: DeployRequest, name: str, sha: str, previous_current: str | None
    ) -> None:
        """Start the release privately and check it (:mod:`coordinator.canary`); a canary that fails
        marks the release failed (pruned at once) and raises CanaryError: nothing is swapped."""
        assert self.canary is not None
        ctx = self.store.hook_context(req.tag, sha, name, previous_current, req.request_id)
        try:
            async with self.reporter.phase(attempt, Step.CANARY):
                await self.canary.check(ctx)
        except CanaryError:
            self._canary_ended("failed")
            await self.store.mark_failed(name)
            raise
        self._canary_ended("passed")

    def _canary_ended(self, result: str) -> None:
        if self.on_canary is not None:
            self.on_canary(result)

    async def _paused_before_swap(self, req: DeployRequest, target: str) -> bool:
        """Deploys were paused since this attempt began: it stops here, before anything is swapped."""
        if await self._read_pause() is None:
            return False
        log.info("deploy_paused", tag=req.tag, release=target)
        return True

    async def _signer_on_disk(self, tag: str, name: str, sha: str) -> str:
        """``--verify-signatures``, release ``name`` already on disk (a rollback, a staged release): who
        signed its tag as recorded when it was built, else (built before verification was turned on)
        verified now, in the git cache, and recorded."""
        assert self.verifier is not None
        meta = await self.store.meta(name)
        if meta is not None and meta.signer is not None:
            return meta.signer
        signer = await self.verifier.verify(tag, sha)
        await self.store.record_signer(name, signer)
        return signer

    async def build_release(
        self, attempt: Attempt, tag: str, name: str, sha: str, previous_current: str | None
    ) -> None:
        """Verify the tag's signature (``--verify-signatures``), then prepare (with the shared links),
        build and publish release ``name`` in a hidden workspace (removed if anything fails)."""
        if self.verifier is not None:  # after the fetch, before anything is prepared
            attempt.signer = await self.verifier.verify(tag, sha)
        tmp = await self.store.new_workspace(name)
        try:
            async with self.reporter.phase(attempt, Step.PREPARE):
                await self.store.shared.ensure()  # a missing shared file fails before anything is checked out
                staged = self.state.staged  # never recycled: retention keeps it too
                stats = await self.store.prepare(
                    tmp,
                    sha,
                    previous_current,
                    name=name,
                    previous=self.state.previous,
                    protected=() if staged is None else (staged.release,),
                )
                log.debug(
                    "prepare_stats", **present(tag=tag, release=name, previous=previous_current, **stats.as_log())
                )
                await self.store.shared.link(tmp, name)  # before the build: it may read .env
                failpoint("during-prepare")
            if self.config.build_command:
                async with self.reporter.phase(attempt, Step.BUILD):
                    await self.store.build(tmp, name, tag, sha, previous_current, attempt.request_id)
            async with self.reporter.phase(attempt, Step.PUBLISH):
                await self.store.publish(tmp, name, tag, sha, attempt.signer)
        except BaseException:
            await self.store.discard(tmp)
            raise

    async def prune(self, attempt: Attempt) -> None:
        """Delete the releases retention picks and tidy the git cache, once the attempt's result is
        known: a failure here is logged (``prune_failed``) and tried again after the next deploy; it
        never changes the result of a deploy that is already served."""
        async with self.reporter.phase(attempt, Step.PRUNE):
            try:
                staged = self.state.staged
                await self.store.prune(self.state.previous, staged.release if staged is not None else None)
            except OSError as e:
                log.warning("prune_failed", **present(**describe_os_error(e), tag=attempt.tag))
            await self._tidy_git()

    async def _tidy_git(self) -> None:
        """Drop from the git cache what no release on disk needs (see GitCache.tidy); a failure is
        logged and retried after the next deploy, never fails this one."""
        _, on_disk = await self.store.observe()
        spare = await anyio.to_thread.run_sync(spare_tag, self.config.layout)  # its commit is needed too
        try:
            await self.git.tidy({r.tag for r in on_disk if r.tag} | ({spare} if spare else set()))
        except GitError as e:
            log.warning("git_tidy_failed", error=e.message)
