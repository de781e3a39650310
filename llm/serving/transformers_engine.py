"""The embedded engine: one base model in Hugging Face transformers, batched and with LoRA adapters, on Ray Serve.

* Continuous batching: one decoding thread per replica (:class:`llm.serving.scheduler.DecodingLoop`) decodes a
  running batch one forward step at a time; requests join it between steps, finished ones leave it, and a
  request whose client has gone is dropped at the next step. An idle engine may wait ``batch_wait_timeout_s``
  for companions before its first step (0 by default: later arrivals join the running batch anyway).
* Health: if the decoding thread dies, requests get 503 at once and Ray Serve's health check
  (:meth:`TransformersEngine.check_health`) replaces the replica; ``GET /health`` on the gateway reports it.
* Adapters: ``serve.multiplexed`` loads a registered adapter (``model="BASE:NAME[/VERSION]"``) with peft onto
  the one base model; a batch may mix adapters and the base model (peft's ``adapter_names``). Beyond
  ``max_adapters_per_replica`` the least recently used adapter is evicted (deleted from the model between steps,
  once no running request uses it).

:func:`build_transformers_app` binds the engine behind the OpenAI gateway (:mod:`llm.serving.gateway`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from llm.serving.config import LLMServeConfig, TransformersEngineConfig
from llm.serving.generation import Decoder, Job
from llm.serving.scheduler import DecodingLoop

__all__ = ["TransformersEngine", "build_transformers_app"]

log = logging.getLogger(__name__)


def peft_name(adapter_id: str) -> str:
    """A peft adapter name for ``NAME[/VERSION]`` that no other adapter id can share (no dots: module keys)."""
    return "adapter_" + hashlib.sha256(adapter_id.encode()).hexdigest()[:20]


class _LoadedAdapter:
    """A multiplexed adapter; Ray calls ``__del__`` when it leaves the LRU: it is then removed between batches."""

    def __init__(self, name: str, retired: set[str]):
        self.name, self.retired, self.gone = name, retired, False

    def __del__(self) -> None:
        if not self.gone:  # no lock: this may run in any thread, and set.add is atomic
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
        self.adapter_ids: dict[str, str] = {}  # peft name -> NAME[/VERSION], of adapters on the model
        # The decoding thread alone owns the running batch (OpenMP also keeps its threads per calling thread).
        self.decoding = DecodingLoop(self.decoder, self.settings.max_batch_size, self.settings.batch_wait_timeout_s,
                                     lock=self.lock, before_step=self._drop_retired)

        async def load_adapter(adapter_id: str) -> _LoadedAdapter:  # Ray's LRU, of the configured size
            return await self._load_adapter(adapter_id)

        self._adapter = serve.multiplexed(
            max_num_models_per_replica=self.settings.max_adapters_per_replica)(load_adapter)

    def check_health(self) -> None:
        """Ray Serve's periodic health check: a replica whose decoding thread died is replaced."""
        self.decoding.check()

    async def health(self) -> dict[str, Any]:
        """What the gateway's ``GET /health`` reports (raises ApiError 503 when the engine cannot decode)."""
        self.decoding.check()
        return {"ready": True, "adapters": self.adapters()}

    def adapters(self) -> list[str]:
        """The adapters (``NAME[/VERSION]``) whose weights are on the model now."""
        with self.lock:
            loaded = set(getattr(self.decoder.model, "peft_config", {})) - self.retired
            return sorted(self.adapter_ids[name] for name in loaded if name in self.adapter_ids)

    async def complete(self, job: Job) -> dict[str, Any]:
        """The whole answer of one request: text, finish reason and completion token count."""
        await self._attach_adapter(job)
        parts, last = [], None
        async for event in self.decoding.generate(job):
            parts.append(event["text"])
            last = event
        return {**last, "text": "".join(parts)}

    async def stream(self, job: Job) -> AsyncIterator[dict[str, Any]]:
        """The answer of one request as it is decoded: one event dict per step."""
        await self._attach_adapter(job)
        async for event in self.decoding.generate(job):
            yield event

    async def _attach_adapter(self, job: Job) -> None:
        adapter_id = serve.get_multiplexed_model_id()
        if adapter_id:
            job.adapter = (await self._adapter(adapter_id)).name

    async def _load_adapter(self, adapter_id: str) -> _LoadedAdapter:
        from llm.models import model_cache
        from llm.serving.adapters import adapter_folder

        self.decoding.check()
        folder = await asyncio.to_thread(adapter_folder, adapter_id, self.source, model_cache())
        name = peft_name(adapter_id)
        await asyncio.to_thread(self._put_adapter, name, adapter_id, str(folder))
        return _LoadedAdapter(name, self.retired)

    def _put_adapter(self, name: str, adapter_id: str, folder: str) -> None:
        from peft import PeftModel

        with self.lock:
            self.retired.discard(name)
            self.adapter_ids[name] = adapter_id
            model = self.decoder.model
            if not hasattr(model, "peft_config"):
                self.decoder.model = PeftModel.from_pretrained(model, folder, adapter_name=name).eval()
            elif name not in model.peft_config:
                model.load_adapter(folder, adapter_name=name)
                model.eval()  # peft refuses per-row adapter_names in training mode

    def _drop_retired(self, in_use: set[str | None]) -> None:
        """Deletes adapters Ray's LRU has let go of and no running request uses (the caller holds the lock)."""
        for name in sorted(self.retired - in_use):
            model = self.decoder.model
            if list(getattr(model, "peft_config", {})) == [name]:
                # peft keeps a deleted last adapter "active" (and then fails): go back to the plain base model
                self.decoder.model = model.unload()
            elif name in getattr(model, "peft_config", {}):
                model.delete_adapter(name)
            self.retired.discard(name)
            self.adapter_ids.pop(name, None)


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
