"""The embedded engine: one base model in Hugging Face transformers, batched and with LoRA adapters, on Ray Serve.

* Batching: ``@serve.batch`` collects concurrent requests (up to ``max_batch_size``, waiting at most
  ``batch_wait_timeout_s``) into one left-padded batch that :class:`llm.serving.generation.Decoder` decodes one
  forward step at a time; each step's tokens stream back to their requests (a batched async generator).
* Adapters: ``@serve.multiplexed`` loads a registered adapter (``model="BASE:NAME[/VERSION]"``) with peft onto
  the one base model; a batch may mix adapters and the base model (peft's ``adapter_names``). Least recently
  used adapters are dropped beyond ``max_adapters_per_replica``.

:func:`build_transformers_app` binds the engine behind the OpenAI gateway (:mod:`llm.serving.gateway`).
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from ray import serve

from llm.serving.config import LLMServeConfig, TransformersEngineConfig
from llm.serving.generation import Decoder, Job

__all__ = ["TransformersEngine", "build_transformers_app"]

MULTIPLEX_ATTR = "__serve_multiplex_wrapper"  # where Ray keeps the LRU of multiplexed models on the replica


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
        # Every forward from one thread: OpenMP keeps one team of worker threads per calling thread.
        self.forward_thread = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self.retired: set[str] = set()
        self._batched.set_max_batch_size(self.settings.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    async def complete(self, job: Job) -> dict[str, Any]:
        """The whole answer of one request: text, finish reason and completion token count."""
        await self._attach_adapter(job)
        parts, last = [], None
        async for event in self._batched(job):
            parts.append(event["text"])
            last = event
            if event["finish_reason"]:
                break
        return {**last, "text": "".join(parts)}

    async def stream(self, job: Job) -> Any:
        """The answer of one request as it is decoded: one event dict per step."""
        await self._attach_adapter(job)
        async for event in self._batched(job):
            yield event
            if event["finish_reason"]:
                break

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
        with self.lock:
            for name in sorted(self.retired - in_use):
                if name in getattr(self.decoder.model, "peft_config", {}):
                    self.decoder.model.delete_adapter(name)
                self.retired.discard(name)

    def _step(self, steps: Any) -> Any:
        with self.lock:
            return next(steps, None)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _batched(self, jobs: list[Job]) -> Any:
        if self.retired:
            self._drop_retired({job.adapter for job in jobs})
        steps = self.decoder.run(jobs)
        loop = asyncio.get_running_loop()
        while (events := await loop.run_in_executor(self.forward_thread, self._step, steps)) is not None:
            yield [StopIteration if e is None else asdict(e) for e in events]


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
