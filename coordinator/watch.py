"""Watching the marker's directory for hints.

An event is only a hint: the daemon re-reads the marker and converges, so a lost or duplicated event
never matters (a periodic resync catches what no event reported). Rules from experience with
inotify and watchfiles:

* watch the *directory*, never the file: a file watch dies when the marker is replaced by rename,
  and Kubernetes ConfigMap volumes update by swapping a ``..data`` symlink;
* if the marker is a symlink elsewhere, watch the directory of its target too;
* non-recursive: ROOT holds the releases, thousands of files nobody needs to watch;
* a watched directory deleted and recreated, or renamed, goes silent: the watch is re-established;
* a change made between a reconcile and the moment a new watch is in place would be missed: the first
  wake-up of every watch is therefore always a hint;
* network filesystems deliver no inotify events for writes from other hosts: ``--poll`` polls.

Only events on the marker's name, its target's name, ConfigMap's ``..``-names and the other files
passed as ``also`` (the pause file, ``ROOT/deploy.pause``: its directory is watched too when the
marker lives elsewhere) count: the status file, the reload file and ``current`` live in the same
directory and must not wake the daemon.

Two back-ends:

* **inotify** (Linux, unless ``--poll``): the directories' inotify descriptor, read on the event loop
  when it is readable (:mod:`coordinator.inotify`): no thread and no timer, the daemon sleeps until
  something happens. ``IN_DELETE_SELF``, ``IN_MOVE_SELF``, ``IN_IGNORED`` or ``IN_UNMOUNT`` on a
  watched directory, or ``IN_Q_OVERFLOW`` (events were lost), re-establish every watch, which is a
  hint; after every hint the directories and their inodes are looked up again (a marker symlink
  pointed elsewhere, its target moved) and the watch re-established if they changed. A directory
  that does not exist (yet) is awaited by watching its nearest existing ancestor.
* **watchfiles** (``--poll``, other systems): its Rust watcher in a thread, batching for
  ``--watch-step-ms``; each directory's inode is checked on every wake-up (at least once a second),
  and an event on a watched directory itself restarts the watch (a directory removed and made again
  often gets its inode number back).
  ``COORDINATOR_TEST_WATCHER=watchfiles`` selects it on Linux too (for the benchmarks).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog
import watchfiles

from coordinator import inotify
from coordinator.inotify import Event, Inotify

__all__ = ["Verdict", "classify", "watch_backend", "watch_marker", "watched_dirs"]

log = structlog.get_logger("coordinator.watch")

#: what a watched directory reports: entries created, deleted, renamed, written and closed, changed
#: attributes; and the directory itself deleted or moved. Not IN_MODIFY: a writer's close follows.
_DIR_MASK = (
    inotify.IN_CREATE
    | inotify.IN_DELETE
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_CLOSE_WRITE
    | inotify.IN_ATTRIB
    | inotify.IN_DELETE_SELF
    | inotify.IN_MOVE_SELF
    | inotify.IN_ONLYDIR
    | inotify.IN_EXCL_UNLINK
)
#: an ancestor of a directory that does not exist: an entry appearing, or the ancestor going
_ANCHOR_MASK = (
    inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_ONLYDIR
)
#: the watched directory itself is gone, moved or unmounted (its watch is dead or will be)
_GONE = inotify.IN_DELETE_SELF | inotify.IN_MOVE_SELF | inotify.IN_IGNORED | inotify.IN_UNMOUNT


def _wanted(marker: Path, also: Sequence[Path]) -> list[Path]:
    """The files whose directories are watched: the marker, its target (unless ConfigMap-style: the
    short-lived ``..timestamp`` directory is not watched) and ``also``."""
    candidates = [marker]
    try:
        real = Path(os.path.realpath(marker))
        configmap_style = real.parent.parent == marker.parent and real.parent.name.startswith("..")
        if real != marker and not configmap_style:
            candidates.append(real)
    except OSError:
        pass
    return [*candidates, *also]


def watched_dirs(marker: Path, also: Sequence[Path] = ()) -> dict[Path, set[str]]:
    """The existing directories to watch for ``marker`` and the files ``also``, each with the entry
    names that matter."""
    out: dict[Path, set[str]] = {}
    for path in _wanted(marker, also):
        if path.parent.is_dir():
            out.setdefault(path.parent, set()).add(path.name)
    return out


def _counts(name: str, wanted: set[str]) -> bool:
    """An entry of a watched directory whose change is a hint."""
    return name in wanted or name.startswith("..")


def _inodes(dirs: Iterable[Path]) -> dict[Path, int | None]:
    out: dict[Path, int | None] = {}
    for d in dirs:
        try:
            out[d] = os.stat(d).st_ino
        except OSError:
            out[d] = None
    return out


def watch_backend(poll: bool) -> str:
    """``inotify`` on Linux unless ``poll``, else ``watchfiles``."""
    if poll or not inotify.AVAILABLE:
        return "watchfiles"
    return "watchfiles" if os.environ.get("COORDINATOR_TEST_WATCHER") == "watchfiles" else "inotify"


async def watch_marker(
    marker: Path,
    on_hint: Callable[[], None],
    *,
    poll: bool = False,
    step_ms: int = 3,
    stop_event: anyio.Event | None = None,
    also: Sequence[Path] = (),
    backend: str | None = None,
) -> None:
    """Call ``on_hint()`` whenever something may have changed the marker (or one of the files
    ``also``). Runs until cancelled or until ``stop_event`` is set. ``backend`` (``inotify`` or
    ``watchfiles``) defaults to :func:`watch_backend`; ``step_ms`` applies to watchfiles only."""
    stop = stop_event or anyio.Event()
    if (backend or watch_backend(poll)) == "watchfiles":
        await _watch_watchfiles(marker, on_hint, poll=poll, step_ms=step_ms, stop=stop, also=also)
        return
    async with anyio.create_task_group() as tg:

        async def stopper() -> None:
            await stop.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(stopper)
        await _watch_inotify(marker, on_hint, stop=stop, also=also)
        tg.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------- inotify


class Verdict(enum.IntEnum):
    """What a batch of events asks for, in increasing order."""

    NOTHING = 0
    HINT = 1  # re-read the marker
    RESTART = 2  # re-establish the watch (and re-read the marker): a directory went, or events were lost


def classify(events: Iterable[Event], names: Mapping[int, set[str]], anchors: Mapping[int, str]) -> Verdict:
    """The verdict on ``events``: ``names`` maps a watched directory's descriptor to the entry names
    that matter there, ``anchors`` the descriptor of an existing ancestor to the name of the missing
    directory awaited in it."""
    verdict = Verdict.NOTHING
    for e in events:
        if e.mask & inotify.IN_Q_OVERFLOW:
            return Verdict.RESTART  # events were lost: re-read everything
        if e.wd in anchors:
            if e.mask & _GONE or e.name == anchors[e.wd]:
                return Verdict.RESTART
        elif e.wd in names:
            if e.mask & _GONE:
                return Verdict.RESTART
            if _counts(e.name, names[e.wd]):
                verdict = Verdict.HINT
    return verdict


@dataclass
class _Watch:
    """One established inotify watch of the marker's directories."""

    notify: Inotify
    dirs: dict[Path, set[str]]
    inodes: dict[Path, int | None]
    names: dict[int, set[str]] = field(default_factory=dict)
    anchors: dict[int, str] = field(default_factory=dict)

    def changed(self, marker: Path, also: Sequence[Path]) -> bool:
        """The directories to watch, or their inodes, are not those watched (blocking)."""
        fresh = watched_dirs(marker, also)
        return set(fresh) != set(self.dirs) or _inodes(fresh) != self.inodes


