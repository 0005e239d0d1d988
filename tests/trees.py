"""Trees of files, symlinks and submodules for the preparation tests: how to write one, commit it in a
real repository and compare releases by inode; the named transitions every preparation path must get
exactly right, and a hypothesis strategy of random tree pairs."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path

from hypothesis import strategies as st

from tests.helpers import GitRepo

#: one entry of a tree: ("f", content, executable), ("l", symlink target, False) or ("g", commit, False)
Leaf = tuple[str, bytes, bool]
Tree = Mapping[str, Leaf]
SUBMODULE_SHA = "1" * 40


def F(content: str | bytes, exe: bool = False) -> Leaf:
    """A regular file."""
    return ("f", content if isinstance(content, bytes) else content.encode(), exe)


def L(target: str) -> Leaf:
    """A symlink."""
    return ("l", target.encode(), False)


def G(sha: str = SUBMODULE_SHA) -> Leaf:
    """A submodule (gitlink)."""
    return ("g", sha.encode(), False)


def commit_tree(repo: GitRepo, tree: Tree, tag: str) -> str:
    """Make the work tree exactly ``tree``, commit everything, tag it; return the commit (blocking)."""
    for child in repo.path.iterdir():
        if child.name == ".git":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for rel, (kind, data, exe) in tree.items():
        p = repo.path / rel
        if kind == "g":
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "l":
            os.symlink(data, p)
        else:
            p.write_bytes(data)
            p.chmod(0o755 if exe else 0o644)
    repo.git("add", "-A")
    for rel, (kind, data, _exe) in tree.items():
        if kind == "g":
            repo.git("update-index", "--add", "--cacheinfo", f"160000,{data.decode()},{rel}")
    repo.git("commit", "-q", "--allow-empty", "-m", tag)
    repo.git("tag", "-f", tag)
    return repo.git("rev-parse", "HEAD")


def inodes(root: Path) -> dict[str, int]:
    """path -> inode of every file and symlink under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:  # a symlink to a directory is listed in dirnames
            full = os.path.join(dirpath, name)
            st_ = os.lstat(full)
            if not stat.S_ISDIR(st_.st_mode):
                out[os.path.relpath(full, root)] = st_.st_ino
    return out


BASE: dict[str, Leaf] = {"keep.txt": F("kept\n"), "pkg/mod.py": F("X = 1\n"), "bin/run": F("#!/bin/sh\n", exe=True)}

TRANSITIONS: dict[str, tuple[Tree, Tree]] = {
    "modified": ({**BASE, "a.txt": F("one\n")}, {**BASE, "a.txt": F("two\n")}),
    "added": (BASE, {**BASE, "pkg/new.py": F("Y = 2\n")}),
    "deleted": ({**BASE, "gone.txt": F("bye\n")}, BASE),
    "mode_644_to_755": ({**BASE, "tool": F("same\n")}, {**BASE, "tool": F("same\n", exe=True)}),
    "mode_755_to_644": ({**BASE, "tool": F("same\n", exe=True)}, {**BASE, "tool": F("same\n")}),
    "file_to_symlink": ({**BASE, "x": F("keep.txt")}, {**BASE, "x": L("keep.txt")}),
    "symlink_to_file": ({**BASE, "x": L("keep.txt")}, {**BASE, "x": F("keep.txt")}),
    "dir_to_file": ({**BASE, "d/x": F("x\n"), "d/y/z": F("z\n")}, {**BASE, "d": F("now a file\n")}),
    "file_to_dir": ({**BASE, "d": F("a file\n")}, {**BASE, "d/x": F("x\n"), "d/y/z": F("z\n")}),
    "dir_becomes_empty": ({**BASE, "d/x": F("x\n"), "d/sub/y": F("y\n")}, BASE),
    "symlinked_dir_to_real_dir": (
        {**BASE, "real/x": F("r\n"), "alias": L("real")},
        {**BASE, "real/x": F("r\n"), "alias/x": F("own\n")},
    ),
    "real_dir_to_symlinked_dir": (
        {**BASE, "real/x": F("r\n"), "alias/x": F("own\n")},
        {**BASE, "real/x": F("r\n"), "alias": L("real")},
    ),
    "deep_new_dirs": (BASE, {**BASE, "n/e/w/d/e/e/p.py": F("deep\n"), "n/other.txt": F("o\n")}),
    "unchanged_tree": (BASE, dict(BASE)),
    "dangling_and_escaping_symlinks": (BASE, {**BASE, "dangling": L("nowhere"), "esc": L("../../../etc/passwd")}),
    "binary_and_empty_files": ({**BASE, "blob": F(bytes(range(256)))}, {**BASE, "blob": F(b""), "e": F(b"")}),
    "submodule_added": (BASE, {**BASE, "vendor/sub": G()}),
    "submodule_removed": ({**BASE, "vendor/sub": G()}, BASE),
    "submodule_moved_commit": ({**BASE, "vendor/sub": G()}, {**BASE, "vendor/sub": G("2" * 40)}),
    "odd_names": (
        {**BASE, "-dash": F("1"), "sp ace/\u00fc.txt": F("u")},
        {**BASE, "-dash": F("2"), "sp ace/\u00fc.txt": F("v"), "new\nline": F("n"), os.fsdecode(b"caf\xe9"): F("c")},
    ),
    "everything_changed": (BASE, {"keep.txt": F("other\n"), "pkg": F("file\n"), "bin/run": F("#!/bin/sh\n")}),
}


def changed_paths(old: Tree, new: Tree) -> tuple[set[str], set[str]]:
    """(unchanged, changed) files and symlinks of ``new`` relative to ``old``."""
    leaves = {p for p, leaf in new.items() if leaf[0] != "g"}
    unchanged = {p for p in leaves if old.get(p) == new[p]}
    return unchanged, leaves - unchanged


_NAMES = ("a", "b")
_PATHS = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(_NAMES, repeat=n)]
_LEAVES = st.one_of(
    st.builds(F, st.sampled_from([b"", b"x", b"y\n"]), st.booleans()),
    st.builds(L, st.sampled_from(["a", "../b", "a/b", "missing"])),
)


def _consistent(tree: dict[str, Leaf]) -> dict[str, Leaf]:
    """Drop each file that a deeper path needs as a directory."""
    return {p: leaf for p, leaf in tree.items() if not any(q.startswith(p + "/") for q in tree)}


@st.composite
def tree_pairs(draw: st.DrawFn) -> tuple[dict[str, Leaf], dict[str, Leaf]]:
    """A small tree and an edited copy of it (files, symlinks and modes added, changed or removed)."""
    old = _consistent(draw(st.dictionaries(st.sampled_from(_PATHS), _LEAVES, max_size=8)))
    edits = draw(st.dictionaries(st.sampled_from(_PATHS), st.none() | _LEAVES, max_size=3))
    if old:  # most edits hit existing paths: content, mode and type changes, removals
        edits |= draw(st.dictionaries(st.sampled_from(sorted(old)), st.none() | _LEAVES, max_size=4))
    new = dict(old)
    for p, leaf in edits.items():
        if leaf is None:
            new.pop(p, None)
        else:
            new[p] = leaf
    return old, _consistent(new)
