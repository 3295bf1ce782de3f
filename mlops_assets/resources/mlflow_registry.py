"""A typed resource over MLflow: the parent run of a search, and the Model Registry (aliases only).

Why not dagster-mlflow's `mlflow_tracking` resource for the parent run: it keeps one global
active MLflow run per process, so two pipelines materialized in one Dagster run (the main
command runs both) log into each other's run. An explicit run per asset, tagged with the
Dagster run id, written to by its id and ended with the step's outcome (`mlflow_run.py`), does not
collide; models are loaded from this store by the same helper, never through a process-wide URI.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from pydantic import Field

from mlops_assets.constants import CHAMPION_ALIAS, DEFAULT_TRACKING_URI
from mlops_assets.registry_errors import is_missing_alias
from mlops_assets.resources.mlflow_run import MlflowRun, load_sklearn_model, open_run, tracking_client


class TrackingServerUnavailable(RuntimeError):
    """MLflow (or its database) cannot be reached: fail the run, promote nothing."""


class MlflowRegistry(dg.ConfigurableResource):
    """Registered models, versions, aliases and the experiment of a pipeline."""

    tracking_uri: str = Field(default=DEFAULT_TRACKING_URI, description="MLflow tracking URI")

    def client(self) -> mlflow.MlflowClient:
        return tracking_client(self.tracking_uri)

    def ensure_reachable(self) -> None:
        """Raise TrackingServerUnavailable with the cause, instead of a deep MLflow traceback."""
        try:
            self.client().search_experiments(max_results=1)
        except Exception as error:  # requests, SQLAlchemy and MLflow errors all mean "down"
            raise TrackingServerUnavailable(f"MLflow at {self.tracking_uri} is unreachable: {error}") from error

    @contextmanager
    def parent_run(self, experiment_name: str, run_name: str, tags: dict[str, str]) -> Iterator[MlflowRun]:
        """The run a search nests its trials under and its refit logs to; FAILED if the block raises.

        An unreachable store fails the step at once (another attempt of the same step cannot help).
        """
        try:
            self.ensure_reachable()
        except TrackingServerUnavailable as error:
            raise dg.Failure(str(error), allow_retries=False) from error
        with open_run(self.tracking_uri, experiment_name, run_name, tags) as run:
            yield run

    def load_sklearn_model(self, model_uri: str) -> Any:
        """The estimator of a logged (`models:/m-...`) or registered (`models:/<name>/<version>`) model."""
        return load_sklearn_model(self.tracking_uri, model_uri)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        base = self.tracking_uri if self.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def champion(self, model_name: str) -> ModelVersion | None:
        """The version behind alias `champion`, or None when there is none yet."""
        try:
            return self.client().get_model_version_by_alias(model_name, CHAMPION_ALIAS)
        except MlflowException as error:
            if is_missing_alias(error):
                return None
            raise

    def register(self, model_name: str, model_uri: str, run_id: str, tags: dict[str, Any]) -> ModelVersion:
        """A new version of `model_name` from a logged model (`models:/<model_id>`), tags stringified."""
        if not model_uri.startswith("models:/m-"):
            raise ValueError(f"register a logged model (models:/<model_id>), not {model_uri!r}")
        client = self.client()
        try:
            client.get_registered_model(model_name)
        except MlflowException:
            client.create_registered_model(model_name, description="Promoted by mlops-assets; serve alias 'champion'.")
        model_id = model_uri.removeprefix("models:/")
        # The logged model's own artifact location, not `models:/<id>`: for that form MLflow's store
        # looks the model up through the process-wide tracking URI (a TODO in mlflow's
        # SqlAlchemyStore.create_model_version), i.e. whatever store some earlier code activated.
        version = client.create_model_version(
            model_name,
            client.get_logged_model(model_id).artifact_location,
            run_id=run_id,
            tags={k: str(v) for k, v in tags.items()},
            model_id=model_id,
        )
        return version

    def tag_version(self, model_name: str, version: str, tags: dict[str, Any]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, str(value))

    def move_champion(self, model_name: str, version: str) -> None:
        self.client().set_registered_model_alias(model_name, CHAMPION_ALIAS, version)

    def version(self, model_name: str, version: str) -> ModelVersion:
        return self.client().get_model_version(model_name, version)
