"""The optional HTTP endpoint (``--http-bind HOST:PORT``): ``/metrics``, ``/healthz`` and ``/readyz``.

A deliberately small HTTP/1.x server on the daemon's own event loop (anyio streams): GET and HEAD
only, one request per connection (``Connection: close``), the request head capped at
:data:`MAX_REQUEST_BYTES` and read within :data:`READ_TIMEOUT_S`, every connection done within
:data:`CONNECTION_DEADLINE_S`, at most :data:`MAX_CONNECTIONS` at a time. File reads run in worker
threads (their own limiter, so probes never take threads from a deploy); nothing here blocks the loop.

* ``/metrics``: the coordinator's own registry (see :mod:`coordinator.metrics`) in the Prometheus
  text format, or OpenMetrics when the ``Accept`` header asks for it.
* ``/healthz`` (liveness): 200 when the event loop answers (the answer itself is the proof that it is
  not blocked or wedged), the marker watcher task is running, and the daemon is not stopping.
* ``/readyz`` (readiness): 200 only when the marker is valid, the daemon has reconciled this exact
  marker (its digest is the one in the status file this daemon wrote), the last reconcile of it
  ended ``idle`` (deployed, or nothing to do; ``paused`` counts too: a pause alone changes nothing),
  and ``ROOT/current`` still names that release, with the marker's tag (and sha, if given),
  reloaded. Otherwise 503 with a short JSON reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskGroup

from coordinator.config import Config
from coordinator.deployer import Deployer
from coordinator.exceptions import ConfigError, CoordinatorError
from coordinator.layout import read_current
from coordinator.marker import MarkerReading
from coordinator.metrics import Metrics
from coordinator.pause import read_pause
from coordinator.records import StatusRecord, StatusState, as_status
from coordinator.state import parse_iso, read_json, read_release_meta
from coordinator.statefile import ReleaseMeta

__all__ = [
    "CONNECTION_DEADLINE_S",
    "MAX_CONNECTIONS",
    "MAX_REQUEST_BYTES",
    "READ_TIMEOUT_S",
    "Liveness",
    "ProbeServer",
    "Readiness",
    "check_ready",
]

log = structlog.get_logger("coordinator")

#: the request line and headers together; a longer request gets 431
MAX_REQUEST_BYTES = 8192
#: the whole request head must arrive within this; else 408
READ_TIMEOUT_S = 5.0
#: a connection is closed after this, whatever it is doing
CONNECTION_DEADLINE_S = 10.0
#: connections served at once; more are closed at once
MAX_CONNECTIONS = 32
#: after answering, unread input is drained (so the client gets the answer, not a reset) within these
_LINGER_S = 1.0
_LINGER_BYTES = 65536

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_METHOD = re.compile(r"[A-Z]{1,16}")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_PATHS = ("/metrics", "/healthz", "/readyz")
_JSON = "application/json"


# ---------------------------------------------------------------------- liveness


class Liveness:
    """What ``/healthz`` checks besides the loop answering: required tasks running, not stopping."""

    def __init__(self, stop: anyio.Event | None = None, required: tuple[str, ...] = ("watcher",)) -> None:
        self.started = time.monotonic()
        self.required = required
        self._stop = stop
        self._running: set[str] = set()

    @contextlib.contextmanager
    def running(self, name: str) -> Iterator[None]:
        """Mark task ``name`` as running for the duration of the block."""
        self._running.add(name)
        try:
            yield
        finally:
            self._running.discard(name)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """(alive, body of the answer)."""
        body: dict[str, Any] = {"tasks": sorted(self._running), "uptime_s": round(time.monotonic() - self.started, 1)}
        if self._stop is not None and self._stop.is_set():
            return False, {"alive": False, "reason": "stopping", **body}
        missing = [n for n in self.required if n not in self._running]
        if missing:
            return False, {"alive": False, "reason": f"not running: {', '.join(missing)}", **body}
        return True, {"alive": True, **body}


# ---------------------------------------------------------------------- readiness


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reason: str
    release: str | None = None
    tag: str | None = None
    sha: str | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready, "reason": self.reason}
        if self.ready:
            out.update(release=self.release, tag=self.tag, sha=self.sha)
        return out


def check_ready(
    reading: MarkerReading,
    status: StatusRecord | None,
    current: str | None,
    pid: int,
    current_error: str | None = None,
) -> Readiness:
    """Pure: is the marker's release current and deployed? From the marker as just read, the status
    file, the release ``ROOT/current`` names (None: none, or ``current_error``) and our pid."""
    if reading.digest is None:
        return Readiness(False, "no marker: no release is desired yet")
    if reading.error is not None or reading.request is None:
        msg = reading.error.message if reading.error is not None else "unreadable"
        return Readiness(False, f"marker refused: {msg}")
    req = reading.request
    if status is None or status.get("pid") != pid:
        return Readiness(False, "this daemon has not reconciled yet")
    if status.get("marker_digest") != reading.digest:
        return Readiness(False, "the marker changed and is not reconciled yet")
    state = status.get("state")
    if state not in (StatusState.IDLE, StatusState.PAUSED):  # paused: deploys nothing new, serves what it has
        err = status.get("error")
        why = err.get("message") if isinstance(err, Mapping) else None
        return Readiness(False, f"state is {state}" + (f": {why}" if why else ""))
    if current is None:
        return Readiness(False, current_error or "ROOT/current does not name a release")
    cur = status.get("current")
    if not isinstance(cur, Mapping) or cur.get("release") != current:
        return Readiness(False, f"ROOT/current changed to {current} and is not reconciled yet")
    cur_tag, cur_sha = cur.get("tag"), cur.get("sha")
    if cur_tag != req.tag or not isinstance(cur_sha, str) or not req.matches(cur_sha):
        return Readiness(False, f"current is {cur_tag} ({current}), the marker asks for {req.tag}")
    if status.get("reloaded") != current:
        return Readiness(False, f"{current} is current but its reload is not recorded")
    return Readiness(True, "current is the marker's release", current, cur_tag, cur_sha)


@dataclass(frozen=True, slots=True)
class _Observed:
    """What the volume says, read in one trip to a worker thread."""

    status: StatusRecord | None
    current: str | None
    current_error: str | None
    meta: ReleaseMeta | None
    paused: bool = False


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


# ---------------------------------------------------------------------- HTTP


class _HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]


def _parse_request(head: bytes) -> _Request:
    """The request line and headers (everything before the blank line). Raises _HttpError(400)."""
    lines = re.split(r"\r?\n", head.decode("latin-1"))
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _HttpError(400, "malformed request line")
    method, target, version = parts
    if not _METHOD.fullmatch(method) or version not in ("HTTP/1.0", "HTTP/1.1") or not target.startswith("/"):
        raise _HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HttpError(400, "malformed header")
        headers[name.lower()] = value.strip()
    return _Request(method, target.split("?", 1)[0], headers)


def _response(
    code: int, body: bytes, content_type: str, *, head_only: bool = False, extra: Mapping[str, str] | None = None
) -> bytes:
    lines = [
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (extra or {}).items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def _json(code: int, obj: Mapping[str, Any], **kw: Any) -> bytes:
    return _response(code, (json.dumps(obj, sort_keys=True) + "\n").encode(), _JSON, **kw)


class ProbeServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on the daemon's loop. Create with :meth:`open`."""

    def __init__(
        self,
        listeners: list[SocketListener],
        config: Config,
        deployer: Deployer,
        metrics: Metrics,
        liveness: Liveness,
    ) -> None:
        self.listeners = listeners
        self.config = config
        self.deployer = deployer
        self.metrics = metrics
        self.liveness = liveness
        self.active = 0
        self._io = anyio.CapacityLimiter(2)
        # the status file as it was before this daemon wrote it (a previous daemon's, maybe with
        # the same pid: PID 1 in a restarted container). Replaced atomically, so a new write is a
        # new inode: until then, the status says nothing about this daemon.
        self._status_before: tuple[int, int] | None = None
        #: the bound port (the one the kernel chose for port 0), and every address listened on
        self.port = int(listeners[0].extra(SocketAttribute.local_port))
        self.addresses: list[str] = []
        for lst in listeners:
            addr = lst.extra(SocketAttribute.local_address)
            h, p = str(addr[0]), int(addr[1])
            self.addresses.append(f"[{h}]:{p}" if ":" in h else f"{h}:{p}")

    @classmethod
    async def open(cls, config: Config, deployer: Deployer, metrics: Metrics, liveness: Liveness) -> ProbeServer:
        """Bind ``--http-bind`` (raises ConfigError when that fails) and log ``http_listening``."""
        address = config.http_address
        assert address is not None
        host, port = address
        try:
            multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
        except OSError as e:
            raise ConfigError(
                f"cannot listen on --http-bind {config.http_bind}: {e.strerror or e}",
                fix="choose a free port and an address of this host (port 0: any free port)",
                option="http-bind",
            ) from e
        listeners = [lst for lst in multi.listeners if isinstance(lst, SocketListener)]
        server = cls(listeners, config, deployer, metrics, liveness)
        server._status_before = await anyio.to_thread.run_sync(_file_id, config.layout.status_file)
        log.info("http_listening", host=host, port=server.port, addresses=server.addresses)
        return server

    async def serve(self) -> None:
        """Accept and answer until cancelled; then close the listening sockets."""
        try:
            async with anyio.create_task_group() as tg:
                for lst in self.listeners:
                    tg.start_soon(self._accept_loop, lst, tg)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the listening sockets (idempotent)."""
        with anyio.CancelScope(shield=True):
            for lst in self.listeners:
                await lst.aclose()

    async def _accept_loop(self, listener: SocketListener, tg: TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            except OSError as e:  # EMFILE and the like: keep serving once the pressure is gone
                log.warning("http_accept_failed", error=str(e))
                await anyio.sleep(0.1)
                continue
            if self.active >= MAX_CONNECTIONS:
                await anyio.aclose_forcefully(stream)
                continue
            self.active += 1
            tg.start_soon(self._connection, stream)

    async def _connection(self, stream: SocketStream) -> None:
        try:
            with anyio.move_on_after(CONNECTION_DEADLINE_S):
                answer = await self._answer(stream)
                if answer:
                    await stream.send(answer)
                    await stream.send_eof()
                    await self._linger(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass  # the client went away
        except Exception:  # a bug must not take the daemon down
            log.exception("http_handler_crashed")
        finally:
            self.active -= 1
            await anyio.aclose_forcefully(stream)

    async def _answer(self, stream: SocketStream) -> bytes | None:
        """The response bytes for the request on ``stream`` (None: the client left without asking)."""
        try:
            head = await self._read_head(stream)
            if head is None:
                return None
            req = _parse_request(head)
        except _HttpError as e:
            return _json(e.code, {"error": e.message})
        if req.path not in _PATHS:
            return _json(404, {"error": "not found", "paths": list(_PATHS)}, head_only=req.method == "HEAD")
        if req.method not in ("GET", "HEAD"):
            return _json(405, {"error": "only GET and HEAD"}, extra={"Allow": "GET, HEAD"})
        head_only = req.method == "HEAD"
        try:
            if req.path == "/metrics":
                await self._refresh()
                body, content_type = self.metrics.render(req.headers.get("accept", ""))
                return _response(200, body, content_type, head_only=head_only)
            if req.path == "/healthz":
                alive, obj = self.liveness.check()
                return _json(200 if alive else 503, obj, head_only=head_only)
            readiness = await self.readiness()
            return _json(200 if readiness.ready else 503, readiness.body(), head_only=head_only)
        except Exception:
            log.exception("http_handler_failed", path=req.path)
            return _json(500, {"error": "internal error; see the daemon's log"}, head_only=head_only)

    async def _read_head(self, stream: SocketStream) -> bytes | None:
        buf = bytearray()
        with anyio.move_on_after(READ_TIMEOUT_S):
            while True:
                end = _HEAD_END.search(buf)
                if end is not None and end.start() <= MAX_REQUEST_BYTES:
                    return bytes(buf[: end.start()])
                if len(buf) > MAX_REQUEST_BYTES:
                    raise _HttpError(431, f"request head larger than {MAX_REQUEST_BYTES} bytes")
                try:
                    buf += await stream.receive(MAX_REQUEST_BYTES)
                except anyio.EndOfStream:
                    if buf:
                        raise _HttpError(400, "incomplete request") from None
                    return None
        raise _HttpError(408, f"request not received within {READ_TIMEOUT_S:g} s")

    @staticmethod
    async def _linger(stream: SocketStream) -> None:
        """Drain what the client still sends until it closes (bounded), so it reads our answer
        instead of a connection reset."""
        drained = 0
        with anyio.move_on_after(_LINGER_S):
            while drained < _LINGER_BYTES:
                try:
                    drained += len(await stream.receive())
                except anyio.EndOfStream:
                    return

    # ------------------------------------------------------------------ observing

    def _observe(self) -> _Observed:
        lay = self.config.layout
        fresh = _file_id(lay.status_file) not in (None, self._status_before)
        raw = read_json(lay.status_file) if fresh else None
        status = as_status(raw) if raw is not None else None
        paused = read_pause(lay.pause_file) is not None
        try:
            current = read_current(lay.root)
        except CoordinatorError as e:
            return _Observed(status, None, e.message, None, paused)
        meta = read_release_meta(lay.meta_dir, current) if current is not None else None
        return _Observed(status, current, None, meta, paused)

    async def _snapshot(self) -> tuple[Readiness, _Observed]:
        reading = await self.deployer.read_marker()
        seen = await anyio.to_thread.run_sync(self._observe, limiter=self._io)
        return check_ready(reading, seen.status, seen.current, os.getpid(), seen.current_error), seen

    async def readiness(self) -> Readiness:
        """Read the marker, the status file and ``current`` now, and decide."""
        ready, _ = await self._snapshot()
        self.metrics.set_ready(ready.ready)
        return ready

    async def _refresh(self) -> None:
        """Before a scrape: what the metrics read back from the volume."""
        ready, seen = await self._snapshot()
        self.metrics.set_ready(ready.ready)
        meta = seen.meta
        self.metrics.set_current(seen.current, meta.tag if meta else None, meta.sha if meta else None)
        self.metrics.set_paused(seen.paused)
        last = (seen.status or {}).get("last_success")
        finished = parse_iso(last.get("finished_at")) if isinstance(last, Mapping) else None
        if finished is not None:
            self.metrics.seen_success(finished)
