"""The ``nli`` groundedness scorer: a small cross-encoder the platform trains itself, loaded from the registry.

``workloads/train_groundedness.py`` fine-tunes the packaged MiniLM (all-MiniLM-L6-v2) as a cross-encoder on
(claim, context window) pairs from :mod:`rag.claims`, calibrates its logit with a logistic fit on training pairs
(0.5 is the decision threshold), and registers it as ``rag-groundedness-nli``; the alias ``champion`` is set only
when its balanced accuracy on held-out pages beats ``lexical``'s, and :func:`is_default` then makes it the
``default`` scorer of :mod:`rag.groundedness`.

Scoring is fast because the encoder never reads whole contexts: for each claim sentence of an answer,
:func:`rag.lexical.best_window` picks the run of one to three context sentences that shares the most words with it
(across all the contexts), and only the (sentence, window) pairs of a whole batch of answers are cross-encoded,
at once, sorted by length, in bfloat16 on CPU. Training reads the same windows (:func:`pair_text`), so the model
sees at training time exactly what it scores later.

Example:
    >>> from rag import groundedness
    >>> groundedness.score("The with statement calls __exit__() at the end.", contexts, scorer="nli")
    >>> NLIScorer().detail_batch(["It was added in Python 2.5."], [contexts])[0].sentences[0].score
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.groundedness import Groundedness, SentenceSupport, aggregate, is_claim, split_sentences

__all__ = ["BEATS_LEXICAL_TAG", "CALIBRATION_FILE", "MODEL_NAME", "CrossEncoder", "NLIScorer", "NoChampionError",
           "Pair", "champion_version", "clear_cache", "is_default", "load_champion", "pair_text", "pyfunc_model"]

MODEL_NAME = "rag-groundedness-nli"
BEATS_LEXICAL_TAG = "fabric.groundedness.beats_lexical"  # "true" / "false" on each registered version
BA_TAG, LEXICAL_BA_TAG = "fabric.metric.heldout_balanced_accuracy", "fabric.metric.lexical_heldout_balanced_accuracy"
CALIBRATION_FILE = "calibration.json"
LOOKUP_TTL_S = 60.0  # the registry is asked at most once a minute which version is the champion


class NoChampionError(RuntimeError):
    """The registry holds no ``champion`` of the nli scorer (or cannot be reached)."""


@dataclass(frozen=True)
class Pair:
    """What the scorer compares a claim with: its best window of context sentences (text, context index, span)
    and lexical's raw score of the claim against that window (an input of a stacked calibration)."""

    window: str
    context: int
    span: tuple[int, int]
    lexical: float


def pair_text(claim: str, contexts: list[str]) -> Pair | None:
    """The :class:`Pair` of ``claim`` in ``contexts``, or None when no context shares a content word with it."""
    from rag.lexical import best_window, raw_score

    window = best_window(claim, contexts)
    if window is None:
        return None
    return Pair(window.text(contexts), window.context, window.span, raw_score(window.features))


