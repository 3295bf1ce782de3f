"""The chart's wiring of the prediction log and the alert webhook (helm/mlops-assets).

The serving pods reach the warehouse exactly like the Dagster code server: the container runs
`python3 <scripts>/with_db_urls.py mlops-assets serve ...`, which composes WAREHOUSE_URL from the
app-env ConfigMap's WAREHOUSE_DB_* parts and WAREHOUSE_DB_PASSWORD (a secretKeyRef), or the pod
gets WAREHOUSE_URL whole from `warehouse.existingUrlSecret`. `serving.predictionLog.enabled` sets
SERVING_PREDICTION_LOG; `dagster.alertWebhookUrl` gives ALERT_WEBHOOK_URL (secretKeyRef only) to
the code server, which evaluates the sensors, and to the run pods.

Rendered with the real helm (`.ci/install_chart_tools.sh`); the rendered serving command is also
run for real against the local PostgreSQL server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_assets_tests.test_helm_chart import (
    ALL_ON,
    FULLNAME,
    PG,
    _env_lists,
    _script_from_chart,
    all_on_docs,  # noqa: F401  (fixture)
    containers,
    default_docs,  # noqa: F401  (fixture)
    env_of,
    find,
    needs_helm,
    pod_specs,
    render,
    render_text,
    run_k8s_config,
    scratch_database,  # noqa: F401  (fixture)
    variant,  # noqa: F401  (fixture)
)

SCRIPT = "/opt/mlops/scripts/with_db_urls.py"
PARTS = ("WAREHOUSE_DB_HOST", "WAREHOUSE_DB_PORT", "WAREHOUSE_DB_USER", "WAREHOUSE_DB_NAME")
PG_SECRET = {"name": "mlops-assets-postgres", "key": "password"}


def _serving(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Deployment", f"{FULLNAME}-serving")


def _serving_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = _serving(docs)["spec"]["template"]["spec"]["containers"]
    return c


def _code_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = find(docs, "Deployment", f"{FULLNAME}-dagster-code")["spec"]["template"]["spec"]["containers"]
    return c


def _configmap_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    return find(docs, "ConfigMap", name).get("data", {})


def _resolve_env(docs: list[dict[str, Any]], c: dict[str, Any], secrets: dict[tuple[str, str], str]) -> dict[str, str]:
    """The environment Kubernetes would give container `c`: envFrom ConfigMaps, then env entries
    (values, configMapKeyRefs from the rendered ConfigMaps, secretKeyRefs from `secrets`)."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(_configmap_data(docs, source["configMapRef"]["name"]))
    for entry in c.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = entry["valueFrom"]
        if "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            data = _configmap_data(docs, r["name"])
            assert r["key"] in data or r.get("optional"), f"{entry['name']}: ConfigMap {r['name']} lacks {r['key']}"
            if r["key"] in data:
                env[entry["name"]] = data[r["key"]]
        elif "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            env[entry["name"]] = secrets[(r["name"], r["key"])]
        else:
            raise AssertionError(f"unexpected valueFrom in {entry}")
    return env


