"""`is_missing_alias` against real registries: a SQLite store and a real `mlflow server` on it.

The pipeline (`MlflowRegistry.champion`) and the service (`MlflowResolver.resolve`) both decide
"no champion" with it, so both are checked here on the same three situations: unknown model,
known model without the alias, and a registry that cannot be reached (must raise, never "missing").
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mlflow.exceptions import MlflowException

from mlops_assets.registry_errors import is_missing_alias
from mlops_assets.resources.mlflow_registry import MlflowRegistry
from mlops_assets_tests.serving.support import free_port, start_mlflow_server, stop_mlflow_server
from serving.cache import AliasNotFound, MlflowResolver

WITHOUT_CHAMPION = "model_without_champion"
WITH_CHAMPION = "model_with_champion"


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The same SQLite registry, directly and through a real tracking server."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry-errors")
    db = root / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name, alias in ((WITHOUT_CHAMPION, "challenger"), (WITH_CHAMPION, "champion")):
        client.create_registered_model(name)
        source = root / name
        source.mkdir()
        version = client.create_model_version(name, str(source))
        client.set_registered_model_alias(name, alias, version.version)
    port = free_port()
    server = start_mlflow_server(db, port, root / "server.log")
    try:
        yield {"sqlite": uri, "server": f"http://127.0.0.1:{port}"}
    finally:
        stop_mlflow_server(server)


@pytest.fixture(params=["sqlite", "server"])
def registry_uri(request: pytest.FixtureRequest, registries: dict[str, str]) -> str:
    return registries[request.param]


def _lookup_error(uri: str, name: str, alias: str) -> MlflowException:
    from mlflow import MlflowClient

    with pytest.raises(MlflowException) as raised:
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(name, alias)
    return raised.value


@pytest.mark.parametrize("name", ["no_such_model", WITHOUT_CHAMPION])
def test_unknown_model_and_known_model_without_the_alias_are_missing(registry_uri: str, name: str) -> None:
    assert is_missing_alias(_lookup_error(registry_uri, name, "champion"))
    assert MlflowRegistry(tracking_uri=registry_uri).champion(name) is None
    with pytest.raises(AliasNotFound):
        MlflowResolver(registry_uri).resolve(name, "champion")


def test_an_existing_alias_resolves(registry_uri: str) -> None:
    champion = MlflowRegistry(tracking_uri=registry_uri).champion(WITH_CHAMPION)
    assert champion is not None and str(champion.version) == "1"
    assert MlflowResolver(registry_uri).resolve(WITHOUT_CHAMPION, "challenger") == "1"


def test_a_malformed_alias_is_an_error_not_a_missing_alias(registry_uri: str) -> None:
    error = _lookup_error(registry_uri, WITH_CHAMPION, "not an alias!")
    assert error.error_code == "INVALID_PARAMETER_VALUE", error  # the code a missing alias also has
    assert not is_missing_alias(error)
    with pytest.raises(MlflowException) as raised:
        MlflowResolver(registry_uri).resolve(WITH_CHAMPION, "not an alias!")
    assert not isinstance(raised.value, AliasNotFound)


def test_an_unreachable_server_raises_and_is_not_missing() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    error = _lookup_error(nobody, WITH_CHAMPION, "champion")
    assert not is_missing_alias(error)
    with pytest.raises(MlflowException) as raised:
        MlflowRegistry(tracking_uri=nobody).champion(WITH_CHAMPION)
    assert "127.0.0.1" in str(raised.value)
    with pytest.raises(MlflowException) as raised:
        MlflowResolver(nobody).resolve(WITH_CHAMPION, "champion")
    assert not isinstance(raised.value, AliasNotFound)


def test_errors_that_are_not_mlflows_are_not_missing() -> None:
    assert not is_missing_alias(ConnectionError("Registered model alias champion not found."))
    assert not is_missing_alias(KeyError("RESOURCE_DOES_NOT_EXIST"))
