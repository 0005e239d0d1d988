"""Running the build command (``--build-command``) in a new release before it is published.

It runs through ``/bin/sh -c`` (the operator's own command line, e.g. ``python manage.py
collectstatic --noinput``) in its own process group, with a time limit after which the whole group
is killed, and its output captured: the last 20 lines go into the log and the status error. Marker
text never reaches the shell: the tag, commit and paths arrive only as environment variables
(``RELEASE_DIR``, ``RELEASE_NAME``, ``TAG``, ``SHA``, ``PREVIOUS_RELEASE``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from coordinator.exceptions import BuildError
from coordinator.proc import run_in_group

__all__ = ["BuildContext", "run_build"]

#: lines of output kept for the log and the status error
OUTPUT_LINES = 20


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What the build command is told about the release it builds."""

    release_dir: Path
    name: str
    tag: str
    sha: str
    previous: Path | None  # the release that was current (its directory), if any

    def env(self) -> dict[str, str]:
        return {
            "RELEASE_DIR": str(self.release_dir),
            "RELEASE_NAME": self.name,
            "TAG": self.tag,
            "SHA": self.sha,
            "PREVIOUS_RELEASE": str(self.previous) if self.previous else "",
        }


async def run_build(command: str, ctx: BuildContext, limit_s: float, extra_env: Mapping[str, str]) -> None:
    """Run ``command`` in ``ctx.release_dir``; raise BuildError on a non-zero exit or a timeout."""
    env = {**os.environ, **extra_env, **ctx.env()}
    result = await run_in_group(
        ["/bin/sh", "-c", command], limit_s=limit_s, cwd=ctx.release_dir, env=env, merge_stderr=True
    )
    tail = result.output_tail(OUTPUT_LINES)
    if result.timed_out:
        raise BuildError(
            f"build command timed out after {limit_s:g} s (its process group was killed)",
            fix="make the build faster or raise --build-timeout",
            output=tail,
        )
    if result.returncode != 0:
        raise BuildError(
            f"build command failed with exit code {result.returncode}",
            fix="see the output in the log; current is unchanged",
            output=tail,
            rc=result.returncode,
        )
