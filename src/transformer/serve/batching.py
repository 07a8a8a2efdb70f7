"""Dynamic batching: concurrent requests decoded together on one worker thread.

Decoding a batch of 32 sentences costs little more than decoding one (the matrix products get
wider, the number of steps does not grow), so a server that decodes each request on its own
wastes most of its throughput under load. The batcher puts every request in a queue; one worker
thread takes the first waiting request, gathers whatever else arrives within `max_wait_ms` of it
(bounded by `max_batch_tokens` source tokens), and decodes them in as few `translate` calls as
possible. While it decodes, new requests queue up and form the next batch, so under load batches
fill by themselves and the wait matters only when the server is quiet.

Requests whose decoding options differ cannot share a `generate` call, so a gathered batch is
split into groups of equal options (and equal `attention` flag), one `translate` call each.
Sampling requests are never merged: a seeded sample must not depend on what else was in the batch.

The batcher knows nothing of the task: a classifier's requests go through it the same way, with
`options` None (a classification has no options: every text gets every class's probability, and
the endpoint keeps the top_k it was asked for), so all of them share one call.

Decoding is CPU-bound and holds the GIL only in Python glue, so it runs on this one thread, never
on the event loop: /health and /metrics answer while a batch decodes. The event loop only awaits a
future per request; the worker settles it with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformer.serve.metrics import ServerMetrics
from transformer.serve.settings import ServeSettings
from transformer.translator import DecodeOptions

log = logging.getLogger("transformer.serve")

# translate(texts, options, attention) -> one result per text, in order: a Translation for a
# translation model (options: DecodeOptions), a classifier's prediction (options: None)
Options = DecodeOptions | None
TranslateFn = Callable[[list[str], Options, bool], list[Any]]
# count_tokens(texts) -> source tokens (subwords + EOS) of all texts together
CountFn = Callable[[Sequence[str]], int]


class ServiceUnavailable(RuntimeError):
    """The batcher cannot take or finish a request: it is shutting down or too many wait."""


_STOP = object()  # queued by `stop`: the worker finishes what is before it, then exits


@dataclass(eq=False)
class _Job:
    """One request waiting for the worker; its future lives on the event loop's thread."""

    texts: list[str]
    options: Options
    attention: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)
    tokens: int = 0

    @property
    def group(self) -> Hashable:
        """Jobs with equal groups can share one `translate` call."""
        if self.options is not None and self.options.method == "sample":
            return ("sample", id(self))
        return (self.options, self.attention)

    def settle(self, result: list[Any] | None, error: BaseException | None) -> None:
        """Hand the result (or error) to the waiting request, from any thread."""

        def deliver() -> None:
            if self.future.done():  # the request was cancelled (client gone)
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        # RuntimeError: the event loop is closed, nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(deliver)


class DynamicBatcher:
    """Gathers concurrent requests into decoding batches on one worker thread.

    `translate` decodes (or classifies) a list of texts with one set of options; `count_tokens`
    measures a request for the token budget. Call `start()` once, `await submit(...)` per request from the
    event loop, and `stop()` at shutdown.
    """

    def __init__(
        self,
        translate: TranslateFn,
        count_tokens: CountFn,
        settings: ServeSettings,
        metrics: ServerMetrics,
    ) -> None:
        self._translate = translate
        self._count_tokens = count_tokens
        self.settings = settings
        self.metrics = metrics
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # guards _stopping + _pending against submit/stop races
        self._stopping = False
        self._pending = 0
        self._thread = threading.Thread(target=self._run, name="decode-worker", daemon=True)

    # ----------------------------------------------------------------------- event-loop side

    def start(self) -> None:
        self._thread.start()

    async def submit(
        self, texts: list[str], options: Options, attention: bool = False
    ) -> list[Any]:
        """The results of `texts` (Translations, or a classifier's predictions), computed in some
        batch; raises ServiceUnavailable when the
        batcher is stopping or `max_pending` requests are already waiting."""
        loop = asyncio.get_running_loop()
        job = _Job(list(texts), options, attention, loop, loop.create_future())
        with self._lock:
            if self._stopping:
                raise ServiceUnavailable("the server is shutting down")
            if self._pending >= self.settings.max_pending:
                raise ServiceUnavailable(
                    f"too many requests waiting ({self._pending}); try again shortly"
                )
            self._pending += 1
            self._queue.put(job)
        self.metrics.pending.inc()
        try:
            return await job.future
        finally:
            with self._lock:
                self._pending -= 1
            self.metrics.pending.dec()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking requests, let the worker decode what is queued (within `timeout` s), and
        answer anything still waiting with ServiceUnavailable. Safe to call more than once."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        left = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                item.settle(None, ServiceUnavailable("the server is shutting down"))
                left.append(item)
        if self._thread.is_alive():  # still decoding past the timeout: let it exit afterwards
            self._queue.put(_STOP)
        if left:
            log.warning("shutdown: answered %d waiting request(s) with 503", len(left))

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    # -------------------------------------------------------------------------- worker side

    def _run(self) -> None:
        carry = None  # a job taken from the queue that did not fit in the previous batch
        while True:
            first = carry if carry is not None else self._queue.get()
            if first is _STOP:
                return
            batch, carry = self._gather(first)
            self._decode(batch)

    def _gather(self, first: _Job) -> tuple[list[_Job], object | None]:
        """`first` and the jobs arriving within max_wait_ms of it, within the token budget; also
        returns the job (or _STOP) taken from the queue that must start the next batch."""
        self._measure(first)
        batch = [first]
        if not self.settings.batching:
            return batch, None
        budget = self.settings.max_batch_tokens
        tokens = first.tokens
        deadline = first.enqueued + self.settings.max_wait_ms / 1000
        while tokens < budget:
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, item
            self._measure(item)
            if tokens + item.tokens > budget:
                return batch, item
            batch.append(item)
            tokens += item.tokens
        return batch, None

    def _measure(self, job: _Job) -> None:
        try:
            job.tokens = self._count_tokens(job.texts)
        except Exception:  # counted by characters instead; decoding will report the problem
            job.tokens = sum(len(t) for t in job.texts) + len(job.texts)

    def _decode(self, batch: list[_Job]) -> None:
        """Decode a gathered batch, one `translate` call per group of equal options."""
        started = time.monotonic()
        groups: dict[Hashable, list[_Job]] = {}
        for job in batch:
            self.metrics.queue_seconds.observe(started - job.enqueued)
            groups.setdefault(job.group, []).append(job)
        for jobs in groups.values():
            texts = [t for job in jobs for t in job.texts]
            t0 = time.monotonic()
            try:
                results = self._translate(texts, jobs[0].options, jobs[0].attention)
            except Exception as e:
                log.exception("decoding a batch of %d request(s) failed", len(jobs))
                for job in jobs:
                    job.settle(None, e)
                continue
            self.metrics.batch_seconds.observe(time.monotonic() - t0)
            self.metrics.batch_requests.observe(len(jobs))
            self.metrics.batch_sentences.observe(len(texts))
            self.metrics.batch_tokens.observe(sum(job.tokens for job in jobs))
            self.metrics.sentences.inc(len(texts))
            offset = 0
            for job in jobs:
                job.settle(results[offset : offset + len(job.texts)], None)
                offset += len(job.texts)
