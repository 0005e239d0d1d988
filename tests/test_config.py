"""Unit tests for coordinator.config: option precedence, conversion, TOML files, validation, layout.
Only the TOML tests touch the filesystem (tmp_path)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import Config
from coordinator.exceptions import ConfigError
from coordinator.layout import Layout
from coordinator.options import OPTIONS, Option, resolve_options

TomlWriter = Callable[[str], Path]


@pytest.fixture
def write_toml(tmp_path: Path) -> TomlWriter:
    """Write a TOML config file into tmp_path/conf/ and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "conf" / "coordinator.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path

    return write


def resolve(cli: dict[str, Any] | None = None, env: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    """resolve_options with an explicit (empty by default) environment."""
    return resolve_options(cli or {}, env or {}, **kw)


# --------------------------------------------------------------------------------------------------
# Option


def test_option_env_name() -> None:
    """An option's environment variable is COORDINATOR_ plus its upper-cased, underscored name."""
    assert OPTIONS["status-file"].env == "COORDINATOR_STATUS_FILE"


def test_option_dest_name() -> None:
    """An option's key in the resolved mapping uses underscores."""
    assert OPTIONS["watch-step-ms"].dest == "watch_step_ms"


def test_option_env_names_are_unique() -> None:
    """No two options share an environment variable."""
    envs = [o.env for o in OPTIONS.values()]
    assert len(envs) == len(set(envs))


# --------------------------------------------------------------------------------------------------
# precedence


def test_defaults_when_nothing_is_set() -> None:
    """With no CLI, environment or config file, every option has its default."""
    out = resolve()
    assert out == {o.dest: o.default for o in OPTIONS.values()}
    assert (out["keep"], out["poll"], out["log_format"], out["root"]) == (5, False, "auto", None)


def test_cli_beats_env_and_toml(write_toml: TomlWriter) -> None:
    """A value on the command line wins over the environment and the config file."""
    conf = write_toml("keep = 3\n")
    assert resolve({"keep": 1}, {"COORDINATOR_KEEP": "2"}, config_file=conf)["keep"] == 1


def test_env_beats_toml(write_toml: TomlWriter) -> None:
    """The environment wins over the config file."""
    conf = write_toml("keep = 3\n")
    assert resolve({}, {"COORDINATOR_KEEP": "2"}, config_file=conf)["keep"] == 2


def test_toml_beats_default(write_toml: TomlWriter) -> None:
    """The config file wins over the default."""
    assert resolve(config_file=write_toml("keep = 3\n"))["keep"] == 3


def test_cli_none_means_unset() -> None:
    """A CLI value of None (argparse's 'not given') falls through to the environment."""
    assert resolve({"keep": None}, {"COORDINATOR_KEEP": "2"})["keep"] == 2


def test_cli_false_is_a_value() -> None:
    """A CLI value that is falsy but not None (False, 0) is used, not skipped."""
    assert resolve({"poll": False}, {"COORDINATOR_POLL": "true"})["poll"] is False


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit env mapping, the process environment is read."""
    monkeypatch.setenv("COORDINATOR_REPO", "https://example.invalid/app.git")
    assert resolve_options({}, names=["repo"]) == {"repo": "https://example.invalid/app.git"}


@pytest.mark.parametrize(
    ("var", "dest", "value", "expected"),
    [
        ("COORDINATOR_STATUS_FILE", "status_file", "/s.json", Path("/s.json")),
        ("COORDINATOR_WATCH_STEP_MS", "watch_step_ms", "20", 20),
        ("COORDINATOR_TAG_PATTERN", "tag_pattern", "v*", "v*"),
        ("COORDINATOR_BUILD_TIMEOUT", "build_timeout", "1.5", 1.5),
        ("COORDINATOR_LOG_LEVEL", "log_level", "debug", "debug"),
    ],
)
def test_env_variable_names(var: str, dest: str, value: str, expected: Any) -> None:
    """Multi-word options are read from COORDINATOR_<NAME_WITH_UNDERSCORES>."""
    assert resolve(env={var: value})[dest] == expected


def test_names_restricts_resolution() -> None:
    """Only the requested options are resolved and returned."""
    assert resolve(names=["keep", "poll"]) == {"keep": 5, "poll": False}


def test_names_skips_invalid_values_of_other_options() -> None:
    """An invalid value for an option that is not requested is not an error."""
    assert resolve(env={"COORDINATOR_KEEP": "lots"}, names=["poll"]) == {"poll": False}


# --------------------------------------------------------------------------------------------------
# TOML files


@pytest.mark.parametrize(
    "text",
    [
        'status-file = "s.json"\n',
        'status_file = "s.json"\n',
        '[coordinator]\nstatus-file = "s.json"\n',
        '[coordinator]\nstatus_file = "s.json"\n',
    ],
)
def test_toml_key_spellings_and_table(write_toml: TomlWriter, text: str) -> None:
    """Keys may use '-' or '_', at the top level or in a [coordinator] table."""
    conf = write_toml(text)
    assert resolve(config_file=conf)["status_file"] == conf.parent / "s.json"


def test_toml_values_of_every_type(write_toml: TomlWriter) -> None:
    """Each TOML value is converted to its option's type."""
    conf = write_toml(
        '[coordinator]\nrepo = "git@example.invalid:app.git"\nkeep = 2\nbuild-timeout = 10\n'
        "git_timeout = 2.5\npoll = true\nwatch-step-ms = 50\n"
    )
    out = resolve(config_file=conf)
    assert out["repo"] == "git@example.invalid:app.git"
    assert (out["keep"], out["build_timeout"], out["git_timeout"]) == (2, 10.0, 2.5)
    assert isinstance(out["build_timeout"], float)
    assert (out["poll"], out["watch_step_ms"]) == (True, 50)


@pytest.mark.parametrize("text", ["kepp = 3\n", "[coordinator]\nrepos = 'x'\n", "config = 'x'\n"])
def test_toml_unknown_key_is_an_error(write_toml: TomlWriter, text: str) -> None:
    """A misspelled or unknown key is reported, not silently ignored."""
    with pytest.raises(ConfigError, match="unknown key"):
        resolve(config_file=write_toml(text))


def test_toml_unknown_key_is_an_error_even_when_not_requested(write_toml: TomlWriter) -> None:
    """The whole file is checked, even when only some options are resolved."""
    with pytest.raises(ConfigError, match="unknown key 'kepp'"):
        resolve(config_file=write_toml("kepp = 3\n"), names=["poll"])


def test_toml_coordinator_must_be_a_table(write_toml: TomlWriter) -> None:
    """A top-level 'coordinator' key that is not a table is an error."""
    with pytest.raises(ConfigError, match="must be a table"):
        resolve(config_file=write_toml('coordinator = "x"\n'))


def test_toml_missing_file_is_an_error(tmp_path: Path) -> None:
    """A --config file that does not exist is a ConfigError."""
    with pytest.raises(ConfigError, match="not found"):
        resolve(config_file=tmp_path / "nope.toml")


@pytest.mark.parametrize("text", ["keep = \n", "[coordinator\n", "keep = 1\nkeep = 2\n", "\x00"])
def test_toml_syntax_error_is_an_error(write_toml: TomlWriter, text: str) -> None:
    """A file that is not valid TOML is a ConfigError."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve(config_file=write_toml(text))


def test_toml_directory_is_an_error(tmp_path: Path) -> None:
    """A --config that is a directory is a ConfigError, not an OSError."""
    with pytest.raises(ConfigError):
        resolve(config_file=tmp_path)


# --------------------------------------------------------------------------------------------------
# paths


def test_relative_cli_path_is_resolved_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path on the command line is taken relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    assert resolve({"marker": "sub/m"})["marker"] == Path.cwd() / "sub" / "m"


def test_relative_env_path_is_resolved_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path in the environment is taken relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    assert resolve(env={"COORDINATOR_ROOT": "vol"})["root"] == Path.cwd() / "vol"


def test_relative_toml_path_is_resolved_against_config_dir(
    write_toml: TomlWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path in the config file is taken relative to the file's directory, not the cwd."""
    conf = write_toml('root = "vol"\n')
    monkeypatch.chdir(tmp_path)
    assert resolve(config_file=conf)["root"] == tmp_path / "conf" / "vol"


def test_relative_toml_path_is_absolute_with_relative_config_file(
    write_toml: TomlWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even when --config itself is given relative, resolved paths are absolute."""
    write_toml('root = "vol"\n')
    monkeypatch.chdir(tmp_path)
    root = resolve(config_file=Path("conf/coordinator.toml"))["root"]
    assert root.is_absolute()
    assert root == Path.cwd() / "conf" / "vol"


def test_absolute_paths_are_kept(write_toml: TomlWriter) -> None:
    """Absolute paths are used as given, from every source."""
    conf = write_toml('marker = "/abs/m"\n')
    out = resolve({"root": "/abs/root"}, {"COORDINATOR_STATUS_FILE": "/abs/s"}, config_file=conf)
    assert (out["root"], out["status_file"], out["marker"]) == (Path("/abs/root"), Path("/abs/s"), Path("/abs/m"))


def test_paths_are_normalized() -> None:
    """'..' and '.' components are collapsed."""
    assert resolve({"root": "/a/./b/../c//d"})["root"] == Path("/a/c/d")


def test_path_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leading '~' means the home directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve({"root": "~/vol"})["root"] == tmp_path / "vol"


def test_cli_path_object_is_accepted() -> None:
    """A Path (not only a str) is accepted for a path option."""
    assert resolve({"root": Path("/x/y")})["root"] == Path("/x/y")


# --------------------------------------------------------------------------------------------------
# conversion errors


@pytest.mark.parametrize(
    ("env", "option"),
    [
        ({"COORDINATOR_KEEP": "five"}, "keep"),
        ({"COORDINATOR_KEEP": "2.5"}, "keep"),
        ({"COORDINATOR_WATCH_STEP_MS": "1e3"}, "watch-step-ms"),
        ({"COORDINATOR_BUILD_TIMEOUT": "soon"}, "build-timeout"),
        ({"COORDINATOR_POLL": "maybe"}, "poll"),
        ({"COORDINATOR_POLL": "2"}, "poll"),
    ],
)
def test_env_type_errors(env: dict[str, str], option: str) -> None:
    """A value of the wrong type in the environment is a ConfigError naming the option."""
    with pytest.raises(ConfigError) as info:
        resolve(env=env)
    assert info.value.fields["option"] == option
    assert next(iter(env)) in info.value.message


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ('keep = "lots"\n', "keep"),
        ("keep = true\n", "keep"),
        ("keep = [1]\n", "keep"),
        ("keep = 2.5\n", "keep"),
        ("keep = 3.0\n", "keep"),
        ("keep = inf\n", "keep"),
        ("keep = nan\n", "keep"),
        ("watch-step-ms = 1e400\n", "watch-step-ms"),
        ("build-timeout = false\n", "build-timeout"),
        ('build-timeout = "x"\n', "build-timeout"),
        ("git-timeout = {}\n", "git-timeout"),
        ("repo = 5\n", "repo"),
        ("repo = ['a', 'b']\n", "repo"),
        ("tag-pattern = true\n", "tag-pattern"),
        ("marker = 5\n", "marker"),
        ('marker = ""\n', "marker"),
        ("root = ['a']\n", "root"),
        ('poll = "perhaps"\n', "poll"),
        ("poll = 2\n", "poll"),
    ],
)
def test_toml_type_errors(write_toml: TomlWriter, text: str, option: str) -> None:
    """A value of the wrong type in the config file is a ConfigError naming the option."""
    conf = write_toml(text)
    with pytest.raises(ConfigError) as info:
        resolve(config_file=conf)
    assert info.value.fields["option"] == option
    assert str(conf) in info.value.message


@pytest.mark.parametrize(
    ("cli", "option"),
    [({"keep": "x"}, "keep"), ({"keep": True}, "keep"), ({"build_timeout": True}, "build-timeout")],
)
def test_cli_type_errors(cli: dict[str, Any], option: str) -> None:
    """A value of the wrong type from the command line is a ConfigError naming the flag."""
    with pytest.raises(ConfigError, match=f"--{option}") as info:
        resolve(cli)
    assert info.value.fields["option"] == option


def test_config_error_has_a_fix_and_exit_code() -> None:
    """Config errors carry a fix and exit with the usage status 2."""
    with pytest.raises(ConfigError) as info:
        resolve(env={"COORDINATOR_KEEP": "x"})
    assert info.value.fix
    assert info.value.exit_code == 2


def test_int_option_accepts_integral_strings() -> None:
    """Integer options accept decimal strings, with surrounding whitespace."""
    assert resolve(env={"COORDINATOR_KEEP": " 7 "})["keep"] == 7


# --------------------------------------------------------------------------------------------------
# bool parsing


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
        ("", False),
    ],
)
def test_bool_from_env(raw: str, expected: bool) -> None:
    """Booleans accept the usual spellings, case-insensitively; empty means false."""
    assert resolve(env={"COORDINATOR_POLL": raw})["poll"] is expected


@pytest.mark.parametrize(("text", "expected"), [("poll = true\n", True), ("poll = false\n", False)])
def test_bool_from_toml(write_toml: TomlWriter, text: str, expected: bool) -> None:
    """TOML booleans are used as they are."""
    assert resolve(config_file=write_toml(text))["poll"] is expected


@pytest.mark.parametrize("value", [True, False])
def test_bool_from_cli(value: bool) -> None:
    """A bool from the command line is used as it is."""
    assert resolve({"poll": value}, {"COORDINATOR_POLL": str(not value)})["poll"] is value


# --------------------------------------------------------------------------------------------------
# Config validation


def make_layout() -> Layout:
    return Layout.for_root(Path("/vol"))


def make_config(**changes: Any) -> Config:
    """A Config for /vol with the given fields changed (validated on construction)."""
    return Config(layout=make_layout(), repo="r", **changes)


def test_config_defaults() -> None:
    """A Config with just a layout and a repo gets the documented defaults."""
    cfg = Config(layout=make_layout(), repo="r")
    assert (cfg.keep, cfg.build_timeout, cfg.git_timeout, cfg.resync_interval) == (5, 600.0, 300.0, 30.0)
    assert (cfg.poll, cfg.watch_step_ms, cfg.tag_pattern, cfg.build_command) == (False, 3, None, None)


@pytest.mark.parametrize("keep", [0, -1])
def test_config_keep_below_one_is_rejected(keep: int) -> None:
    """keep must be at least 1."""
    with pytest.raises(ConfigError, match="--keep"):
        Config(layout=make_layout(), repo="r", keep=keep)


def test_config_keep_one_is_accepted() -> None:
    """keep=1 is the smallest valid value."""
    assert Config(layout=make_layout(), repo="r", keep=1).keep == 1


@pytest.mark.parametrize("name", ["build_timeout", "git_timeout", "resync_interval"])
@pytest.mark.parametrize("value", [0.0, -1.0, -math.inf, math.nan])
def test_config_non_positive_timeouts_are_rejected(name: str, value: float) -> None:
    """Timeouts and the resync interval must be positive numbers (NaN is not)."""
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be a number of seconds > 0, got "):
        make_config(**{name: value})


def test_nan_timeout_from_environment_is_rejected() -> None:
    """'nan' converts to a float but is refused (anyio rejects NaN deadlines), in plain words."""
    with pytest.raises(ConfigError) as info:
        resolve({"root": "/vol", "repo": "r"}, {"COORDINATOR_RESYNC_INTERVAL": "nan"})
    assert info.value.message == 'COORDINATOR_RESYNC_INTERVAL must be a number of seconds > 0, got "nan"'


@pytest.mark.parametrize("name", ["build_timeout", "git_timeout", "resync_interval"])
def test_config_small_positive_timeouts_are_accepted(name: str) -> None:
    """Any positive number of seconds is a valid timeout."""
    cfg = make_config(**{name: 0.001})
    assert getattr(cfg, name) == 0.001


@pytest.mark.parametrize("step", [0, -5, 1001, 10_000])
def test_config_watch_step_out_of_bounds_is_rejected(step: int) -> None:
    """watch-step-ms must lie between 1 and 1000."""
    with pytest.raises(ConfigError, match="--watch-step-ms"):
        Config(layout=make_layout(), repo="r", watch_step_ms=step)


@pytest.mark.parametrize("step", [1, 1000])
def test_config_watch_step_bounds_are_inclusive(step: int) -> None:
    """1 and 1000 ms are both valid watcher steps."""
    assert Config(layout=make_layout(), repo="r", watch_step_ms=step).watch_step_ms == step


def test_config_missing_repo_is_rejected() -> None:
    """A Config needs a repository."""
    with pytest.raises(ConfigError, match="no repository"):
        Config(layout=make_layout(), repo="")


def test_from_options_missing_root_is_rejected() -> None:
    """Without a root there is no volume to deploy to."""
    with pytest.raises(ConfigError, match="no root"):
        Config.from_options({"repo": "r"})


def test_from_options_missing_repo_is_rejected() -> None:
    """A resolved repo of None is reported as a missing repository."""
    with pytest.raises(ConfigError, match="no repository"):
        Config.from_options({"root": Path("/vol"), "repo": None})


def test_from_options_validates_values() -> None:
    """Values from options go through the same validation as direct construction."""
    with pytest.raises(ConfigError, match="--keep"):
        Config.from_options({"root": Path("/vol"), "repo": "r", "keep": 0})


def test_from_resolved_options(write_toml: TomlWriter) -> None:
    """A Config built from resolved options carries every value and the derived layout."""
    conf = write_toml(
        '[coordinator]\nroot = "vol"\nrepo = "https://example.invalid/app.git"\nkeep = 2\n'
        'tag-pattern = "v*"\nbuild-command = "make"\nbuild-timeout = 9\ngit-timeout = 8\n'
        "resync-interval = 7\npoll = true\nwatch-step-ms = 6\n"
    )
    cfg = Config.from_options(resolve(config_file=conf))
    vol = conf.parent / "vol"
    assert cfg.layout == Layout.for_root(vol)
    assert (cfg.repo, cfg.keep, cfg.tag_pattern, cfg.build_command) == (
        "https://example.invalid/app.git",
        2,
        "v*",
        "make",
    )
    assert (cfg.build_timeout, cfg.git_timeout, cfg.resync_interval) == (9.0, 8.0, 7.0)
    assert (cfg.poll, cfg.watch_step_ms) == (True, 6)


def test_from_options_custom_file_locations() -> None:
    """marker, status-file and reload-file override the layout's defaults."""
    opts = {
        "root": Path("/vol"),
        "repo": "r",
        "marker": Path("/etc/deploy/marker"),
        "status_file": Path("/run/status.json"),
        "reload_file": Path("/app/reload"),
    }
    layout = Config.from_options(opts).layout
    assert (layout.marker, layout.status_file, layout.reload_file) == (
        Path("/etc/deploy/marker"),
        Path("/run/status.json"),
        Path("/app/reload"),
    )


def test_validation_errors_exit_with_usage_status() -> None:
    """Validation failures are ConfigErrors with a fix."""
    with pytest.raises(ConfigError) as info:
        Config(layout=make_layout(), repo="r", keep=0)
    assert info.value.fix


# --------------------------------------------------------------------------------------------------
# Layout


def test_layout_default_paths() -> None:
    """Every file and directory of the volume contract sits where the README says."""
    lay = Layout.for_root(Path("/vol"))
    assert lay.root == Path("/vol")
    assert lay.marker == Path("/vol/deploy.request")
    assert lay.status_file == Path("/vol/deploy.status.json")
    assert lay.reload_file == Path("/vol/reload.touch")
    assert lay.releases == Path("/vol/releases")
    assert lay.current == Path("/vol/current")


def test_layout_state_paths() -> None:
    """coordinator's own state lives under ROOT/.coordinator."""
    lay = Layout.for_root(Path("/vol"))
    assert lay.state_dir == Path("/vol/.coordinator")
    assert lay.git_dir == Path("/vol/.coordinator/git")
    assert lay.meta_dir == Path("/vol/.coordinator/releases")
    assert lay.tmp_dir == Path("/vol/.coordinator/tmp")
    assert lay.state_file == Path("/vol/.coordinator/state.json")
    assert lay.journal == Path("/vol/.coordinator/journal.jsonl")
    assert lay.lock_file == Path("/vol/.coordinator/lock")


def test_layout_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative root is resolved against the working directory (and normalized)."""
    monkeypatch.chdir(tmp_path)
    lay = Layout.for_root(Path("a/../vol"))
    assert lay.root == Path.cwd() / "vol"
    assert lay.marker == Path.cwd() / "vol" / "deploy.request"


def test_layout_explicit_files_override_defaults() -> None:
    """Explicit marker, status and reload paths replace the defaults; the rest still follow root."""
    lay = Layout.for_root(Path("/vol"), Path("/m"), Path("/s"), Path("/r"))
    assert (lay.marker, lay.status_file, lay.reload_file) == (Path("/m"), Path("/s"), Path("/r"))
    assert lay.state_dir == Path("/vol/.coordinator")


def test_every_option_has_a_known_type_and_help() -> None:
    """Each option declares one of the supported types and a help text."""
    for opt in OPTIONS.values():
        assert isinstance(opt, Option)
        assert opt.type in {"str", "path", "int", "float", "bool", "list"}, opt.name
        assert opt.help, opt.name


def test_empty_environment_variable_counts_as_unset() -> None:
    """`COORDINATOR_TAG_PATTERN=` (empty) leaves the option at its default instead of matching nothing."""
    opts = resolve_options({}, env={"COORDINATOR_TAG_PATTERN": ""}, names=["tag-pattern"])
    assert opts["tag_pattern"] is None


def test_toml_keys_both_top_level_and_in_table_are_refused(tmp_path: Path) -> None:
    """A config file mixing top-level keys and a [coordinator] table is an error, not silently half-read."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('keep = 3\n[coordinator]\nroot = "/srv"\n')
    with pytest.raises(ConfigError, match="both at the top level"):
        resolve_options({}, env={}, config_file=cfg)


# ---------------------------------------------------------------------------------------------- plain words


@pytest.mark.parametrize(
    ("text", "message", "fix"),
    [
        ('keep = "three"\n', 'keep must be a whole number >= 1, got "three"', "use e.g. `keep = 5`"),
        ("keep = 0\n", "keep must be a whole number >= 1, got 0", "use e.g. `keep = 5`"),
        ("watch-step-ms = 5000\n", "watch-step-ms must be a whole number from 1 to 1000, got 5000", None),
        ('git-timeout = "soon"\n', 'git-timeout must be a number of seconds > 0, got "soon"', None),
        ("health-timeout = -1\n", "health-timeout must be a number of seconds > 0, got -1", None),
        ('poll = "perhaps"\n', 'poll must be true or false, got "perhaps"', "use e.g. `poll = false`"),
        ("repo = 5\n", "repo must be a string, got 5", None),
    ],
)
def test_toml_values_are_refused_in_plain_words(
    write_toml: TomlWriter, text: str, message: str, fix: str | None
) -> None:
    """A bad value in the TOML file says what the option must be and what it got, where, and a fix."""
    conf = write_toml(text)
    with pytest.raises(ConfigError) as info:
        resolve(config_file=conf)
    assert info.value.message == f"{message} (in {conf})"
    assert info.value.fix and (fix is None or info.value.fix == fix)


def test_env_and_cli_values_are_refused_in_plain_words() -> None:
    """The environment and the command line name the value as the user wrote it."""
    with pytest.raises(ConfigError) as env:
        resolve(env={"COORDINATOR_KEEP": "three"})
    assert (env.value.message, env.value.fix) == (
        'COORDINATOR_KEEP must be a whole number >= 1, got "three"',
        "use e.g. `COORDINATOR_KEEP=5`",
    )
    with pytest.raises(ConfigError) as cli:
        resolve({"poll": "maybe"})
    assert cli.value.message == '--poll must be true or false, got "maybe"'


def test_unknown_coordinator_variable_is_a_warning_naming_the_closest_option() -> None:
    """COORDINATOR_ROT (a typo) is warned about with the closest option; known and internal ones are not."""
    from coordinator.options import unknown_env_warnings

    env = {
        "COORDINATOR_ROT": "/srv/app",
        "COORDINATOR_ROOT": "/srv/app",
        "COORDINATOR_FAILPOINTS": "",
        "COORDINATOR_PIN_APP": "wsgi",
        "COORDINATOR_TEST_BLOCKING_LOG": "x",
        "COORDINATOR_XYZZY": "1",
        "PATH": "/bin",
    }
    assert unknown_env_warnings(env) == [
        "unknown environment variable COORDINATOR_ROT is ignored; did you mean COORDINATOR_ROOT?",
        "unknown environment variable COORDINATOR_XYZZY is ignored; see `coordinator run --help` for the variables",
    ]


# ---------------------------------------------------------------------------------------------- shared paths


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/srv/media", "absolute"),
        ("../media", "'..'"),
        ("media/../../etc", "'..'"),
        ("-rf", "starts with '-'"),
        ("media/-x", "starts with '-'"),
        (".coordinator/x", "reserved"),
        (".git", "reserved"),
        ("current", "reserved"),
        ("releases/x", "reserved"),
        ("shared", "reserved"),
        ("./", "names the release itself"),
        ("", "empty"),
        ("a\nb", "control characters"),
    ],
)
def test_bad_shared_paths_are_refused_at_start(path: str, why: str) -> None:
    """A shared path that is absolute, leaves the release, starts with '-' or is reserved is a ConfigError (exit 2)."""
    with pytest.raises(ConfigError, match=re.escape(why)) as info:
        make_config(shared_dirs=(path,))
    assert info.value.exit_code == 2 and info.value.fix


