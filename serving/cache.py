"""The in-memory model cache: which version each served model answers with, and how it changes.

A background poller resolves `<name>@<alias>` in the MLflow registry every `poll_seconds` and
loads a version only when the alias moved. Loading and registry calls run in worker threads; the
event loop only ever does a single reference assignment (`ModelSlot.current = new`) of an
immutable `LoadedModel`, so a request that already read `current` finishes on its version while
new requests get the new one. The request path reads `current` and never talks to MLflow, except
while nothing is loaded yet: then concurrent requests share one in-flight load (single flight).
A registry that cannot be reached is logged and counted, and the loaded version keeps serving.

Every MLflow call names the tracking URI it goes to (`MlflowResolver`): the service sets no
process-wide MLflow state, so two apps in one process (or a test) never see each other's registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mlops_assets.registry_errors import is_missing_alias
from serving.errors import ModelUnavailable
from serving.metrics import ServingMetrics
from serving.models import ModelModule, ModelRef

log = logging.getLogger(__name__)

#: While nothing is loaded, a request retries the registry itself at most this often; the rest
#: get the last failure as their 503 at once instead of queueing behind a dead registry.
FIRST_LOAD_RETRY_SECONDS = 1.0
#: Slot states that let `/ready` answer 200 (given at least one model is loaded).
_SETTLED = frozenset({"loaded", "no_champion"})


class AliasNotFound(Exception):
    """The registry answered: the model or the alias does not exist (as opposed to unreachable)."""


class AliasResolver(Protocol):
    def resolve(self, name: str, alias: str) -> str:
        """The version `alias` points at; `AliasNotFound` if none, any other exception if unreachable."""

    def download(self, name: str, version: str, into: Path) -> Path:
        """Copy the version's MLflow model into the empty directory `into`; returns the model's directory."""

    def describe(self) -> str:
        """Where the registry is, for messages."""


class MlflowResolver:
    """The registry at one tracking URI, through `MlflowClient`s that name it (no global MLflow state)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None

    def client(self) -> Any:
        """One client, created lazily (in the poller's thread: importing MLflow takes a second)."""
        from mlflow.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def resolve(self, name: str, alias: str) -> str:
        try:
            version = self.client().get_model_version_by_alias(name, alias)
        except Exception as exc:
            if is_missing_alias(exc):
                raise AliasNotFound(str(exc)) from exc
            raise
        return str(version.version)

    def download(self, name: str, version: str, into: Path) -> Path:
        """The version's artifacts, fetched from where the registry says they are stored.

        Not `models:/<name>/<version>`: MLflow resolves that URI through the process-wide registry
        URI, whatever `tracking_uri` a call passes.
        """
        import mlflow.artifacts

        source = self.client().get_model_version_download_uri(name, version)
        if source.startswith("models:/"):
            raise ValueError(
                f"models:/{name}/{version} has no artifact location in the registry, only the source {source!r}"
            )
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(into), tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
        )
        return Path(local)

    def describe(self) -> str:
        return self.tracking_uri


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One registry version in memory; immutable, so swapping the reference is the whole swap."""

    module: ModelModule[Any, Any, Any, Any]
    version: str
    artifact: Any
    ref: ModelRef
    loaded_at: float


class ModelSlot:
    """The current version of one served model and the single-flight refresh that replaces it."""

    def __init__(
        self, module: ModelModule[Any, Any, Any, Any], alias: str, resolver: AliasResolver, metrics: ServingMetrics
    ) -> None:
        self.module = module
        self.alias = alias
        self.resolver = resolver
        self.metrics = metrics
        #: The version answering requests; replaced by one assignment, never mutated.
        self.current: LoadedModel | None = None
        #: Why the last refresh could not reach the registry / load the version (None: it could).
        self.registry_error: str | None = None
        self.load_error: str | None = None
        #: The registry's words when the alias does not exist (None: it does).
        self.alias_missing: str | None = None
        self.loads = 0
        self._inflight: asyncio.Task[None] | None = None
        self._last_attempt = -float("inf")
        metrics.init_model(module.name)

    @property
    def name(self) -> str:
        return self.module.name

    async def get(self) -> LoadedModel:
        """The version to answer with: a plain read once loaded (the hot path)."""
        loaded = self.current
        if loaded is not None:
            return loaded
        if self._inflight is None and time.monotonic() - self._last_attempt < FIRST_LOAD_RETRY_SECONDS:
            raise ModelUnavailable(self.unavailable_reason(), self.name)
        await self.refresh()
        loaded = self.current
        if loaded is None:
            raise ModelUnavailable(self.unavailable_reason(), self.name)
        return loaded

    def refresh(self) -> Awaitable[None]:
        """Resolve the alias and load the version if it moved; joins the refresh already running."""
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._refresh(), name=f"refresh-{self.name}")
            self._inflight.add_done_callback(self._refresh_done)
        # Shielded: a cancelled request (client gone) must not cancel a load others wait for.
        return asyncio.shield(self._inflight)

    def _refresh_done(self, task: asyncio.Task[None]) -> None:
        self._inflight = None
        self._last_attempt = time.monotonic()

    def unavailable_reason(self) -> str:
        where = f"the registry at {self.resolver.describe()}"
        if self.registry_error is not None:
            why = f"cannot reach {where}: {self.registry_error}"
        elif self.load_error is not None:
            why = f"loading the {self.alias!r} version failed: {self.load_error}"
        elif self.alias_missing is not None:
            why = f"registered model {self.name!r} has no alias {self.alias!r} in {where} ({self.alias_missing})"
        else:
            why = "the first load has not finished yet"
        return f"no version of {self.name!r} is loaded: {why}"

    @property
    def state(self) -> str:
        """One word for `/ready`: loaded, no_champion, registry_unreachable, load_failed or loading.

        `no_champion` only when the registry answered that the alias does not exist; a registry
        that cannot be reached says nothing about the champion.
        """
        if self.current is not None:
            return "loaded"
        if self.registry_error is not None:
            return "registry_unreachable"
        if self.load_error is not None:
            return "load_failed"
        if self.alias_missing is not None:
            return "no_champion"
        return "loading"

    def status(self) -> dict[str, Any]:
        current = self.current
        return {
            "state": self.state,
            "version": None if current is None else current.version,
            "alias": self.alias,
            "loaded_at": None if current is None else current.loaded_at,
            "registry_error": self.registry_error,
            "load_error": self.load_error,
            "alias_missing": self.alias_missing,
        }

    async def _refresh(self) -> None:
        name, metrics = self.name, self.metrics
        try:
            version = await asyncio.to_thread(self.resolver.resolve, name, self.alias)
        except AliasNotFound as exc:
            self._registry_reachable()
            if self.alias_missing is None:
                keeping = "" if self.current is None else f"; still serving version {self.current.version}"
                log.warning("no version of %s has alias %r (%s)%s", name, self.alias, exc, keeping)
            self.alias_missing = str(exc)
            metrics.registry_polls.labels(name, "no_alias").inc()
            return
        except Exception as exc:  # whatever the client raises, the registry is unusable right now
            if self.registry_error is None:
                log.error("registry unreachable while resolving %s@%s: %s", name, self.alias, exc, exc_info=exc)
            else:
                log.warning("registry still unreachable for %s@%s: %s", name, self.alias, exc)
            self.registry_error = f"{type(exc).__name__}: {exc}"
            metrics.registry_polls.labels(name, "error").inc()
            metrics.registry_poll_errors.labels(name).inc()
            metrics.registry_up.labels(name).set(0)
            return
        self._registry_reachable()
        self.alias_missing = None
        current = self.current
        if current is not None and current.version == version:
            self.load_error = None  # the alias came back to what we serve: an older failure is moot
            metrics.registry_polls.labels(name, "unchanged").inc()
            return
        metrics.registry_polls.labels(name, "changed").inc()
        await self._load(version, current)

    def _download_and_load(self, version: str) -> Any:
        """The module's artifact, read from a private copy of the version's files (deleted after)."""
        with tempfile.TemporaryDirectory(prefix=f"serving-{self.name}-v{version}-") as directory:
            return self.module.load(str(self.resolver.download(self.name, version, Path(directory))))

    def _registry_reachable(self) -> None:
        if self.registry_error is not None:
            log.info("registry reachable again for %s@%s", self.name, self.alias)
        self.registry_error = None
        self.metrics.registry_up.labels(self.name).set(1)

    async def _load(self, version: str, previous: LoadedModel | None) -> None:
        name, metrics = self.name, self.metrics
        uri = f"models:/{name}/{version}"  # the version, not the alias: it may move again meanwhile
        started = time.perf_counter()
        self.loads += 1
        try:
            artifact = await asyncio.to_thread(self._download_and_load, version)
        except Exception as exc:  # a version that cannot be loaded is reported, never swapped in
            keeping = "nothing served yet" if previous is None else f"still serving version {previous.version}"
            log.error("loading %s failed; %s", uri, keeping, exc_info=exc)
            self.load_error = f"{uri}: {type(exc).__name__}: {exc}"
            metrics.model_loads.labels(name, "error").inc()
            return
        seconds = time.perf_counter() - started
        loaded_at = time.time()
        self.current = LoadedModel(self.module, version, artifact, ModelRef(name, version, self.alias), loaded_at)
        self.load_error = None
        metrics.model_loads.labels(name, "ok").inc()
        metrics.model_load_seconds.labels(name).observe(seconds)
        metrics.model_version.labels(name).set(_numeric(version))
        metrics.model_loaded_at.labels(name).set(loaded_at)
        log.info(
            "now serving %s version %s (%s) after %.2fs load",
            name,
            version,
            "first load" if previous is None else f"was {previous.version}",
            seconds,
        )


class ModelCache:
    """All served models and the poller keeping them on their alias."""

    def __init__(self, slots: dict[str, ModelSlot], poll_seconds: float) -> None:
        self.slots = slots
        self.poll_seconds = poll_seconds
        self.poller: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return not self.not_ready_reasons()

    def not_ready_reasons(self) -> list[str]:
        """Why `/ready` must answer 503; empty when ready.

        Ready: every model is loaded or known (the registry answered) to have no champion, at
        least one is loaded, and the poller runs. A model without a champion does not hold the
        others back; its own route answers 503.
        """
        reasons = [slot.unavailable_reason() for slot in self.slots.values() if slot.state not in _SETTLED]
        if not reasons and not any(slot.current is not None for slot in self.slots.values()):
            reasons.append(
                "no configured model has a version loaded: "
                + "; ".join(slot.unavailable_reason() for slot in self.slots.values())
            )
        if (poller := self.poller_error()) is not None:
            reasons.append(poller)
        return reasons

    def poller_error(self) -> str | None:
        """Why the poller is not running, if it died (a bug: it handles registry failures itself)."""
        poller = self.poller
        if poller is None or not poller.done():
            return None
        if poller.cancelled():
            return "the registry poller was cancelled"
        return f"the registry poller crashed: {poller.exception()!r}"

    async def poll_once(self) -> None:
        await asyncio.gather(*(slot.refresh() for slot in self.slots.values()))

    async def _poll_forever(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.poll_seconds)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Poll from now (the first poll is the startup load, not awaited) until the context ends."""
        self.poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="registry-poller")
        self.poller.add_done_callback(_log_poller_death)
        try:
            yield
        finally:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller


def _log_poller_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("registry poller crashed; /ready now answers 503", exc_info=task.exception())


def _numeric(version: str) -> float:
    """MLflow registry versions are integers; anything else is exported as -1 rather than guessed."""
    try:
        return float(int(version))
    except ValueError:
        return -1.0
