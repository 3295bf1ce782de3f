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
