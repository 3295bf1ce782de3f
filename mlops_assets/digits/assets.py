"""The digits pipeline: image table -> Ray Tune search -> champion of `digit_classifier`.

Nothing passes between assets as a pickle: images go through the warehouse table `digit_images`,
the tuned model is a `TunedModel` (stored in its MLflow run by the `tuned_model_io_manager`), and
the champion step rebuilds the holdout from the table and scores both models it compares.
"""

import base64
import dataclasses
import json
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field

from mlops_assets.constants import DIGITS_GROUP, DIGITS_MODEL_NAME
from mlops_assets.digits.dataset import (
    CLASSES,
    DigitsDataError,
    DigitsSplit,
    LabelledDigits,
    split_digits,
    validation_split,
)
from mlops_assets.digits.families import KNOWN_GOOD, SKOPS_TRUSTED_TYPES, baselines, error_rate
from mlops_assets.digits.png import montage_png
from mlops_assets.digits.search import digits_trial, fit_and_score, fixed_space, search_space
from mlops_assets.digits.source import BUNDLED_SOURCE, DigitsSource
from mlops_assets.digits.table import TABLE_NAME, read_digit_images, replace_digit_images
from mlops_assets.promotion.registry_promotion import champion_asset, promote_tuned_model
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets.resources.warehouse import WarehouseResource
from mlops_assets.tuning.resources import TuningResource
from mlops_assets.tuning.runner import SearchOutcome
from mlops_assets.tuning.search_asset import search_asset
from mlops_assets.tuning.search_step import Refit, Search, tuned_model_from_search
from mlops_assets.tuning.tuned_model import TunedModel

DIGITS_EXPERIMENT = DIGITS_MODEL_NAME
METRIC = "test_error_rate"


def _montage_markdown(images: np.ndarray, title: str) -> str:
    encoded = base64.b64encode(montage_png(images)).decode("ascii")
    return f"![{title}](data:image/png;base64,{encoded})"


