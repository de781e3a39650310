"""Batched decoding for the transformers engine, as plain torch (no Ray): several requests, one forward per step.

Prompts of different lengths are left-padded into one batch; position ids come from the attention mask, so each
row sees exactly what it would see alone. Each row keeps its own sampling settings (``temperature`` 0 is greedy,
``top_p``), its own ``torch.Generator`` (same ``seed`` and settings give the same text whatever else is in the
batch), its own ``max_tokens`` and stop strings. Finished rows leave the batch (their cache rows are dropped),
and new requests join a running batch between steps (:class:`Batch`, continuous batching). Rows may use
different LoRA adapters of one peft model (``adapter_names``; ``None`` is the base model).

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

__all__ = ["Batch", "Decoder", "Event", "Job", "StopText"]

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class Job:
    """One request, tokenized: what to generate from and how (compared by identity: two requests are two jobs)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    adapter: str | None = None
    grammar: str | None = None  # llguidance grammar of response_format (llm.serving.structured); None: free text
    constraint: Any = field(default=None, repr=False)  # its compiled state, made where the job is decoded


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
    def __init__(self, job: Job, tokenizer: Any, constraint: Any = None):
        import torch

        self.job, self.ids, self.done = job, [], False
        self.text = StopText(tokenizer, job.stop)
        self.constraint = constraint  # a structured.Constraint when the request asked for JSON
        self.generator = torch.Generator().manual_seed(job.seed if job.seed is not None
                                                       else random.getrandbits(63))

    def pick(self, logits: Any) -> int:
        import torch

        if self.constraint is not None:  # tokens the grammar forbids can never be picked
            allowed = self.constraint.allowed(logits.shape[-1])
            logits = logits.clone()
            logits[:len(allowed)][~allowed] = float("-inf")
            logits[len(allowed):] = float("-inf")
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


def _pad_columns(t: Any, n: int, dim: int) -> Any:
    """``t`` with ``n`` zero columns before the others along ``dim``, or without its first ``-n`` when negative."""
    import torch

    if n < 0:
        return t.narrow(dim, -n, t.shape[dim] + n)
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@dataclass
class _Batch:
    """The decoding state of one batch between steps: the rows still decoding and what the next forward takes."""

    rows: list[_Row]
    input_ids: Any
    mask: Any
    positions: Any
    cache: Any
    tokens: list[int] = field(default_factory=list)


class Batch:
    """Continuous batching: jobs join a running batch between steps; finished or cancelled jobs leave it.

    :meth:`step` first prefills the joining jobs (one forward over their prompts, left-padded together), then
    advances the running jobs by one token (one forward), and merges the two: their caches are left-padded to
    one length and stacked, masked where padded. Position ids stay per row, so a row decodes exactly what it
    decodes alone, whenever it joined. Models whose cache cannot be merged (sliding-window layers) take new
    jobs only when the batch is empty: :attr:`accepts_joins` says when a step may take new jobs.

    Example:
        >>> batch = Batch(decoder)
        >>> events = batch.step([job_a])          # prefill a: its first token
        >>> events = batch.step([job_b, job_c])   # prefill b and c, one more token of a
        >>> while batch: events = batch.step([])  # [(job, Event), ...] until every job has finished
    """

    def __init__(self, decoder: Decoder):
        self.decoder, self.state = decoder, None

    def __len__(self) -> int:
        return len(self.state.rows) if self.state else 0

    def jobs(self) -> list[Job]:
        return [row.job for row in self.state.rows] if self.state else []

    @property
    def accepts_joins(self) -> bool:
        """Whether the next step may take new jobs: the batch is empty, or its cache can be merged."""
        return self.state is None or self.decoder._mergeable(self.state.cache)

    def step(self, joining: list[Job]) -> list[tuple[Job, Event]]:
        """Prefills ``joining`` and advances the running jobs: each job's news from this step."""
        if joining and not self.accepts_joins:
            raise ValueError("this model's cache cannot take jobs into a running batch; wait until it is empty")
        events: list[tuple[Job, Event]] = []
        joined = None
        if joining:
            joined = self.decoder._start(joining)
            events += self.decoder._step(joined)
            joined = self.decoder._trim(joined)
        if self.state:
            events += self.decoder._step(self.state)
            self.state = self.decoder._trim(self.state)
        if joined:
            self.state = self.decoder._merge(self.state, joined) if self.state else joined
        return events

    def cancel(self, job: Job) -> None:
        """Drops ``job`` at the end of the next step (its client has gone)."""
        for row in self.state.rows if self.state else []:
            if row.job is job:
                row.done = True


