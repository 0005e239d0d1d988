"""The daemon's settings as one validated value, :class:`Config`, made from the merged options
(:mod:`coordinator.options`): each value in range, and the combinations that make sense together
(one reload strategy, credentials for an http(s) repository, shared paths that do not overlap).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.canary import check_canary_options
from coordinator.exceptions import ConfigError
from coordinator.gitenv import check_password_file, is_http_repo, is_ssh_repo
from coordinator.gitssh import key_file_problem, known_hosts_problem, path_problem
from coordinator.layout import Layout
from coordinator.options import OPTIONS, bad_value, in_range
from coordinator.shared import check_shared_paths, shared_path
from coordinator.signing import allowed_signers_problem, keyring_problem

__all__ = ["Config", "parse_http_bind"]


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def parse_http_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6ADDR]:PORT`` as (host, port); port 0 asks for any free port.

    HOST is an IPv4 address or a host name; an IPv6 address goes in brackets. Raises ConfigError.
    """

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"invalid --http-bind {text[:80]!r}: {why}",
            fix="give HOST:PORT or [V6ADDR]:PORT, e.g. 127.0.0.1:9100, 0.0.0.0:9100 or [::1]:9100 (0: any free port)",
            option="http-bind",
        )

    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise bad("expected [V6ADDR]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise bad("no port (expected HOST:PORT)")
        if not host:
            raise bad("no host (use 0.0.0.0 for every IPv4 interface, [::] for every interface)")
        if ":" in host:
            raise bad("put an IPv6 address in brackets, e.g. [::1]:9100")
        if len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise bad(f"{host!r} is not a host name or IPv4 address")
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535:
        raise bad(f"port {port!r} is not a number from 0 to 65535")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon needs, already validated."""

    layout: Layout
    repo: str
    keep: int = 5
    tag_pattern: str | None = None
    build_command: str | None = None
    build_timeout: float = 600.0
    build_sandbox: str = "auto"  # "auto" | "off" (coordinator.sandbox)
    git_timeout: float = 300.0
    depth: int = 1
    username: str | None = None
    password_file: Path | None = None
    ssh_key_file: Path | None = None
    ssh_known_hosts_file: Path | None = None
    verify_signatures: bool = False
    allowed_signers: Path | None = None
    gpg_keyring: Path | None = None
    resync_interval: float = 30.0
    follow: str | None = None
    period: float = 60.0
    period_jitter: float | None = None  # None: a tenth of the period
    poll: bool = False
    watch_step_ms: int = 3
    reload_fifo: Path | None = None
    reload_fifo_command: str = "r"
    reload_signal: str | None = None
    reload_pidfile: Path | None = None
    reload_command: str | None = None
    reload_timeout: float = 30.0
    health_url: str | None = None
    health_expect: str = "{sha}"
    health_timeout: float = 60.0
    http_bind: str | None = None
    shared_dirs: tuple[str, ...] = ()
    shared_files: tuple[str, ...] = ()
    pre_swap_command: str | None = None
    pre_swap_timeout: float = 600.0
    canary_command: str | None = None
    canary_url: str | None = None
    canary_timeout: float = 30.0
    notify_command: str | None = None
    webhook_url: str | None = None
    hook_timeout: float = 30.0
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "keep",
            "build_timeout",
            "git_timeout",
            "resync_interval",
            "period",
            "reload_timeout",
            "health_timeout",
            "pre_swap_timeout",
            "canary_timeout",
            "hook_timeout",
        ):
            opt = OPTIONS[name.replace("_", "-")]
            if not in_range(opt, getattr(self, name)):  # also rejects NaN
                raise bad_value(opt, getattr(self, name), f"--{opt.name}")
        for name in ("watch_step_ms", "depth"):
            opt = OPTIONS[name.replace("_", "-")]
            if not in_range(opt, getattr(self, name)):
                raise bad_value(opt, getattr(self, name), f"--{opt.name}")
        self._check_follow()
        if self.build_sandbox not in ("auto", "off"):
            raise ConfigError(
                f"--build-sandbox must be auto or off, got {self.build_sandbox!r}",
                fix="use --build-sandbox auto (the default) or --build-sandbox off",
                option="build-sandbox",
            )
        if not self.repo:
            raise ConfigError("no repository given", fix="pass --repo URL or set COORDINATOR_REPO")
        self._check_credentials()
        self._check_ssh_files()
        self._check_signing()
        strategies = [
            n
            for n, on in (
                ("--reload-fifo", self.reload_fifo is not None),
                ("--reload-signal/--reload-pidfile", self.reload_signal is not None or self.reload_pidfile is not None),
                ("--reload-command", self.reload_command is not None),
            )
            if on
        ]
        if len(strategies) > 1:
            raise ConfigError(
                f"choose one reload strategy, not {' and '.join(strategies)}",
                fix="use the touch file (default), --reload-fifo, --reload-signal with --reload-pidfile, "
                "or --reload-command",
            )
        if (self.reload_signal is None) != (self.reload_pidfile is None):
            raise ConfigError(
                "--reload-signal and --reload-pidfile go together", fix="give both, e.g. HUP and a pid file"
            )
        if self.health_url is not None and not self.health_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"--health-url must be an http(s) URL, not {self.health_url!r}", fix="e.g. http://127.0.0.1:8000/"
            )
        check_canary_options(self.canary_command, self.canary_url, self.health_url)
        if self.http_bind is not None:
            parse_http_bind(self.http_bind)
        if self.webhook_url is not None and not self.webhook_url.startswith(("http://", "https://")):
            raise ConfigError(
                "--webhook-url must be an http(s) URL",
                fix="e.g. https://hooks.example.com/deploys",
                option="webhook-url",
            )
        object.__setattr__(self, "shared_dirs", tuple(shared_path(p, "shared-dir") for p in self.shared_dirs))
        object.__setattr__(self, "shared_files", tuple(shared_path(p, "shared-file") for p in self.shared_files))
        check_shared_paths(self.shared_dirs, self.shared_files)

    def _check_follow(self) -> None:
        """--period-jitter: >= 0 and less than --period; --follow: a glob (any text but empty)."""
        jitter = self.period_jitter
        if jitter is not None and (math.isnan(jitter) or not 0 <= jitter < self.period):
            raise ConfigError(
                f"--period-jitter must be >= 0 and less than --period ({self.period:g}), got {jitter:g}",
                fix="e.g. --period-jitter 6 with --period 60 (the default is a tenth of the period)",
                option="period-jitter",
            )
        if self.follow is not None and not self.follow.strip():
            raise ConfigError("--follow needs a glob", fix="e.g. --follow 'v*'", option="follow")

    def _check_credentials(self) -> None:
        """--username and --password-file: for an http(s) repository, the file readable (blocking)."""
        if self.username is not None and self.password_file is None:
            raise ConfigError(
                "--username needs --password-file", fix="give the file holding the password", option="username"
            )
        if self.password_file is None:
            return
        if not is_http_repo(self.repo):
            raise ConfigError(
                "--username and --password-file apply to an http(s) --repo only",
                fix="for ssh use a deploy key (see Private repositories); for a path, drop them",
                option="password-file",
            )
        problem = check_password_file(self.password_file)
        if problem is not None:
            raise ConfigError(problem, fix="check --password-file", option="password-file")

    def _check_ssh_files(self) -> None:
        """--ssh-key-file and --ssh-known-hosts-file: for an ssh repository, not with GIT_SSH_COMMAND or
        GIT_SSH in the environment, the files usable by ssh (blocking)."""
        given = [
            (o, p)
            for o, p in (("ssh-key-file", self.ssh_key_file), ("ssh-known-hosts-file", self.ssh_known_hosts_file))
            if p
        ]
        if not given:
            return
        names = " and ".join(f"--{o}" for o, _ in given)
        if not is_ssh_repo(self.repo):
            raise ConfigError(
                f"{names} apply to an ssh --repo only (ssh://[user@]host[:port]/path or [user@]host:path)",
                fix="for http(s) use --username with --password-file (see Private repositories); for a path, drop them",
                option=given[0][0],
            )
        for var in ("GIT_SSH_COMMAND", "GIT_SSH"):
            if os.environ.get(var):
                raise ConfigError(
                    f"choose one: {var} is set in the environment and {names} given",
                    fix=f"unset {var}, or drop {names} and name the files in {var}",
                    option=given[0][0],
                )
        for option, path in given:
            check = key_file_problem if option == "ssh-key-file" else known_hosts_problem
            problem = path_problem(path, option) or check(path)
            if problem is not None:
                raise ConfigError(problem[0], fix=problem[1], option=option)

    def _check_signing(self) -> None:
        """--verify-signatures: with at least one keys file, each readable and well-formed (blocking);
        the files are of no use without it."""
        files = [(o, p) for o, p in (("allowed-signers", self.allowed_signers), ("gpg-keyring", self.gpg_keyring)) if p]
        if not self.verify_signatures:
            if files:
                raise ConfigError(
                    f"--{files[0][0]} is used only with --verify-signatures",
                    fix="add --verify-signatures, or drop the option",
                    option=files[0][0],
                )
            return
        if not files:
            raise ConfigError(
                "--verify-signatures needs --allowed-signers FILE or --gpg-keyring FILE (or both)",
                fix="give the keys allowed to sign release tags (see Sign release tags)",
                option="verify-signatures",
            )
        for option, path in files:
            problem = (allowed_signers_problem if option == "allowed-signers" else keyring_problem)(path)
            if problem is not None:
                raise ConfigError(problem[0], fix=problem[1], option=option)

    @property
    def http_address(self) -> tuple[str, int] | None:
        """(host, port) of ``--http-bind`` (host without brackets), or None when not configured."""
        return None if self.http_bind is None else parse_http_bind(self.http_bind)

    @property
    def reload_strategy(self) -> str:
        """touch, fifo, signal or command."""
        if self.reload_fifo is not None:
            return "fifo"
        if self.reload_signal is not None:
            return "signal"
        if self.reload_command is not None:
            return "command"
        return "touch"

    @classmethod
    def from_options(cls, opts: Mapping[str, Any]) -> Config:
        if opts.get("root") is None:
            raise ConfigError("no root given", fix="pass --root DIR or set COORDINATOR_ROOT")
        layout = Layout.for_root(opts["root"], opts.get("marker"), opts.get("status_file"), opts.get("reload_file"))
        return cls(
            layout=layout,
            repo=opts.get("repo") or "",
            keep=opts.get("keep", 5),
            tag_pattern=opts.get("tag_pattern"),
            build_command=opts.get("build_command"),
            build_timeout=opts.get("build_timeout", 600.0),
            build_sandbox=opts.get("build_sandbox") or "auto",
            git_timeout=opts.get("git_timeout", 300.0),
            depth=opts.get("depth", 1),
            username=opts.get("username"),
            password_file=opts.get("password_file"),
            ssh_key_file=opts.get("ssh_key_file"),
            ssh_known_hosts_file=opts.get("ssh_known_hosts_file"),
            verify_signatures=opts.get("verify_signatures", False),
            allowed_signers=opts.get("allowed_signers"),
            gpg_keyring=opts.get("gpg_keyring"),
            resync_interval=opts.get("resync_interval", 30.0),
            follow=opts.get("follow"),
            period=opts.get("period", 60.0),
            period_jitter=opts.get("period_jitter"),
            poll=opts.get("poll", False),
            watch_step_ms=opts.get("watch_step_ms", 3),
            reload_fifo=opts.get("reload_fifo"),
            reload_fifo_command=opts.get("reload_fifo_command") or "r",
            reload_signal=opts.get("reload_signal"),
            reload_pidfile=opts.get("reload_pidfile"),
            reload_command=opts.get("reload_command"),
            reload_timeout=opts.get("reload_timeout", 30.0),
            health_url=opts.get("health_url"),
            health_expect=opts.get("health_expect") or "{sha}",
            health_timeout=opts.get("health_timeout", 60.0),
            http_bind=opts.get("http_bind"),
            shared_dirs=tuple(opts.get("shared_dirs") or ()),
            shared_files=tuple(opts.get("shared_files") or ()),
            pre_swap_command=opts.get("pre_swap_command"),
            pre_swap_timeout=opts.get("pre_swap_timeout", 600.0),
            canary_command=opts.get("canary_command"),
            canary_url=opts.get("canary_url"),
            canary_timeout=opts.get("canary_timeout", 30.0),
            notify_command=opts.get("notify_command"),
            webhook_url=opts.get("webhook_url"),
            hook_timeout=opts.get("hook_timeout", 30.0),
        )

    @property
    def shared_paths(self) -> list[tuple[str, bool]]:
        """Every shared path with whether it is a directory (True) or a file (False)."""
        return [(p, True) for p in self.shared_dirs] + [(p, False) for p in self.shared_files]
