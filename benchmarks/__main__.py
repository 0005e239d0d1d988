"""The benchmarks' one entry point: ``python -m benchmarks [SUB-COMMAND] [OPTIONS]`` (``make bench``).

Sub-commands (``python -m benchmarks SUB-COMMAND --help`` lists each one's options):

* ``run`` (the default when none is given): the deploy-latency benchmark, :mod:`benchmarks.run`
  (``python -m benchmarks --quick`` is ``python -m benchmarks run --quick``);
* ``strategies``: reload strategies under load, :mod:`benchmarks.strategies`;
* ``gitsource``: shallow fetches, the git cache at ``--depth 1`` against the whole history,
  :mod:`benchmarks.gitsource`;
* ``staged``: the deploy of a release staged just before against one already on disk,
  :mod:`benchmarks.staged` (also a section of ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

PROG = "python -m benchmarks"

#: sub-command -> (module whose ``main(argv)`` runs it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("benchmarks.run", "the deploy-latency benchmark (the default; what `make bench` runs)"),
    "strategies": ("benchmarks.strategies", "reload strategies (uWSGI, gunicorn) under load"),
    "gitsource": ("benchmarks.gitsource", "shallow fetches: git cache --depth 1 against the whole history"),
    "staged": ("benchmarks.staged", "deploy of a staged release against one already on disk"),
}
DEFAULT = "run"


def _parser() -> argparse.ArgumentParser:
    """The top-level parser: only for ``--help``; each sub-command parses its own options."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="The benchmarks' one entry point (`make bench` runs `python -m benchmarks run`).",
        epilog=f"With no sub-command (options only, or none), `{DEFAULT}` runs. "
        f"`{PROG} <sub-command> --help` lists a sub-command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        _parser().print_help()
        return 0
    if args and args[0] in COMMANDS:
        command, rest = args[0], args[1:]
    elif not args or args[0].startswith("-"):
        command, rest = DEFAULT, args
    else:
        _parser().error(f"unknown sub-command {args[0]!r} (choose from {', '.join(COMMANDS)})")
    module = importlib.import_module(COMMANDS[command][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
