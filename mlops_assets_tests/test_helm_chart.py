"""The Helm chart (helm/mlops-assets), tested with the real tools and no cluster.

`helm lint --strict` and `helm template` with the default values and with every optional part
on (`ci/all-on-values.yaml`); every rendered manifest validated against the Kubernetes schemas
with kubernetes-validate (the CRD kinds, which it does not know, are checked by structure);
assertions on the rendered objects (hardening, probes, secrets, PostgreSQL wiring, the HPA, Ray);
the values schema rejecting bad values; the run pod built by dagster-k8s itself from the
rendered dagster.yaml; the URL-composing start script run for real; checkov.

The tools come from `.ci/install_chart_tools.sh` (helm into .tools/bin, checkov into its own
venv, kubernetes-validate and dagster-k8s into the project venv). A test whose tool is missing
is skipped with the reason; CI runs the script first, so there they all run.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "mlops-assets"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
TOOLS_BIN = ROOT / ".tools" / "bin"
RELEASE = "mlops"
NAMESPACE = "mlops-prod"
FULLNAME = "mlops-mlops-assets"  # "<release>-<chart>"

#: Kinds from CRDs that kubernetes-validate has no schema for: checked by structure below.
CRD_KINDS = {
    ("ray.io/v1", "RayCluster"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),  # see test_helm_monitoring.py
}
#: Kubernetes versions the manifests are validated against: the chart's minimum and a recent one.
KUBE_VERSIONS = ("1.29.0", "1.33.0")
#: Environment variable names that must only ever come from a Secret.
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|SERVICE_KEY|ACCESS_KEY", re.IGNORECASE)


def _tool(name: str) -> str | None:
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


HELM = _tool("helm")
CHECKOV = _tool("checkov")
needs_helm = pytest.mark.skipif(
    HELM is None, reason="helm not found in .tools/bin or on PATH: run .ci/install_chart_tools.sh"
)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


@functools.cache
def render_text(*args: str) -> str:
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(*args: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(*args)) if doc]


VARIANTS = {"default": (), "all-on": ("-f", str(ALL_ON))}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if HELM is None:
        pytest.skip("helm not found in .tools/bin or on PATH: run .ci/install_chart_tools.sh")
    return request.param, render(*VARIANTS[request.param])


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    if HELM is None:
        pytest.skip("helm not found in .tools/bin or on PATH: run .ci/install_chart_tools.sh")
    return render()


@pytest.fixture(scope="module")
def all_on_docs() -> list[dict[str, Any]]:
    if HELM is None:
        pytest.skip("helm not found in .tools/bin or on PATH: run .ci/install_chart_tools.sh")
    return render("-f", str(ALL_ON))


# ------------------------------------------------------------------------------- helpers


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod spec) of every pod the manifests create, RayCluster groups included."""
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield label, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "RayCluster":
            yield f"{label}/head", doc["spec"]["headGroupSpec"]["template"]["spec"]
            for group in doc["spec"]["workerGroupSpecs"]:
                yield f"{label}/{group['groupName']}", group["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def dagster_yaml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = find(docs, "ConfigMap", f"{FULLNAME}-dagster-instance")
    return yaml.safe_load(cm["data"]["dagster.yaml"])


def run_k8s_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dagster_yaml(docs)["run_launcher"]["config"]["run_k8s_config"]


def assert_hardened_pod(label: str, spec: dict[str, Any]) -> None:
    psc = spec.get("securityContext") or {}
    assert psc.get("runAsNonRoot") is True, f"{label}: pod runAsNonRoot"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: pod seccomp"
    assert psc.get("runAsUser", 1) != 0, f"{label}: runs as root"
    for c in containers(spec):
        where = f"{label}/{c['name']}"
        sc = c.get("securityContext") or {}
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert sc.get("privileged", False) is False, f"{where}: privileged"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities"
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
        resources = c.get("resources") or {}
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert resources.get(part, {}).get(resource), f"{where}: {part}.{resource} missing"
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts and not mounts["/tmp"].get("readOnly"), f"{where}: no writable /tmp"
        image = c["image"]
        assert not image.endswith(":latest") and ":" in image.split("/")[-1], f"{where}: image {image} not pinned"


# ------------------------------------------------------------------------- lint & render


@needs_helm
@pytest.mark.parametrize("values", list(VARIANTS), ids=list(VARIANTS))
def test_helm_lint_strict(values: str) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *VARIANTS[values])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_render_has_every_part(variant: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = variant
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {
        ("Deployment", f"{FULLNAME}-dagster-code"),
        ("Deployment", f"{FULLNAME}-dagster-webserver"),
        ("Deployment", f"{FULLNAME}-dagster-daemon"),
        ("Deployment", f"{FULLNAME}-mlflow"),
        ("Deployment", f"{FULLNAME}-serving"),
        ("HorizontalPodAutoscaler", f"{FULLNAME}-serving"),
        ("PodDisruptionBudget", f"{FULLNAME}-serving"),
        ("Service", f"{FULLNAME}-serving"),
        ("Role", f"{FULLNAME}-run-launcher"),
        ("RoleBinding", f"{FULLNAME}-run-launcher"),
    }
    if name == "all-on":
        expected |= {
            ("StatefulSet", f"{FULLNAME}-postgresql"),
            ("RayCluster", f"{FULLNAME}-ray"),
            ("ServiceMonitor", f"{FULLNAME}-serving"),
            ("Ingress", f"{FULLNAME}-serving"),
            ("Ingress", f"{FULLNAME}-dagster-webserver"),
            ("Ingress", f"{FULLNAME}-mlflow"),
        }
    else:
        assert not kinds(docs) & {"StatefulSet", "RayCluster", "ServiceMonitor", "Ingress"}
        assert ("PersistentVolumeClaim", f"{FULLNAME}-mlflow-artifacts") in names
    assert expected <= names, expected - names
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs)
    # A chart that only references Secrets must never create one.
    assert "Secret" not in kinds(docs)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_valid_against_kubernetes_schemas(
    variant: tuple[str, list[dict[str, Any]]], kube_version: str
) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate missing: pip install -e '.[test]'"
    )
    _, docs = variant
    validated = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue  # no schema bundled; see test_ray_cluster_* and test_service_monitor_*
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.utils.VersionNotSupportedError:
            pytest.skip(f"this kubernetes-validate does not bundle Kubernetes {kube_version}: upgrade it")
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {error.message}")
        validated += 1
    assert validated >= 15


