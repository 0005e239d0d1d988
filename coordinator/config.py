"""Settings: one table of options, each settable on the command line, as ``COORDINATOR_<OPTION>``
in the environment, or as a key in a TOML ``--config`` file. The first of those that is set wins
(an environment variable set to the empty string counts as unset).

Paths given relative are taken relative to the working directory (command line, environment) or
to the config file's directory (TOML).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.exceptions import ConfigError
from coordinator.gitenv import check_password_file, is_http_repo
from coordinator.layout import Layout

__all__ = [
    "OPTIONS",
    "Config",
    "Option",
    "check_shared_paths",
    "parse_http_bind",
    "resolve_options",
    "shared_path",
    "unknown_env_warnings",
]


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its name (``status-file``), type, default and help text."""

    name: str
    type: str  # "str" | "path" | "int" | "float" | "bool" | "list"
    default: Any
    help: str
    low: int | None = None  # the smallest value allowed (float options without one: seconds > 0)
    high: int | None = None  # int options: the largest value allowed
    #: the command-line flag when it differs from the name: a list option is named in the plural
    #: (``shared-dirs``: TOML key, ``COORDINATOR_SHARED_DIRS``) and its flag, given once per value, singular
    flag: str | None = None

    @property
    def cli_flag(self) -> str:
        return "--" + (self.flag or self.name)

    @property
    def expect(self) -> str:
        """What a valid value is, in plain words: ``a whole number >= 1``."""
        if self.type == "int":
            if self.low is not None and self.high is not None:
                return f"a whole number from {self.low} to {self.high}"
            return "a whole number" + (f" >= {self.low}" if self.low is not None else "")
        if self.type == "float" and self.low is not None:
            return f"a number of seconds >= {self.low}"
        return {
            "float": "a number of seconds > 0",
            "bool": "true or false",
            "path": "a path",
            "list": "a list of strings (comma-separated in the environment)",
        }.get(self.type, "a string")

    @property
    def env(self) -> str:
        return "COORDINATOR_" + self.name.upper().replace("-", "_")

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in [
        Option("root", "path", None, "the shared volume: releases/, current, marker, status"),
        Option("repo", "str", None, "git repository to deploy from: anything `git fetch` accepts"),
        Option("marker", "path", None, "deploy marker file (default ROOT/deploy.request)"),
        Option("status-file", "path", None, "status file (default ROOT/deploy.status.json)"),
        Option("reload-file", "path", None, "file touched to reload the app (default ROOT/reload.touch)"),
        Option("keep", "int", 5, "successful releases to keep on disk (current and previous always kept)", low=1),
        Option("tag-pattern", "str", None, "only deploy tags matching this glob, e.g. 'v*'"),
        Option("build-command", "str", None, "shell command run in a new release before the swap"),
        Option("build-timeout", "float", 600.0, "seconds before the build command's process group is killed"),
        Option(
            "shared-dirs",
            "list",
            (),
            "directory PATH in every release linked to ROOT/shared/PATH (created empty if missing; repeatable)",
            flag="shared-dir",
        ),
        Option(
            "shared-files",
            "list",
            (),
            "file PATH in every release linked to ROOT/shared/PATH (must exist, e.g. .env; repeatable)",
            flag="shared-file",
        ),
        Option("pre-swap-command", "str", None, "command run in the release before each swap (e.g. migrate)"),
        Option("pre-swap-timeout", "float", 600.0, "seconds before the pre-swap command's process group is killed"),
        Option("notify-command", "str", None, "command run after every attempt, with RESULT and ERROR set"),
        Option("webhook-url", "str", None, "http(s) URL the attempt is POSTed to as JSON after every attempt"),
        Option("hook-timeout", "float", 30.0, "seconds allowed for --notify-command and each --webhook-url POST"),
        Option("git-timeout", "float", 300.0, "seconds allowed for each git command"),
        Option("depth", "int", 1, "commits of history fetched per tag into the git cache (0: all)", low=0),
        Option("username", "str", None, "user name for an http(s) --repo (with --password-file)"),
        Option("password-file", "path", None, "file whose first line is the http(s) password, read at each fetch"),
        Option("resync-interval", "float", 30.0, "seconds between periodic re-reads of the marker"),
        Option("follow", "str", None, "without a marker, deploy the newest tag matching this glob, e.g. 'v*'"),
        Option("period", "float", 60.0, "seconds between two looks at the repository's tags with --follow"),
        Option(
            "period-jitter",
            "float",
            None,
            "seconds --period varies by, at random, either way (default: a tenth)",
            low=0,
        ),
        Option("poll", "bool", False, "poll the marker directory instead of inotify (NFS, EFS, SMB)"),
        Option(
            "watch-step-ms", "int", 3, "watcher batching step in ms: lower reacts faster, costs CPU", low=1, high=1000
        ),
        Option("reload-fifo", "path", None, "uWSGI master FIFO to write the reload command to (instead of touch)"),
        Option("reload-fifo-command", "str", "r", "command written to the FIFO: r graceful, c chain (lazy-apps), w"),
        Option("reload-signal", "str", None, "signal sent to the pid in --reload-pidfile, e.g. HUP (gunicorn)"),
        Option("reload-pidfile", "path", None, "pid file of the app server's master, for --reload-signal"),
        Option("reload-command", "str", None, "command (argv, no shell) run to reload, instead of touch"),
        Option("reload-timeout", "float", 30.0, "seconds allowed for --reload-command"),
        Option("health-url", "str", None, "URL that must answer 2xx with --health-expect after a reload"),
        Option("health-expect", "str", "{sha}", "text the health answer must contain ({tag} and {sha} filled in)"),
        Option("health-timeout", "float", 60.0, "seconds to wait for the new release to pass the health check"),
        Option("http-bind", "str", None, "serve /metrics, /healthz, /readyz on HOST:PORT or [V6ADDR]:PORT (0: any)"),
        Option("log-format", "str", "auto", "auto (console on a terminal, else json), json or console"),
        Option("log-level", "str", "info", "debug, info, warning or error"),
    ]
}


