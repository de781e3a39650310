"""The ``nli`` groundedness scorer: a MiniLM cross-encoder the platform trains itself on human-labelled pairs,
shipped trained with the package (``rag/models/groundedness``) and replaced by a better registered champion.

``workloads/train_groundedness.py`` fine-tunes the packaged MiniLM (all-MiniLM-L6-v2) as a cross-encoder on
real (claim, evidence, supported?) pairs (:mod:`rag.labelled`) and at most a third of generated Python-docs pairs
(:mod:`rag.claims`), calibrates its logit on a calibration split of real pairs (0.5 is the decision threshold),
judges it on held-out real pairs split by source document (:mod:`rag.heldout`) and registers it as
``rag-groundedness-nli``. Which encoder scores (:func:`resolve`): the registry's ``champion`` when it was judged on
the same held-out pairs as the shipped weights and beat them, else the shipped weights, else a champion that beat
``lexical`` (a checkout without shipped weights); :func:`is_default` says whether any is there, and
:mod:`rag.groundedness`'s ``default`` is then ``nli``.

Scoring is fast because the encoder never reads whole contexts: for each claim sentence of an answer,
:func:`rag.lexical.candidate_windows` picks up to ``candidates`` places in the contexts that share the most words
with it, each widened to whole sentences around it (the sentence before first: it names the subject that a
following "It ..." refers to) up to ``window_words`` words; every (sentence, window) pair of a batch of answers is
cross-encoded at once, sorted by length, in bfloat16 on CPU, and a sentence's support is its best window's
(SummaC-style: the best-supporting chunk wins). Training reads the same windows (:func:`candidate_pairs`), so the
model sees at training time what it scores later.

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

from rag.groundedness import THRESHOLD, Groundedness, SentenceSupport, aggregate, is_claim, split_sentences

__all__ = ["BEATS_LEXICAL_TAG", "CALIBRATION_FILE", "HELDOUT_BA_TAG", "HELDOUT_HASH_TAG", "MODEL_NAME", "SHIPPED",
           "CrossEncoder", "NLIScorer", "NoChampionError", "Pair", "candidate_pairs", "champion_version",
           "clear_cache", "is_default", "load_champion", "pair_text", "pyfunc_model", "resolve", "shipped_card"]

MODEL_NAME = "rag-groundedness-nli"
BEATS_LEXICAL_TAG = "fabric.groundedness.beats_lexical"  # "true" / "false" on each registered version
BA_TAG, LEXICAL_BA_TAG = "fabric.metric.heldout_balanced_accuracy", "fabric.metric.lexical_heldout_balanced_accuracy"
CALIBRATION_FILE = "calibration.json"
# Tags of a version judged on held-out real pairs: the mean balanced accuracy over domains and a hash of the rows
# (rag.heldout), so a champion is compared with the shipped weights only on the same rows.
HELDOUT_BA_TAG = "fabric.groundedness.heldout_mean_balanced_accuracy"
HELDOUT_HASH_TAG = "fabric.groundedness.heldout_hash"
SHIPPED = Path(__file__).resolve().parent / "models" / "groundedness"  # the weights the package ships
WINDOW_WORDS, CANDIDATES = 60, 2  # defaults of an encoder folder whose calibration.json names neither
LOOKUP_TTL_S = 60.0  # the registry is asked at most once a minute which version is the champion


class NoChampionError(RuntimeError):
    """The registry holds no ``champion`` of the nli scorer (or cannot be reached)."""


@dataclass(frozen=True)
class Pair:
    """What the scorer compares a claim with: one window of context sentences (text, context index, span) and
    lexical's raw score of the claim against the window's core (an input of a stacked calibration)."""

    window: str
    context: int
    span: tuple[int, int]
    lexical: float


def candidate_pairs(claim: str, contexts: list[str], k: int = CANDIDATES, window_words: int = WINDOW_WORDS
                    ) -> list[Pair]:
    """Up to ``k`` :class:`Pair` of ``claim`` in ``contexts``, best first (:func:`rag.lexical.candidate_windows`:
    each widened to whole sentences around its core up to ``window_words`` words); empty when no context shares a
    content word with it."""
    from rag.lexical import candidate_windows, raw_score

    return [Pair(w.text(contexts), w.context, w.span, raw_score(w.features))
            for w in candidate_windows(claim, contexts, k=k, max_words=window_words)]


def pair_text(claim: str, contexts: list[str], window_words: int = WINDOW_WORDS) -> Pair | None:
    """The best :class:`Pair` of ``claim`` in ``contexts``, or None when no context shares a content word with it."""
    found = candidate_pairs(claim, contexts, 1, window_words)
    return found[0] if found else None


class CrossEncoder:
    """A trained cross-encoder folder: the Hugging Face model and tokenizer plus ``calibration.json``.

    The calibration maps a pair to support in [0, 1]: ``sigmoid(slope * logit + lexical_slope * lexical +
    intercept)``, fitted by logistic regression on calibration pairs. ``lexical_slope`` is 0 for the plain
    cross-encoder; a stacked calibration also weighs lexical's raw score of the same window. ``window_words`` and
    ``candidates`` say how the encoder was trained to read contexts (:func:`candidate_pairs`).
    """

    def __init__(self, folder: str | Path, dtype: str = "bfloat16", threads: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.folder = Path(folder)
        self.settings = settings = json.loads((self.folder / CALIBRATION_FILE).read_text())
        self.slope, self.intercept = float(settings["slope"]), float(settings["intercept"])
        self.lexical_slope = float(settings.get("lexical_slope", 0.0))
        self.max_length = int(settings["max_length"])
        self.window_words = int(settings.get("window_words", WINDOW_WORDS))
        self.candidates = int(settings.get("candidates", CANDIDATES))
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        model = AutoModelForSequenceClassification.from_pretrained(self.folder)
        self.model = model.to(getattr(torch, dtype)).eval()

    def pairs(self, claim: str, contexts: list[str]) -> list[Pair]:
        """The windows this encoder reads for ``claim`` (its own ``candidates`` and ``window_words``)."""
        return candidate_pairs(claim, contexts, self.candidates, self.window_words)

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
    """The ``nli`` scorer (:class:`rag.groundedness.Scorer`): :func:`resolve`'s encoder, or ``encoder`` when given.

    The registry is asked at most once a minute, so a newly crowned version is picked up without a restart.
    """

    name = "nli"

    def __init__(self, encoder: CrossEncoder | None = None, model_name: str = MODEL_NAME, batch_size: int = 64):
        self.model_name, self.batch_size = model_name, batch_size
        self._fixed = encoder
        self.encoder = encoder or resolve(model_name)

    def detail_batch(self, answers: list[str], contexts: list[list[str]]) -> list[Groundedness]:
        """Each answer's :class:`Groundedness`. A sentence's support is its best window's: every sentence's first
        window is encoded in one call for the whole batch, then the next window only of sentences still under 0.5
        (a supported sentence costs one pair, an unsupported one up to ``candidates``)."""
        encoder = self._fixed or resolve(self.model_name)
        per_answer: list[list[SentenceSupport]] = []
        pending: list[tuple[SentenceSupport, list[Pair]]] = []
        for answer, ctx in zip(answers, contexts, strict=True):
            sentences = []
            for start, end in split_sentences(answer):
                text = answer[start:end]
                found = encoder.pairs(text, ctx) if is_claim(text) else []
                if not found:  # no claim: not judged; a claim sharing nothing with any context: unsupported
                    claim = is_claim(text) and _has_content(text)
                    sentences.append(SentenceSupport(text, start, end, 0.0 if claim else 1.0, claim=claim))
                    continue
                support = SentenceSupport(text, start, end, 0.0, found[0].context, found[0].span)
                sentences.append(support)
                pending.append((support, found))
            per_answer.append(sentences)
        rank = 0
        while pending:  # the best window of every sentence first; the next only for sentences still unsupported
            flat = [(support, found[rank]) for support, found in pending]
            values = encoder.scores([s.text for s, _ in flat], [p for _, p in flat], self.batch_size)
            for (support, pair), value in zip(flat, values, strict=True):
                if value > support.score:
                    support.score, support.context, support.span = value, pair.context, pair.span
            rank += 1
            pending = [(s, found) for s, found in pending if s.score < THRESHOLD and len(found) > rank]
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


def shipped_card() -> dict[str, Any] | None:
    """The shipped weights' settings (``rag/models/groundedness/calibration.json``: calibration, data commit,
    held-out figures), or None when this checkout ships none."""
    path = SHIPPED / CALIBRATION_FILE
    if not path.is_file() or not any(SHIPPED.glob("*.safetensors")):
        return None
    return json.loads(path.read_text())


def _champion_wins(version: Any, shipped: dict[str, Any] | None) -> bool:
    """Whether the registry's champion should score instead of the shipped weights: judged on the same held-out
    real pairs (the same hash) with a higher mean balanced accuracy; without shipped weights, when it beat lexical."""
    tags = version.tags or {}
    if shipped is not None:
        heldout = shipped.get("heldout", {})
        try:
            return (tags.get(HELDOUT_HASH_TAG) == heldout["hash"]
                    and float(tags[HELDOUT_BA_TAG]) > float(heldout["mean_balanced_accuracy"]))
        except (KeyError, ValueError, TypeError):
            return False
    try:
        return float(tags[BA_TAG]) > float(tags[LEXICAL_BA_TAG])
    except (KeyError, ValueError):
        return tags.get(BEATS_LEXICAL_TAG) == "true"


def resolve(model_name: str = MODEL_NAME) -> CrossEncoder:
    """The encoder ``nli`` scores with: the champion when :func:`_champion_wins`, else the shipped weights.

    Raises:
        NoChampionError: neither (train one: ``fabric run train_groundedness --config
            configs/rag/train_groundedness.yaml``).
    """
    shipped = shipped_card()
    version = champion_version(model_name)
    if version is not None and _champion_wins(version, shipped):
        return load_champion(model_name)
    if shipped is None:
        return load_champion(model_name)  # raises NoChampionError when there is none at all
    with _LOCK:
        encoder = _ENCODERS.get("shipped")
        if encoder is None:
            encoder = _ENCODERS["shipped"] = CrossEncoder(SHIPPED)
    return encoder


def is_default(model_name: str = MODEL_NAME) -> bool:
    """Whether ``nli`` is the default scorer: the package ships weights, or the registry's champion beat
    ``lexical`` (recorded on the version when it was trained). Cached for a minute; fast when there is no
    registry, no model or no champion."""
    if shipped_card() is not None:
        return True
    version = champion_version(model_name)
    return version is not None and _champion_wins(version, None)
