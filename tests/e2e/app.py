"""The test app: a repository whose tags name their version in an eagerly and a lazily imported module.

* ``v1`` .. ``vN``: ``wsgi.py`` imports ``eager`` at load; ``/`` and ``/late`` import ``late`` on first
  use (lazily, after the worker started). ``/`` answers ``app=<eager.VERSION> late=<late.VERSION>
  pid=<pid>``, so a worker that mixes two releases shows it in one response. ``/health`` answers the
  release's sha from :func:`coordinator.pin.release_info` (``nometa`` when the release has no metadata).
* ``broken-import``: ``wsgi.py`` raises at import.
* ``broken-health``: ``/`` works (version ``broken-health``), ``/health`` answers 500.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import GitRepo

WSGI = """\
import os

import eager

HEALTH_FAILS = {health_fails}


def _respond(start_response, status, text):
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _release_sha():
    try:
        from coordinator.pin import release_info
    except ImportError:
        return "nometa"
    return release_info().get("sha") or "nometa"


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        if HEALTH_FAILS:
            return _respond(start_response, "500 Internal Server Error", "unhealthy")
        return _respond(start_response, "200 OK", _release_sha())
    if path == "/late":
        import late

        return _respond(start_response, "200 OK", "late=" + late.VERSION)
    if path == "/":
        import late

        return _respond(start_response, "200 OK", f"app={{eager.VERSION}} late={{late.VERSION}} pid={{os.getpid()}}")
    return _respond(start_response, "404 Not Found", "not found")
"""

BROKEN_IMPORT = """\
import eager

raise RuntimeError("broken-import: this release cannot be imported")
"""

RESPONSE = re.compile(r"app=(?P<app>\S+) late=(?P<late>\S+) pid=(?P<pid>\d+)")


def _files(version: str, *, health_fails: bool = False, broken_import: bool = False) -> dict[str, str | None]:
    return {
        "wsgi.py": BROKEN_IMPORT if broken_import else WSGI.format(health_fails=health_fails),
        "eager.py": f"VERSION = {version!r}\n",
        "late.py": f"VERSION = {version!r}\n",
        "README": f"test app {version}\n",
    }


def make_app_repo(path: Path, versions: int = 3) -> GitRepo:
    """Tags v1..vN, then broken-import and broken-health (each on its own commit)."""
    repo = GitRepo(path)
    for i in range(1, versions + 1):
        repo.commit(_files(f"v{i}"), tag=f"v{i}", message=f"version {i}")
    repo.commit(_files("broken-import", broken_import=True), tag="broken-import", message="cannot import")
    repo.commit(_files("broken-health", health_fails=True), tag="broken-health", message="health answers 500")
    return repo
