"""Offline checks of the deployment files: Kubernetes manifests, Dockerfile.gpu and .dockerignore.

Every manifest is validated against the Kubernetes JSON schemas bundled with kubernetes-validate (no network),
and cross-checked with the server: ports, probe paths, FACEREC_* setting names, the Triton address.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
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
DOCKERFILE = ROOT / "Dockerfile.gpu"
DOCKERIGNORE = ROOT / ".dockerignore"

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
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


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
    docs = _load(K8S / SECRET_TEMPLATE)
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
    files = {r for r in listed if r.endswith(".yaml")}
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
    base = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
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
    text = (K8S / SECRET_TEMPLATE).read_text()
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


def test_images_are_pinned() -> None:
    for name, pod in _pod_specs():
        for c in _containers(pod):
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}/{c['name']}"


# --------------------------------------------------------------------------- Dockerfile.gpu


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buffer = ""
    for raw in DOCKERFILE.read_text().splitlines():
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


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def _env_pairs(args: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(args))


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in _final_stage():
        if keyword == "ENV":
            env.update(_env_pairs(args))
    return env


def _dockerfile_user() -> str:
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    return users[-1]


def test_dockerfile_is_multi_stage_on_cuda() -> None:
    instructions = _dockerfile_instructions()
    args = {k: v for k, v in (a.split("=", 1) for kw, a in instructions if kw == "ARG" and "=" in a)}
    froms = [a for k, a in instructions if k == "FROM"]
    assert len(froms) >= 2
    base = args["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-cudnn-runtime-ubuntu22\.04", base)
    assert all(f.split()[0] == "${CUDA_IMAGE}" for f in froms)
    # onnxruntime-gpu 1.2x up to 1.26 is the CUDA 12 + cuDNN 9 build the base carries.
    assert re.fullmatch(r"1\.(19|2[0-6])\.\d+", args["ONNXRUNTIME_GPU_VERSION"])


def test_dockerfile_installs_gpu_runtime_and_builds_models() -> None:
    runs = [a for k, a in _dockerfile_instructions() if k == "RUN"]
    text = "\n".join(runs)
    assert "python3.11" in text
    assert "python3.11 -m venv /opt/facerec/.venv" in text
    assert re.search(r'pip install "?\.\[build\]"?', text)
    uninstall = text.index("pip uninstall -y onnxruntime")
    install_gpu = text.index("onnxruntime-gpu==")
    assert uninstall < install_gpu, "remove the CPU wheel before installing the GPU one"
    assert any(re.search(r"(^|\s)facerec models(\s|$)", r) for r in runs), (
        "models must be built in a RUN step"
    )


def test_dockerfile_runtime_stage() -> None:
    stage = _final_stage()
    user = _dockerfile_user()
    assert user.split(":")[0] == "10001"
    env = _dockerfile_env()
    assert env["FACEREC_DATA_DIR"] == "/var/lib/facerec"
    assert env["PATH"].startswith("/opt/facerec/.venv/bin:")
    for name in env:
        if name.startswith("FACEREC_"):
            assert name.removeprefix("FACEREC_").lower() in SETTINGS_FIELDS, name
    assert int(env["FACEREC_PORT"]) == DEFAULTS.port
    assert int(env["FACEREC_GRPC_PORT"]) == DEFAULTS.grpc_port
    exposed = {int(p.split("/")[0]) for k, a in stage if k == "EXPOSE" for p in a.split()}
    assert exposed == {DEFAULTS.port, DEFAULTS.grpc_port}
    assert any(k == "COPY" and "--from=builder" in a and "/opt/facerec" in a for k, a in stage)


def test_dockerfile_healthcheck_and_entrypoint() -> None:
    stage = _final_stage()
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
    for needed in ("server", "pyproject.toml", "README.md"):
        assert needed not in ignored, needed