def _run_wrapped(args: list[str], env: dict[str, str], probe: str) -> str:
    """Run the rendered args with the chart's script, the server command replaced by `probe`."""
    assert args[:2] == ["python3", SCRIPT], args
    command = [sys.executable, str(_script_from_chart()), sys.executable, "-c", probe]
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    result = subprocess.run(command, env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


# ----------------------------------------------------------------- command and volumes


def test_serving_command_wrapped_and_scripts_mounted(variant: tuple[str, list[dict[str, Any]]]) -> None:  # noqa: F811
    _, docs = variant
    deployment = _serving(docs)
    spec = deployment["spec"]["template"]["spec"]
    c = _serving_container(docs)
    assert c["args"][:4] == ["python3", SCRIPT, "mlops-assets", "serve"]
    assert "command" not in c  # the image's entrypoint is left alone, as on the code server
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["scripts"]["mountPath"] == str(Path(SCRIPT).parent) and mounts["scripts"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["scripts"]["configMap"]["name"] == f"{FULLNAME}-scripts"
    assert volumes["scripts"]["configMap"]["defaultMode"] == 0o555
    # Same script, same mount as the code server.
    code = _code_container(docs)
    assert code["args"][:2] == c["args"][:2]
    assert {m["name"]: m["mountPath"] for m in code["volumeMounts"]}["scripts"] == mounts["scripts"]["mountPath"]
    assert "with_db_urls.py" in _configmap_data(docs, f"{FULLNAME}-scripts")
    # The pods roll when the ConfigMap holding the warehouse parts changes.
    assert len(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]) == 64


# ------------------------------------------------------------------------ warehouse env


def test_serving_warehouse_env_by_refs_only(variant: tuple[str, list[dict[str, Any]]]) -> None:  # noqa: F811
    name, docs = variant
    env = env_of(_serving_container(docs))
    assert env["WAREHOUSE_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == PG_SECRET
    assert "value" not in env["WAREHOUSE_DB_PASSWORD"]
    assert "WAREHOUSE_URL" not in env  # composed at start, never a manifest value
    parts = PARTS + (("WAREHOUSE_DB_PARAMS",) if name == "all-on" else ())
    app_env = _configmap_data(docs, f"{FULLNAME}-app-env")
    for part in parts:
        ref = env[part]["valueFrom"]["configMapKeyRef"]
        assert ref == {"name": f"{FULLNAME}-app-env", "key": part}
        assert part in app_env, f"{part} referenced but not in the ConfigMap: the pod would not start"
    assert ("WAREHOUSE_DB_PARAMS" in env) == (name == "all-on")  # sslMode: disable in all-on
    # No Secret is created by the chart: the password is nowhere in the render.
    assert not any(d["kind"] == "Secret" for d in docs)


def test_serving_and_code_server_compose_the_same_url(variant: tuple[str, list[dict[str, Any]]]) -> None:  # noqa: F811
    """The rendered environments of both containers, resolved as Kubernetes would and run
    through the chart's script: the same WAREHOUSE_URL, password percent-encoded."""
    _, docs = variant
    secrets = {
        ("mlops-assets-postgres", "password"): "p@ss:w/rd",
        ("mlops-assets-kma", "service-key"): "k",
        ("mlops-assets-serving", "token"): "t",
        ("mlops-assets-alerts", "url"): "https://hooks.example/x",
    }
    probe = "import os; print(os.environ['WAREHOUSE_URL'])"
    urls = {
        label: _run_wrapped(c["args"], _resolve_env(docs, c, secrets), probe)
        for label, c in (("serving", _serving_container(docs)), ("code", _code_container(docs)))
    }
    assert urls["serving"] == urls["code"]
    assert urls["serving"].startswith("postgresql+psycopg2://mlops:p%40ss%3Aw%2Frd@")
    assert "/warehouse" in urls["serving"]


@pytest.mark.postgres
@needs_helm
def test_rendered_serving_process_reaches_the_warehouse(scratch_database: str) -> None:  # noqa: F811
    """The serving container's args and env as rendered (pointed at the local PostgreSQL), run
    here: the process after the start script reads ServingSettings with the prediction log on
    and a postgres WAREHOUSE_URL, and creates served_forecasts in that database."""
    docs = render(
        "--set",
        f"postgresql.host={PG['host']}",
        "--set",
        f"postgresql.port={PG['port']}",
        "--set",
        f"postgresql.auth.username={PG['user']}",
        "--set",
        f"postgresql.databases.warehouse={scratch_database}",
    )
    c = _serving_container(docs)
    env = _resolve_env(docs, c, {("mlops-assets-postgres", "password"): PG.get("password", "unused/with:trust")})
    probe = (
        "import sqlalchemy as sa\n"
        "from serving.settings import ServingSettings\n"
        "from mlops_assets.monitoring.served_log import create_warehouse_engine, ensure_tables\n"
        "s = ServingSettings.from_env()\n"
        "assert s.prediction_log is True, s\n"
        "engine = create_warehouse_engine(s.warehouse_url)\n"
        "ensure_tables(engine)\n"
        "with engine.connect() as conn:\n"
        "    print(engine.url.database, conn.execute(sa.text('select count(*) from served_forecasts')).scalar())\n"
        "engine.dispose()\n"
    )
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    assert _run_wrapped(c["args"], env, probe) == f"{scratch_database} 0"
    import psycopg2

    conn = psycopg2.connect(dbname=scratch_database, **PG)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT to_regclass('public.served_forecasts') IS NOT NULL")
            assert cursor.fetchone() == (True,)
    finally:
        conn.close()


@needs_helm
def test_serving_takes_warehouse_url_from_its_own_secret() -> None:
    docs = render("--set", "warehouse.existingUrlSecret=warehouse-url", "--set", "warehouse.existingUrlSecretKey=dsn")
    env = env_of(_serving_container(docs))
    assert env["WAREHOUSE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "warehouse-url", "key": "dsn"}
    assert not {"WAREHOUSE_DB_PASSWORD", *PARTS} & set(env)
    assert env_of(_code_container(docs))["WAREHOUSE_URL"] == env["WAREHOUSE_URL"]
    # The script leaves a URL that is already set alone.
    secrets = {("warehouse-url", "dsn"): "postgresql+psycopg2://u:p@db.elsewhere:5432/wh"}
    out = _run_wrapped(
        _serving_container(docs)["args"],
        _resolve_env(docs, _serving_container(docs), secrets),
        "import os; print(os.environ['WAREHOUSE_URL'])",
    )
    assert out == "postgresql+psycopg2://u:p@db.elsewhere:5432/wh"


@needs_helm
@pytest.mark.parametrize(
    "sets",
    [
        ("dagster.enabled=false",),
        ("dagster.enabled=false", "mlflow.enabled=false", "mlflow.trackingUri=https://mlflow.corp.example"),
    ],
    ids=["no-dagster", "serving-only"],
)
def test_serving_alone_has_its_configmaps(sets: tuple[str, ...]) -> None:
    """Every ConfigMap a pod refers to is rendered, even when serving is the only workload."""
    docs = render(*[arg for s in sets for arg in ("--set", s)])
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    assert {f"{FULLNAME}-app-env", f"{FULLNAME}-scripts"} <= configmaps
    for label, spec in pod_specs(docs):
        referenced = {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
        for c in containers(spec):
            referenced |= {s["configMapRef"]["name"] for s in c.get("envFrom", []) if "configMapRef" in s}
            referenced |= {
                e["valueFrom"]["configMapKeyRef"]["name"]
                for e in c.get("env", [])
                if "configMapKeyRef" in e.get("valueFrom", {})
            }
        assert referenced <= configmaps, f"{label}: missing {referenced - configmaps}"
    _serving(docs)


# ------------------------------------------------------------------- prediction log switch


@needs_helm
@pytest.mark.parametrize(("value", "expected"), [(None, "on"), ("true", "on"), ("false", "off")])
def test_prediction_log_switch(value: str | None, expected: str) -> None:
    args = () if value is None else ("--set", f"serving.predictionLog.enabled={value}")
    env = env_of(_serving_container(render(*args)))
    assert env["SERVING_PREDICTION_LOG"] == {"name": "SERVING_PREDICTION_LOG", "value": expected}
    from serving.prediction_log import prediction_log_enabled

    assert prediction_log_enabled(expected) is (expected == "on")  # the service accepts the value


def test_prediction_log_on_in_all_on(all_on_docs: list[dict[str, Any]]) -> None:  # noqa: F811
    assert env_of(_serving_container(all_on_docs))["SERVING_PREDICTION_LOG"]["value"] == "on"


@needs_helm
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("serving.predictionLog.enabled=maybe",), "/serving/predictionLog/enabled"),
        (("serving.predictionLog.verbose=true",), "additional properties 'verbose' not allowed"),
        (("dagster.alertWebhookUrl.existingSecret=Bad_Name",), "/dagster/alertWebhookUrl/existingSecret"),
        (("dagster.alertWebhookUrl.url=https://hooks.example/x",), "additional properties 'url' not allowed"),
    ],
)
def test_new_values_checked_by_schema(sets: tuple[str, ...], message: str) -> None:
    from mlops_assets_tests.test_helm_chart import CHART, NAMESPACE, RELEASE, helm

    result = helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *[arg for s in sets for arg in ("--set", s)]
    )
    assert result.returncode != 0, f"{sets} rendered"
    assert message in result.stderr, result.stderr


