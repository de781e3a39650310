"""Chat examples for supervised fine-tuning: ``messages`` rendered with the tokenizer's chat template, loss on
assistant tokens only.

Each assistant turn is cut at the point where the template's generation prompt ends, so the labels are exactly
the tokens the model must produce at inference time (its reply and the end-of-turn token); every other position
(system prompt, user turns, template markup) gets the label ``-100`` and adds nothing to the loss.

Example:
    >>> ex = render_chat(tokenizer, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    >>> [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != -100]   # the tokens of "4<|im_end|>"
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["IGNORE_INDEX", "ChatFormatError", "collate", "normalize_messages", "render_chat"]

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    """A row's ``messages`` is not a list of {role, content} turns with at least one assistant turn."""


def normalize_messages(raw: Any) -> list[dict[str, str]]:
    """A row's ``messages`` as plain ``[{"role", "content"}]``: accepts a JSON string, a list, or Arrow's arrays."""
    if isinstance(raw, str):
        raw = json.loads(raw)
    try:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in list(raw)]
    except (TypeError, KeyError) as exc:
        raise ChatFormatError(f"messages must be a list of {{role, content}} objects, got {raw!r:.200}") from exc
    bad = sorted({m["role"] for m in messages} - set(ROLES))
    if bad:
        raise ChatFormatError(f"unknown roles {bad}; allowed: {', '.join(ROLES)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatFormatError("a training conversation needs at least one assistant turn")
    return messages


def render_chat(tokenizer: Any, messages: list[dict[str, str]], max_length: int = 256) -> dict[str, list[int]]:
    """Token ids, attention mask and labels of one conversation; labels are ``-100`` outside assistant replies.

    Truncated to ``max_length`` tokens. Raises :class:`ChatFormatError` when the chat template does not render
    each conversation prefix as a prefix of the whole (then assistant spans cannot be found reliably).
    """
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = _template(tokenizer, messages[:i], add_generation_prompt=True)
            _append(tokenizer, prompt, rendered, input_ids, labels, train=False)
            rendered = prompt
        full = _template(tokenizer, messages[: i + 1], add_generation_prompt=False)
        _append(tokenizer, full, rendered, input_ids, labels, train=message["role"] == "assistant")
        rendered = full
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def _template(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _append(tokenizer: Any, text: str, done: str, input_ids: list[int], labels: list[int], train: bool) -> None:
    """Tokenizes the part of ``text`` after ``done`` and appends it, labelled when ``train``."""
    if not text.startswith(done):
        raise ChatFormatError("the tokenizer's chat template does not render a conversation's prefix as a prefix "
                              "of the whole; assistant tokens cannot be located")
    ids = tokenizer(text[len(done):], add_special_tokens=False)["input_ids"]
    input_ids.extend(ids)
    labels.extend(ids if train else [IGNORE_INDEX] * len(ids))


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pads a batch of rendered examples into tensors (padding is masked and unlabelled)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)

    def pad(key: str, value: int) -> Any:
        return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples], dtype=torch.long)

    return {"input_ids": pad("input_ids", pad_id), "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE_INDEX)}
