"""Helpers shared by the benchmarks' sub-commands (``python -m benchmarks run`` and ``strategies``):
progress lines, machine facts, the results' JSON layout and SIGTERM handling."""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import math
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.stats import Summary

__all__ = [
    "add_common_args",
    "begin",
    "cmd_out",
    "cpu_model",
    "dumps",
    "finish_common_args",
    "json_safe",
    "loadavg",
    "on_signal",
    "progress",
]


def progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cmd_out(args: Sequence[str], cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(list(args), cwd=cwd, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.decode(errors="replace").strip()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 3) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Summary):
        return json_safe(obj.to_dict())
    return obj


def dumps(obj: Any, level: int = 0) -> str:
    """JSON with one line per list of scalars (sample columns stay readable and small)."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and obj and any(isinstance(v, dict | list) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def begin(prefix: str, tmp_dir: Path | None, stop_all: Callable[[], None]) -> Path | None:
    """The start of every benchmark entry point: None (after saying why) when the coordinator package
    is not importable; else ``stop_all`` registered for exit, SIGTERM turned into KeyboardInterrupt,
    and a new work directory ``<prefix>*`` in ``tmp_dir`` (default: the system's)."""
    if importlib.util.find_spec("coordinator") is None:
        print("error: the coordinator package is not importable; run with .venv/bin/python", file=sys.stderr)
        return None
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, on_signal)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_dir))


def add_common_args(p: argparse.ArgumentParser, *, keep_what: str, quick_what: str) -> None:
    """The options every benchmark entry point has: pacing seed, work directory, results, --quick."""
    p.add_argument("--seed", type=int, default=20240101, help="seed of the pacing jitter")
    p.add_argument("--tmp-dir", type=Path, default=None, help="where to create the work directory")
    p.add_argument("--keep-tmp", action="store_true", help=f"keep the work directory ({keep_what})")
    p.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where to write the results (default benchmarks/results; with --quick, nothing is written unless given)",
    )
    p.add_argument("--quick", action="store_true", help=quick_what)


def finish_common_args(args: argparse.Namespace, default_results: Path) -> None:
    """Results are written unless this is a --quick run without --results-dir."""
    args.write = args.results_dir is not None or not args.quick
    if args.results_dir is None:
        args.results_dir = default_results
