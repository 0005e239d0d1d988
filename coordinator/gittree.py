"""The git commands that work on a release directory (a work tree) with an index of its own:
checkout, the incremental and recycling merges, the check of a release against its manifest, and the
diff between two commits. :class:`~coordinator.git.GitCache` has them all; they live here to keep
each module readable. Marker text never reaches them: only commit ids and paths of the tree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from coordinator.exceptions import GitError
from coordinator.proc import GroupResult

__all__ = ["EMPTY_TREE", "TreeCommands", "last_line", "redact"]

# userinfo runs up to the last '@' before the host: a password may itself contain '@'
_CRED_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s]*@")


def redact(text: str) -> str:
    """Hide user names and passwords in URLs: ``https://u:p@host/x`` becomes ``https://***@host/x``."""
    return _CRED_RE.sub(r"\g<scheme>***@", text)


def last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    # git's most useful line is usually the first "fatal:" one
    for ln in lines:
        if ln.startswith("fatal:"):
            return ln[:300]
    return (lines[-1] if lines else "no output")[:300]


class TreeCommands:
    """The work-tree commands of :class:`~coordinator.git.GitCache` (which provides :meth:`_git`)."""

    repo: str

    async def _git(
        self,
        args: Sequence[str],
        *,
        limit_s: float | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        max_output: int = 64 * 1024,
        stdin: bytes | None = None,
    ) -> GroupResult:
        raise NotImplementedError

    async def checkout(self, sha: str, dest: Path, index_file: Path, *, keep_index: bool = False) -> None:
        """Write exactly the tracked files of ``sha`` into the empty directory ``dest`` (no ``.git``).

        ``keep_index``: leave ``index_file`` behind, holding the stat data of every file written (the
        manifest :mod:`coordinator.recycle` checks a release against); else it is removed."""
        ok = False
        try:
            await self.read_tree(sha, dest, index_file)
            update = ["-u"] if keep_index else []
            await self._git([*_work_tree(dest), "checkout-index", "-a", "-f", *update], env=_index(index_file))
            ok = True
        finally:  # also the lock of a git killed mid-write (a timeout, a cancelled deploy)
            with anyio.CancelScope(shield=True):
                doomed = [index_file.with_name(index_file.name + ".lock")]
                for f in doomed if ok and keep_index else [index_file, *doomed]:
                    await anyio.Path(f).unlink(missing_ok=True)

    # ------------------------------------------------------------------ for incremental preparation

    async def read_tree(self, sha: str, dest: Path, index_file: Path) -> None:
        """Build the index ``index_file`` of ``sha`` for the work tree ``dest`` (nothing written there)."""
        await self._git([*_work_tree(dest), "read-tree", "--end-of-options", sha], env=_index(index_file))

    async def checkout_paths(
        self, dest: Path, index_file: Path, paths: Sequence[str], *, update_stat: bool = False
    ) -> None:
        """Write ``paths`` (repository-relative) from the index ``index_file`` into ``dest``
        (``update_stat``: and record their stat data in the index)."""
        update = ["-u"] if update_stat else []
        await self._git([*_work_tree(dest), "checkout-index", "-f", *update, "--", *paths], env=_index(index_file))

    # ------------------------------------------------------------------ for recycling (coordinator.recycle)

    async def merge_trees(self, old: str, new: str, dest: Path, index_file: Path, *, update: bool) -> None:
        """``git read-tree -m [-u] OLD NEW``: turn the index ``index_file`` of ``old`` into one of ``new``,
        keeping the stat data of unchanged entries; with ``update`` also the work tree ``dest`` (changed
        files are unlinked and written anew, deleted ones unlinked, emptied directories removed), else
        the index alone (``-i``: ``dest`` is neither checked nor written)."""
        args = ["read-tree", "-m", "-u" if update else "-i", "--end-of-options", old, new]
        await self._git([*_work_tree(dest), *_STAT_CHECK, *args], env=_index(index_file))

    async def write_entries(self, dest: Path, index_file: Path, records: bytes) -> None:
        """Write the entries ``records`` (``update-index -z --index-info`` records: mode, object id,
        path) into ``dest`` with ``checkout-index -a -f`` through the temporary index ``index_file``
        (removed after): each file unlinked, then created (a new inode), directories made as needed.
        Attributes are those of ``dest``, as for any checkout into it."""
        try:
            await self._git(
                [*_work_tree(dest), "update-index", "-z", "--index-info"], env=_index(index_file), stdin=records
            )
            await self._git([*_work_tree(dest), "checkout-index", "-a", "-f"], env=_index(index_file))
        finally:
            with anyio.CancelScope(shield=True):
                for f in (index_file, index_file.with_name(index_file.name + ".lock")):
                    await anyio.Path(f).unlink(missing_ok=True)

    async def refresh(self, dest: Path, index_file: Path) -> str | None:
        """Check ``dest`` against the stat data (and, where that differs, the content) the index
        ``index_file`` records: None when every entry matches, else git's first complaint
        (``path: needs update`` for a modified, missing or retyped entry)."""
        result = await self._git(
            [*_work_tree(dest), *_STAT_CHECK, "update-index", "--refresh"], env=_index(index_file), check=False
        )
        if result.returncode == 0:
            return None
        return _first_line(result.stdout) or last_line(result.stderr)

    async def remove_untracked(self, dest: Path, index_file: Path) -> tuple[int, str | None]:
        """Delete from ``dest`` every file and directory the index ``index_file`` does not track
        (``__pycache__`` an app server wrote, logs, empty directories; ignored paths too), by removing
        names only (``git clean -ffdx``: a symlink is removed, never followed). Returns how many paths
        went, and git's complaint when one could not be removed (else None)."""
        result = await self._git(
            [*_work_tree(dest), *_STAT_CHECK, "clean", "-ffdx"],
            env=_index(index_file),
            check=False,
            max_output=1024 * 1024,
        )
        removed = sum(1 for line in result.stdout.splitlines() if line.startswith(b"Removing "))
        if result.returncode != 0 or result.stderr.strip():
            return removed, last_line(result.stderr) or f"git clean exited {result.returncode}"
        return removed, None

    async def tracked_under(self, dest: Path, index_file: Path, paths: Sequence[str]) -> list[str]:
        """The entries of the index ``index_file`` at or under ``paths`` (literal pathspecs)."""
        specs = [f":(literal){p}" for p in paths]
        result = await self._git(
            [*_work_tree(dest), "ls-files", "-z", "--", *specs], env=_index(index_file), max_output=16 * 1024 * 1024
        )
        return [os.fsdecode(p) for p in result.stdout.split(b"\0") if p]

    async def diff_tree(self, old: str | None, new: str, output: Path) -> str | None:
        """Write ``git diff-tree -r -z --raw`` of the commits ``old`` -> ``new`` to ``output`` (``old``
        None: from the empty tree, i.e. a listing of ``new``). Returns None, or git's error when
        ``old`` is not a commit of the cache (a ``new`` that is not raises GitError)."""
        empty = EMPTY_TREE.get(len(new))
        if empty is None:
            raise GitError(f"unexpected object id {new[:80]!r}", fix="report this as a bug")
        args = [*_DIFF_TREE, f"--output={output}", "--end-of-options", old or empty, new]
        if old is None:
            await self._git(args)
            return None
        result = await self._git(args, check=False)
        return None if result.returncode == 0 else redact(last_line(result.stderr))


