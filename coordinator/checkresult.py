"""What every check of ``coordinator check`` is made of: its result (:class:`CheckResult`, made by
:func:`passed` and :func:`failed`), the :class:`Check` itself with its time limit, and what the
checks of :mod:`coordinator.checks` and :mod:`coordinator.appchecks` share: a blocking probe run in
a worker thread (:func:`in_thread`) and how a file's kind is named (:func:`mode_kind`).
"""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from coordinator.fsutil import file_kind

__all__ = ["FS_LIMIT_S", "Check", "CheckResult", "failed", "in_thread", "mode_kind", "passed"]

T = TypeVar("T")

#: seconds a filesystem check may take (a hung network volume fails the check instead of hanging)
FS_LIMIT_S = 10.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of ``coordinator check``: ✓ name: detail, or ✗ name: detail -- fix."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name, True, detail)


def failed(name: str, detail: str, fix: str | None) -> CheckResult:
    return CheckResult(name, False, detail, fix)


@dataclass(frozen=True, slots=True)
class Check:
    """A named check and how long it may take."""

    name: str
    run: Callable[[], Awaitable[CheckResult]]
    limit_s: float = FS_LIMIT_S


async def in_thread(fn: Callable[[], T]) -> T:
    """``fn`` in a worker thread, abandoned (not waited for) when the check runs out of time."""
    return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)


def mode_kind(mode: int) -> str:
    """``mode``'s kind as a check names it: "a FIFO", or :func:`coordinator.fsutil.file_kind`."""
    return "a FIFO" if stat.S_ISFIFO(mode) else file_kind(mode)
