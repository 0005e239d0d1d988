"""A reader process for the torn-read benchmark: ``python -m benchmarks.reader MANIFEST TARGET MODE OUT``.

It reads every file of the tree at TARGET, over and over, as an app worker importing its modules
would, and appends one line per complete pass to OUT: ``<start ns> <end ns> <code>`` (wall clock,
``time.time_ns``). The code says what the pass saw:

* ``>= 0``: exactly the tree of one version (its index in the manifest's ``tags``);
* ``-1`` torn: every file was there, but the set of versions matches no single version's tree;
* ``-2`` missing: a file could not be opened (a writer had unlinked it and not yet recreated it);
* ``-3`` partial: a file was empty or cut short (opened between its creation and its last write).

Every file's first line names the version that last wrote it (see :mod:`benchmarks.repos`); the
manifest lists, for every version, the first line of every file, so a pass is classified with one
dictionary look-up.

MODE says how the reader resolves TARGET:

* ``pinned``: ``os.path.realpath(TARGET)`` once at the start of each pass, then every file under
  that directory (what a worker pinned to its release does: coordinator's recommended set-up);
* ``follow``: every open goes through TARGET (a symlink followed anew on every open: ``sys.path``
  holding the symlink path);
* ``plain``: TARGET is the live directory itself (in-place deploys).

Standard library only, so that it starts fast. It runs until killed (SIGTERM).
"""

from __future__ import annotations

import json
import os
import sys
import time

__all__ = ["main"]

CLEAN_MIN = 0
TORN = -1
MISSING = -2
PARTIAL = -3


def main(argv: list[str]) -> int:
    manifest_path, target, mode, out_path = argv
    if mode not in ("pinned", "follow", "plain"):
        raise SystemExit(f"unknown mode {mode!r}")
    with open(manifest_path, "rb") as f:
        manifest = json.load(f)
    paths: list[str] = manifest["paths"]
    known: dict[tuple[bytes, ...], int] = {}
    for idx, tag in enumerate(manifest["tags"]):
        known[tuple(f"# version: {label}".encode() for label in manifest["labels"][tag])] = idx
    flags = os.O_RDONLY | os.O_CLOEXEC
    open_, read, close, time_ns, realpath = os.open, os.read, os.close, time.time_ns, os.path.realpath
    with open(out_path, "a", buffering=1) as out:
        while True:
            t0 = time_ns()
            base = (realpath(target) if mode == "pinned" else target) + "/"
            seen: list[bytes] = []
            missing = partial = False
            for p in paths:
                try:
                    fd = open_(base + p, flags)
                except OSError:
                    missing = True
                    seen.append(b"")
                    continue
                try:
                    data = read(fd, 1 << 17)
                finally:
                    close(fd)
                end = data.find(b"\n")
                if end < 0 or not data.endswith(b"\n"):
                    partial = True
                seen.append(data[:end] if end >= 0 else data)
            t1 = time_ns()
            code = MISSING if missing else PARTIAL if partial else known.get(tuple(seen), TORN)
            out.write(f"{t0} {t1} {code}\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