# --------------------------------------------------------------------------- hardening


def test_every_pod_hardened(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = variant
    specs = list(pod_specs(docs))
    assert len(specs) >= 5
    for label, spec in specs:
        assert_hardened_pod(label, spec)


def test_service_account_tokens_only_where_needed(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = variant
    launcher_sa = f"{FULLNAME}-dagster"
    for label, spec in pod_specs(docs):
        if label.endswith(("-dagster-webserver", "-dagster-daemon")):
            assert spec["serviceAccountName"] == launcher_sa, label
            assert spec["automountServiceAccountToken"] is True, label
        else:
            assert spec["serviceAccountName"] == f"{FULLNAME}-workload", label
            assert spec["automountServiceAccountToken"] is False, label
    # Minimal RBAC for the K8sRunLauncher, no wildcards, nothing cluster-wide.
    assert not kinds(docs) & {"ClusterRole", "ClusterRoleBinding"}
    role = find(docs, "Role", f"{FULLNAME}-run-launcher")
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules[("batch", "jobs")] == {"create", "get", "list", "watch", "delete"}
    assert rules[("", "pods")] == {"get", "list", "watch"}
    assert rules[("", "pods/log")] == {"get"}
    assert all("*" not in verbs for verbs in rules.values()) and all("*" not in key for key in rules)
    binding = find(docs, "RoleBinding", f"{FULLNAME}-run-launcher")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": launcher_sa, "namespace": NAMESPACE}]


def test_images_by_tag_and_digest(default_docs: list[dict[str, Any]], all_on_docs: list[dict[str, Any]]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for _, spec in pod_specs(default_docs):
        for c in containers(spec):
            assert c["image"] == f"ghcr.io/mlops-assets/mlops-assets:{chart['appVersion']}"
            assert c["imagePullPolicy"] == "Always"  # pinned by tag only: re-check the registry
    digest = yaml.safe_load(ALL_ON.read_text())["image"]["digest"]
    for label, spec in pod_specs(all_on_docs):
        for c in containers(spec):
            if "postgresql" in label:
                assert c["image"].startswith("docker.io/library/postgres:16.")
            else:
                assert c["image"].endswith(f":0.1.0@{digest}"), c["image"]
                assert c["imagePullPolicy"] == "IfNotPresent"  # a digest is immutable


# -------------------------------------------------------------------------------- secrets


def _env_lists(docs: list[dict[str, Any]]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for label, spec in pod_specs(docs):
        for c in containers(spec):
            yield f"{label}/{c['name']}", c.get("env", [])
    if any(d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dagster-instance") for d in docs):
        yield "run pods (dagster.yaml)", run_k8s_config(docs)["container_config"]["env"]


def test_secrets_only_by_secret_key_ref(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = variant
    referenced = set()
    for where, env in _env_lists(docs):
        for entry in env:
            if SECRETISH.search(entry["name"]) or entry["name"] == "WAREHOUSE_URL":
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                assert ref and "value" not in entry, f"{where}: {entry['name']} must come from a secretKeyRef"
                referenced.add((ref["name"], ref["key"]))
            elif "value" in entry:
                assert not re.search(r"://[^/@\s]*:[^/@\s]*@", entry["value"]), f"{where}: credentials in {entry}"
    assert ("mlops-assets-postgres", "password") in referenced
    # ConfigMaps hold no password-ish key and no URL with credentials.
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not SECRETISH.search(key), f"ConfigMap {cm['metadata']['name']} has key {key}"
            # (placeholders such as <PASSWORD> or ${VAR} in comments are not credentials)
            assert not re.search(r"://[^/@\s$<>{}]*:[^/@\s$<>{}]+@", value), f"ConfigMap {cm['metadata']['name']}/{key}"
            for line in value.splitlines():
                assert not re.match(r"\s*(password|secret|token)\s*:\s*['\"]?[^\s{'\"]", line, re.IGNORECASE) or (
                    "env:" in line
                ), f"ConfigMap {cm['metadata']['name']}/{key}: {line.strip()}"


def test_all_on_secret_references(all_on_docs: list[dict[str, Any]]) -> None:
    code = find(all_on_docs, "Deployment", f"{FULLNAME}-dagster-code")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(code)
    assert env["KMA_SERVICE_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "mlops-assets-kma", "key": "service-key"}
    serving = find(all_on_docs, "Deployment", f"{FULLNAME}-serving")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(serving)["SERVING_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlops-assets-serving",
        "key": "token",
    }
    mlflow = find(all_on_docs, "Deployment", f"{FULLNAME}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    menv = env_of(mlflow)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert menv[name]["valueFrom"]["secretKeyRef"]["name"] == "mlops-assets-s3"
    # The warehouse URL may come whole from a Secret of its own.
    docs = render("--set", "warehouse.existingUrlSecret=warehouse-url")
    code = find(docs, "Deployment", f"{FULLNAME}-dagster-code")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(code)["WAREHOUSE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "warehouse-url", "key": "url"}
    assert "WAREHOUSE_DB_PASSWORD" not in env_of(code)
    assert "WAREHOUSE_DB_HOST" not in find(docs, "ConfigMap", f"{FULLNAME}-app-env")["data"]


# ---------------------------------------------------------------- Dagster and PostgreSQL


def test_dagster_instance_uses_postgres_and_k8s_run_launcher(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = variant
    instance = dagster_yaml(docs)
    for storage, module, cls in (
        ("run_storage", "dagster_postgres", "PostgresRunStorage"),
        ("event_log_storage", "mlops_assets.pool_claims", "PoolSafePostgresEventLogStorage"),
        ("schedule_storage", "dagster_postgres", "PostgresScheduleStorage"),
    ):
        assert instance[storage]["module"] == module
        assert instance[storage]["class"] == cls
        db = instance[storage]["config"]["postgres_db"]
        assert db["scheme"] == "postgresql+psycopg2"
        assert {k: db[k] for k in ("hostname", "port", "username", "password", "db_name")} == {
            "hostname": {"env": "DAGSTER_PG_HOST"},
            "port": {"env": "DAGSTER_PG_PORT"},
            "username": {"env": "DAGSTER_PG_USER"},
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "db_name": {"env": "DAGSTER_PG_DB"},
        }
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = launcher["config"]
    assert config["job_namespace"] == NAMESPACE
    assert config["instance_config_map"] == f"{FULLNAME}-dagster-instance"
    assert config["env_config_maps"][:2] == [f"{FULLNAME}-dagster-env", f"{FULLNAME}-app-env"]
    assert config["service_account_name"] == f"{FULLNAME}-workload"

    # The non-secret half of the connection settings, and the password from the Secret in
    # every pod that opens the instance.
    pg_env = find(docs, "ConfigMap", f"{FULLNAME}-dagster-env")["data"]
    assert set(pg_env) == {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_DB"}
    assert pg_env["DAGSTER_PG_DB"] == "dagster"
    password_ref = {"secretKeyRef": {"name": "mlops-assets-postgres", "key": "password"}}
    for component in ("dagster-code", "dagster-webserver", "dagster-daemon"):
        spec = find(docs, "Deployment", f"{FULLNAME}-{component}")["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert env_of(c)["DAGSTER_PG_PASSWORD"]["valueFrom"] == password_ref, component
        assert env_of(c)["DAGSTER_HOME"]["value"] == "/opt/dagster/dagster_home"
        assert {"configMapRef": {"name": f"{FULLNAME}-dagster-env"}} in c["envFrom"], component
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert mounts["/opt/dagster/dagster_home/dagster.yaml"]["subPath"] == "dagster.yaml"
    run_env = {e["name"]: e for e in run_k8s_config(docs)["container_config"]["env"]}
    assert run_env["DAGSTER_PG_PASSWORD"]["valueFrom"] == password_ref


def test_dagster_yaml_accepted_by_dagster(default_docs: list[dict[str, Any]], tmp_path: Path, monkeypatch) -> None:
    """Dagster's own config schemas accept the rendered dagster.yaml, with the env it names."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text(
        find(default_docs, "ConfigMap", f"{FULLNAME}-dagster-instance")["data"]["dagster.yaml"]
    )
    for name, value in {
        "DAGSTER_PG_HOST": "db",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USER": "u",
        "DAGSTER_PG_PASSWORD": "p",
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(tmp_path))
    for key in (
        "run_storage",
        "event_log_storage",
        "schedule_storage",
        "run_coordinator",
        "compute_logs",
        "run_launcher",
    ):
        module = config[key]["module"]
        if module == "dagster_k8s" and importlib.util.find_spec("dagster_k8s") is None:
            continue  # covered by test_run_pod_built_by_dagster_k8s, which says why it skips
        cls = getattr(importlib.import_module(module), config[key]["class"])
        result = process_config(cls.config_type(), config[key].get("config") or {})
        assert result.success, f"{key}: {[e.message for e in result.errors]}"
        if key == "run_storage":
            assert result.value["postgres_db"]["port"] == 5432
            assert result.value["postgres_db"]["password"] == "p"


def test_run_pod_built_by_dagster_k8s(variant: tuple[str, list[dict[str, Any]]]) -> None:
    """The K8sRunLauncher's own code turns the rendered config into the run Job we expect."""
    pytest.importorskip("dagster_k8s", reason="dagster-k8s missing: run .ci/install_chart_tools.sh")
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate missing")
    import inspect

    import kubernetes
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    name, docs = variant
    result = process_config(K8sRunLauncher.config_type(), dagster_yaml(docs)["run_launcher"]["config"])
    assert result.success, [e.message for e in result.errors]
    config = result.value
    fields = set(inspect.signature(DagsterK8sJobConfig.__new__).parameters)
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(**{k: v for k, v in config.items() if k in fields}),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0123456789abcdef",
        user_defined_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["run_k8s_config"]),
        component="run_worker",
    )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    kubernetes_validate.validate(manifest, KUBE_VERSIONS[0], strict=True)
    spec = manifest["spec"]["template"]["spec"]
    assert_hardened_pod("run Job", spec)
    assert spec["automountServiceAccountToken"] is False
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 86400 and manifest["spec"]["backoffLimit"] == 0
    (c,) = spec["containers"]
    assert c["command"] == ["python3", "/opt/mlops/scripts/with_db_urls.py"]
    assert c["args"][:3] == ["dagster", "api", "execute_run"]
    assert {e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e} >= {
        f"{FULLNAME}-dagster-env",
        f"{FULLNAME}-app-env",
    }
    env = env_of(c)
    assert env["WAREHOUSE_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlops-assets-postgres"
    assert manifest["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "run"
    if name == "all-on":
        assert env["KMA_SERVICE_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlops-assets-kma"
        assert {"secretRef": {"name": "extra-run-secrets"}} in c["envFrom"]
        assert spec["nodeSelector"] == {"workload": "batch"}
        assert {v["name"] for v in spec["volumes"]} >= {"tmp", "scripts", "insurance"}


def test_workspace_points_at_the_code_server(default_docs: list[dict[str, Any]]) -> None:
    workspace = yaml.safe_load(
        find(default_docs, "ConfigMap", f"{FULLNAME}-dagster-workspace")["data"]["workspace.yaml"]
    )
    (entry,) = workspace["load_from"]
    assert entry["grpc_server"] == {"host": f"{FULLNAME}-dagster-code", "port": 4000, "location_name": "mlops_assets"}
    service = find(default_docs, "Service", f"{FULLNAME}-dagster-code")
    assert service["spec"]["ports"][0]["port"] == 4000
    code = find(default_docs, "Deployment", f"{FULLNAME}-dagster-code")["spec"]["template"]["spec"]["containers"][0]
    assert code["args"][:7] == [
        "python3",
        "/opt/mlops/scripts/with_db_urls.py",
        "dagster",
        "api",
        "grpc",
        "--module-name",
        "mlops_assets.definitions",
    ]
    assert code["args"][7:11] == ["--host", "0.0.0.0", "--port", "4000"]
    assert env_of(code)["DAGSTER_CURRENT_IMAGE"]["value"] == code["image"]  # the runs' image
    app_env = find(default_docs, "ConfigMap", f"{FULLNAME}-app-env")["data"]
    assert app_env["ATMOS_SOURCE"] == "sample"
    assert app_env["MLFLOW_TRACKING_URI"] == f"http://{FULLNAME}-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert app_env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert app_env["WAREHOUSE_DB_NAME"] == "warehouse"
    webserver = find(default_docs, "Deployment", f"{FULLNAME}-dagster-webserver")["spec"]["template"]["spec"]
    assert webserver["containers"][0]["args"] == [
        "dagster-webserver",
        "-h",
        "0.0.0.0",
        "-p",
        "3000",
        "-w",
        "/opt/dagster/workspace.yaml",
    ]
    daemon = find(default_docs, "Deployment", f"{FULLNAME}-dagster-daemon")
    assert daemon["spec"]["replicas"] == 1 and daemon["spec"]["strategy"]["type"] == "Recreate"
    assert daemon["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["dagster-daemon", "run"]


# ------------------------------------------------------------------------------- MLflow


def test_mlflow_backend_store_built_from_secret_env(variant: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = variant
    deployment = find(docs, "Deployment", f"{FULLNAME}-mlflow")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["MLFLOW_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlops-assets-postgres",
        "key": "password",
    }
    assert env["MLFLOW_DB_NAME"]["value"] == "mlflow"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert "MLFLOW_BACKEND_STORE_URI" not in env  # composed in the container, never in the spec
    assert c["args"][:2] == ["python3", "/opt/mlops/scripts/with_db_urls.py"]
    command = c["args"][-1]
    assert c["args"][2:4] == ["sh", "-c"] and command.startswith("exec mlflow server")
    for flag in (
        '--backend-store-uri "$MLFLOW_BACKEND_STORE_URI"',
        "--serve-artifacts",
        "--host 0.0.0.0",
        '--artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"',
        '--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"',
    ):
        assert flag in command
    hosts = env["MLFLOW_ALLOWED_HOSTS"]["value"].split(",")
    assert f"{FULLNAME}-mlflow.{NAMESPACE}.svc.cluster.local:*" in hosts and "localhost:*" in hosts
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    if name == "default":
        assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == "/mlflow/artifacts"
        assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-mlflow-artifacts"
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
    else:
        assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == "s3://mlops-artifacts/mlflow"
        assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
        assert "artifacts" not in volumes
        assert "mlflow.example.com" in hosts
        assert "https://mlflow.example.com" in env["MLFLOW_CORS_ALLOWED_ORIGINS"]["value"].split(",")


# ------------------------------------------------------------------------------ serving


def test_serving_deployment_probes_and_env(variant: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = variant
    deployment = find(docs, "Deployment", f"{FULLNAME}-serving")
    spec = deployment["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    # Wrapped by the URL-composing start script (test_helm_serving_log.py checks the wiring).
    assert c["args"][:4] == ["python3", "/opt/mlops/scripts/with_db_urls.py", "mlops-assets", "serve"]
    args = dict(zip(c["args"][4::2], c["args"][5::2], strict=True))
    assert args == {"--host": "0.0.0.0", "--port": "8000", "--workers": "1" if name == "default" else "2"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000}
    env = env_of(c)
    assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://{FULLNAME}-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert env["SERVING_POLL_SECONDS"]["value"] == "30"
    assert env["SERVING_MODEL_ALIAS"]["value"] == "champion"
    # Rolling updates never drop below the ready count: a new pod serves only once /ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if name == "default":
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics" and annotations["prometheus.io/port"] == "8000"
        assert "SERVING_API_TOKEN" not in env
    # The tracking URI is overridable (an external MLflow).
    docs = render("--set", "mlflow.enabled=false", "--set", "mlflow.trackingUri=https://mlflow.corp.example")
    c = find(docs, "Deployment", f"{FULLNAME}-serving")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(c)["MLFLOW_TRACKING_URI"]["value"] == "https://mlflow.corp.example"
    assert not any(d["metadata"]["name"] == f"{FULLNAME}-mlflow" for d in docs)


def test_hpa_and_pdb_target_the_serving_deployment(variant: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = variant
    deployment = find(docs, "Deployment", f"{FULLNAME}-serving")
    hpa = find(docs, "HorizontalPodAutoscaler", f"{FULLNAME}-serving")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metrics = {m["resource"]["name"] for m in hpa["spec"]["metrics"]}
    assert metrics == ({"cpu"} if name == "default" else {"cpu", "memory"})
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = find(docs, "PodDisruptionBudget", f"{FULLNAME}-serving")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = find(docs, "Service", f"{FULLNAME}-serving")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # Without the HPA the Deployment carries the replica count itself.
    docs = render("--set", "serving.autoscaling.enabled=false", "--set", "serving.replicas=3")
    assert find(docs, "Deployment", f"{FULLNAME}-serving")["spec"]["replicas"] == 3
    assert not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs)


def test_service_monitor_and_ingress_structure(all_on_docs: list[dict[str, Any]]) -> None:
    monitor = find(all_on_docs, "ServiceMonitor", f"{FULLNAME}-serving")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = find(all_on_docs, "Service", f"{FULLNAME}-serving")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
    ingress = find(all_on_docs, "Ingress", f"{FULLNAME}-serving")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "predict.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"number": service["spec"]["ports"][0]["port"]}}
    assert ingress["spec"]["tls"] == [{"hosts": ["predict.example.com"], "secretName": "predict-example-tls"}]


# ---------------------------------------------------------------------------------- Ray


def test_ray_cluster_structure_and_ray_address_wiring(all_on_docs: list[dict[str, Any]]) -> None:
    cluster = find(all_on_docs, "RayCluster", f"{FULLNAME}-ray")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["rayVersion"])
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    (head_container,) = head["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in head_container["ports"]}["client"] == 10001
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    shm = {v["name"]: v for v in group["template"]["spec"]["volumes"]}["shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    address = f"ray://{FULLNAME}-ray-head-svc.{NAMESPACE}.svc.cluster.local:10001"
    code = find(all_on_docs, "Deployment", f"{FULLNAME}-dagster-code")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(code)["RAY_ADDRESS"]["value"] == address
    run_env = {e["name"]: e for e in run_k8s_config(all_on_docs)["container_config"]["env"]}
    assert run_env["RAY_ADDRESS"]["value"] == address
    # The Ray nodes themselves must not try to connect to themselves as clients.
    for label, pod in pod_specs([cluster]):
        for c in containers(pod):
            assert "RAY_ADDRESS" not in env_of(c), label
            assert {"configMapRef": {"name": f"{FULLNAME}-app-env"}} in c["envFrom"]


def test_ray_address_absent_or_external(default_docs: list[dict[str, Any]]) -> None:
    code = find(default_docs, "Deployment", f"{FULLNAME}-dagster-code")["spec"]["template"]["spec"]["containers"][0]
    assert "RAY_ADDRESS" not in env_of(code)
    assert "RAY_ADDRESS" not in {e["name"] for e in run_k8s_config(default_docs)["container_config"]["env"]}
    docs = render("--set", "ray.address=ray://ray-head.ray.svc:10001")
    code = find(docs, "Deployment", f"{FULLNAME}-dagster-code")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(code)["RAY_ADDRESS"]["value"] == "ray://ray-head.ray.svc:10001"
    assert not any(d["kind"] == "RayCluster" for d in docs)


# --------------------------------------------------------------------- switches, schema


@needs_helm
@pytest.mark.parametrize(
    ("sets", "absent", "present"),
    [
        (("serving.enabled=false",), {f"{FULLNAME}-serving"}, {f"{FULLNAME}-dagster-code"}),
        (
            ("dagster.enabled=false",),
            {
                f"{FULLNAME}-dagster-code",
                f"{FULLNAME}-dagster-webserver",
                f"{FULLNAME}-dagster-daemon",
                f"{FULLNAME}-run-launcher",
            },
            {f"{FULLNAME}-serving"},
        ),
        (
            ("dagster.webserver.enabled=false", "dagster.daemon.enabled=false"),
            {f"{FULLNAME}-dagster-webserver", f"{FULLNAME}-dagster-daemon"},
            {f"{FULLNAME}-dagster-code"},
        ),
        (("networkPolicy.enabled=false",), {f"{FULLNAME}-run"}, {f"{FULLNAME}-serving"}),
        (("postgresql.enabled=true",), set(), {f"{FULLNAME}-postgresql"}),
    ],
)
def test_parts_switch_independently(sets: tuple[str, ...], absent: set[str], present: set[str]) -> None:
    args = [arg for s in sets for arg in ("--set", s)]
    docs = render(*args)
    names = {d["metadata"]["name"] for d in docs if d["kind"] != "NetworkPolicy"}
    assert not absent & names
    assert present <= names


@needs_helm
def test_in_cluster_postgres_is_wired_everywhere() -> None:
    docs = render("--set", "postgresql.enabled=true")
    host = f"{FULLNAME}-postgresql.{NAMESPACE}.svc.cluster.local"
    assert find(docs, "ConfigMap", f"{FULLNAME}-dagster-env")["data"]["DAGSTER_PG_HOST"] == host
    assert find(docs, "ConfigMap", f"{FULLNAME}-app-env")["data"]["WAREHOUSE_DB_HOST"] == host
    mlflow = find(docs, "Deployment", f"{FULLNAME}-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(mlflow)["MLFLOW_DB_HOST"]["value"] == host
    sts = find(docs, "StatefulSet", f"{FULLNAME}-postgresql")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "mlops-assets-postgres", "key": "password"}
    assert env["POSTGRES_DB"]["value"] == "dagster" and env["MLOPS_EXTRA_DATABASES"]["value"] == "mlflow warehouse"
    assert re.fullmatch(r"docker\.io/library/postgres:\d+\.\d+-bookworm", c["image"])
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    assert "pg_isready" in " ".join(c["readinessProbe"]["exec"]["command"])


BAD_VALUES = [
    (("atmos.source=bogus",), "at '/atmos/source': value must be one of 'sample', 'csv', 'kma'"),
    (("atmos.source=kma",), "/atmos/kmaServiceKey/existingSecret"),
    (("atmos.source=csv",), "csvPath"),
    (("serving.replica=3",), "additional properties 'replica' not allowed"),
    (("serving.workers=0",), "/serving/workers"),
    (("serving.pollSeconds=0",), "/serving/pollSeconds"),
    (("serving.resources.limits=null",), "missing property 'limits'"),
    (("postgresql.auth.existingSecret=",), "/postgresql/auth/existingSecret"),
    (("postgresql.host=",), "/postgresql/host"),
    (("postgresql.databases.mlflow=drop table",), "/postgresql/databases/mlflow"),
    (("mlflow.artifacts.type=gcs",), "/mlflow/artifacts/type"),
    (("mlflow.artifacts.type=s3",), "/mlflow/artifacts/s3/bucket"),
    (("image.digest=latest",), "/image/digest"),
    (("dagster.webserver.ingress.enabled=true",), "/dagster/webserver/ingress/host"),
    # Rules across several values, from the chart's own checks:
    (("mlflow.replicas=2",), "needs a shared artifact store"),
    (("serving.autoscaling.minReplicas=1",), "serving.pdb.minAvailable=1 must be below"),
    (("ray.enabled=true", "ray.address=ray://x:10001"), "either ray.enabled"),
    (("mlflow.enabled=false",), "mlflow.trackingUri is required"),
]


@needs_helm
@pytest.mark.parametrize(("sets", "message"), BAD_VALUES, ids=[";".join(s) for s, _ in BAD_VALUES])
def test_bad_values_rejected_with_clear_message(sets: tuple[str, ...], message: str) -> None:
    args = [arg for s in sets for arg in ("--set", s)]
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert result.returncode != 0, f"{sets} rendered"
    assert message in result.stderr, result.stderr


def test_values_yaml_documented_line_by_line() -> None:
    """A comment line directly above every key of values.yaml (list items excepted)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or not re.match(r"\s*[\w.-]+:", line):
            continue
        indent = len(line) - len(line.lstrip())
        previous = lines[number - 1] if number else ""
        inside_list = any(
            lines[j].strip().startswith("- ") and len(lines[j]) - len(lines[j].lstrip()) < indent
            for j in range(max(0, number - 3), number)
        )
        if not previous.strip().startswith("#") and not inside_list:
            undocumented.append(f"values.yaml:{number + 1}: {stripped}")
    assert not undocumented, "\n".join(undocumented)


# --------------------------------------------------------------- the start-up script


def _script_from_chart() -> Path:
    return CHART / "files" / "with_db_urls.py"


def _run_script(env: dict[str, str], variable: str) -> str:
    code = f"import os; print(os.environ.get({variable!r}, '<unset>'))"
    base = {"PATH": os.environ.get("PATH", ""), "SYSTEMROOT": os.environ.get("SYSTEMROOT", "")}
    result = subprocess.run(
        [sys.executable, str(_script_from_chart()), sys.executable, "-c", code],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_with_db_urls_composes_and_quotes() -> None:
    import sqlalchemy as sa

    password = "p@ss:w/rd?#%"
    env = {
        "WAREHOUSE_DB_HOST": "db.example",
        "WAREHOUSE_DB_PORT": "6432",
        "WAREHOUSE_DB_USER": "mlops",
        "WAREHOUSE_DB_PASSWORD": password,
        "WAREHOUSE_DB_NAME": "warehouse",
        "WAREHOUSE_DB_PARAMS": "sslmode=require",
    }
    url = _run_script(env, "WAREHOUSE_URL")
    assert url.startswith("postgresql+psycopg2://mlops:") and url.endswith("@db.example:6432/warehouse?sslmode=require")
    parsed = sa.make_url(url)
    assert (parsed.drivername, parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "postgresql+psycopg2",
        "mlops",
        password,
        "db.example",
        6432,
        "warehouse",
    )
    assert parsed.query == {"sslmode": "require"}
    mlflow = _run_script(
        {"MLFLOW_DB_HOST": "pg", "MLFLOW_DB_USER": "u", "MLFLOW_DB_PASSWORD": "x", "MLFLOW_DB_NAME": "mlflow"},
        "MLFLOW_BACKEND_STORE_URI",
    )
    assert mlflow == "postgresql+psycopg2://u:x@pg:5432/mlflow"
    # A URL given whole (e.g. from its own Secret) wins; nothing is composed without a host.
    assert _run_script({**env, "WAREHOUSE_URL": "sqlite:///x.db"}, "WAREHOUSE_URL") == "sqlite:///x.db"
    assert _run_script({}, "WAREHOUSE_URL") == "<unset>"


@needs_helm
def test_shipped_script_is_the_tested_one(default_docs: list[dict[str, Any]]) -> None:
    shipped = find(default_docs, "ConfigMap", f"{FULLNAME}-scripts")["data"]["with_db_urls.py"]
    assert shipped.strip() == _script_from_chart().read_text().strip()


# ------------------------------------------------- the rendered commands, run for real


def _pg_server() -> dict[str, Any]:
    """host/port/user of the test PostgreSQL server (conftest's TEST_POSTGRES_URL, trust auth)."""
    import sqlalchemy as sa

    url = sa.make_url(os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 5432,
        "user": url.username or "postgres",
        **({"password": url.password} if url.password else {}),
    }


PG = _pg_server()


@pytest.fixture()
def scratch_database() -> Iterator[str]:
    """A throw-away database on the local PostgreSQL server (trust authentication)."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"helm_chart_{os.getpid()}_{os.urandom(3).hex()}"
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    except psycopg2.OperationalError as error:
        pytest.fail(f"PostgreSQL at {PG['host']}:{PG['port']} is not reachable (start it: see README): {error}")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.postgres
@needs_helm
def test_rendered_mlflow_command_serves_from_postgres(
    default_docs: list[dict[str, Any]], scratch_database: str, tmp_path: Path
) -> None:
    """The MLflow container's command and environment, as rendered, started here: the start
    script composes the postgresql+psycopg2 URI (password quoted), MLflow migrates the database
    and answers API calls addressed to its in-cluster Service name, and refuses other hosts."""
    import urllib.error
    import urllib.request

    (c,) = find(default_docs, "Deployment", f"{FULLNAME}-mlflow")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in c["env"]}
    port = _free_port()
    env.update(
        MLFLOW_DB_HOST=PG["host"],
        MLFLOW_DB_PORT=str(PG["port"]),
        MLFLOW_DB_USER=PG["user"],
        MLFLOW_DB_NAME=scratch_database,
        MLFLOW_DB_PASSWORD=PG.get("password", "not/used:with@trust"),  # a secretKeyRef in the pod
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(tmp_path),
    )
    args = [
        sys.executable if a == "python3" else str(_script_from_chart()) if a.endswith("with_db_urls.py") else a
        for a in c["args"]
    ]
    server = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    service_host = f"{FULLNAME}-mlflow.{NAMESPACE}.svc.cluster.local:5000"

    def call(path: str, host: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        import time

        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            try:
                if call("/health", "localhost") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "MLflow did not become healthy in 120 s"
            time.sleep(0.5)
        assert call("/api/2.0/mlflow/experiments/search?max_results=5", service_host) == 200
        assert call("/api/2.0/mlflow/experiments/search?max_results=5", "attacker.example") == 403
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    import psycopg2

    with psycopg2.connect(dbname=scratch_database, **PG) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT name FROM experiments")
        assert ("Default",) in cursor.fetchall()  # MLflow's schema lives in the Postgres database
    conn.close()


@pytest.mark.postgres
@needs_helm
def test_rendered_dagster_storage_opens_postgres(
    default_docs: list[dict[str, Any]], scratch_database: str, monkeypatch
) -> None:
    """The rendered dagster.yaml storages, with the env names it uses, create Dagster's tables."""
    from dagster._serdes.config_class import ConfigurableClassData

    instance = dagster_yaml(default_docs)
    env = find(default_docs, "ConfigMap", f"{FULLNAME}-dagster-env")["data"]
    assert set(env) == {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_DB"}
    for name, value in {
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_PORT": str(PG["port"]),
        "DAGSTER_PG_USER": PG["user"],
        "DAGSTER_PG_DB": scratch_database,
        "DAGSTER_PG_PASSWORD": PG.get("password", "unused-with-trust"),
    }.items():
        monkeypatch.setenv(name, value)
    for key in ("run_storage", "event_log_storage", "schedule_storage"):
        block = instance[key]
        storage = ConfigurableClassData(block["module"], block["class"], yaml.safe_dump(block["config"])).rehydrate(
            object
        )
        try:
            if key == "run_storage":
                assert storage.get_runs() == []
        finally:
            storage.dispose()


# ------------------------------------------------------------------------- Dockerfile


def test_dockerfile_pinned_non_root_and_complete() -> None:
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(bases) == 2 and len(set(bases)) == 1, bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[a-f0-9]{64})?", bases[0])
    assert re.search(r"^USER\s+10001(:10001)?\s*$", text, re.MULTILINE)
    assert re.search(r"pip install \.\s", text) and "[test]" not in text and ".[dev" not in text
    from importlib.metadata import version

    major, minor, patch = version("dagster").split(".")[:3]
    assert f'"dagster-k8s=={int(major) - 1}.{int(minor) + 16}.{patch}"' in text  # lock-step with dagster
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1 :][:4] == ["!pyproject.toml", "!README.md", "!mlops_assets/", "!serving/"]


# ---------------------------------------------------------------------------- checkov


def _checkov(*args: str) -> list[dict[str, Any]]:
    assert CHECKOV is not None
    env = {**os.environ, "PATH": f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [CHECKOV, *args, "--output", "json", "--compact", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


@pytest.mark.skipif(
    CHECKOV is None, reason="checkov not found in .tools/bin or on PATH: run .ci/install_chart_tools.sh"
)
@needs_helm
def test_checkov_clean(tmp_path: Path) -> None:
    """No failed check on the chart (checkov's own helm render, default values), on the rendered
    everything-on manifests and on the Dockerfile; every skip carries its reason."""
    rendered = tmp_path / "all-on.yaml"
    rendered.write_text(render_text("-f", str(ALL_ON)))
    reports = [
        *_checkov("-d", str(CHART), "--framework", "helm"),
        *_checkov("-f", str(rendered), "--framework", "kubernetes"),
        *_checkov("-f", str(ROOT / "Dockerfile"), "--framework", "dockerfile"),
    ]
    passed = 0
    for report in reports:
        results = report.get("results", {})
        failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results.get("failed_checks", [])]
        assert not failed, f"{report.get('check_type')}:\n" + "\n".join(failed)
        for skipped in results.get("skipped_checks", []):
            reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason) > 40 and reason != "No comment provided", skipped["check_id"]
        assert report["summary"]["failed"] == 0
        passed += report["summary"]["passed"]
    assert passed > 500
