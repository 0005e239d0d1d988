"""The option table: every setting's name, type, default and help, and how a value is read. Each
option is settable on the command line, as ``COORDINATOR_<OPTION>`` in the environment, or as a key in
a TOML ``--config`` file; the first of those that is set wins (an environment variable set to the empty
string counts as unset). :func:`resolve_options` merges them; :class:`coordinator.config.Config`
validates the result as a whole.

Paths given relative are taken relative to the working directory (command line, environment) or
to the config file's directory (TOML).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.exceptions import ConfigError

__all__ = ["OPTIONS", "Option", "bad_value", "in_range", "load_toml", "resolve_options", "unknown_env_warnings"]


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
        Option("build-sandbox", "str", "auto", "auto: build in an overlay sandbox where possible; off: in place"),
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
        Option(
            "canary-command",
            "str",
            None,
            "argv (no shell) starting the new release on $PORT before the swap; it must pass --canary-url",
        ),
        Option(
            "canary-url",
            "str",
            None,
            "path (or URL with {port}) the canary must answer (default: --health-url's path on 127.0.0.1:$PORT)",
        ),
        Option("canary-timeout", "float", 30.0, "seconds the canary has to pass before it is stopped"),
        Option("notify-command", "str", None, "command run after every attempt, with RESULT and ERROR set"),
        Option("webhook-url", "str", None, "http(s) URL the attempt is POSTed to as JSON after every attempt"),
        Option("hook-timeout", "float", 30.0, "seconds allowed for --notify-command and each --webhook-url POST"),
        Option("git-timeout", "float", 300.0, "seconds allowed for each git command"),
        Option("depth", "int", 1, "commits of history fetched per tag into the git cache (0: all)", low=0),
        Option("username", "str", None, "user name for an http(s) --repo (with --password-file)"),
        Option("password-file", "path", None, "file whose first line is the http(s) password, read at each fetch"),
        Option("ssh-key-file", "path", None, "private key for an ssh --repo (a deploy key), read at each fetch"),
        Option("ssh-known-hosts-file", "path", None, "known_hosts file for an ssh --repo: the only host keys trusted"),
        Option(
            "verify-signatures",
            "bool",
            False,
            "deploy only annotated tags signed by a key of --allowed-signers or --gpg-keyring",
        ),
        Option("allowed-signers", "path", None, "ssh allowed-signers file (git's format) for --verify-signatures"),
        Option("gpg-keyring", "path", None, "exported OpenPGP public keys (gpg --export) for --verify-signatures"),
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
            "watch-step-ms",
            "int",
            3,
            "watchfiles batching step in ms (--poll, non-Linux): lower reacts faster, costs CPU",
            low=1,
            high=1000,
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
        raise bad_value(opt, raw, source)
    try:
        value = _typed(opt, raw, base)
    except (TypeError, ValueError, OverflowError):
        value = None
    if value is None or not in_range(opt, value):
        raise bad_value(opt, raw, source)
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


def in_range(opt: Option, value: Any) -> bool:
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


def bad_value(opt: Option, raw: Any, source: str) -> ConfigError:
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
        "COORDINATOR_CANARY",  # set for --canary-command (coordinator.canary)
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
