"""Run the blocking-call detector in a coordinator process that a test started.

Python imports ``sitecustomize`` at start-up from ``sys.path``; the suite puts this directory on the
``PYTHONPATH`` of every test (tests/conftest.py) together with ``COORDINATOR_TEST_BLOCKING_LOG``, the
file to record blocking calls in. Only a process that runs coordinator (``python -m coordinator``,
the ``coordinator`` script, ``tests/audited_daemon.py``) activates the detector: the other Python
programs a test starts run no event loop and are spared the import.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys

#: the same name as tests.blockcheck.detector.ENV (not imported: that costs every Python process)
_ENV = "COORDINATOR_TEST_BLOCKING_LOG"


_MODULES = ("coordinator", "coordinator.cli")
_SCRIPTS = ("coordinator", "audited_daemon.py")


def _runs_coordinator(argv: list[str]) -> bool:
    """``python -m coordinator ...``, the ``coordinator`` script, or ``tests/audited_daemon.py``. An
    embedding program (uWSGI's Python plugin) has no ``sys.orig_argv`` at all: never coordinator."""
    if not argv:
        return False
    args = argv[1:]
    if any(a == "-m" and b in _MODULES for a, b in itertools.pairwise(args)) or any(
        a.startswith("-m") and a[2:] in _MODULES for a in args
    ):
        return True
    script = next((a for a in args if not a.startswith("-")), "")
    return os.path.basename(argv[0]) in _SCRIPTS or os.path.basename(script) in _SCRIPTS


def _main() -> None:
    path = os.environ.get(_ENV)
    if not path or not _runs_coordinator(sys.orig_argv):
        return
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "detector.py")
    spec = importlib.util.spec_from_file_location("coordinator_test_blockcheck", source)
    if spec is None or spec.loader is None or importlib.util.find_spec("blockbuster") is None:
        return  # another interpreter (a venv a test built): nothing to check with
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.record_to_file(path)


_main()
