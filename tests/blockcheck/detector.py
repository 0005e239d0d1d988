"""A deterministic blocking-call detector: blockbuster, recording instead of raising.

blockbuster replaces blocking functions (``os.stat``, ``os.mkdir``, file reads and writes,
``time.sleep``, blocking socket calls...) with wrappers that raise ``BlockingError`` when they are
called on the thread of a running asyncio event loop; calls from worker threads pass. No clock is
involved: a call is blocking because of what it is, not because of how long it took.

Two changes suit this project:

* more functions are checked: every filesystem call coordinator makes (``lstat``, ``open``, ``utime``,
  ``fsync``, ``chmod``, ``pread``...), a blocking ``waitpid`` and a blocking ``flock``;
* a detected call is *recorded* and then made, never raised: the daemon catches ``Exception`` in its
  loop (a bug must not take it down), which would swallow a ``BlockingError`` and turn it into a
  failed deploy. The test fails at teardown with the list of calls instead.

With ``allow_tests=True`` (the test process, and the daemons, where the audit hook of
``tests/audited_daemon.py`` is test code), a filesystem call whose nearest project frame is in
``tests/`` (a test's own quick ``stat`` or ``readlink`` while checking the volume) is allowed. The
nearest project frame decides: coordinator code awaited by a test is never exempt, because its frame
is nearer to the call than the test's. Sleeping, waiting for a process and blocking sockets are never
allowed, from tests either.
"""

from __future__ import annotations

import fcntl
import inspect
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import blockbuster.blockbuster as bb
from blockbuster import BlockBuster, BlockBusterFunction, BlockingError

__all__ = ["ENV", "PYTHONPATH_DIR", "Detector", "record_to_file"]

#: names the file a daemon started by a test records its blocking calls in (see sitecustomize.py)
ENV = "COORDINATOR_TEST_BLOCKING_LOG"

_HERE = os.path.dirname(os.path.abspath(__file__))
#: put on PYTHONPATH so that sitecustomize.py runs in the subprocesses a test starts
PYTHONPATH_DIR = _HERE
_PROJECT = os.path.dirname(os.path.dirname(_HERE))
_PACKAGE = os.path.join(_PROJECT, "coordinator") + os.sep
_TESTS = os.path.join(_PROJECT, "tests") + os.sep
_SKIPPED = (_HERE + os.sep, os.path.dirname(os.path.abspath(bb.__file__)) + os.sep)
_ASYNC_FLAGS = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR

#: filesystem calls blockbuster does not check by itself, and what they may do without blocking
_EXTRA_FS = (
    "os.lstat",
    "os.open",
    "os.utime",
    "os.chmod",
    "os.chown",
    "os.lchown",
    "os.fsync",
    "os.fdatasync",
    "os.sync",
    "os.truncate",
    "os.ftruncate",
    "os.pread",
    "os.pwrite",
    "os.mkfifo",
)

#: the checked functions a test's own code may call on the loop (filesystem only)
_TEST_MAY_CALL = ("os.", "io.", "fcntl.")

# the originals, for writing the record while the detector is active
_os_open = os.open
_os_write = os.write


def _devnull_open(path: Any, *_: Any, **__: Any) -> bool:
    # subprocess.Popen opens /dev/null for stdin=DEVNULL on the loop (asyncio starts processes there)
    return isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path) == os.devnull


def _absolute(path: Any, *_: Any, **__: Any) -> bool:
    # os.path.abspath only calls getcwd (checked by itself) for a relative path
    return isinstance(path, (str, bytes, os.PathLike)) and os.path.isabs(path)


def _nonblocking_wait(_pid: Any, options: Any = 0, *_: Any, **__: Any) -> bool:
    return isinstance(options, int) and bool(options & os.WNOHANG)


def _nonblocking_lock(_fd: Any, operation: Any = 0, *_: Any, **__: Any) -> bool:
    return isinstance(operation, int) and bool(operation & fcntl.LOCK_NB or operation & fcntl.LOCK_UN)


def _extra_functions() -> dict[str, BlockBusterFunction]:
    out = {name: BlockBusterFunction(None, name) for name in _EXTRA_FS}
    out["os.open"] = BlockBusterFunction(None, "os.open", can_block_predicate=_devnull_open)
    out["os.waitpid"] = BlockBusterFunction(
        None,
        "os.waitpid",
        can_block_predicate=_nonblocking_wait,
        # a child that failed to exec has already exited when Popen (asyncio starts processes on the loop) reaps it
        can_block_functions=[("subprocess.py", {"_execute_child"})],
    )
    out["fcntl.flock"] = BlockBusterFunction(None, "fcntl.flock", can_block_predicate=_nonblocking_lock)
    out["fcntl.lockf"] = BlockBusterFunction(None, "fcntl.lockf", can_block_predicate=_nonblocking_lock)
    return out


