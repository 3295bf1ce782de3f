"""What an MLflow registry error means, decided in one place for the pipeline and the service.

Dagster-free (the prediction service imports it). "No such alias" is the registry answering that
the model or its alias does not exist; anything else (unreachable server, broken database,
malformed name) is a failure the caller must not mistake for "no champion yet".
"""

from __future__ import annotations

#: Unknown registered model (SQLite store and tracking server alike).
_UNKNOWN_MODEL = "RESOURCE_DOES_NOT_EXIST"
#: Known model without the alias: MLflow says "Registered model alias <alias> not found." with
#: this code, which it also uses for malformed names (those are not a missing alias).
_INVALID_PARAMETER = "INVALID_PARAMETER_VALUE"


def is_missing_alias(error: Exception) -> bool:
    """Whether `get_model_version_by_alias` failed because the model or the alias does not exist.

    Decided by MLflow's error code (`MlflowException.error_code`, also carried by the tracking
    server's `RestException`); INVALID_PARAMETER_VALUE counts only with MLflow's "not found"
    wording, since a malformed alias name carries the same code.
    """
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return False
    if error.error_code == _UNKNOWN_MODEL:
        return True
    return error.error_code == _INVALID_PARAMETER and "not found" in error.message
