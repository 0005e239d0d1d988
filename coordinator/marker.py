"""The deploy marker: parsing and validation (pure), and :func:`read_marker` (with its blocking twin
:func:`read_marker_file`), the one place that reads the file.

A marker states the desired tag. Two forms are accepted:

* plain text: the tag on the first line (``echo v1.2.3 > deploy.request``); later lines are ignored;
* a JSON object: ``{"tag": "v1.2.3", "sha": "<full or abbreviated commit id>", "id": "<request id>"}``
  where ``sha`` (the commit the tag must point to) and ``id`` (echoed in the status file) are optional
  and any other key is an error, so a typo such as ``"sah"`` is not silently ignored.

Everything here treats the text as hostile. A tag is accepted only when it follows git's ref-name
rules (``git check-ref-format``) *and* uses only ``A-Z a-z 0-9 . _ / + @ -`` without a leading ``-``
(at most 200 characters), so it can never
become a git option, a shell word or a path: it is only ever used as ``refs/tags/<tag>`` after
``--end-of-options``, and the release directory name is derived from it by :func:`release_name`,
which always yields one safe path component.
"""

from __future__ import annotations

import codecs
import fnmatch
import hashlib
import json
import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiofiles

from coordinator.exceptions import CoordinatorError, MarkerError

# The codec parse_marker decodes with, looked up once at import: its first lookup imports a module
# (the import lock), which must not happen on the event loop (`/readyz` parses the marker there).
codecs.lookup("utf-8-sig")

__all__ = [
    "MARKER_MAX_BYTES",
    "DeployRequest",
    "MarkerReading",
    "new_request_id",
    "parse_marker",
    "read_marker",
    "read_marker_file",
    "release_name",
    "validate_request_id",
    "validate_sha",
    "validate_tag",
]

#: A marker larger than this is refused without being parsed (a tag plus JSON fits in far less).
MARKER_MAX_BYTES = 4096
#: Longest tag accepted; git allows more, but release names and logs stay readable.
TAG_MAX_LEN = 200
REQUEST_ID_MAX_LEN = 128

_SHA_RE = re.compile(r"[0-9a-f]{4,64}")
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")
_FORBIDDEN_TAG_CHARS = set(" ~^:?*[\\")
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._+-]")
#: Characters a tag may use: git allows more (quotes, $, backticks, ;, |, braces...), but none of
#: those has a place in a release tag, and refusing them keeps marker text harmless even in a build
#: script that (wrongly) evaluates $TAG.
_TAG_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/+@-")


@dataclass(frozen=True, slots=True)
class DeployRequest:
    """What the marker asks for: a tag, optionally pinned to a commit, with an optional request id."""

    tag: str
    sha: str | None = None
    request_id: str | None = None

    def to_json(self) -> str:
        """The marker text for this request (what ``coordinator deploy`` writes)."""
        body: dict[str, str] = {"tag": self.tag}
        if self.sha:
            body["sha"] = self.sha
        if self.request_id:
            body["id"] = self.request_id
        return json.dumps(body, sort_keys=True) + "\n"

    def matches(self, sha: str) -> bool:
        """True when ``sha`` (a full commit id) satisfies this request's optional sha."""
        return self.sha is None or sha.startswith(self.sha)


def validate_tag(tag: str, pattern: str | None = None) -> str:
    """Return ``tag`` if it is a safe git tag name (and matches ``pattern``), else raise MarkerError."""
    problem = _tag_problem(tag)
    if problem:
        raise MarkerError(
            f"invalid tag {tag[:80]!r}: {problem}",
            fix="write a git tag name such as v1.2.3 to the marker",
            tag=tag[:80],
        )
    if pattern is not None and not fnmatch.fnmatchcase(tag, pattern):
        raise MarkerError(
            f"tag {tag!r} does not match --tag-pattern {pattern!r}",
            fix="deploy a tag that matches the pattern, or change --tag-pattern",
            tag=tag,
        )
    return tag


def _tag_problem(tag: str) -> str | None:
    if not tag:
        return "empty"
    if len(tag) > TAG_MAX_LEN:
        return f"longer than {TAG_MAX_LEN} characters"
    if not tag.isascii() or not tag.isprintable():
        return "only printable ASCII characters are allowed"
    if tag.startswith("-"):
        return "must not start with '-'"
    if tag == "@":
        return "'@' alone is not a ref name"
    bad = _FORBIDDEN_TAG_CHARS.intersection(tag)
    if bad:
        return f"contains forbidden character(s) {''.join(sorted(bad))!r}"
    if ".." in tag:
        return "contains '..'"
    if "@{" in tag:
        return "contains '@{'"
    if tag.startswith("/") or tag.endswith("/") or "//" in tag:
        return "empty path component"
    if tag.endswith("."):
        return "ends with '.'"
    for part in tag.split("/"):
        if part.startswith("."):
            return "a component starts with '.'"
        if part.endswith(".lock"):
            return "a component ends with '.lock'"
    other = sorted(set(tag) - _TAG_CHARS)
    if other:
        return f"contains character(s) {''.join(other)!r} outside A-Z a-z 0-9 . _ / + @ -"
    return None


def validate_sha(sha: str) -> str:
    """Return ``sha`` lowercased if it is a 4-64 digit hex commit id, else raise MarkerError."""
    norm = sha.strip().lower()
    if not _SHA_RE.fullmatch(norm):
        raise MarkerError(
            f"invalid sha {sha[:80]!r}: expected 4 to 64 hex digits",
            fix="give a full or abbreviated commit id, or leave sha out",
        )
    return norm


