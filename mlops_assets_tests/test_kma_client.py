"""KmaAsosClient against a local HTTP server that speaks the real KMA ASOS wire format."""

from __future__ import annotations

import datetime as dt
import logging
import random
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pandas as pd
import pytest

from mlops_assets.atmos.kma import (
    KmaApiError,
    KmaAsosClient,
    KmaAuthError,
    KmaCallLimitError,
    KmaRequestError,
    KmaRetriesExhaustedError,
    month_chunks,
)
from mlops_assets.atmos.observations import COLUMNS
from mlops_assets_tests.fakes.kma_server import FakeKmaServer, Scenario, hourly_items, running_kma_server

pytestmark = pytest.mark.timeout(30)

TODAY = dt.date(2020, 1, 15)  # "today" in KST for both client and server
JAN = (dt.date(2019, 1, 1), dt.date(2019, 1, 31))


@pytest.fixture
def kma() -> Iterator[FakeKmaServer]:
    with running_kma_server(today=TODAY) as server:
        yield server


@pytest.fixture
def make_client(kma: FakeKmaServer) -> Iterator[Callable[..., KmaAsosClient]]:
    """Clients aimed at the fake, with fast backoff and a fixed clock; closed after the test."""
    clients: list[KmaAsosClient] = []

    def make(**overrides: Any) -> KmaAsosClient:
        options: dict[str, Any] = {
            "service_key": kma.service_key,
            "endpoint": kma.endpoint,
            "backoff_seconds": 0.01,
            "timeout": 2.0,
            "today": lambda: TODAY,
        }
        options.update(overrides)
        client = KmaAsosClient(**options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _assert_secret_free(exc: BaseException, key: str) -> None:
    """Neither the message nor the whole printed traceback may contain any spelling of the key."""
    printed = "".join(traceback.format_exception(exc))
    for spelling in {key, quote(key, safe=""), quote_plus(key)}:
        assert spelling not in str(exc)
        assert spelling not in printed


# ---------------------------------------------------------------------- normal service


def test_year_backfill_takes_twelve_requests(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    client = make_client()
    frame = client.fetch_hourly("108", dt.date(2019, 1, 1), dt.date(2019, 12, 31))

    assert client.request_count == 12
    assert len(kma.requests) == 12
    assert len(frame) == 365 * 24
    assert frame["time"].is_unique and frame["time"].is_monotonic_increasing
    assert list(frame.columns) == COLUMNS
    query = kma.requests[1]
    assert query["ServiceKey"] == kma.service_key  # encoded once, decoded intact by the server
    assert {k: query[k] for k in ("pageNo", "numOfRows", "dataType", "dataCd", "dateCd", "stnIds")} == {
        "pageNo": "1",
        "numOfRows": "999",
        "dataType": "JSON",
        "dataCd": "ASOS",
        "dateCd": "HR",
        "stnIds": "108",
    }
    assert (query["startDt"], query["startHh"], query["endDt"], query["endHh"]) == ("20190201", "00", "20190303", "23")


def test_chunks_are_31_days_so_any_year_takes_at_most_12_requests() -> None:
    chunks = list(month_chunks(dt.date(2019, 1, 15), dt.date(2019, 3, 2)))
    assert chunks == [
        (dt.date(2019, 1, 15), dt.date(2019, 2, 14)),
        (dt.date(2019, 2, 15), dt.date(2019, 3, 2)),
    ]
    for first in (dt.date(2020, 1, 1), dt.date(2019, 1, 15), dt.date(2023, 7, 31)):
        last = first + dt.timedelta(days=365)  # 366 days
        chunks = list(month_chunks(first, last))
        assert len(chunks) == 12
        assert chunks[0][0] == first and chunks[-1][1] == last
        assert all((b - a).days + 1 <= 31 for a, b in chunks)


def test_multi_page_month_follows_total_count(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    client = make_client(num_of_rows=100)
    frame = client.fetch_hourly("108", *JAN)

    assert [q["pageNo"] for q in kma.requests] == [str(n) for n in range(1, 9)]  # 744 rows / 100
    assert {q["numOfRows"] for q in kma.requests} == {"100"}
    assert client.request_count == 8
    assert len(frame) == 744 and frame["time"].is_unique


def test_last_page_with_one_item_comes_as_an_object(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]
) -> None:
    client = make_client(num_of_rows=23)  # 24 hours -> pages of 23 and 1
    frame = client.fetch_hourly("108", dt.date(2019, 6, 1), dt.date(2019, 6, 1))

    assert len(kma.requests) == 2
    assert len(frame) == 24


def test_item_as_single_object(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.set_default(Scenario.single_item())
    frame = make_client().fetch_hourly("108", dt.date(2019, 6, 1), dt.date(2019, 6, 1))

    assert len(frame) == 1
    assert frame["time"].iloc[0] == pd.Timestamp("2019-05-31 15:00", tz="UTC")
    assert frame["station"].iloc[0] == "108"


def test_times_are_kst_converted_to_utc(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    frame = make_client().fetch_hourly("108", dt.date(2019, 1, 20), dt.date(2019, 1, 20))
    generated = {item["tm"]: item for item in hourly_items("108", dt.date(2019, 1, 20), dt.date(2019, 1, 20))}

    row = frame.set_index("time").loc[pd.Timestamp("2019-01-19 16:00", tz="UTC")]
    assert row["tmp"] == float(generated["2019-01-20 01:00"]["ta"])
    assert frame["time"].min() == pd.Timestamp("2019-01-19 15:00", tz="UTC")
    assert frame["time"].max() == pd.Timestamp("2019-01-20 14:00", tz="UTC")
    assert str(frame["time"].dt.tz) == "UTC"


def test_values_map_to_canonical_columns(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    item = {
        "tm": "2019-01-20 01:00",
        "stnId": "108",
        "stnNm": "서울",
        "ta": "-3.5",
        "rn": "1.5",
        "ws": "2.1",
        "wd": "270",
        "hm": "55",
        "td": "-11.0",
        "pa": "1020.1",
        "ps": "1031.2",
        "taQcflg": "",
        "rnQcflg": "0",
        "wsQcflg": "1",
        "wdQcflg": "",
        "hmQcflg": "",
        "tdQcflg": "",
        "paQcflg": "",
        "psQcflg": "",
    }
    kma.set_default(Scenario.fixed_items([item]))
    frame = make_client().fetch_hourly("108", dt.date(2019, 1, 20), dt.date(2019, 1, 20))

    row = frame.iloc[0]
    assert (row["tmp"], row["precip"], row["ws"], row["wd"], row["rh"], row["td"], row["p"], row["mslp"]) == (
        -3.5,
        1.5,
        2.1,
        270.0,
        55.0,
        -11.0,
        1020.1,
        1031.2,
    )
    assert row["precip_qc"] == 0 and row["ws_qc"] == 1 and pd.isna(row["tmp_qc"])


def test_empty_strings_are_missing_but_empty_rain_is_zero(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]
) -> None:
    kma.set_default(Scenario.blank_values())
    frame = make_client().fetch_hourly("108", dt.date(2019, 7, 1), dt.date(2019, 7, 2))

    assert len(frame) == 48
    assert (frame["precip"] == 0.0).all()
    for name in ("tmp", "wd", "ws", "p", "mslp", "rh", "td"):
        assert frame[name].isna().all(), name
    assert frame[[c for c in frame.columns if c.endswith("_qc")]].isna().all().all()


def test_generated_blanks_and_qc_flags_are_kept(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    frame = make_client().fetch_hourly("108", *JAN)
    items = hourly_items("108", *JAN)
    missing_ta = [i for i, item in enumerate(items) if item["ta"] == ""]
    error_ta = [i for i, item in enumerate(items) if item["taQcflg"] == "1"]
    missing_hm = [i for i, item in enumerate(items) if item["hm"] == ""]
    assert missing_ta and error_ta and missing_hm  # the generator really exercises these

    assert frame["tmp"].isna().sum() == len(missing_ta)
    assert (frame.loc[missing_ta, "tmp_qc"] == 9).all()
    assert (frame.loc[error_ta, "tmp_qc"] == 1).all() and frame.loc[error_ta, "tmp"].notna().all()
    assert frame.loc[missing_hm, "rh"].isna().all()
    dry = [i for i, item in enumerate(items) if item["rn"] == ""]
    assert (frame.loc[dry, "precip"] == 0.0).all() and (frame["precip"] > 0).any()


def test_empty_rain_flagged_missing_stays_missing(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]
) -> None:
    items = hourly_items("108", dt.date(2019, 1, 20), dt.date(2019, 1, 20))[:2]
    items[0]["rn"], items[0]["rnQcflg"] = "", "9"
    kma.set_default(Scenario.fixed_items(items))
    frame = make_client().fetch_hourly("108", dt.date(2019, 1, 20), dt.date(2019, 1, 20))

    assert pd.isna(frame["precip"].iloc[0]) and frame["precip_qc"].iloc[0] == 9
    assert frame["precip"].iloc[1] == 0.0


def test_repeated_hours_are_deduplicated(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.set_default(Scenario.duplicates())
    frame = make_client().fetch_hourly("108", *JAN)

    assert len(frame) == 744 and frame["time"].is_unique


def test_non_numeric_value_is_an_api_error(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    items = hourly_items("108", dt.date(2019, 1, 20), dt.date(2019, 1, 20))[:1]
    items[0]["ta"] = "n/a"
    kma.set_default(Scenario.fixed_items(items))
    with pytest.raises(KmaApiError, match=r"'ta'.*'n/a'"):
        make_client().fetch_hourly("108", dt.date(2019, 1, 20), dt.date(2019, 1, 20))


def test_xml_success_body_is_understood(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    """If the service answers XML despite dataType=JSON, the items are still read."""
    client = make_client()
    original = client._params
    client._params = lambda *a: {**original(*a), "dataType": "XML"}  # type: ignore[method-assign]
    frame = client.fetch_hourly("108", dt.date(2019, 1, 20), dt.date(2019, 1, 21))

    assert len(frame) == 48 and frame["tmp"].notna().sum() >= 46


# ---------------------------------------------------------------------- the clock


def test_range_is_clamped_to_yesterday_kst(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    client = make_client(today=lambda: dt.date(2019, 2, 10))
    frame = client.fetch_hourly("108", dt.date(2019, 1, 1), dt.date(2019, 3, 31))

    assert [(q["startDt"], q["endDt"]) for q in kma.requests] == [("20190101", "20190131"), ("20190201", "20190209")]
    assert frame["time"].max() == pd.Timestamp("2019-02-09 14:00", tz="UTC")  # 23:00 KST on the 9th


def test_future_range_makes_no_request(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    client = make_client()
    frame = client.fetch_hourly("108", TODAY, TODAY + dt.timedelta(days=3))

    assert frame.empty and list(frame.columns) == COLUMNS
    assert client.request_count == 0 and kma.requests == []


def test_default_clock_never_asks_for_today(make_client: Callable[..., KmaAsosClient]) -> None:
    with running_kma_server() as server:  # the server also uses the real KST date
        client = make_client(endpoint=server.endpoint, today=None)
        today_kst = dt.datetime.now(dt.timezone(dt.timedelta(hours=9))).date()
        frame = client.fetch_hourly("108", today_kst - dt.timedelta(days=1), today_kst)
    assert len(server.requests) == 1 and len(frame) == 24


# ---------------------------------------------------------------------- retries


def test_http_500_then_success(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.enqueue(Scenario.http_error(500))
    client = make_client()
    frame = client.fetch_hourly("108", *JAN)

    assert len(frame) == 744
    assert client.request_count == 2 and len(kma.requests) == 2


@pytest.mark.parametrize("code", ["05", "02"])
def test_retryable_result_codes_then_success(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient], code: str
) -> None:
    kma.enqueue(Scenario.result(code), Scenario.result(code, xml=True))
    client = make_client()
    assert len(client.fetch_hourly("108", *JAN)) == 744
    assert client.request_count == 3


def test_timeout_then_success(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.enqueue(Scenario.slow(1.0))
    client = make_client(timeout=0.2)
    frame = client.fetch_hourly("108", *JAN)

    assert len(frame) == 744
    assert client.request_count == 2


def test_timeout_exhausting_retries_names_request_and_cause(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]
) -> None:
    kma.set_default(Scenario.slow(1.0))
    client = make_client(timeout=0.15, max_attempts=3)
    with pytest.raises(KmaRetriesExhaustedError) as caught:
        client.fetch_hourly("108", *JAN)

    message = str(caught.value)
    assert "2019-01" in message and "page 1" in message and "3 attempts" in message
    assert "Timeout" in message
    assert client.request_count == 3
    _assert_secret_free(caught.value, kma.service_key)


def test_backoff_is_exponential_with_full_jitter(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.set_default(Scenario.http_error(503))
    sleeps: list[float] = []
    client = make_client(max_attempts=5, backoff_seconds=1.0, sleep=sleeps.append, rng=random.Random(7))
    with pytest.raises(KmaRetriesExhaustedError, match="HTTP 503"):
        client.fetch_hourly("108", *JAN)

    assert client.request_count == 5 and len(kma.requests) == 5 and len(sleeps) == 4  # no sleep after the last attempt
    for attempt, delay in enumerate(sleeps, start=1):
        assert 0.0 <= delay <= 2 ** (attempt - 1)
    assert len(set(sleeps)) == 4  # jittered


def test_connection_refused_is_retried_then_reported_without_the_key(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key = "s3cret+Key/with=="
    caplog.set_level(logging.DEBUG)
    with (
        KmaAsosClient(
            service_key=key,
            endpoint=f"http://127.0.0.1:{port}/x",
            max_attempts=2,
            backoff_seconds=0.01,
            today=lambda: TODAY,
        ) as client,
        pytest.raises(KmaRetriesExhaustedError, match="ConnectionError") as caught,
    ):
        client.fetch_hourly("108", *JAN)
    assert client.request_count == 2
    _assert_secret_free(caught.value, key)
    for spelling in {key, quote(key, safe=""), quote_plus(key)}:
        assert spelling not in caplog.text
        assert spelling not in repr(client)


# ---------------------------------------------------------------------- errors that are never retried


def test_call_limit_exceeded(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.set_default(Scenario.result("22"))
    client = make_client()
    with pytest.raises(KmaCallLimitError) as caught:
        client.fetch_hourly("108", *JAN)

    assert caught.value.code == "22"
    assert "LIMITED_NUMBER_OF_SERVICE_REQUESTS_EXCEEDS_ERROR" in str(caught.value)
    assert client.request_count == 1


def test_call_limit_as_xml_envelope(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.set_default(Scenario.result("22", xml=True))
    with pytest.raises(KmaCallLimitError):
        make_client().fetch_hourly("108", *JAN)


def test_no_data_is_an_empty_result(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.set_default(Scenario.no_data())
    client = make_client()
    frame = client.fetch_hourly("108", dt.date(2019, 1, 1), dt.date(2019, 2, 28))

    assert frame.empty and list(frame.columns) == COLUMNS
    assert client.request_count == 2  # one per month, no retries, no extra pages


@pytest.mark.parametrize("code", ["10", "11"])
def test_bad_parameters_are_request_errors(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient], code: str
) -> None:
    kma.set_default(Scenario.result(code))
    client = make_client()
    with pytest.raises(KmaRequestError, match=code):
        client.fetch_hourly("108", *JAN)
    assert client.request_count == 1


def test_server_validates_parameters(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    """The fake itself rejects a malformed request the way the API does (code 10)."""
    client = make_client()
    original = client._params
    client._params = lambda *a: {**original(*a), "dateCd": "DAY"}  # type: ignore[method-assign]
    with pytest.raises(KmaRequestError, match="INVALID_REQUEST_PARAMETER_ERROR"):
        client.fetch_hourly("108", *JAN)


def test_unknown_code_is_a_plain_api_error(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]) -> None:
    kma.set_default(Scenario.result("99"))
    client = make_client()
    with pytest.raises(KmaApiError) as caught:
        client.fetch_hourly("108", *JAN)
    assert type(caught.value) is KmaApiError and caught.value.code == "99"
    assert client.request_count == 1


def test_garbage_body_is_an_api_error_with_excerpt(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]
) -> None:
    kma.set_default(Scenario.garbage())
    client = make_client()
    with pytest.raises(KmaApiError, match=r"neither JSON nor XML.*under maintenance"):
        client.fetch_hourly("108", *JAN)
    assert client.request_count == 1


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario.gateway_key_error(xml=True, status=403),
        Scenario.gateway_key_error(xml=False, status=403),
        Scenario.gateway_key_error(xml=False, status=200),
    ],
    ids=["xml-403", "json-403", "json-200"],
)
def test_gateway_key_error(kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient], scenario: Scenario) -> None:
    kma.set_default(scenario)
    client = make_client()
    with pytest.raises(KmaAuthError) as caught:
        client.fetch_hourly("108", *JAN)

    assert caught.value.code == "30"
    assert "SERVICE_KEY_IS_NOT_REGISTERED_ERROR" in str(caught.value) and "30" in str(caught.value)
    assert client.request_count == 1
    _assert_secret_free(caught.value, kma.service_key)


@pytest.mark.parametrize("code", ["20", "21", "31", "32"])
def test_other_gateway_codes_are_auth_errors(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient], code: str
) -> None:
    kma.set_default(Scenario.gateway_key_error(code))
    with pytest.raises(KmaAuthError, match=code):
        make_client().fetch_hourly("108", *JAN)


def test_wrong_key_is_rejected_by_the_gateway_and_never_echoed(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wR0ng+Key/abc=="
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KmaAuthError) as caught:
        make_client(service_key=wrong).fetch_hourly("108", *JAN)
    _assert_secret_free(caught.value, wrong)
    assert wrong not in caplog.text and quote_plus(wrong) not in caplog.text


def test_portal_encoding_key_is_not_double_encoded(
    kma: FakeKmaServer, make_client: Callable[..., KmaAsosClient]
) -> None:
    """data.go.kr shows an "Encoding" (percent-encoded) key too; it must reach the server decoded."""
    client = make_client(service_key=quote(kma.service_key, safe=""))
    assert len(client.fetch_hourly("108", dt.date(2019, 1, 20), dt.date(2019, 1, 20))) == 24
    assert kma.requests[0]["ServiceKey"] == kma.service_key


def test_reversed_range_is_a_value_error(make_client: Callable[..., KmaAsosClient]) -> None:
    with pytest.raises(ValueError, match="after"):
        make_client().fetch_hourly("108", dt.date(2019, 2, 1), dt.date(2019, 1, 1))
