"""What ``fabric serve up configs/serve/rag.yaml`` deploys: the RAG chain as one Ray Serve application.

The YAML says ``kind: rag``. The chain: the question is embedded and searched in the Qdrant collection an alias
points at (``index``), the hits fill a versioned prompt from the prompt registry (``prompt``), an LLM answers
(``llm``: the embedded transformers engine of :mod:`llm.serving`, bound in this application, or any
OpenAI-compatible endpoint by ``url``), and the answer is scored for groundedness (``groundedness``) and returned
with its citations.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from fabric.config import FabricConfig, Field
from fabric.runtime import RuntimeConfig
from fabric.serve.config import AuthConfig, InferenceLogConfig
from llm.serving.config import TransformersEngineConfig

__all__ = ["RagGroundedness", "RagIndex", "RagJudge", "RagLLM", "RagLimits", "RagPrompt", "RagServeConfig"]

FILTER_KEYS = ("doc_id", "source", "title", "chunk_id", "commit", "uri")  # rag.index.FILTER_FIELDS


class RagIndex(FabricConfig):
    """The Qdrant collection answers come from, and how it is searched."""

    alias: str = Field("python-docs", min_length=1, description="Collection alias ingestion publishes (rag.index); "
                       "the retriever follows it to each newly published collection between queries.")
    embedder: str | None = Field(None, description="Embedding model of the query (all-MiniLM-L6-v2 or a "
                                 "sentence-transformers folder). Empty: the one the collection was ingested with.")
    top_k: int = Field(4, ge=1, le=100, description="Chunks retrieved when a request gives no top_k.")
    score_threshold: float = Field(0.3, ge=-1, le=1, description="Hits scoring below this are not relevant; when "
                                   "none is left the answer says the documents do not cover the question, and no "
                                   "LLM is called.")
    hybrid: bool | None = Field(None, description="Dense plus sparse keyword retrieval fused by rank (true needs a "
                                "collection ingested with hybrid: true). Empty: as the collection was ingested.")
    filters: list[str] = Field(["doc_id", "source", "title"], description="Payload keys a request may filter on "
                               "(`filters: {doc_id: [...]}`); others get 400.")
    refresh_interval_s: float = Field(5.0, gt=0, description="How often the retriever checks whether the alias "
                                      "moved to a new collection (it switches between queries, never during one).")
    num_replicas: int = Field(1, ge=1, description="Retriever replicas (each holds the embedder and, in Qdrant "
                              "local mode, an in-memory copy of the collection).")
    num_cpus: float = Field(0.25, gt=0, description="CPUs Ray reserves per retriever replica.")


class RagPrompt(FabricConfig):
    """The prompt template, versioned in MLflow's prompt registry (llm.prompts)."""

    uri: str = Field("prompts:/rag-answer@production", min_length=1, description="prompts:/NAME@ALIAS, "
                     "prompts:/NAME/VERSION or NAME. When NAME has no version yet, the default template is registered "
                     "as its version 1 (and ALIAS pointed at it). Variables: {{context}} and {{question}}.")
    max_context_chars: int = Field(6000, ge=200, description="Characters of retrieved chunks put in the prompt at "
                                   "most; the lowest-ranked hits that do not fit are left out (and not cited).")


class RagLLM(FabricConfig):
    """The generator: the embedded transformers engine (default) or any OpenAI-compatible endpoint (``url``)."""

    url: str | None = Field(None, description="Base URL of an OpenAI-compatible API (http://host:8000/v1, a vLLM "
                            "endpoint, ...). Empty: the embedded transformers engine, bound in this application.")
    model: str = Field("smollm2-135m-instruct", min_length=1, description="url: the model name the endpoint "
                       "serves. Embedded: a source for llm.models.resolve_model (offline).")
    api_key_env: str = Field("OPENAI_API_KEY", min_length=1, description="url: the environment variable holding "
                             "the endpoint's API key (read when the app is built; none: no key is sent).")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature when a request gives none "
                               "(0: greedy, reproducible answers).")
    max_context_tokens: int = Field(2048, ge=64, description="Embedded engine: prompt plus answer tokens may not "
                                    "exceed this (the model's context length); chunks are left out to fit.")
    transformers: TransformersEngineConfig = Field(default_factory=TransformersEngineConfig,
                                                   description="Settings of the embedded engine (ignored with url).")

    @property
    def embedded(self) -> bool:
        return not self.url


class RagJudge(FabricConfig):
    """The LLM judge's endpoint (rag.judge: Evidently's faithfulness judge at an OpenAI-compatible API)."""

    url: str = Field(..., min_length=1, pattern=r"^https?://", description="Base URL of the judge's "
                     "OpenAI-compatible API (a vLLM endpoint: http://host:8000/v1).")
    model: str = Field(..., min_length=1, description="The model name the judge endpoint serves.")
    api_key_env: str = Field("FABRIC_JUDGE_API_KEY", min_length=1, description="The environment variable holding "
                             "the judge endpoint's API key (read when the app is built; unset: the key EMPTY).")