def test_shared_paths_are_normalized() -> None:
    """`media/`, `./media` and `a//b` become `media` and `a/b`; a reserved name deeper down is fine."""
    cfg = make_config(shared_dirs=("media/", "./static/uploads", "x/shared"), shared_files=("config//.env",))
    assert cfg.shared_dirs == ("media", "static/uploads", "x/shared") and cfg.shared_files == ("config/.env",)
    assert cfg.shared_paths == [("media", True), ("static/uploads", True), ("x/shared", True), ("config/.env", False)]


@pytest.mark.parametrize(
    ("dirs", "files", "message"),
    [
        (("media", "media/"), (), "given twice"),
        (("media",), ("media",), "given twice"),
        (("media",), ("media/.env",), "overlap"),
        (("config",), ("config/sub/.env",), "overlap"),
    ],
)
def test_duplicate_or_overlapping_shared_paths_are_refused(
    dirs: tuple[str, ...], files: tuple[str, ...], message: str
) -> None:
    """The same shared path twice, or one inside another, is a ConfigError."""
    with pytest.raises(ConfigError, match=message):
        make_config(shared_dirs=dirs, shared_files=files)


def test_shared_paths_side_by_side_are_accepted() -> None:
    """`media` and `media2` (a common prefix, not a parent) do not overlap."""
    assert make_config(shared_dirs=("media", "media2")).shared_dirs == ("media", "media2")


