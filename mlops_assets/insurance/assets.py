"""The insurance pipeline: policies table -> Ray Tune search -> champion of `insurance_charges`."""

from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import mlflow
import pandas as pd
from mlflow.models import infer_signature
from sklearn.metrics import mean_absolute_error

from mlops_assets.constants import CHAMPION_ALIAS, INSURANCE_GROUP, INSURANCE_MODEL_NAME
from mlops_assets.insurance.policies import PolicySchemaError, validate_policies
from mlops_assets.insurance.search import fit_and_score, insurance_trial, median_baseline_mae
from mlops_assets.insurance.sources import PolicySource
from mlops_assets.ml.insurance import FEATURES, SKOPS_TRUSTED_TYPES, TARGET, search_space, split_policies
from mlops_assets.promotion.registry_promotion import Challenger, promote_if_better
from mlops_assets.resources.mlflow_registry import MlflowRegistry, TrackingServerUnavailable
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.training.resources import TuningResource
from mlops_assets.training.tuning import run_search

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


@dataclass(frozen=True)
class InsuranceTunedModel:
    run_id: str
    experiment_id: str
    model_uri: str
    config: dict[str, Any]
    val_mae: float
    test_mae: float
    test_r2: float
    baselines: dict[str, float]
    test: pd.DataFrame = field(repr=False)
    trials: int = 0


@dg.asset(
    group_name=INSURANCE_GROUP,
    deps=[insurance_policies],
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"ray", "mlflow", "scikitlearn"},
    owners=["team:pricing"],
    description="Ray Tune search over gradient boosting and a linear model with interactions (80/20 seeded split).",
)
def insurance_tuned_model(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, tuning: TuningResource, registry: MlflowRegistry
) -> InsuranceTunedModel:
    tags = {"dagster_run_id": context.run_id, "dagster_asset": "insurance_tuned_model"}
    try:
        with registry.parent_run(INSURANCE_EXPERIMENT, f"insurance_tuned_model {context.run_id[:8]}", tags) as parent:
            return _search(context, warehouse, tuning, registry, parent.info.run_id, parent.info.experiment_id)
    except TrackingServerUnavailable as error:
        raise dg.Failure(str(error), allow_retries=False) from error


def _search(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    tuning: TuningResource,
    registry: MlflowRegistry,
    parent_run_id: str,
    experiment_id: str,
) -> InsuranceTunedModel:
    policies = warehouse.read_policies()
    outer = split_policies(policies)
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
    context.add_output_metadata(
        {
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
    return InsuranceTunedModel(
        run_id=parent_run_id,
        experiment_id=experiment_id,
        model_uri=model_info.model_uri,
        config=dict(outcome.best.config),
        val_mae=outcome.best.metrics["val_mae"],
        test_mae=refit.mae,
        test_r2=refit.r2,
        baselines=baselines,
        test=outer.test,
        trials=len(outcome.trials),
    )


@dg.asset(
    group_name=INSURANCE_GROUP,
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"mlflow"},
    owners=["team:pricing"],
    description=f"Registers the challenger as a version of '{INSURANCE_MODEL_NAME}'; moves '{CHAMPION_ALIAS}' only if it wins.",
)
def insurance_champion_model(
    context: dg.AssetExecutionContext, insurance_tuned_model: InsuranceTunedModel, registry: MlflowRegistry
) -> dg.MaterializeResult:
    tuned = insurance_tuned_model
    challenger = Challenger(
        model_uri=tuned.model_uri,
        run_id=tuned.run_id,
        experiment_id=tuned.experiment_id,
        score=tuned.test_mae,
        baselines=tuned.baselines,
        tags={"test_r2": round(tuned.test_r2, 4), "val_mae": round(tuned.val_mae, 2), "family": tuned.config.get("family"), "dagster_run_id": context.run_id},
    )
    outcome = promote_if_better(
        registry, INSURANCE_MODEL_NAME, challenger, rescore_champion=lambda v: rescore_insurance(registry, v, tuned.test), metric="test_mae"
    )
    context.log.info(f"v{outcome.registered_version}: {outcome.decision.reason}")
    metadata = outcome.metadata(registry, challenger, INSURANCE_MODEL_NAME, "test_mae")
    metadata["test_r2"] = round(tuned.test_r2, 4)
    return dg.MaterializeResult(metadata=metadata)


def rescore_insurance(registry: MlflowRegistry, version: str, test: pd.DataFrame) -> float:
    """Test MAE of a registered version on this holdout (its stored tags are not trusted)."""
    registry.activate()
    model = mlflow.sklearn.load_model(f"models:/{INSURANCE_MODEL_NAME}/{version}")
    return float(mean_absolute_error(test[TARGET], model.predict(test[list(FEATURES)])))


@dg.asset_check(asset=insurance_tuned_model, blocking=True, description="beats predicting the median; R^2 positive")
def insurance_tuned_model_beats_baseline(insurance_tuned_model: InsuranceTunedModel) -> dg.AssetCheckResult:
    tuned = insurance_tuned_model
    passed = tuned.test_mae < tuned.baselines["median"] and tuned.test_r2 > 0
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"test_mae": round(tuned.test_mae, 1), "median_baseline": round(tuned.baselines["median"], 1), "test_r2": round(tuned.test_r2, 4)},
    )