class RagGroundedness(FabricConfig):
    """How every answer is scored (rag.groundedness)."""

    scorer: str = Field("default", min_length=1, description="Scorer name in rag.groundedness's registry: "
                        "default, lexical, nli, judge (judge needs `judge`).")
    judge_sample_rate: float = Field(0.0, ge=0, le=1, description="Share of answers also scored by the `judge` "
                                     "scorer, off the request path (metrics and log only); above 0 needs `judge`.")
    judge: RagJudge | None = Field(None, description="The judge scorer's endpoint; none: no judge.")
    on_ungrounded: Literal["flag", "refuse", "quote"] = Field("flag", description="What an answer scoring below "
                                                              "`threshold` gets: flag (served, marked in its "
                                                              "`guardrail`), refuse (replaced by a refusal), quote "
                                                              "(replaced by the sources' own supporting sentences). "
                                                              "Refuse and quote stream only once scored.")
    threshold: float = Field(0.5, ge=0, le=1, description="Answers scoring below this are ungrounded for "
                             "on_ungrounded (0.5 is every scorer's decision threshold).")

    @model_validator(mode="after")
    def _judge_configured(self) -> RagGroundedness:
        if self.judge is None and (self.judge_sample_rate > 0 or self.scorer == "judge"):
            why, other = ((f"judge_sample_rate is {self.judge_sample_rate}", "judge_sample_rate=0")
                          if self.judge_sample_rate > 0 else ("scorer is judge", "another scorer"))
            raise ValueError(f"{why} but no judge endpoint is configured: set groundedness.judge.url and "
                             f"groundedness.judge.model (an OpenAI-compatible API), or {other}")
        return self


class RagLimits(FabricConfig):
    """Per-request and per-server limits; requests over them get a 4xx that says which."""

    max_query_chars: int = Field(2000, ge=1, description="Longer questions get 400.")
    max_top_k: int = Field(20, ge=1, description="Largest top_k a request may ask for.")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a chat request may ask for.")
    default_max_tokens: int = Field(256, ge=1, description="Tokens an answer may have when the request gives none.")
    max_concurrent_requests: int = Field(16, ge=1, description="Requests in flight at once; more get 429.")
    max_request_bytes: int = Field(65536, ge=1, description="Larger request bodies get 413.")
    request_timeout_s: float = Field(120.0, gt=0, description="A request not answered within this many seconds "
                                     "gets 504.")

    @model_validator(mode="after")
    def _consistent(self) -> RagLimits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens ({self.default_max_tokens}) must be at most max_tokens "
                             f"({self.max_tokens})")
        return self


class RagServeConfig(FabricConfig):
    """A retrieval-augmented answering application on Ray Serve (`/rag/query`, OpenAI `/v1/chat/completions`)."""

    kind: Literal["rag"] = Field("rag", description="Marks a RAG serve config; see fabric.config_kinds.")
    name: str = Field("rag", min_length=1, description="Ray Serve application name.")
    route_prefix: str = Field("/", description="HTTP path the application is mounted at.")
    host: str = Field("127.0.0.1", description="Address the HTTP proxy listens on: loopback only by default.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of the Ray Serve proxy.")
    model: str = Field("python-docs-rag", min_length=1, pattern=r"^[^:\s]+$",
                       description="The name chat clients send as `model` (listed by /v1/models).")
    index: RagIndex = Field(default_factory=RagIndex, description="Retrieval.")
    prompt: RagPrompt = Field(default_factory=RagPrompt, description="The prompt template.")
    llm: RagLLM = Field(default_factory=RagLLM, description="The generator.")
    groundedness: RagGroundedness = Field(default_factory=RagGroundedness, description="Answer scoring.")
    limits: RagLimits = Field(default_factory=RagLimits, description="Request and server limits.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="API keys (FABRIC_API_KEYS), role predict; "
                            "/rag/score logs the scores of keys whose role includes label.")
    inference_log: InferenceLogConfig = Field(default_factory=InferenceLogConfig, description="Every answer "
                                              "(query, chunk ids, answer, groundedness) into the inference log.")
    trace_sample_rate: float = Field(1.0, ge=0, le=1, description="Share of requests traced to MLflow (RETRIEVER "
                                     "and LLM spans, written in the background).")
    gateway_num_cpus: float = Field(0.25, gt=0, description="CPUs Ray reserves for the gateway, which also runs "
                                    "the groundedness scorer.")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Where Ray, MLflow and Qdrant are.")

    @model_validator(mode="after")
    def _limits_fit(self) -> RagServeConfig:
        if self.index.top_k > self.limits.max_top_k:
            raise ValueError(f"index.top_k ({self.index.top_k}) is over limits.max_top_k ({self.limits.max_top_k})")
        if self.llm.embedded and self.limits.max_tokens >= self.llm.max_context_tokens:
            raise ValueError(f"limits.max_tokens ({self.limits.max_tokens}) must be below llm.max_context_tokens "
                             f"({self.llm.max_context_tokens}) to leave room for a prompt")
        unknown = sorted(set(self.index.filters) - set(FILTER_KEYS))
        if unknown:
            raise ValueError(f"index.filters: {', '.join(unknown)} are not payload keys; choose from "
                             f"{', '.join(FILTER_KEYS)}")
        return self
