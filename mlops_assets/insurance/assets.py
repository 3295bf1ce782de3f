"""The insurance pipeline: policies table -> Ray Tune search -> champion of `insurance_charges`."""

from typing import Any

import dagster as dg
import pandas as pd
from sklearn.metrics import mean_absolute_error

from mlops_assets.constants import INSURANCE_GROUP, INSURANCE_MODEL_NAME
from mlops_assets.insurance.dataset import PolicySchemaError, validate_policies
from mlops_assets.insurance.families import FEATURES, SKOPS_TRUSTED_TYPES, TARGET, Split, split_policies
from mlops_assets.insurance.search import fit_and_score, insurance_trial, median_baseline_mae, search_space
from mlops_assets.insurance.source import PolicySource
from mlops_assets.promotion.registry_promotion import champion_asset, promote_tuned_model
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource
from mlops_assets.tuning.runner import SearchOutcome
from mlops_assets.tuning.search_asset import search_asset
from mlops_assets.tuning.search_step import Refit, Search, tuned_model_from_search
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
    inner = split_policies(outer.train, seed=43)  # validation for the search, carved from train only
    space, default_samples = search_space(quick=tuning.search == "quick")
    data = {"train": inner.train, "validation": inner.test}
    settings = tuning.settings(default_samples)
    search = Search(INSURANCE_EXPERIMENT, INSURANCE_MODEL_NAME, insurance_trial, space, settings, "val_mae", data)
    return tuned_model_from_search(context, registry, search, lambda outcome, config: _refit(outcome, config, outer))


def _refit(outcome: SearchOutcome, config: dict[str, Any], outer: Split) -> Refit:
    """Refit on all of train, score the test rows once."""
    refit = fit_and_score(config, outer.train, outer.test)
    median = median_baseline_mae(outer.train, outer.test)
    features = outer.test[list(FEATURES)]
    return Refit(
        refit.model,
        metric="test_mae",
        test_score=refit.mae,
        baselines={"median": median},
        metrics={"test_r2": refit.r2},
        input_example=features.head(1),
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        details={"test_r2": round(refit.r2, 4)},
        metadata={
            "val_mae": round(outcome.best.metrics["val_mae"], 1),
            "test_mae": round(refit.mae, 1),
            "test_r2": round(refit.r2, 4),
            "test_mae_median_baseline": round(median, 1),
            "rows_train": len(outer.train),
            "rows_test": len(outer.test),
        },
        parity_holdout=features,
    )


@champion_asset(group_name=INSURANCE_GROUP, model_name=INSURANCE_MODEL_NAME, owners=["team:pricing"])
def insurance_champion_model(
    context: dg.AssetExecutionContext,
    insurance_tuned_model: TunedModel,
    warehouse: WarehouseResource,
    registry: MlflowRegistry,
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
    model = registry.load_sklearn_model(model_uri)
    return float(mean_absolute_error(test[TARGET], model.predict(test[list(FEATURES)])))
