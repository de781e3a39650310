"""Continuous batching on one decoding thread, fed from an asyncio event loop (no Ray: the engine wraps it).

:meth:`DecodingLoop.generate` hands a :class:`~llm.serving.generation.Job` to the decoding thread, which alone owns
the running :class:`~llm.serving.generation.Batch`: it steps the batch while it has work, takes new jobs between
steps (up to ``max_batch_size`` rows; the rest wait their turn), drops jobs whose client has gone, and hands each
step's events back to the event loop.

A failed step fails the jobs in it, not the loop. If the thread itself dies, every waiting and future request
gets :class:`~llm.serving.openai_protocol.ApiError` 503 at once instead of hanging, and :meth:`check` raises, so
Ray Serve's health check replaces the replica.

Example:
    >>> loop = DecodingLoop(decoder, max_batch_size=8)
    >>> async for event in loop.generate(job):   # inside a running event loop
    ...     print(event["text"], end="")
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from llm.serving.generation import Batch, Decoder, Event, Job
from llm.serving.openai_protocol import ApiError

__all__ = ["DecodingLoop"]

log = logging.getLogger(__name__)


class DecodingLoop:
    """One decoding thread over one :class:`Decoder`; ``before_step(adapters_in_use)`` runs under ``lock``."""

    def __init__(self, decoder: Decoder, max_batch_size: int, batch_wait_timeout_s: float = 0.0,
                 lock: Any = None, before_step: Callable[[set[str | None]], None] | None = None):
        self.decoder, self.max_batch_size, self.batch_wait_timeout_s = decoder, max_batch_size, batch_wait_timeout_s
        self.lock = lock or threading.Lock()  # one forward at a time
        self.before_step = before_step
        self.inbox: queue.SimpleQueue[tuple[str, Job]] = queue.SimpleQueue()
        self.outboxes: dict[Job, asyncio.Queue[Event | BaseException]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="llm-decoder", daemon=True)

    def check(self) -> None:
        """Raises :class:`ApiError` 503 when the decoding thread has died (it never comes back)."""
        if self.failure is not None or (self.loop is not None and not self.thread.is_alive()):
            reason = f"{type(self.failure).__name__}: {self.failure}" if self.failure else "it exited"
            raise ApiError(f"the engine cannot decode: its decoding thread died ({reason[:300]}); the replica is "
                           "being replaced, retry shortly", 503)

    async def generate(self, job: Job) -> AsyncIterator[dict[str, Any]]:
        """Hands ``job`` to the decoding thread and yields its events until it finishes."""
        self.check()
        if job.grammar is not None and job.constraint is None:  # compiled here: a bad one fails this job only
            job.constraint = await asyncio.to_thread(self.decoder.constraint, job)
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.thread.start()
        outbox: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.outboxes[job] = outbox
        self.inbox.put(("add", job))
        finished = False
        try:
            while not finished:
                event = await outbox.get()
                if isinstance(event, BaseException):
                    raise event
                finished = event.finish_reason is not None
                yield asdict(event)
        finally:
            del self.outboxes[job]
            if not finished:  # the client has gone (or its step failed): free its place in the batch
                self.inbox.put(("cancel", job))

    def _run(self) -> None:
        try:
            self._decode_forever()
        except BaseException as exc:  # noqa: BLE001 - whatever killed the thread, no request may wait for it
            self.failure = exc
            log.exception("the decoding thread died")
            try:
                self.check()
            except ApiError as error:
                self.loop.call_soon_threadsafe(self._fail_all, error)

    def _decode_forever(self) -> None:
        """Steps the running batch while it has work; requests join between steps."""
        batch, waiting = Batch(self.decoder), deque()
        while True:
            news = []
            if not waiting and not len(batch):
                news.append(self.inbox.get())  # idle: sleep until a request comes
                if self.batch_wait_timeout_s:
                    time.sleep(self.batch_wait_timeout_s)
            while not self.inbox.empty():
                news.append(self.inbox.get())
            cancelled = set()
            for kind, job in news:
                if kind == "add":
                    waiting.append(job)
                elif job in waiting:
                    waiting.remove(job)
                else:
                    cancelled.add(job)
            if not waiting and not len(batch):
                continue
            joining: list[Job] = []
            if batch.accepts_joins:
                while waiting and len(batch) + len(joining) < self.max_batch_size:
                    joining.append(waiting.popleft())
            try:
                with self.lock:
                    for job in cancelled.intersection(batch.jobs()):
                        batch.cancel(job)
                    if self.before_step is not None:
                        self.before_step({job.adapter for job in batch.jobs() + joining})
                    events: list[tuple[Job, Event | BaseException]] = list(batch.step(joining))
            except Exception as error:  # a failed step fails the requests in it, not the replica
                log.exception("decoding step failed")
                events, batch = [(job, error) for job in joining + batch.jobs()], Batch(self.decoder)
            self.loop.call_soon_threadsafe(self._deliver, events)

    def _deliver(self, events: list[tuple[Job, Event | BaseException]]) -> None:
        for job, event in events:
            if (outbox := self.outboxes.get(job)) is not None:
                outbox.put_nowait(event)

    def _fail_all(self, error: ApiError) -> None:
        for outbox in self.outboxes.values():
            outbox.put_nowait(error)