def _allowed_for_tests(frame: FrameType | None) -> bool:
    """True when test code made the call itself, through synchronous functions only: the nearest
    frame that is a test's or a coroutine of coordinator's is a test's.

    A test may call a blocking helper of coordinator (``append_journal``...) to set up a volume; an
    ``async def`` of coordinator that the test awaits may not, nor what it calls.
    """
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_SKIPPED):
            if name.startswith(_PACKAGE) and frame.f_code.co_flags & _ASYNC_FLAGS:
                return False
            if name.startswith(_TESTS):
                return True
        frame = frame.f_back
    return False


def _shown(path: str) -> str:
    return os.path.relpath(path, _PROJECT) if path.startswith(_PROJECT + os.sep) else path


def _stack(frame: FrameType | None, limit: int = 24) -> list[str]:
    """The call's stack, innermost first (no source lines: reading them would block, too)."""
    out: list[str] = []
    while frame is not None and len(out) < limit:
        name = frame.f_code.co_filename
        if not name.startswith(_SKIPPED) and not name.startswith("<frozen importlib"):
            out.append(f"{_shown(name)}:{frame.f_lineno} in {frame.f_code.co_name}")
        frame = frame.f_back
    return out


class _State(threading.local):
    #: inside a recorded call (or the recording itself): nested checked calls are part of it
    busy = False


class Detector:
    """blockbuster over the whole process, calling ``report(text)`` for every blocking call on a loop."""

    def __init__(self, report: Callable[[str], None], *, allow_tests: bool) -> None:
        self._report = report
        self._state = _State()
        self._buster = BlockBuster()
        self._buster.functions.update(_extra_functions())
        self._buster.functions["os.path.abspath"].can_block_predicate = _absolute
        if allow_tests:
            for name, fn in self._buster.functions.items():
                if name.startswith(_TEST_MAY_CALL):
                    fn.can_block_predicate = _or_test_caller(fn.can_block_predicate)

    def activate(self) -> None:
        # blockbuster builds each checker with _wrap_blocking at activation: wrap those checkers so
        # that a detected call is recorded and made instead of raised
        original = bb._wrap_blocking
        bb._wrap_blocking = self._recording(original)
        try:
            self._buster.activate()
        finally:
            bb._wrap_blocking = original

    def deactivate(self) -> None:
        self._buster.deactivate()

    def _recording(self, wrap: Callable[..., Callable[..., Any]]) -> Callable[..., Callable[..., Any]]:
        state = self._state

        def wrap_recording(
            modules: Any, excluded: Any, func: Callable[..., Any], func_name: str, *rest: Any
        ) -> Callable[..., Any]:
            checker = wrap(modules, excluded, func, func_name, *rest)

            def recording(*args: Any, **kwargs: Any) -> Any:
                if state.busy:
                    return func(*args, **kwargs)
                try:
                    return checker(*args, **kwargs)
                except BlockingError:
                    pass
                state.busy = True
                try:
                    lines = _stack(sys._getframe(1))
                    self._report(
                        f"blocking call to {func_name} on the event loop\n" + "".join(f"    {ln}\n" for ln in lines)
                    )
                    return func(*args, **kwargs)
                finally:
                    state.busy = False

            return recording

        return wrap_recording


def _or_test_caller(predicate: Callable[..., bool]) -> Callable[..., bool]:
    def allowed(*args: Any, **kwargs: Any) -> bool:
        return predicate(*args, **kwargs) or _allowed_for_tests(sys._getframe(1))

    return allowed


def record_to_file(path: str) -> Detector:
    """Activate a detector appending each blocking call to ``path`` (the daemon subprocess's mode)."""
    header = f"pid {os.getpid()}: {' '.join(sys.orig_argv)[:300]}\n"

    def append(text: str) -> None:
        data = (header + text + "\n").encode("utf-8", "replace")
        try:
            fd = _os_open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            sys.stderr.write(f"blockcheck: cannot record in {path} ({e.strerror}):\n{text}\n")
            return
        try:
            _os_write(fd, data)
        finally:
            os.close(fd)

    # test code in the daemon (tests/audited_daemon.py's audit hook) is exempt as in the test process
    detector = Detector(append, allow_tests=True)
    detector.activate()
    return detector
