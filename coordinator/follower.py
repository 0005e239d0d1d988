"""``--follow GLOB``: list the repository's tags (``git ls-remote``: nothing is fetched) and name the
request to deploy when no marker is present: the newest matching tag (:func:`coordinator.follow.newest`)
at the commit the repository gives, so a tag moved there is noticed too.

The daemon calls :meth:`Follower.check` at start and then every ``--period`` (± ``--period-jitter``);
a repository that cannot be reached is asked again after a growing back-off instead
(:class:`coordinator.follow.Backoff`), never sooner than the period.
"""

from __future__ import annotations

import fnmatch
import random
import time
from collections.abc import Callable

import structlog

from coordinator.config import Config
from coordinator.exceptions import GitError, MarkerError
from coordinator.follow import Backoff, newest, tick_delay
from coordinator.git import GitCache
from coordinator.marker import DeployRequest, validate_tag
from coordinator.records import FollowingRecord
from coordinator.state import iso

__all__ = ["Follower"]

log = structlog.get_logger("coordinator")


class Follower:
    """The followed request (:attr:`request`) and what the status file shows of it (:attr:`record`)."""

    def __init__(self, config: Config, git: GitCache, rand: Callable[[], float] = random.random) -> None:
        assert config.follow is not None
        self.glob = config.follow
        self.pattern = config.tag_pattern
        self.period, self.jitter = config.period, config.period_jitter
        self.git = git
        self.rand = rand
        self.backoff = Backoff()
        self.request: DeployRequest | None = None
        self.record: FollowingRecord = {
            "glob": self.glob,
            "tag": None,
            "sha": None,
            "reason": "tags not listed yet",
            "checked_at": None,
            "error": None,
        }
        self.last_error: GitError | None = None  # the last listing's error (None: it succeeded)
        self.on_failure: Callable[[str], None] | None = None  # a listing failed: called with "ls-remote"
        self._tags: dict[str, str] = {}  # the last listing: tag -> commit
        self.refused: dict[str, str] = {}  # tag -> the commit at which the deployer refused it (signature)

    @property
    def digest(self) -> str | None:
        """What stands for the marker digest of the followed request: failure blocking and the status
        file's ``marker_digest`` tell followed tags (and a moved tag) apart by it."""
        req = self.request
        return None if req is None else f"follow:{req.tag}@{req.sha}"

    async def check(self) -> float:
        """List the tags once and choose; returns the seconds to wait before the next check."""
        try:
            tags = await self.git.remote_tags()
        except GitError as e:
            return self._failed(e)
        self.backoff.succeeded()
        self.last_error = None
        self._tags = tags
        self.refused = {t: sha for t, sha in self.refused.items() if tags.get(t) == sha}  # a moved tag: again
        self._choose(iso())
        return tick_delay(self.period, self.jitter, self.rand())

    def refuse(self, tag: str, sha: str | None, why: str) -> bool:
        """The deployer refused the followed ``tag`` at commit ``sha`` (``--verify-signatures``: not
        signed by an allowed key): it is passed over while it stays at that commit, and the newest
        other tag of the last listing is chosen now. Returns whether the choice changed."""
        if self.request is None or self.request.tag != tag or sha is None:
            return False
        self.refused[tag] = sha
        log.warning("follow_skipped", tag=tag, sha=sha, reason=why)
        before = self.request
        self._choose(self.record["checked_at"])
        return self.request != before

    def _choose(self, checked_at: str | None) -> None:
        """Choose the newest acceptable, not refused tag of the last listing (made at ``checked_at``)."""
        tags = self._tags
        skip = {t for t in tags if not self._acceptable(t) or self.refused.get(t) == tags[t]}
        tag, reason = newest(tags, self.glob, skip)
        refused = sorted(t for t in self.refused if fnmatch.fnmatchcase(t, self.glob))
        if refused:
            reason += f"; passed over, not signed by an allowed key: {', '.join(refused)}"
        request = DeployRequest(tag=tag, sha=tags[tag]) if tag is not None else None
        if request != self.request or self.record["checked_at"] is None:
            log.info("follow_chose", glob=self.glob, tag=tag, sha=request.sha if request else None, reason=reason)
        self.request = request
        self.record = {
            "glob": self.glob,
            "tag": tag,
            "sha": request.sha if request else None,
            "reason": reason,
            "checked_at": checked_at,
            "error": None,
        }

    def _acceptable(self, tag: str) -> bool:
        """Whether a marker could name ``tag`` (the tag rules and ``--tag-pattern``)."""
        try:
            validate_tag(tag, self.pattern)
        except MarkerError:
            return False
        return True

    def _failed(self, e: GitError) -> float:
        """The tags could not be listed: keep the last choice, wait the back-off (at least the period).
        ``checked_at`` still moves: the status shows the daemon alive and asking."""
        self.last_error = e
        if self.on_failure is not None:
            self.on_failure("ls-remote")
        backoff = self.backoff.failed("ls-remote", time.monotonic(), self.rand())
        delay = max(tick_delay(self.period, self.jitter, self.rand()), backoff)
        now = time.time()
        error = e.as_dict()
        error["next_retry_at"] = iso(now + delay)
        self.record = {**self.record, "checked_at": iso(now), "error": error}
        log.warning("follow_check_failed", **error, failures=self.backoff.failures)
        return delay