#: the empty tree, built into git for both object formats (by the length of an object id)
EMPTY_TREE = {
    40: "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
    64: "6ef19b41225c5369f1c104d45d8d85efa9b057b53b14b4b9b939dd74decc5321",
}
_DIFF_TREE = ("diff-tree", "-r", "-z", "--raw", "--no-renames", "--ignore-submodules=none")


def _work_tree(dest: Path) -> list[str]:
    """Options for a checkout into ``dest``: no line-ending conversion, symlinks as symlinks."""
    return [f"--work-tree={dest}", "-c", "core.autocrlf=false", "-c", "core.symlinks=true"]


#: how an index is compared with a work tree: every stat field but ctime, which link(2) changes (a
#: release whose files other releases hard-link keeps its mtime, size, inode, uid and gid), and no
#: cache or monitor a user's configuration could enable
_STAT_CHECK = (
    "-c",
    "core.trustctime=false",
    "-c",
    "core.checkStat=default",
    "-c",
    "core.untrackedCache=false",
    "-c",
    "core.fsmonitor=false",
)


def _first_line(out: bytes) -> str | None:
    line = out.split(b"\n", 1)[0].strip()
    return line.decode("utf-8", "replace")[:300] if line else None


def _index(index_file: Path) -> dict[str, str]:
    return {"GIT_INDEX_FILE": str(index_file)}