class CrossEncoder:
    """A trained cross-encoder folder: the Hugging Face model and tokenizer plus ``calibration.json``.

    The calibration maps a pair to support in [0, 1]: ``sigmoid(slope * logit + lexical_slope * lexical +
    intercept)``, fitted by logistic regression on training pages' pairs. ``lexical_slope`` is 0 for the plain
    cross-encoder; a stacked calibration also weighs lexical's raw score of the same window.
    """

    def __init__(self, folder: str | Path, dtype: str = "bfloat16", threads: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.folder = Path(folder)
        settings = json.loads((self.folder / CALIBRATION_FILE).read_text())
        self.slope, self.intercept = float(settings["slope"]), float(settings["intercept"])
        self.lexical_slope = float(settings.get("lexical_slope", 0.0))
        self.max_length = int(settings["max_length"])
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        model = AutoModelForSequenceClassification.from_pretrained(self.folder)
        self.model = model.to(getattr(torch, dtype)).eval()

    def logits(self, claims: list[str], windows: list[str], batch_size: int = 64) -> list[float]:
        """Raw logits of (claim, window) pairs, in order; pairs are batched by length to pad little."""
        import torch

        order = sorted(range(len(claims)), key=lambda i: len(claims[i]) + len(windows[i]))
        out = [0.0] * len(claims)
        with torch.inference_mode():
            for i in range(0, len(order), batch_size):
                chunk = order[i:i + batch_size]
                enc = self.tokenizer([claims[j] for j in chunk], [windows[j] for j in chunk], padding=True,
                                     truncation="longest_first", max_length=self.max_length, return_tensors="pt")
                values = self.model(**enc).logits[:, -1].float().tolist()
                for j, value in zip(chunk, values, strict=True):
                    out[j] = value
        return out

    def calibrate(self, logits: list[float], lexical: list[float]) -> list[float]:
        """Logits (and lexical raw scores) to calibrated support in [0, 1]; 0.5 is the decision threshold."""
        return [_sigmoid(self.slope * x + self.lexical_slope * lex + self.intercept)
                for x, lex in zip(logits, lexical, strict=True)]

    def scores(self, claims: list[str], pairs: list[Pair], batch_size: int = 64) -> list[float]:
        """Calibrated support of each claim against its :class:`Pair`."""
        logits = self.logits(claims, [p.window for p in pairs], batch_size)
        return self.calibrate(logits, [p.lexical for p in pairs])


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, x))))


class NLIScorer:
    """The ``nli`` scorer (:class:`rag.groundedness.Scorer`): the registry's champion, or ``encoder`` when given.

    The champion is looked up at most once a minute, so a newly crowned version is picked up without a restart.
    """

    name = "nli"

    def __init__(self, encoder: CrossEncoder | None = None, model_name: str = MODEL_NAME, batch_size: int = 64):
        self.model_name, self.batch_size = model_name, batch_size
        self._fixed = encoder
        self.encoder = encoder or load_champion(model_name)

    def detail_batch(self, answers: list[str], contexts: list[list[str]]) -> list[Groundedness]:
        """Each answer's :class:`Groundedness`; every (sentence, window) pair of the batch in one encoder call."""
        encoder = self._fixed or load_champion(self.model_name)
        per_answer: list[list[SentenceSupport]] = []
        pending: list[tuple[SentenceSupport, Pair]] = []
        for answer, ctx in zip(answers, contexts, strict=True):
            sentences = []
            for start, end in split_sentences(answer):
                text = answer[start:end]
                found = pair_text(text, ctx) if is_claim(text) else None
                if found is None:  # no claim: not judged; a claim sharing nothing with any context: unsupported
                    claim = is_claim(text) and _has_content(text)
                    sentences.append(SentenceSupport(text, start, end, 0.0 if claim else 1.0, claim=claim))
                    continue
                support = SentenceSupport(text, start, end, 0.0, found.context, found.span)
                sentences.append(support)
                pending.append((support, found))
            per_answer.append(sentences)
        if pending:
            values = encoder.scores([s.text for s, _ in pending], [p for _, p in pending], self.batch_size)
            for (support, _), value in zip(pending, values, strict=True):
                support.score = value
        return [aggregate(sentences, self.name) for sentences in per_answer]


def _has_content(sentence: str) -> bool:
    """Whether the sentence has a content word (lexical's test: a claim without one is not judged)."""
    from rag.lexical import best_window

    return best_window(sentence, [sentence]) is not None


_LOCK = threading.Lock()
_CHAMPION: dict[str, tuple[float, Any]] = {}  # model name -> (looked up at, model version or None)
_ENCODERS: dict[str, CrossEncoder] = {}  # "name/version@run" -> loaded encoder


def champion_version(model_name: str = MODEL_NAME, ttl_s: float = LOOKUP_TTL_S) -> Any:
    """The registry's ``champion`` version of ``model_name`` (an MLflow ModelVersion), or None when there is none
    or no registry answers; looked up at most once per ``ttl_s``."""
    now = time.monotonic()
    with _LOCK:
        cached = _CHAMPION.get(model_name)
        if cached and now - cached[0] < ttl_s:
            return cached[1]
    version = _lookup_champion(model_name)
    with _LOCK:
        _CHAMPION[model_name] = (now, version)
    return version


def clear_cache() -> None:
    """Forgets the champion lookups (the trainer calls it after crowning a version, so this process sees it now)."""
    with _LOCK:
        _CHAMPION.clear()


