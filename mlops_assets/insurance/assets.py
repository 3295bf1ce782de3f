"""The insurance pipeline: policies table -> Ray Tune search -> champion of `insurance_charges`."""

import dagster as dg
import mlflow
import pandas as pd
from mlflow.models import infer_signature
from sklearn.metrics import mean_absolute_error

from mlops_assets.constants import INSURANCE_GROUP, INSURANCE_MODEL_NAME
from mlops_assets.insurance.dataset import PolicySchemaError, validate_policies
from mlops_assets.insurance.families import FEATURES, SKOPS_TRUSTED_TYPES, TARGET, Split, split_policies
from mlops_assets.insurance.search import fit_and_score, insurance_trial, median_baseline_mae, search_space
from mlops_assets.insurance.source import PolicySource
from mlops_assets.ml.compiled_parity import log_compiled_parity
from mlops_assets.promotion.registry_promotion import champion_asset, promote_tuned_model
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource
from mlops_assets.tuning.runner import run_search
from mlops_assets.tuning.search_asset import search_asset
from mlops_assets.tuning.tuned_model import TunedModel

MAX_REJECTED_SHOWN = 20
INSURANCE_EXPERIMENT = "insurance_charges"


@dg.asset(
    group_name=INSURANCE_GROUP,
    kinds={"python", "sql"},
    owners=["team:pricing"],
    description="Policy records from INSURANCE_CSV_PATH (or the synthetic sample), validated row by row.",
)
def insurance_policies(policy_source: PolicySource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    try:
        raw = policy_source.load()
    except PolicySchemaError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    checked = validate_policies(raw)
    if checked.valid.empty:
        raise dg.Failure(
            f"{policy_source.name}: no valid policy among {len(raw)} rows; first problems: "
            + "; ".join(f"line {r.line}: {', '.join(r.problems)}" for r in checked.rejected[:5]),
            allow_retries=False,
        )
    stored = warehouse.replace_policies(policy_source.name, checked.valid)
    rejected = [{"line": r.line, "problems": r.problems} for r in checked.rejected[:MAX_REJECTED_SHOWN]]
    return dg.MaterializeResult(
        metadata={
            "source": policy_source.name,
            "synthetic_sample": dg.MetadataValue.bool(policy_source.is_synthetic),
            "rows_read": len(raw),
            "dagster/row_count": stored,
            "rows_rejected": len(checked.rejected),
            "rejected_rows": dg.MetadataValue.json(rejected),
            "preview": dg.MetadataValue.md(checked.valid.head(5).to_markdown(index=False)),
        }
    )


def insurance_holdout(warehouse: WarehouseResource) -> Split:
    """The seeded 80/20 split of the stored policies: every run rebuilds the same one from the warehouse."""
    policies = warehouse.read_policies()
    if policies.empty:
        raise dg.Failure("no policies stored: materialize insurance_policies first", allow_retries=False)
    return split_policies(policies)


@search_asset(
    group_name=INSURANCE_GROUP,
    deps=[insurance_policies],
    owners=["team:pricing"],
    description="Ray Tune search over gradient boosting and a linear model with interactions (80/20 seeded split).",
)
def insurance_tuned_model(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, tuning: TuningResource, registry: MlflowRegistry
) -> TunedModel:
    outer = insurance_holdout(warehouse)
    tags = {"dagster_run_id": context.run_id, "dagster_asset": "insurance_tuned_model"}
    with registry.parent_run(INSURANCE_EXPERIMENT, f"insurance_tuned_model {context.run_id[:8]}", tags) as parent:
        return _search(context, outer, tuning, registry, parent.info.run_id, parent.info.experiment_id)


def _search(
    context: dg.AssetExecutionContext,
    outer: Split,
    tuning: TuningResource,
    registry: MlflowRegistry,
    parent_run_id: str,
    experiment_id: str,
) -> TunedModel:
    inner = split_policies(outer.train, seed=43)  # validation for the search, carved from train only
    space, default_samples = search_space(quick=tuning.search == "quick")
    outcome = run_search(
        insurance_trial,
        space,
        tuning.settings(default_samples=default_samples),
        metric="val_mae",
        tracking_uri=registry.tracking_uri,
        experiment_name=INSURANCE_EXPERIMENT,
        parent_run_id=parent_run_id,
        run_tags={"dagster_run_id": context.run_id, "pipeline": INSURANCE_MODEL_NAME},
        trainable_kwargs={"train": inner.train, "validation": inner.test},
    )
    refit = fit_and_score(outcome.best.config, outer.train, outer.test)  # refit on all of train, score test once
    baselines = {"median": median_baseline_mae(outer.train, outer.test)}
    example = outer.test[list(FEATURES)].head(1)
    mlflow.log_params({f"best_{k}": v for k, v in outcome.best.config.items()})
    mlflow.log_metrics(
        {"test_mae": refit.mae, "test_r2": refit.r2, "best_val_mae": outcome.best.metrics["val_mae"], "test_mae_median": baselines["median"]}
    )
    model_info = mlflow.sklearn.log_model(
        sk_model=refit.model,
        name="model",
        signature=infer_signature(example, refit.model.predict(example)),
        input_example=example,
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
    )
    parity = log_compiled_parity(refit.model, outer.test[list(FEATURES)])
    context.add_output_metadata(
        {
            **parity,
            "mlflow_run_id": parent_run_id,
            "mlflow_run": dg.MetadataValue.url(registry.run_url(experiment_id, parent_run_id)),
            "family": str(outcome.best.config.get("family")),
            "trials": len(outcome.trials),
            "search_seconds": round(outcome.wall_seconds, 1),
            "val_mae": round(outcome.best.metrics["val_mae"], 1),
            "test_mae": round(refit.mae, 1),
            "test_r2": round(refit.r2, 4),
            "test_mae_median_baseline": round(baselines["median"], 1),
            "rows_train": len(outer.train),
            "rows_test": len(outer.test),
        }
    )
    return TunedModel(
        run_id=parent_run_id,
        experiment_id=experiment_id,
        model_uri=model_info.model_uri,
        family=str(outcome.best.config.get("family")),
        config=dict(outcome.best.config),
        metric="test_mae",
        val_score=outcome.best.metrics["val_mae"],
        test_score=refit.mae,
        baselines=baselines,
        details={"test_r2": round(refit.r2, 4)},
        trials=len(outcome.trials),
        search_seconds=outcome.wall_seconds,
    )


@champion_asset(group_name=INSURANCE_GROUP, model_name=INSURANCE_MODEL_NAME, owners=["team:pricing"])
def insurance_champion_model(
    context: dg.AssetExecutionContext, insurance_tuned_model: TunedModel, warehouse: WarehouseResource, registry: MlflowRegistry
) -> dg.MaterializeResult:
    holdout = insurance_holdout(warehouse)
    _, metadata = promote_tuned_model(
        context,
        registry,
        INSURANCE_MODEL_NAME,
        insurance_tuned_model,
        score_model=lambda model_uri: insurance_test_mae(registry, model_uri, holdout.test),
        baselines={"median": median_baseline_mae(holdout.train, holdout.test)},
    )
    return dg.MaterializeResult(metadata=metadata)


def insurance_test_mae(registry: MlflowRegistry, model_uri: str, test: pd.DataFrame) -> float:
    """Test MAE of a logged or registered model on this holdout (stored scores are not trusted)."""
    registry.activate()
    model = mlflow.sklearn.load_model(model_uri)
    return float(mean_absolute_error(test[TARGET], model.predict(test[list(FEATURES)])))
