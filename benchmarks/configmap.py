"""A Kubernetes ConfigMap volume as the deploy trigger, written the way kubelet's atomic writer does.

Layout of the marker's directory (``ROOT/configmap/`` here)::

    deploy.request -> ..data/deploy.request
    ..data -> ..2024_01_01_00_00_00.000000001
    ..2024_01_01_00_00_00.000000001/deploy.request

An update writes a new ``..<timestamp>`` directory with the new file, creates the symlink
``..data_tmp`` pointing to it, renames ``..data_tmp`` over ``..data`` (the moment the new content
becomes visible: t0 is taken just before that rename) and then deletes the old timestamped directory.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

__all__ = ["ConfigMapMarker"]


class ConfigMapMarker:
    """Writes the marker ``<dir>/<key>`` as a ConfigMap volume update; use as a :data:`MarkerWriter`."""

    def __init__(self, directory: Path, key: str = "deploy.request") -> None:
        self.dir = directory
        self.key = key
        self.seq = 0
        self.current: str | None = None

    @property
    def marker(self) -> Path:
        return self.dir / self.key

    def setup(self, text: str) -> None:
        """Create the volume with ``text`` as the key's content (no daemon watching yet)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._publish(text)
        link = self.dir / self.key
        if not link.is_symlink():
            os.symlink(f"..data/{self.key}", link)

    def __call__(self, text: str) -> int:
        return self._publish(text)

    def _publish(self, text: str) -> int:
        self.seq += 1
        ts = f"..2024_01_01_00_00_00.{self.seq:09d}"
        new = self.dir / ts
        new.mkdir(mode=0o755)
        fd = os.open(new / self.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp = self.dir / "..data_tmp"
        os.symlink(ts, tmp)
        t0 = time.time_ns()
        os.rename(tmp, self.dir / "..data")
        if self.current is not None:
            shutil.rmtree(self.dir / self.current)
        self.current = ts
        return t0
