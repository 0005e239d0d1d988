"""coordinator.fsutil against the real filesystem: atomic writes, symlink swaps, safe tree removal."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.fsutil import atomic_write, is_real_dir, remove_tree, swap_symlink, sync_tree

NOBODY = 65534


@pytest.fixture
def umask_077() -> Iterator[None]:
    """Run the test under a restrictive umask, restoring the old one afterwards."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def unprivileged_dir() -> Iterator[Path]:
    """A directory in /tmp that ``nobody`` can reach (pytest's own temporary directories are 0700)."""
    with tempfile.TemporaryDirectory(prefix="coordinator-test-") as d:
        path = Path(d)
        try:
            yield path
        finally:
            for dirpath, _dirnames, _files in os.walk(path):
                os.chmod(dirpath, 0o700)


def _tree(base: Path) -> Path:
    """A small tree with nested directories and files; returns its root."""
    (base / "a" / "b").mkdir(parents=True)
    (base / "top.txt").write_text("top")
    (base / "a" / "mid.txt").write_text("mid")
    (base / "a" / "b" / "deep.txt").write_text("deep")
    return base


def _run_unprivileged(fn: Callable[[], None]) -> None:
    """Run ``fn`` where file permissions apply: in a forked child as ``nobody`` when we are root."""
    if os.geteuid() != 0:
        fn()
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn()
            code = 0
        except BaseException as e:
            os.write(2, f"unprivileged child failed: {e!r}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "remove_tree failed in the unprivileged child"


def _chown_tree(path: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, uid)
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


# ---------------------------------------------------------------------------------------- atomic_write


def test_atomic_write_writes_content(tmp_path: Path) -> None:
    """atomic_write creates the file with exactly the given bytes."""
    target = tmp_path / "f.json"
    atomic_write(target, b"\x00hello\nworld\xff")
    assert target.read_bytes() == b"\x00hello\nworld\xff"


def test_atomic_write_writes_large_content(tmp_path: Path) -> None:
    """atomic_write writes every byte of a payload larger than one write() call may take."""
    data = os.urandom(3 * 1024 * 1024)
    target = tmp_path / "big"
    atomic_write(target, data)
    assert target.read_bytes() == data


@pytest.mark.usefixtures("umask_077")
@pytest.mark.parametrize("mode", [0o644, 0o600, 0o755])
def test_atomic_write_sets_exact_mode_despite_umask(tmp_path: Path, mode: int) -> None:
    """The file gets exactly the requested mode, whatever the process umask."""
    target = tmp_path / "f"
    atomic_write(target, b"x", mode=mode)
    assert stat.S_IMODE(os.stat(target).st_mode) == mode


def test_atomic_write_replaces_existing_file_with_new_inode(tmp_path: Path) -> None:
    """An existing file is replaced by rename: a reader holding the old file still sees the old bytes."""
    target = tmp_path / "f"
    target.write_bytes(b"old content")
    with open(target, "rb") as old:
        atomic_write(target, b"new")
        assert old.read() == b"old content"
    assert target.read_bytes() == b"new"


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    """After a write (and an overwrite) only the target name is left in the directory."""
    target = tmp_path / "f"
    atomic_write(target, b"1")
    atomic_write(target, b"2")
    assert sorted(os.listdir(tmp_path)) == ["f"]


def test_atomic_write_not_durable_still_replaces_atomically(tmp_path: Path) -> None:
    """With durable=False the file is still replaced by rename, with its mode, and no temp file is left."""
    target = tmp_path / "f"
    target.write_bytes(b"old")
    with open(target, "rb") as old:
        atomic_write(target, b"new", mode=0o600, durable=False)
        assert old.read() == b"old"
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_missing_parent_raises(tmp_path: Path) -> None:
    """Writing into a directory that does not exist raises FileNotFoundError and creates nothing."""
    target = tmp_path / "missing" / "f"
    with pytest.raises(FileNotFoundError):
        atomic_write(target, b"x")
    assert os.listdir(tmp_path) == []


def test_atomic_write_replaces_symlink_instead_of_writing_through(tmp_path: Path) -> None:
    """A symlink at the path is replaced by a regular file; the file it pointed to is untouched."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    target = tmp_path / "f"
    target.symlink_to(outside)
    atomic_write(target, b"new")
    assert not target.is_symlink()
    assert target.read_bytes() == b"new"
    assert outside.read_bytes() == b"precious"


# ---------------------------------------------------------------------------------------- swap_symlink


def test_swap_symlink_creates_relative_link(tmp_path: Path) -> None:
    """A new link points at exactly the given relative target and resolves inside its directory."""
    (tmp_path / "releases" / "r1").mkdir(parents=True)
    link = tmp_path / "current"
    swap_symlink(link, "releases/r1")
    assert link.is_symlink()
    assert os.readlink(link) == "releases/r1"
    assert link.resolve() == (tmp_path / "releases" / "r1").resolve()


def test_swap_symlink_replaces_existing_link(tmp_path: Path) -> None:
    """An existing link is re-pointed and no temporary link is left behind."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "current"
    swap_symlink(link, "a")
    swap_symlink(link, "b")
    assert os.readlink(link) == "b"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "current"]


