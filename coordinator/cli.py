"""The ``coordinator`` command line. It only parses arguments, calls a plain ``async def`` and turns
:class:`~coordinator.exceptions.CoordinatorError` into one line on stderr and an exit code:

==== =====================================================================
code meaning
==== =====================================================================
0    success (``deploy --wait``: the tag is current and its reload requested, or with a health
     check configured on the daemon, serving and verified)
1    the deploy failed (``run --once``, ``deploy --wait``), ``check`` found a problem, or another
     command error (e.g. a ROOT coordinator has never run on)
2    bad usage, option, config file or volume layout (e.g. ROOT not writable)
3    another coordinator already holds the lock on this ROOT
4    ``deploy --wait`` / ``rollback --wait`` / ``stage --wait`` timed out
5    ``deploy --wait`` / ``rollback --wait`` / ``stage --wait``: no coordinator is running on ROOT
     (the request stays saved and is handled when one starts)
6    ``deploy --wait`` / ``rollback --wait`` / ``run --once``: deploys are paused on ROOT
     (``coordinator pause``; the request stays saved and is deployed after ``coordinator resume``)
130  interrupted (Ctrl-C; a ``--wait``-ed request stays pending)
==== =====================================================================
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from coordinator import __version__, display
from coordinator.config import Config
from coordinator.exceptions import ConfigError, CoordinatorError
from coordinator.layout import Layout
from coordinator.logs import configure_logging
from coordinator.options import OPTIONS, resolve_options, unknown_env_warnings
from coordinator.records import StatusRecord

if TYPE_CHECKING:
    from coordinator.marker import DeployRequest

__all__ = ["main"]

_CLIENT_OPTIONS = ["root", "marker", "status-file", "log-format", "log-level"]


#: the exit codes, as listed in ``coordinator --help`` (and in this module's docstring)
EXIT_CODES = """exit codes:
  0    success (deploy --wait: the tag is current and its reload requested; with a
       health check configured on the daemon: serving, verified; stage --wait: staged)
  1    the deploy (or stage) failed, check found a problem, or another command error
       (e.g. a ROOT coordinator never ran on)
  2    bad usage, option, config file or volume layout (e.g. ROOT not writable)
  3    another coordinator already holds the lock on this ROOT
  4    deploy --wait / rollback --wait / stage --wait timed out
  5    deploy --wait / rollback --wait / stage --wait: no coordinator is running on ROOT
       (the request stays saved and is handled when one starts)
  6    deploy --wait / rollback --wait / run --once: deploys are paused on ROOT (the
       request stays saved and is deployed after coordinator resume)
  130  interrupted (Ctrl-C; a --wait-ed request stays pending)"""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2 with this (sub-)command's own usage line, the error and a fix line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, _Parser] = {}

    def error(self, message: str) -> Any:
        self.fail(message, self._fix(message))

    def fail(self, message: str, fix: str) -> Any:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n{self.prog}: fix: {fix}\n")
        sys.exit(2)

    def _fix(self, message: str) -> str:
        see = f"see `{self.prog} --help`"
        words: list[str] = []
        if message.startswith("unrecognized arguments:"):
            words, known = message.split(":", 1)[1].split(), list(self._option_string_actions)
        elif m := re.search(r"invalid choice: '([^']*)'", message):
            words, known = [m.group(1)], list(self.commands)
        for word in words:
            close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
            if close:
                return f"did you mean {close[0]}? {see}"
        return see if not words else f"remove {' '.join(words)}; {see}"


def _seconds(text: str) -> float:
    """``--timeout``: a number of seconds > 0, said in plain words when it is not."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f'must be a number of seconds > 0, got "{text}"')
    return value


