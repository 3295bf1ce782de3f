"""The service keeps no MLflow state in the process: its registry is the URI in its settings.

`create_app` and its lifespan must leave `os.environ` and MLflow's process-wide tracking and
registry URIs as they found them, and must load from their own store whatever those URIs say
(a pipeline step in the same process may have pointed them elsewhere).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from litestar import Litestar

from mlops_assets_tests.serving.support import (
    MODEL,
    PATH,
    Store,
    Template,
    fluent_mlflow_at,
    in_loop_client,
    series,
    wait_ready,
)
from serving.server import MLFLOW_CLIENT_DEFAULTS, entry_point_environment

pytestmark = pytest.mark.anyio


def _process_state() -> tuple[dict[str, str], str, str]:
    import mlflow

    return dict(os.environ), mlflow.get_tracking_uri(), mlflow.get_registry_uri()


async def test_the_app_leaves_the_environment_and_mlflow_uris_as_it_found_them(
    store: Store, make_app: Callable[..., Litestar], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in MLFLOW_CLIENT_DEFAULTS:  # unset, as for a user who never heard of them
        monkeypatch.delenv(variable, raising=False)
    store.set_champion("1")
    before = _process_state()
    app = make_app()
    assert _process_state() == before, "create_app changed the process"
    async with in_loop_client(app) as client:
        await wait_ready(client)  # resolved and loaded through MLflow
        response = await client.put(PATH, json=series())
        assert response.status_code == 200 and response.json()["model"]["version"] == "1", response.text
        assert _process_state() == before, "starting and loading changed the process"
    assert _process_state() == before, "stopping changed the process"


async def test_the_app_loads_from_its_own_store_whatever_the_process_wide_uris_say(
    store: Store, make_app: Callable[..., Litestar], tmp_path: Path
) -> None:
    import mlflow

    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"  # a store without the model
    mlflow.MlflowClient(elsewhere).search_experiments()  # creates its schema
    store.set_champion("1")
    with fluent_mlflow_at(elsewhere):  # what a pipeline step run earlier in the process leaves behind
        async with in_loop_client(make_app()) as client:
            ready = await wait_ready(client)
            assert ready["models"][MODEL]["version"] == "1", ready
            temps = series()
            body = (await client.put(PATH, json=temps)).json()
            assert body["result"] == store.expected("1", np.asarray([temps]))[0].tolist()
        assert mlflow.get_tracking_uri() == elsewhere and mlflow.get_registry_uri() == elsewhere


async def test_two_apps_in_one_process_serve_their_own_registries(
    store: Store, template: Template, make_app: Callable[..., Litestar], tmp_path: Path
) -> None:
    other_db = tmp_path / "other.db"
    shutil.copyfile(template.db, other_db)
    other = Store(uri=f"sqlite:///{other_db}", db=other_db, versions=template.versions)
    store.set_champion("1")
    other.set_champion("3")
    async with (
        in_loop_client(make_app()) as first,
        in_loop_client(make_app(mlflow_tracking_uri=other.uri)) as second,
    ):
        await wait_ready(first)
        await wait_ready(second)
        temps = series()
        first_body = (await first.put(PATH, json=temps)).json()
        second_body = (await second.put(PATH, json=temps)).json()
    assert first_body["model"]["version"] == "1" and second_body["model"]["version"] == "3"
    assert second_body["result"] == other.expected("3", np.asarray([temps]))[0].tolist()
    assert first_body["result"] != second_body["result"]


def test_the_entry_point_bounds_mlflows_http_client_unless_the_user_did() -> None:
    user_set = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "3", "OMP_NUM_THREADS": "2"}
    environ = dict(user_set)
    entry_point_environment(environ)
    assert environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3" and environ["OMP_NUM_THREADS"] == "2"
    assert environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == MLFLOW_CLIENT_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert environ["OPENBLAS_NUM_THREADS"] == "1"
