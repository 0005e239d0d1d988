"""``coordinator check``: pre-flight checks of ``run``'s configuration, deploying nothing.

This module runs the checks of :mod:`coordinator.checks` and decides the outcome: they run
concurrently, each bounded in time (a hung volume or network fails that check, not the command), and
one failing does not stop the others. The results are printed one line each, then a summary, and
any failed check makes the command fail (:func:`raise_if_failed`: exit 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from coordinator.checkresult import Check, CheckResult, failed
from coordinator.checks import checks_for
from coordinator.config import Config
from coordinator.display import Style
from coordinator.exceptions import CheckFailed, CoordinatorError
from coordinator.fsutil import describe_os_error
from coordinator.reload import make_reloader

__all__ = [
    "Check",
    "CheckResult",
    "format_results",
    "raise_if_failed",
    "run_all",
    "run_checks",
    "summary",
]


async def _bounded(check: Check) -> CheckResult:
    """``check``, within its time limit; an error it did not expect fails it, with the fix."""
    with anyio.move_on_after(check.limit_s):
        try:
            return await check.run()
        except CoordinatorError as e:
            return failed(check.name, e.message, e.fix)
        except OSError as e:
            err = describe_os_error(e, retried=False)
            return failed(check.name, err["message"], err.get("fix"))
    return failed(
        check.name,
        f"no answer within {check.limit_s:g} s",
        "check the volume (a hung network mount?) and the network; then run coordinator check again",
    )


async def run_checks(config: Config) -> list[CheckResult]:
    """Every check for ``config``, in the order of :func:`checks_for`. The reload options are
    validated first, as ``run`` validates them (ConfigError: exit 2)."""
    make_reloader(config)
    return await run_all(checks_for(config))


async def run_all(checks: Sequence[Check]) -> list[CheckResult]:
    """``checks`` concurrently, each within its time limit; the results in their order."""
    results: dict[int, CheckResult] = {}

    async def one(i: int, check: Check) -> None:
        results[i] = await _bounded(check)

    async with anyio.create_task_group() as tg:
        for i, check in enumerate(checks):
            tg.start_soon(one, i, check)
    return [results[i] for i in range(len(checks))]


def summary(results: Sequence[CheckResult]) -> str:
    bad = [r.name for r in results if not r.ok]
    if not bad:
        return f"all {len(results)} checks passed"
    return f"{len(bad)} of {len(results)} checks failed: {', '.join(bad)}"


def format_results(results: Sequence[CheckResult], style: Style) -> str:
    """One line per check, ``✓ name: detail`` or ``✗ name: detail -- fix``, then the summary."""
    lines = []
    for r in results:
        if r.ok:
            lines.append(f"{style.ok} {r.name}: {r.detail}")
        else:
            lines.append(f"{style.bad} {r.name}: {r.detail}" + (f" -- {r.fix}" if r.fix else ""))
    lines.append(summary(results))
    return "\n".join(lines)


def raise_if_failed(results: Sequence[CheckResult]) -> None:
    """CheckFailed (exit 1) when any check failed."""
    if not all(r.ok for r in results):
        raise CheckFailed(
            summary(results), fix="do what each failed check's fix says, then run coordinator check again"
        )
