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
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from coordinator import __version__
from coordinator.config import OPTIONS, Config, Layout, resolve_options
from coordinator.exceptions import ConfigError, CoordinatorError
from coordinator.logs import configure_logging
from coordinator.plan import Step

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


def _progress_printer(tag: str) -> Any:
    seen: set[str] = set()

    def show(status: dict[str, Any]) -> None:
        attempt = status.get("last_attempt") or {}
        if attempt.get("tag") != tag:
            return
        phases = attempt.get("phases_ms") or {}
        for phase in [s.value for s in Step]:
            ms = phases.get(phase)
            if ms is not None and phase not in seen:
                seen.add(phase)
                _print(f"  {phase:<8} {ms:>9.1f} ms")

    return show


async def _cmd(args: argparse.Namespace) -> int:
    names = list(OPTIONS) if args.command == "run" else _CLIENT_OPTIONS
    opts = resolve_options(vars(args), config_file=args.config, names=names)
    configure_logging(opts.get("log_format") or "auto", opts.get("log_level") or "info")
    if args.command == "run":
        from coordinator.daemon import run

        attempt = await run(Config.from_options(opts), once=args.once)
        if args.once and attempt is not None:
            _print(f"{attempt.tag}: {attempt.result} ({attempt.release})")
        return 0
    from coordinator import commands

    layout = _layout(opts)
    if args.command in ("deploy", "rollback"):
        if args.command == "deploy":
            req = await commands.request_deploy(layout, args.tag, args.sha)
        else:
            req = await commands.request_rollback(layout)
        _print(f"requested {req.tag}{' @ ' + req.sha if req.sha else ''} (id {req.request_id})")
        if args.wait:
            status = await commands.wait_for(layout, req, args.timeout, _progress_printer(req.tag))
            cur = status.get("current") or {}
            _print(f"{req.tag} is current ({cur.get('release')}) and reloaded")
        return 0
    if args.command == "status":
        found = await commands.read_status(layout)
        if found is None:
            raise CoordinatorError(
                f"no status file at {layout.status_file}", fix="start `coordinator run` on this root first"
            )
        status = found
        if args.json:
            _print(json.dumps(status, indent=2, sort_keys=True))
        else:
            _print(format_status(status))
        return 0
    if args.command == "releases":
        rows = await commands.list_releases(layout)
        _print(f"{'':2} {'RELEASE':<40} {'TAG':<20} {'SHA':<12} CREATED")
        for r in rows:
            mark = "*" if r.current else ("-" if r.previous else " ")
            created = _fmt_time(r.created) if r.created else "?"
            _print(f"{mark:2} {r.name:<40} {r.tag or '?':<20} {(r.sha or '?')[:12]:<12} {created}")
        _print("(* current, - previous)")
        return 0
    raise ConfigError(f"unknown command {args.command}")  # pragma: no cover


def _fmt_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_status(status: dict[str, Any]) -> str:
    """The status file as a short human-readable table."""
    cur = status.get("current") or {}
    prev = status.get("previous") or {}
    desired = status.get("desired") or {}
    attempt = status.get("last_attempt") or {}
    lines = [
        f"state     {status.get('state')}",
        f"desired   {desired.get('tag', '-')}" + (f" (id {desired['id']})" if desired.get("id") else ""),
        f"current   {cur.get('tag', '-')}  {cur.get('release', '')}",
        f"previous  {prev.get('tag', '-')}  {prev.get('release', '')}",
    ]
    if attempt:
        phases = ", ".join(f"{k} {v:.1f} ms" for k, v in (attempt.get("phases_ms") or {}).items())
        lines.append(f"last      {attempt.get('tag')} {attempt.get('result')} at {attempt.get('finished_at')}")
        if phases:
            lines.append(f"phases    {phases}")
    err = status.get("error")
    if err:
        lines.append(f"error     {err.get('message')}" + (f" -- {err['fix']}" if err.get("fix") else ""))
    lines.append(f"updated   {status.get('updated_at')}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from coordinator.demo import main as demo_main

        return int(demo_main())
    try:
        return anyio.run(_cmd, args)
    except CoordinatorError as e:
        sys.stderr.write(f"coordinator: {e.message}" + (f" -- {e.fix}" if e.fix else "") + "\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # pragma: no cover - e.g. `coordinator status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
