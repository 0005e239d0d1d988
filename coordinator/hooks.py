"""Operator commands run around a deploy: ``--build-command``, ``--pre-swap-command`` and
``--notify-command`` (the notifier, :mod:`coordinator.notify`, runs the last one).

Every command:

* runs without a shell when it needs none (:func:`command_argv`), else through ``/bin/sh -c``;
* gets one environment (:class:`HookContext`): the tag, commit and paths arrive only as environment
  variables, so marker text never becomes a shell word;
* runs in its own process group, killed whole (SIGKILL, grandchildren too) when its time runs out or
  when it exits (:func:`coordinator.proc.run_in_group`);
* has its output (stderr merged into stdout) captured: at most the last 64 KiB are kept while it runs,
  and the last :data:`OUTPUT_LINES` lines, at most :data:`OUTPUT_CHARS` characters, reach the log and
  the status file (:func:`run_command`).

The build and pre-swap commands run in the release directory (:func:`run_in_release`), a non-zero
exit or a timeout raising the caller's error. The pre-swap command (:func:`run_pre_swap`) runs before
every swap a marker request makes and raises :class:`~coordinator.exceptions.PreSwapError`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.exceptions import CoordinatorError, PreSwapError
from coordinator.proc import run_in_group

__all__ = [
    "OUTPUT_CHARS",
    "OUTPUT_LINES",
    "HookContext",
    "HookResult",
    "command_argv",
    "needs_shell",
    "run_command",
    "run_in_release",
    "run_pre_swap",
]

#: lines of output kept for the log and the status error
OUTPUT_LINES = 20
#: at most this many characters of those lines (a single 100 MB line stays small in the status file)
OUTPUT_CHARS = 4000
#: bytes of output kept while a command runs (the rest is discarded as it arrives)
OUTPUT_BYTES = 64 * 1024

#: characters that mean a shell is needed when they appear outside quotes
_SHELL_CHARS = frozenset("|&;<>()$`*?[]#~{}!\n\r")
#: first words that only a shell understands: reserved words and builtins with no program of that name
# fmt: off
_SHELL_WORDS = frozenset({
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "function", "if", "in",
    "select", "then", "time", "until", "while", ".", ":", "alias", "bg", "break", "cd", "command",
    "continue", "eval", "exec", "exit", "export", "fg", "getopts", "hash", "jobs", "local", "read",
    "readonly", "return", "set", "shift", "source", "times", "trap", "type", "ulimit", "umask",
    "unalias", "unset", "wait",
})
# fmt: on
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def needs_shell(cmd: str) -> bool:
    """Whether ``cmd`` needs ``/bin/sh`` to mean what it says. The rule, scanning like a POSIX shell:

    * outside quotes: any of ``| & ; < > ( ) $ ` * ? [ ] # ~ { } !``, a carriage return, or a
      backslash at the very end;
    * inside double quotes: ``$``, a backquote, or a backslash before ``$``, a backquote or a newline
      (the shell expands or removes them; :mod:`shlex` would keep them);
    * a newline anywhere, or an unterminated quote;
    * a first word that is a shell reserved word or builtin (``exit``, ``cd``, ``export``, ``set``,
      ``if``...) or a variable assignment (``FOO=bar cmd``).

    Everything else (words, single quotes, double quotes, backslash escapes) :func:`shlex.split`
    splits exactly as the shell would, so the command runs without one.
    """
    quote = ""
    i, n = 0, len(cmd)
    while i < n:
        c = cmd[i]
        if c == "\n":  # a line break means a script (or a continuation line)
            return True
        if quote == "'":
            if c == "'":
                quote = ""
        elif quote == '"':
            if c in "$`":
                return True
            if c == "\\":
                if i + 1 >= n or cmd[i + 1] in "$`\n":
                    return True
                if cmd[i + 1] in '"\\':
                    i += 1
            elif c == '"':
                quote = ""
        elif c == "\\":
            if i + 1 >= n or cmd[i + 1] == "\n":
                return True
            i += 1
        elif c in "'\"":
            quote = c
        elif c in _SHELL_CHARS:
            return True
        i += 1
    if quote:
        return True
    words = shlex.split(cmd)
    return not words or words[0] in _SHELL_WORDS or _ASSIGNMENT.match(words[0]) is not None


def command_argv(cmd: str) -> list[str]:
    """The argv that runs ``cmd``: split by :mod:`shlex` and run without a shell when
    :func:`needs_shell` says it needs none, else ``["/bin/sh", "-c", cmd]``."""
    return ["/bin/sh", "-c", cmd] if needs_shell(cmd) else shlex.split(cmd)


