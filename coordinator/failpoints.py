"""Named crash points for tests: ``COORDINATOR_FAILPOINTS=after-swap`` makes the process die there
as ``kill -9`` would (``SIGKILL`` to itself: no cleanup, no ``finally``, no flush).

Several names may be given, comma-separated; ``name@N`` fires at the N-th time the point is reached
(default 1). With the variable unset, :func:`failpoint` costs one dictionary lookup. Never set it in
production.

Points in the deploy path, in order: ``after-fetch``, ``during-prepare``, ``before-publish``,
``after-release-fsync``, ``after-release-rename``, ``after-temp-link``, ``after-swap``,
``after-swap-fsync``, ``before-reload``, ``after-reload``, ``after-reload-recorded``,
``before-journal``, ``after-journal``, ``before-status``, ``after-status``.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "failpoint"]

POINTS = (
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

_ENV = "COORDINATOR_FAILPOINTS"
_hits: dict[str, int] = {}


def _armed() -> dict[str, int]:
    spec = os.environ.get(_ENV, "")
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition("@")
        out[name] = int(count) if count.isdigit() else 1
    return out


def failpoint(name: str) -> None:
    """Die here, as kill -9 would, if ``name`` is armed in ``COORDINATOR_FAILPOINTS``."""
    if _ENV not in os.environ:
        return
    armed = _armed()
    if name not in armed:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
