"""Running the build command (``--build-command``) in a new release before it is published.

It runs like every hook (:mod:`coordinator.hooks`): without a shell when it needs none, else through
``/bin/sh -c`` (the operator's own command line, e.g. ``python manage.py collectstatic --noinput``),
in its own process group, with a time limit after which the whole group is killed, and its output
captured: the last lines go into the log and the status error. Marker text never reaches the shell:
the tag, commit and paths arrive only as environment variables (:class:`~coordinator.hooks.HookContext`;
``RELEASE_DIR`` is the hidden workspace, renamed once published).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from coordinator.exceptions import BuildError
from coordinator.hooks import OUTPUT_LINES, HookContext, run_in_release

__all__ = ["OUTPUT_LINES", "run_build"]


async def run_build(
    command: str, ctx: HookContext, limit_s: float, extra_env: Mapping[str, str], argv_prefix: Sequence[str] = ()
) -> None:
    """Run ``command`` in ``ctx.release_dir`` (through ``argv_prefix``: the build sandbox, see
    :mod:`coordinator.sandbox`); raise BuildError on a non-zero exit or a timeout."""
    await run_in_release(
        command,
        ctx,
        limit_s,
        extra_env,
        what="build command",
        error=BuildError,
        fix="see the output in the log; current is unchanged",
        timeout_fix="make the build faster or raise --build-timeout",
        argv_prefix=argv_prefix,
    )
