"""The HTTP contract: predictions, every bad-input case, auth, health/ready/metrics, the schema."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from mlops_assets.atmos.forecast_features import HORIZON_HOURS, INPUT_HOURS, feature_row
from mlops_assets_tests.serving.support import ALIAS, MODEL, PATH, Store, series, wait_ready

pytestmark = pytest.mark.anyio


@pytest.fixture()
async def client(store: Store, make_app: Callable[..., Litestar]) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The service with version 1 as champion, loaded."""
    store.set_champion("1")
    async with AsyncTestClient(make_app()) as c:
        await wait_ready(c)
        yield c


@pytest.fixture()
async def calendar_client(store: Store, make_app: Callable[..., Litestar]) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The service with version 2 (calendar terms + covariate `rh`) as champion."""
    store.set_champion("2")
    async with AsyncTestClient(make_app()) as c:
        await wait_ready(c)
        yield c


def assert_error(response: Any, status: int, error: str, field: str | None = None, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status_code"] == status and body["error"] == error, body
    assert body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    for word in words:
        assert word in body["detail"], body
    return body


# --- predictions ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["put", "post"])
async def test_list_body_answers_the_champions_exact_numbers(
    client: AsyncTestClient[Litestar], store: Store, method: str
) -> None:
    temps = series()
    response = await getattr(client, method)(PATH, json=temps)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": MODEL, "version": "1", "alias": ALIAS}
    assert len(body["result"]) == HORIZON_HOURS
    expected = store.expected("1", np.asarray([temps]))[0]
    assert body["result"] == expected.tolist()  # bit-for-bit: JSON floats round-trip exactly


async def test_object_body_works_for_a_plain_model_and_ignores_unused_inputs(
    client: AsyncTestClient[Litestar], store: Store
) -> None:
    temps = series(1.0)
    payload = {"time_series": temps, "last_observed_at": "2013-05-01T12:00:00-04:00", "covariates": {"rh": [50.0] * 24}}
    response = await client.put(PATH, json=payload)
    assert response.status_code == 200, response.text
    assert response.json()["result"] == store.expected("1", np.asarray([temps]))[0].tolist()


async def test_calendar_and_covariate_model(calendar_client: AsyncTestClient[Litestar], store: Store) -> None:
    temps, rh = series(2.0), [float(60 + i) for i in range(24)]
    when = dt.datetime(2013, 7, 4, 18, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    payload = {"time_series": temps, "last_observed_at": when.isoformat(), "covariates": {"rh": rh, "unused": [1.0]}}
    response = await calendar_client.put(PATH, json=payload)
    assert response.status_code == 200, response.text
    spec = store.versions["2"].spec
    assert spec is not None
    row = feature_row(spec, temps, when, {"rh": rh})
    assert response.json()["result"] == store.expected("2", row)[0].tolist()
    assert response.json()["model"]["version"] == "2"


async def test_calendar_model_names_what_is_missing(calendar_client: AsyncTestClient[Litestar]) -> None:
    bare = await calendar_client.put(PATH, json=series())
    body = assert_error(bare, 422, "invalid_input", "$", "covariates", "rh")
    assert "last_observed_at" not in body["detail"].split(":")[0]  # the time is no longer required

    no_cov = {"time_series": series(), "last_observed_at": "2013-07-04T18:00:00Z"}
    assert_error(await calendar_client.put(PATH, json=no_cov), 422, "invalid_input", "$.covariates.rh", "rh")

    naive = {**no_cov, "last_observed_at": "2013-07-04T18:00:00", "covariates": {"rh": [1.0] * 24}}
    assert_error(await calendar_client.put(PATH, json=naive), 422, "invalid_input", "$.last_observed_at", "timezone")

    short = {**no_cov, "covariates": {"rh": [1.0] * 23}}
    assert_error(await calendar_client.put(PATH, json=short), 422, "invalid_input", "$.covariates.rh", "24")

    not_number = {**no_cov, "covariates": {"rh": [1.0] * 23 + ["x"]}}
    assert_error(await calendar_client.put(PATH, json=not_number), 422, "invalid_input", None, "float")


def _utc_hour(now: dt.datetime) -> dt.datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def _hours_after(last: dt.datetime) -> list[str]:
    return [(last + dt.timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ") for h in range(1, 25)]


async def test_window_without_time_ends_at_the_latest_whole_utc_hour(
    calendar_client: AsyncTestClient[Litestar], store: Store
) -> None:
    """The original real-time contract: no `last_observed_at` means "the window ends now"."""
    temps, rh = series(3.0), [float(40 + i) for i in range(24)]
    before = _utc_hour(dt.datetime.now(dt.UTC))
    response = await calendar_client.put(PATH, json={"time_series": temps, "covariates": {"rh": rh}})
    after = _utc_hour(dt.datetime.now(dt.UTC))
    assert response.status_code == 200, response.text
    answer = response.json()
    # Read the hour the service used back from its answer (the clock may cross an hour meanwhile).
    last = dt.datetime.fromisoformat(answer["hours"][0].replace("Z", "+00:00")) - dt.timedelta(hours=1)
    assert last in {before, after} and last.minute == last.second == 0
    assert answer["hours"] == _hours_after(last)
    spec = store.versions["2"].spec
    assert spec is not None
    expected = store.expected("2", feature_row(spec, temps, last, {"rh": rh}))[0]
    assert answer["result"] == expected.tolist()
    assert answer["model"] == {"name": MODEL, "version": "2", "alias": ALIAS}


async def test_bare_list_works_for_a_calendar_champion_without_covariates(
    store: Store, make_app: Callable[..., Litestar]
) -> None:
    """A `ridge_lags`-like champion (calendar terms, no covariates) answers the old bare-list body."""
    store.set_champion("5")
    async with AsyncTestClient(make_app()) as c:
        await wait_ready(c)
        temps = series(-2.0)
        before = _utc_hour(dt.datetime.now(dt.UTC))
        response = await c.put(PATH, json=temps)
        assert response.status_code == 200, response.text
        answer = response.json()
        last = dt.datetime.fromisoformat(answer["hours"][0].replace("Z", "+00:00")) - dt.timedelta(hours=1)
        assert before <= last <= _utc_hour(dt.datetime.now(dt.UTC))
        spec = store.versions["5"].spec
        assert spec is not None and spec.calendar and not spec.covariates
        assert answer["result"] == store.expected("5", feature_row(spec, temps, last))[0].tolist()
        # Same body in the object form without a time: the same answer.
        same = await c.put(PATH, json={"time_series": temps})
        if same.json()["hours"] == answer["hours"]:
            assert same.json()["result"] == answer["result"]


async def test_hours_are_utc_after_the_given_last_observation(calendar_client: AsyncTestClient[Litestar]) -> None:
    payload = {
        "time_series": series(),
        "last_observed_at": "2013-07-04T18:00:00-04:00",
        "covariates": {"rh": [50.0] * 24},
    }
    answer = (await calendar_client.put(PATH, json=payload)).json()
    assert answer["hours"][0] == "2013-07-04T23:00:00Z" and answer["hours"][-1] == "2013-07-05T22:00:00Z"
    assert answer["hours"] == _hours_after(dt.datetime(2013, 7, 4, 22, tzinfo=dt.UTC))
    assert len(answer["result"]) == 24


# --- bad input --------------------------------------------------------------------------------

_72 = ",".join(["1.5"] * 71)
BAD_BODIES: list[tuple[str, bytes, int, str, str | None]] = [
    ("too short", json.dumps([1.0] * 71).encode(), 422, "invalid_input", "$"),
    ("too long", json.dumps([1.0] * 73).encode(), 422, "invalid_input", "$"),
    ("empty list", b"[]", 422, "invalid_input", "$"),
    ("NaN token", f"[{_72},NaN]".encode(), 422, "invalid_input", "$[71]"),
    ("Infinity token", f"[Infinity,{_72}]".encode(), 422, "invalid_input", "$[0]"),
    (
        "-Infinity in object",
        f'{{"time_series": [{_72},-Infinity]}}'.encode(),
        422,
        "invalid_input",
        "$.time_series[71]",
    ),
    ("overflowing number", f"[{_72},1e400]".encode(), 422, "invalid_input", "$[71]"),
    ("string number", f'[{_72},"1.5"]'.encode(), 422, "invalid_input", "$[71]"),
    ("boolean", f"[{_72},true]".encode(), 422, "invalid_input", "$[71]"),
    ("null element", f"[null,{_72}]".encode(), 422, "invalid_input", "$[0]"),
    ("nested list", f"[[1],{_72}]".encode(), 422, "invalid_input", "$[0]"),
    ("missing field", b"{}", 422, "invalid_input", "$.time_series"),
    ("misspelt field", f'{{"time_series": [{_72},1], "last_observed": "x"}}'.encode(), 422, "invalid_input", "$"),
    ("wrong type field", b'{"time_series": 3}', 422, "invalid_input", "$.time_series"),
    (
        "bad timestamp",
        f'{{"time_series": [{_72},1], "last_observed_at": "yesterday"}}'.encode(),
        422,
        "invalid_input",
        "$.last_observed_at",
    ),
    ("scalar body", b"42", 422, "invalid_input", "$"),
    ("string body", b'"hello"', 422, "invalid_input", "$"),
    ("null body", b"null", 422, "invalid_input", "$"),
    ("truncated", b"[1, 2, 3", 400, "malformed_json", None),
    ("trailing garbage", f"[{_72},1] x".encode(), 400, "malformed_json", None),
    ("not JSON", b"time_series=1,2,3", 400, "malformed_json", None),
    ("empty body", b"", 400, "malformed_json", None),
    ("whitespace body", b"  \n", 400, "malformed_json", None),
    ("not UTF-8", b"[\xff\xfe]", 400, "malformed_json", None),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, 422, "invalid_input", "$[0]"),
]


@pytest.mark.parametrize(("name", "body", "status", "error", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_input_is_a_4xx_naming_the_problem(
    client: AsyncTestClient[Litestar], name: str, body: bytes, status: int, error: str, field: str | None
) -> None:
    response = await client.put(PATH, content=body, headers={"content-type": "application/json"})
    assert_error(response, status, error, field)


async def test_body_over_one_mebibyte_is_413(client: AsyncTestClient[Litestar]) -> None:
    big = b"[" + b"1.0," * 300_000 + b"1.0]"
    assert len(big) > 1024 * 1024
    assert_error(await client.put(PATH, content=big), 413, "body_too_large")

    just_under = json.dumps(series()).encode().ljust(1024 * 1024, b" ")
    assert (await client.put(PATH, content=just_under)).status_code == 200


async def test_implausible_temperatures_are_refused(client: AsyncTestClient[Litestar]) -> None:
    # Bounded inputs are also what keeps any forecast finite (1.7e308 would overflow a ridge).
    for value, index in ((1.7e308, 0), (-273.15, 5), (100.5, 71)):
        temps = series()
        temps[index] = value
        assert_error(await client.put(PATH, json=temps), 422, "invalid_input", f"$[{index}]")
    edge = [100.0, -100.0] * 36
    assert (await client.put(PATH, json=edge)).status_code == 200


def test_shape_response_refuses_non_finite_output() -> None:
    from serving.errors import InvalidInput
    from serving.models import ModelRef
    from serving.models.atmos_temperature import complete, shape_response

    ref, window = ModelRef(MODEL, "1", ALIAS), complete(series())
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(InvalidInput, match="not finite"):
            shape_response(np.array([[0.0] * 23 + [bad]]), ref, window)
    # Values whose sum overflows are each finite: answered as they are.
    huge = np.full((1, 24), 1.5e308)
    assert shape_response(huge, ref, window).result == [1.5e308] * 24


async def test_unknown_route_and_method_are_json_errors(client: AsyncTestClient[Litestar]) -> None:
    assert_error(await client.get("/predict/nope"), 404, "not_found")
    assert_error(await client.put("/predict/other_model", json=[1.0] * INPUT_HOURS), 404, "not_found")
    assert_error(await client.get(PATH), 405, "method_not_allowed")
    assert_error(await client.delete(PATH), 405, "method_not_allowed")


# --- readiness, no champion ----------------------------------------------------------------------


async def test_no_champion_is_503_with_the_reason(store: Store, make_app: Callable[..., Litestar]) -> None:
    async with AsyncTestClient(make_app()) as c:
        assert (await c.get("/health")).status_code == 200
        response = await c.put(PATH, json=series())
        body = assert_error(response, 503, "model_unavailable", None, "alias 'champion'", MODEL)
        assert response.headers["retry-after"]
        assert "not found" in body["detail"]  # MLflow's own words are passed on
        ready = await c.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False and "champion" in ready.json()["reasons"][0]

        store.set_champion("1")  # the poller picks it up without a restart
        await wait_ready(c)
        assert (await c.put(PATH, json=series())).status_code == 200


async def test_health_ready_and_model_status(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = (await client.get("/ready")).json()
    assert ready["ready"] is True and ready["reasons"] == []
    status = ready["models"][MODEL]
    assert status["version"] == "1" and status["alias"] == ALIAS and status["registry_error"] is None


async def test_unloadable_version_keeps_the_old_one_and_says_so(
    client: AsyncTestClient[Litestar], store: Store
) -> None:
    import anyio

    store.set_champion("4")  # logged without the feature spec: not a forecaster
    with anyio.fail_after(20):
        while (await client.get("/ready")).json()["models"][MODEL]["load_error"] is None:
            await anyio.sleep(0.05)
    ready = await client.get("/ready")
    assert ready.status_code == 200  # still serving version 1
    assert "feature_spec" in ready.json()["models"][MODEL]["load_error"]
    response = await client.put(PATH, json=series())
    assert response.status_code == 200 and response.json()["model"]["version"] == "1"
    metrics = (await client.get("/metrics")).text
    assert f'serving_model_loads_total{{model="{MODEL}",outcome="error"}}' in metrics


async def test_deleted_alias_keeps_serving_the_loaded_version(client: AsyncTestClient[Litestar], store: Store) -> None:
    import anyio

    store.delete_champion()
    with anyio.fail_after(20):
        while (await client.get("/ready")).json()["models"][MODEL]["alias_missing"] is None:
            await anyio.sleep(0.05)
    assert (await client.get("/ready")).status_code == 200
    assert (await client.put(PATH, json=series())).json()["model"]["version"] == "1"


# --- auth ------------------------------------------------------------------------------------


async def test_bearer_token_guards_predictions_only(store: Store, make_app: Callable[..., Litestar]) -> None:
    store.set_champion("1")
    async with AsyncTestClient(make_app(api_token="s3cret-token")) as c:
        await wait_ready(c)
        missing = await c.put(PATH, json=series())
        assert_error(missing, 401, "unauthorized", None, "Bearer")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for header in ("Bearer wrong", "Bearer s3cret-toke", "Basic s3cret-token", "s3cret-token", "Bearer "):
            assert_error(await c.put(PATH, json=series(), headers={"Authorization": header}), 401, "unauthorized")
        ok = await c.put(PATH, json=series(), headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200
        ok = await c.post(PATH, json=series(), headers={"authorization": "bearer s3cret-token"})
        assert ok.status_code == 200
        # Auth comes before the body is read: a bad body without a token is still 401.
        assert_error(await c.put(PATH, content=b"{"), 401, "unauthorized")
        for open_path in ("/health", "/ready", "/metrics", "/schema/openapi.json"):
            assert (await c.get(open_path)).status_code == 200, open_path
        schema = (await c.get("/schema/openapi.json")).json()
        assert schema["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
        assert schema["paths"][PATH]["put"]["security"] == [{"BearerToken": []}]


async def test_without_token_no_auth_is_needed(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.put(PATH, json=series(), headers={"Authorization": "Bearer anything"})).status_code == 200
    schema = (await client.get("/schema/openapi.json")).json()
    assert "security" not in schema["paths"][PATH]["put"]


# --- metrics and schema -----------------------------------------------------------------------


async def test_metrics_count_requests_versions_and_loads(client: AsyncTestClient[Litestar]) -> None:
    for _ in range(3):
        await client.put(PATH, json=series())
    await client.put(PATH, content=b"[1]")
    await client.get("/nowhere")
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert f'serving_requests_total{{method="PUT",route="{PATH}",status="200"}} 3.0' in text
    assert f'serving_requests_total{{method="PUT",route="{PATH}",status="422"}} 1.0' in text
    assert 'serving_requests_total{method="GET",route="<unmatched>",status="404"} 1.0' in text
    assert f'serving_request_duration_seconds_count{{method="PUT",route="{PATH}",status="200"}} 3.0' in text
    assert f'serving_model_version{{model="{MODEL}"}} 1.0' in text
    assert f'serving_model_loads_total{{model="{MODEL}",outcome="ok"}} 1.0' in text
    assert f'serving_registry_up{{model="{MODEL}"}} 1.0' in text
    assert f'serving_registry_poll_errors_total{{model="{MODEL}"}} 0.0' in text


async def test_openapi_schema_documents_the_predict_body_and_errors(client: AsyncTestClient[Litestar]) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert schema["openapi"].startswith("3.1")
    for method in ("put", "post"):
        operation = schema["paths"][PATH][method]
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        array, obj = body_schema["anyOf"]
        assert array["minItems"] == array["maxItems"] == INPUT_HOURS
        assert obj["required"] == ["time_series"] and "last_observed_at" in obj["properties"]
        assert set(operation["responses"]) == {"200", "400", "413", "422", "503"}
    docs = await client.get("/schema")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
