"""The ``coordinator`` command line. It only parses arguments, calls a plain ``async def`` and turns
:class:`~coordinator.exceptions.CoordinatorError` into one line on stderr and an exit code:

==== =====================================================================
code meaning
==== =====================================================================
0    success (``deploy --wait``: the tag is current and reloaded)
1    the deploy failed (``run --once``, ``deploy --wait``) or another command error
2    bad usage, option, config file or volume layout
3    another coordinator already holds the lock on this ROOT
4    ``deploy --wait`` timed out
130  interrupted (Ctrl-C)
==== =====================================================================
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from coordinator import __version__, display
from coordinator.config import OPTIONS, Config, resolve_options
from coordinator.exceptions import ConfigError, CoordinatorError
from coordinator.layout import Layout
from coordinator.logs import configure_logging
from coordinator.records import StatusRecord

if TYPE_CHECKING:
    from coordinator.marker import DeployRequest

__all__ = ["main"]

_CLIENT_OPTIONS = ["root", "marker", "status-file", "log-format", "log-level"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 2 with one line, as argparse does, plus a hint
        self.print_usage(sys.stderr)
        raise SystemExit(f"coordinator: error: {message} (see `{self.prog} --help`)") from None


def _add_options(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    for name in names:
        opt = OPTIONS[name]
        default = "" if opt.default is None else f" (default {opt.default})"
        helptext = f"{opt.help}{default}; env {opt.env}"
        if opt.type == "bool":
            p.add_argument(f"--{name}", dest=opt.dest, action="store_const", const=True, default=None, help=helptext)
        else:
            p.add_argument(f"--{name}", dest=opt.dest, default=None, metavar=opt.type.upper(), help=helptext)
    p.add_argument("--config", type=Path, default=None, help="TOML file with any of these options as keys")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="coordinator", description="Atomic git-tag deploys for WSGI apps on a shared volume.")
    parser.add_argument("--version", action="version", version=f"coordinator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="the daemon: watch the marker and converge")
    _add_options(run, list(OPTIONS))
    run.add_argument("--once", action="store_true", help="reconcile once and exit (non-zero on failure)")

    deploy = sub.add_parser("deploy", help="request a tag (write the marker), optionally wait for it")
    deploy.add_argument("tag")
    deploy.add_argument("--sha", default=None, help="commit the tag must point to")
    deploy.add_argument("--wait", action="store_true", help="wait until the tag is current and reloaded")
    deploy.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    _add_options(deploy, _CLIENT_OPTIONS)

    status = sub.add_parser("status", help="show the status file")
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    _add_options(status, _CLIENT_OPTIONS)

    releases = sub.add_parser("releases", help="list releases on disk (current and previous marked)")
    _add_options(releases, _CLIENT_OPTIONS)

    history = sub.add_parser("history", help="past deploys from the journal, newest first")
    history.add_argument("--limit", type=int, default=20, metavar="N", help="show the last N deploys (default 20)")
    history.add_argument("--json", action="store_true", help="print the journal lines as a JSON array")
    _add_options(history, _CLIENT_OPTIONS)

    rollback = sub.add_parser("rollback", help="make the previous release desired")
    rollback.add_argument("--wait", action="store_true")
    rollback.add_argument("--timeout", type=float, default=600.0)
    _add_options(rollback, _CLIENT_OPTIONS)

    sub.add_parser("demo", help="a self-contained demonstration on a temporary repository")
    return parser


def _layout(opts: dict[str, Any]) -> Layout:
    if opts.get("root") is None:
        raise ConfigError("no root given", fix="pass --root DIR or set COORDINATOR_ROOT")
    return Layout.for_root(opts["root"], opts.get("marker"), opts.get("status_file"), opts.get("reload_file"))


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _prepare(args: argparse.Namespace) -> Config | Layout:
    """What a command needs before the event loop starts (it reads files: the config file, the
    modules imported here): the daemon's Config for ``run``, else the Layout."""
    names = list(OPTIONS) if args.command == "run" else _CLIENT_OPTIONS
    opts = resolve_options(vars(args), config_file=args.config, names=names)
    configure_logging(opts.get("log_format") or "auto", opts.get("log_level") or "info")
    if args.command == "run":
        importlib.import_module("coordinator.daemon")
        return Config.from_options(opts)
    importlib.import_module("coordinator.commands")
    return _layout(opts)


async def _cmd(args: argparse.Namespace, prepared: Config | Layout) -> int:
    if isinstance(prepared, Config):
        from coordinator.daemon import run

        attempt = await run(prepared, once=args.once)
        if args.once and attempt is not None:
            _print(f"{attempt.tag}: {attempt.result} ({attempt.release})")
        return 0
    from coordinator import commands

    layout = prepared
    if args.command in ("deploy", "rollback"):
        if args.command == "deploy":
            req = await commands.request_deploy(layout, args.tag, args.sha)
        else:
            req = await commands.request_rollback(layout)
        style = display.style_for(
            os.environ, sys.stdout.isatty(), sys.stdout.encoding, shutil.get_terminal_size().columns
        )
        if not (args.wait and style.live):
            _print(f"requested {req.tag}{' @ ' + req.sha if req.sha else ''} (id {req.request_id})")
        if args.wait:
            await _wait(layout, req, args.timeout, style)
        return 0
    if args.command == "status":
        found = await commands.read_status(layout)
        if found is None:
            raise CoordinatorError(
                f"no status file at {layout.status_file}", fix="start `coordinator run` on this root first"
            )
        _print(json.dumps(found, indent=2, sort_keys=True) if args.json else display.format_status(found, time.time()))
        return 0
    if args.command == "releases":
        _print(display.format_releases(await commands.list_releases(layout), time.time()))
        return 0
    if args.command == "history":
        entries = await commands.read_history(layout, args.limit)
        _print(json.dumps([e.raw for e in entries], indent=2) if args.json else display.format_history(entries))
        return 0
    raise ConfigError(f"unknown command {args.command}")  # pragma: no cover


async def _wait(layout: Layout, req: DeployRequest, seconds: float, style: display.Style) -> None:
    """``--wait``: follow the deploy on stdout (live on a terminal, else plain lines)."""
    from coordinator import commands
    from coordinator.progress import DeployProgress

    progress = DeployProgress(sys.stdout, style, req.tag, req.request_id or "", time.time())
    status: StatusRecord | None = None
    try:
        status = await commands.wait_for(
            layout,
            req,
            seconds,
            lambda st: progress.update(st, time.time()),
            on_poll=lambda: progress.tick(time.time()),
        )
    finally:
        progress.finish(status, time.time())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from coordinator.demo import main as demo_main

        return int(demo_main())
    try:
        return anyio.run(_cmd, args, _prepare(args))
    except CoordinatorError as e:
        sys.stderr.write(f"coordinator: {e.message}" + (f" -- {e.fix}" if e.fix else "") + "\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # pragma: no cover - e.g. `coordinator status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
