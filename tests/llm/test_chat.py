"""llm.chat: conversations rendered with the chat template, loss on assistant tokens only; llm.tasks."""

from __future__ import annotations

import pytest

from llm.chat import IGNORE_INDEX, ChatFormatError, collate, normalize_messages, render_chat
from llm.tasks import arithmetic_chats, chat_frame

CHAT = [
    {"role": "system", "content": "Answer tersely."},
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "2 + 2 = 4"},
    {"role": "user", "content": "And 3 times 3?"},
    {"role": "assistant", "content": "3 * 3 = 9"},
]


def _labelled(tokenizer, example) -> str:
    pairs = zip(example["input_ids"], example["labels"], strict=True)
    return tokenizer.decode([t for t, label in pairs if label != IGNORE_INDEX])


def test_only_assistant_replies_are_labelled(smollm2_tokenizer):
    tok = smollm2_tokenizer
    example = render_chat(tok, CHAT, max_length=512)
    # The whole conversation is exactly what the chat template renders...
    assert tok.decode(example["input_ids"]) == tok.apply_chat_template(CHAT, tokenize=False)
    # ...and only the assistant replies (with their end-of-turn token) carry labels.
    assert _labelled(tok, example) == "2 + 2 = 4<|im_end|>\n3 * 3 = 9<|im_end|>\n"
    prompt = tok.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert set(example["labels"][:n_prompt]) == {IGNORE_INDEX}  # system, user and "<|im_start|>assistant\n"
    assert example["labels"][n_prompt] == example["input_ids"][n_prompt]
    assert example["attention_mask"] == [1] * len(example["input_ids"])


def test_truncation_and_padding(smollm2_tokenizer):
    example = render_chat(smollm2_tokenizer, CHAT, max_length=10)
    assert len(example["input_ids"]) == len(example["labels"]) == 10
    short = render_chat(smollm2_tokenizer, CHAT[1:3], max_length=512)
    batch = collate([example, short], pad_id=0)
    width = max(10, len(short["input_ids"]))
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    assert batch["attention_mask"][0].sum().item() == 10
    assert (batch["labels"][0, 10:] == IGNORE_INDEX).all()


def test_normalize_accepts_json_and_rejects_bad_turns():
    assert normalize_messages('[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]') == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises(ChatFormatError, match="assistant turn"):
        normalize_messages([{"role": "user", "content": "hi"}])
    with pytest.raises(ChatFormatError, match="unknown roles"):
        normalize_messages([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    with pytest.raises(ChatFormatError, match="role, content"):
        normalize_messages([{"text": "hi"}])


def test_arithmetic_task_is_deterministic_and_correct():
    assert arithmetic_chats(50, seed=3) == arithmetic_chats(50, seed=3)
    assert arithmetic_chats(50, seed=3) != arithmetic_chats(50, seed=4)
    for chat in arithmetic_chats(200):
        left, result = chat[1]["content"].split(" = ")
        assert eval(left) == int(result)  # noqa: S307 - our own generated "a op b"
    frame = chat_frame("arithmetic", rows=5)
    assert list(frame.columns) == ["messages"] and len(frame) == 5
    with pytest.raises(ValueError, match="unknown chat task"):
        chat_frame("poetry", rows=5)
