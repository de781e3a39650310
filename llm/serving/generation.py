"""Batched decoding for the transformers engine, as plain torch (no Ray): several requests, one forward per step.

Prompts of different lengths are left-padded into one batch; position ids come from the attention mask, so each
row sees exactly what it would see alone. Each row keeps its own sampling settings (``temperature`` 0 is greedy,
``top_p``), its own ``torch.Generator`` (same ``seed`` and settings give the same text whatever else is in the
batch), its own ``max_tokens`` and stop strings. Finished rows leave the batch (their cache rows are dropped).
Rows may use different LoRA adapters of one peft model (``adapter_names``; ``None`` is the base model).

Example:
    >>> decoder = Decoder(model, tokenizer)
    >>> jobs = [Job(prompt_ids=ids, max_tokens=16, temperature=0.0)]
    >>> for events in decoder.run(jobs):   # one list per step: an Event or None per job
    ...     print(events[0].text if events[0] else "", end="")
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Decoder", "Event", "Job", "StopText"]

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class Job:
    """One request, tokenized: what to generate from and how."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    adapter: str | None = None


@dataclass
class Event:
    """A step's news for one request: new text (maybe empty), and when done why and how many tokens."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0


class StopText:
    """Incremental detokenization with stop strings: releases only text that cannot become part of a stop.

    Text that may be the start of a stop string, or an incomplete UTF-8 character, is held back until it is
    decided; a stop string ends the text just before it.
    """

    def __init__(self, tokenizer: Any, stop: list[str]):
        self.tokenizer, self.stop, self.sent = tokenizer, stop, 0

    def update(self, ids: list[int], final: bool = False) -> tuple[str, bool]:
        """(new text to release, whether a stop string was found) given all generated ids so far."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            return self._release(text[:min(hits)]), True
        if final:
            return self._release(text), False
        hold = max([k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])], default=0)
        safe = text[:len(text) - hold]
        return self._release(safe.rstrip("\ufffd")), False

    def _release(self, upto: str) -> str:
        delta = upto[self.sent:] if len(upto) > self.sent else ""
        self.sent = max(self.sent, len(upto))
        return delta


class _Row:
    def __init__(self, job: Job, tokenizer: Any):
        import torch

        self.job, self.ids, self.done = job, [], False
        self.text = StopText(tokenizer, job.stop)
        self.generator = torch.Generator().manual_seed(job.seed if job.seed is not None
                                                       else random.getrandbits(63))

    def pick(self, logits: Any) -> int:
        import torch

        if self.job.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / self.job.temperature, dim=-1)
        if self.job.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.job.top_p  # always keeps the top token
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def torch_inference_mode(method: Any) -> Any:
    """Runs ``method`` under ``torch.inference_mode()`` in the calling thread."""
    import functools

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return method(*args, **kwargs)

    return wrapper


@dataclass
class _Batch:
    """The decoding state of one batch between steps."""

    rows: list[_Row]
    live: list[int]  # positions in ``rows`` of the rows still in the batch
    input_ids: Any
    mask: Any
    positions: Any
    cache: Any
    tokens: list[int] = field(default_factory=list)


class Decoder:
    """Decodes batches of :class:`Job` on one model (a plain causal LM or a peft model with adapters)."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: set[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = set(eos_ids or {tokenizer.eos_token_id})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.device = next(model.parameters()).device

    def run(self, jobs: list[Job]) -> Iterator[list[Event | None]]:
        """Yields one list per forward step: for each job an :class:`Event`, or None once it has finished.

        The steps may be advanced from different threads (the engine runs each one in a worker thread): each
        step enters inference mode itself, since torch's grad mode is per thread and a ``with`` block around
        the whole loop would hold only in the thread that started it.
        """
        state = self._start(jobs)
        while True:
            events = self._step(state)
            yield events
            if not self._trim(state):
                return

    @torch_inference_mode
    def _start(self, jobs: list[Job]) -> _Batch:
        import torch

        width = max(len(j.prompt_ids) for j in jobs)
        input_ids = torch.tensor([[self.pad_id] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs])
        rows = [_Row(job, self.tokenizer) for job in jobs]
        return _Batch(rows=rows, live=list(range(len(jobs))), input_ids=input_ids, mask=mask,
                      positions=(mask.cumsum(-1) - 1).clamp(min=0), cache=self._cache())

    @torch_inference_mode
    def _step(self, b: _Batch) -> list[Event | None]:
        """One forward over the live rows: each picks its next token."""
        logits = self._forward(b.input_ids, b.mask, b.positions, b.cache, [b.rows[i].job.adapter for i in b.live])
        events: list[Event | None] = [None] * len(b.rows)
        b.tokens = []
        for n, i in enumerate(b.live):
            token = b.rows[i].pick(logits[n])
            b.tokens.append(token)
            events[i] = self._advance(b.rows[i], token)
        return events

    @torch_inference_mode
    def _trim(self, b: _Batch) -> bool:
        """Drops finished rows from the batch and feeds the new tokens; False once every row has finished."""
        import torch

        keep = [n for n, i in enumerate(b.live) if not b.rows[i].done]
        if not keep:
            return False
        if len(keep) < len(b.live):
            index = torch.tensor(keep, dtype=torch.long)
            b.cache.batch_select_indices(index)
            b.mask, b.positions = b.mask[index], b.positions[index]
            b.tokens, b.live = [b.tokens[n] for n in keep], [b.live[n] for n in keep]
        b.input_ids = torch.tensor(b.tokens).unsqueeze(-1)
        b.mask = torch.cat([b.mask, torch.ones(len(b.live), 1, dtype=b.mask.dtype)], dim=-1)
        b.positions = b.positions[:, -1:] + 1
        return True

    def _cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _forward(self, input_ids: Any, mask: Any, positions: Any, cache: Any, adapters: list[str | None]) -> Any:
        kwargs: dict[str, Any] = {}
        if hasattr(self.model, "peft_config"):  # peft mixes adapters per row; the base model is "__base__"
            kwargs["adapter_names"] = [a or BASE_ADAPTER for a in adapters]
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), past_key_values=cache, use_cache=True,
                         logits_to_keep=1, **kwargs)
        return out.logits[:, -1, :].float().cpu()

    def _advance(self, row: _Row, token: int) -> Event:
        """Adds ``token`` to the row, marks it done on EOS, a stop string or max_tokens; the text to release."""
        row.ids.append(token)
        eos = token in self.eos_ids
        at_limit = len(row.ids) >= row.job.max_tokens
        text, stopped = row.text.update(row.ids, final=eos or at_limit)
        if eos or stopped or at_limit:
            row.done = True
            reason = "stop" if eos or stopped else "length"
            return Event(text, reason, len(row.ids))
        return Event(text)
