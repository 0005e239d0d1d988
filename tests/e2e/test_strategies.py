"""Real app servers under load through 10 deploys each: 0 failed requests, 0 responses that mix two
releases, and the last deployed version served. Servers, coordinator and load run on 127.0.0.1."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

import pytest

from tests.e2e.load import assert_no_failure
from tests.e2e.rig import Rig
from tests.e2e.servers import get, gunicorn_hup, uwsgi_fifo, uwsgi_lazy_chain, uwsgi_touch
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

TAGS = ("v1", "v2", "v3")
DEPLOYS = 10


def deploy_under_load(
    rig: Rig,
    name: str,
    server: Sequence[str],
    *daemon_args: str,
    reload_done: str | None = None,
    graceful_resets: bool = False,
) -> None:
    """v1 first, then DEPLOYS deploys cycling v2, v3, v1, ... with the load generator running throughout.
    With ``reload_done``, each deploy also waits for that line to appear once more in the server's log."""
    rig.deploy_once("v1")
    rig.start_server(server, "app=v1 late=v1")
    rig.start_daemon(*daemon_args)
    load = rig.start_load()
    # Every server here runs 2 workers. Deploy only once both have answered (and, in rig.deploy, each
    # deploy converges only once both new workers have): a uWSGI worker that gets the graceful-reload
    # SIGHUP while it is still starting (before it installs its own handler) loses it, and the master
    # then waits --worker-reload-mercy (60 s) for that worker, which serves the old release meanwhile
    # (seen twice in 15 loaded runs: on the first deploy one second after start, and on a deploy
    # right after the previous one's first new worker answered).
    rig.workers = 2
    wait_until(lambda: len({r.pid for r in load.snapshot()}) >= rig.workers, timeout=30, interval=0.05)
    final = "v1"
    jitter = random.Random(DEPLOYS)
    for i in range(DEPLOYS):
        # a random pause so that deploys do not always land at the same point of uWSGI's 1 s touch check
        time.sleep(jitter.uniform(0, 1))
        final = TAGS[(i + 1) % len(TAGS)]
        rig.deploy(final, done=None if reload_done is None else _logged(rig, reload_done, rig.deploys + 1))
    load.stop()
    print(rig.summary(name))
    assert_no_failure(load, graceful_resets=graceful_resets)  # resets: touch and FIFO `r` only
    assert load.mixed == []
    assert rig.deploys == DEPLOYS
    assert load.requests > 100, "the load generator did not really run"
    assert set(load.versions()) == set(TAGS)
    assert get(rig.port)[1].startswith(f"app={final} late={final} ")


def _logged(rig: Rig, line: str, count: int) -> Callable[[], bool]:
    """A condition: ``line`` appears at least ``count`` times in the server's log."""
    server = rig.server
    assert server is not None
    return lambda: server.log().count(line) >= count


def test_uwsgi_touch_reload(rig: Rig) -> None:
    """uWSGI prefork + --touch-reload (the default strategy): 0 failed, 0 mixed over 10 deploys."""
    deploy_under_load(rig, "uwsgi-touch", uwsgi_touch(rig.port, rig.root), graceful_resets=True)


def test_uwsgi_master_fifo_graceful_reload(rig: Rig) -> None:
    """uWSGI prefork + master FIFO 'r': 0 failed, 0 mixed over 10 deploys."""
    fifo = rig.tmp / "uwsgi.fifo"
    deploy_under_load(
        rig,
        "uwsgi-fifo-r",
        uwsgi_fifo(rig.port, rig.root, fifo),
        "--reload-fifo",
        str(fifo),
        "--reload-fifo-command",
        "r",
        graceful_resets=True,
    )


def test_uwsgi_lazy_apps_chain_reload(rig: Rig) -> None:
    """uWSGI --lazy-apps + master FIFO chain reload 'c': 0 failed, 0 mixed over 10 deploys."""
    fifo = rig.tmp / "uwsgi.fifo"
    deploy_under_load(
        rig,
        "uwsgi-lazy-chain-c",
        uwsgi_lazy_chain(rig.port, rig.root, fifo),
        "--reload-fifo",
        str(fifo),
        "--reload-fifo-command",
        "c",
        # uWSGI ignores a chain reload asked for while one is running ("chain reload already running"):
        # the next deploy waits for the chain to complete
        reload_done="chain reloading complete",
    )


def test_gunicorn_hup(rig: Rig) -> None:
    """gunicorn sync workers + HUP to the pid file: 0 failed, 0 mixed over 10 deploys."""
    pidfile = rig.tmp / "gunicorn.pid"
    deploy_under_load(
        rig,
        "gunicorn-hup",
        gunicorn_hup(rig.port, rig.root, pidfile),
        "--reload-signal",
        "HUP",
        "--reload-pidfile",
        str(pidfile),
    )
