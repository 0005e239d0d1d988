"""What git needs in its environment to read the repository: a password from a file, and permission
to read a local repository owned by another user.

* **Password file** (``--username``, ``--password-file``, http(s) repositories only): git asks for the
  credentials through ``GIT_ASKPASS``, a small shell script written (mode 0700) into a private
  directory (mode 0700). The script answers a "Username" prompt with ``COORDINATOR_GIT_USERNAME`` and
  any other prompt with the first line of the file ``COORDINATOR_GIT_PASSWORD_FILE`` names, read at
  each prompt: a rotated secret is picked up by the next fetch. The password itself is never in a
  command line, an environment variable, a message or a file coordinator writes. Credential helpers
  configured for the user are switched off for these calls (``credential.helper=``), so git never
  stores the password either.
* **ssh key and known-hosts files** (``--ssh-key-file``, ``--ssh-known-hosts-file``, ssh repositories
  only): ``GIT_SSH_COMMAND`` names them (see :mod:`coordinator.gitssh`); the key is checked before
  each fetch, so a removed or unprotected key is a clear error rather than ssh's.
* **Local repository of another owner**: git refuses to read it ("detected dubious ownership") unless
  ``safe.directory`` names it, and before git 2.46 only a global or system config can say so (not
  ``-c``). The git calls that read the repository run with ``GIT_CONFIG_GLOBAL`` set to a file in the
  private directory that includes the user's own global config and names exactly that repository
  (the path, and the path with ``/.git``), never ``*``.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import anyio

from coordinator.exceptions import GitError
from coordinator.gitssh import Problem, key_file_problem, known_hosts_problem, ssh_command, ssh_failure, ssh_host

__all__ = ["GitEnv", "check_password_file", "is_http_repo", "is_ssh_repo", "local_repo_path"]

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

#: the GIT_ASKPASS program: the prompt is $1; nothing secret in it
_ASKPASS = """#!/bin/sh
# written by coordinator: answers git's credential prompts; the password is read from a file
case "$1" in
Username*) printf '%s\\n' "$COORDINATOR_GIT_USERNAME" ;;
*)
    IFS= read -r line < "$COORDINATOR_GIT_PASSWORD_FILE" || [ -n "$line" ] || exit 1
    printf '%s\\n' "$line"
    ;;
esac
"""


def is_http_repo(repo: str) -> bool:
    """True for an ``http://`` or ``https://`` repository URL."""
    return repo.lower().startswith(("http://", "https://"))


def is_ssh_repo(repo: str) -> bool:
    """True for an ssh repository: ``ssh://`` (or ``git+ssh://``, ``ssh+git://``) or ``[user@]host:path``."""
    if repo.lower().startswith(("ssh://", "git+ssh://", "ssh+git://")):
        return True
    return not _SCHEME_RE.match(repo) and local_repo_path(repo) is None


def local_repo_path(repo: str) -> Path | None:
    """The absolute path of a repository on this machine (a path or a ``file://`` URL), else None
    (a URL of another scheme, or ``host:path`` as scp and git write an ssh address)."""
    if repo.lower().startswith("file://"):
        path = unquote(urlsplit(repo).path)
        return Path(os.path.abspath(path)) if path else None
    if _SCHEME_RE.match(repo):
        return None
    head = repo.split("/", 1)[0]
    if ":" in head:  # [user@]host:path is ssh
        return None
    return Path(os.path.abspath(repo))


def _config_string(value: str) -> str:
    """``value`` as a double-quoted git config value."""
    if "\n" in value or "\0" in value:
        raise GitError(f"cannot name {value[:80]!r} in a git config file", fix="use a path without a newline")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _global_configs() -> list[str]:
    """The global config files git would read for this user (included by ours)."""
    if os.environ.get("GIT_CONFIG_GLOBAL"):
        return [os.environ["GIT_CONFIG_GLOBAL"]]
    home = os.environ.get("HOME") or os.path.expanduser("~")
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    return [os.path.join(xdg, "git", "config"), os.path.join(home, ".gitconfig")]


