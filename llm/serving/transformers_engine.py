"""The embedded engine: one base model in Hugging Face transformers, batched and with LoRA adapters, on Ray Serve.

* Continuous batching: one decoding thread per replica decodes a running batch
  (:class:`llm.serving.generation.Batch`) one forward step at a time; requests that arrive join it between steps
  (up to ``max_batch_size`` rows; the rest wait their turn), finished ones leave it, and a request whose client
  has gone is dropped at the next step. Each step's tokens go back to their requests as they are decoded.
  An idle engine may wait ``batch_wait_timeout_s`` for companions before its first step (0 by default: later
  arrivals join the running batch anyway).
* Adapters: ``@serve.multiplexed`` loads a registered adapter (``model="BASE:NAME[/VERSION]"``) with peft onto
  the one base model; a batch may mix adapters and the base model (peft's ``adapter_names``). Least recently
  used adapters are dropped beyond ``max_adapters_per_replica``.

:func:`build_transformers_app` binds the engine behind the OpenAI gateway (:mod:`llm.serving.gateway`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from ray import serve

from llm.serving.config import LLMServeConfig, TransformersEngineConfig
from llm.serving.generation import Batch, Decoder, Event, Job

__all__ = ["TransformersEngine", "build_transformers_app"]

MULTIPLEX_ATTR = "__serve_multiplex_wrapper"  # where Ray keeps the LRU of multiplexed models on the replica
log = logging.getLogger(__name__)


class _LoadedAdapter:
    """A multiplexed adapter; Ray calls ``__del__`` when it leaves the LRU: it is then removed between batches."""

    def __init__(self, name: str, retired: set[str]):
        self.name, self.retired, self.gone = name, retired, False

    def __del__(self) -> None:
        if not self.gone:
            self.gone = True
            self.retired.add(self.name)


@serve.deployment
class TransformersEngine:
    """One replica: the base model, its tokenizer, a decoder, and the adapters loaded on it."""

    def __init__(self, source: str, settings: dict[str, Any], tracking_uri: str | None = None):
        import mlflow
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llm.models import resolve_model

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.source, self.settings = source, TransformersEngineConfig(**settings)
        # Ray sets OMP_NUM_THREADS from num_cpus; say explicitly how many threads the matmuls get.
        torch.set_num_threads(self.settings.torch_threads or max(1, math.ceil(self.settings.num_cpus)))
        folder = resolve_model(source)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, self.settings.dtype)).eval()
        if self.settings.num_gpus > 0:
            model = model.to("cuda")
        eos = model.generation_config.eos_token_id
        eos_ids = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.decoder = Decoder(model, tokenizer, eos_ids)
        self.lock = threading.Lock()  # one forward at a time; adapters change only between forwards
        self.retired: set[str] = set()
        # Requests and cancellations go to the decoding thread, which alone owns the running batch; it hands each
        # step's events back to the replica's event loop (OpenMP also keeps its threads per calling thread).
        self.inbox: queue.SimpleQueue[tuple[str, Job]] = queue.SimpleQueue()
        self.outboxes: dict[Job, asyncio.Queue[Event | BaseException]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.decoding = threading.Thread(target=self._decode_forever, name="llm-decoder", daemon=True)

    async def complete(self, job: Job) -> dict[str, Any]:
        """The whole answer of one request: text, finish reason and completion token count."""
        await self._attach_adapter(job)
        parts, last = [], None
        async for event in self._generate(job):
            parts.append(event["text"])
            last = event
        return {**last, "text": "".join(parts)}

    async def stream(self, job: Job) -> AsyncIterator[dict[str, Any]]:
        """The answer of one request as it is decoded: one event dict per step."""
        await self._attach_adapter(job)
        async for event in self._generate(job):
            yield event

    async def _generate(self, job: Job) -> AsyncIterator[dict[str, Any]]:
        """Hands ``job`` to the decoding thread and yields its events until it finishes."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.decoding.start()
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

    def _decode_forever(self) -> None:
        """The decoding thread: steps the running batch while it has work; requests join between steps."""
        batch, waiting = Batch(self.decoder), deque()
        while True:
            news = []
            if not waiting and not len(batch):
                news.append(self.inbox.get())  # idle: sleep until a request comes
                if self.settings.batch_wait_timeout_s:
                    time.sleep(self.settings.batch_wait_timeout_s)
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
                while waiting and len(batch) + len(joining) < self.settings.max_batch_size:
                    joining.append(waiting.popleft())
            try:
                with self.lock:
                    for job in cancelled.intersection(batch.jobs()):
                        batch.cancel(job)
                    if self.retired:
                        self._drop_retired({job.adapter for job in batch.jobs() + joining})
                    events: list[tuple[Job, Event | BaseException]] = list(batch.step(joining))
            except Exception as error:  # a failed step fails the requests in it, not the replica
                log.exception("decoding step failed")
                events, batch = [(job, error) for job in joining + batch.jobs()], Batch(self.decoder)
            self.loop.call_soon_threadsafe(self._deliver, events)

    def _deliver(self, events: list[tuple[Job, Event | BaseException]]) -> None:
        for job, event in events:
            if (outbox := self.outboxes.get(job)) is not None:
                outbox.put_nowait(event)

    async def _attach_adapter(self, job: Job) -> None:
        adapter_id = serve.get_multiplexed_model_id()
        if adapter_id:
            job.adapter = (await self._adapter(adapter_id)).name

    @serve.multiplexed(max_num_models_per_replica=4)
    async def _adapter(self, adapter_id: str) -> _LoadedAdapter:
        from llm.models import model_cache
        from llm.serving.adapters import adapter_folder

        wrapper = getattr(self, MULTIPLEX_ATTR, None)
        if wrapper is not None:
            wrapper.max_num_models_per_replica = self.settings.max_adapters_per_replica
        folder = await asyncio.to_thread(adapter_folder, adapter_id, self.source, model_cache())
        name = re.sub(r"[^A-Za-z0-9_]", "_", adapter_id)
        await asyncio.to_thread(self._load_adapter, name, str(folder))
        return _LoadedAdapter(name, self.retired)

    def _load_adapter(self, name: str, folder: str) -> None:
        from peft import PeftModel

        with self.lock:
            self.retired.discard(name)
            model = self.decoder.model
            if not hasattr(model, "peft_config"):
                self.decoder.model = PeftModel.from_pretrained(model, folder, adapter_name=name).eval()
            elif name not in model.peft_config:
                model.load_adapter(folder, adapter_name=name)
                model.eval()  # peft refuses per-row adapter_names in training mode

    def _drop_retired(self, in_use: set[str | None]) -> None:
        """Deletes adapters Ray's LRU has let go of and no running request uses (the caller holds the lock)."""
        for name in sorted(self.retired - in_use):
            if name in getattr(self.decoder.model, "peft_config", {}):
                self.decoder.model.delete_adapter(name)
            self.retired.discard(name)


