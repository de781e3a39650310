"""tests for rag/judge.py: the ``judge`` scorer against a real local HTTP server that speaks OpenAI's chat
completions wire format and answers Evidently's faithfulness prompt deterministically (FAITHFUL when every claim
sentence of the RESPONSE appears word for word in the SOURCE), plus the serve config's ``groundedness.judge``."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fabric.config import ConfigError
from rag import groundedness
from rag.judge import JudgeConfigError, JudgeError, JudgeScorer, from_env, use_judge

CONTEXTS = ["The with statement calls __exit__() when the block ends.",
            "The with statement was added in Python 2.5. It simplifies try/finally."]
SUPPORTED = "The with statement was added in Python 2.5. The with statement calls __exit__() when the block ends."
CHANGED = SUPPORTED.replace("2.5", "3.1")
_SOURCE = re.compile(r"-----source_starts-----\n(.*)\n-----source_finishes-----", re.S)
_RESPONSE = re.compile(r"___text_starts_here___\n(.*)\n___text_ends_here___", re.S)


class StandIn(ThreadingHTTPServer):
    """A judge endpoint on 127.0.0.1: records each request; ``reply`` overrides the verdict with raw text."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.reply: str | None = None
        self.url = f"http://127.0.0.1:{self.server_port}/v1"

    def verdict(self, prompt: str) -> str:
        source, response = _SOURCE.search(prompt)[1], _RESPONSE.search(prompt)[1]
        claims = [response[a:b] for a, b in groundedness.split_sentences(response)]
        faithful = all(claim in source for claim in claims)
        return json.dumps({"category": "FAITHFUL" if faithful else "UNFAITHFUL",
                           "reasoning": "every sentence is in the source" if faithful else "a sentence is not"})


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                     "body": body})
        prompt = "\n".join(m["content"] for m in body["messages"])
        content = self.server.reply if self.server.reply is not None else self.server.verdict(prompt)
        data = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def endpoint():
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def stand_in(endpoint):
    endpoint.requests.clear()
    endpoint.reply = None
    return endpoint


@pytest.fixture
def judge_registry():
    """Restores the registry's environment-built judge after a test registers its own."""
    yield
    groundedness.register_scorer("judge", groundedness._lazy("rag.judge:from_env"))


def test_a_supported_answer_passes_and_a_changed_number_fails(stand_in):
    scorer = JudgeScorer(stand_in.url, "judge-7b", api_key="secret-judge")
    good, bad = scorer.detail_batch([SUPPORTED, CHANGED], [CONTEXTS, CONTEXTS])
    assert good.score >= 0.5 and good.supported and good.scorer == "judge"
    assert bad.score < 0.5 and not bad.supported
    assert [s.text for s in good.sentences] == ["The with statement was added in Python 2.5.",
                                                "The with statement calls __exit__() when the block ends."]
    assert {s.score for s in good.sentences} == {1.0} and {s.score for s in bad.sentences} == {0.0}
    assert all(SUPPORTED[s.start:s.end] == s.text and s.claim for s in good.sentences)


def test_requests_reach_the_endpoint_with_the_configured_model_and_key(stand_in):
    JudgeScorer(stand_in.url, "judge-7b", api_key="secret-judge").detail_batch([SUPPORTED], [CONTEXTS])
    (request,) = stand_in.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "judge-7b"
    assert request["authorization"] == "Bearer secret-judge"
    prompt = "\n".join(m["content"] for m in request["body"]["messages"])
    assert "FAITHFUL" in prompt and all(context in prompt for context in CONTEXTS) and SUPPORTED in prompt


def test_refusals_and_missing_contexts_are_scored_without_asking_the_judge(stand_in):
    refusal, no_context = JudgeScorer(stand_in.url, "judge-7b").detail_batch(
        ["I don't know.", SUPPORTED], [CONTEXTS, []])
    assert refusal.score == 1.0 and not refusal.sentences[0].claim
    assert no_context.score == 0.0
    assert stand_in.requests == []


def test_an_endpoint_that_is_down_is_an_error_naming_the_url():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(JudgeError, match=re.escape(url)):
        JudgeScorer(url, "judge-7b").detail_batch([SUPPORTED], [CONTEXTS])


@pytest.mark.parametrize("reply", ["Looks grounded to me.", json.dumps({"category": "MAYBE"}),
                                   json.dumps({"reasoning": "no category"})])
def test_an_answer_that_is_no_verdict_is_an_error_naming_the_url(stand_in, reply):
    stand_in.reply = reply
    with pytest.raises(JudgeError, match=re.escape(stand_in.url)):
        JudgeScorer(stand_in.url, "judge-7b").detail_batch([SUPPORTED], [CONTEXTS])


def test_get_scorer_builds_the_judge_from_the_environment(stand_in, monkeypatch, judge_registry):
    for name in ("FABRIC_JUDGE_URL", "FABRIC_JUDGE_MODEL", "FABRIC_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(JudgeConfigError, match="FABRIC_JUDGE_URL and FABRIC_JUDGE_MODEL"):
        groundedness.get_scorer("judge")
    monkeypatch.setenv("FABRIC_JUDGE_URL", stand_in.url)
    with pytest.raises(JudgeConfigError, match="set FABRIC_JUDGE_MODEL .*groundedness.judge.url"):
        from_env()
    monkeypatch.setenv("FABRIC_JUDGE_MODEL", "env-judge")
    monkeypatch.setenv("OPENAI_API_KEY", "must-not-be-sent")
    assert groundedness.score(CHANGED, CONTEXTS, scorer="judge") < 0.5
    assert stand_in.requests[-1]["body"]["model"] == "env-judge"
    assert stand_in.requests[-1]["authorization"] == "Bearer EMPTY"


def test_use_judge_replaces_the_registered_judge(stand_in, judge_registry):
    use_judge(stand_in.url, "configured-judge", "k-1")
    assert groundedness.get_scorer("judge").model == "configured-judge"
    assert groundedness.score(SUPPORTED, CONTEXTS, scorer="judge") >= 0.5
    assert stand_in.requests[-1]["authorization"] == "Bearer k-1"
    with pytest.raises(JudgeConfigError, match="http"):
        use_judge("10.0.0.5:8000", "m")
    assert "k-1" not in repr(groundedness.get_scorer("judge"))


def test_the_serve_config_refuses_a_judge_sample_rate_without_a_judge_url():
    from rag.serving.config import RagServeConfig

    with pytest.raises(ConfigError, match=r"groundedness\.judge\.url"):
        RagServeConfig.from_yaml("configs/serve/rag.yaml", ["groundedness.judge_sample_rate=0.1"])
    with pytest.raises(ConfigError, match=r"groundedness\.judge\.url"):
        RagServeConfig.from_yaml("configs/serve/rag.yaml", ["groundedness.judge_sample_rate=0.1",
                                                            "groundedness.judge.model=m"])
    with pytest.raises(ConfigError, match=r"groundedness\.judge\.url"):
        RagServeConfig.from_yaml("configs/serve/rag.yaml", ["groundedness.scorer=judge"])
    cfg = RagServeConfig.from_yaml("configs/serve/rag.yaml", [
        "groundedness.judge_sample_rate=0.1", "groundedness.judge.url=http://10.0.0.5:8000/v1",
        "groundedness.judge.model=Qwen/Qwen2.5-7B-Instruct"])
    assert cfg.groundedness.judge.api_key_env == "FABRIC_JUDGE_API_KEY"
    assert RagServeConfig.from_yaml("configs/serve/rag.yaml").groundedness.judge is None
