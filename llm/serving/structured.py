"""OpenAI's ``response_format`` as constrained decoding with llguidance: the output is valid JSON (of the schema).

``{"type": "json_object"}`` constrains the answer to a JSON object, ``{"type": "json_schema", "json_schema":
{"name", "schema"}}`` to an instance of the schema (what LangChain's ``with_structured_output`` sends by
default). The gateway turns ``response_format`` into an llguidance grammar (a string, cheap to send to the
engine) and refuses what cannot be enforced with a 400 naming ``response_format``; the decoder keeps one
:class:`Constraint` per request that masks the tokens the grammar does not allow at each step.

JSON is generated compactly (no free whitespace), so a small model cannot wander off into blank lines; the text
is still cut by ``max_tokens`` (``finish_reason: length``), as with OpenAI.

Example:
    >>> grammar = grammar_for({"type": "json_object"})
    >>> constraint = Constraint(ll_tokenizer(tokenizer, vocab_size=49152), grammar)
    >>> logits[~constraint.allowed()] = float("-inf")   # then sample, then constraint.consume(token)
"""

from __future__ import annotations

from typing import Any

from llm.serving.openai_protocol import ApiError

__all__ = ["Constraint", "grammar_for", "ll_tokenizer"]

# Compact JSON: "," and ":" and no whitespace between tokens.
JSON_OPTIONS = {"whitespace_flexible": False}
PARAM = "response_format"


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """The llguidance grammar of a request's ``response_format`` (None: free text); 400 if it cannot be enforced."""
    from llguidance import LLMatcher

    if not response_format or response_format.get("type") == "text":
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError("response_format: json_schema needs a `schema` object: {\"type\": \"json_schema\", "
                           "\"json_schema\": {\"name\": ..., \"schema\": {...}}}", 400, PARAM)
    else:
        raise ApiError(f"response_format: type {kind!r} is not supported; use text, json_object or json_schema",
                       400, PARAM)
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise ApiError(f"response_format: not a JSON schema: {exc}", 400, PARAM) from None
    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise ApiError(f"response_format: this schema cannot be enforced: {problem[:500]}", 400, PARAM)
    return grammar


def ll_tokenizer(tokenizer: Any, vocab_size: int, eos_ids: set[int] | None = None) -> Any:
    """llguidance's view of a Hugging Face fast tokenizer (about 1 s to build: build it once per model)."""
    from llguidance.hf import from_tokenizer

    eos = sorted(eos_ids) if eos_ids else tokenizer.eos_token_id
    return from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)


class Constraint:
    """One request's grammar state: which tokens may come next, and whether the grammar has finished."""

    def __init__(self, tokenizer: Any, grammar: str):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(tokenizer, grammar)
        if self.matcher.is_error():
            raise ApiError(f"response_format: {self.matcher.get_error()[:500]}", 400, PARAM)

    def allowed(self, vocab_size: int) -> Any:
        """A bool tensor over the vocabulary: True where the grammar allows the token."""
        import numpy as np
        import torch

        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        return torch.from_numpy(bits[:vocab_size].astype(bool))

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding: token {token} refused: {self.matcher.get_error()}")

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (the answer ends here)."""
        return self.matcher.is_stopped()
