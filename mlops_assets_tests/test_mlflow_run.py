"""The explicit-run MLflow helper against a real SQLite store: nothing process-wide is read or left set."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from sklearn.linear_model import Ridge

from mlops_assets.plots import new_figure
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.mlflow_run import downloaded_model, model_metadata, open_run, tracking_client

MODEL = "helper_model"


@pytest.fixture
def fitted() -> tuple[Ridge, np.ndarray]:
    features = np.random.default_rng(0).normal(size=(40, 3))
    return Ridge().fit(features, features @ np.array([1.0, -2.0, 0.5])), features


def test_a_run_is_written_by_id_and_ends_finished_or_failed(mlflow_uri: str, tmp_path: Path) -> None:
    uri_before = mlflow.get_tracking_uri()
    with open_run(mlflow_uri, "helper", "ok", {"dagster_run_id": "r1"}) as run:
        run.log_params({"alpha": 1.0, "family": "ridge"})
        run.log_metrics({"test_mae": 0.25, "trials": 3})
        run.set_tags({"compiled_as": "none"})
        run.log_dict({"a": 1}, "split.json")
        run.log_text("hello", "notes/hello.txt")
        figure, axes = new_figure()
        axes.plot([0, 1], [1, 0])
        run.log_figure(figure, "plot.png")
        (tmp_path / "extra").mkdir()
        (tmp_path / "extra" / "f.txt").write_text("x")
        run.log_artifacts(tmp_path / "extra", "extra")
        assert mlflow.active_run() is None  # nothing fluent was started
    with pytest.raises(RuntimeError, match="boom"), open_run(mlflow_uri, "helper", "bad", {}) as failed:
        raise RuntimeError("boom")

    assert mlflow.get_tracking_uri() == uri_before
    client = tracking_client(mlflow_uri)
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED" and stored.info.run_name == "ok"
    assert stored.data.params == {"alpha": "1.0", "family": "ridge"}
    assert stored.data.metrics == {"test_mae": 0.25, "trials": 3.0}
    assert stored.data.tags["dagster_run_id"] == "r1" and stored.data.tags["compiled_as"] == "none"
    assert "mlflow.user" in stored.data.tags  # what the fluent start_run also records
    files = {artifact.path for artifact in client.list_artifacts(run.run_id)}
    assert {"split.json", "notes", "plot.png", "extra"} <= files
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert failed.experiment_id == run.experiment_id  # the experiment is found by name, not created twice


def test_a_logged_model_registers_and_loads_by_every_uri_form(
    mlflow_uri: str, fitted: tuple[Ridge, np.ndarray]
) -> None:
    model, features = fitted
    registry = MlflowRegistry(tracking_uri=mlflow_uri)
    with registry.parent_run("helper", "model", {}) as run:
        run.log_metrics({"test_mae": 0.1})
        info = run.log_sklearn_model(
            model, input_example=features[:1], skops_trusted_types=[], metadata={"purpose": "test"}
        )
    assert info.model_uri.startswith("models:/m-") and info.signature is not None

    client = registry.client()
    logged = client.get_logged_model(info.model_uri.removeprefix("models:/"))
    assert logged.status == LoggedModelStatus.READY and logged.source_run_id == run.run_id
    assert [metric.key for metric in logged.metrics or []] == ["test_mae"]
    assert [output.model_id for output in client.get_run(run.run_id).outputs.model_outputs] == [logged.model_id]

    version = registry.register(MODEL, info.model_uri, run.run_id, {"decision": "promoted"})
    registry.move_champion(MODEL, version.version)
    expected = model.predict(features)
    for uri in (info.model_uri, f"models:/{MODEL}/{version.version}", f"models:/{MODEL}@champion"):
        np.testing.assert_allclose(registry.load_sklearn_model(uri).predict(features), expected)
        assert model_metadata(mlflow_uri, uri) == {"purpose": "test"}
    with downloaded_model(mlflow_uri, info.model_uri) as local:
        assert (local / "MLmodel").exists() and (local / "input_example.json").exists()
        assert (local / "requirements.txt").read_text().strip()
    assert not local.exists()  # the download is temporary


def test_a_deleted_experiment_is_refused_not_reused(mlflow_uri: str) -> None:
    client = tracking_client(mlflow_uri)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(MlflowException, match=r"'gone' \(\d+\) is deleted"), open_run(mlflow_uri, "gone", "x", {}):
        pass
