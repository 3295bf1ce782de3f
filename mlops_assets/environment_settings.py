"""The base of the pipeline's and the service's settings (Dagster-free, so the service can use it)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource


class EnvironmentSettings(BaseSettings):
    """Settings from constructor arguments, then the environment: nothing else is read."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment: no .env or secrets directory read behind the operator's back."""
        return (init_settings, env_settings)