def test_shared_paths_from_a_comma_separated_environment_variable() -> None:
    """COORDINATOR_SHARED_DIRS is a comma-separated list; blanks and empty items are dropped."""
    out = resolve(env={"COORDINATOR_SHARED_DIRS": " media, static/uploads ,,", "COORDINATOR_SHARED_FILES": ".env"})
    assert (out["shared_dirs"], out["shared_files"]) == (("media", "static/uploads"), (".env",))


def test_shared_paths_from_repeated_flags() -> None:
    """The repeated --shared-dir flag gives a list, which beats the environment."""
    out = resolve({"shared_dirs": ["media", "uploads"]}, {"COORDINATOR_SHARED_DIRS": "other"})
    assert out["shared_dirs"] == ("media", "uploads")


def test_shared_paths_from_a_toml_list(write_toml: TomlWriter) -> None:
    """TOML `shared-dirs` / `shared-files` are lists of strings, checked when the Config is built."""
    conf = write_toml(
        'root = "/vol"\nrepo = "r"\nshared-dirs = ["media"]\nshared-files = [".env", "local_settings.py"]\n'
    )
    cfg = Config.from_options(resolve(config_file=conf))
    assert cfg.shared_paths == [("media", True), (".env", False), ("local_settings.py", False)]


@pytest.mark.parametrize("value", ['"media"', "[1]", "true", '["media", 2]'])
def test_shared_paths_in_toml_must_be_a_list_of_strings(write_toml: TomlWriter, value: str) -> None:
    """A TOML shared-dirs that is not a list of strings is a clear ConfigError naming the option."""
    conf = write_toml(f"shared-dirs = {value}\n")
    with pytest.raises(ConfigError) as info:
        resolve(config_file=conf)
    assert info.value.fields["option"] == "shared-dirs"
    assert info.value.message.startswith("shared-dirs must be a list of strings")
    assert info.value.fix == 'use e.g. `shared-dirs = ["media"]`'


