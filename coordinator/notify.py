"""Telling the outside world that an attempt ended: ``--notify-command`` and ``--webhook-url``.

The deployer hands every finished attempt to :meth:`Notifier.submit`, which never waits: the
notifications queue (at most :data:`QUEUE_SIZE`; more are dropped and counted as failures) and one
task (:meth:`Notifier.running`) delivers them in order, the command first, then the webhook. So a
slow or hanging receiver never delays the next deploy, and never changes an attempt's result: a
failure is logged (``hook_failed`` with ``hook``) and counted (``on_failure``, the metric
``coordinator_hook_failures_total``).

* The command runs in ROOT with the environment of every hook (:class:`~coordinator.hooks.HookContext`)
  plus ``ACTION`` (``deploy`` or ``stage``), ``RESULT`` and ``ERROR``, killed with its process group
  after ``--hook-timeout``.
* The webhook gets the journal entry as JSON in a POST, each try limited to ``--hook-timeout``; a
  connection error, a timeout or a 5xx is tried again after 1 s, then 2 s (three tries), a 4xx or a
  redirect is not. Credentials in the URL (``https://user:pass@host/``) are sent as Basic auth, never
  followed to another host, and redacted wherever the URL is shown (:func:`redact_url`).

When the daemon stops, queued notifications get at most ``--hook-timeout`` seconds in all; what is
left then is dropped and logged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from coordinator import __version__
from coordinator.config import Config
from coordinator.git import redact
from coordinator.hooks import HookContext, run_command
from coordinator.records import JournalEntry

__all__ = ["QUEUE_SIZE", "Notification", "Notifier", "post_json", "redact_url", "split_credentials"]

log = structlog.get_logger("coordinator")

#: notifications waiting for delivery; more are dropped (and counted as failures)
QUEUE_SIZE = 64
#: pauses before the second and third webhook tries
BACKOFF = (1.0, 2.0)


def redact_url(url: str) -> str:
    """``url`` without its credentials: ``https://user:pass@host/x`` becomes ``https://***@host/x``."""
    return redact(url)


