"""Running the build command (``--build-command``) in a new release before it is published.

It runs like every hook (:mod:`coordinator.hooks`): without a shell when it needs none, else through
``/bin/sh -c`` (the operator's own command line, e.g. ``python manage.py collectstatic --noinput``),
in its own process group, with a time limit after which the whole group is killed, and its output
captured: the last lines go into the log and the status error. Marker text never reaches the shell:
the tag, commit and paths arrive only as environment variables (:class:`~coordinator.hooks.HookContext`;
``RELEASE_DIR`` is the hidden workspace, renamed once published).
"""

from __future__ import annotations

from collections.abc import Mapping

from coordinator.exceptions import BuildError
from coordinator.hooks import OUTPUT_LINES, HookContext, run_command

__all__ = ["OUTPUT_LINES", "run_build"]


async def run_build(command: str, ctx: HookContext, limit_s: float, extra_env: Mapping[str, str]) -> None:
    """Run ``command`` in ``ctx.release_dir``; raise BuildError on a non-zero exit or a timeout."""
    assert ctx.release_dir is not None
    result = await run_command(command, ctx, cwd=ctx.release_dir, limit_s=limit_s, extra_env=extra_env)
    if result.ok:
        return
    raise BuildError(
        result.describe("build command", limit_s),
        fix="make the build faster or raise --build-timeout"
        if result.timed_out
        else "see the output in the log; current is unchanged",
        output=result.output,
        rc=result.returncode,
    )
