"""Run the coordinator CLI under a Python audit hook that logs every process it starts.

Used by tests/test_fuzz_daemon.py: ``python tests/audited_daemon.py LOG run --root ...`` behaves like
``python -m coordinator run --root ...`` and appends one JSON line to LOG for every process-creating
audit event (``subprocess.Popen``, ``os.exec``, ``os.posix_spawn``, ``os.system``, ``os.fork``...),
whatever the program's path, so a process started by absolute path is seen too.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

#: Audit events that create or replace a process (https://docs.python.org/3/library/audit_events.html).
PROCESS_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "os.fork",
        "os.forkpty",
        "os.startfile",
        "pty.spawn",
    }
)


def make_hook(log_path: str) -> Callable[[str, tuple[object, ...]], None]:
    """An audit hook appending ``{"event", "args", "pid"}`` to ``log_path`` for process events."""

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event not in PROCESS_EVENTS:
            return
        line = json.dumps({"event": event, "args": list(args), "pid": os.getpid()}, default=_plain) + "\n"
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)

    return hook


def _plain(obj: object) -> object:
    if isinstance(obj, bytes | os.PathLike):
        return os.fsdecode(obj)
    if isinstance(obj, dict):
        return {str(k): str(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(x) if not isinstance(x, str) else x for x in obj]
    return repr(obj)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: audited_daemon.py LOG COORDINATOR-ARGS...", file=sys.stderr)
        return 2
    sys.addaudithook(make_hook(argv[0]))
    from coordinator.cli import main as coordinator_main

    return coordinator_main(argv[1:])


if __name__ == "__main__":
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # do not let tests/ shadow anything the daemon imports
    sys.exit(main(sys.argv[1:]))
