"""Which directories are watched for a marker, and that events are only hints."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from coordinator.watch import watch_marker, watched_dirs


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


@pytest.mark.anyio
async def test_only_marker_events_are_hints(tmp_path: Path) -> None:
    """Once watching, writing other files in the marker's directory gives no hint; the marker does."""
    hints: list[int] = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_marker(tmp_path / "deploy.request", lambda: hints.append(1), stop_event=stop))
        with anyio.fail_after(5):  # every new watch gives one hint when it is in place
            while not hints:
                await anyio.sleep(0.01)
        hints.clear()
        await anyio.Path(tmp_path / "deploy.status.json").write_text("{}")
        await anyio.Path(tmp_path / "reload.touch").write_text("")
        await anyio.sleep(0.3)
        assert hints == []
        await anyio.Path(tmp_path / "deploy.request").write_text("v1")
        with anyio.fail_after(5):
            while not hints:
                await anyio.sleep(0.01)
        stop.set()
