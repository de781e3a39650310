"""llm/serving/structured.py without Ray: response_format becomes a grammar (or a 400 naming it), and the
decoder's output under that grammar parses and validates against the schema, even on a random model."""

from __future__ import annotations

import json

import pytest

from llm.serving.openai_protocol import ApiError
from llm.serving.structured import grammar_for

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "colour": {"enum": ["red", "green", "blue"]},
    "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
}, "required": ["name", "age", "colour", "tags"], "additionalProperties": False}


def test_response_format_becomes_a_grammar_or_a_400_naming_it():
    assert grammar_for(None) is None and grammar_for({"type": "text"}) is None
    assert grammar_for({"type": "json_object"}) and grammar_for(
        {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
    for bad, words in (({"type": "xml"}, "not supported"), ({"type": "json_schema", "json_schema": {"name": "p"}},
                                                            "schema"),
                       ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "nonsense"}}},
                        "cannot be enforced")):
        with pytest.raises(ApiError) as err:
            grammar_for(bad)
        assert err.value.status == 400 and err.value.param == "response_format" and words in err.value.message


def test_constrained_decoding_of_a_random_model_gives_valid_json(tiny):
    import jsonschema

    from llm.serving.generation import Decoder, Job

    model, tokenizer = tiny
    decoder = Decoder(model, tokenizer, {tokenizer.eos_token_id})
    prompt = tokenizer("A person as JSON:", add_special_tokens=False)["input_ids"]
    schema_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}
    jobs = [Job(prompt_ids=prompt, max_tokens=120, temperature=1.0, seed=3, grammar=grammar_for(schema_format)),
            Job(prompt_ids=prompt, max_tokens=60, temperature=0.0, grammar=grammar_for({"type": "json_object"})),
            Job(prompt_ids=prompt, max_tokens=5, temperature=0.0)]  # free text in the same batch
    texts, reasons = ["", "", ""], [None, None, None]
    for step in decoder.run(jobs):
        for n, event in enumerate(step):
            if event is not None:
                texts[n] += event.text
                reasons[n] = event.finish_reason or reasons[n]
    assert reasons == ["stop", "stop", "length"], texts
    jsonschema.validate(json.loads(texts[0]), SCHEMA)
    assert isinstance(json.loads(texts[1]), dict)
