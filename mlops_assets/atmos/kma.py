"""Client of the KMA ASOS hourly observation API (data.go.kr `AsosHourlyInfoService/getWthrDataList`).

Why it looks the way it does:

* One request per month-sized chunk of 31 days with `numOfRows=999`: 31 days are 744 hourly
  rows, so a chunk is one page and any year of one station costs 12 calls of the development
  key's 10,000 a day. Paging by `totalCount` still works for smaller pages.
* Data exists only up to yesterday (KST), so the range is clamped to yesterday; asking for today
  makes the API fail. The clock is injectable so tests are deterministic.
* Transient failures (connection errors, timeouts, HTTP 5xx, resultCode 02/05) are retried with
  exponential backoff and full jitter; everything else raises a specific `KmaApiError` subclass at
  once, because retrying a bad key or an exhausted daily quota only burns more quota.
* The service key travels in the query string, so every message and log line this module writes is
  passed through a redactor; exceptions are raised `from None` so a chained `requests` exception
  (whose text contains the full URL) cannot leak the key into a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import quote, quote_plus, unquote
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import requests

from mlops_assets.atmos.observations import conform, empty_observations

logger = logging.getLogger(__name__)

KST = "Asia/Seoul"

#: KMA item field -> canonical variable (see observations.VARIABLES).
FIELD_MAP: dict[str, str] = {
    "ta": "tmp",
    "rn": "precip",
    "wd": "wd",
    "ws": "ws",
    "pa": "p",
    "ps": "mslp",
    "hm": "rh",
    "td": "td",
}

# resultCode / returnReasonCode classes. The data.go.kr gateway and the KMA service share one
# numbering (the gateway uses 20-33 and 22 for the quota; the service 00-11 and 99).
_OK = 0
_NO_DATA = 3
_RETRYABLE_CODES = frozenset({2, 5})  # DB error, timeout
_REQUEST_CODES = frozenset({10, 11})  # invalid / missing request parameter
_CALL_LIMIT_CODES = frozenset({22})
_AUTH_CODES = frozenset({20, 21, 30, 31, 32, 33})  # denied, suspended, unregistered, expired, IP, unsigned

_EXCERPT_CHARS = 200
_URLLIB3_LOGGER = "urllib3.connectionpool"


class KmaApiError(RuntimeError):
    """Any failure of the KMA API; `code`/`reason` are the API's resultCode and message if known."""

    def __init__(self, message: str, *, code: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class KmaAuthError(KmaApiError):
    """The gateway rejected the service key (unregistered, expired, suspended, IP, access denied)."""


class KmaCallLimitError(KmaApiError):
    """The key's daily call quota is used up (code 22); retrying today only fails again."""


class KmaRequestError(KmaApiError):
    """The API rejected the request parameters (codes 10/11): a bug on our side, not transient."""


class KmaRetriesExhaustedError(KmaApiError):
    """A transient failure persisted through every attempt; the message names request and cause."""


class _TransientError(Exception):
    """Internal: this attempt failed in a way worth retrying; `args[0]` is a redacted cause."""


@dataclass(frozen=True)
class _Redactor:
    """Removes every spelling of the service key (raw, URL-encoded) from text meant for humans."""

    secrets: tuple[str, ...]

    @classmethod
    def for_key(cls, key: str) -> _Redactor:
        variants = {key, unquote(key), quote(key, safe=""), quote(key), quote_plus(key), quote_plus(unquote(key))}
        variants |= {v.lower() for v in variants if "%" in v}
        return cls(tuple(sorted((v for v in variants if v), key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class _RedactingFilter(logging.Filter):
    """Redacts the key from records of a third-party logger (urllib3 logs each URL at DEBUG)."""

    def __init__(self, redact: _Redactor) -> None:
        super().__init__()
        self._redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


@dataclass(frozen=True)
class _Page:
    """One parsed page of a successful response."""

    items: list[dict[str, Any]]
    total_count: int


@dataclass
class _Envelope:
    """What a response body says, independent of JSON or XML."""

    gateway: bool  # the data.go.kr OpenAPI_ServiceResponse envelope rather than the service's own
    code: str
    reason: str
    items: list[dict[str, Any]] = field(default_factory=list)
    total_count: int | None = None


def _kst_today() -> dt.date:
    return dt.datetime.now(ZoneInfo(KST)).date()


#: Days per request: 31 days are 744 hourly rows, one page of 999, and any 366 days take 12 requests.
CHUNK_DAYS = 31


def month_chunks(first_day: dt.date, last_day: dt.date) -> Iterator[tuple[dt.date, dt.date]]:
    """Consecutive month-sized (31-day) ranges covering `first_day..last_day` (inclusive).

    Fixed 31-day chunks rather than calendar months: a year that starts mid-month would cost 13
    calendar-month requests, but always fits in 12 chunks of 31 days.
    """
    start = first_day
    while start <= last_day:
        end = min(last_day, start + dt.timedelta(days=CHUNK_DAYS - 1))
        yield start, end
        start = end + dt.timedelta(days=1)


class KmaAsosClient:
    """Hourly ASOS observations of one station from the KMA API, as the canonical frame.

    Use as a context manager (the HTTP session is closed on exit). `request_count` counts every
    HTTP request sent, retries included, because that is what the daily quota counts.
    """

    DEFAULT_ENDPOINT: ClassVar[str] = "https://apis.data.go.kr/1360000/AsosHourlyInfoService/getWthrDataList"

    def __init__(
        self,
        service_key: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        num_of_rows: int = 999,
        max_attempts: int = 5,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 60.0,
        timeout: float = 30.0,
        today: Callable[[], dt.date] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        """`service_key` may be data.go.kr's "Encoding" (percent-encoded) or "Decoding" key.

        `today` returns the current KST date (injected by tests); `session`, `sleep` and `rng`
        are injectable for the same reason. A passed-in session is not closed by this client.
        """
        if not service_key:
            raise ValueError("service_key is empty; set KMA_SERVICE_KEY to your data.go.kr key")
        if num_of_rows < 1:
            raise ValueError(f"num_of_rows must be >= 1, got {num_of_rows}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        # The portal shows an already percent-encoded key; requests encodes again, which the
        # gateway rejects as SERVICE_KEY_IS_NOT_REGISTERED. Decode once so both forms work.
        self._service_key = unquote(service_key) if "%" in service_key else service_key
        self._redact = _Redactor.for_key(service_key)
        self.endpoint = endpoint
        self.num_of_rows = num_of_rows
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.timeout = timeout
        self._today = today or _kst_today
        self._owns_session = session is None
        self._session = session or requests.Session()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.request_count = 0
        # urllib3 logs every request line, query string included, at DEBUG. Redact it for as long
        # as this client lives; `close()` removes the filter again.
        self._log_filter = _RedactingFilter(self._redact)
        logging.getLogger(_URLLIB3_LOGGER).addFilter(self._log_filter)

    def __repr__(self) -> str:
        return f"KmaAsosClient(endpoint={self.endpoint!r}, service_key='***')"

    def __enter__(self) -> KmaAsosClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session if this client created it, and detach the log filter."""
        logging.getLogger(_URLLIB3_LOGGER).removeFilter(self._log_filter)
        if self._owns_session:
            self._session.close()

    # ------------------------------------------------------------------ public API

    def fetch_hourly(self, station: str, first_day: dt.date, last_day: dt.date) -> pd.DataFrame:
        """Canonical observations of `station` for the KST days `first_day..last_day` inclusive.

        Days from today (KST) on are dropped, since the API only serves up to yesterday; a range
        entirely in the future returns an empty frame without any request.
        """
        if first_day > last_day:
            raise ValueError(f"first_day {first_day} is after last_day {last_day}")
        yesterday = self._today() - dt.timedelta(days=1)
        if first_day > yesterday:
            logger.info("KMA ASOS: %s..%s is not available yet (data up to %s KST)", first_day, last_day, yesterday)
            return empty_observations()
        last_day = min(last_day, yesterday)
        items: list[dict[str, Any]] = []
        for chunk_first, chunk_last in month_chunks(first_day, last_day):
            items.extend(self._fetch_chunk(str(station), chunk_first, chunk_last))
        frame = self._to_frame(items, str(station))
        start = pd.Timestamp(first_day).tz_localize(KST)
        end = pd.Timestamp(last_day + dt.timedelta(days=1)).tz_localize(KST)
        frame = frame[(frame["time"] >= start) & (frame["time"] < end)]
        return conform(frame)

    # ------------------------------------------------------------------ requests

    def _fetch_chunk(self, station: str, first_day: dt.date, last_day: dt.date) -> list[dict[str, Any]]:
        """All items of one month chunk, paging until `totalCount` rows were requested."""
        items: list[dict[str, Any]] = []
        page_no = 1
        while True:
            page = self._fetch_page(station, first_day, last_day, page_no)
            items.extend(page.items)
            if page_no * self.num_of_rows >= page.total_count:
                break
            if not page.items:
                logger.warning(
                    "KMA ASOS %s %s..%s: page %d empty before totalCount %d was reached",
                    station,
                    first_day,
                    last_day,
                    page_no,
                    page.total_count,
                )
                break
            page_no += 1
        if page.total_count and len(items) != page.total_count:
            logger.warning(
                "KMA ASOS %s %s..%s: got %d rows, totalCount says %d",
                station,
                first_day,
                last_day,
                len(items),
                page.total_count,
            )
        return items

    def _params(self, station: str, first_day: dt.date, last_day: dt.date, page_no: int) -> dict[str, str]:
        return {
            "ServiceKey": self._service_key,
            "pageNo": str(page_no),
            "numOfRows": str(self.num_of_rows),
            "dataType": "JSON",
            "dataCd": "ASOS",
            "dateCd": "HR",
            "startDt": first_day.strftime("%Y%m%d"),
            "startHh": "00",
            "endDt": last_day.strftime("%Y%m%d"),
            "endHh": "23",
            "stnIds": station,
        }

    def _fetch_page(self, station: str, first_day: dt.date, last_day: dt.date, page_no: int) -> _Page:
        """One page, retried on transient failures; raises a KmaApiError subclass otherwise."""
        params = self._params(station, first_day, last_day, page_no)
        what = f"station {station} {first_day:%Y-%m} ({first_day}..{last_day}) page {page_no}"
        last_cause = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._attempt(params, what)
            except _TransientError as exc:
                last_cause = str(exc)
            if attempt < self.max_attempts:
                delay = self._rng.uniform(0.0, min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1)))
                logger.warning(
                    "KMA ASOS %s: attempt %d/%d failed (%s); retrying in %.2fs",
                    what,
                    attempt,
                    self.max_attempts,
                    last_cause,
                    delay,
                )
                self._sleep(delay)
        raise KmaRetriesExhaustedError(
            f"KMA ASOS request for {what} failed after {self.max_attempts} attempts "
            f"to {self.endpoint}; last error: {last_cause}"
        )

    def _attempt(self, params: dict[str, str], what: str) -> _Page:
        """Send one HTTP request and classify its outcome."""
        self.request_count += 1
        try:
            response = self._session.get(
                self.endpoint, params=params, headers={"Accept": "application/json"}, timeout=self.timeout
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            # Do not chain: the requests exception's text contains the URL with the key.
            raise _TransientError(f"{type(exc).__name__}: {self._redact(str(exc))}") from None
        except requests.RequestException as exc:
            raise KmaApiError(f"KMA ASOS {what}: {type(exc).__name__}: {self._redact(str(exc))}") from None
        logger.debug("KMA ASOS %s: HTTP %d from %s", what, response.status_code, self._redact(response.url or ""))
        status = response.status_code
        envelope = _parse_body(response.content)
        if envelope is None:
            excerpt = self._excerpt(response.content)
            if status >= 500:
                raise _TransientError(f"HTTP {status}: {excerpt}")
            raise KmaApiError(f"KMA ASOS {what}: HTTP {status}, body is neither JSON nor XML: {excerpt!r}")
        code_text = envelope.code.strip()
        reason = self._redact(envelope.reason.strip())
        try:
            code = int(code_text)
        except ValueError:
            code = -1
        source = "data.go.kr gateway" if envelope.gateway else "KMA ASOS"
        message = f"{source} rejected {what}: code {code_text or '?'} {reason} (HTTP {status})"
        if code in _AUTH_CODES:
            raise KmaAuthError(
                f"{message}; check KMA_SERVICE_KEY (registered for this service, not expired, "
                "approved; keys take up to an hour to activate)",
                code=code_text,
                reason=reason,
            )
        if code in _CALL_LIMIT_CODES:
            raise KmaCallLimitError(f"{message}; the daily call quota is used up", code=code_text, reason=reason)
        if code in _REQUEST_CODES:
            raise KmaRequestError(message, code=code_text, reason=reason)
        if code in _RETRYABLE_CODES:
            raise _TransientError(f"code {code_text} {reason} (HTTP {status})")
        if code == _NO_DATA and not envelope.gateway:
            return _Page(items=[], total_count=0)
        if code == _OK and not envelope.gateway:
            if status >= 500:
                raise _TransientError(f"HTTP {status} with resultCode 00")
            total = envelope.total_count if envelope.total_count is not None else len(envelope.items)
            return _Page(items=envelope.items, total_count=total)
        raise KmaApiError(message, code=code_text, reason=reason)

    def _excerpt(self, content: bytes) -> str:
        text = " ".join(content.decode("utf-8", errors="replace").split())
        return self._redact(text[:_EXCERPT_CHARS] + ("..." if len(text) > _EXCERPT_CHARS else ""))

    # ------------------------------------------------------------------ conversion

    @staticmethod
    def _to_frame(items: list[dict[str, Any]], station: str) -> pd.DataFrame:
        """Items -> canonical columns; "" is missing, except `rn` "" means no rain reported (0)."""
        if not items:
            return empty_observations()
        raw = pd.DataFrame.from_records(items)
        if "tm" not in raw.columns:
            raise KmaApiError(f"KMA ASOS items have no 'tm' field (fields: {sorted(raw.columns)[:20]})")
        times = pd.to_datetime(raw["tm"].astype("string").str.strip(), format="%Y-%m-%d %H:%M", errors="coerce")
        if times.isna().any():
            bad = raw["tm"][times.isna()].iloc[0]
            raise KmaApiError(f"KMA ASOS item has an unparseable 'tm' {bad!r}; expected 'YYYY-MM-DD HH:MM' (KST)")
        frame = pd.DataFrame(index=raw.index)
        frame["station"] = (
            raw["stnId"].astype("string").str.strip().fillna(station) if "stnId" in raw.columns else station
        )
        frame["time"] = times.dt.tz_localize(KST)
        for kma_name, name in FIELD_MAP.items():
            frame[name] = _numbers(raw, kma_name, float, blank=np.nan)
            frame[f"{name}_qc"] = _numbers(raw, f"{kma_name}Qcflg", int, blank=pd.NA)
        # "" precipitation is the API's "no rain reported" (the old system stored 0), unless the
        # QC flag explicitly says the value is missing (9): that stays NaN.
        no_rain = _blank(raw, "rn") & ~frame["precip_qc"].eq(9).fillna(False).astype(bool)
        frame.loc[no_rain, "precip"] = 0.0
        frame = frame.drop_duplicates(subset=["station", "time"], keep="first")
        return frame.reset_index(drop=True)


def _blank(raw: pd.DataFrame, column: str) -> pd.Series:
    """True where `column` is absent, null or an empty/whitespace string."""
    if column not in raw.columns:
        return pd.Series(True, index=raw.index)
    text = raw[column].astype("string").str.strip()
    return text.isna() | text.eq("")


def _numbers(raw: pd.DataFrame, column: str, kind: type, *, blank: Any) -> pd.Series:
    """Parse a string column; blanks become `blank`, anything else unparseable raises KmaApiError."""
    dtype = "float64" if kind is float else "Int16"
    if column not in raw.columns:
        return pd.Series(blank, index=raw.index, dtype=dtype)
    text = raw[column].astype("string").str.strip()
    values = pd.to_numeric(text.mask(text.eq("")), errors="coerce")
    bad = values.isna() & ~(text.isna() | text.eq(""))
    if bad.any():
        raise KmaApiError(f"KMA ASOS field {column!r} has a non-numeric value {text[bad].iloc[0]!r}")
    if kind is int:
        return values.round().astype("Int16")
    return values.astype("float64")


# ---------------------------------------------------------------------- body parsing


def _parse_body(content: bytes) -> _Envelope | None:
    """Either envelope, from JSON or XML; None if the body is neither (e.g. an HTML error page)."""
    stripped = content.strip().removeprefix(b"\xef\xbb\xbf").strip()  # tolerate a UTF-8 BOM
    if not stripped:
        return None
    if stripped[:1] in (b"{", b"["):
        try:
            document = json.loads(stripped)
        except ValueError:
            return None
        return _from_json(document)
    if stripped[:1] == b"<":
        try:
            root = ET.fromstring(stripped)
        except ET.ParseError:
            return None
        return _from_xml(root)
    return None


def _from_json(document: Any) -> _Envelope | None:
    if not isinstance(document, dict):
        return None
    if "OpenAPI_ServiceResponse" in document:
        header = (document["OpenAPI_ServiceResponse"] or {}).get("cmmMsgHeader") or {}
        return _Envelope(
            gateway=True,
            code=str(header.get("returnReasonCode", "")),
            reason=str(header.get("returnAuthMsg") or header.get("errMsg") or ""),
        )
    response = document.get("response")
    if not isinstance(response, dict):
        return None
    header = response.get("header") or {}
    body = response.get("body") or {}
    items_node = body.get("items") if isinstance(body, dict) else None
    raw_items = items_node.get("item") if isinstance(items_node, dict) else None
    if isinstance(raw_items, dict):
        raw_items = [raw_items]
    items = [item for item in raw_items or [] if isinstance(item, dict)]
    total = body.get("totalCount") if isinstance(body, dict) else None
    return _Envelope(
        gateway=False,
        code=str(header.get("resultCode", "")),
        reason=str(header.get("resultMsg", "")),
        items=items,
        total_count=_int_or_none(total),
    )


def _from_xml(root: ET.Element) -> _Envelope | None:
    if root.tag == "OpenAPI_ServiceResponse":
        return _Envelope(
            gateway=True,
            code=root.findtext("cmmMsgHeader/returnReasonCode", ""),
            reason=root.findtext("cmmMsgHeader/returnAuthMsg") or root.findtext("cmmMsgHeader/errMsg") or "",
        )
    if root.tag != "response":
        return None
    items = [{child.tag: child.text or "" for child in item} for item in root.iterfind("body/items/item")]
    return _Envelope(
        gateway=False,
        code=root.findtext("header/resultCode", ""),
        reason=root.findtext("header/resultMsg", ""),
        items=items,
        total_count=_int_or_none(root.findtext("body/totalCount")),
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None
