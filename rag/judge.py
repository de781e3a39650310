"""The ``judge`` groundedness scorer: an LLM judge behind any OpenAI-compatible endpoint (a vLLM server on the
cluster, a hosted API), asking Evidently's ``FaithfulnessLLMEval`` rather than a prompt of our own.

Why Evidently's evaluator and not MLflow's (both are installed and both are well kept): Evidently takes the
endpoint per evaluation, ``OpenAIOptions(api_url=URL, api_key=KEY)``, and talks to it with the ``openai`` client
alone (no litellm, nothing reached but that URL). MLflow 3.17's ``RetrievalGroundedness`` needs an MLflow trace
with a RETRIEVER span, and its ``judges.is_grounded`` reads the endpoint from process-wide environment variables
(``OPENAI_BASE_URL``; ``OPENAI_API_KEY`` must be set even for a keyless vLLM) and retries a dead endpoint up to
ten times: using it from a serving replica would mean rewriting the process's environment around every call.
Evidently needs one DataFrame in and one column out.

What the score means: Evidently's judge reads the whole answer against the retrieved contexts (joined, in order,
as its SOURCE) and answers FAITHFUL or UNFAITHFUL, with its reasoning; "cannot tell" counts as UNFAITHFUL
(``Uncertainty.TARGET``: an answer the judge cannot confirm is not shown to be grounded). FAITHFUL scores 1.0 and
UNFAITHFUL 0.0, and every claim sentence of the answer carries that whole-answer verdict (``context`` and
``span`` stay None: the judge does not say which passage supports what), so :func:`rag.groundedness.aggregate`
gives the verdict back as the answer's score and 0.5 stays the threshold. As with the other scorers, an answer
without claims (a refusal, a question) scores 1.0 and one with claims but no contexts 0.0, and the judge is not
asked about either. Evidently sets no sampling temperature and no timeout of its own: the endpoint's default
temperature and the openai client's timeout (10 minutes, two retries; Evidently retries once more) apply, which is
why the RAG gateway runs the judge on a sample of answers off the request path.

The endpoint comes from config: ``groundedness.judge`` in a RAG serve config (url, model, api_key_env), or, outside
serving, the environment variables ``FABRIC_JUDGE_URL`` (base URL, ``http://host:8000/v1``),
``FABRIC_JUDGE_MODEL`` (the model name the endpoint serves) and optionally ``FABRIC_JUDGE_API_KEY``. No key sends
``EMPTY`` (vLLM's convention for an endpoint without keys), never ``OPENAI_API_KEY``: a cluster endpoint must not
receive the OpenAI key by accident.

Example:
    >>> from rag import groundedness, judge
    >>> judge.use_judge("http://10.0.0.5:8000/v1", "Qwen/Qwen2.5-7B-Instruct")  # or FABRIC_JUDGE_* variables
    >>> groundedness.score("It was added in Python 2.5.", contexts, scorer="judge")  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import logging
import os

from rag.groundedness import Groundedness, SentenceSupport, aggregate, is_claim, register_scorer, split_sentences

__all__ = ["API_KEY_ENV", "MODEL_ENV", "URL_ENV", "JudgeConfigError", "JudgeError", "JudgeScorer", "from_env",
           "use_judge"]

URL_ENV, MODEL_ENV, API_KEY_ENV = "FABRIC_JUDGE_URL", "FABRIC_JUDGE_MODEL", "FABRIC_JUDGE_API_KEY"
NO_KEY = "EMPTY"  # what the openai client sends when the endpoint takes no key (it refuses to send none)
VERDICTS = {"FAITHFUL": 1.0, "UNFAITHFUL": 0.0}
_log = logging.getLogger(__name__)


class JudgeConfigError(ValueError):
    """No judge endpoint is configured; the message names the variables (or config keys) to set."""


class JudgeError(RuntimeError):
    """The judge endpoint could not be reached or answered something that is no verdict; names the URL."""


class JudgeScorer:
    """Groundedness by an LLM judge (Evidently's ``FaithfulnessLLMEval``) at an OpenAI-compatible endpoint.

    Args:
        url: base URL of the OpenAI-compatible API, e.g. ``http://10.0.0.5:8000/v1``.
        model: the model name the endpoint serves.
        api_key: sent as ``Authorization: Bearer KEY``; None sends ``EMPTY``.
        separator: what joins an answer's contexts into the judge's one SOURCE text.

    Example:
        >>> scorer = JudgeScorer("http://127.0.0.1:8000/v1", "judge-model")
        >>> scorer.detail_batch(["It was added in Python 2.5."], [contexts])[0].score  # doctest: +SKIP
        1.0
    """

    name = "judge"

    def __init__(self, url: str, model: str, api_key: str | None = None, separator: str = "\n\n"):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise JudgeConfigError(f"the judge's url must be an http(s) base URL such as http://host:8000/v1, "
                                   f"not {url!r}")
        if not isinstance(model, str) or not model.strip():
            raise JudgeConfigError(f"the judge's model must name the model {url} serves, not {model!r}")
        self.url, self.model, self.separator = url.rstrip("/"), model, separator
        self._api_key = api_key or NO_KEY

    def __repr__(self) -> str:
        return f"JudgeScorer(url={self.url!r}, model={self.model!r})"  # never the key

    def detail_batch(self, answers: list[str], contexts: list[list[str]]) -> list[Groundedness]:
        """One :class:`Groundedness` per answer; the answers that need a verdict go to the judge in one batch.

        Raises:
            JudgeError: the endpoint is down, refuses the request, or answers no FAITHFUL/UNFAITHFUL verdict.
        """
        split = [[(start, end, is_claim(answer[start:end])) for start, end in split_sentences(answer)]
                 for answer in answers]
        asked = [i for i, sentences in enumerate(split)
                 if any(claim for *_, claim in sentences) and any(c.strip() for c in contexts[i])]
        verdicts = dict(zip(asked, self._verdicts([answers[i] for i in asked], [contexts[i] for i in asked]),
                            strict=True))
        results = []
        for i, (answer, sentences) in enumerate(zip(answers, split, strict=True)):
            verdict = verdicts.get(i, 0.0)  # claims but no context: nothing can support them
            results.append(aggregate([SentenceSupport(answer[start:end], start, end, verdict if claim else 1.0,
                                                      claim=claim) for start, end, claim in sentences], self.name))
        return results

    def _verdicts(self, answers: list[str], contexts: list[list[str]]) -> list[float]:
        """Evidently's FAITHFUL/UNFAITHFUL for each (answer, contexts), as 1.0/0.0."""
        if not answers:
            return []
        categories = self._categories(answers, [self.separator.join(c for c in ctx if c.strip()) for ctx in contexts])
        scores = []
        for category, reasoning in categories:
            verdict = str(category).strip().upper()
            if verdict not in VERDICTS:
                raise JudgeError(f"the judge at {self.url} (model {self.model}) answered no verdict: "
                                 f"category {category!r} is neither FAITHFUL nor UNFAITHFUL")
            _log.debug("judge %s: %s (%s)", self.model, verdict, reasoning)
            scores.append(VERDICTS[verdict])
        return scores

    def _categories(self, answers: list[str], sources: list[str]) -> list[tuple[object, object]]:
        """Runs the evaluator over the batch; (category, reasoning) per answer. Every failure names the URL."""
        import pandas as pd
        from evidently import DataDefinition, Dataset
        from evidently.descriptors import FaithfulnessLLMEval
        from evidently.llm.options import OpenAIOptions
        from evidently.llm.templates import Uncertainty

        frame = pd.DataFrame({"answer": answers, "source": sources})
        evaluator = FaithfulnessLLMEval("answer", context="source", provider="openai", model=self.model,
                                        include_reasoning=True, uncertainty=Uncertainty.TARGET, alias="verdict")
        try:
            dataset = Dataset.from_pandas(frame, data_definition=DataDefinition(text_columns=["answer", "source"]),
                                          descriptors=[evaluator],
                                          options=OpenAIOptions(api_url=self.url, api_key=self._api_key))
            scored = dataset.as_dataframe()
            return list(zip(scored["verdict"], scored.get("verdict reasoning", [None] * len(answers)), strict=True))
        except Exception as exc:  # connection refused, HTTP errors, unparseable answers, missing fields
            cause = getattr(exc, "original_error", None) or exc
            raise JudgeError(f"the judge at {self.url} (model {self.model}) failed: {type(cause).__name__}: "
                             f"{_message(exc)}") from exc


def _message(exc: Exception) -> str:
    """Evidently's own message, and the start of the judge's answer when that was what could not be parsed."""
    text = getattr(exc, "message", None) or str(exc)
    response = getattr(exc, "response", None)
    if isinstance(response, str):
        text += f"; it answered {response[:200]!r}"
    return text


def from_env() -> JudgeScorer:
    """The judge the environment names (``FABRIC_JUDGE_URL``, ``FABRIC_JUDGE_MODEL``, ``FABRIC_JUDGE_API_KEY``);
    what ``get_scorer("judge")`` builds when no serving config registered one.

    Raises:
        JudgeConfigError: ``FABRIC_JUDGE_URL`` or ``FABRIC_JUDGE_MODEL`` is unset; the message says what to set.
    """
    url, model = os.environ.get(URL_ENV, "").strip(), os.environ.get(MODEL_ENV, "").strip()
    missing = [name for name, value in ((URL_ENV, url), (MODEL_ENV, model)) if not value]
    if missing:
        raise JudgeConfigError(f"the judge groundedness scorer needs an OpenAI-compatible endpoint: set "
                               f"{' and '.join(missing)} (e.g. {URL_ENV}=http://host:8000/v1 "
                               f"{MODEL_ENV}=Qwen/Qwen2.5-7B-Instruct, and {API_KEY_ENV} if it takes a key), or "
                               "groundedness.judge.url and .model in the RAG serve config")
    return JudgeScorer(url, model, os.environ.get(API_KEY_ENV) or None)


def use_judge(url: str, model: str, api_key: str | None = None) -> None:
    """Registers ``judge`` in :mod:`rag.groundedness` as this endpoint (the RAG gateway calls it with
    ``groundedness.judge``); replaces the environment's judge and any earlier one.

    Raises:
        JudgeConfigError: url is no http(s) URL or model is empty (checked now, not at the first answer).
    """
    scorer = JudgeScorer(url, model, api_key)
    register_scorer("judge", lambda: scorer)
