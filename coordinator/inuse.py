"""Which releases live processes still use, so retention never deletes them.

With release pinning (:mod:`coordinator.pin`) each app worker's working directory is the real path
of the release it loaded. Scanning ``/proc/<pid>/cwd`` therefore tells which releases old workers
(still finishing requests after a graceful reload) may import from. This only sees processes in the
same PID namespace: a single container under supervisord, or a pod with ``shareProcessNamespace``.
A sidecar that cannot see the app's processes keeps only current and previous, as always.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["releases_in_use"]


def releases_in_use(releases_dir: Path, proc: Path = Path("/proc")) -> set[str]:
    """Names of the release directories under ``releases_dir`` that some process has as its cwd."""
    base = os.path.realpath(releases_dir) + os.sep
    found: set[str] = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            cwd = os.readlink(proc / pid / "cwd")
        except OSError:  # gone, or not ours to look at
            continue
        if cwd.startswith(base):
            name = cwd[len(base) :].split(os.sep, 1)[0]
            if name and not name.startswith("."):
                found.add(name)
    return found
