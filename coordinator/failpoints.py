"""Named crash points for tests: ``COORDINATOR_FAILPOINTS=after-swap`` makes the process die there
as ``kill -9`` would (``SIGKILL`` to itself: no cleanup, no ``finally``, no flush).

Several names may be given, comma-separated; ``name@N`` fires at the N-th time the point is reached
(default 1). ``name:ERRNO`` (``during-prepare:ENOSPC@1``) raises ``OSError(ERRNO)`` there instead,
once, at the N-th hit: a fault the volume could give (a full disk, permission denied) that then goes
away, without needing root to fill a real filesystem. With the variable unset, :func:`failpoint`
costs one dictionary lookup. Never set it in production.

Points in the deploy path, in order: ``before-deploying-status`` (a new tag's deploy is announced),
``after-fetch``, ``during-prepare``, ``before-publish``,
``after-release-fsync``, ``after-release-rename``, ``after-temp-link``, ``after-swap``,
``after-swap-fsync``, ``before-reload``, ``after-reload``, ``after-reload-recorded``,
``before-journal``, ``after-journal``, ``before-status``, ``after-status``. Reached only when a
retired release is recycled (:mod:`coordinator.recycle`, so not by every deploy): ``during-recycle``
(the release renamed to the workspace and its metadata removed, nothing checked or applied yet).
Reached only by the idle daemon readying the spare (:mod:`coordinator.spare`): ``during-spare`` (the
spare checked against its manifest, not yet advanced to current's commit, no record written).
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["POINTS", "RECYCLE_POINTS", "SPARE_POINTS", "failpoint"]

POINTS = (
    "before-deploying-status",
    "after-fetch",
    "during-prepare",
    "before-publish",
    "after-release-fsync",
    "after-release-rename",
    "after-temp-link",
    "after-swap",
    "after-swap-fsync",
    "before-reload",
    "after-reload",
    "after-reload-recorded",
    "before-journal",
    "after-journal",
    "before-status",
    "after-status",
)
#: points reached only when a deploy recycles a retired release
RECYCLE_POINTS = ("during-recycle",)
#: points reached only while the idle daemon readies the spare
SPARE_POINTS = ("during-spare",)

_ENV = "COORDINATOR_FAILPOINTS"
_hits: dict[str, int] = {}


def _armed() -> dict[str, tuple[int, int | None]]:
    """Armed points: name -> (hit that fires, errno to raise or None to die)."""
    spec = os.environ.get(_ENV, "")
    out: dict[str, tuple[int, int | None]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, count = item.partition("@")
        name, _, err = point.partition(":")
        code = getattr(errno, err, None) if err else None
        if err and not isinstance(code, int):
            raise ValueError(f"{_ENV}: unknown errno name {err!r} (use ENOSPC, EACCES, EIO...)")
        out[name] = (int(count) if count.isdigit() else 1, code)
    return out


def failpoint(name: str) -> None:
    """Die here, as kill -9 would (or raise the armed OSError), if ``name`` is armed in
    ``COORDINATOR_FAILPOINTS``."""
    if _ENV not in os.environ:
        return
    armed = _armed()
    if name not in armed:
        return
    at, err = armed[name]
    _hits[name] = _hits.get(name, 0) + 1
    if err is not None:
        if _hits[name] == at:
            raise OSError(err, os.strerror(err))
        return
    if _hits[name] >= at:
        os.kill(os.getpid(), signal.SIGKILL)