def build_transformers_app(cfg: LLMServeConfig, tracking_uri: str | None = None) -> Any:
    """The bound application: the OpenAI gateway in front of the engine's replicas."""
    import mlflow

    from fabric.config import ConfigError
    from fabric.serve.keys import Keyring
    from llm.serving.gateway import OpenAIGateway

    keys = Keyring.load(cfg.auth.keys_file)
    if cfg.auth.required and not len(keys):
        raise ConfigError("auth.required is true but no API keys are configured: set FABRIC_API_KEYS=KEY:ROLE[,...] "
                          "or auth.keys_file (or auth.required=false for an open endpoint)")
    settings, limits = cfg.transformers, cfg.limits
    engine = TransformersEngine.options(
        name="llm-engine", num_replicas=settings.num_replicas,
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        max_ongoing_requests=max(limits.max_concurrent_requests, settings.max_batch_size),
    ).bind(cfg.model.source, settings.model_dump(), tracking_uri or mlflow.get_tracking_uri())
    return OpenAIGateway.options(
        name="llm-gateway", ray_actor_options={"num_cpus": 0.1},
        max_ongoing_requests=2 * limits.max_concurrent_requests + 8,  # the excess reaches us and gets a 429
    ).bind(engine, cfg.model.model_dump(), limits.model_dump(), keys.hashed, cfg.auth.required)
