"""A worker that imports a module lazily after `current` was swapped (before any reload): with
coordinator.pin it still imports from its own release; with the symlink on sys.path (the controls) the
same real server mixes two releases in one response."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.rig import Rig
from tests.e2e.servers import get, gunicorn_hup, uwsgi_touch

pytestmark = pytest.mark.e2e


def _uwsgi_pinned(rig: Rig) -> list[str]:
    return uwsgi_touch(rig.port, rig.root, processes=1)


def _uwsgi_symlink_on_sys_path(rig: Rig) -> list[str]:
    argv = uwsgi_touch(rig.port, rig.root, processes=1)
    i = argv.index("coordinator.pin:application")
    return [*argv[:i], "wsgi:application", *argv[i + 1 :], "--pythonpath", str(rig.root / "current")]


def _gunicorn_pinned(rig: Rig) -> list[str]:
    return gunicorn_hup(rig.port, rig.root, rig.tmp / "gunicorn.pid", workers=1)


def _gunicorn_chdir_symlink(rig: Rig) -> list[str]:
    argv = gunicorn_hup(rig.port, rig.root, rig.tmp / "gunicorn.pid", workers=1)
    return [*argv[:-1], "--chdir", str(rig.root / "current"), "wsgi:application"]


#: case -> (command line, whether coordinator.pin is configured, the answer expected)
CASES: dict[str, tuple[Callable[[Rig], list[str]], bool, str]] = {
    "uwsgi-pinned": (_uwsgi_pinned, True, "app=v1 late=v1 "),
    "uwsgi-symlink-on-sys-path": (_uwsgi_symlink_on_sys_path, False, "app=v1 late=v2 "),
    "gunicorn-pinned": (_gunicorn_pinned, True, "app=v1 late=v1 "),
    "gunicorn-chdir-symlink": (_gunicorn_chdir_symlink, False, "app=v1 late=v2 "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_lazy_import_after_a_swap(rig: Rig, case: str) -> None:
    """One worker loads v1, `current` moves to v2 without a reload, then the worker imports `late`."""
    make_argv, pinned, expected = CASES[case]
    rig.deploy_once("v1")
    rig.start_server(make_argv(rig), "", path="/health", pinned=pinned)  # /health does not import `late`
    rig.deploy_once("v2", "--reload-file", str(rig.tmp / "not-watched.touch"))  # swap, no reload
    assert (rig.root / "current" / "late.py").read_text() == "VERSION = 'v2'\n"  # the swap really happened
    body = get(rig.port)[1]
    assert body.startswith(expected), body