def _count(text: str) -> int:
    """``--limit``: a whole number >= 1."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f'must be a whole number >= 1, got "{text}"')
    return int(text)


def _add_options(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        opt = OPTIONS[name]
        default = "" if opt.default in (None, ()) else f" (default {opt.default})"
        helptext = f"{opt.help}{default}; env {opt.env}"
        if opt.type == "bool":
            p.add_argument(opt.cli_flag, dest=opt.dest, action="store_const", const=True, default=None, help=helptext)
        elif opt.type == "list":
            helptext = f"{opt.help}; env {opt.env} (comma-separated)"
            p.add_argument(opt.cli_flag, dest=opt.dest, action="append", default=None, metavar="PATH", help=helptext)
        else:
            p.add_argument(opt.cli_flag, dest=opt.dest, default=None, metavar=opt.type.upper(), help=helptext)
    p.add_argument("--config", type=Path, default=None, help="TOML file with any of these options as keys")


def build_parser() -> _Parser:
    parser = _Parser(
        prog="coordinator", description="Atomic git-tag deploys for WSGI apps on a shared volume.", epilog=EXIT_CODES
    )
    parser.add_argument("--version", action="version", version=f"coordinator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="the daemon: watch the marker and converge")
    _add_options(run, list(OPTIONS))
    run.add_argument("--once", action="store_true", help="reconcile once and exit (non-zero on failure)")

    check = sub.add_parser(
        "check", help="check run's configuration without deploying: ROOT, repository, reload, health, commands"
    )
    _add_options(check, list(OPTIONS))
    check.add_argument("--json", action="store_true", help="print the results as a JSON array (name, ok, detail, fix)")

    wait_help = (
        "wait until the tag is current and its reload requested (serving, verified when the daemon has "
        "--health-url); exit 5 when no coordinator runs on ROOT"
    )
    deploy = sub.add_parser(
        "deploy", help="request a tag (write the marker), optionally wait for it", epilog=EXIT_CODES
    )
    deploy.add_argument("tag")
    deploy.add_argument("--sha", default=None, help="commit the tag must point to")
    deploy.add_argument("--wait", action="store_true", help=wait_help)
    deploy.add_argument("--timeout", type=_seconds, default=None, help="seconds to wait, with --wait (default 600)")
    _add_options(deploy, _CLIENT_OPTIONS)

    stage = sub.add_parser(
        "stage",
        help="request a release built and published without swapping it in (write ROOT/stage.request); "
        "a later deploy of the tag only swaps and reloads",
        epilog=EXIT_CODES,
    )
    stage.add_argument("tag")
    stage.add_argument("--sha", default=None, help="commit the tag must point to")
    stage.add_argument(
        "--wait",
        action="store_true",
        help="wait until the release is staged (or already current); exit 5 when no coordinator runs on ROOT",
    )
    stage.add_argument("--timeout", type=_seconds, default=None, help="seconds to wait, with --wait (default 600)")
    _add_options(stage, _CLIENT_OPTIONS)

    status = sub.add_parser("status", help="show the status file and whether a coordinator runs on ROOT")
    status.add_argument("--json", action="store_true", help="print the status JSON (plus daemon_running)")
    _add_options(status, _CLIENT_OPTIONS)

    releases = sub.add_parser("releases", help="list releases on disk (current and previous marked)")
    releases.add_argument("--json", action="store_true", help="print the releases as a JSON array, newest first")
    _add_options(releases, _CLIENT_OPTIONS)

    history = sub.add_parser("history", help="past deploys from the journal, newest first")
    history.add_argument("--limit", type=_count, default=20, metavar="N", help="show the last N deploys (default 20)")
    history.add_argument("--json", action="store_true", help="print the journal lines as a JSON array")
    _add_options(history, _CLIENT_OPTIONS)

    rollback = sub.add_parser("rollback", help="make the previous release desired", epilog=EXIT_CODES)
    rollback.add_argument("--wait", action="store_true", help=wait_help.replace("the tag", "the previous tag"))
    rollback.add_argument("--timeout", type=_seconds, default=None, help="seconds to wait, with --wait (default 600)")
    _add_options(rollback, _CLIENT_OPTIONS)

    pause = sub.add_parser("pause", help="pause deploys on ROOT (a marker change waits for resume)")
    pause.add_argument(
        "--reason", default=None, help="why, shown by status and deploy (one line, cut to 500 characters)"
    )
    _add_options(pause, _CLIENT_OPTIONS)

    resume = sub.add_parser("resume", help="resume deploys on ROOT (a pending marker deploys at once)")
    _add_options(resume, _CLIENT_OPTIONS)

    sub.add_parser("demo", help="a self-contained demonstration on a temporary repository")
    parser.commands = {name: p for name, p in sub.choices.items() if isinstance(p, _Parser)}
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; a usage error (an unknown option, a missing argument, ``--timeout`` without
    ``--wait``) exits 2 with the sub-command's own usage line and a fix."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = parser.commands.get(args.command, parser)
    if extra:
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "timeout", None) is not None and not args.wait:
        command.fail("--timeout needs --wait (it is how long to wait)", "add --wait, or drop --timeout")
    if getattr(args, "wait", False) and args.timeout is None:
        args.timeout = 600.0
    return args


def _layout(opts: dict[str, Any]) -> Layout:
    if opts.get("root") is None:
        raise ConfigError("no root given", fix="pass --root DIR or set COORDINATOR_ROOT")
    return Layout.for_root(opts["root"], opts.get("marker"), opts.get("status_file"), opts.get("reload_file"))


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _prepare(args: argparse.Namespace) -> Config | Layout:
    """What a command needs before the event loop starts (it reads files: the config file, the
    modules imported here): the daemon's Config for ``run`` and ``check``, else the Layout."""
    names = list(OPTIONS) if args.command in ("run", "check") else _CLIENT_OPTIONS
    opts = resolve_options(vars(args), config_file=args.config, names=names)
    configure_logging(opts.get("log_format") or "auto", opts.get("log_level") or "info")
    if args.command in ("run", "check"):
        importlib.import_module("coordinator.daemon" if args.command == "run" else "coordinator.check")
        return Config.from_options(opts)
    importlib.import_module("coordinator.commands")
    return _layout(opts)


