"""Following tags (``--follow GLOB``): which tag is the newest, and when to look again. Pure: no git,
no clock, no randomness of its own (the caller passes the time and a random number).

* :func:`version_key` orders tags by version: PEP 440 (``1.2.0rc1`` < ``1.2.0`` < ``1.2.1.post1``)
  and semver (``1.2.3-rc.1`` < ``1.2.3``), each with an optional leading ``v``; ``v1.10.0`` comes
  after ``v1.9.2``. A tag that is no version ranks below every version, and such tags rank among
  themselves by name, so a ``latest-build`` tag never wins over ``v2.0``.
* :func:`newest` picks the desired tag among the repository's tags matching the glob.
* :func:`tick_delay` is the period between two looks at the remote, spread by a random jitter;
  :func:`backoff_delay` how long to wait after ``n`` failures to reach the remote.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "BACKOFF_JITTER",
    "Backoff",
    "VersionKey",
    "backoff_delay",
    "newest",
    "parse_version",
    "tick_delay",
    "version_key",
]

#: first wait after a failed fetch or ls-remote, doubled after each further failure ...
BACKOFF_BASE = 1.0
#: ... up to this many seconds
BACKOFF_CAP = 300.0
#: each wait is spread by up to this fraction, either way
BACKOFF_JITTER = 0.2

#: (1, version parts, tag) for a version, (0, (), tag) for any other tag: compared as tuples. The tag
#: comes last so that two different tags never compare equal (``v1.0`` < ``v1.0.0`` < ``1.0``... by name)
VersionKey = tuple[int, tuple[Any, ...], str]

_PEP440_RE = re.compile(
    r"""
    v?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?:[-_.]?(?P<pre_l>alpha|a|beta|b|preview|pre|rc|c)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?P<post>-(?P<post_n1>[0-9]+)|[-_.]?(?:post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?)?
    (?P<dev>[-_.]?dev[-_.]?(?P<dev_n>[0-9]+)?)?
    (?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_SEMVER_RE = re.compile(
    r"""
    v?
    (?P<release>(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*))
    (?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?
    (?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?
    """,
    re.VERBOSE,
)
_PRE_LABELS = {"a": "a", "alpha": "a", "b": "b", "beta": "b", "c": "rc", "rc": "rc", "pre": "rc", "preview": "rc"}


def _ident(part: str) -> tuple[int, int, str]:
    """A pre-release identifier, comparable with any other: numbers before words, numbers by value."""
    return (0, int(part), "") if part.isdigit() else (1, 0, part)


def _release(text: str) -> tuple[int, ...]:
    """Release numbers without trailing zeros: ``1.0`` and ``1.0.0`` are the same version."""
    nums = [int(p) for p in text.split(".")]
    while len(nums) > 1 and nums[-1] == 0:
        nums.pop()
    return tuple(nums)


def parse_version(tag: str) -> tuple[Any, ...] | None:
    """The parts ``tag`` is ordered by as a version (release, pre, post, dev), or None when it is no
    version. Semver pre-releases (``-rc.1``, ``-beta.2.x``) and PEP 440 pre-releases (``rc1``) share
    the pre part: ``rc.1`` and ``rc1`` are the same. Local versions and build metadata (``+...``) are
    ignored for the order."""
    m = _PEP440_RE.fullmatch(tag)
    if m is not None:
        pre_l, has_post, has_dev = m["pre_l"], m["post"] is not None, m["dev"] is not None
        if pre_l is not None:
            pre: tuple[Any, ...] = (1, ((1, 0, _PRE_LABELS[pre_l.lower()]), (0, int(m["pre_n"] or 0), "")))
        elif has_dev and not has_post:
            pre = (0, ())  # 1.0.dev1 comes before 1.0a1
        else:
            pre = (2, ())
        post_key = (1, int(m["post_n1"] or m["post_n2"] or 0)) if has_post else (0, 0)
        dev_key = (0, int(m["dev_n"] or 0)) if has_dev else (1, 0)
        return (_release(m["release"]), pre, post_key, dev_key)
    m = _SEMVER_RE.fullmatch(tag)
    if m is not None:
        pre = (1, tuple(_ident(p) for p in m["pre"].split("."))) if m["pre"] else (2, ())
        return (_release(m["release"]), pre, (0, 0), (1, 0))
    return None


def version_key(tag: str) -> VersionKey:
    """The sort key of ``tag``: versions by version order, above every tag that is no version (those
    by name); equal keys only for equal tags."""
    parts = parse_version(tag)
    return (0, (), tag) if parts is None else (1, parts, tag)


def newest(tags: Iterable[str], glob: str, skip: Collection[str] = ()) -> tuple[str | None, str]:
    """The desired tag among ``tags`` that match ``glob`` (case-sensitive, as ``fnmatch``) and are not
    in ``skip`` (e.g. tags ``--tag-pattern`` or the tag rules refuse), with the reason, for the logs
    and the status file. The newest version wins; only when no matching tag is a version, the
    greatest name. None when nothing matches."""
    candidates = [t for t in tags if fnmatch.fnmatchcase(t, glob) and t not in skip]
    if not candidates:
        return None, f"no tag matches {glob!r}"
    best = max(candidates, key=version_key)
    versions = sum(1 for t in candidates if parse_version(t) is not None)
    if versions:
        return best, f"newest version of {versions} tag(s) matching {glob!r}"
    return best, f"greatest name of {len(candidates)} tag(s) matching {glob!r}, none a version"


def tick_delay(period: float, jitter: float | None, rand: float) -> float:
    """Seconds until the next look at the remote: ``period`` moved by up to ``jitter`` either way
    (None: a tenth of the period), with ``rand`` uniform in [0, 1), so a fleet spreads its calls."""
    spread = period / 10 if jitter is None else jitter
    return max(period + spread * (2 * rand - 1), 0.0)


def backoff_delay(failures: int, rand: float) -> float:
    """Seconds to wait after ``failures`` (>= 1) failures in a row to reach the remote: 1, 2, 4 ...
    capped at 5 minutes, each spread by up to 20 % either way (``rand`` uniform in [0, 1))."""
    base = min(BACKOFF_BASE * 2.0 ** min(max(failures - 1, 0), 32), BACKOFF_CAP)
    return base * (1 + BACKOFF_JITTER * (2 * rand - 1))


@dataclass(slots=True)
class Backoff:
    """Failures in a row to reach the remote, and the request (``key``) that waits until ``until``
    (on the caller's clock) before it is tried again. Another key is tried at once: a new marker is
    never held back by the old one's failures (but if it fails too, it waits longer: the count is of
    the remote's failures, whatever was asked)."""

    failures: int = 0
    key: str | None = None
    until: float = 0.0

    def failed(self, key: str, now: float, rand: float) -> float:
        """One more failure of ``key`` at ``now``: returns the seconds to wait before trying it again."""
        self.failures += 1
        delay = backoff_delay(self.failures, rand)
        self.key, self.until = key, now + delay
        return delay

    def succeeded(self) -> None:
        """The remote answered: the next failure waits the shortest time again."""
        self.failures, self.key, self.until = 0, None, 0.0

    def waiting(self, key: str | None, now: float) -> bool:
        """Whether ``key`` must not be tried yet at ``now``."""
        return key is not None and key == self.key and now < self.until

    def remaining(self, now: float) -> float | None:
        """Seconds until the request that waits may be tried again (None: none waits)."""
        return self.until - now if self.key is not None and now < self.until else None
