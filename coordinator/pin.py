"""Release pinning: a WSGI loader that ties each app-server process to one release.

Point the app server at ``coordinator.pin:application`` instead of the app, and configure it by
environment::

    COORDINATOR_PIN_APP=wsgi:application        # the real app, "module:callable" ("module" means :application)
    COORDINATOR_PIN_CURRENT=/srv/app/current    # the symlink coordinator swaps

At import (app load: in each worker, or once in the master when apps are not loaded lazily) this module
resolves ``current`` to its real path **once**, puts that real path first on ``sys.path`` (rewriting
entries below the symlink to the pinned release and dropping entries of other releases), ``chdir()``s
into it and imports the target. A module the app imports lazily later (after ``current`` was swapped to
a newer release) therefore still comes from the release the process started with: a process never
mixes two releases. The old release must stay on disk until its processes are gone (coordinator keeps
the current and the previous release).

A release that fails to import makes the import of this module fail too (the app server then does
what it does with a broken app: uWSGI answers 500, gunicorn's master exits after a HUP). With
``COORDINATOR_PIN_ON_ERROR=500`` the traceback goes to stderr instead and ``application`` answers
``500`` to every request: the workers stay up, so a health check fails and coordinator's rollback can
reload the server into the previous release (needed with gunicorn, whose master halts when a new worker
fails to boot).

``release_dir()`` is the pinned release; ``release_info()`` is its metadata file
(``<release_dir>.json``, written by coordinator next to the release: name, tag, sha, created), or ``{}``
when there is none (releases published by older versions of coordinator).

Standard library only, and no import of the rest of coordinator: the file can be copied alone into an
app's image.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["application", "pin", "release_dir", "release_info"]

ENV_APP = "COORDINATOR_PIN_APP"
ENV_CURRENT = "COORDINATOR_PIN_CURRENT"
ENV_ON_ERROR = "COORDINATOR_PIN_ON_ERROR"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class PinError(RuntimeError):
    """The loader is misconfigured (missing variable, missing ``current``, bad app spec)."""


def _below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def pin_sys_path(entries: list[str], current: str, release: str, cwd: str) -> list[str]:
    """The new ``sys.path``: ``release`` first; entries below the ``current`` symlink rewritten to the
    same place below ``release``; entries inside another release of ``releases/`` (the directory next
    to ``current``) dropped; the rest kept in order, without duplicates. ``cwd`` resolves relative
    entries."""
    current = os.path.normpath(os.path.join(cwd, current))
    releases = os.path.realpath(os.path.join(os.path.dirname(current), "releases"))
    out = [release]
    for entry in entries:
        if not isinstance(entry, str):  # sys.path may hold other objects; keep them as they are
            out.append(entry)
            continue
        path = os.path.normpath(os.path.join(cwd, entry))
        if _below(path, current):
            rewritten = os.path.normpath(os.path.join(release, os.path.relpath(path, current)))
            if rewritten not in out:
                out.append(rewritten)
            continue
        real = os.path.realpath(path)
        if _below(real, releases) and not (_below(real, release) and real != release):
            continue  # another release, releases/ itself, or a duplicate of the pinned release
        if entry not in out:
            out.append(entry)
    return out


def _load_target(spec: str) -> WSGIApp:
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise PinError(f"{ENV_APP}={spec!r}: expected 'module:callable', e.g. 'wsgi:application'")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in (attr or "application").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise PinError(f"{ENV_APP}={spec!r}: {module_name} has no attribute {attr!r}") from e
    if not callable(obj):
        raise PinError(f"{ENV_APP}={spec!r} is not callable")
    target: WSGIApp = obj
    return target


_release: str | None = None
_target: WSGIApp | None = None


def _failed_app(release: str, error: BaseException) -> WSGIApp:
    message = f"the release {os.path.basename(release)} failed to load: {type(error).__name__}\n".encode()

    def failed(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(message)))],
        )
        return [message]

    return failed


def pin(current: str, app: str, on_error: str = "raise") -> str:
    """Pin this process to the release ``current`` points to now and import ``app`` from it.

    Returns the release's real path. Called once at import with the environment's values. With
    ``on_error="500"`` an app that fails to import is replaced by one answering 500 (the error is
    printed to stderr).
    """
    if on_error not in ("raise", "500"):
        raise PinError(f"{ENV_ON_ERROR}={on_error!r}: expected 'raise' (default) or '500'")
    global _release, _target
    if not os.path.lexists(current):
        raise PinError(f"{ENV_CURRENT}={current!r} does not exist (nothing deployed yet?)")
    release = os.path.realpath(current)
    if not os.path.isdir(release):
        raise PinError(f"{ENV_CURRENT}={current!r} resolves to {release!r}, which is not a directory")
    cwd = os.getcwd()
    old = list(sys.path)
    sys.path[:] = pin_sys_path(old, current, release, cwd)
    for entry in old:
        if entry not in sys.path:
            sys.path_importer_cache.pop(entry, None)
    sys.path_importer_cache.pop(release, None)
    importlib.invalidate_caches()
    os.chdir(release)
    _release = release
    try:
        _target = _load_target(app)
    except Exception as e:
        if on_error != "500":
            raise
        traceback.print_exc()
        print(f"coordinator.pin: {app} failed to load from {release}; answering 500", file=sys.stderr, flush=True)
        _target = _failed_app(release, e)
    return release


def release_dir() -> str:
    """The real path of the release this process is pinned to."""
    if _release is None:
        raise PinError("coordinator.pin is not pinned (set COORDINATOR_PIN_CURRENT and COORDINATOR_PIN_APP)")
    return _release


def release_info() -> dict[str, Any]:
    """The pinned release's metadata (``<release_dir>.json``), or ``{}`` when it has none (or when this
    process is not pinned)."""
    if _release is None:
        return {}
    try:
        with open(_release + ".json", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point: delegates to the pinned app."""
    if _target is None:
        raise PinError("coordinator.pin is not pinned (set COORDINATOR_PIN_CURRENT and COORDINATOR_PIN_APP)")
    return _target(environ, start_response)


def _pin_from_environment() -> None:
    current = os.environ.get(ENV_CURRENT)
    app = os.environ.get(ENV_APP)
    if current and app:
        pin(current, app, os.environ.get(ENV_ON_ERROR) or "raise")
    elif current or app:
        missing = ENV_APP if current else ENV_CURRENT
        raise PinError(f"{missing} is not set (coordinator.pin needs both {ENV_CURRENT} and {ENV_APP})")


_pin_from_environment()
