"""The pipeline's data and model steps: ingest (when configured), snapshot, validate, train (or tune), evaluate,
register.

Each step takes a :class:`~fabric.ct.state.Context`, records its inputs first, and returns a
:class:`~fabric.ct.state.StepResult`. Each is safe to run again after a kill: the snapshot reuses the commit it
made, and registration looks for a version already tagged with the run id before registering.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from fabric.ct.state import Context, CTError, Skip, StepResult

__all__ = ["RUN_TAG", "champion_of", "evaluate", "ingest", "register", "snapshot", "train", "validate"]

RUN_TAG, PIPELINE_TAG, LOG_UNTIL = "fabric.ct.run_id", "fabric.ct.pipeline", "fabric.ct.log_until"
HOLDOUT = "holdout.parquet"


def champion_of(model: str) -> Any:
    """The model's champion version (an MLflow ModelVersion), or CTError naming what is missing."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient().get_model_version_by_alias(model, "champion")
    except MlflowException:
        raise CTError(f"model {model!r} has no champion to retrain: train and register one first (fabric run "
                      "train_tabular ...), or fix `model:` in the pipeline config") from None


def ingest(ctx: Context) -> StepResult:
    """Re-runs each configured ingest_docs config (``rag.ingest.ingest``): a documents branch with a new commit gets
    that commit's collection built and its alias moved; an unchanged one is a no-op. A killed build is finished by
    the resumed step, as by the next ``fabric run ingest_docs``."""
    from rag.ingest import ingest as ingest_docs

    settings = ctx.cfg.ingest_configs()
    ctx.record_inputs("ingest", configs=list(ctx.cfg.ingest), uris=[s.uri for s in settings])
    results = [ingest_docs(s, runtime=ctx.cfg.runtime) for s in settings]
    outputs = {r["alias"]: {"commit": r["commit"], "collection": r["collection"], "built": not r["skipped"]}
               for r in results}
    evidence = "; ".join(f"{r['alias']} -> {r['collection']}" + (" (already live)" if r["skipped"] else
                                                                  f" ({r['chunks']} chunks, new)") for r in results)
    return StepResult(outputs={"indexes": outputs}, evidence=evidence)


def snapshot(ctx: Context) -> StepResult:
    """The champion's training rows plus the newly labelled production rows, committed on ``ct-MODEL-RUN``; the
    newest ``recent_holdout_fraction`` of the labelled rows are held out (saved in the run folder, not committed)."""
    from fabric import data

    cfg, state = ctx.cfg, ctx.state
    champion = champion_of(cfg.model)
    state["champion_before"] = str(champion.version)
    reference = state["reference"] or champion.tags.get("fabric.data.uri")
    if not reference:
        raise CTError(f"champion version {champion.version} of {cfg.model} has no fabric.data.uri tag, so its "
                      "training data is unknown; retrain it with train_tabular first")
    label = cfg.training_config().data.label_column
    ctx.record_inputs("snapshot", model=cfg.model, champion=str(champion.version), reference_uri=reference,
                      log_root=cfg.labels.log_root, last=cfg.labels.last, since=cfg.labels.since,
                      holdout_fraction=cfg.recent_holdout_fraction)
    store = data.open_store(cfg.runtime)
    ref = data.DataURI.parse(reference)
    try:
        ref_commit = store.resolve(ref.repo, ref.ref)
    except data.DataError as exc:
        raise CTError(f"the reference data {reference} (champion version {champion.version}'s training data) cannot "
                      f"be read: {exc}") from None
    branch = f"ct-{re.sub(r'[^A-Za-z0-9_-]+', '-', cfg.model)}-{state['run_id']}"
    holdout_path = ctx.folder / HOLDOUT
    reused = _made_by_this_run(store, ref.repo, branch, state["run_id"]) if holdout_path.exists() else None
    if reused:
        commit, counts = reused.id, json.loads(reused.metadata.get("fabric.ct.counts", "{}"))
    else:
        until = store.get_commit(ref.repo, ref_commit).metadata.get(LOG_UNTIL)
        reference_table = _read_table(store, ref.repo, ref_commit, ref.path)
        features = [name for name in reference_table.schema.names if name != label]
        fresh, holdout = _labelled_rows(cfg, label, features, float(until) if until else None)
        holdout.to_parquet(holdout_path, index=False)
        table = _append(reference_table, fresh)
        counts = {"reference_rows": reference_table.num_rows, "labelled_rows": len(fresh) + len(holdout),
                  "new_rows": len(fresh), "holdout_rows": len(holdout)}
        metadata = {RUN_TAG: state["run_id"], PIPELINE_TAG: cfg.name, "fabric.ct.reference_commit": ref_commit,
                    LOG_UNTIL: repr(float(fresh["time"].max())), "fabric.ct.counts": json.dumps(counts)}
        if branch not in store.list_branches(ref.repo):
            data.branch(ref.repo, branch, source=ref_commit, store=store)
        commit = data.write(f"lakefs://{ref.repo}/{branch}/{ref.path}", table, f"Continuous training {cfg.name} "
                            f"run {state['run_id']}: {counts['new_rows']} labelled production rows on top of "
                            f"{ref_commit[:12]}", metadata=metadata, store=store)
    outputs = {"repo": ref.repo, "branch": branch, "commit": commit, "uri": f"lakefs://{ref.repo}/{commit}/{ref.path}",
               "reference_commit": ref_commit, "holdout_path": str(holdout_path), **counts}
    return StepResult(outputs, f"commit {commit[:12]} on {branch}: {counts['reference_rows']} reference + "
                      f"{counts['new_rows']} new rows, {counts['holdout_rows']} held out")


