"""Which directories are watched for a marker, and that events are only hints."""

from __future__ import annotations

import os
import shutil
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from coordinator import inotify
from coordinator.inotify import Event, parse_events
from coordinator.watch import Verdict, classify, watch_backend, watch_marker, watched_dirs

BACKENDS = [
    pytest.param("watchfiles"),
    pytest.param("inotify", marks=pytest.mark.skipif(not inotify.AVAILABLE, reason="inotify is Linux only")),
]


def test_plain_marker_watches_its_directory(tmp_path: Path) -> None:
    """A plain marker file: its parent directory, with the marker's name."""
    m = tmp_path / "deploy.request"
    assert watched_dirs(m) == {tmp_path: {"deploy.request"}}


def test_symlinked_marker_also_watches_the_target_directory(tmp_path: Path) -> None:
    """A marker that is a symlink elsewhere: both directories are watched."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "real").write_text("v1")
    m = tmp_path / "deploy.request"
    os.symlink(other / "real", m)
    assert watched_dirs(m) == {tmp_path: {"deploy.request"}, other: {"real"}}


def test_configmap_marker_watches_only_the_mount_directory(tmp_path: Path) -> None:
    """A ConfigMap-style marker (..data/key) watches the mount, not the short-lived ..timestamp dir."""
    (tmp_path / "..2026_01").mkdir()
    (tmp_path / "..2026_01" / "deploy.request").write_text("v1")
    os.symlink("..2026_01", tmp_path / "..data")
    os.symlink("..data/deploy.request", tmp_path / "deploy.request")
    assert watched_dirs(tmp_path / "deploy.request") == {tmp_path: {"deploy.request"}}


def test_also_watched_files_add_their_directory_and_name(tmp_path: Path) -> None:
    """The pause file: its name joins the marker's directory, or its own directory is watched too."""
    root, markers = tmp_path / "root", tmp_path / "markers"
    root.mkdir()
    markers.mkdir()
    assert watched_dirs(root / "deploy.request", [root / "deploy.pause"]) == {root: {"deploy.request", "deploy.pause"}}
    assert watched_dirs(markers / "m", [root / "deploy.pause"]) == {markers: {"m"}, root: {"deploy.pause"}}


def test_missing_directory_is_not_watched(tmp_path: Path) -> None:
    """A marker whose directory does not exist yet gives nothing to watch."""
    assert watched_dirs(tmp_path / "nope" / "deploy.request") == {}


