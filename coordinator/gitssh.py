"""ssh credentials from files for an ssh repository (``--ssh-key-file``, ``--ssh-known-hosts-file``).

git runs ``GIT_SSH_COMMAND`` through a shell for every fetch and ls-remote:
``ssh -i KEY -o IdentitiesOnly=yes -o BatchMode=yes`` and, with a known-hosts file,
``-o UserKnownHostsFile="FILE" -o StrictHostKeyChecking=yes``. Only the paths are in it, never a key;
ssh reads both files at each connection, so a rotated Kubernetes Secret is used by the next fetch.
``BatchMode`` makes ssh fail instead of asking (a passphrase, an unknown host key).

ssh reads the paths its own way: it expands ``%`` sequences in both, and splits the known-hosts
option's value on blanks unless quoted. :func:`path_problem` refuses the few characters that would
change what ssh reads (``%``, ``"``, ``\\``, control characters); a blank is quoted.

ssh refuses a private key that is owned by the user running it and readable by its group or others
("UNPROTECTED PRIVATE KEY FILE"); :func:`key_file_problem` says so before ssh does. Its failures (host
key verification, a key the server refuses) become messages naming the cause, with the fix
(:func:`ssh_failure`).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "key_file_problem",
    "known_hosts_problem",
    "path_problem",
    "ssh_command",
    "ssh_failure",
    "ssh_files_check",
    "ssh_host",
]

#: a problem: (message, fix)
Problem = tuple[str, str]

_BAD_PATH_CHARS = re.compile(r'[%"\\\x00-\x1f\x7f]')


def ssh_command(key: Path | None, known_hosts: Path | None) -> str:
    """The ``GIT_SSH_COMMAND`` for ``key`` and ``known_hosts`` (paths accepted by :func:`path_problem`)."""
    words = ["ssh"]
    if key is not None:
        words += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    words += ["-o", "BatchMode=yes"]
    if known_hosts is not None:
        words += ["-o", f'UserKnownHostsFile="{known_hosts}"', "-o", "StrictHostKeyChecking=yes"]
    return " ".join(shlex.quote(w) for w in words)


def path_problem(path: Path, option: str) -> Problem | None:
    """Why ssh would read ``path`` as another file (``%``, ``"``, ``\\`` or a control character), or None."""
    bad = _BAD_PATH_CHARS.search(str(path))
    if bad is None:
        return None
    return (
        f"--{option} {str(path)[:200]!r} contains {bad.group()!r}, which ssh would not read as written",
        'put the file at a path without %, ", \\ or control characters',
    )


def key_file_problem(path: Path) -> Problem | None:
    """Why ssh cannot use the private key file ``path``, or None (blocking; its content is never shown):
    unreadable, not a private key (the ``.pub`` half?), or readable by others while owned by this user."""
    try:
        with path.open("rb") as f:
            head = f.read(64)
            st = os.fstat(f.fileno())
    except OSError as e:
        return (
            f"cannot read the ssh key file {path}: {e.strerror}",
            "check --ssh-key-file (a mounted secret may have been removed)",
        )
    if not (head.startswith(b"-----BEGIN ") and b"PRIVATE KEY-----" in head.split(b"\n", 1)[0]):
        return (
            f"the ssh key file {path} is not a private key (no '-----BEGIN ... PRIVATE KEY-----' line)",
            "give the private half of the deploy key (OpenSSH or PEM format), not the .pub file",
        )
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        return (
            f"the ssh key file {path} has mode {st.st_mode & 0o777:04o}: ssh refuses a private key its "
            "group or others can read (UNPROTECTED PRIVATE KEY FILE)",
            f"chmod 600 {path}; in Kubernetes give the Secret volume defaultMode: 0400",
        )
    return None


def known_hosts_problem(path: Path) -> Problem | None:
    """Why the known-hosts file ``path`` cannot be read, or None (blocking)."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        return (
            f"cannot read the ssh known-hosts file {path}: {e.strerror}",
            "check --ssh-known-hosts-file (a mounted secret may have been removed)",
        )
    return None


def ssh_host(repo: str) -> str | None:
    """The server of an ssh ``repo`` as known_hosts names it: ``host``, or ``[host]:port`` for a port
    other than 22; None when it cannot be told."""
    if "://" in repo:
        try:
            parts = urlsplit(repo)
            host, port = parts.hostname, parts.port
        except ValueError:
            return None
    else:  # [user@]host:path, host possibly [v6addr]
        head = repo.split("/", 1)[0].rpartition("@")[2]
        host = head[1 : head.find("]")] if head.startswith("[") else head.partition(":")[0]
        port = None
    if not host:
        return None
    return f"[{host}]:{port}" if port not in (None, 22) else host


def ssh_failure(stderr: bytes, key: Path | None, known_hosts: Path | None, host: str | None) -> Problem | None:
    """What ssh's error output says went wrong, with the fix; None when ssh did not fail."""
    text = stderr.decode("utf-8", "replace")
    server = host or "the server"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (
            f"ssh: host key verification failed: the key of {server} differs from the one in "
            f"{known_hosts or 'the known_hosts file'}",
            "if the server's key really changed (verify its fingerprint out of band), update the known-hosts "
            "file; otherwise someone may be intercepting the connection",
        )
    if "Host key verification failed" in text:
        where = f"--ssh-known-hosts-file {known_hosts}" if known_hosts else "the known_hosts file of this user"
        fix = (
            f"check {where}: it must hold the key of {server} (ssh-keyscan, with the fingerprint verified out of band)"
        )
        if known_hosts is None:
            fix += "; or give --ssh-known-hosts-file"
        return f"ssh: host key verification failed: {server} is not in {where}", fix
    if "UNPROTECTED PRIVATE KEY FILE" in text:
        return (
            f"ssh: the key file {key or '(default)'} is readable by others, and ssh refuses it",
            "chmod 600 the key file; in Kubernetes give the Secret volume defaultMode: 0400",
        )
    if "No user exists for uid" in text:
        return (
            f"ssh: uid {os.getuid()} has no entry in /etc/passwd, and ssh refuses to run",
            "run as a user of the image, or add an /etc/passwd entry for the uid",
        )
    if re.search(r"Load key .*: invalid format", text):
        return (
            f"ssh: cannot load the key file {key or '(default)'}: invalid format",
            "give the private key in OpenSSH or PEM format, without a passphrase",
        )
    if "Permission denied (publickey" in text:
        if key is None:
            return (
                f"ssh: permission denied (publickey): {server} accepted none of this user's keys",
                "give --ssh-key-file with a key authorised on the server",
            )
        return (
            f"ssh: permission denied (publickey): {server} refused the key {key}",
            "check that the key's public half is authorised on the server (a deploy key of the repository) "
            "and the user name in --repo",
        )
    for line in text.splitlines():
        if line.startswith("ssh: "):  # ssh: connect to host ...: Connection refused; Could not resolve ...
            return line.strip()[:300], "check the host and port in --repo and that the server is reachable"
    return None


def ssh_files_check(repo: str, key: Path | None, known_hosts: Path | None) -> tuple[bool, str, str | None]:
    """For ``coordinator check`` (blocking): whether ssh is installed, the key usable and the
    known-hosts file holds a key of the repository's server; (ok, detail, fix)."""
    if shutil.which("ssh") is None:
        return False, "ssh is not on PATH", "install the OpenSSH client (Debian: apt-get install openssh-client)"
    found = []
    if key is not None:
        problem = key_file_problem(key)
        if problem is not None:
            return False, *problem
        found.append(f"key {key} is a private key only its owner can read")
    if known_hosts is not None:
        problem = known_hosts_problem(known_hosts)
        if problem is not None:
            return False, *problem
        host = ssh_host(repo)
        known = _is_known(host, known_hosts) if host else None
        if known is False:
            assert host is not None
            return (
                False,
                f"{known_hosts} has no key for {host}: every fetch would fail host key verification",
                f"add it: {_keyscan(host)} >> {known_hosts}, after checking its fingerprint out of band",
            )
        found.append(f"{known_hosts} has a key for {host}" if known else f"{known_hosts} is readable")
    return True, "; ".join(found), None


def _is_known(host: str, known_hosts: Path) -> bool | None:
    """Whether ``known_hosts`` has a key for ``host`` (``ssh-keygen -F``, which reads hashed entries
    too); None when that cannot be told."""
    try:
        result = subprocess.run(
            ["ssh-keygen", "-F", host, "-f", str(known_hosts)], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {0: True, 1: False}.get(result.returncode)


def _keyscan(host: str) -> str:
    """The ``ssh-keyscan`` command line that asks ``host`` (``name`` or ``[name]:port``) for its keys."""
    if host.startswith("["):
        name, _, port = host[1:].partition("]:")
        return f"ssh-keyscan -p {port} {name}"
    return f"ssh-keyscan {host}"
