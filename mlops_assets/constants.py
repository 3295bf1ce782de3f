"""Names shared across stages: asset groups and registered model names."""

ATMOS_GROUP = "atmos"
INSURANCE_GROUP = "insurance"
DIGITS_GROUP = "digits"

ATMOS_MODEL_NAME = "atmos_temperature"
INSURANCE_MODEL_NAME = "insurance_charges"
DIGITS_MODEL_NAME = "digit_classifier"
CHAMPION_ALIAS = "champion"

#: Embedded MLflow store (local SQLite) when MLFLOW_TRACKING_URI is unset.
DEFAULT_TRACKING_URI = "sqlite:///.mlops/mlflow.db"

#: Dagster concurrency pool of the tuning assets: the instance limits it to 1 (dagster.yaml,
#: the chart's instance), so a second search waits instead of sharing the Ray cores or cluster.
SEARCH_POOL = "ray_search"
