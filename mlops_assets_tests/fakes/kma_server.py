"""A real local HTTP server that speaks the KMA ASOS hourly API's wire format, for tests.

It listens on 127.0.0.1 (a free port) in a background thread and answers
`GET /1360000/AsosHourlyInfoService/getWthrDataList` like data.go.kr does:

* validates the query: a missing or wrong `ServiceKey` gets the gateway's XML key error (HTTP 403,
  returnReasonCode 30); a missing required parameter gets resultCode 11, a malformed one 10; an
  `endDt` on or after "today" (KST) gets resultCode 99, as the real API serves data only up to D-1;
* serves deterministic generated hourly data for any station and date range (`hourly_items`): a
  seasonal plus diurnal temperature curve, rain on some mornings, `rn` = "" when it is dry, and a
  few "" values (some flagged `9`) and one error flag (`1`) here and there;
* pages by `pageNo`/`numOfRows` with a correct `totalCount`; a page holding exactly one item is sent
  as an object rather than a list (the XML-to-JSON quirk); `dataType=XML` gets the XML form;
* replays scripted `Scenario`s, one per request, from a queue; when the queue is empty the default
  scenario applies (normally `Scenario.ok()`).

Usage::

    from mlops_assets_tests.fakes.kma_server import Scenario, running_kma_server

    with running_kma_server() as kma:
        kma.enqueue(Scenario.http_error(500))  # first request fails, the next ones succeed
        with KmaAsosClient(service_key=kma.service_key, endpoint=kma.endpoint) as client:
            frame = client.fetch_hourly("108", date(2019, 1, 1), date(2019, 1, 31))
        assert len(kma.requests) == 2  # each a dict of the query parameters

    with running_kma_server(Scenario.result("22")) as kma:  # every request: call limit exceeded
        ...

`kma.service_key` is the only key the server accepts (it contains `+`, `/` and `=` to catch double
encoding); pass `service_key=None` to accept any non-empty key. Scenarios: `ok`, `single_item`,
`blank_values`, `duplicates`, `fixed_items`, `http_error`, `slow`, `result` / `no_data`, `gateway_key_error`,
`garbage`. See `Scenario` for their parameters.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

PATH = "/1360000/AsosHourlyInfoService/getWthrDataList"
#: The key the fake accepts by default: base64-like, with characters that need URL encoding.
DEFAULT_SERVICE_KEY = "fAkE+kma/Key0123456789abcdefghijklmnopqrstuvwxyz=="
REQUIRED_PARAMS = (
    "pageNo",
    "numOfRows",
    "dataType",
    "dataCd",
    "dateCd",
    "startDt",
    "startHh",
    "endDt",
    "endHh",
    "stnIds",
)
STATION_NAMES = {"108": "서울", "112": "인천", "133": "대전", "143": "대구", "156": "광주", "159": "부산"}
RESULT_MESSAGES = {
    "00": "NORMAL_SERVICE",
    "01": "APPLICATION_ERROR",
    "02": "DB_ERROR",
    "03": "NO_DATA",
    "04": "HTTP_ERROR",
    "05": "SERVICETIME_OUT",
    "10": "INVALID_REQUEST_PARAMETER_ERROR",
    "11": "NO_MANDATORY_REQUEST_PARAMETERS_ERROR",
    "12": "NO_OPENAPI_SERVICE_ERROR",
    "20": "SERVICE_ACCESS_DENIED_ERROR",
    "21": "TEMPORARILY_DISABLE_THE_SERVICEKEY_ERROR",
    "22": "LIMITED_NUMBER_OF_SERVICE_REQUESTS_EXCEEDS_ERROR",
    "30": "SERVICE_KEY_IS_NOT_REGISTERED_ERROR",
    "31": "DEADLINE_HAS_EXPIRED_ERROR",
    "32": "UNREGISTERED_IP_ERROR",
    "33": "UNSIGNED_CALL_ERROR",
    "99": "UNKNOWN_ERROR",
}
_KST = ZoneInfo("Asia/Seoul")
_EPOCH = dt.datetime(2000, 1, 1)
_QC_FIELDS = ("taQcflg", "rnQcflg", "wsQcflg", "wdQcflg", "hmQcflg", "paQcflg", "psQcflg", "tsQcflg")


@dataclass(frozen=True)
class Scenario:
    """How the server answers one request. Build with the class methods, not directly."""

    kind: str = "ok"
    status: int = 200
    code: str = "00"
    message: str = ""
    xml: bool = False
    delay: float = 0.0
    items: tuple[dict[str, str], ...] | None = None

    @classmethod
    def ok(cls) -> Scenario:
        """Normal service: generated data, paged."""
        return cls("ok")

    @classmethod
    def single_item(cls) -> Scenario:
        """Only the first hour of the asked range exists: `item` is one object, totalCount 1."""
        return cls("single_item")

    @classmethod
    def blank_values(cls) -> Scenario:
        """Every measured value and QC flag is "" (the API's missing value)."""
        return cls("blank_values")

    @classmethod
    def duplicates(cls) -> Scenario:
        """The first three hours are listed twice (counted in totalCount)."""
        return cls("duplicates")

    @classmethod
    def fixed_items(cls, items: list[dict[str, str]]) -> Scenario:
        """Exactly these items (verbatim, paged as usual), whatever range was asked."""
        return cls("fixed_items", items=tuple(dict(item) for item in items))

    @classmethod
    def http_error(cls, status: int = 500) -> Scenario:
        """An HTML error page with this HTTP status (e.g. a 500 or 502 from the gateway)."""
        return cls("http_error", status=status)

    @classmethod
    def slow(cls, seconds: float) -> Scenario:
        """Wait `seconds` before answering normally (longer than the client's timeout: a timeout)."""
        return cls("slow", delay=seconds)

    @classmethod
    def result(cls, code: str, message: str | None = None, *, xml: bool = False, status: int = 200) -> Scenario:
        """The service envelope with this resultCode and no items (JSON, or XML if `xml`)."""
        return cls(
            "result", status=status, code=code, message=message or RESULT_MESSAGES.get(code, "UNKNOWN_ERROR"), xml=xml
        )

    @classmethod
    def no_data(cls) -> Scenario:
        """resultCode 03 NO_DATA."""
        return cls.result("03")

    @classmethod
    def gateway_key_error(
        cls, code: str = "30", message: str | None = None, *, xml: bool = True, status: int = 403
    ) -> Scenario:
        """The data.go.kr gateway's `OpenAPI_ServiceResponse` error (XML by default, even for JSON)."""
        return cls(
            "gateway", status=status, code=code, message=message or RESULT_MESSAGES.get(code, "UNKNOWN_ERROR"), xml=xml
        )

    @classmethod
    def garbage(cls, status: int = 200) -> Scenario:
        """A body that is neither JSON nor XML (an HTML maintenance page)."""
        return cls("garbage", status=status)


def hourly_items(station: str, first_day: dt.date, last_day: dt.date) -> list[dict[str, str]]:
    """The generated items for `station`, every KST hour of `first_day..last_day`, as the API sends them."""
    start = dt.datetime.combine(first_day, dt.time())
    hours = int((dt.datetime.combine(last_day, dt.time()) - start).total_seconds() // 3600) + 24
    return [_item(station, start + dt.timedelta(hours=i)) for i in range(max(hours, 0))]


def _item(station: str, when: dt.datetime) -> dict[str, str]:
    """One deterministic hour of data; every value a string, "" for missing, like the API."""
    h = int((when - _EPOCH).total_seconds() // 3600)
    day_of_year = when.timetuple().tm_yday
    seasonal = 12.5 - 14.0 * math.cos(2 * math.pi * (day_of_year - 15) / 365.25)
    ta = round(seasonal + 4.0 * math.sin(2 * math.pi * (when.hour - 9) / 24), 1)
    hm = round(65 - 20 * math.sin(2 * math.pi * (when.hour - 9) / 24))
    td = round(ta - (100 - hm) / 5, 1)
    pa = round(1005.0 + 8.0 * math.cos(2 * math.pi * day_of_year / 365.25), 1)
    rainy = (h // 24) % 7 == 3 and 6 <= when.hour <= 11
    item = {
        "tm": when.strftime("%Y-%m-%d %H:%M"),
        "rnum": "",
        "stnId": station,
        "stnNm": STATION_NAMES.get(station, f"지점{station}"),
        "ta": f"{ta:.1f}",
        "rn": f"{0.5 * (when.hour - 5):.1f}" if rainy else "",
        "ws": f"{2.0 + 1.5 * math.sin(2 * math.pi * (when.hour - 8) / 24):.1f}",
        "wd": str((h * 37) % 360),
        "hm": str(hm),
        "td": f"{td:.1f}",
        "pa": f"{pa:.1f}",
        "ps": f"{pa + 11.0:.1f}",
        "ts": f"{ta + 1.0:.1f}",
        "vs": "2000",
        "dc10Tca": "",
        **{flag: "" for flag in _QC_FIELDS},
        "tdQcflg": "",
    }
    if h % 101 == 50:  # missing temperature, flagged as missing
        item["ta"], item["taQcflg"] = "", "9"
    if h % 53 == 7:  # missing humidity, no flag
        item["hm"] = ""
    if h % 89 == 11 and item["ta"]:  # a value the QC marks as an error
        item["taQcflg"] = "1"
    return item


class FakeKmaServer:
    """The running server: `endpoint`, recorded `requests`, and the scenario queue."""

    def __init__(self, *, service_key: str | None = DEFAULT_SERVICE_KEY, today: dt.date | None = None) -> None:
        """`service_key` None accepts any key; `today` fixes "today" (KST) for the D-1 rule."""
        self.service_key = service_key
        self.today = today
        self._lock = threading.Lock()
        self._queue: deque[Scenario] = deque()
        self._default = Scenario.ok()
        self._requests: list[dict[str, str]] = []
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-kma", daemon=True
        )

    # ---------------------------------------------------------------- control

    @property
    def endpoint(self) -> str:
        """Full URL to pass as the client's `endpoint`."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{PATH}"

    @property
    def requests(self) -> list[dict[str, str]]:
        """A copy of the query parameters of every request received, in order."""
        with self._lock:
            return [dict(query) for query in self._requests]

    def set_default(self, scenario: Scenario) -> None:
        """The scenario used whenever the queue is empty."""
        with self._lock:
            self._default = scenario

    def enqueue(self, *scenarios: Scenario) -> None:
        """Scenarios for the next requests, one each, in order."""
        with self._lock:
            self._queue.extend(scenarios)

    def clear(self) -> None:
        """Forget recorded requests and queued scenarios (the default stays)."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a `slow` scenario
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # ---------------------------------------------------------------- request handling

    def _next(self, query: dict[str, str]) -> Scenario:
        with self._lock:
            self._requests.append(query)
            return self._queue.popleft() if self._queue else self._default

    def _today(self) -> dt.date:
        return self.today or dt.datetime.now(_KST).date()

    def respond(self, path: str, query: dict[str, str]) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) for one request; runs in a handler thread."""
        if path != PATH:
            return _gateway(404, "12", "NO_OPENAPI_SERVICE_ERROR", xml=True)
        scenario = self._next(query)
        if scenario.kind == "slow":
            if self._stopping.wait(scenario.delay):
                return _gateway(503, "04", "HTTP_ERROR", xml=True)
        elif scenario.kind == "http_error":
            body = f"<html><body><h1>{scenario.status} Internal Server Error</h1></body></html>"
            return scenario.status, "text/html;charset=UTF-8", body.encode()
        elif scenario.kind == "garbage":
            return scenario.status, "text/html;charset=UTF-8", b"Service is under maintenance. Please try again later."
        elif scenario.kind == "gateway":
            return _gateway(scenario.status, scenario.code, scenario.message, xml=scenario.xml)
        elif scenario.kind == "result":
            return _envelope(scenario.status, scenario.code, scenario.message, xml=scenario.xml)

        key = query.get("ServiceKey") or query.get("serviceKey")
        if not key or (self.service_key is not None and key != self.service_key):
            return _gateway(403, "30", "SERVICE_KEY_IS_NOT_REGISTERED_ERROR", xml=True)
        missing = [name for name in REQUIRED_PARAMS if not query.get(name)]
        if missing:
            return _envelope(200, "11", "NO_MANDATORY_REQUEST_PARAMETERS_ERROR")
        xml = query["dataType"].upper() == "XML"
        try:
            page_no, num_rows = int(query["pageNo"]), int(query["numOfRows"])
            start = dt.datetime.strptime(query["startDt"] + query["startHh"], "%Y%m%d%H")
            end = dt.datetime.strptime(query["endDt"] + query["endHh"], "%Y%m%d%H")
            valid = (
                page_no >= 1
                and num_rows >= 1
                and start <= end
                and query["dataCd"] == "ASOS"
                and query["dateCd"] == "HR"
                and query["dataType"].upper() in ("JSON", "XML")
                and query["stnIds"].isdigit()
                and len(query["startHh"]) == 2
                and len(query["endHh"]) == 2
            )
        except ValueError:
            valid = False
        if not valid:
            return _envelope(200, "10", "INVALID_REQUEST_PARAMETER_ERROR", xml=xml)
        if end.date() >= self._today():
            return _envelope(200, "99", "전날 자료까지 제공됩니다.", xml=xml)

        items = [
            item
            for item in hourly_items(query["stnIds"], start.date(), end.date())
            if start <= dt.datetime.strptime(item["tm"], "%Y-%m-%d %H:%M") <= end
        ]
        if scenario.kind == "fixed_items":
            items = [dict(item) for item in scenario.items or ()]
        elif scenario.kind == "single_item":
            items = items[:1]
        elif scenario.kind == "duplicates":
            items = items[:3] + items
        elif scenario.kind == "blank_values":
            items = [
                {k: ("" if k not in ("tm", "rnum", "stnId", "stnNm") else v) for k, v in item.items()} for item in items
            ]
        if not items:
            return _envelope(200, "03", "NO_DATA", xml=xml)
        for number, item in enumerate(items, start=1):
            item["rnum"] = str(number)
        page = items[(page_no - 1) * num_rows : page_no * num_rows]
        return _envelope(
            200, "00", "NORMAL_SERVICE", xml=xml, page=page, page_no=page_no, num_rows=num_rows, total=len(items)
        )


@contextmanager
def running_kma_server(
    scenario: Scenario | None = None,
    *,
    service_key: str | None = DEFAULT_SERVICE_KEY,
    today: dt.date | None = None,
) -> Iterator[FakeKmaServer]:
    """Start a `FakeKmaServer` (default scenario `scenario` or `ok`), yield it, and stop it."""
    server = FakeKmaServer(service_key=service_key, today=today)
    if scenario is not None:
        server.set_default(scenario)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -------------------------------------------------------------------- wire format


def _envelope(
    status: int,
    code: str,
    message: str,
    *,
    xml: bool = False,
    page: list[dict[str, str]] | None = None,
    page_no: int = 1,
    num_rows: int = 10,
    total: int = 0,
) -> tuple[int, str, bytes]:
    """The service's own `response` envelope, JSON or XML."""
    header = {"resultCode": code, "resultMsg": message}
    if code != "00":
        # Errors carry only the header.
        if xml:
            root = ET.Element("response")
            _children(ET.SubElement(root, "header"), header)
            return status, "text/xml;charset=UTF-8", _xml_bytes(root)
        return status, "application/json;charset=UTF-8", _json_bytes({"response": {"header": header}})
    page = page or []
    if xml:
        root = ET.Element("response")
        _children(ET.SubElement(root, "header"), header)
        body = ET.SubElement(root, "body")
        ET.SubElement(body, "dataType").text = "XML"
        items = ET.SubElement(body, "items")
        for item in page:
            _children(ET.SubElement(items, "item"), item)
        _children(body, {"pageNo": str(page_no), "numOfRows": str(num_rows), "totalCount": str(total)})
        return status, "text/xml;charset=UTF-8", _xml_bytes(root)
    item_node: Any = page[0] if len(page) == 1 else page
    body_json: dict[str, Any] = {
        "dataType": "JSON",
        "items": {"item": item_node} if page else "",
        "pageNo": page_no,
        "numOfRows": num_rows,
        "totalCount": total,
    }
    return status, "application/json;charset=UTF-8", _json_bytes({"response": {"header": header, "body": body_json}})


def _gateway(status: int, code: str, message: str, *, xml: bool) -> tuple[int, str, bytes]:
    """The data.go.kr gateway's `OpenAPI_ServiceResponse` error envelope."""
    header = {"errMsg": "SERVICE ERROR" if xml else message, "returnAuthMsg": message, "returnReasonCode": code}
    if xml:
        root = ET.Element("OpenAPI_ServiceResponse")
        _children(ET.SubElement(root, "cmmMsgHeader"), header)
        return status, "text/xml;charset=UTF-8", _xml_bytes(root)
    return status, "application/json;charset=UTF-8", _json_bytes({"OpenAPI_ServiceResponse": {"cmmMsgHeader": header}})


def _children(parent: ET.Element, values: dict[str, str]) -> None:
    for name, value in values.items():
        ET.SubElement(parent, name).text = value


def _xml_bytes(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode("utf-8")


def _handler_for(server: FakeKmaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {name: values[0] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
            status, content_type, body = server.respond(parts.path, query)
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout scenario)

        def log_message(self, format: str, *args: Any) -> None:
            """Silent: pytest output stays readable."""

    return Handler