def validate_request_id(request_id: str) -> str:
    """Return ``request_id`` if it is 1-128 characters of ``[A-Za-z0-9._:@+=-]``, else raise."""
    if not _REQUEST_ID_RE.fullmatch(request_id):
        raise MarkerError(
            f"invalid request id {request_id[:80]!r}",
            fix=f"use 1 to {REQUEST_ID_MAX_LEN} characters from A-Z a-z 0-9 . _ : @ + = -",
        )
    return request_id


def parse_marker(data: bytes, pattern: str | None = None) -> DeployRequest:
    """Parse raw marker bytes into a validated :class:`DeployRequest` or raise :class:`MarkerError`."""
    if len(data) > MARKER_MAX_BYTES:
        raise MarkerError(
            f"marker is larger than {MARKER_MAX_BYTES} bytes",
            fix="the marker holds only a tag or a small JSON object",
            size=len(data),
        )
    if b"\x00" in data:
        raise MarkerError("marker contains binary data (NUL byte)", fix="write the tag as text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MarkerError("marker is not valid UTF-8", fix="write the tag as text") from e
    stripped = text.strip()
    if not stripped:
        raise MarkerError("marker is empty", fix="write a tag to the marker, e.g. echo v1.2.3 > deploy.request")
    if stripped.startswith("{"):
        return _parse_json(stripped, pattern)
    first_line = stripped.splitlines()[0].strip()
    return DeployRequest(tag=validate_tag(first_line, pattern))


def _parse_json(text: str, pattern: str | None) -> DeployRequest:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise MarkerError(f"marker is not valid JSON: {e}", fix='write {"tag": "v1.2.3"}') from e
    if not isinstance(obj, dict):
        raise MarkerError("marker JSON must be an object", fix='write {"tag": "v1.2.3"}')
    unknown = sorted(set(obj) - {"tag", "sha", "id"})
    if unknown:
        raise MarkerError(
            f"unknown key(s) in marker: {', '.join(repr(k)[:40] for k in unknown[:5])}",
            fix="allowed keys are tag, sha and id",
        )
    tag = obj.get("tag")
    if not isinstance(tag, str):
        raise MarkerError("marker JSON needs a string 'tag'", fix='write {"tag": "v1.2.3"}')
    sha = obj.get("sha")
    if sha is not None and not isinstance(sha, str):
        raise MarkerError("'sha' must be a string", fix="give a commit id as a string or leave it out")
    request_id = obj.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MarkerError("'id' must be a string", fix="give the request id as a string or leave it out")
    return DeployRequest(
        tag=validate_tag(tag, pattern),
        sha=validate_sha(sha) if sha is not None else None,
        request_id=validate_request_id(request_id) if request_id is not None else None,
    )


def release_name(tag: str, sha: str) -> str:
    """The release directory name for ``tag`` at commit ``sha``: one safe path component.

    Characters outside ``[A-Za-z0-9._+-]`` (such as ``/`` in ``release/1.0``) become ``_``; the
    first 12 hex digits of the commit tell apart two commits of a moved tag. Two tags that sanitize
    alike (``release/1`` and ``release_1``) on the same commit share one release: its content is the
    same. Names never start with ``.`` (reserved for temporary directories).
    """
    safe = _SAFE_NAME_RE.sub("_", tag)[:100].lstrip(".-") or "tag"
    short = validate_sha(sha)[:12]
    return f"{safe}-{short}"


def new_request_id() -> str:
    """A fresh request id for ``coordinator deploy``."""
    return uuid.uuid4().hex[:16]


@dataclass(slots=True)
class MarkerReading:
    """The marker as read once: its request or its error, and a digest of its bytes."""

    request: DeployRequest | None
    error: CoordinatorError | None
    digest: str | None  # None when there is no marker


async def read_marker(path: Path, pattern: str | None = None) -> MarkerReading:
    """Read and validate the marker at ``path``, at most :data:`MARKER_MAX_BYTES` (+1 to detect more).

    Never blocks on a FIFO planted there, and refuses anything but a regular file. The digest of a
    marker that cannot be read names the reason (``not-a-file``, ``oserror-<errno>``), so the same
    problem is logged once, not on every reconcile. The daemon's reconcile reads it with
    :func:`read_marker_file` instead, together with the rest of the volume in one worker-thread trip.
    """
    try:
        async with aiofiles.open(path, "rb", opener=_regular_file_opener) as f:
            data = await f.read(MARKER_MAX_BYTES + 1)
    except OSError as e:
        return _unreadable(path, e)
    return _reading(data, pattern)


def read_marker_file(path: Path, pattern: str | None = None) -> MarkerReading:
    """:func:`read_marker`, blocking (for a worker thread that reads more than the marker)."""
    try:
        with open(path, "rb", opener=_regular_file_opener) as f:
            data = f.read(MARKER_MAX_BYTES + 1)
    except OSError as e:
        return _unreadable(path, e)
    return _reading(data, pattern)


def _unreadable(path: Path, e: OSError) -> MarkerReading:
    if isinstance(e, FileNotFoundError):
        return MarkerReading(None, None, None)
    if isinstance(e, _NotRegularFile):
        err = MarkerError(f"marker {path} is not a regular file", fix="write the tag to a regular file")
        return MarkerReading(None, err, "not-a-file")
    err = MarkerError(f"cannot read marker {path}: {e.strerror}", fix="check the marker's permissions")
    return MarkerReading(None, err, f"oserror-{e.errno}")


def _reading(data: bytes, pattern: str | None) -> MarkerReading:
    digest = hashlib.sha256(data).hexdigest()
    try:
        return MarkerReading(parse_marker(data, pattern), None, digest)
    except MarkerError as e:
        return MarkerReading(None, e, digest)


class _NotRegularFile(OSError):
    pass


def _regular_file_opener(path: str, flags: int) -> int:
    """Open without blocking on a FIFO, and refuse anything but a regular file (runs in a thread)."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotRegularFile(path)
    return fd
