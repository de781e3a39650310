"""Calibration of the ``lexical`` scorer (rag.lexical): the logistic map from a raw score to [0, 1]
(:func:`_calibrated`), its fit by Platt scaling (:func:`fit_calibration`), and the two ways rag.lexical's
:data:`~rag.lexical.CALIBRATION` was fitted: on human-labelled pairs (:func:`fit_real_calibration`, the current
one) and on rag.claims' synthetic pairs (:func:`calibrate`, the one before).

Example:
    >>> from rag.lexical_calibration import fit_calibration
    >>> slope, intercept = fit_calibration([0.1, 0.2, 0.4, 0.9, 1.1, 1.3], [0, 0, 1, 0, 1, 1])
    >>> slope > 0 > intercept
    True
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from rag.groundedness import is_claim, split_sentences
from rag.lexical_text import _CITATION, _claim
from rag.lexical_windows import best_window, raw_score

REAL_KNEE = 0.5  # where fit_real_calibration's slope changes


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _calibrated(raw: float, calibration: Sequence[float]) -> float:
    """A raw score through a calibration: ``(slope, intercept)``, or ``(slope, intercept, knee, slope_above)``
    whose slope changes at raw score ``knee`` (see :data:`~rag.lexical.CALIBRATION`)."""
    slope, intercept, *hinge = calibration
    if not hinge:
        return _sigmoid(slope * raw + intercept)
    knee, above = hinge
    return _sigmoid(intercept + slope * min(raw, knee) + above * max(raw - knee, 0.0))


def fit_calibration(raw_scores: Sequence[float], labels: Sequence[int], l2: float = 1e-3, knee: float | None = None,
                    sample_weight: Sequence[float] | None = None) -> tuple[float, ...]:
    """(slope, intercept) of the logistic regression of ``labels`` (1 supported, 0 not) on ``raw_scores``; with
    ``knee``, (slope, intercept, knee, slope_above): the raw score enters as two parts, below and above ``knee``,
    each with its own slope (the form of :data:`~rag.lexical.CALIBRATION`).

    Platt scaling, fitted by Newton's method with a small L2 penalty on the slopes, each pair weighted by
    ``sample_weight`` (1 by default); the calibrated score of a raw score r is ``1 / (1 + exp(-(slope * r +
    intercept)))``, so 0.5 falls where supported and unsupported pairs are equally likely. Fit it on training
    pairs, never on an evaluation set.

    Raises:
        ValueError: different lengths, or labels of one class only (nothing to separate).
    """
    import numpy as np

    x, y = np.asarray(raw_scores, dtype=float), np.asarray(labels, dtype=float)
    weight = np.ones_like(x) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or weight.shape != x.shape:
        raise ValueError(f"need one label per raw score; got {x.shape} scores and {y.shape} labels")
    if not ((y == 0) | (y == 1)).all() or y.min() == y.max():
        raise ValueError("labels must be 0 and 1, with both present")
    parts = [x] if knee is None else [np.minimum(x, knee), np.maximum(x - knee, 0.0)]
    design = np.stack([*parts, np.ones_like(x)], axis=1)
    penalty = l2 * np.diag([1.0] * len(parts) + [0.0])
    theta = np.zeros(design.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -35, 35)))
        gradient = design.T @ (weight * (p - y)) + penalty @ theta
        hessian = design.T @ (design * (weight * p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    if knee is None:
        return float(theta[0]), float(theta[1])
    return float(theta[0]), float(theta[2]), float(knee), float(theta[1])


def fit_real_calibration(pairs, splits: Sequence[str] = ("train", "calibration"), knee: float | None = REAL_KNEE,
                         weights: dict[str, float] | None = None) -> tuple[float, ...]:
    """:func:`fit_calibration` on human-labelled pairs (rag.labelled.build_pairs' DataFrame: ``claim``,
    ``context``, ``label``, ``source``, ``split``), the way :data:`~rag.lexical.CALIBRATION` was fitted.

    Only the rows of ``splits`` are used (never ``held_out``). Each claim is scored whole, as
    ``LexicalScorer().detail`` scores an answer against ``[context]``: the raw score of its least supported claim
    sentence; rows whose score no calibration changes (no claim sentence: 1.0; a sentence sharing no word with the
    context: 0.0) are left out. Every (source, label) group weighs the same in the fit, so that one large data set
    does not decide alone and 0.5 falls where the two classes balance (the threshold of balanced accuracy).

    Example:
        >>> from rag.labelled import build_pairs
        >>> fit_real_calibration(build_pairs(seed=0))  # doctest: +SKIP
    """
    raws, labels, groups = [], [], []
    rows = pairs[pairs["split"].isin(list(splits))]
    for claim, context, label, source in zip(rows["claim"], rows["context"], rows["label"], rows["source"],
                                             strict=True):
        raw = _judged_raw(str(claim), [str(context)], weights)
        if raw is not None:
            raws.append(raw)
            labels.append(int(label))
            groups.append((source, int(label)))
    sizes = Counter(groups)
    sample_weight = [len(groups) / (len(sizes) * sizes[group]) for group in groups]
    return fit_calibration(raws, labels, knee=knee, sample_weight=sample_weight)


def _judged_raw(answer: str, contexts: Sequence[str], weights: dict[str, float] | None) -> float | None:
    """The raw score an answer's calibrated score is made from (its least supported claim sentence's), or None
    when its score does not depend on the calibration (no claim sentence, or one that shares nothing)."""
    raws = []
    for start, end in split_sentences(answer):
        text = answer[start:end]
        if not is_claim(text) or not _claim(text).content:
            continue
        window = best_window(text, contexts)
        if window is None:
            return None
        raws.append(raw_score(window.features, weights))
    return min(raws) if raws else None


def calibrate(pairs, weights: dict[str, float] | None = None) -> tuple[float, float]:
    """:func:`fit_calibration` on (context, claim, label) training pairs (rag.claims.make_pairs' DataFrame).

    With an ``original`` column (the sentence a claim was made from), unsupported pairs whose claim differs from
    it only in a citation marker ("[1]" made "[2]") are left out: the scorer ignores such markers on purpose.
    """
    rows = zip(pairs["context"], pairs["claim"], pairs["label"],
               pairs["original"] if "original" in pairs else pairs["claim"], strict=True)
    kept = [(context, claim, int(label)) for context, claim, label, original in rows
            if int(label) or "original" not in pairs or _uncited(claim) != _uncited(original)]
    raws = [_pair_raw(claim, context, weights) for context, claim, _ in kept]
    return fit_calibration(raws, [label for *_, label in kept])


def _uncited(text: str) -> str:
    return " ".join(_CITATION.sub("", text).split())


def _pair_raw(claim: str, context: str, weights: dict[str, float] | None) -> float:
    """A (context, claim) pair's raw score: its least supported sentence, as the scorer combines sentences."""
    raws = []
    for start, end in split_sentences(claim):
        window = best_window(claim[start:end], [context])
        raws.append(raw_score(window.features, weights) if window else 0.0)
    return min(raws) if raws else 0.0
