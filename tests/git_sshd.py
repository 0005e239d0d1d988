"""A real OpenSSH server for tests: ``sshd -D -e`` on 127.0.0.1, run as the current user, with a host
key made by ``ssh-keygen`` and an authorized_keys file in a temporary directory; logins by key only,
as the current user (an sshd that is not root can log in no one else)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: the sshd program (re-executed by its absolute path), or None when openssh-server is not installed
SSHD: str | None = shutil.which("sshd") or ("/usr/sbin/sshd" if os.access("/usr/sbin/sshd", os.X_OK) else None)
if SSHD is not None:
    SSHD = os.path.abspath(SSHD)


def make_key(path: Path, comment: str = "coordinator-test") -> Path:
    """A new ed25519 key pair without a passphrase at ``path`` and ``path.pub`` (mode 0600): ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True, timeout=30
    )
    return path


def public_key(key: Path) -> str:
    """The public half of ``key`` (``ssh-ed25519 AAAA... comment``)."""
    return Path(str(key) + ".pub").read_text().strip()


@dataclass
class SshServer:
    """A running sshd: its port, the user it logs in, and the files that decide who may log in."""

    port: int
    user: str
    host_key: Path
    authorized_keys: Path
    log: Path

    def url(self, path: Path) -> str:
        """``ssh://USER@127.0.0.1:PORT/abs/path``: the repository at ``path`` on this server."""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    @property
    def known_hosts_line(self) -> str:
        """The line of a known_hosts file that trusts this server's host key."""
        algo, blob = public_key(self.host_key).split()[:2]
        return f"[127.0.0.1]:{self.port} {algo} {blob}\n"

    def authorize(self, *keys: Path, keep: bool = False) -> None:
        """Only the public halves of ``keys`` (``KEY.pub``) may log in from now on (``keep``: and
        those already authorised)."""
        before = self.authorized_keys.read_text() if keep else ""
        self.authorized_keys.write_text(before + "".join(public_key(k) + "\n" for k in keys))


_CONFIG = """\
ListenAddress 127.0.0.1
HostKey {host_key}
AuthorizedKeysFile {authorized_keys}
PidFile none
StrictModes no
UsePAM no
UseDNS no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {user}
AllowTcpForwarding no
X11Forwarding no
MaxStartups 100
"""
#: OpenSSH 9.8 and later throttle a source address after a few failed logins: off (older ones do
#: not know the option, so it is only used when ``sshd -t`` accepts it)
_NO_PENALTIES = "PerSourcePenalties no\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_config(d: Path, server: SshServer, extra: str) -> Path:
    text = _CONFIG.format(host_key=server.host_key, authorized_keys=server.authorized_keys, user=server.user) + extra
    config = d / "sshd_config"
    config.write_text(text + _NO_PENALTIES)
    assert SSHD is not None
    test = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
    if test.returncode != 0 and "PerSourcePenalties" in test.stderr:
        config.write_text(text)
        test = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert test.returncode == 0, test.stderr
    return config


def _wait_for_banner(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 20.0) -> bool:
    """Until sshd answers on ``port`` with its banner (True), or exits (False: the port was taken?)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-2.0-"):
                    return True
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"sshd did not answer on port {port}: {log.read_text()[-2000:]}")


@contextmanager
def sshd(directory: Path, delay_s: float = 0.0) -> Iterator[SshServer]:
    """An sshd on 127.0.0.1 (files in ``directory``) that logs the current user in by key; nobody is
    authorised until :meth:`SshServer.authorize`. ``delay_s``: each session waits that long before
    running its command (to observe a fetch in progress)."""
    assert SSHD is not None, "sshd is not installed"
    if os.geteuid() == 0:  # privilege separation: sshd refuses to start without its empty directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    host_key = directory / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True, timeout=30)
    server = SshServer(
        port=0,
        user=pwd.getpwuid(os.getuid()).pw_name,
        host_key=host_key,
        authorized_keys=directory / "authorized_keys",
        log=directory / "sshd.log",
    )
    server.authorized_keys.write_text("")
    extra = f'ForceCommand sleep {delay_s:g}; eval "$SSH_ORIGINAL_COMMAND"\n' if delay_s else ""
    config = _write_config(directory, server, extra)
    for _ in range(5):  # a port found free may be taken before sshd binds it
        server.port = _free_port()
        with server.log.open("ab") as log:
            proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config), "-p", str(server.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        if _wait_for_banner(proc, server.port, server.log):
            break
        proc.wait()
    else:
        raise AssertionError(f"sshd did not start: {server.log.read_text()[-2000:]}")
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
