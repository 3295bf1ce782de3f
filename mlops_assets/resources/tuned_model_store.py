"""An I/O manager that keeps each `*_tuned_model` output in its MLflow parent run, not on local disk.

A Dagster run on Kubernetes lives in its own pod with a throw-away disk, so a pickled output is
gone when the pod is. The tuned model is small (where the model is and how it scored): it is
written as `tuned_model.json` to the search's parent run and tagged with the asset key; a later
run, on any machine that reaches MLflow, loads the newest complete one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import dagster as dg
from mlflow.entities import ViewType

from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.tuning.tuned_model import TunedModel

#: The resource key the `*_tuned_model` assets name as their `io_manager_key`.
TUNED_MODEL_IO_MANAGER = "tuned_model_io_manager"
ARTIFACT = "tuned_model.json"
ASSET_TAG = "mlops.tuned_model_asset"


class TunedModelNotFound(RuntimeError):
    """No search has stored a tuned model for this asset yet."""


class MlflowTunedModelIOManager(dg.ConfigurableIOManager):
    """Stores a `TunedModel` in the MLflow run it describes; loads the newest one for the asset."""

    registry: MlflowRegistry

    def handle_output(self, context: dg.OutputContext, obj: TunedModel) -> None:
        if not isinstance(obj, TunedModel):
            raise TypeError(f"{context.asset_key.to_user_string()} must return a TunedModel, got {type(obj).__name__}")
        client = self.registry.client()
        client.log_dict(obj.run_id, obj.to_dict(), ARTIFACT)
        # The tag goes last: a run carrying it always has its artifact.
        client.set_tag(obj.run_id, ASSET_TAG, context.asset_key.to_user_string())
        context.add_output_metadata({"stored_in": f"mlflow run {obj.run_id} / {ARTIFACT}"})

    def load_input(self, context: dg.InputContext) -> TunedModel:
        asset = context.asset_key.to_user_string()
        tuned = self.latest(asset)
        context.log.info(f"loaded {asset} from MLflow run {tuned.run_id} ({tuned.model_uri})")
        return tuned

    def latest(self, asset: str) -> TunedModel:
        """The newest tuned model stored for `asset`, whichever run or machine stored it."""
        client = self.registry.client()
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
        runs = (
            client.search_runs(
                experiments,
                filter_string=f"tags.`{ASSET_TAG}` = '{asset}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if experiments
            else []
        )
        if not runs:
            raise TunedModelNotFound(
                f"no finished search has stored {asset} in MLflow at {self.registry.tracking_uri}: "
                f"materialize {asset} first"
            )
        with tempfile.TemporaryDirectory(prefix="tuned-model-") as folder:
            path = client.download_artifacts(runs[0].info.run_id, ARTIFACT, folder)
            return TunedModel.from_dict(json.loads(Path(path).read_text()))
