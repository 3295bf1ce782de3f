"""The pipeline's configuration: one typed object, read from the environment once and passed down.

`load_pipeline_settings()` reads it (when definitions load or a CLI command starts, never at
import). Each field's alias is its environment variable, so a bad value's error names the
variable. Values that came from the environment reach Dagster resources as `dg.EnvVar(name)`
(`resource_value`), so secrets are resolved when a run starts and never stored in the code location.
"""

from __future__ import annotations

import zoneinfo
from typing import Any, Literal, get_args

import dagster as dg
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from mlops_assets.constants import DEFAULT_TRACKING_URI
from mlops_assets.environment_settings import EnvironmentSettings
from mlops_assets.warehouse_url import DEFAULT_WAREHOUSE_URL

AtmosSource = Literal["sample", "csv", "kma"]
ATMOS_SOURCES: tuple[str, ...] = get_args(AtmosSource)
#: The station id stored with each row when ATMOS_STATION is unset, by source.
DEFAULT_STATIONS: dict[str, str] = {"sample": "JFK", "csv": "csv", "kma": "108"}


class PipelineSettings(EnvironmentSettings):
    """Everything the pipeline reads from the environment; unset (or empty) variables keep the defaults."""

    model_config = SettingsConfigDict(env_ignore_empty=True, frozen=True, validate_by_name=True, validate_by_alias=True)

    atmos_source: AtmosSource = Field(default="sample", validation_alias="ATMOS_SOURCE")
    atmos_station: str | None = Field(default=None, validation_alias="ATMOS_STATION")
    atmos_csv_path: str | None = Field(default=None, validation_alias="ATMOS_CSV_PATH")
    atmos_csv_columns: str = Field(default="", validation_alias="ATMOS_CSV_COLUMNS")
    atmos_timezone: str = Field(default="UTC", validation_alias="ATMOS_TIMEZONE")
    kma_service_key: SecretStr | None = Field(default=None, validation_alias="KMA_SERVICE_KEY")
    kma_asos_endpoint: str | None = Field(default=None, validation_alias="KMA_ASOS_ENDPOINT")
    # URLs may carry credentials: kept out of repr (and passed to resources as EnvVars when set).
    warehouse_url: str = Field(default=DEFAULT_WAREHOUSE_URL, validation_alias="WAREHOUSE_URL", repr=False)
    mlflow_tracking_uri: str = Field(default=DEFAULT_TRACKING_URI, validation_alias="MLFLOW_TRACKING_URI", repr=False)
    ray_address: str = Field(default="", validation_alias="RAY_ADDRESS")
    #: Trials per search; 0 keeps each search space's default.
    tuning_num_samples: int = Field(default=0, ge=0, validation_alias="TUNING_NUM_SAMPLES")
    insurance_csv_path: str | None = Field(default=None, validation_alias="INSURANCE_CSV_PATH")
    digits_data_path: str | None = Field(default=None, validation_alias="DIGITS_DATA_PATH")
    alert_webhook_url: SecretStr | None = Field(default=None, validation_alias="ALERT_WEBHOOK_URL")

    _from_environment: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        given = {
            name
            for name, field in type(self).model_fields.items()
            if name in values or field.validation_alias in values
        }
        # Fields set but not given as arguments came from the environment (empty variables are ignored).
        self._from_environment = frozenset(self.model_fields_set - given)

    @field_validator("atmos_source", mode="before")
    @classmethod
    def _known_source(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        kind = value.strip().lower()
        if kind not in ATMOS_SOURCES:
            raise ValueError(f"ATMOS_SOURCE={kind!r} is not one of {', '.join(ATMOS_SOURCES)}")
        return kind

    @field_validator("atmos_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"ATMOS_TIMEZONE={value!r} is not an IANA time zone (e.g. UTC, Asia/Seoul)") from error
        return value

    @model_validator(mode="after")
    def _csv_needs_a_path(self) -> PipelineSettings:
        if self.atmos_source == "csv" and not self.atmos_csv_path:
            raise ValueError(
                "ATMOS_SOURCE=csv needs ATMOS_CSV_PATH (a CSV with a time and a temperature column; "
                "map other names with ATMOS_CSV_COLUMNS, e.g. time=Date,tmp=Temperature)"
            )
        return self

    @property
    def station(self) -> str:
        """The station the pipeline works on: ATMOS_STATION, else the source's default."""
        return self.atmos_station or DEFAULT_STATIONS[self.atmos_source]

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable behind a field."""
        alias = cls.model_fields[field_name].validation_alias
        if not isinstance(alias, str):
            raise KeyError(f"{field_name} is not a PipelineSettings field read from the environment")
        return alias

    def from_environment(self, field_name: str) -> bool:
        """Whether the field's value was read from its environment variable (not a default or an argument)."""
        self.env_name(field_name)  # refuses unknown names
        return field_name in self._from_environment

    def env_var(self, field_name: str) -> dg.EnvVar:
        """`dg.EnvVar` of the field's variable, resolved by Dagster when a run starts."""
        return dg.EnvVar(self.env_name(field_name))

    def resource_value(self, field_name: str) -> Any:
        """What a resource gets: the field's `dg.EnvVar` when the environment set it, else its value."""
        if self.from_environment(field_name):
            if type(self).model_fields[field_name].annotation is int:
                return dg.EnvVar.int(self.env_name(field_name))
            return self.env_var(field_name)
        value = getattr(self, field_name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value


def load_pipeline_settings() -> PipelineSettings:
    """Read and validate the environment; a bad value raises naming its variable."""
    return PipelineSettings()
