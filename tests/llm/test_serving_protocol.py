"""llm/serving without Ray or a model: OpenAI request parsing and errors, stop strings, model names, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fabric.config import ConfigError
from llm.serving.adapters import split_model
from llm.serving.config import LLMServeConfig
from llm.serving.generation import StopText
from llm.serving.openai_protocol import ApiError, ChatCompletionRequest, CompletionRequest, error_body, parse_request

ROOT = Path(__file__).resolve().parents[2]


def chat(**fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def test_chat_request_parses_what_the_openai_client_sends():
    req = parse_request(chat(max_completion_tokens=7, temperature=0, stop="\n", seed=3, stream=True,
                             stream_options={"include_usage": True}, user="ignored"), ChatCompletionRequest)
    assert req.requested_tokens() == 7 and req.temperature == 0 and req.stops() == ["\n"] and req.seed == 3
    assert req.turns() == [{"role": "user", "content": "hi"}]
    parts = parse_request(json.dumps({"model": "m", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}]}]}).encode(), ChatCompletionRequest)
    assert parts.turns() == [{"role": "system", "content": "be brief"}]
    text = parse_request(json.dumps({"model": "m", "prompt": ["once"], "max_tokens": 4}).encode(), CompletionRequest)
    assert text.text() == "once" and text.requested_tokens() == 4


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    (chat(max_tokens="lots"), "max_tokens"),
    (chat(temperature=3), "temperature"),
    (json.dumps({"model": "m", "messages": []}).encode(), "messages"),
    (json.dumps({"model": "m", "messages": [{"role": "robot", "content": "x"}]}).encode(), "messages.0.role"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model"),
])
def test_malformed_requests_are_422_naming_the_field(body, param):
    with pytest.raises(ApiError) as err:
        parse_request(body, ChatCompletionRequest)
    assert err.value.status == 422 and err.value.param == param
    if param:
        assert err.value.message.startswith(param)


@pytest.mark.parametrize(("fields", "param"), [({"n": 2}, "n"), ({"tools": [{"type": "function"}]}, "tools"),
                                               ({"logprobs": True}, "logprobs"), ({"stop": list("abcde")}, "stop")])
def test_unsupported_options_are_400(fields, param):
    with pytest.raises(ApiError) as err:
        parse_request(chat(**fields), ChatCompletionRequest)
    assert err.value.status == 400 and err.value.param == param


def test_error_body_has_openai_shape():
    body = error_body(ApiError("nope", 404, "model", "model_not_found"))
    assert body == {"error": {"message": "nope", "type": "invalid_request_error", "param": "model",
                              "code": "model_not_found"}}
    assert error_body(ApiError("slow down", 429))["error"]["type"] == "rate_limit_error"


def test_model_names_split_into_base_and_adapter():
    assert split_model("base", "base") == ("base", None)
    assert split_model("base:my-lora", "base") == ("base", "my-lora")
    assert split_model("base:my-lora/3", "base") == ("base", "my-lora/3")
    for bad in ("other", "other:lora", "base:", "base:a/b/c", "base:x'OR'1'='1", "base:../x", "base:a b"):
        with pytest.raises(ApiError) as err:
            split_model(bad, "base")
        assert err.value.status == 404 and err.value.code == "model_not_found"


def test_adapter_names_are_checked_before_any_registry_query(monkeypatch, tmp_path):
    import fabric.registry
    from llm.serving.adapters import adapter_folder

    def no_query():
        raise AssertionError("the registry was queried")

    monkeypatch.setattr(fabric.registry, "mlflow_client", no_query)
    for bad in ("x' OR name LIKE '%", "x'", "../../etc", "a/b/c", "name/v1"):
        with pytest.raises(ApiError) as err:
            adapter_folder(bad, "base", tmp_path)
        assert err.value.status == 404 and "letters, digits" in err.value.message


class CharTokenizer:
    """One character per token id (ids index into ``text``)."""

    def __init__(self, text: str):
        self.text = text

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.text[i] for i in ids)


def test_stop_text_holds_back_possible_stops_and_cuts_at_a_stop():
    text = "Hello END there"
    tracker, released = StopText(CharTokenizer(text), ["END"]), []
    for n in range(1, len(text) + 1):
        delta, stopped = tracker.update(list(range(n)))
        released.append(delta)
        if stopped:
            break
    assert "".join(released) == "Hello " and stopped
    assert released[6] == "" and released[7] == ""  # "E", "EN" might start "END": held back

    tracker = StopText(CharTokenizer("Hello EN"), ["END"])
    assert tracker.update(list(range(8))) == ("Hello ", False)
    assert tracker.update(list(range(8)), final=True) == ("EN", False)  # the end releases what was held


def test_llm_serve_configs_validate_limits_and_lora_paths():
    cfg = LLMServeConfig.from_yaml(ROOT / "configs" / "serve" / "llm.yaml")
    assert cfg.kind == "llm" and cfg.engine == "transformers" and cfg.model.id == "smollm2-135m-instruct"
    with pytest.raises(ConfigError, match="max_tokens"):
        LLMServeConfig.from_dict({"limits": {"max_tokens": 4096, "max_context_tokens": 2048}})
    with pytest.raises(ConfigError, match="default_max_tokens"):
        LLMServeConfig.from_dict({"limits": {"default_max_tokens": 600, "max_tokens": 512}})
    with pytest.raises(ConfigError, match="cloud storage"):
        LLMServeConfig.from_dict({"engine": "vllm", "vllm": {"lora_path": "/local/adapters"}})
    with pytest.raises(ConfigError, match="model.id"):
        LLMServeConfig.from_dict({"model": {"id": "has:colon"}})


def test_json_mode_needs_the_word_json_in_the_request_as_openai_does():
    json_mode = {"response_format": {"type": "json_object"}}
    with pytest.raises(ApiError) as err:
        parse_request(chat(**json_mode), ChatCompletionRequest)
    assert (err.value.status, err.value.param, err.value.message) == (
        400, "messages", "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                         "'json_object'.")
    with pytest.raises(ApiError) as err:
        parse_request(json.dumps({"model": "m", "prompt": "Name a city:", **json_mode}).encode(), CompletionRequest)
    assert err.value.status == 400 and err.value.param == "prompt"
    asked = [{"role": "system", "content": [{"type": "text", "text": "Answer in Json."}]},
             {"role": "user", "content": "hi"}]
    assert parse_request(json.dumps({"model": "m", "messages": asked, **json_mode}).encode(), ChatCompletionRequest)
    assert parse_request(json.dumps({"model": "m", "prompt": "JSON:", **json_mode}).encode(), CompletionRequest)
    assert parse_request(chat(response_format={"type": "json_schema"}), ChatCompletionRequest)  # only json_object
