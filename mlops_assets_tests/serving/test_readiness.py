"""`/ready` per model: a model without a champion does not hold the others back (issue 9)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from mlops_assets_tests.serving.support import MODEL, PATH, Store, free_port, series, wait_ready

pytestmark = pytest.mark.anyio
INSURANCE = "insurance_charges"
POLICY = {"age": 19, "sex": "female", "bmi": 27.9, "children": 0, "smoker": "yes", "region": "southwest"}


async def _ready_when(client: AsyncTestClient[Litestar], settled: Callable[[dict], bool]) -> tuple[int, dict]:
    """Poll `/ready` until `settled(body)`; returns the status and body then."""
    with anyio.fail_after(20):
        while True:
            response = await client.get("/ready")
            if settled(response.json()):
                return response.status_code, response.json()
            await anyio.sleep(0.05)


def _states(body: dict) -> dict[str, str]:
    return {name: status["state"] for name, status in body["models"].items()}


async def test_a_model_without_champion_does_not_block_readiness(
    store: Store, make_app: Callable[..., Litestar]
) -> None:
    """The store has no `insurance_charges` at all: the registry answers "does not exist"."""
    store.set_champion("1")
    async with AsyncTestClient(make_app(models=(MODEL, INSURANCE))) as c:
        status, body = await _ready_when(c, lambda b: "loading" not in _states(b).values())
        assert status == 200, body
        assert body["ready"] is True and body["reasons"] == []
        assert _states(body) == {MODEL: "loaded", INSURANCE: "no_champion"}
        assert body["models"][INSURANCE]["version"] is None and body["models"][INSURANCE]["alias_missing"]

        assert (await c.put(PATH, json=series())).status_code == 200
        refused = await c.put("/predict/insurance", json=POLICY)
        assert refused.status_code == 503
        error = refused.json()
        assert error["error"] == "model_unavailable" and error["model"] == INSURANCE
        assert INSURANCE in error["detail"] and "champion" in error["detail"]


async def test_not_ready_while_no_model_has_a_champion(store: Store, make_app: Callable[..., Litestar]) -> None:
    async with AsyncTestClient(make_app(models=(MODEL, INSURANCE))) as c:
        status, body = await _ready_when(c, lambda b: set(_states(b).values()) == {"no_champion"})
        assert status == 503 and body["ready"] is False
        assert "no configured model has a version loaded" in body["reasons"][0]
        error = (await c.put(PATH, json=series())).json()
        assert error["status_code"] == 503 and error["model"] == MODEL

        store.set_champion("1")  # one champion appears: ready without a restart
        await wait_ready(c)
        assert _states((await c.get("/ready")).json()) == {MODEL: "loaded", INSURANCE: "no_champion"}


async def test_unreachable_registry_before_the_first_load_is_not_ready(make_app: Callable[..., Litestar]) -> None:
    """Nothing listens on the registry's port: unknown is not "no champion", so 503 with the reason."""
    dead = f"http://127.0.0.1:{free_port()}"
    async with AsyncTestClient(make_app(mlflow_tracking_uri=dead, models=(MODEL,))) as c:
        status, body = await _ready_when(c, lambda b: _states(b)[MODEL] != "loading")
        assert status == 503 and body["ready"] is False
        assert _states(body) == {MODEL: "registry_unreachable"}
        assert "cannot reach the registry" in body["reasons"][0] and dead in body["reasons"][0]
        error = (await c.put(PATH, json=series())).json()
        assert error["error"] == "model_unavailable" and error["model"] == MODEL


async def test_load_failure_before_any_version_is_not_ready(store: Store, make_app: Callable[..., Litestar]) -> None:
    store.set_champion("4")  # no feature spec: cannot be served
    async with AsyncTestClient(make_app()) as c:
        status, body = await _ready_when(c, lambda b: _states(b)[MODEL] != "loading")
        assert status == 503 and _states(body) == {MODEL: "load_failed"}
        assert "loading the 'champion' version failed" in body["reasons"][0]
