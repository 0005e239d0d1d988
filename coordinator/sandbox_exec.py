"""The first process of a sandboxed build (:mod:`coordinator.sandbox`): run as a script, standard library only.

``python -I -S sandbox_exec.py SANDBOX RELEASES WORKSPACE -- ARGV...``

1. ``unshare(CLONE_NEWUSER | CLONE_NEWNS)``: a user namespace mapping our own uid and gid to
   themselves, so the build runs as the same user (root too), and a mount namespace
   of our own. Nothing mounted here is seen outside it, and it ends with its last process;
2. every mount made private, then ``RELEASES`` bind-mounted onto itself read-only: no path through
   ``ROOT/releases`` can write a release, published or not;
3. an overlay mounted on ``WORKSPACE`` itself, with the workspace as its lower layer (through the
   symlink ``SANDBOX/lower``) and ``SANDBOX/upper`` and ``SANDBOX/work`` as its upper and work
   directories (``userxattr``: the only form a user namespace may mount). The build sees the same
   path, ``RELEASE_DIR``, with the same content; whatever it writes, even in place into a file that
   is a hard link shared with a published release, is copied up into ``SANDBOX/upper`` first;
4. ``SANDBOX/ready`` created (the setup worked), the working directory set to the overlay, and
   ``ARGV`` executed in place of this process: same process, same process group, same time limit.

A failed setup step prints ``coordinator build sandbox: STEP: ERROR`` and exits 125 without creating
``ready``; a program that cannot be executed exits 127. ``ARGV`` ``--probe`` runs a self-test
instead of a program (:func:`coordinator.sandbox.probe`).
"""

from __future__ import annotations

import ctypes
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
#: statvfs flags that are locked on a mount inherited by a user namespace (same values as the MS_ ones)
_LOCKED = 0x2 | 0x4 | 0x8 | 0x100  # nosuid, nodev, noexec, nosymfollow
#: what the overlay is mounted with: paths relative to the sandbox directory, no features that
#: would store anything but copies, whiteouts and opaque markers in the upper directory
OVERLAY_OPTIONS = b"lowerdir=lower,upperdir=upper,workdir=work,userxattr"

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A setup step failed: ``step`` and the OS error."""


def _check(result: int, step: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{step}: {os.strerror(err)} (errno {err})")


def _write(path: str, data: str, step: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(data)
    except OSError as e:
        raise SetupError(f"{step}: {e.strerror} (errno {e.errno})") from e


def _mount(source: bytes | None, target: str, fstype: bytes | None, flags: int, data: bytes | None, step: str) -> None:
    _check(_libc.mount(source, os.fsencode(target), fstype, ctypes.c_ulong(flags), data), step)


def enter(sandbox: str, releases: str, workspace: str) -> None:
    """Steps 1 to 3 (and ``ready``) of the module docstring; raise SetupError naming the failed step."""
    uid, gid = os.geteuid(), os.getegid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
    # from inside the namespace only our own ids can be mapped (root included: every other owner
    # stays unmapped, and the overlay refuses to copy up a file it cannot map, EOVERFLOW)
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n", "uid_map")
    _write("/proc/self/setgroups", "deny\n", "setgroups")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n", "gid_map")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "make mounts private")
    _mount(os.fsencode(releases), releases, None, MS_BIND | MS_REC, None, "bind releases/")
    locked = os.statvfs(releases).f_flag & _LOCKED
    _mount(None, releases, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked, None, "make releases/ read-only")
    os.chdir(sandbox)
    _mount(b"overlay", workspace, b"overlay", 0, OVERLAY_OPTIONS, "mount overlay")
    os.chdir(workspace)
    _write(os.path.join(sandbox, "ready"), "", "ready")


def _probe() -> None:
    """Write in place into a file of the lower layer, delete one, replace a directory: the upper
    directory then holds what :mod:`coordinator.sandbox` checks and applies."""
    with open("file", "r+") as f:
        f.seek(0, os.SEEK_END)
        f.write("changed\n")
    os.unlink("gone")
    os.unlink("dir/file")
    os.rmdir("dir")
    os.mkdir("dir")


def main(args: list[str]) -> int:
    if len(args) < 5 or args[3] != "--":
        print("usage: sandbox_exec.py SANDBOX RELEASES WORKSPACE -- ARGV...", file=sys.stderr)
        return 2
    sandbox, releases, workspace, argv = args[0], args[1], args[2], args[4:]
    try:
        enter(sandbox, releases, workspace)
        if argv == ["--probe"]:
            _probe()
            return 0
    except (SetupError, OSError) as e:
        print(f"coordinator build sandbox: {e}", file=sys.stderr, flush=True)
        return 125
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"coordinator build sandbox: cannot run {argv[0]}: {e.strerror}", file=sys.stderr, flush=True)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
