"""The Kubernetes manifests in docker/kubernetes: structure checked against what coordinator needs.

No cluster runs here, so these tests hold the manifests to the rules the README gives for a fleet:
a shared emptyDir, the marker from a ConfigMap mounted as a directory (never subPath), probes on the
sidecar's endpoints, resource requests, a non-root pod, and only real ``COORDINATOR_*`` options.
"""

from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from coordinator.marker import parse_marker
from coordinator.options import OPTIONS, resolve_options

K8S = Path(__file__).resolve().parent.parent / "docker" / "kubernetes"


def _load(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    assert docs, f"{name} is empty"
    return docs


def _one(kind: str) -> dict[str, Any]:
    found = [d for p in sorted(K8S.glob("*.yaml")) for d in _load(p.name) if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    spec: dict[str, Any] = _one("Deployment")["spec"]["template"]["spec"]
    return spec


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    by_name = {c["name"]: c for c in pod["containers"]}
    assert name in by_name, f"no container {name!r}"
    container: dict[str, Any] = by_name[name]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def _volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["volumes"]}


def test_every_manifest_parses_and_names_its_kind() -> None:
    """Each YAML file holds Kubernetes objects with apiVersion, kind and metadata.name."""
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _load(path.name):
            assert doc.get("apiVersion"), path.name
            assert doc.get("kind"), path.name
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path.name


def test_kustomization_lists_every_manifest() -> None:
    """`kubectl apply -k docker/kubernetes` applies every manifest in the folder."""
    kust = _one("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def test_app_and_sidecar_share_an_emptydir_at_the_same_path(pod: dict[str, Any]) -> None:
    """The app and the coordinator mount one emptyDir at /srv/app, which is COORDINATOR_ROOT."""
    volumes = _volumes(pod)
    app, sidecar = _container(pod, "app"), _container(pod, "coordinator")
    shared = set(_mounts(app)) & set(_mounts(sidecar))
    emptydirs = [n for n in shared if "emptyDir" in volumes[n]]
    assert len(emptydirs) == 1
    name = emptydirs[0]
    assert _mounts(app)[name]["mountPath"] == _mounts(sidecar)[name]["mountPath"]
    assert _env(sidecar)["COORDINATOR_ROOT"]["value"] == _mounts(sidecar)[name]["mountPath"]


def test_no_container_mounts_with_subpath(pod: dict[str, Any]) -> None:
    """No mount uses subPath: kubelet never updates a subPath mount, so a fleet deploy would be lost."""
    for c in pod["containers"] + pod.get("initContainers", []):
        for m in c.get("volumeMounts", []):
            assert "subPath" not in m and "subPathExpr" not in m, f"{c['name']} mounts {m['name']} with subPath"


def test_marker_is_a_key_of_the_configmap_mounted_as_a_directory(pod: dict[str, Any]) -> None:
    """COORDINATOR_MARKER names a key of the mounted ConfigMap, read through its directory."""
    sidecar = _container(pod, "coordinator")
    marker = PurePosixPath(_env(sidecar)["COORDINATOR_MARKER"]["value"])
    cm_volumes = {n: v for n, v in _volumes(pod).items() if "configMap" in v}
    mounts = [m for n, m in _mounts(sidecar).items() if n in cm_volumes]
    assert len(mounts) == 1
    mount = mounts[0]
    assert marker.parent == PurePosixPath(mount["mountPath"])
    assert mount.get("readOnly") is True
    cm_name = cm_volumes[mount["name"]]["configMap"]["name"]
    cm = _one("ConfigMap")
    assert cm["metadata"]["name"] == cm_name
    assert marker.name in cm["data"]


def test_configmap_tag_is_a_valid_marker_matching_the_tag_pattern(pod: dict[str, Any]) -> None:
    """The ConfigMap's marker parses and matches the sidecar's tag pattern."""
    pattern = _env(_container(pod, "coordinator"))["COORDINATOR_TAG_PATTERN"]["value"]
    data = _one("ConfigMap")["data"]["deploy.request"]
    request = parse_marker(data.encode(), pattern)
    assert fnmatch.fnmatchcase(request.tag, pattern)


def test_the_patch_command_in_the_configmap_targets_its_name_and_key() -> None:
    """The documented `kubectl patch configmap` names the real ConfigMap and key."""
    text = (K8S / "configmap.yaml").read_text()
    line = next(ln for ln in text.splitlines() if "kubectl patch configmap" in ln)
    words = shlex.split(line.lstrip("# "))
    cm = _one("ConfigMap")
    assert words[3] == cm["metadata"]["name"]
    assert any('"deploy.request"' in w for w in words)


def test_sidecar_env_names_are_real_options_with_valid_values(pod: dict[str, Any]) -> None:
    """Every COORDINATOR_* variable is a known option and its literal value converts."""
    env = _env(_container(pod, "coordinator"))
    known = {opt.env: name for name, opt in OPTIONS.items()}
    literal: dict[str, str] = {}
    for name, item in env.items():
        if not name.startswith("COORDINATOR_"):
            continue
        assert name in known, f"{name} is not a coordinator option"
        if "value" in item:
            literal[name] = str(item["value"])
        else:
            assert "valueFrom" in item, name
    resolve_options({}, literal)  # raises ConfigError on a bad value


def test_repository_url_comes_from_a_secret(pod: dict[str, Any]) -> None:
    """COORDINATOR_REPO (which may hold credentials) is read from a Secret, not written inline."""
    repo = _env(_container(pod, "coordinator"))["COORDINATOR_REPO"]
    ref = repo["valueFrom"]["secretKeyRef"]
    secret = _one("Secret")
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def test_sidecar_probes_use_its_http_endpoints(pod: dict[str, Any]) -> None:
    """Liveness and startup probes hit /healthz on the port COORDINATOR_HTTP_BIND opens."""
    sidecar = _container(pod, "coordinator")
    port = int(_env(sidecar)["COORDINATOR_HTTP_BIND"]["value"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    for probe in ("livenessProbe", "startupProbe"):
        get = sidecar[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert ports.get(get["port"], get["port"]) == port


def test_readyz_is_not_a_readiness_probe(pod: dict[str, Any]) -> None:
    """/readyz never gates pod readiness: a rolled-back tag on every pod must not empty the Service."""
    for c in pod["containers"]:
        probe = c.get("readinessProbe")
        if probe and "httpGet" in probe:
            assert probe["httpGet"]["path"] != "/readyz", c["name"]


def test_prometheus_annotations_match_the_metrics_port(pod: dict[str, Any]) -> None:
    """The scrape annotations point at the sidecar's metrics port and /metrics."""
    meta = _one("Deployment")["spec"]["template"]["metadata"]
    sidecar = _container(pod, "coordinator")
    port = _env(sidecar)["COORDINATOR_HTTP_BIND"]["value"].rsplit(":", 1)[1]
    assert meta["annotations"]["prometheus.io/port"] == port
    assert meta["annotations"]["prometheus.io/path"] == "/metrics"


def test_every_container_requests_cpu_and_memory_and_limits_memory(pod: dict[str, Any]) -> None:
    """Each container has cpu and memory requests and a memory limit."""
    for c in pod["containers"]:
        res = c["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]), c["name"]
        assert "memory" in res["limits"], c["name"]


def test_pod_runs_as_non_root_without_privilege_escalation(pod: dict[str, Any]) -> None:
    """The pod runs as a non-root uid with an fsGroup, and no container can escalate."""
    sec = pod["securityContext"]
    assert sec["runAsNonRoot"] is True
    assert sec["runAsUser"] != 0
    assert "fsGroup" in sec
    for c in pod["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]


def test_app_is_ready_only_once_it_serves_a_release(pod: dict[str, Any]) -> None:
    """The app's readiness probe is its own /health, which answers only once a release is loaded."""
    app = _container(pod, "app")
    probe = app["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health"
    assert probe["port"] in {p["name"] for p in app["ports"]}
    assert _env(app)["COORDINATOR_ROOT"]["value"] == _mounts(app)["app-volume"]["mountPath"]


def test_service_targets_the_app_port(pod: dict[str, Any]) -> None:
    """The Service selects the pods and forwards to the app's named port."""
    svc = _one("Service")
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    app_ports = {p["name"] for p in _container(pod, "app")["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= app_ports


def test_grace_period_leaves_time_for_a_reload(pod: dict[str, Any]) -> None:
    """The pod's termination grace period is long enough for SIGTERM to wait for a swap's reload."""
    assert pod["terminationGracePeriodSeconds"] >= 30