class Decoder:
    """Decodes batches of :class:`Job` on one model (a plain causal LM or a peft model with adapters)."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: set[int] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = set(eos_ids or {tokenizer.eos_token_id})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.device = next(model.parameters()).device
        self._ll_tokenizer: Any = None

    def constraint(self, job: Job) -> Any:
        """The grammar state of a job that asked for structured output (None for free text)."""
        if job.grammar is None:
            return None
        from llm.serving.structured import Constraint, ll_tokenizer

        if self._ll_tokenizer is None:  # built on the first structured request (about 1 s)
            vocab = getattr(self.model.config, "vocab_size", None) or len(self.tokenizer)
            self._ll_tokenizer = ll_tokenizer(self.tokenizer, vocab, self.eos_ids)
        return Constraint(self._ll_tokenizer, job.grammar)

    def run(self, jobs: list[Job]) -> Iterator[list[Event | None]]:
        """Decodes ``jobs`` as one batch: one list per forward step, for each job an :class:`Event` or None once
        it has finished.

        The steps may be advanced from different threads: each step enters inference mode itself, since torch's
        grad mode is per thread and a ``with`` block around the whole loop would hold only in the thread that
        started it.
        """
        batch, order = Batch(self), {job: n for n, job in enumerate(jobs)}
        events = batch.step(jobs)
        while True:
            step: list[Event | None] = [None] * len(jobs)
            for job, event in events:
                step[order[job]] = event
            yield step
            if not batch:
                return
            events = batch.step([])

    @torch_inference_mode
    def _start(self, jobs: list[Job]) -> _Batch:
        import torch

        width = max(len(j.prompt_ids) for j in jobs)
        input_ids = torch.tensor([[self.pad_id] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs])
        rows = [_Row(job, self.tokenizer, job.constraint or self.constraint(job)) for job in jobs]
        return _Batch(rows=rows, input_ids=input_ids, mask=mask,
                      positions=(mask.cumsum(-1) - 1).clamp(min=0), cache=self._cache())

    @torch_inference_mode
    def _step(self, b: _Batch) -> list[tuple[Job, Event]]:
        """One forward over the batch's rows: each picks its next token."""
        logits = self._forward(b.input_ids, b.mask, b.positions, b.cache, [row.job.adapter for row in b.rows])
        b.tokens = [row.pick(logits[n]) for n, row in enumerate(b.rows)]
        return [(row.job, self._advance(row, token)) for row, token in zip(b.rows, b.tokens, strict=True)]

    @torch_inference_mode
    def _trim(self, b: _Batch) -> _Batch | None:
        """Drops finished rows and feeds the new tokens: the batch for the next step, None once all have finished."""
        import torch

        keep = [n for n, row in enumerate(b.rows) if not row.done]
        if not keep:
            return None
        if len(keep) < len(b.rows):
            index = torch.tensor(keep, dtype=torch.long)
            b.cache.batch_select_indices(index)
            b.mask, b.positions = b.mask[index], b.positions[index]
            b.tokens, b.rows = [b.tokens[n] for n in keep], [b.rows[n] for n in keep]
            unused = int(b.mask.any(dim=0).int().argmax())  # leading columns nobody attends to any more
            if unused and self._mergeable(b.cache):
                self._pad_left(b, -unused)
        b.input_ids = torch.tensor(b.tokens).unsqueeze(-1)
        b.mask = torch.cat([b.mask, torch.ones(len(b.rows), 1, dtype=b.mask.dtype)], dim=-1)
        b.positions = b.positions[:, -1:] + 1
        return b

    @torch_inference_mode
    def _merge(self, a: _Batch, b: _Batch) -> _Batch:
        """One batch of both: the shorter cache left-padded (masked), then rows of ``a`` and ``b`` stacked."""
        import torch

        width = max(a.mask.shape[1], b.mask.shape[1])
        for part in (a, b):
            self._pad_left(part, width - part.mask.shape[1])
        for mine, theirs in zip(a.cache.layers, b.cache.layers, strict=True):
            mine.keys, mine.values = torch.cat([mine.keys, theirs.keys]), torch.cat([mine.values, theirs.values])
        return _Batch(rows=a.rows + b.rows, input_ids=torch.cat([a.input_ids, b.input_ids]),
                      mask=torch.cat([a.mask, b.mask]), positions=torch.cat([a.positions, b.positions]),
                      cache=a.cache, tokens=a.tokens + b.tokens)

    @staticmethod
    def _pad_left(b: _Batch, n: int) -> None:
        """Adds ``n`` masked columns before the cache and mask of ``b`` (removes ``-n`` columns when negative).

        The input of the next step (one token per row) is one column to the right of the cache, so the mask,
        which already covers it, is padded along with the cache.
        """
        if n == 0:
            return
        for layer in b.cache.layers:  # (batch, heads, sequence, head_dim)
            layer.keys, layer.values = _pad_columns(layer.keys, n, dim=2), _pad_columns(layer.values, n, dim=2)
        b.mask = _pad_columns(b.mask, n, dim=1)

    @staticmethod
    def _mergeable(cache: Any) -> bool:
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in cache.layers)

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
        if row.constraint is not None:
            row.constraint.consume(token)
        eos = token in self.eos_ids or (row.constraint is not None and row.constraint.finished)
        at_limit = len(row.ids) >= row.job.max_tokens
        text, stopped = row.text.update(row.ids, final=eos or at_limit)
        if eos or stopped or at_limit:
            row.done = True
            reason = "stop" if eos or stopped else "length"
            return Event(text, reason, len(row.ids))
        return Event(text)
