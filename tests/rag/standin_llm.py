"""An OpenAI-compatible chat endpoint on loopback for RAG serving tests, with streaming: deterministic answers.

A question that says ``wrongly`` gets the planted error of ``fabric demo --act rag`` (a sentence of the first
excerpt with a number or a negation changed, :func:`fabric.demo.rag.planted_answer`): it scores far below 0.5.
Any other question gets the first excerpt's first long sentence word for word, cited ``[1]``: it scores near 1.
Every answer given is kept in ``answers`` (newest last), so a test can look for it where it must (not) be.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_EXCERPT = re.compile(r"\[1\] \([^)]*\) (.*?)(?:\n\n\[2\] |\Z)", re.S)


def grounded_answer(prompt: str) -> str:
    """The first sentence of at least eight words of the prompt's first excerpt, cited [1]."""
    from rag.groundedness import split_sentences

    found = _EXCERPT.search(prompt)
    text = found.group(1) if found else prompt
    sentences = [" ".join(text[a:b].split()) for a, b in split_sentences(text)]
    sentence = next((s for s in sentences if len(s.split()) >= 8), sentences[0] if sentences else text)
    return f"{sentence.rstrip('.')} [1]."


class StandInLLM:
    """The endpoint (``url`` + ``/v1``); ``close()`` stops it."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="standin-llm").start()

    def answer(self, messages: list[dict[str, Any]]) -> str:
        from fabric.demo.rag import planted_answer

        prompt = "\n".join(m.get("content") or "" for m in messages)
        question = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        text = planted_answer(prompt, random.Random(0)) if "wrongly" in question else grounded_answer(prompt)
        self.answers.append(text)
        return text

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(llm: StandInLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API; /v1/models is the gateway's health check
            self._send(json.dumps({"object": "list", "data": [{"id": "standin", "object": "model"}]}).encode(),
                       "application/json")

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            text = llm.answer(body.get("messages", []))
            head = {"id": "chatcmpl-standin", "created": int(time.time()), "model": body.get("model", "standin")}
            if not body.get("stream"):
                self._send(json.dumps({**head, "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": len(text.split()),
                              "total_tokens": len(text.split())}}).encode(), "application/json")
                return
            words = re.findall(r"\S+\s*", text)
            events = [{**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words]
            events.append({**head, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"}]})
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            self._send(data.encode(), "text/event-stream")

        def _send(self, data: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
