"""Checking that the app server serves the new release after a reload.

A deploy with ``--health-url`` succeeds only when the URL answers 2xx with a body containing the
expected text (``--health-expect``, default ``{sha}``: the full commit id of the release, with
``{tag}`` also available). Expecting the sha, not just a 200, is what tells the new release from the
old one still answering while the app server reloads. The app can serve its sha from the release
metadata file ``releases/<name>.json`` (``coordinator.pin.release_info()`` reads it).

The check polls until it passes or ``--health-timeout`` runs out; requests run in a worker thread
(``urllib``, stdlib), each with a short timeout of its own.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import anyio

__all__ = ["HealthResult", "expected_text", "probe", "wait_healthy"]

_BODY_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class HealthResult:
    ok: bool
    reason: str
    attempts: int = 1


def expected_text(template: str, tag: str, sha: str) -> str:
    """Fill ``{tag}`` and ``{sha}`` in ``template`` (other braces are kept as they are)."""
    return template.replace("{tag}", tag).replace("{sha}", sha)


def probe(url: str, expect: str, timeout: float = 2.0) -> HealthResult:
    """One blocking GET: ok when the answer is 2xx and its body contains ``expect``."""
    req = urllib.request.Request(url, headers={"User-Agent": "coordinator-health", "Connection": "close"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = resp.status
            body = resp.read(_BODY_MAX).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return HealthResult(False, f"HTTP {e.code} from {url}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return HealthResult(False, f"cannot reach {url}: {reason}")
    if not 200 <= status < 300:
        return HealthResult(False, f"HTTP {status} from {url}")
    if expect not in body:
        return HealthResult(False, f"{url} answered without {expect[:60]!r}: {body.strip()[:120]!r}")
    return HealthResult(True, f"HTTP {status} with {expect[:60]!r}")


async def wait_healthy(url: str, expect: str, limit_s: float, interval: float = 0.25) -> HealthResult:
    """Poll ``url`` until it passes or ``limit_s`` seconds have passed; the last result explains."""
    deadline = time.monotonic() + limit_s
    attempts = 0
    while True:
        attempts += 1
        left = deadline - time.monotonic()
        result = await anyio.to_thread.run_sync(probe, url, expect, max(0.5, min(5.0, left)))
        if result.ok:
            return HealthResult(True, result.reason, attempts)
        if time.monotonic() + interval >= deadline:
            return HealthResult(False, f"{result.reason} (after {attempts} checks in {limit_s:g} s)", attempts)
        await anyio.sleep(interval)