class Hints:
    """The hints a running watch gave, and waiting for the next one."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    async def next(self) -> None:
        """Wait for a hint after those seen so far (each new watch gives one when it is in place)."""
        seen = self.count
        with anyio.fail_after(5):
            while self.count == seen:
                await anyio.sleep(0.005)

    async def settle(self, quiet: float = 0.3) -> None:
        """Wait until no hint came for ``quiet`` seconds."""
        with anyio.fail_after(10):
            while True:
                seen = self.count
                await anyio.sleep(quiet)
                if self.count == seen:
                    return


@asynccontextmanager
async def watching(marker: Path, backend: str, also: tuple[Path, ...] = ()) -> AsyncIterator[Hints]:
    """``watch_marker`` running with ``backend``, once its first hint came and hints settled."""
    hints = Hints()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_marker(marker, hints, stop_event=stop, also=also, backend=backend, step_ms=3))
        await hints.next()  # every new watch gives one hint when it is in place
        await hints.settle()
        yield hints
        stop.set()


async def write_and_expect_hint(hints: Hints, path: Path, text: str) -> None:
    """Replace ``path`` by rename (as ``coordinator deploy`` does) and expect a hint."""
    seen = hints.count
    await anyio.to_thread.run_sync(_replace, path, text)
    with anyio.fail_after(5):
        while hints.count == seen:
            await anyio.sleep(0.005)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_only_marker_events_are_hints(tmp_path: Path, backend: str) -> None:
    """Once watching, writing other files in the marker's directory gives no hint; the marker does."""
    async with watching(tmp_path / "deploy.request", backend) as hints:
        seen = hints.count
        await anyio.Path(tmp_path / "deploy.status.json").write_text("{}")
        await anyio.Path(tmp_path / "reload.touch").write_text("")
        await anyio.sleep(0.3)
        assert hints.count == seen
        await anyio.Path(tmp_path / "deploy.request").write_text("v1")
        await hints.next()


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_pause_file_is_a_hint(tmp_path: Path, backend: str) -> None:
    """A file passed as ``also`` (the pause file) in another directory gives a hint when it appears."""
    root, markers = tmp_path / "root", tmp_path / "markers"
    root.mkdir()
    markers.mkdir()
    async with watching(markers / "deploy.request", backend, also=(root / "deploy.pause",)) as hints:
        await write_and_expect_hint(hints, root / "deploy.pause", "{}")


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_directory_deleted_and_recreated_is_watched_again(tmp_path: Path, backend: str) -> None:
    """The marker's directory deleted and created again: a marker written in the new one is a hint."""
    d = tmp_path / "markers"
    d.mkdir()
    async with watching(d / "deploy.request", backend) as hints:
        await anyio.to_thread.run_sync(shutil.rmtree, d)
        await anyio.Path(d).mkdir()
        await hints.settle(1.5)  # the watchfiles back-end notices at its next wake-up (a second)
        await write_and_expect_hint(hints, d / "deploy.request", "v2")


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_directory_renamed_over_is_watched_again(tmp_path: Path, backend: str) -> None:
    """The marker's directory moved aside and another renamed into its place: the new one is watched."""
    d, new = tmp_path / "markers", tmp_path / "markers.new"
    d.mkdir()
    new.mkdir()
    async with watching(d / "deploy.request", backend) as hints:
        os.rename(d, tmp_path / "markers.old")
        os.rename(new, d)
        await hints.settle(1.5)
        await write_and_expect_hint(hints, d / "deploy.request", "v2")
        await write_and_expect_hint(hints, d / "deploy.request", "v3")


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_missing_directory_is_watched_once_created(tmp_path: Path, backend: str) -> None:
    """A marker directory created after the watch began (two levels down): a marker written there is a hint."""
    d = tmp_path / "a" / "b"
    async with watching(d / "deploy.request", backend) as hints:
        await anyio.Path(d).mkdir(parents=True)
        await hints.settle(1.5)
        await write_and_expect_hint(hints, d / "deploy.request", "v1")


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_marker_target_moved_is_followed(tmp_path: Path, backend: str) -> None:
    """A marker symlink pointed at a file in another directory: writes to the new target are hints."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "real").write_text("v1")
    (two / "real").write_text("v1")
    m = tmp_path / "deploy.request"
    os.symlink(one / "real", m)
    async with watching(m, backend) as hints:
        tmp = tmp_path / "link.tmp"
        os.symlink(two / "real", tmp)
        os.replace(tmp, m)
        await hints.next()
        await hints.settle(1.5)
        await write_and_expect_hint(hints, two / "real", "v2")


def _configmap(d: Path, seq: int, text: str) -> None:
    """One update of a ConfigMap volume, as kubelet's atomic writer makes it."""
    ts = d / f"..2026_01_01_00_00_00.{seq:09d}"
    ts.mkdir()
    (ts / "deploy.request").write_text(text)
    old = os.readlink(d / "..data") if (d / "..data").is_symlink() else None
    os.symlink(ts.name, d / "..data_tmp")
    os.replace(d / "..data_tmp", d / "..data")
    if old is not None:
        shutil.rmtree(d / old)
    if not (d / "deploy.request").is_symlink():
        os.symlink("..data/deploy.request", d / "deploy.request")


