"""The container set-up in docker/, checked without a Docker engine (none runs here): the structure of
the Dockerfiles, compose.yaml, uwsgi.ini and supervisord.conf, that every ``COORDINATOR_*`` variable
they use is a real setting, that every file the images copy is in the build context, and, for real,
that the sidecar Dockerfile's install steps produce a working ``coordinator`` in a fresh virtualenv.

What runs for real elsewhere: tests/e2e/test_django_example.py (the example app, make-repo.sh and
docker/uwsgi.ini under the real daemon), tests/e2e/test_supervisord.py (docker/supervisord.conf)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from coordinator import pin
from coordinator.options import OPTIONS

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
SIDECAR_DOCKERFILE = DOCKER / "Dockerfile"
APP_DOCKERFILE = DOCKER / "app.Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
UWSGI_INI = DOCKER / "uwsgi.ini"
SUPERVISORD_CONF = DOCKER / "supervisord.conf"

#: Every environment variable coordinator reads: the settings, and coordinator.pin's.
KNOWN_VARIABLES = {o.env for o in OPTIONS.values()} | {pin.ENV_APP, pin.ENV_CURRENT, pin.ENV_ON_ERROR}

#: What the images run as (docker/Dockerfile and docker/app.Dockerfile must agree).
UID = "10001"

SECRET_NAME = re.compile(r"(?i)pass(word)?|secret|token|credential|api_?key|private")


# --------------------------------------------------------------------------------------------------
# A small Dockerfile reader: enough of the format for these files (no heredocs, no escape directive).


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    value: str  # the rest, continuation lines joined
    stage: str  # the build stage's name (FROM ... AS name), or its index
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array form (``CMD ["run"]``), or None for the shell form."""
        if not self.value.startswith("["):
            return None
        parsed = json.loads(self.value)
        assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), self
        return parsed

    def flags(self) -> tuple[dict[str, str], list[str]]:
        """``--name=value`` flags (COPY, ADD) and the remaining words."""
        words = self.exec_form() or shlex.split(self.value)
        flags = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


def read_dockerfile(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    stage = ""
    stages = 0
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives) are dropped, even inside a continuation
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        keyword, _, value = text.partition(" ")
        keyword = keyword.upper()
        assert "<<" not in value or keyword != "RUN", f"{path}:{start}: heredocs are not supported by this reader"
        if keyword == "FROM":
            words = value.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(stages)
            stages += 1
        out.append(Instruction(keyword, value.strip(), stage, start))
    assert not pending, f"{path}: ends inside a continuation"
    return out


def stage_parent(instructions: list[Instruction], stage: str) -> str | None:
    """The stage ``stage`` is built FROM, when that is another stage of the file."""
    names = {i.stage for i in instructions}
    base = next(i.value.split()[0] for i in instructions if i.keyword == "FROM" and i.stage == stage)
    return base if base in names else None