def split_credentials(url: str) -> tuple[str, str | None]:
    """``url`` without its user info, and the ``Authorization`` header value it stands for (None if none)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    bare = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return bare, "Basic " + base64.b64encode(token).decode("ascii")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not followed (it could carry the credentials to another host)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def post_json(url: str, body: bytes, timeout: float) -> int:
    """One blocking POST of ``body``; returns the HTTP status (raises OSError when there is none:
    TimeoutError when the server did not connect or answer within ``timeout``)."""
    bare, auth = split_credentials(url)
    headers = {"Content-Type": "application/json", "User-Agent": f"coordinator/{__version__}"}
    if auth is not None:
        headers["Authorization"] = auth
    req = urllib.request.Request(bare, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            resp.read(64 * 1024)
            return int(resp.status)
    except urllib.error.HTTPError as e:
        e.close()
        return e.code
    except urllib.error.URLError as e:  # keeps no URL, but the reason may be any exception
        if isinstance(e.reason, TimeoutError):  # the connect timed out
            raise TimeoutError(str(e.reason)) from None
        raise OSError(str(e.reason)) from None
    except ValueError as e:
        raise OSError(str(e)) from None


@dataclass(frozen=True, slots=True)
class Notification:
    """A finished attempt to tell about: its journal entry and the environment of the command."""

    entry: JournalEntry
    ctx: HookContext


class Notifier:
    """Delivers notifications in the background, in order (see the module docstring)."""

    def __init__(self, config: Config, backoff: tuple[float, ...] = BACKOFF) -> None:
        self.config = config
        self.backoff = backoff
        #: called with "notify" or "webhook" for each failed delivery (the metrics counter)
        self.on_failure: Callable[[str], None] | None = None
        self._send: MemoryObjectSendStream[Notification]
        self._receive: MemoryObjectReceiveStream[Notification]
        self._send, self._receive = anyio.create_memory_object_stream[Notification](QUEUE_SIZE)
        self._inflight: tuple[Notification, list[str]] | None = None  # and its hooks not done yet

    @property
    def hooks(self) -> tuple[str, ...]:
        """The notification hooks configured."""
        return tuple(
            h for h, on in (("notify", self.config.notify_command), ("webhook", self.config.webhook_url)) if on
        )

    def submit(self, entry: JournalEntry, ctx: HookContext) -> None:
        """Queue a finished attempt for delivery; never waits."""
        if not self.hooks:
            return
        try:
            self._send.send_nowait(Notification(entry, ctx))
        except (anyio.WouldBlock, anyio.ClosedResourceError):
            for hook in self.hooks:
                self._failed(hook, entry, "the notification queue is full (or the daemon is stopping)")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Deliver queued notifications while the body runs; on exit, for at most ``--hook-timeout``."""
        done = anyio.Event()
        consumer = anyio.CancelScope(shield=True)  # stopped only here, not by the daemon's own cancellation

        async def consume() -> None:
            with consumer:
                async for n in self._receive:
                    await self.deliver(n)
                done.set()

        failure: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            try:
                yield
            except Exception as e:  # raised as it is after the task group, not in an exception group
                failure = e
            finally:
                self._send.close()
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(self.config.hook_timeout):
                        await done.wait()
                    consumer.cancel()
                stopped = "not delivered: the daemon stopped first"
                if self._inflight is not None:  # cut short
                    n, left = self._inflight
                    for hook in left:
                        self._failed(hook, n.entry, stopped)
                while True:  # never started
                    try:
                        n = self._receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    for hook in self.hooks:
                        self._failed(hook, n.entry, stopped)
        if failure is not None:
            raise failure

    async def deliver(self, n: Notification) -> None:
        """Run the notify command, then POST the webhook; failures are logged and counted only."""
        left = list(self.hooks)
        self._inflight = (n, left)
        if self.config.notify_command:
            await self._notify(self.config.notify_command, n)
            left.remove("notify")
        if self.config.webhook_url:
            await self._webhook(self.config.webhook_url, n)
            left.remove("webhook")
        self._inflight = None

    async def _notify(self, cmd: str, n: Notification) -> None:
        error = n.entry.get("error")
        env = {
            "ACTION": n.entry.get("action") or "deploy",
            "RESULT": n.entry["result"],
            "ERROR": error.get("message", "") if error else "",
        }
        limit = self.config.hook_timeout
        result = await run_command(
            cmd, n.ctx, cwd=self.config.layout.root, limit_s=limit, extra_env=self.config.extra_env, env=env
        )
        if result.ok:
            log.debug("hook_done", hook="notify", tag=n.entry["tag"], result=n.entry["result"])
        else:
            self._failed("notify", n.entry, result.describe("notify command", limit), output=result.output)

    async def _webhook(self, url: str, n: Notification) -> None:
        body = json.dumps(n.entry).encode()
        limit = self.config.hook_timeout
        shown = redact_url(url)
        why = ""
        for tries, pause in enumerate((0.0, *self.backoff), start=1):
            await anyio.sleep(pause)
            status: int | None = None
            with anyio.move_on_after(limit):  # the thread may linger until its socket timeout; we do not
                try:
                    status = await anyio.to_thread.run_sync(post_json, url, body, limit, abandon_on_cancel=True)
                except TimeoutError:  # the socket's own timeout, a moment before ours: the same hang
                    pass
                except OSError as e:
                    why = f"cannot reach {shown}: {redact(str(e))}"
                    continue
            if status is None:
                why = f"{shown} did not answer within {limit:g} s"
            elif 200 <= status < 300:
                log.debug("hook_done", hook="webhook", url=shown, status=status, tries=tries)
                return
            else:
                why = f"HTTP {status} from {shown}"
                if status < 500:
                    break
        self._failed("webhook", n.entry, why, url=shown, tries=tries)

    def _failed(self, hook: str, entry: JournalEntry, reason: str, **fields: Any) -> None:
        log.warning("hook_failed", hook=hook, reason=reason, tag=entry["tag"], result=entry["result"], **fields)
        if self.on_failure is not None:
            self.on_failure(hook)