def _made_by_this_run(store: Any, repo: str, branch: str, run_id: str) -> Any:
    """The branch's head commit when this run made it (a resumed snapshot), else None."""
    if branch not in store.list_branches(repo):
        return None
    head = store.get_commit(repo, branch)
    return head if head.metadata.get(RUN_TAG) == run_id else None


def _read_table(store: Any, repo: str, ref: str, path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, paths = store.read_paths(repo, ref, path)
    if not paths:
        raise CTError(f"the reference data lakefs://{repo}/{ref}/{path} has no files (deleted?)")
    tables = []
    for item in paths:  # read in this thread: see fabric.data.api._first_rows on pq.read_table(handle) at exit
        with fs.open(item, "rb") as handle, pq.ParquetFile(handle, pre_buffer=False) as parquet:
            tables.append(parquet.read(use_threads=False))
    return pa.concat_tables(tables, promote_options="default")


def _labelled_rows(cfg: Any, label: str, features: list[str], after: float | None) -> tuple[Any, Any]:
    """The window's labelled rows as features + label + time, split into (to commit, held out) by time; read with
    the monitor's two-pass window reader (only the key columns of the whole log, then the chosen rows' features)."""
    from fabric.ct.config import parse_duration
    from fabric.monitor import MonitorError
    from fabric.monitor.window import read_labelled
    from fabric.serve.inference_log import default_root

    root = cfg.labels.log_root or default_root()
    since = time.time() - parse_duration(cfg.labels.since) if cfg.labels.since else None
    try:
        rows = read_labelled(cfg.model, features, after=after, since=since, last=cfg.labels.last, root=root)
    except MonitorError:
        raise CTError(f"the inference log of {cfg.model} under {root} is empty: serve the model with the inference "
                      "log on (or set labels.log_root) and send labels to /v2/models/NAME/labels") from None
    if len(rows) < cfg.labels.min_rows:
        raise CTError(f"only {len(rows)} newly labelled rows of {cfg.model} in the window (labels.last="
                      f"{cfg.labels.last}, labels.since={cfg.labels.since}) under {root}; labels.min_rows is "
                      f"{cfg.labels.min_rows}")
    rows = rows.rename(columns={"label": label})
    held = min(max(1, round(len(rows) * cfg.recent_holdout_fraction)), len(rows) - 1)
    return rows.iloc[:-held].reset_index(drop=True), rows.iloc[-held:].reset_index(drop=True)


def _append(reference: Any, rows: Any) -> Any:
    """``rows`` in the reference's schema (its columns, its types) appended to it; other columns are null."""
    import pyarrow as pa

    frame = rows.reindex(columns=reference.schema.names)
    try:
        new = pa.Table.from_pandas(frame, schema=reference.schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise CTError(f"the logged rows do not fit the reference data's columns: {exc}") from None
    return pa.concat_tables([reference, new])


def validate(ctx: Context) -> StepResult:
    """The snapshot commit against the training config's ``data.validation_schema``."""
    from fabric import data
    from fabric.runtime import init_ray

    uri = ctx.outputs("snapshot")["uri"]
    schema = ctx.cfg.training_config(uri).data.validation_schema
    ctx.record_inputs("validate", uri=uri, schema=schema)
    if not schema:
        raise Skip("the training config has no data.validation_schema")
    init_ray(ctx.cfg.runtime.ray)
    store = data.open_store(ctx.cfg.runtime)
    report = data.validate(data.read(uri, store=store), schema, source=uri, raise_on_error=False)
    report.log_to_mlflow()
    if not report.ok:
        raise CTError(report.summary())
    return StepResult({"rows": report.rows, "ok": True}, f"{report.rows} rows pass {Path(schema).name}")


def train(ctx: Context) -> StepResult:
    """The existing tabular training (or tuning) on the snapshot commit, on Ray; no registration here."""
    from fabric.runtime import init_ray

    cfg = ctx.cfg
    uri = ctx.outputs("snapshot")["uri"]
    step = "tune" if cfg.tune else "train"
    ctx.record_inputs(step, data_uri=uri, train_config=cfg.train_config, overrides=cfg.train_overrides)
    training = cfg.training_config(uri)
    training.data.validation_schema = None  # the validate step checked this very commit: not twice
    init_ray(cfg.runtime.ray)
    shrunk = None if cfg.tune else _fit_free_cpus(training.scaling)
    if cfg.tune:
        from fabric.tabular.tune import tune

        summary = tune(training, run_name=f"ct-{cfg.name}-tune")
    else:
        from fabric.tabular import train_model

        summary = train_model(training, run_name=f"ct-{cfg.name}-train")
    outputs = {key: summary[key] for key in ("model_uri", "mlflow_run_id", "data_commit", "model_type",
                                             "test_metrics", "version_tags")}
    outputs["seconds_training"] = summary.get("train_seconds") or summary.get("tune_seconds")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary["test_metrics"].items() if k in ("roc_auc", "rmse"))
    if shrunk:
        outputs["cpus_per_worker"] = shrunk
    return StepResult(outputs, f"MLflow run {summary['mlflow_run_id'][:12]}, {metrics} on its test split"
                      + (f" ({shrunk:g} CPU per worker: the rest is serving)" if shrunk else ""))


def _fit_free_cpus(scaling: Any) -> float | None:
    """On one fixed node (the embedded Ray, where a serving app holds some CPUs), a worker group asking for more
    CPUs than are free would wait forever: each worker's share is cut to fit, leaving a little for Ray Data.
    Returns the new share, or None when nothing changed (enough free, or a multi-node cluster that may grow)."""
    import ray

    need = scaling.num_workers * scaling.cpus_per_worker
    free = ray.available_resources().get("CPU", 0.0)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if need <= free or len(nodes) != 1 or scaling.use_gpu or free < 0.2 * scaling.num_workers:
        return None
    share = round(0.8 * free / scaling.num_workers, 2)
    print(f"[ct] train: {need:g} CPUs asked, {free:g} free on this node; {share:g} CPU per worker", flush=True)
    scaling.cpus_per_worker = share
    return share


def evaluate(ctx: Context) -> StepResult:
    """Challenger and champion scored on the same recent held-out rows with ``fabric.evaluation.score``."""
    import pandas as pd

    from fabric.ct.release import gate_rule

    cfg, state = ctx.cfg, ctx.state
    trained = ctx.outputs("tune" if cfg.tune else "train")
    holdout_path = ctx.outputs("snapshot")["holdout_path"]
    champion_uri = f"models:/{cfg.model}/{state['champion_before']}"
    tags = trained["version_tags"]
    task, label = tags["fabric.task"], tags["fabric.label_column"]
    ctx.record_inputs("evaluate", challenger=trained["model_uri"], champion=champion_uri, rows=holdout_path)
    rows = pd.read_parquet(holdout_path)
    scores = {"challenger": _score(trained["model_uri"], task, rows, label),
              "champion": _score(champion_uri, task, rows, label)}
    metric, margin = gate_rule(cfg, task)
    for role, values in scores.items():
        if metric not in values:
            raise CTError(f"{metric} cannot be computed for the {role} on the {len(rows)} recent rows (one class "
                          "only?); widen the labels window or set gate.metric")
    state["scores"] = {"metric": metric, "margin": margin, "rows": len(rows),
                       "challenger": scores["challenger"][metric], "champion": scores["champion"][metric]}
    outputs = {"task": task, "rows": len(rows), "metric": metric, "scores": scores}
    return StepResult(outputs, f"{metric}: challenger {scores['challenger'][metric]:.4f}, champion v"
                      f"{state['champion_before']} {scores['champion'][metric]:.4f} on {len(rows)} recent rows")


def _score(uri: str, task: str, rows: Any, label: str) -> dict[str, float]:
    import mlflow

    from fabric.evaluation import score

    model = mlflow.pyfunc.load_model(uri)
    schema = model.metadata.get_input_schema()
    features = schema.input_names() if schema else [c for c in rows.columns if c not in (label, "time")]
    missing = [c for c in features if c not in rows.columns]
    if missing:
        raise CTError(f"{uri} needs columns the logged rows lack: {', '.join(missing)}")
    return score(task, rows[label].to_numpy(), model.predict(rows[features]))


def register(ctx: Context) -> StepResult:
    """Registers the challenger with the run id on the version; a version already tagged with it is reused."""
    from mlflow import MlflowClient

    from fabric import registry

    cfg, state = ctx.cfg, ctx.state
    trained = ctx.outputs("tune" if cfg.tune else "train")
    ctx.record_inputs("register", model=cfg.model, model_uri=trained["model_uri"], run_id=state["run_id"])
    existing = [v for v in MlflowClient().search_model_versions(f"name = '{cfg.model}'")
                if v.tags.get(RUN_TAG) == state["run_id"]]
    if existing:
        version, reused = str(existing[0].version), True
    else:
        scores = state["scores"]
        tags = {**trained["version_tags"], RUN_TAG: state["run_id"], PIPELINE_TAG: cfg.name,
                "fabric.ct.trigger": state["trigger"],
                f"fabric.ct.recent.{scores['metric']}": repr(scores["challenger"])}
        version = registry.register(trained["model_uri"], cfg.model, tags=tags, reason=f"continuous training "
                                    f"{cfg.name} run {state['run_id']} ({state['trigger']})")
        reused = False
    state["challenger"] = version
    return StepResult({"version": version, "reused": reused},
                      f"version {version}" + (" (already registered by this run)" if reused else ""))
