"""A real `mlflow server` process stopped and started again under the running service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from litestar import Litestar

from mlops_assets_tests.serving.support import (
    MODEL,
    PATH,
    Store,
    free_port,
    in_loop_client,
    series,
    start_mlflow_server,
    stop_mlflow_server,
    wait_ready,
)

pytestmark = pytest.mark.anyio


async def test_mlflow_server_down_then_back(store: Store, make_app: Callable[..., Litestar], tmp_path: Path) -> None:
    store.set_champion("1")
    port, log = free_port(), tmp_path / "mlflow-server.log"
    server = start_mlflow_server(store.db, port, log)
    try:
        async with in_loop_client(make_app(mlflow_tracking_uri=f"http://127.0.0.1:{port}", poll_seconds=0.2)) as c:
            await wait_ready(c)
            assert (await c.put(PATH, json=series())).json()["model"]["version"] == "1"

            stop_mlflow_server(server)
            with anyio.fail_after(20):
                while (await c.get("/ready")).json()["models"][MODEL]["registry_error"] is None:
                    await anyio.sleep(0.05)
            status = (await c.get("/ready")).json()["models"][MODEL]
            assert "127.0.0.1" in status["registry_error"] or "onnect" in status["registry_error"], status
            for _ in range(5):  # still answering from memory
                response = await c.put(PATH, json=series())
                assert response.status_code == 200 and response.json()["model"]["version"] == "1"
            metrics = (await c.get("/metrics")).text
            assert f'serving_registry_up{{model="{MODEL}"}} 0.0' in metrics

            store.set_champion("3")  # promoted while the server is down
            server = start_mlflow_server(store.db, port, log)
            with anyio.fail_after(30):
                while (await c.put(PATH, json=series())).json()["model"]["version"] != "3":
                    await anyio.sleep(0.1)
            status = (await c.get("/ready")).json()["models"][MODEL]
            assert status["registry_error"] is None and status["version"] == "3"
    finally:
        stop_mlflow_server(server)