def _convert(opt: Option, raw: Any, base: Path | None, source: str) -> Any:
    """``raw`` from ``source`` (``--keep``, ``COORDINATOR_KEEP`` or a TOML file's path) as the
    option's type, in range; else a ConfigError in plain words: ``keep must be a whole number >= 1,
    got "three" (in /etc/coordinator.toml)``."""
    if opt.type == "list" and isinstance(raw, str) and base is not None:
        # from TOML (the only source with a base), which has lists: `shared-dirs = "media"` is a mistake
        raise _bad_value(opt, raw, source)
    try:
        value = _typed(opt, raw, base)
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None or not _in_range(opt, value):
        raise _bad_value(opt, raw, source)
    return value


def _typed(opt: Option, raw: Any, base: Path | None) -> Any:
    """``raw`` as the option's type, or None (or TypeError/ValueError) when it is not one."""
    if opt.type == "path":
        if not isinstance(raw, str | os.PathLike) or not str(raw):
            return None
        p = Path(raw).expanduser()
        if not p.is_absolute():
            p = (base or Path.cwd()) / p
        return Path(os.path.normpath(p))
    if opt.type == "int":
        if isinstance(raw, bool | float):  # no silent truncation of 2.5, no OverflowError on inf
            return None
        return int(raw)
    if opt.type == "float":
        return None if isinstance(raw, bool) else float(raw)
    if opt.type == "list":
        return _typed_list(raw)
    if opt.type == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        return False if text in {"0", "false", "no", "off", ""} else None
    return raw if isinstance(raw, str) else None


def _typed_list(raw: Any) -> tuple[str, ...] | None:
    """A list option's value: a TOML list of strings, the values of a repeated flag, or one string of
    comma-separated values (the environment); blanks around values and empty values are dropped."""
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list | tuple) or not all(isinstance(v, str) for v in raw):
        return None
    return tuple(v.strip() for v in raw if v.strip())