async def _cmd(args: argparse.Namespace, prepared: Config | Layout, pending: list[tuple[Layout, DeployRequest]]) -> int:
    if args.command == "check" and isinstance(prepared, Config):
        await _check(prepared, as_json=args.json)
        return 0
    if isinstance(prepared, Config):
        from coordinator.daemon import run

        attempt = await run(prepared, once=args.once)
        if args.once and attempt is not None:
            _print(f"{attempt.tag}: {attempt.result} ({attempt.release})")
        return 0
    from coordinator import commands

    layout = prepared
    if args.command in ("status", "releases", "history", "rollback"):
        await commands.require_known_root(layout)
    if args.command in ("deploy", "rollback"):
        if args.command == "deploy":
            req = await commands.request_deploy(layout, args.tag, args.sha)
        else:
            req = await commands.request_rollback(layout)
        pending.append((layout, req))  # for the Ctrl-C message
        style = display.style_for(
            os.environ, sys.stdout.isatty(), sys.stdout.encoding, shutil.get_terminal_size().columns
        )
        if not (args.wait and style.live):
            _print(f"requested {req.tag}{' @ ' + req.sha if req.sha else ''} (id {req.request_id})")
        if not args.wait and (paused := await commands.read_pause(layout)) is not None:
            sys.stderr.write(
                f"coordinator: warning: deploys are paused on {layout.root} ({display.describe_pause(paused)}); "
                f"{req.tag} deploys after `coordinator resume --root {layout.root}`\n"
            )
        if args.wait:
            await _wait(layout, req, args.timeout, style)
        return 0
    if args.command == "stage":
        req = await commands.request_stage(layout, args.tag, args.sha)
        pending.append((layout, req))  # for the Ctrl-C message
        style = display.style_for(
            os.environ, sys.stdout.isatty(), sys.stdout.encoding, shutil.get_terminal_size().columns
        )
        if not (args.wait and style.live):
            _print(f"requested stage of {req.tag}{' @ ' + req.sha if req.sha else ''} (id {req.request_id})")
        if args.wait:
            await _wait(layout, req, args.timeout, style, stage=True)
        return 0
    if args.command in ("pause", "resume"):
        _print(await _pause_or_resume(layout, args))
        return 0
    if args.command == "status":
        found = await commands.read_status(layout)
        if found is None:
            raise CoordinatorError(
                f"no status file at {layout.status_file}", fix="start `coordinator run` on this root first"
            )
        running = await commands.daemon_running(layout)
        # the pause file is the truth: shown also when no daemon runs (or before it noticed the pause)
        found = {**found, "paused": await commands.read_pause(layout)}
        if args.json:
            _print(json.dumps({**found, "daemon_running": running}, indent=2, sort_keys=True))
        else:
            _print(display.format_status(found, time.time(), daemon_running=running))
        return 0
    if args.command == "releases":
        rows = await commands.list_releases(layout)
        if args.json:
            _print(json.dumps([r.as_json() for r in rows], indent=2))
        else:
            _print(display.format_releases(rows, time.time()))
        return 0
    if args.command == "history":
        entries = await commands.read_history(layout, args.limit)
        _print(json.dumps([e.raw for e in entries], indent=2) if args.json else display.format_history(entries))
        return 0
    raise ConfigError(f"unknown command {args.command}")  # pragma: no cover