def test_bad_shared_path_from_toml_is_refused_at_start(write_toml: TomlWriter) -> None:
    """A TOML shared path that leaves the release is refused when the Config is built (exit 2)."""
    conf = write_toml('root = "/vol"\nrepo = "r"\nshared-files = ["../.env"]\n')
    with pytest.raises(ConfigError, match=re.escape("'..' would leave the release")):
        Config.from_options(resolve(config_file=conf))


def test_verify_signatures_from_the_environment_and_toml_paths_relative_to_the_file(write_toml: TomlWriter) -> None:
    """COORDINATOR_VERIFY_SIGNATURES=true and a TOML `allowed-signers` relative to the file's directory."""
    path = write_toml('allowed-signers = "keys/allowed_signers"\n')
    opts = resolve_options({}, {"COORDINATOR_VERIFY_SIGNATURES": "true"}, path)
    assert opts["verify_signatures"] is True
    assert opts["allowed_signers"] == path.parent / "keys" / "allowed_signers"


def test_an_empty_allowed_signers_file_is_refused_at_start(tmp_path: Path) -> None:
    """--allowed-signers holding no key (only comments) is a ConfigError naming the option."""
    empty = tmp_path / "allowed_signers"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="no key in it") as e:
        Config(layout=make_layout(), repo="r", verify_signatures=True, allowed_signers=empty)
    assert e.value.fields["option"] == "allowed-signers"