def _in_range(opt: Option, value: Any) -> bool:
    if opt.type == "int":
        return (opt.low is None or value >= opt.low) and (opt.high is None or value <= opt.high)
    if opt.type == "float":
        return bool(value >= opt.low if opt.low is not None else value > 0) and not math.isnan(value)
    return True


def _shown(raw: Any) -> str:
    """A value as the user wrote it: strings quoted, booleans as in TOML."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return json.dumps(raw[:80], ensure_ascii=False)
    if isinstance(raw, list | tuple):
        return "[" + ", ".join(_shown(v) for v in raw)[:80] + "]"
    return str(raw)[:80]


def _bad_value(opt: Option, raw: Any, source: str) -> ConfigError:
    example = opt.default if opt.default is not None else {"int": 1, "float": 30, "bool": False}.get(opt.type)
    if opt.type == "list":
        example = "media,static/uploads" if source.startswith("COORDINATOR_") else ["media"]
    if source.startswith("--"):
        label, where, usage = source, "", f"{source} {example}"
    elif source.startswith("COORDINATOR_"):
        label, where, usage = source, "", f"{source}={str(example).lower() if isinstance(example, bool) else example}"
    else:
        label, where, usage = opt.name, f" (in {source})", f"{opt.name} = {_shown(example)}"
    fix = f"use e.g. `{usage}`" if example is not None else f"see `coordinator run --help` for {opt.name}"
    return ConfigError(f"{label} must be {opt.expect}, got {_shown(raw)}{where}", fix=fix, option=opt.name)


#: COORDINATOR_* variables that are not options but are read by coordinator (or set by it)
_OTHER_ENV = frozenset(
    {
        "COORDINATOR_FAILPOINTS",  # test crash points (coordinator.failpoints)
        "COORDINATOR_RELEASE",  # set for --reload-command
        "COORDINATOR_PIN_APP",  # coordinator.pin, in the app server
        "COORDINATOR_PIN_CURRENT",
        "COORDINATOR_PIN_ON_ERROR",
    }
)


def unknown_env_warnings(env: Mapping[str, str] | None = None) -> list[str]:
    """One warning per ``COORDINATOR_*`` variable that is no option (a typo is otherwise silently
    ignored), naming the closest option's variable."""
    env = os.environ if env is None else env
    known = {o.env for o in OPTIONS.values()}
    out: list[str] = []
    for name in sorted(env):
        if not name.startswith("COORDINATOR_") or name in known or name in _OTHER_ENV:
            continue
        if name.startswith("COORDINATOR_TEST_"):
            continue
        suffixes = {o.env.removeprefix("COORDINATOR_"): o.env for o in OPTIONS.values()}
        close = difflib.get_close_matches(name.removeprefix("COORDINATOR_"), sorted(suffixes), n=1, cutoff=0.6)
        hint = f"did you mean {suffixes[close[0]]}?" if close else "see `coordinator run --help` for the variables"
        out.append(f"unknown environment variable {name} is ignored; {hint}")
    return out


#: first components a shared path may not have: coordinator's own names in a release and the ROOT layout
_RESERVED = frozenset({".coordinator", ".git", "current", "releases", "shared"})


def shared_path(text: str, flag: str) -> str:
    """``--shared-dir``/``--shared-file`` PATH, checked: relative, inside the release, in normal form
    (``media/``, ``./media`` become ``media``); ConfigError (exit 2) otherwise."""

    def bad(why: str) -> ConfigError:
        return ConfigError(
            f"invalid --{flag} {text[:80]!r}: {why}",
            fix=f"give a path relative to the release, e.g. --{flag} media or --{flag} config/.env",
            option=flag + "s",
        )

    if not text or len(text) > 1024:
        raise bad("empty" if not text else "longer than 1024 characters")
    if text.startswith("/"):
        raise bad("absolute (it is a path inside each release)")
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise bad("control characters")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise bad("names the release itself")
    if ".." in parts:
        raise bad("'..' would leave the release")
    if any(p.startswith("-") for p in parts):
        raise bad("a component starts with '-'")
    if parts[0] in _RESERVED:
        raise bad(f"{parts[0]!r} is reserved")
    return "/".join(parts)


