"""Groundedness monitoring of a RAG app: a window of its inference log, the figures the alert rules read, and an
Evidently report of them.

The RAG gateway logs one row per answer into the inference log the classical models use (model: the app's
``model`` name; version: the data commit the answer's index was built from; outputs ``groundedness``,
``covered``, ``query``, ``answer``, ``chunk_ids``, ``scorer``). A check reads the newest data commit's window::

    result = check("python-docs-rag", last=200)
    #   fabric monitor check python-docs-rag --last 200
    result.mean_groundedness, result.ungrounded_share, result.worst[0]["query"], result.html_path

and ``fabric monitor check python-docs-rag --config configs/monitor/rag.yaml`` fires the spec's rules on it:
``groundedness_below`` (the window's mean score of answered questions under X) and ``ungrounded_share_above``
(the share of answers scoring under 0.5, each scorer's decision threshold, over Y) and ``guardrail_share_above``
(the share of scored answers the grounding guardrail flagged, refused or quoted, over Z; ``guardrail`` counts each
action). Questions the corpus does not cover get no LLM answer and no score; they are counted (``not_covered``),
not averaged. Rows of ``/rag/retrieve`` (no answer) are counted as ``retrievals`` and left out of the rest.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fabric.monitor import MonitorConfig, MonitorError

__all__ = ["OUTPUTS", "GroundednessCheck", "check", "is_rag_log", "latest_version"]

OUTPUTS = ["query", "answer", "groundedness", "covered", "scorer", "chunk_ids", "guardrail"]
GUARDED = ("flag", "refuse", "quote")  # the guardrail's actions on an answer below its threshold
THRESHOLD = 0.5  # every scorer is calibrated so that 0.5 is its decision threshold
WORST = 5


@dataclass
class GroundednessCheck:
    """What a groundedness check of a RAG app's window found (the fields the alert rules and the CLI read)."""

    model: str
    version: str  #: the data commit of the answers' index
    time: float
    rows: int  #: answers in the window (covered or not)
    answered: int  #: answers with a groundedness score
    not_covered: int  #: questions the index had nothing relevant for
    mean_groundedness: float | None
    ungrounded_share: float | None  #: share of scored answers under 0.5
    scorers: dict[str, int]  #: answers per scorer
    worst: list[dict]  #: the lowest-scored answers: query, answer, groundedness
    window: dict
    html_path: str
    json_path: str
    mlflow_run_id: str | None
    guardrail: dict[str, int] = dataclasses.field(default_factory=dict)  #: scored answers per guardrail action
    guardrail_share: float | None = None  #: share of scored answers flagged, refused or quoted
    retrievals: int = 0  #: /rag/retrieve rows in the window (no answer; not in the figures above)
    labelled_rows: int = 0  #: RAG answers carry no labels (the too_few_labels rule never applies)
    kind: str = "rag"

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}


def is_rag_log(model: str, log_root: str | None = None) -> bool:
    """Whether ``model``'s inference log holds RAG answers (a ``groundedness`` output column)."""
    import pyarrow.parquet as pq

    from fabric.serve.inference_log import OUTPUT_PREFIX, log_files

    fs, paths = log_files(model, "predictions", log_root)
    return bool(paths) and f"{OUTPUT_PREFIX}groundedness" in pq.read_schema(paths[-1], filesystem=fs).names


def latest_version(model: str, log_root: str | None = None) -> str:
    """The version (data commit) of the newest logged answer of ``model``."""
    import pyarrow.dataset as ds

    from fabric.serve.inference_log import log_files

    fs, paths = log_files(model, "predictions", log_root)
    if not paths:
        raise MonitorError(f"{model!r} has no inference log yet under {log_root or 'the default log root'}: serve "
                           "the RAG app with inference_log.enabled and ask it some questions first")
    table = ds.dataset(paths, filesystem=fs, format="parquet").to_table(columns=["time", "version"])
    times = table["time"].to_numpy()
    return str(table["version"][int(times.argmax())])


