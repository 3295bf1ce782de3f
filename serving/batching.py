"""Adaptive micro-batching: concurrent requests for one model share one `predict` call.

A one-row scikit-learn predict costs about what 8-32 rows cost (input validation, tree traversal
set-up), so under load the service gathers the rows waiting for a model and predicts them
together; each caller gets its own output row back. The rule (the same idea as BentoML's
dispatcher and Ray Serve's `@serve.batch`, kept small):

- an idle model dispatches a request at once, so batching costs nothing at concurrency 1; when its
  one-row predicts are cheap (smoothed CPU time of one-row calls under `SERVING_INLINE_BELOW_US`)
  it even predicts on the event loop: handing a call to a thread and back costs 40-160 us here, more than a linear
  or compiled-tree predict, and a predict that holds the GIL (NumPy-level code) stalls the loop
  anyway, up to the interpreter's 5 ms switch interval per hand-over. CPU time, not wall time, so
  that a worker preempted on a busy machine does not push a cheap model onto the thread path; of
  one-row calls only, since a batch of a compiled ridge_boost costs about twice one row: judged by
  the batches, a model pushed onto the thread path once by a slow call stayed there under load
  (batches of 2-3 at 0.7 ms a call, p99 15 ms at c=8, where inline one-row calls take 0.23 ms);
- a one-row predict above that bound still runs inline once batches have shown that batching does
  not pay (a batched row costs at least half a one-row call, as with compiled trees, whose cost
  grows with the rows), up to 20 times the bound: on the threads such a model only adds the hop
  and the wait for a batch. On a machine 2x slower, compiled ridge_boost's ~225 us one-row call
  crossed the 250 us bound and went to the threads for good (bench/README.md);
- while a batch runs, new requests queue; the queue is dispatched when the running batch ends,
  or, on the second predict thread, as soon as it holds `max_batch` rows or its oldest request has
  waited `max_wait_ms` (at most `CONCURRENT_BATCHES` batches run at once);
- a batch holds rows of one loaded version only (a hot swap splits batches, never mixes them);
- predict runs in a worker thread of this model whose BLAS/OpenMP pools are limited to one thread
  (set once when the thread starts), so the event loop keeps parsing requests meanwhile;
- a request that cannot finish within `deadline_ms` (its wait so far plus the recent batch time)
  is answered 503 `deadline_exceeded` instead of queueing behind work it will not outlive.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import DeadlineExceeded
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

#: Batches of one model that may run at once: one gathers while the other predicts; more would
#: only share the same core (a worker per core).
CONCURRENT_BATCHES = 2
#: An inline-cheap call may take this many times its CPU bound in wall time (preemption on a busy
#: machine); beyond that it is waiting on something and goes to the predict threads. Also the cap
#: on a one-row call that is inline because batching does not pay (below).
_INLINE_WALL_FACTOR = 20
#: Batching pays when a batched row costs less than this fraction of a one-row call.
_BATCHING_PAYS_BELOW = 0.5
#: Weight of the newest batch in the running estimate of a batch's duration (for deadlines).
_SMOOTHING = 0.2


@dataclass(frozen=True)
class BatchSettings:
    max_batch: int
    max_wait_ms: float
    deadline_ms: float
    #: An idle model whose smoothed batch time is under this predicts inline (0: never).
    inline_below_seconds: float = 250e-6


@dataclass(slots=True)
class _Pending:
    loaded: Any  # serving.cache.LoadedModel; one batch = one version
    row: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued_at: float


def limit_to_one_thread() -> None:
    """Thread initializer: one BLAS/OpenMP thread for predicts run by this thread.

    OpenMP's thread count is per calling thread, so it must be set in the thread that predicts;
    BLAS pools are process-wide (the server also sets OMP/OPENBLAS/MKL_NUM_THREADS=1).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