def check_shared_paths(dirs: tuple[str, ...], files: tuple[str, ...]) -> None:
    """No shared path twice, and none inside another (``media`` and ``media/x`` would link into a link)."""
    seen = sorted([*dirs, *files])
    for i, a in enumerate(seen):
        b = next((b for b in seen[i + 1 :] if b == a or b.startswith(a + "/")), None)
        if b is not None:
            raise ConfigError(
                f"shared paths {a!r} and {b!r} overlap" if a != b else f"shared path {a!r} is given twice",
                fix="give each shared path once, and none inside another",
                option="shared-dirs",
            )


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


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file; keys may be written ``status-file`` or ``status_file``."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} not found", fix="check --config") from e
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}", fix="check --config") from e
    section = data.get("coordinator", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [coordinator] must be a table", fix="check --config")
    if section is not data and len(data) > 1:
        raise ConfigError(
            f"config file {path}: keys both at the top level and under [coordinator]",
            fix="put every key under [coordinator], or none",
        )
    out: dict[str, Any] = {}
    for key, value in section.items():
        name = key.replace("_", "-")
        if name not in OPTIONS:
            raise ConfigError(
                f"config file {path}: unknown key {key!r}",
                fix="known keys: " + ", ".join(OPTIONS),
            )
        out[name] = value
    return out


def resolve_options(
    cli: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Merge command line > environment > config file > default for ``names`` (default: all)."""
    env = os.environ if env is None else env
    toml = load_toml(config_file) if config_file else {}
    base = config_file.absolute().parent if config_file else None
    out: dict[str, Any] = {}
    for name in names or list(OPTIONS):
        opt = OPTIONS[name]
        if cli.get(opt.dest) is not None:
            out[opt.dest] = _convert(opt, cli[opt.dest], None, opt.cli_flag)
        elif env.get(opt.env):  # set and not empty: `COORDINATOR_TAG_PATTERN=` means unset
            out[opt.dest] = _convert(opt, env[opt.env], None, opt.env)
        elif name in toml:
            out[opt.dest] = _convert(opt, toml[name], base, str(config_file))
        else:
            out[opt.dest] = opt.default
    return out


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon needs, already validated."""

    layout: Layout
    repo: str
    keep: int = 5
    tag_pattern: str | None = None
    build_command: str | None = None
    build_timeout: float = 600.0
    git_timeout: float = 300.0
    depth: int = 1
    username: str | None = None
    password_file: Path | None = None
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
            "hook_timeout",
        ):
            opt = OPTIONS[name.replace("_", "-")]
            if not _in_range(opt, getattr(self, name)):  # also rejects NaN
                raise _bad_value(opt, getattr(self, name), f"--{opt.name}")
        for name in ("watch_step_ms", "depth"):
            opt = OPTIONS[name.replace("_", "-")]
            if not _in_range(opt, getattr(self, name)):
                raise _bad_value(opt, getattr(self, name), f"--{opt.name}")
        self._check_follow()
        if not self.repo:
            raise ConfigError("no repository given", fix="pass --repo URL or set COORDINATOR_REPO")
        self._check_credentials()
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
            git_timeout=opts.get("git_timeout", 300.0),
            depth=opts.get("depth", 1),
            username=opts.get("username"),
            password_file=opts.get("password_file"),
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
            notify_command=opts.get("notify_command"),
            webhook_url=opts.get("webhook_url"),
            hook_timeout=opts.get("hook_timeout", 30.0),
        )

    @property
    def shared_paths(self) -> list[tuple[str, bool]]:
        """Every shared path with whether it is a directory (True) or a file (False)."""
        return [(p, True) for p in self.shared_dirs] + [(p, False) for p in self.shared_files]
