"""A real smart-HTTP git server for tests: ``git http-backend`` (CGI) behind a small threaded
http.server that requires Basic authentication, on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


@dataclass
class GitHttpServer:
    """The server's settings, changeable while it runs: the accepted user and password, and a delay
    before each authenticated request is answered (to observe a fetch in progress)."""

    project_root: Path
    username: str
    password: str
    delay_s: float = 0.0
    port: int = 0
    #: Authorization outcomes in order: True accepted, False refused, None no credentials sent
    attempts: list[bool | None] = field(default_factory=list)

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "git-http-test"
    config: GitHttpServer  # set on the subclass made per server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _authorized(self) -> bool | None:
        header = self.headers.get("Authorization")
        if header is None or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == self.config.username and password == self.config.password

    def _serve(self) -> None:
        ok = self._authorized()
        self.config.attempts.append(ok)
        if not ok:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.config.delay_s:
            time.sleep(self.config.delay_s)
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.config.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "REMOTE_USER": self.config.username,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        if self.headers.get("Content-Length"):
            env["CONTENT_LENGTH"] = self.headers["Content-Length"]
        for name in ("Content-Encoding", "Git-Protocol"):
            if self.headers.get(name):
                env["HTTP_" + name.upper().replace("-", "_")] = self.headers[name]
        proc = subprocess.Popen([HTTP_BACKEND], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        self._copy_body(proc.stdin)
        proc.stdin.close()
        status = "200 OK"
        headers: list[tuple[str, str]] = []
        while (line := proc.stdout.readline().rstrip(b"\r\n")) != b"":
            name, _, value = line.decode().partition(":")
            if name.lower() == "status":
                status = value.strip()
            else:
                headers.append((name, value.strip()))
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason or None)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        shutil.copyfileobj(proc.stdout, self.wfile)
        proc.wait()

    def _copy_body(self, sink: IO[bytes]) -> None:
        """The request body (by Content-Length, or chunked) into the CGI's stdin."""
        write = sink.write
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                write(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                break
            write(chunk)
            remaining -= len(chunk)


@contextmanager
def git_http_server(project_root: Path, username: str, password: str) -> Iterator[GitHttpServer]:
    """Serve the repositories under ``project_root`` at http://127.0.0.1:PORT/<name> with Basic auth."""
    config = GitHttpServer(project_root, username, password)
    handler = type("Handler", (_Handler,), {"config": config})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    config.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield config
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