@pytest.mark.anyio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_configmap_data_swap_is_a_hint(tmp_path: Path, backend: str) -> None:
    """Each ``..data`` symlink swap of a ConfigMap volume gives a hint, the second one too."""
    _configmap(tmp_path, 1, "v1")
    async with watching(tmp_path / "deploy.request", backend) as hints:
        for seq in (2, 3):
            seen = hints.count
            await anyio.to_thread.run_sync(_configmap, tmp_path, seq, f"v{seq}")
            with anyio.fail_after(5):
                while hints.count == seen:
                    await anyio.sleep(0.005)
            await hints.settle()


def test_default_backend_is_inotify_on_linux_unless_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """inotify on Linux; watchfiles with --poll, and when COORDINATOR_TEST_WATCHER says so."""
    monkeypatch.delenv("COORDINATOR_TEST_WATCHER", raising=False)
    assert watch_backend(True) == "watchfiles"
    assert watch_backend(False) == ("inotify" if sys.platform.startswith("linux") else "watchfiles")
    monkeypatch.setenv("COORDINATOR_TEST_WATCHER", "watchfiles")
    assert watch_backend(False) == "watchfiles"


def _ev(wd: int, mask: int, name: str = "") -> Event:
    return Event(wd, mask, 0, name)


NAMES = {1: {"deploy.request", "deploy.pause"}}


def test_overflow_restarts_the_watch() -> None:
    """IN_Q_OVERFLOW (wd -1: events were lost) re-establishes the watch and re-reads everything."""
    events = [_ev(1, inotify.IN_CREATE, "other"), _ev(-1, inotify.IN_Q_OVERFLOW)]
    assert classify(events, NAMES, {}) is Verdict.RESTART


@pytest.mark.parametrize("mask", [inotify.IN_IGNORED, inotify.IN_DELETE_SELF, inotify.IN_MOVE_SELF, inotify.IN_UNMOUNT])
def test_watched_directory_gone_restarts_the_watch(mask: int) -> None:
    """The watched directory deleted, moved or unmounted (or its watch dropped): re-establish it."""
    assert classify([_ev(1, mask)], NAMES, {}) is Verdict.RESTART


@pytest.mark.parametrize("name", ["deploy.request", "deploy.pause", "..data", "..2026_01_01"])
def test_marker_pause_and_configmap_names_are_hints(name: str) -> None:
    """Events on the marker's, the pause file's and ConfigMap's ``..`` names are hints."""
    assert classify([_ev(1, inotify.IN_MOVED_TO, name)], NAMES, {}) is Verdict.HINT


def test_other_names_and_unknown_watches_are_nothing() -> None:
    """Other files of the directory, and events of a watch no longer known, give no hint."""
    events = [_ev(1, inotify.IN_CLOSE_WRITE, "deploy.status.json"), _ev(7, inotify.IN_DELETE_SELF)]
    assert classify(events, NAMES, {}) is Verdict.NOTHING


def test_awaited_directory_appearing_restarts_the_watch() -> None:
    """In the ancestor of a missing directory, only that directory's name appearing restarts the watch."""
    anchors = {2: "markers"}
    assert classify([_ev(2, inotify.IN_CREATE | inotify.IN_ISDIR, "other")], NAMES, anchors) is Verdict.NOTHING
    assert classify([_ev(2, inotify.IN_CREATE | inotify.IN_ISDIR, "markers")], NAMES, anchors) is Verdict.RESTART


def test_parse_events_reads_padded_names() -> None:
    """Events as the kernel packs them: a header, then the name padded with NULs (none for the directory)."""
    data = struct.pack("=iIII", 1, inotify.IN_MOVED_TO, 9, 16) + b"deploy.request\0\0"
    data += struct.pack("=iIII", -1, inotify.IN_Q_OVERFLOW, 0, 0)
    assert parse_events(data) == [
        Event(1, inotify.IN_MOVED_TO, 9, "deploy.request"),
        Event(-1, inotify.IN_Q_OVERFLOW, 0, ""),
    ]