async def _check(config: Config, *, as_json: bool) -> None:
    """``check``: every result printed (a line each, or a JSON array), then CheckFailed if one failed."""
    from coordinator import check

    results = await check.run_checks(config)
    if as_json:
        _print(json.dumps([r.as_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        style = display.style_for(os.environ, sys.stdout.isatty(), sys.stdout.encoding)
        _print(check.format_results(results, style))
    check.raise_if_failed(results)


async def _pause_or_resume(layout: Layout, args: argparse.Namespace) -> str:
    """``pause`` / ``resume``: what was done, in one or two lines."""
    from coordinator import commands

    now = time.time()
    if args.command == "pause":
        record, before = await commands.pause(layout, args.reason)
        replaced = f"\n(replaces the pause {display.describe_pause(before, now)})" if before is not None else ""
        return (
            f"deploys on {layout.root} {display.describe_pause(record)}{replaced}\n"
            f"a deploy not yet swapped in stops; resume with `coordinator resume --root {layout.root}`"
        )
    removed = await commands.resume(layout)
    if removed is None:
        return f"deploys on {layout.root} were not paused; nothing to do"
    return f"deploys on {layout.root} resumed (were {display.describe_pause(removed, now)})"


async def _wait(
    layout: Layout, req: DeployRequest, seconds: float, style: display.Style, *, stage: bool = False
) -> None:
    """``--wait``: follow the deploy (or the stage) on stdout (live on a terminal, else plain lines)."""
    from coordinator import waiting
    from coordinator.progress import DeployProgress, StageProgress

    kind = StageProgress if stage else DeployProgress
    progress = kind(sys.stdout, style, req.tag, req.request_id or "", time.time())
    wait = waiting.wait_for_stage if stage else waiting.wait_for
    status: StatusRecord | None = None
    try:
        status = await wait(
            layout,
            req,
            seconds,
            lambda st: progress.update(st, time.time()),
            on_poll=lambda: progress.tick(time.time()),
        )
    finally:
        progress.finish(status, time.time())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "demo":
        from coordinator.demo import main as demo_main

        return int(demo_main())
    for warning in unknown_env_warnings():
        sys.stderr.write(f"coordinator: warning: {warning}\n")
    pending: list[tuple[Layout, DeployRequest]] = []
    try:
        return anyio.run(_cmd, args, _prepare(args), pending)
    except CoordinatorError as e:
        sys.stderr.write(f"coordinator: {e.message}" + (f" -- {e.fix}" if e.fix else "") + "\n")
        return e.exit_code
    except KeyboardInterrupt:
        if pending and getattr(args, "wait", False):
            layout, req = pending[-1]
            does = "stages" if args.command == "stage" else "deploys"
            sys.stderr.write(
                f"coordinator: interrupted; the request for {req.tag} (id {req.request_id}) stays pending: the "
                f"coordinator on {layout.root} {does} it, or the next one to start -- follow it with "
                f"`coordinator status --root {layout.root}`\n"
            )
        return 130
    except BrokenPipeError:  # pragma: no cover - e.g. `coordinator status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # a volume error no command turned into a CoordinatorError: still one line
        from coordinator.fsutil import describe_os_error

        err = describe_os_error(e, retried=False)
        sys.stderr.write(f"coordinator: {err['message']} -- {err.get('fix')}\n")
        return 1
