"""Watching the marker's directory for hints.

An event is only a hint: the daemon re-reads the marker and converges, so a lost or duplicated event
never matters (a periodic resync catches what no event reported). Rules from experience with
inotify and watchfiles:

* watch the *directory*, never the file: a file watch dies when the marker is replaced by rename,
  and Kubernetes ConfigMap volumes update by swapping a ``..data`` symlink;
* if the marker is a symlink elsewhere, watch the directory of its target too;
* non-recursive: ROOT holds the releases, thousands of files nobody needs to watch;
* a watched directory deleted and recreated goes silent: each directory's inode is checked on every
  wake-up (at least once a second) and the watch restarted when it changed;
* a change made between a reconcile and the moment a new watch is in place would be missed: the first
  wake-up of every watch (at most a second later) is therefore always a hint;
* network filesystems deliver no inotify events for writes from other hosts: ``--poll`` polls.

Only events on the marker's name, its target's name, ConfigMap's ``..``-names and the other files
passed as ``also`` (the pause file, ``ROOT/deploy.pause``: its directory is watched too when the
marker lives elsewhere) count: the status file, the reload file and ``current`` live in the same
directory and must not wake the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import structlog
import watchfiles

__all__ = ["watch_marker", "watched_dirs"]

log = structlog.get_logger("coordinator.watch")


def watched_dirs(marker: Path, also: Sequence[Path] = ()) -> dict[Path, set[str]]:
    """The existing directories to watch for ``marker`` and the files ``also``, each with the entry
    names that matter."""
    out: dict[Path, set[str]] = {}
    candidates = [marker]
    try:
        real = Path(os.path.realpath(marker))
        configmap_style = real.parent.parent == marker.parent and real.parent.name.startswith("..")
        if real != marker and not configmap_style:
            candidates.append(real)
    except OSError:
        pass
    for path in [*candidates, *also]:
        if path.parent.is_dir():
            out.setdefault(path.parent, set()).add(path.name)
    return out


def _inodes(dirs: dict[Path, set[str]]) -> dict[Path, int | None]:
    out: dict[Path, int | None] = {}
    for d in dirs:
        try:
            out[d] = os.stat(d).st_ino
        except OSError:
            out[d] = None
    return out


async def watch_marker(
    marker: Path,
    on_hint: Callable[[], None],
    *,
    poll: bool = False,
    step_ms: int = 3,
    stop_event: anyio.Event | None = None,
    also: Sequence[Path] = (),
) -> None:
    """Call ``on_hint()`` whenever something may have changed the marker (or one of the files
    ``also``). Runs until cancelled or until ``stop_event`` is set."""
    stop = stop_event or anyio.Event()
    while not stop.is_set():
        dirs = await anyio.to_thread.run_sync(watched_dirs, marker, also)
        if not dirs:
            # the marker's directory does not exist (yet): the periodic resync still runs; look again soon
            with anyio.move_on_after(1.0):
                await stop.wait()
            on_hint()
            continue
        names = {d: n for d, n in dirs.items()}
        inodes = await anyio.to_thread.run_sync(_inodes, dirs)

        def relevant(_change: watchfiles.Change, path: str, names: dict[Path, set[str]] = names) -> bool:
            p = Path(path)
            wanted = names.get(p.parent)
            if wanted is None:
                return p in names  # the directory itself
            return p.name in wanted or p.name.startswith("..")

        log.debug("watching", dirs=[str(d) for d in dirs], poll=poll)
        first = True
        try:
            async for changes in watchfiles.awatch(
                *dirs,
                watch_filter=relevant,
                step=step_ms,
                debounce=1600,
                rust_timeout=1000,
                yield_on_timeout=True,
                recursive=False,
                force_polling=poll,
                poll_delay_ms=300,
                stop_event=stop,
            ):
                if changes or first:
                    # first wake-up of a new watch: the marker may have changed between the last
                    # reconcile and the moment the watch was in place, so re-read it once
                    first = False
                    on_hint()
                now = await anyio.to_thread.run_sync(_inodes, dirs)
                fresh = await anyio.to_thread.run_sync(watched_dirs, marker, also)
                if now != inodes or set(fresh) != set(dirs):
                    log.info("watch_restart", reason="marker directory replaced or marker target moved")
                    on_hint()
                    break
        except (OSError, RuntimeError) as e:
            log.warning("watch_error", error=str(e))
            with anyio.move_on_after(1.0):
                await stop.wait()
            on_hint()