class GitEnv:
    """The environment (and ``-c`` options) for the git calls that read the repository."""

    def __init__(
        self,
        repo: str,
        username: str | None = None,
        password_file: Path | None = None,
        home: Path | None = None,
        *,
        ssh_key_file: Path | None = None,
        ssh_known_hosts_file: Path | None = None,
    ) -> None:
        self.username = username
        self.password_file = password_file
        self.ssh_key_file = ssh_key_file
        self.ssh_known_hosts_file = ssh_known_hosts_file
        self.ssh_host = ssh_host(repo) if is_ssh_repo(repo) else None
        self.local = local_repo_path(repo)
        #: where the askpass script and the config file go: the daemon's ``ROOT/.coordinator/gitenv``
        #: (nothing is written outside ROOT); None: a private temporary directory removed at exit
        #: (``coordinator check``, which writes nothing under ROOT)
        self.home = home
        self._dir: Path | None = None

    @property
    def needed(self) -> bool:
        """Whether files must be written (the askpass script, the safe.directory config)."""
        return self.password_file is not None or self.local is not None

    @property
    def uses_ssh_files(self) -> bool:
        return self.ssh_key_file is not None or self.ssh_known_hosts_file is not None

    async def remote(self) -> tuple[list[str], dict[str, str]]:
        """The ``-c`` options and environment for a fetch or ls-remote (files written on first use);
        GitError when the password file or an ssh file cannot be read."""
        env: dict[str, str] = {}
        if self.uses_ssh_files:
            await anyio.to_thread.run_sync(self._check_ssh_files)
            env["GIT_SSH_COMMAND"] = ssh_command(self.ssh_key_file, self.ssh_known_hosts_file)
        if not self.needed:
            return [], env
        if self.password_file is not None:
            await anyio.to_thread.run_sync(_check_password_file, self.password_file)
        if self._dir is None:
            try:
                self._dir = await anyio.to_thread.run_sync(self._write_files)
            except OSError as e:
                raise GitError(
                    f"cannot write the files git needs to read {self.local or 'the repository'}: {e}",
                    fix="check that ROOT is writable",
                ) from e
        opts: list[str] = []
        if self.password_file is not None:
            opts += ["-c", "credential.helper="]
            env |= {
                "GIT_ASKPASS": str(self._dir / "askpass"),
                "COORDINATOR_GIT_USERNAME": self.username or "",
                "COORDINATOR_GIT_PASSWORD_FILE": str(self.password_file),
            }
        if self.local is not None:
            env["GIT_CONFIG_GLOBAL"] = str(self._dir / "gitconfig")
        return opts, env

    def ssh_failure(self, stderr: bytes) -> Problem | None:
        """What went wrong, when ssh failed (per git's error output ``stderr``), with the fix."""
        if self.ssh_host is None:
            return None
        return ssh_failure(stderr, self.ssh_key_file, self.ssh_known_hosts_file, self.ssh_host)

    def _check_ssh_files(self) -> None:
        """GitError when the key or the known-hosts file is gone or unusable (blocking)."""
        problem = (self.ssh_key_file and key_file_problem(self.ssh_key_file)) or (
            self.ssh_known_hosts_file and known_hosts_problem(self.ssh_known_hosts_file)
        )
        if problem:
            raise GitError(problem[0], fix=problem[1])

    def _write_files(self) -> Path:
        """Create the private directory with the askpass script and the config file (blocking)."""
        if self.home is None:
            d = Path(tempfile.mkdtemp(prefix="coordinator-git-"))  # mode 0700
            atexit.register(shutil.rmtree, d, ignore_errors=True)  # at exit: never on the event loop
        else:
            d = self.home
            try:  # a previous daemon's files (or whatever was planted there): written again, fresh
                st = os.lstat(d)
            except FileNotFoundError:
                pass
            else:
                shutil.rmtree(d) if stat.S_ISDIR(st.st_mode) else os.unlink(d)
            os.mkdir(d, 0o700)
        if self.password_file is not None:
            _write(d / "askpass", _ASKPASS, 0o700)
        if self.local is not None:
            lines = ["[include]"] + [f"\tpath = {_config_string(p)}" for p in _global_configs()]
            lines.append("[safe]")
            names = [str(self.local), str(self.local / ".git")]
            if self.local.name == ".git":
                names.append(str(self.local.parent))
            lines += [f"\tdirectory = {_config_string(n)}" for n in names]
            _write(d / "gitconfig", "\n".join(lines) + "\n", 0o600)
        return d


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _check_password_file(path: Path) -> None:
    """GitError when the password file cannot be read (blocking); its content is never shown."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise GitError(
            f"cannot read the password file {path}: {e.strerror}",
            fix="check --password-file (a mounted secret may have been removed)",
        ) from e


def check_password_file(path: Path) -> str | None:
    """Why the password file cannot be read, or None (blocking)."""
    try:
        _check_password_file(path)
    except GitError as e:
        return e.message
    return None