def _lookup_champion(model_name: str) -> Any:
    if not _registry_reachable():
        return None
    try:
        from fabric.registry import CHAMPION, mlflow_client

        return mlflow_client().get_model_version_by_alias(model_name, CHAMPION)
    except Exception:  # no such model, no alias, a registry error: no champion
        return None


def _registry_reachable(timeout_s: float = 1.0) -> bool:
    """Whether asking the registry can be quick: the embedded store exists, or the server accepts a connection.

    Never creates the embedded store (looking for a champion must not leave a database behind) and never waits
    on MLflow's retries against a server that is down.
    """
    import socket
    from urllib.parse import urlparse

    try:
        from fabric.runtime import resolve_stack

        uri = resolve_stack().mlflow_tracking_uri  # MLFLOW_TRACKING_URI (mlflow.set_tracking_uri sets it) or embedded
    except Exception:  # e.g. a Ray job without a home: no registry to ask
        return False
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout_s):
                return True
        except OSError:
            return False
    if parsed.scheme == "sqlite":
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def load_champion(model_name: str = MODEL_NAME) -> CrossEncoder:
    """The champion's cross-encoder, downloaded once into the model cache and loaded once per process.

    Raises:
        NoChampionError: no champion (train one: ``fabric run train_groundedness --config
            configs/rag/train_groundedness.yaml``).
    """
    version = champion_version(model_name)
    if version is None:
        raise NoChampionError(
            f"the registry has no champion of {model_name}: train one with `fabric run train_groundedness --config "
            "configs/rag/train_groundedness.yaml` (it is crowned when it beats lexical on held-out pages), or use "
            "scorer='lexical'")
    key = f"{model_name}/{version.version}@{version.run_id}"
    with _LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            encoder = _ENCODERS[key] = CrossEncoder(_download(model_name, version))
    return encoder


def _download(model_name: str, version: Any) -> Path:
    """The version's encoder folder in the model cache (``$FABRIC_HOME/models/nli/<run id>``), fetched once."""
    import mlflow

    from fabric.runtime import resolve_stack

    target = Path(resolve_stack().model_cache) / "nli" / f"{version.run_id}-{version.version}"
    folder = target / "artifacts" / "encoder"
    if not (folder / CALIBRATION_FILE).is_file():
        partial = target.with_name(target.name + f".partial-{time.time_ns()}")
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version.version}",
                                            dst_path=str(partial))
        try:
            partial.rename(target)
        except OSError:  # another process put it there first
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    return folder


def pyfunc_model() -> Any:
    """The MLflow PythonModel the trainer logs: artifact ``encoder`` is the encoder folder with its calibration;
    ``predict`` takes a DataFrame with ``claim`` (an answer) and ``context`` columns and returns ``score``.

    Example:
        >>> model = mlflow.pyfunc.load_model("models:/rag-groundedness-nli@champion")
        >>> model.predict(pd.DataFrame({"claim": ["It calls __exit__()."], "context": ["... __exit__() ..."]}))
    """
    import mlflow.pyfunc

    class NLIPyfunc(mlflow.pyfunc.PythonModel):
        def load_context(self, context: Any) -> None:
            self.scorer = NLIScorer(encoder=CrossEncoder(context.artifacts["encoder"]))

        def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
            import pandas as pd

            results = self.scorer.detail_batch([str(c) for c in model_input["claim"]],
                                               [[str(c)] for c in model_input["context"]])
            return pd.DataFrame({"score": [r.score for r in results]})

    return NLIPyfunc()


def is_default(model_name: str = MODEL_NAME) -> bool:
    """Whether ``nli`` should be the default scorer: a champion exists and its held-out balanced accuracy beat
    ``lexical``'s (recorded on the version when it was trained). Cached for a minute; False, fast, when there is
    no registry, no model or no champion."""
    version = champion_version(model_name)
    if version is None:
        return False
    tags = version.tags or {}
    try:
        return float(tags[BA_TAG]) > float(tags[LEXICAL_BA_TAG])
    except (KeyError, ValueError):
        return tags.get(BEATS_LEXICAL_TAG) == "true"