@dataclass(frozen=True, slots=True)
class HookContext:
    """What every command is told about the release it runs for, as environment variables."""

    root: Path
    tag: str
    sha: str
    release: str  # the release name ("" when the attempt never got one)
    release_dir: Path | None  # where it is (the build's workspace while building)
    previous: Path | None  # the directory of the release that was current, if any
    request_id: str | None = None

    def env(self) -> dict[str, str]:
        return {
            "RELEASE_DIR": str(self.release_dir) if self.release_dir else "",
            "RELEASE": self.release,
            "RELEASE_NAME": self.release,  # the build's name for it before 0.3, kept
            "TAG": self.tag,
            "SHA": self.sha,
            "PREVIOUS_RELEASE": str(self.previous) if self.previous else "",
            "ROOT": str(self.root),
            "REQUEST_ID": self.request_id or "",
        }


@dataclass(frozen=True, slots=True)
class HookResult:
    """How a command ended: ``returncode`` None when it timed out or could not start."""

    returncode: int | None
    timed_out: bool
    output: str  # the last lines, capped (see the module docstring)
    start_error: str | None = None  # why it could not start (e.g. program not found)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self, what: str, limit_s: float) -> str:
        """One line: why ``what`` failed."""
        if self.start_error is not None:
            return f"{what} could not start: {self.start_error}"
        if self.timed_out:
            return f"{what} timed out after {limit_s:g} s (its process group was killed)"
        return f"{what} failed with exit code {self.returncode}"


def tail(data: bytes, lines: int = OUTPUT_LINES, chars: int = OUTPUT_CHARS) -> str:
    """The last ``lines`` lines of ``data``, at most ``chars`` characters of them, as text."""
    text = "\n".join(data.decode("utf-8", "replace").strip().splitlines()[-lines:])
    return text if len(text) <= chars else "..." + text[-chars:]


async def run_command(
    cmd: str,
    ctx: HookContext,
    *,
    cwd: Path,
    limit_s: float,
    extra_env: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    argv_prefix: Sequence[str] = (),
) -> HookResult:
    """Run ``cmd`` in ``cwd`` with ``ctx``'s environment (and ``env``) in its own process group;
    ``argv_prefix``, if given, is the program that runs it (the build sandbox)."""
    full_env = {**os.environ, **extra_env, **ctx.env(), **(env or {})}
    argv = [*argv_prefix, *command_argv(cmd)]
    try:
        result = await run_in_group(
            argv, limit_s=limit_s, cwd=cwd, env=full_env, merge_stderr=True, max_output=OUTPUT_BYTES
        )
    except OSError as e:  # no such program, not executable, cwd gone
        return HookResult(None, False, "", start_error=f"{argv[0]}: {e.strerror or e}")
    return HookResult(None if result.timed_out else result.returncode, result.timed_out, tail(result.stdout))


async def run_in_release(
    cmd: str,
    ctx: HookContext,
    limit_s: float,
    extra_env: Mapping[str, str],
    *,
    what: str,
    error: type[CoordinatorError],
    fix: str,
    timeout_fix: str,
    argv_prefix: Sequence[str] = (),
    **fields: Any,
) -> None:
    """Run ``cmd`` in ``ctx.release_dir``; on a non-zero exit, a timeout or a failed start raise
    ``error`` saying why ``what`` failed, with ``timeout_fix`` or ``fix``, the output's last lines,
    the exit code and ``fields``."""
    assert ctx.release_dir is not None
    result = await run_command(
        cmd, ctx, cwd=ctx.release_dir, limit_s=limit_s, extra_env=extra_env, argv_prefix=argv_prefix
    )
    if result.ok:
        return
    raise error(
        result.describe(what, limit_s),
        fix=timeout_fix if result.timed_out else fix,
        output=result.output,
        rc=result.returncode,
        **fields,
    )


async def run_pre_swap(cmd: str, ctx: HookContext, limit_s: float, extra_env: Mapping[str, str]) -> None:
    """Run ``--pre-swap-command`` in ``ctx.release_dir``; raise PreSwapError if it fails or times out."""
    await run_in_release(
        cmd,
        ctx,
        limit_s,
        extra_env,
        what="pre-swap command",
        error=PreSwapError,
        fix="see the output; current is unchanged. Fix the cause, then deploy again (the marker must change)",
        timeout_fix="make the command faster or raise --pre-swap-timeout; then deploy again",
        release=ctx.release,
    )