# ---------------------------------------------------------------------- alert webhook


def _webhook_entries(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {where: entry for where, env in _env_lists(docs) for entry in env if entry["name"] == "ALERT_WEBHOOK_URL"}


def test_alert_webhook_only_when_configured(variant: tuple[str, list[dict[str, Any]]]) -> None:  # noqa: F811
    name, docs = variant
    entries = _webhook_entries(docs)
    if name == "default":
        assert entries == {}
        assert "ALERT_WEBHOOK_URL" not in render_text()
        return
    code = f"Deployment/{FULLNAME}-dagster-code/code-server"
    # The code server evaluates the sensors (the daemon asks it over gRPC); runs get it too.
    assert set(entries) == {code, "run pods (dagster.yaml)"}
    for entry in entries.values():
        assert entry == {
            "name": "ALERT_WEBHOOK_URL",
            "valueFrom": {"secretKeyRef": {"name": "mlops-assets-alerts", "key": "url"}},
        }
    workspace = yaml.safe_load(_configmap_data(docs, f"{FULLNAME}-dagster-workspace")["workspace.yaml"])
    assert "grpc_server" in workspace["load_from"][0]  # so the daemon does not run sensor code itself


@needs_helm
def test_alert_webhook_key_and_run_pod_env() -> None:
    docs = render(
        "--set", "dagster.alertWebhookUrl.existingSecret=team-hooks", "--set", "dagster.alertWebhookUrl.key=slack"
    )
    ref = {"secretKeyRef": {"name": "team-hooks", "key": "slack"}}
    assert env_of(_code_container(docs))["ALERT_WEBHOOK_URL"]["valueFrom"] == ref
    run_env = {e["name"]: e for e in run_k8s_config(docs)["container_config"]["env"]}
    assert run_env["ALERT_WEBHOOK_URL"]["valueFrom"] == ref
    assert "ALERT_WEBHOOK_URL" not in env_of(_serving_container(docs))
    # The key alone does nothing without a Secret name.
    assert _webhook_entries(render("--set", "dagster.alertWebhookUrl.key=slack")) == {}


# ------------------------------------------------------------------- network policies


@needs_helm
def test_network_policies_let_serving_reach_postgres() -> None:
    """Policies are ingress-only (serving's egress is open) and the in-cluster PostgreSQL admits
    this release's pods, serving's among them."""
    docs = render("--set", "postgresql.enabled=true")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies and all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
    serving_labels = _serving(docs)["spec"]["template"]["metadata"]["labels"]
    pg = find(docs, "NetworkPolicy", f"{FULLNAME}-postgresql")
    (rule,) = pg["spec"]["ingress"]
    assert {"port": 5432, "protocol": "TCP"} in rule["ports"]
    assert any(
        set(peer["podSelector"]["matchLabels"].items()) <= set(serving_labels.items())
        for peer in rule["from"]
        if "podSelector" in peer and "namespaceSelector" not in peer
    )


def test_all_on_values_cover_the_new_keys() -> None:
    values = yaml.safe_load(ALL_ON.read_text())
    assert values["dagster"]["alertWebhookUrl"]["existingSecret"] == "mlops-assets-alerts"
    assert values["serving"]["predictionLog"]["enabled"] is True