def stage_chain(instructions: list[Instruction], stage: str) -> list[Instruction]:
    """The instructions that make ``stage``: those of the stages it is built from first."""
    parent = stage_parent(instructions, stage)
    own = [i for i in instructions if i.stage == stage]
    return (stage_chain(instructions, parent) if parent else []) + own


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV (``KEY=value`` form) set by these instructions, later ones winning."""
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV":
            for word in shlex.split(i.value):
                key, sep, value = word.partition("=")
                assert sep, f"line {i.line}: use the ENV KEY=value form"
                env[key] = value
    return env


def last(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword}"
    return found[-1]


def apt_packages(instructions: list[Instruction]) -> set[str]:
    packages: set[str] = set()
    for i in instructions:
        if i.keyword == "RUN":
            for command in re.split(r"&&|;|\|\|", i.value):
                words = shlex.split(command)
                if words[:2] == ["apt-get", "install"]:
                    packages.update(w for w in words[2:] if not w.startswith("-"))
    return packages


def pip_install_runs(instructions: list[Instruction]) -> list[Instruction]:
    return [i for i in instructions if i.keyword == "RUN" and "pip install" in i.value]


# --------------------------------------------------------------------------------------------------
# .dockerignore, as Docker reads it: patterns relative to the context root, `**` for any number of
# directories, `!` re-includes, the last matching line wins, a matching directory excludes its contents.


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def read_dockerignore(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((negate, _ignore_regex(pattern)))
    return rules


def ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = PurePosixPath(rel).parts
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negate, regex in rules:  # a rule matches the path or one of its directories; the last one wins
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


RULES = read_dockerignore((REPO / ".dockerignore").read_text())


def copy_from_context(source: str, dest: Path) -> None:
    """``COPY source dest`` from the repository as build context, honouring .dockerignore."""
    src = REPO / source
    assert src.exists(), f"COPY {source}: not in the build context"
    assert not ignored(source, RULES), f"COPY {source}: excluded by .dockerignore"
    if src.is_file():
        target = dest / src.name if dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        return
    copied = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and not ignored(rel, RULES):
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    assert copied, f"COPY {source}: every file is excluded by .dockerignore"


# --------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def sidecar() -> list[Instruction]:
    return read_dockerfile(SIDECAR_DOCKERFILE)


@pytest.fixture(scope="module")
def app_image() -> list[Instruction]:
    return read_dockerfile(APP_DOCKERFILE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    svc = compose["services"][name]
    assert isinstance(svc, dict)
    return svc


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    assert all(isinstance(v, str) for v in env.values()), f"quote every value (YAML would turn 20 into a number): {env}"
    return dict(env)


def volume_mounts(svc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each mount, short or long syntax."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((v["source"], v["target"], bool(v.get("read_only"))))
    return out


def uwsgi_options(path: Path) -> list[tuple[str, str]]:
    """(key, value) lines of the [uwsgi] section, in order (keys repeat, so no configparser)."""
    out = []
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "uwsgi":
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


# --------------------------------------------------------------------------------------------------
# docker/Dockerfile: the sidecar


def test_sidecar_dockerfile_structure(sidecar: list[Instruction]) -> None:
    froms = [i for i in sidecar if i.keyword == "FROM"]
    assert [f.value for f in froms] == ["python:3.12-slim"]
    user = last(sidecar, "USER").value
    assert user.split(":")[0] == UID and user.split(":")[1:] in ([], [UID]), user
    assert {"git", "tini"} <= apt_packages(sidecar)
    entrypoint = last(sidecar, "ENTRYPOINT").exec_form()
    assert entrypoint is not None and entrypoint[0] in ("tini", "/usr/bin/tini", "dumb-init", "/usr/bin/dumb-init")
    assert entrypoint[-1] == "coordinator" and (entrypoint[0].endswith("dumb-init") or "--" in entrypoint)
    assert last(sidecar, "CMD").exec_form() == ["run"]
    runs = pip_install_runs(sidecar)
    assert len(runs) == 1 and "--no-cache-dir" in runs[0].value and shlex.split(runs[0].value)[-1] == "."
    env = env_of(sidecar)
    assert env["COORDINATOR_ROOT"] == "/srv/app"
    assert "COORDINATOR_REPO" not in env  # given at run time: an image serves any repository
    # the volume's mount point belongs to the user, so that an empty named volume takes that ownership
    assert any(i.keyword == "RUN" and "/srv/app" in i.value and f"chown {UID}:{UID}" in i.value for i in sidecar)


def test_dockerfiles_add_no_urls_and_bake_no_secrets(sidecar: list[Instruction], app_image: list[Instruction]) -> None:
    for instructions in (sidecar, app_image):
        for i in instructions:
            assert i.keyword != "ADD" or not re.search(r"(?i)\b(https?|ftp|git)://|git@", i.value), i
            if i.keyword in ("ENV", "ARG"):
                names = [w.partition("=")[0] for w in shlex.split(i.value)]
                assert not [n for n in names if SECRET_NAME.search(n)], i
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", i.value), f"credentials in a URL: {i}"


# --------------------------------------------------------------------------------------------------
# docker/app.Dockerfile: the app image (target app) and the single-container image (target single)


def test_app_dockerfile_structure(app_image: list[Instruction]) -> None:
    stages = {i.stage for i in app_image}
    assert {"app", "single"} <= stages
    app = stage_chain(app_image, "app")
    single = stage_chain(app_image, "single")
    assert stage_parent(app_image, "single") == "app"
    for chain in (app, single):
        assert last(chain, "USER").value.split(":")[0] == UID  # the same uid as the sidecar
        entrypoint = last(chain, "ENTRYPOINT").exec_form()
        assert entrypoint is not None and entrypoint[0] in ("tini", "/usr/bin/tini") and "--" in entrypoint
    # uWSGI runs docker/uwsgi.ini as the image copied it
    cmd = last(app, "CMD").exec_form()
    assert cmd is not None and cmd[:2] == ["uwsgi", "--ini"]
    copies = {i.flags()[1][-1]: i.flags()[1][0] for i in app_image if i.keyword == "COPY" and not i.flags()[0]}
    assert copies[cmd[2]] == "docker/uwsgi.ini"
    # coordinator installed in the app image, for coordinator.pin
    assert any(shlex.split(r.value)[-1] == "." or " . " in r.value for r in pip_install_runs(app))
    env = env_of(app)
    assert env["COORDINATOR_ROOT"] == "/srv/app" and env["COORDINATOR_PIN_APP"] == "exampleapp.wsgi:application"
    assert any(i.keyword == "RUN" and "/srv/app" in i.value and f"chown {UID}:{UID}" in i.value for i in app)
    # single: supervisord with docker/supervisord.conf next to uwsgi.ini (it runs %(here)s/uwsgi.ini)
    single_cmd = " ".join(last(single, "CMD").exec_form() or [])
    match = re.search(r"supervisord -c (\S+)", single_cmd)
    assert match, single_cmd
    conf = match.group(1)
    assert copies[conf] == "docker/supervisord.conf"
    assert PurePosixPath(conf).parent == PurePosixPath(cmd[2]).parent
    assert "git" in apt_packages(single)
    # every %(ENV_X)s of supervisord.conf is set by the image
    needed = set(re.findall(r"%\(ENV_([A-Za-z0-9_]+)\)s", SUPERVISORD_CONF.read_text()))
    assert needed and needed <= set(env_of(single)), needed - set(env_of(single))


def test_every_copied_file_is_in_the_build_context(sidecar: list[Instruction], app_image: list[Instruction]) -> None:
    """Build context = repository root, minus .dockerignore: each COPY source must be there."""
    for instructions in (sidecar, app_image):
        for i in instructions:
            flags, words = i.flags() if i.keyword in ("COPY", "ADD") else ({}, [])
            if i.keyword in ("COPY", "ADD") and "from" not in flags:
                for source in words[:-1]:
                    assert (REPO / source).exists(), i
                    assert not ignored(source, RULES), f"{i}: excluded by .dockerignore"
    for heavy in (".git", ".venv", "tests", "coordinator/__pycache__", "coordinator.egg-info"):
        assert ignored(heavy, RULES), heavy


def test_dockerignore_reader() -> None:
    rules = read_dockerignore("**/__pycache__\n*.egg-info\ndocs\n!docs/keep.md\n")
    assert ignored("coordinator/__pycache__/x.pyc", rules) and ignored("__pycache__", rules)
    assert ignored("coordinator.egg-info/PKG-INFO", rules) and not ignored("sub/x.egg-info", rules)
    assert ignored("docs/a.md", rules) and not ignored("docs/keep.md", rules)
    assert not ignored("coordinator/pin.py", rules)


# --------------------------------------------------------------------------------------------------
# docker/compose.yaml: the sidecar topology


def test_compose_services_share_one_named_volume(compose: dict[str, Any]) -> None:
    app, coordinator = service(compose, "app"), service(compose, "coordinator")
    declared = set(compose.get("volumes") or {})
    app_root, coord_root = environment(app)["COORDINATOR_ROOT"], environment(coordinator)["COORDINATOR_ROOT"]
    assert app_root == coord_root == "/srv/app"
    app_mounts = {t: s for s, t, _ in volume_mounts(app)}
    coord_mounts = {t: (s, ro) for s, t, ro in volume_mounts(coordinator)}
    shared = app_mounts[app_root]
    assert shared in declared  # a named volume, not a bind mount
    assert coord_mounts[coord_root] == (shared, False)  # the same volume, same path, writable


def test_compose_sidecar_environment(compose: dict[str, Any]) -> None:
    coordinator = service(compose, "coordinator")
    env = environment(coordinator)
    assert set(env) <= {o.env for o in OPTIONS.values()}, set(env) - {o.env for o in OPTIONS.values()}
    assert env["COORDINATOR_REPO"] and not re.search(r"://[^/@]+@", env["COORDINATOR_REPO"])
    assert not [k for k in env if SECRET_NAME.search(k)]
    # the repository the set-up service makes is the one the sidecar reads
    repo_mounts = {t: (s, ro) for s, t, ro in volume_mounts(coordinator)}
    source, read_only = repo_mounts[env["COORDINATOR_REPO"]]
    assert read_only
    setup = service(compose, "example-repo")
    assert "setup" in setup.get("profiles", [])  # not started by `docker compose up`
    assert setup["image"] == coordinator["image"]
    setup_mounts = {s: t for s, t, _ in volume_mounts(setup)}
    assert setup_mounts[source] == env["COORDINATOR_REPO"] and setup["entrypoint"][-1] == env["COORDINATOR_REPO"]
    script = PurePosixPath(setup["entrypoint"][-2])
    host = next(s for s, t, _ in volume_mounts(setup) if PurePosixPath(t) in script.parents)
    assert (COMPOSE.parent / host / script.relative_to(setup_mounts[host])).is_file()


def test_compose_health_url_targets_the_app_service(compose: dict[str, Any]) -> None:
    app, coordinator = service(compose, "app"), service(compose, "coordinator")
    url = urlsplit(environment(coordinator)["COORDINATOR_HEALTH_URL"])
    app_env = environment(app)
    assert url.scheme == "http" and url.hostname == "app" and url.path == "/health"
    assert url.port == int(app_env["APP_HTTP"].rsplit(":", 1)[1])  # where uWSGI listens
    assert "app" in app_env["DJANGO_ALLOWED_HOSTS"].split(",")  # Django answers Host: app
    assert float(environment(coordinator)["COORDINATOR_HEALTH_TIMEOUT"]) > 0


def test_compose_restart_policies_and_builds(compose: dict[str, Any], app_image: list[Instruction]) -> None:
    for name in ("app", "coordinator"):
        svc = service(compose, name)
        assert svc["restart"] in ("always", "unless-stopped"), name
        build = svc["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == REPO
        assert (REPO / build["dockerfile"]).is_file()
    assert service(compose, "app")["build"]["target"] in {i.stage for i in app_image}
    assert service(compose, "coordinator")["build"]["dockerfile"] == "docker/Dockerfile"
    assert service(compose, "example-repo")["restart"] == "no"


def test_compose_single_container_service(compose: dict[str, Any], app_image: list[Instruction]) -> None:
    """The single-container topology (profile single): supervisord's image, its own named volume at
    COORDINATOR_ROOT, the health check on uWSGI in the same container, the same example repository."""
    single, coordinator = service(compose, "single"), service(compose, "coordinator")
    assert "single" in single["profiles"] and single["build"]["target"] == "single"
    assert single["restart"] in ("always", "unless-stopped")
    env = environment(single)
    assert {k for k in env if k.startswith("COORDINATOR_")} <= KNOWN_VARIABLES
    mounts = {t: (s, ro) for s, t, ro in volume_mounts(single)}
    source, read_only = mounts[env["COORDINATOR_ROOT"]]
    assert source in (compose.get("volumes") or {}) and not read_only
    assert source not in {s for s, _, _ in volume_mounts(service(compose, "app"))}  # not the sidecar's volume
    assert mounts[env["COORDINATOR_REPO"]] == ({t: s for s, t, _ in volume_mounts(coordinator)}["/repo"], True)
    url = urlsplit(env["COORDINATOR_HEALTH_URL"])
    assert url.hostname in ("127.0.0.1", "localhost") and url.port == int(env["APP_HTTP"].rsplit(":", 1)[1])


#: the version a compose CLI reports: "Docker Compose version v2.27.0" (v2, the plugin or a standalone
#: docker-compose), "docker-compose version 1.29.2, build unknown" (v1), "2.26.1+ds1-0ubuntu1" (--short)
COMPOSE_VERSION = re.compile(r"(?i)\bversion:?\s+v?(\d+)\.(\d+)[\w.+~-]*")


def compose_v2(path: str | None = None) -> tuple[list[str] | None, str]:
    """The command line of Compose v2 (``docker compose``, else a ``docker-compose`` reporting v2) on
    ``path`` (default: PATH), or None and why not.

    Compose v1 (Debian's docker-compose 1.29) does not count: it rejects compose.yaml's top-level
    ``name:`` key, and the README requires v2.
    """
    seen: list[str] = []
    for argv in (["docker", "compose"], ["docker-compose"]):
        exe = shutil.which(argv[0], path=path)
        if exe is None:
            continue
        command = [exe, *argv[1:]]
        try:
            probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            seen.append(f"`{' '.join(argv)} version` failed ({e})")
            continue
        text = probe.stdout + probe.stderr
        match = COMPOSE_VERSION.search(text) if probe.returncode == 0 else None
        if match is None:
            first = text.strip().splitlines()[0] if text.strip() else f"exit {probe.returncode}"
            seen.append(f"`{' '.join(argv)} version` reports no version ({first[:100]})")
        elif int(match[1]) >= 2:
            return command, f"Compose {match[0].split()[-1].lstrip('vV')}"
        else:
            seen.append(f"`{' '.join(argv)}` is Compose v1 ({match[0].split()[-1].lstrip('vV')})")
    if not seen:
        return None, "no docker compose CLI on this machine"
    return None, f"no Compose v2 (compose.yaml needs it, as the README says): {'; '.join(seen)}"


def test_compose_file_validates_with_docker_compose() -> None:
    """`docker compose config` (no engine needed) with Compose v2, where it is installed."""
    command, why = compose_v2()
    if command is None:
        pytest.skip(why)
    out = subprocess.run(
        [*command, "-f", str(COMPOSE), "--profile", "setup", "--profile", "single", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"{why}: {out.stderr}"


def fake_cli(directory: Path, name: str, output: str, rc: int = 0) -> None:
    """An executable ``name`` in ``directory`` printing ``output`` and exiting with ``rc``, whatever its arguments."""
    script = directory / name
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {rc}\n")
    script.chmod(0o755)


V1 = "docker-compose version 1.29.2, build unknown\ndocker-py version: 5.0.3\nCPython version: 3.11.2"


def test_compose_v1_alone_is_skipped_with_the_reason(tmp_path: Path) -> None:
    """Only Debian's docker-compose 1.29 on PATH (and a docker without the compose plugin): no Compose v2."""
    fake_cli(tmp_path, "docker-compose", V1)
    fake_cli(tmp_path, "docker", "docker: unknown command: docker compose", rc=1)
    command, why = compose_v2(str(tmp_path))
    assert command is None
    assert "Compose v1 (1.29.2)" in why and "no version (docker: unknown command" in why, why


@pytest.mark.parametrize(
    ("docker", "compose", "expected"),
    [
        ("Docker Compose version v2.27.0", V1, ["docker", "compose"]),  # the plugin wins over a v1 docker-compose
        (None, "Docker Compose version v2.29.7", ["docker-compose"]),  # a standalone v2
        (None, "Docker Compose version 2.26.1+ds1-0ubuntu1", ["docker-compose"]),  # Ubuntu's v2 package
    ],
)
def test_compose_v2_is_found(tmp_path: Path, docker: str | None, compose: str, expected: list[str]) -> None:
    if docker is not None:
        fake_cli(tmp_path, "docker", docker)
    fake_cli(tmp_path, "docker-compose", compose)
    command, why = compose_v2(str(tmp_path))
    assert command == [str(tmp_path / expected[0]), *expected[1:]], why
    assert why.startswith("Compose 2."), why


def test_no_compose_cli_at_all(tmp_path: Path) -> None:
    assert compose_v2(str(tmp_path)) == (None, "no docker compose CLI on this machine")


# --------------------------------------------------------------------------------------------------
# docker/uwsgi.ini and docker/supervisord.conf


def test_uwsgi_ini_is_the_recommended_setup() -> None:
    opts = uwsgi_options(UWSGI_INI)
    single = {k: v for k, v in opts if k not in ("if-env", "if-not-env", "endif", "env", "http-socket", "touch-reload")}
    assert single["module"] == "coordinator.pin:application"  # release pinning
    assert single["master"] == "true" and single["die-on-term"] == "true" and single["strict"] == "true"
    assert single["need-app"] == "false"  # a broken release (or none yet) must not stop uWSGI
    assert not {"chdir", "pythonpath", "lazy-apps", "py-autoreload"} & {k for k, _ in opts}
    touch = [v for k, v in opts if k == "touch-reload"]
    assert touch and all(v.endswith("/reload.touch") for v in touch)
    envs = [v.partition("=")[0] for k, v in opts if k == "env"]
    assert {pin.ENV_CURRENT, pin.ENV_APP} <= set(envs)


def test_supervisord_conf_runs_both_programs_for_good() -> None:
    conf = configparser.RawConfigParser(strict=True)
    conf.read_string(SUPERVISORD_CONF.read_text())
    assert conf.get("supervisord", "nodaemon") == "true"  # in the foreground, under tini
    coordinator, uwsgi = conf["program:coordinator"], conf["program:uwsgi"]
    assert shlex.split(coordinator["command"])[:2] == ["coordinator", "run"]
    assert "--once" not in coordinator["command"]  # not the old one-shot
    assert shlex.split(uwsgi["command"]) == ["uwsgi", "--ini", "%(here)s/uwsgi.ini"]
    for program in (coordinator, uwsgi):
        assert program["autorestart"] == "true"
        assert program["stopasgroup"] == "true" and program["killasgroup"] == "true"
        assert program["stdout_logfile"].startswith("%(ENV_SUPERVISOR_LOG_DIR)s/")
    assert conf.get("unix_http_server", "chmod") == "0700" and not conf.has_section("inet_http_server")


def test_every_coordinator_variable_in_docker_files_is_real() -> None:
    """A misspelt COORDINATOR_* variable would be ignored silently: each one used is a setting."""
    used: dict[str, set[str]] = {}
    for path in sorted(DOCKER.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            for name in re.findall(r"\bCOORDINATOR_[A-Z0-9_]+", path.read_text(errors="replace")):
                used.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert "COORDINATOR_ROOT" in used and "COORDINATOR_HEALTH_URL" in used
    unknown = {name: files for name, files in used.items() if name not in KNOWN_VARIABLES}
    assert not unknown, unknown


# --------------------------------------------------------------------------------------------------
# The sidecar Dockerfile's install steps, for real


def test_sidecar_install_steps_in_a_fresh_virtualenv(sidecar: list[Instruction], tmp_path: Path) -> None:
    """Replay docker/Dockerfile's WORKDIR, COPY and `pip install` steps (as parsed, not a copy of the
    command) with a fresh virtualenv's pip against a copy of the build context; the result runs
    `coordinator --version` and imports coordinator.pin. `--no-cache-dir` is dropped so that pip's
    wheel cache keeps the run short (it only changes what the image keeps); PyPI may be reached."""
    image = tmp_path / "image"  # stands for the image's filesystem root
    venv = tmp_path / "venv"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    workdir = PurePosixPath("/")
    ran = 0
    for i in sidecar:
        if i.keyword == "WORKDIR":
            workdir = workdir / i.value
            (image / workdir.relative_to("/")).mkdir(parents=True, exist_ok=True)
        elif i.keyword == "COPY":
            flags, words = i.flags()
            assert "from" not in flags
            dest = workdir / words[-1]
            target = image / dest.relative_to("/")
            if len(words) > 2 or words[-1].endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            for source in words[:-1]:
                copy_from_context(source, target)
        elif i in pip_install_runs(sidecar):
            words = shlex.split(i.value)
            assert not [w for w in words if w.startswith("/")], f"{i}: absolute paths cannot be replayed"
            assert words[:2] == ["pip", "install"], i
            argv = [str(venv / "bin" / "pip"), *[w for w in words[1:] if w != "--no-cache-dir"]]
            out = subprocess.run(
                argv, cwd=image / workdir.relative_to("/"), capture_output=True, text=True, timeout=300, check=False
            )
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            ran += 1
    assert ran == 1
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COORDINATOR_")}
    version = subprocess.run(
        [str(venv / "bin" / "coordinator"), "--version"], capture_output=True, text=True, env=clean, cwd=tmp_path
    )
    assert version.returncode == 0 and version.stdout.startswith("coordinator "), version
    imported = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import coordinator.pin, coordinator; print(coordinator.__file__)"],
        capture_output=True,
        text=True,
        env=clean,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    assert Path(imported.stdout.strip()).is_relative_to(venv)  # the installed copy, not the repository's
    print(f"[docker] sidecar install steps in a fresh virtualenv: {time.monotonic() - t0:.1f} s")
