"""MLflow runs and logged models addressed by id through an `MlflowClient`: no process-wide state.

MLflow's fluent API (`start_run`, `log_params` and the like, `sklearn.log_model`, loading a
`models:/` URI) writes to and reads from the tracking URI and the active run the process holds:
two searches in one process (the main command runs three pipelines), or a test and the code it
tests, would share them. Every call here names its store, and every write names its run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunStatus, RunTag
from mlflow.entities.lifecycle_stage import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.tracking.context.registry import resolve_tags

#: Name of the logged model a search's refit leaves in its run.
MODEL_NAME = "model"


def is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def prepare_local_store(uri: str) -> None:
    """Create the folder of an embedded SQLite store (MLflow does not)."""
    if is_local_sqlite(uri):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def tracking_client(tracking_uri: str) -> mlflow.MlflowClient:
    """A client of one store for runs and registry alike (the project keeps both in one store)."""
    prepare_local_store(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@dataclass(frozen=True)
class MlflowRun:
    """One MLflow run, written to by its id: a search's parent run and everything its refit logs."""

    tracking_uri: str
    run_id: str
    experiment_id: str
    client: mlflow.MlflowClient = field(repr=False, compare=False)

    @classmethod
    def existing(cls, tracking_uri: str, run_id: str) -> MlflowRun:
        """A handle on a run created elsewhere (e.g. by a test or a benchmark)."""
        client = tracking_client(tracking_uri)
        return cls(tracking_uri, run_id, client.get_run(run_id).info.experiment_id, client)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_dict(self, dictionary: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, dictionary, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_sklearn_model(
        self,
        model: Any,
        *,
        input_example: Any,
        skops_trusted_types: list[str],
        metadata: dict[str, Any] | None = None,
        name: str = MODEL_NAME,
    ) -> ModelInfo:
        """Save with `mlflow.sklearn.save_model` and upload as a logged model of this run (`models:/m-...`).

        What `mlflow.sklearn.log_model` does, through the client: a PENDING logged model carrying
        the run's params, the run's output link, the run's metrics so far attached to the model,
        the files (signature inferred from the example, input example, skops trusted types,
        inferred pip requirements), then READY; FAILED if any of it raises.
        """
        signature = infer_signature(input_example, model.predict(input_example))
        params = {key: str(value) for key, value in self.client.get_run(self.run_id).data.params.items()}
        logged = self.client.create_logged_model(
            self.experiment_id, name=name, source_run_id=self.run_id, params=params
        )
        try:
            self.client.log_outputs(self.run_id, [LoggedModelOutput(logged.model_id, step=0)])
            self._attach_run_metrics(logged.model_id)
            mlflow_model = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=self.run_id,
                metadata=metadata,
                model_id=logged.model_id,
            )
            with tempfile.TemporaryDirectory(prefix="mlflow-model-") as folder:
                local = Path(folder) / name
                mlflow.sklearn.save_model(
                    model,
                    str(local),
                    mlflow_model=mlflow_model,
                    signature=signature,
                    input_example=input_example,
                    skops_trusted_types=skops_trusted_types,
                )
                self.client.log_model_artifacts(logged.model_id, str(local))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        ready = self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        return mlflow_model.get_model_info(ready)

    def _attach_run_metrics(self, model_id: str) -> None:
        """The run's step-0 metrics, logged again with the model's id (as `Model.log` does for the UI)."""
        history = [
            metric
            for key in self.client.get_run(self.run_id).data.metrics
            for metric in self.client.get_metric_history(self.run_id, key)
            if metric.step == 0 and metric.model_id is None
        ]
        if history:
            linked = [
                Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=self.run_id) for m in history
            ]
            self.client.log_batch(self.run_id, metrics=linked)


def experiment_id(client: mlflow.MlflowClient, name: str) -> str:
    """The id of the active experiment `name`, created when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by another process
            if experiment is None:
                raise
    if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
        raise MlflowException(
            f"MLflow experiment {name!r} ({experiment.experiment_id}) is deleted: restore it or delete it permanently"
        )
    return experiment.experiment_id


@contextmanager
def open_run(tracking_uri: str, experiment_name: str, run_name: str, tags: Mapping[str, str]) -> Iterator[MlflowRun]:
    """A new run in `experiment_name` (created if missing), FINISHED after the block, FAILED if it raises.

    The tags are completed with the ones the fluent `start_run` adds (user, source, git commit).
    """
    client = tracking_client(tracking_uri)
    experiment = experiment_id(client, experiment_name)
    created = client.create_run(experiment, run_name=run_name, tags=resolve_tags(dict(tags)))
    run = MlflowRun(tracking_uri, created.info.run_id, experiment, client)
    try:
        yield run
    except BaseException:
        client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run.run_id, RunStatus.to_string(RunStatus.FINISHED))


def model_artifact_location(client: mlflow.MlflowClient, model_uri: str) -> str:
    """Where the files of `models:/<model_id>`, `models:/<name>/<version>` or `models:/<name>@<alias>` are.

    MLflow resolves a `models:/` URI with the process-wide registry URI whatever tracking URI a
    download is given (`ModelsArtifactRepository._get_model_uri_infos`), so it is resolved here
    with the client of the named store.
    """
    if not model_uri.startswith("models:/"):
        raise ValueError(f"expected a models:/ URI, got {model_uri!r}")
    reference = model_uri.removeprefix("models:/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in reference:
        name, number = reference.split("/", 1)
        version = client.get_model_version(name, number)
    else:
        return client.get_logged_model(reference).artifact_location
    if version.model_id:
        return client.get_logged_model(version.model_id).artifact_location
    return client.get_model_version_download_uri(version.name, version.version)


@contextmanager
def downloaded_model(tracking_uri: str, model_uri: str) -> Iterator[Path]:
    """The files of a logged or registered model of this store, in a folder deleted after the block.

    MLflow's loaders (`mlflow.sklearn.load_model`, `mlflow.models.get_model_info`) take no
    tracking URI; given this local folder they need none.
    """
    location = model_artifact_location(tracking_client(tracking_uri), model_uri)
    with tempfile.TemporaryDirectory(prefix="mlflow-model-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=folder, tracking_uri=tracking_uri)
        yield Path(local)


def load_sklearn_model(tracking_uri: str, model_uri: str) -> Any:
    """The estimator of a logged or registered model of this store."""
    with downloaded_model(tracking_uri, model_uri) as local:
        return mlflow.sklearn.load_model(str(local))


def model_metadata(tracking_uri: str, model_uri: str) -> dict[str, Any]:
    """The `metadata` of a logged or registered model's MLmodel file (only that file is downloaded)."""
    location = model_artifact_location(tracking_client(tracking_uri), model_uri)
    with tempfile.TemporaryDirectory(prefix="mlflow-mlmodel-") as folder:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/MLmodel", dst_path=folder, tracking_uri=tracking_uri
        )
        return dict(Model.load(path).metadata or {})