@dg.asset(
    group_name=DIGITS_GROUP,
    kinds={"python", "sql"},
    owners=["team:vision"],
    description=(
        "8x8 handwritten digits (bundled optdigits, or DIGITS_DATA_PATH), validated, "
        f"in the warehouse table {TABLE_NAME}."
    ),
)
def digit_images(digits_source: DigitsSource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    try:
        digits = digits_source.load()
    except DigitsDataError as error:
        raise dg.Failure(str(error), allow_retries=False) from error
    stored = replace_digit_images(warehouse, digits_source.name, digits)
    return dg.MaterializeResult(
        metadata={
            "source": digits_source.name,
            "bundled_sample": dg.MetadataValue.bool(digits_source.name == BUNDLED_SOURCE),
            "dagster/row_count": stored,
            "images_per_digit": dg.MetadataValue.json({str(k): v for k, v in digits.class_counts().items()}),
            "preview": dg.MetadataValue.md(_montage_markdown(digits.images[:30], "first 30 images")),
        }
    )


class DigitsSearchConfig(dg.Config):
    """Run configuration of the search (empty: the Ray Tune search)."""

    fixed_config: str = Field(
        default="",
        description=(
            "JSON of one configuration to train instead of searching, "
            'e.g. {"family": "svc", "svc_c": 10, "svc_gamma": 0.1}'
        ),
    )


@search_asset(
    group_name=DIGITS_GROUP,
    deps=[digit_images],
    owners=["team:vision"],
    description=(
        "Ray Tune search over an RBF SVC, an MLP and NCA + kNN (stratified 75/25 seeded split); "
        "logs the model with its neighbour index."
    ),
)
def digits_tuned_model(
    context: dg.AssetExecutionContext,
    config: DigitsSearchConfig,
    warehouse: WarehouseResource,
    tuning: TuningResource,
    registry: MlflowRegistry,
) -> TunedModel:
    fixed = _fixed_config(config.fixed_config)
    outer = _holdout(warehouse)
    inner = validation_split(outer.train)  # validation for the search, carved from train only
    if fixed is None:
        space, default_samples = search_space(quick=tuning.search == "quick")
        settings, points = tuning.settings(default_samples=default_samples), [dict(KNOWN_GOOD)]
    else:
        space, points = fixed_space(fixed), None
        settings = dataclasses.replace(tuning.settings(default_samples=1), num_samples=1)
    search = Search(
        DIGITS_EXPERIMENT,
        DIGITS_MODEL_NAME,
        digits_trial,
        space,
        settings,
        metric="val_error_rate",
        trainable_kwargs={"train": inner.train, "validation": inner.test},
        points_to_evaluate=points,
    )
    return tuned_model_from_search(context, registry, search, lambda outcome, best: _refit(outcome, best, outer))


def _fixed_config(text: str) -> dict[str, Any] | None:
    if not text.strip():
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise dg.Failure(f"fixed_config is not JSON: {error}", allow_retries=False) from None
    if not isinstance(parsed, dict):
        raise dg.Failure(f"fixed_config must be a JSON object, got {type(parsed).__name__}", allow_retries=False)
    try:
        fixed_space(parsed)
    except ValueError as error:
        raise dg.Failure(f"fixed_config: {error}", allow_retries=False) from None
    return parsed


def _holdout(warehouse: WarehouseResource) -> DigitsSplit:
    """The seeded stratified split of the table as it is now (same table, same holdout)."""
    try:
        _, digits = read_digit_images(warehouse)
        return split_digits(digits)
    except (LookupError, DigitsDataError) as error:
        raise dg.Failure(str(error), allow_retries=False) from error


def _refit(outcome: SearchOutcome, config: dict[str, Any], outer: DigitsSplit) -> Refit:
    """Refit on all of train (the neighbour index included), score the holdout once."""
    refit = fit_and_score(config, outer.train, outer.test)
    base = baselines(outer.train, outer.test)
    val_error = outcome.best.metrics["val_error_rate"]
    details = {
        "test_accuracy": round(refit.accuracy, 4),
        "val_accuracy": round(1 - val_error, 4),
        "majority_baseline_accuracy": round(1 - base.majority, 4),
        "knn3_raw_baseline_accuracy": round(1 - base.knn3_raw, 4),
        "images_train": len(outer.train),
        "images_test": len(outer.test),
        "index_images": len(refit.model.index_labels_),
    }
    return Refit(
        refit.model,
        metric=METRIC,
        test_score=refit.error_rate,
        baselines=base.as_dict(),
        metrics={"test_accuracy": refit.accuracy},
        input_example=outer.test.images[:1],
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        details=details,
        metadata=details,
    )


def score_model(registry: MlflowRegistry, model_uri: str, holdout: LabelledDigits) -> float:
    """Error rate of a logged or registered model on this holdout (stored scores are not trusted)."""
    try:
        model = registry.load_sklearn_model(model_uri)
        predicted = np.asarray(model.predict(holdout.images))
    except Exception as error:  # a version that cannot load or predict cannot be compared: fail loudly
        raise dg.Failure(
            f"{model_uri} cannot be scored on the digits holdout: {type(error).__name__}: {error}"
        ) from error
    unknown = sorted({int(v) for v in np.unique(predicted)} - set(CLASSES))
    if unknown:
        raise dg.Failure(f"{model_uri} predicts labels {unknown} that are not digits")
    return error_rate(predicted, holdout.labels)


@champion_asset(group_name=DIGITS_GROUP, model_name=DIGITS_MODEL_NAME, owners=["team:vision"], deps=[digit_images])
def digits_champion_model(
    context: dg.AssetExecutionContext,
    digits_tuned_model: TunedModel,
    warehouse: WarehouseResource,
    registry: MlflowRegistry,
) -> dg.MaterializeResult:
    holdout = _holdout(warehouse)  # rebuilt from today's table: both models and the baselines see the same images
    base = baselines(holdout.train, holdout.test).as_dict()
    outcome, metadata = promote_tuned_model(
        context,
        registry,
        DIGITS_MODEL_NAME,
        digits_tuned_model,
        score_model=lambda model_uri: score_model(registry, model_uri, holdout.test),
        baselines=base,
    )
    decision = outcome.decision
    registry.tag_version(
        DIGITS_MODEL_NAME, outcome.registered_version, {"test_accuracy": round(1 - decision.challenger_score, 4)}
    )
    metadata["challenger_test_accuracy"] = round(1 - decision.challenger_score, 4)
    metadata["champion_test_accuracy_same_holdout"] = (
        round(1 - decision.champion_score, 4) if decision.champion_score is not None else None
    )
    metadata.update({f"{name}_baseline_accuracy": round(1 - value, 4) for name, value in base.items()})
    metadata["holdout_images"] = len(holdout.test)
    return dg.MaterializeResult(metadata=metadata)
