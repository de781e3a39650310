"""One training run end to end: pin and validate the data, train on Ray, evaluate, log, register."""

from __future__ import annotations

import time
from typing import Any

from fabric.tabular.config import TabularConfig

__all__ = ["data_tags", "train_model"]


def data_tags(prepared: Any) -> dict[str, str]:
    """Run tags that tie a run to the exact data it read."""
    return {"fabric.data.uri": prepared.pinned, "fabric.data.commit": prepared.commit,
            "fabric.data.source_uri": prepared.uri}


def train_model(cfg: TabularConfig, run_name: str = "train_tabular") -> dict[str, Any]:
    """Trains the configured model in a new MLflow run and returns a summary (metrics, run id, version)."""
    import mlflow

    from fabric import data
    from fabric.tabular.prepare import bootstrap_if_missing, prepare
    from fabric.tabular.train import build_trainer, finish, load_checkpoint, loop_config
    from fabric.tracking import start_run

    store = data.open_store(cfg.runtime)
    bootstrap_if_missing(cfg.data, store)
    with start_run(cfg, run_name=run_name) as run:
        prepared = prepare(cfg, store)
        mlflow.set_tags(data_tags(prepared))
        started = time.perf_counter()
        trainer = build_trainer(cfg, prepared, loop_config(cfg, prepared, run.info.run_id),
                                name=f"{run_name}-{run.info.run_id[:12]}")
        result = trainer.fit()
        elapsed = time.perf_counter() - started
        mlflow.log_metric("train_seconds", elapsed)
        meta, model = load_checkpoint(cfg, prepared, result.checkpoint)
        summary = finish(cfg, prepared, meta, model)
    last = result.metrics or {}
    summary.update(
        mlflow_run_id=run.info.run_id,
        epochs_reported=int(last.get("epoch", -1)) + 1 if "epoch" in last else None,
        final_val_loss=round(float(last["val_loss"]), 6) if "val_loss" in last else None,
        train_seconds=round(elapsed, 2),
    )
    print(f"[train_tabular] done in {elapsed:.1f} s: " + ", ".join(
        f"{k} {v:.4f}" for k, v in summary["test_metrics"].items()) + f"; MLflow run {run.info.run_id}", flush=True)
    return summary