def test_a_secret_keyring_is_refused_at_start(tmp_path: Path) -> None:
    """--gpg-keyring holding a secret key block is refused, with the export command as the fix."""
    secret = tmp_path / "keys.asc"
    secret.write_text("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nxyz\n")
    with pytest.raises(ConfigError, match="secret keys") as e:
        Config(layout=make_layout(), repo="r", verify_signatures=True, gpg_keyring=secret)
    assert "gpg --export" in (e.value.fix or "")


def test_canary_options_from_the_environment_and_toml(write_toml: TomlWriter) -> None:
    """COORDINATOR_CANARY_COMMAND and TOML canary-url / canary-timeout make the Config's canary."""
    path = write_toml('root = "/vol"\nrepo = "r"\ncanary-url = "/ready"\ncanary-timeout = 12.5\n')
    cfg = Config.from_options(resolve_options({}, {"COORDINATOR_CANARY_COMMAND": "gunicorn -b :$PORT app"}, path))
    assert (cfg.canary_command, cfg.canary_url, cfg.canary_timeout) == ("gunicorn -b :$PORT app", "/ready", 12.5)


def test_the_canary_timeout_defaults_to_30_seconds() -> None:
    """Without --canary-timeout: 30 s."""
    assert make_config(canary_command="app", health_url="http://h/health").canary_timeout == 30.0


@pytest.mark.parametrize("raw", ["0", "-3", "nan", "soon"])
def test_a_bad_canary_timeout_is_refused(raw: str) -> None:
    """--canary-timeout must be a positive number of seconds (exit 2)."""
    with pytest.raises(ConfigError, match="COORDINATOR_CANARY_TIMEOUT must be a number of seconds > 0") as e:
        Config.from_options(resolve({"root": "/vol", "repo": "r"}, {"COORDINATOR_CANARY_TIMEOUT": raw}))
    assert e.value.exit_code == 2


def test_a_canary_without_a_url_to_probe_is_refused() -> None:
    """--canary-command with neither --canary-url nor --health-url: exit 2, the fix names both."""
    with pytest.raises(ConfigError, match="needs a URL to probe") as e:
        make_config(canary_command="gunicorn app")
    assert "--canary-url" in (e.value.fix or "") and "--health-url" in (e.value.fix or "")


def test_a_canary_url_without_a_canary_command_is_refused() -> None:
    """--canary-url alone does nothing: refused, naming --canary-command."""
    with pytest.raises(ConfigError, match="--canary-url is used only with --canary-command"):
        make_config(canary_url="/health")