@pytest.mark.timeout(60)
def test_swap_symlink_readers_never_see_the_link_missing(tmp_path: Path) -> None:
    """Readers stat/open through the link while it is swapped 2,000 times and never get an error."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    link = tmp_path / "current"
    swap_symlink(link, "a")
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[str] = set()
    reads = 0

    def reader() -> None:
        nonlocal reads
        path = os.path.join(link, "f")
        while not stop.is_set():
            try:
                os.stat(path)
                with open(path) as f:
                    seen.add(f.read())
                reads += 1
            except OSError as e:  # FileNotFoundError when the name is briefly missing
                errors.append(e)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 45
    try:
        for i in range(2000):
            swap_symlink(link, "b" if i % 2 == 0 else "a")
            if errors or time.monotonic() > deadline:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert i == 1999, "the swap loop did not finish in time"
    assert reads > 100, "the readers hardly ran; the race was not exercised"
    assert seen == {"a", "b"}


# ---------------------------------------------------------------------------------------- sync_tree


def test_sync_tree_returns_on_real_tree(tmp_path: Path) -> None:
    """sync_tree flushes a real tree with files, subdirectories and a symlink and returns None."""
    tree = _tree(tmp_path / "t")
    (tree / "link").symlink_to("top.txt")
    sync_tree(tree)
    assert (tree / "a" / "b" / "deep.txt").read_text() == "deep"


def test_sync_tree_missing_path_raises(tmp_path: Path) -> None:
    """sync_tree on a path that does not exist raises FileNotFoundError."""
    with pytest.raises(FileNotFoundError):
        sync_tree(tmp_path / "missing")


# ---------------------------------------------------------------------------------------- is_real_dir


def test_is_real_dir_true_for_directory(tmp_path: Path) -> None:
    """A real directory is a real dir."""
    assert is_real_dir(tmp_path)


def test_is_real_dir_false_for_symlink_to_directory(tmp_path: Path) -> None:
    """A symlink to a directory is not a real dir."""
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to("d")
    assert not is_real_dir(tmp_path / "link")


def test_is_real_dir_false_for_missing_path(tmp_path: Path) -> None:
    """A missing path is not a real dir."""
    assert not is_real_dir(tmp_path / "missing")


def test_is_real_dir_false_for_file(tmp_path: Path) -> None:
    """A regular file is not a real dir."""
    (tmp_path / "f").write_text("x")
    assert not is_real_dir(tmp_path / "f")


def test_is_real_dir_false_for_dangling_symlink(tmp_path: Path) -> None:
    """A dangling symlink is not a real dir."""
    (tmp_path / "link").symlink_to("nowhere")
    assert not is_real_dir(tmp_path / "link")


def test_is_real_dir_false_below_a_file(tmp_path: Path) -> None:
    """A path whose parent is a regular file is not a real dir (and does not raise)."""
    (tmp_path / "f").write_text("x")
    assert not is_real_dir(tmp_path / "f" / "sub")


# ---------------------------------------------------------------------------------------- remove_tree


def test_remove_tree_removes_tree(tmp_path: Path) -> None:
    """A nested tree is removed completely."""
    tree = _tree(tmp_path / "t")
    remove_tree(tree)
    assert not os.path.lexists(tree)
    assert os.listdir(tmp_path) == []


def test_remove_tree_does_not_follow_symlink_inside(tmp_path: Path) -> None:
    """A symlink inside the tree pointing outside is removed; the outside directory survives."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    tree = _tree(tmp_path / "t")
    (tree / "a" / "escape").symlink_to(outside)
    (tree / "escape-file").symlink_to(outside / "keep.txt")
    remove_tree(tree)
    assert not os.path.lexists(tree)
    assert (outside / "keep.txt").read_text() == "keep"


def test_remove_tree_unlinks_symlink_at_path(tmp_path: Path) -> None:
    """A symlink at the path itself is unlinked and the directory it points to survives intact."""
    target = _tree(tmp_path / "target")
    link = tmp_path / "link"
    link.symlink_to(target)
    remove_tree(link)
    assert not os.path.lexists(link)
    assert (target / "a" / "b" / "deep.txt").read_text() == "deep"


def test_remove_tree_unlinks_file_at_path(tmp_path: Path) -> None:
    """A regular file at the path is unlinked."""
    f = tmp_path / "f"
    f.write_text("x")
    remove_tree(f)
    assert not os.path.lexists(f)


def test_remove_tree_missing_path_is_fine(tmp_path: Path) -> None:
    """Removing a path that does not exist does nothing and raises nothing."""
    remove_tree(tmp_path / "missing")
    assert os.listdir(tmp_path) == []


def test_remove_tree_removes_read_only_subdirectories(unprivileged_dir: Path) -> None:
    """Read-only directories (as a build may leave) are removed, also when permissions apply."""
    tree = _tree(unprivileged_dir / "t")
    for d in (tree / "a" / "b", tree / "a"):
        d.chmod(0o555)
    if os.geteuid() == 0:
        _chown_tree(unprivileged_dir, NOBODY)
    _run_unprivileged(lambda: remove_tree(tree))
    assert not os.path.lexists(tree)
    assert os.listdir(unprivileged_dir) == []


def test_remove_tree_hides_tree_before_deleting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tree is gone under its own name before deletion starts and no trash is left behind."""
    tree = _tree(tmp_path / "t")
    real_rmtree = shutil.rmtree
    observed: list[tuple[bool, str, bool]] = []

    def spying_rmtree(path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        observed.append((os.path.lexists(tree), os.path.basename(path), Path(path, "top.txt").exists()))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", spying_rmtree)
    remove_tree(tree)
    assert observed, "remove_tree did not call shutil.rmtree"
    still_named, trash_name, trash_complete = observed[0]
    assert not still_named, "the tree was deleted under its own name"
    assert trash_name.startswith(".") and "trash" in trash_name
    assert trash_complete
    assert os.listdir(tmp_path) == []


def test_remove_tree_removes_hidden_directory_in_place(tmp_path: Path) -> None:
    """A hidden (already temporary) directory is removed and leaves no trash behind."""
    tree = _tree(tmp_path / ".tmp-build")
    remove_tree(tree)
    assert os.listdir(tmp_path) == []