def check(model: str, *, version: str | None = None, last: int | None = None, since: str | None = None,
          cfg: MonitorConfig | None = None, log_root: str | None = None, out_dir: str | None = None,
          log_to_mlflow: bool = True) -> GroundednessCheck:
    """Checks the groundedness of ``model``'s answers from ``version`` (default: the newest data commit logged).

    Raises:
        MonitorError: no inference log, no answers of that version, or fewer than ``cfg.min_rows`` in the window.
    """
    from fabric.monitor.reports import report_dir, save_snapshot
    from fabric.monitor.window import read_window

    cfg = (cfg or MonitorConfig()).window(last, since)
    at = time.time()
    version = version or latest_version(model, log_root)
    window = read_window(model, version, [], OUTPUTS, last=cfg.last,
                         since=cfg.since, max_rows=cfg.max_rows, seed=cfg.seed, root=log_root, now=at)
    where = f"last {cfg.last} answers" if cfg.last is not None else f"the last {cfg.since}"
    frame = window.current
    retrieval = (frame["answer"].fillna("") == "") & frame["groundedness"].isna()
    frame = frame[~retrieval]
    if len(frame) < cfg.min_rows:
        raise MonitorError(f"{model} at data commit {version[:12]}: {len(frame)} logged answers in the window "
                           f"({where}); a check needs at least {cfg.min_rows} (min_rows)")
    scored = frame[frame["groundedness"].notna()]
    actions = scored["guardrail"].fillna("").astype(str)
    guarded = {a: int((actions == a).sum()) for a in GUARDED if (actions == a).any()}
    mean = float(scored["groundedness"].mean()) if len(scored) else None
    share = float((scored["groundedness"] < THRESHOLD).mean()) if len(scored) else None
    worst = scored.nsmallest(WORST, "groundedness")[["query", "answer", "groundedness"]].to_dict("records")
    snapshot = _report(frame, model, version, where, at)
    html, json_path = save_snapshot(snapshot, out_dir or report_dir(model), version[:12], at)
    result = GroundednessCheck(
        model=model, version=version, time=at, rows=len(frame), answered=len(scored),
        not_covered=int((~frame["covered"].astype(bool)).sum()), mean_groundedness=mean, ungrounded_share=share,
        scorers={str(k): int(v) for k, v in scored["scorer"].value_counts().items()}, worst=worst,
        window=window.spec, html_path=html, json_path=json_path, mlflow_run_id=None, guardrail=guarded,
        guardrail_share=sum(guarded.values()) / len(scored) if len(scored) else None,
        retrievals=int(retrieval.sum()))
    if log_to_mlflow:
        result.mlflow_run_id = _log_to_mlflow(result)
    return result


def _report(frame: Any, model: str, version: str, where: str, at: float) -> Any:
    """An Evidently report of the window: groundedness statistics, the answered and not-covered counts, and a
    test that the mean stays at or above 0.5."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import InRangeValueCount, MeanValue, MissingValueCount, QuantileValue, RowCount
    from evidently.presets import ValueStats
    from evidently.tests import gte, lte

    data = frame[["groundedness", "covered", "scorer", "query", "answer"]].copy()
    data["covered"] = data["covered"].astype(bool).astype(str)
    definition = DataDefinition(numerical_columns=["groundedness"], categorical_columns=["covered", "scorer"],
                                text_columns=["query", "answer"])
    report = Report([
        RowCount(),
        MeanValue(column="groundedness", tests=[gte(THRESHOLD)]),
        QuantileValue(column="groundedness", quantile=0.1),
        InRangeValueCount(column="groundedness", left=0.0, right=THRESHOLD, tests=[lte(0.5, is_critical=False)]),
        MissingValueCount(column="groundedness"),
        ValueStats(column="groundedness"),
    ], metadata={"model": model, "version": version, "window": where}, tags=["fabric", "rag"], include_tests=True)
    return report.run(Dataset.from_pandas(data, data_definition=definition),
                      timestamp=datetime.fromtimestamp(at, timezone.utc))


def _log_to_mlflow(result: GroundednessCheck) -> str:
    """A run of the ``fabric-monitor`` experiment with the figures and the report."""
    import mlflow

    from fabric.monitor.reports import experiment_id

    experiment = experiment_id()  # sets up the configured tracking store first
    client = mlflow.MlflowClient()
    tags = {"fabric.model": result.model, "fabric.model_version": result.version, "fabric.data.commit":
            result.version, "fabric.monitor.kind": "rag",
            "fabric.monitor.window": ", ".join(f"{k}={v}" for k, v in result.window.items())}
    run = client.create_run(experiment, tags=tags, run_name=f"monitor-{result.model}-{result.version[:12]}")
    figures = {"rows": result.rows, "answered": result.answered, "not_covered": result.not_covered,
               "mean_groundedness": result.mean_groundedness, "ungrounded_share": result.ungrounded_share,
               "guardrail_share": result.guardrail_share}
    stamp = int(result.time * 1000)
    client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric(k, float(v), stamp, 0)
                                               for k, v in figures.items() if v is not None])
    for path in (result.html_path, result.json_path):
        client.log_artifact(run.info.run_id, path, "report")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