class Batcher:
    """The queue and dispatcher of one served model in one worker."""

    def __init__(self, name: str, predict: Any, settings: BatchSettings, metrics: ServingMetrics) -> None:
        self.name = name
        self.predict = predict  # (artifact, rows) -> outputs with one entry per row
        self.settings = settings
        self.metrics = metrics
        self._queue: collections.deque[_Pending] = collections.deque()
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        #: Threads (the event loop's) already limited to one BLAS/OpenMP thread for inline predicts.
        self._limited_threads: set[int] = set()
        #: Smoothed wall seconds per batch (deadline estimates); wall and CPU seconds per one-row
        #: predict call and CPU seconds per row of batched calls (the inline decision); measured,
        #: 0 until the first such call.
        self.batch_seconds = 0.0
        self.row_seconds = 0.0
        self.row_cpu_seconds = 0.0
        self.batched_row_cpu_seconds = 0.0
        self._executor = ThreadPoolExecutor(
            CONCURRENT_BATCHES, thread_name_prefix=f"predict-{name}", initializer=limit_to_one_thread
        )
        self._batch_size = metrics.batch_size.labels(name)
        self._queue_wait = metrics.queue_wait.labels(name)
        self._predict_seconds = metrics.predict_seconds.labels(name)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, loaded: Any, row: np.ndarray) -> np.ndarray:
        """Queue one request's input rows; returns its own rows of the batch's output."""
        if not self._running and not self._queue and self._cheap():
            return self._predict_inline(loaded, row)
        deadline = self.settings.deadline_ms / 1e3
        if self._running and self._expected_seconds() > deadline:
            raise DeadlineExceeded(
                f"{self.name}: {len(self._queue)} requests queued, the expected wait "
                f"({self._expected_seconds() * 1e3:.1f} ms) exceeds the deadline of "
                f"{self.settings.deadline_ms:g} ms (SERVING_DEADLINE_MS); retry later",
                self.name,
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(loaded, row, future, time.perf_counter()))
        self._maybe_dispatch()
        return await future

    def _cheap(self) -> bool:
        """Predict inline? A one-row call takes little CPU, or batching has been seen not to pay
        (rows of a batch cost about what one row alone costs: compiled trees) and the call is not
        long; and never when its wall time is long (a call that waits on I/O or on other threads
        belongs off the loop even if this thread burns little CPU)."""
        bound = self.settings.inline_below_seconds
        cpu = self.row_cpu_seconds
        if not (cpu > 0 and self.row_seconds < _INLINE_WALL_FACTOR * bound):
            return False
        if cpu < bound:
            return True
        batched = self.batched_row_cpu_seconds
        return batched >= _BATCHING_PAYS_BELOW * cpu and cpu < _INLINE_WALL_FACTOR * bound

    def _expected_seconds(self) -> float:
        """Batches ahead of a new request (running + queued + its own) times the batch time."""
        batches = 1 + -(-(len(self._queue) + 1) // self.settings.max_batch)
        return batches * self.batch_seconds

    def _maybe_dispatch(self) -> None:
        queue, settings = self._queue, self.settings
        while queue and self._running < CONCURRENT_BATCHES:
            if self._running and len(queue) < settings.max_batch:
                waited = time.perf_counter() - queue[0].queued_at
                if waited * 1e3 < settings.max_wait_ms:
                    self._arm_timer(settings.max_wait_ms / 1e3 - waited)
                    return
            self._dispatch()

    def _arm_timer(self, delay: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._maybe_dispatch()

    def _dispatch(self) -> None:
        """Take the queue's head (one version, at most max_batch live requests) and predict it."""
        now = time.perf_counter()
        deadline = self.settings.deadline_ms / 1e3
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.settings.max_batch:
            pending = self._queue[0]
            if batch and pending.loaded is not batch[0].loaded:
                break
            self._queue.popleft()
            if pending.future.done():  # the client went away (cancelled)
                continue
            waited = now - pending.queued_at
            if waited + self.batch_seconds > deadline:
                pending.future.set_exception(
                    DeadlineExceeded(
                        f"{self.name}: waited {waited * 1e3:.1f} ms for a batch that takes about "
                        f"{self.batch_seconds * 1e3:.1f} ms: past the deadline of {self.settings.deadline_ms:g} ms "
                        "(SERVING_DEADLINE_MS); retry later",
                        self.name,
                    )
                )
                continue
            self._queue_wait.observe(waited)
            batch.append(pending)
        if not batch:
            return
        self._running += 1
        loaded = batch[0].loaded
        rows = batch[0].row if len(batch) == 1 else np.vstack([p.row for p in batch])
        task = asyncio.get_running_loop().run_in_executor(self._executor, self._timed_predict, loaded.artifact, rows)
        task.add_done_callback(lambda done: self._finish(batch, done))

    def _predict_inline(self, loaded: Any, row: np.ndarray) -> np.ndarray:
        thread = threading.get_ident()
        if thread not in self._limited_threads:
            limit_to_one_thread()
            self._limited_threads.add(thread)
        output, seconds, cpu = self._timed_predict(loaded.artifact, row)
        self._record(row.shape[0], seconds, cpu)
        self._queue_wait.observe(0.0)
        return output

    def _record(self, rows: int, seconds: float, cpu: float, requests: int = 1) -> None:
        self.batch_seconds = _smooth(self.batch_seconds, seconds)
        if rows == 1:
            self.row_seconds = _smooth(self.row_seconds, seconds)
            self.row_cpu_seconds = _smooth(self.row_cpu_seconds, cpu)
        else:
            self.batched_row_cpu_seconds = _smooth(self.batched_row_cpu_seconds, cpu / rows)
        self._batch_size.observe(requests)
        self._predict_seconds.observe(seconds)

    def _timed_predict(self, artifact: Any, rows: np.ndarray) -> tuple[Any, float, float]:
        """(output, wall seconds, CPU seconds of this thread) of one predict call."""
        started, started_cpu = time.perf_counter(), time.thread_time()
        output = self.predict(artifact, rows)
        return output, time.perf_counter() - started, time.thread_time() - started_cpu

    def _finish(self, batch: list[_Pending], done: asyncio.Future[tuple[Any, float, float]]) -> None:
        self._running -= 1
        try:
            output, seconds, cpu = done.result()
            rows = sum(pending.row.shape[0] for pending in batch)
            if len(batch) > 1 and (not hasattr(output, "__len__") or len(output) != rows):
                raise RuntimeError(
                    f"{self.name}: predict answered {type(output).__name__} of length "
                    f"{len(output) if hasattr(output, '__len__') else '?'} for {rows} stacked rows; "
                    "a module whose predict answers one row only must set ModelModule(max_batch=1)"
                )
        except BaseException as exc:  # every caller of the batch gets the failure (a 500, logged once)
            log.error("%s: predict failed for a batch of %d", self.name, len(batch), exc_info=exc)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        else:
            self._record(rows, seconds, cpu, len(batch))
            if len(batch) == 1:  # the whole output, also for modules whose output is not row-sliceable
                _resolve(batch[0].future, output)
            else:
                start = 0
                for pending in batch:
                    stop = start + pending.row.shape[0]
                    _resolve(pending.future, output[start:stop])
                    start = stop
        self._maybe_dispatch()


def _smooth(previous: float, sample: float) -> float:
    return sample if not previous else (1 - _SMOOTHING) * previous + _SMOOTHING * sample


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # a caller that went away has a cancelled future
        future.set_result(value)