def _anchor(missing: Path) -> tuple[Path, str] | None:
    """The nearest existing ancestor of the directory ``missing`` and the next name below it."""
    child = missing
    for parent in missing.parents:
        if parent.is_dir():
            return parent, child.name
        child = parent
    return None


def _establish(marker: Path, also: Sequence[Path]) -> _Watch:
    """A new inotify instance watching the marker's directories and, for each one that does not
    exist, its nearest existing ancestor (blocking: run in a thread)."""
    for _ in range(10):  # a directory appearing or going meanwhile: look again
        dirs = watched_dirs(marker, also)
        w = _Watch(Inotify(), dirs, _inodes(dirs))
        try:
            for d, wanted in dirs.items():
                w.names[w.notify.add_watch(d, _DIR_MASK)] = wanted
            for missing in sorted({p.parent for p in _wanted(marker, also)} - set(dirs)):
                anchor = _anchor(missing)
                if anchor is not None:
                    w.anchors[w.notify.add_watch(anchor[0], _ANCHOR_MASK)] = anchor[1]
        except FileNotFoundError:
            w.notify.close()
            continue
        except BaseException:
            w.notify.close()
            raise
        if not w.changed(marker, also):
            return w
        w.notify.close()
    raise OSError(f"the directories of {marker} keep changing")


async def _watch_inotify(marker: Path, on_hint: Callable[[], None], *, stop: anyio.Event, also: Sequence[Path]) -> None:
    while not stop.is_set():
        try:
            w = await anyio.to_thread.run_sync(_establish, marker, also)
        except OSError as e:
            log.warning("watch_error", error=str(e), backend="inotify")
            with anyio.move_on_after(1.0):
                await stop.wait()
            on_hint()
            continue
        try:
            log.debug("watching", dirs=[str(d) for d in w.dirs], awaiting=sorted(w.anchors.values()), backend="inotify")
            # in place now: the marker may have changed since the last reconcile, so re-read it once
            on_hint()
            reason = await _follow(w, marker, also, on_hint)
            log.info("watch_restart", reason=reason)
        finally:
            w.notify.close()


async def _follow(w: _Watch, marker: Path, also: Sequence[Path], on_hint: Callable[[], None]) -> str:
    """Hint on every batch of events that counts; returns why the watch must be re-established."""
    while True:
        await anyio.wait_readable(w.notify.fd)
        verdict = classify(w.notify.read(), w.names, w.anchors)
        if verdict is Verdict.RESTART:
            return "a watched directory went, appeared or events were lost"
        if verdict is Verdict.HINT:
            on_hint()
            if await anyio.to_thread.run_sync(w.changed, marker, also):
                return "marker directory replaced or marker target moved"


# ---------------------------------------------------------------------------------------------- watchfiles


async def _watch_watchfiles(
    marker: Path,
    on_hint: Callable[[], None],
    *,
    poll: bool,
    step_ms: int,
    stop: anyio.Event,
    also: Sequence[Path],
) -> None:
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
            return _counts(p.name, wanted)

        log.debug("watching", dirs=[str(d) for d in dirs], poll=poll, backend="watchfiles")
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
                # a directory removed and made again often gets its inode number back: an event on a
                # watched directory itself restarts the watch too
                itself = any(Path(path) in dirs for _change, path in changes)
                if itself or now != inodes or set(fresh) != set(dirs):
                    log.info("watch_restart", reason="marker directory replaced or marker target moved")
                    on_hint()
                    break
        except (OSError, RuntimeError) as e:
            log.warning("watch_error", error=str(e))
            with anyio.move_on_after(1.0):
                await stop.wait()
            on_hint()
