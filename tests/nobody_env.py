"""A Python environment the ``nobody`` user can run coordinator from, wherever the checkout is.

The tests that run the daemon as another user cannot use the checkout's virtualenv: a clone under
``/root`` or in a ``mktemp -d`` directory (mode 0700) is closed to other users, and so may be the
interpreter the virtualenv was made from (pyenv's, under ``/root``). :func:`build` makes, once per
session and without network, a world-readable environment in the temporary directory:

* a virtualenv on an interpreter of the same Python version (same extension ABI) that ``nobody``
  can run, checked by running it as ``nobody``;
* in its site-packages, copies of the installed distributions coordinator needs at run time, and
  blockbuster (the blocking-call detector of tests/blockcheck), with their dependencies, file by file
  from their RECORD;
* ``project/coordinator`` (a copy of the package under test) and ``project/tests/blockcheck``, laid
  out as in the checkout so that the detector tells coordinator's frames from the tests' as it does
  there, ``project`` being on the virtualenv's ``sys.path`` through a ``.pth`` file.

:class:`NobodyPython` turns a test's command line (``run_argv``, the ``Daemon`` helper) and
environment into ones for ``nobody`` on that environment.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import coordinator
from tests.blockcheck.detector import PYTHONPATH_DIR
from tests.helpers import Daemon, as_nobody

#: the distributions a daemon run by a test imports: coordinator's (its dependencies are added) and the detector's
ROOTS = ("coordinator", "blockbuster")

#: what an interpreter reports about itself: it must be the same for root and for nobody, and match ours
_PROBE = (
    "import json, sys, sysconfig;"
    " print(json.dumps([sys.version_info[:2], sysconfig.get_config_var('SOABI'), sys.base_prefix]))"
)


@dataclass(frozen=True)
class NobodyPython:
    """A world-readable environment with coordinator installed, and how to run it as nobody."""

    #: its interpreter (a virtualenv's)
    python: str
    #: its copy of tests/blockcheck, put on PYTHONPATH instead of the checkout's
    blockcheck: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv``, a command line of this interpreter (``run_argv``), as nobody on this environment.

        ``-P``: the current directory (maybe the checkout) is not put on ``sys.path``, so the
        package imported is always the environment's copy.
        """
        args = list(argv)
        if args and args[0] == sys.executable:
            args[0:1] = [self.python, "-P"]
        return as_nobody(args)

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with the environment's tests/blockcheck on PYTHONPATH instead of the checkout's."""
        out = dict(env)
        if "PYTHONPATH" in out:
            parts = [self.blockcheck if p == PYTHONPATH_DIR else p for p in out["PYTHONPATH"].split(os.pathsep)]
            out["PYTHONPATH"] = os.pathsep.join(parts)
        return out

    def daemon(self, d: Daemon, home: Path) -> Daemon:
        """``d`` run as nobody:nogroup (no supplementary groups) on this environment, with HOME ``home``."""
        d.args = self.argv(d.args)
        d.env = self.env({**d.env, "HOME": str(home)})
        return d


def build(base: Path) -> NobodyPython:
    """Make the environment in ``base`` (a new directory in a place every user can traverse)."""
    interpreter = interpreter_for_nobody()
    venv = base / "venv"
    subprocess.run([interpreter, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    site = Path(purelib)
    for dist in _closure(ROOTS):
        if canonicalize_name(dist.metadata["Name"]) != "coordinator":
            _copy_distribution(dist, site)
    project = base / "project"
    shutil.copytree(Path(coordinator.__file__).parent, project / "coordinator")
    blockcheck = project / "tests" / "blockcheck"
    shutil.copytree(PYTHONPATH_DIR, blockcheck, ignore=shutil.ignore_patterns("__pycache__"))
    (site / "coordinator-under-test.pth").write_text(f"{project}\n")
    _world_readable(base)
    env = NobodyPython(str(python), str(blockcheck))
    check = subprocess.run(
        as_nobody([env.python, "-P", "-c", "import coordinator.cli, blockbuster; print(coordinator.__file__)"]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    if check.returncode != 0 or not check.stdout.startswith(str(project)):
        raise RuntimeError(f"the environment for nobody in {base} does not work:\n{check.stdout}{check.stderr}")
    return env


def interpreter_for_nobody() -> str:
    """An interpreter of this Python version and ABI that nobody runs exactly as root does."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    names = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    names += [os.path.join(sys.base_prefix, "bin", version)]
    names += [os.path.join(d, version) for d in ("/usr/local/bin", "/usr/bin", "/bin")]
    names += [os.path.join(d, version) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    wanted = [list(sys.version_info[:2]), sysconfig.get_config_var("SOABI")]
    tried: list[str] = []
    for path in dict.fromkeys(os.path.realpath(n) for n in names):
        if not os.access(path, os.X_OK):
            continue
        tried.append(path)
        mine = _probe([path])
        if mine is None or mine[:2] != wanted:
            continue
        if _probe(as_nobody([path])) == mine:
            return path
    raise RuntimeError(
        f"no {version} interpreter that the nobody user can run (tried {', '.join(tried) or 'none'}):"
        f" install one outside directories closed to other users (Debian: apt-get install {version})"
    )


def _probe(argv: list[str]) -> list[object] | None:
    out = subprocess.run([*argv, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=30, check=False, cwd="/")
    if out.returncode != 0:
        return None
    value = json.loads(out.stdout)
    return value if isinstance(value, list) else None


def _closure(names: Sequence[str]) -> Iterator[importlib.metadata.Distribution]:
    """The installed distributions ``names`` and everything they require (no extras), once each."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        yield dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)


def _copy_distribution(dist: importlib.metadata.Distribution, site: Path) -> None:
    """The files ``dist`` installed into its site-packages (not its scripts), copied into ``site``."""
    top = Path(str(dist.locate_file(""))).resolve()
    for file in dist.files or []:
        src = Path(str(dist.locate_file(file))).resolve()
        if not src.is_relative_to(top) or not src.is_file():
            continue  # a script in bin/, or a file RECORD lists that is gone (a .pyc never written)
        dest = site / src.relative_to(top)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def _world_readable(base: Path) -> None:
    """Every directory under ``base`` traversable, and every file readable, by all users."""
    base.chmod(0o755)
    for dirpath, dirnames, filenames in os.walk(base):
        for d in dirnames:
            p = Path(dirpath, d)
            if not p.is_symlink():
                p.chmod(0o755)
        for f in filenames:
            p = Path(dirpath, f)
            if not p.is_symlink():
                p.chmod(0o755 if p.stat().st_mode & 0o111 else 0o644)
