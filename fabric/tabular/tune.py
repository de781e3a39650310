"""Ray Tune over tabular training: ASHA stops weak trials early, Optuna proposes the next ones.

Each trial runs the same Ray Train training as ``train_tabular`` (a ``TorchTrainer`` or ``XGBoostTrainer``
started from a light Tune driver function, as Ray's Train V2 + Tune integration prescribes) and is an MLflow
child run of the tuning run, with its sampled parameters and per-epoch metrics. The best trial's final
checkpoint is then evaluated, logged and registered exactly as a single training run's model is.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import model_validator

from fabric.config import Field
from fabric.tabular.config import TabularConfig
from fabric.tuning import SearchConfig, check_space, decode, merge_params, run_search, summarize, trial_run

__all__ = ["TuneConfig", "TuneTabularConfig", "tune"]


class TuneConfig(SearchConfig):
    """The search over tabular training; ASHA's unit is the epoch (or boosting round)."""

    metric: Literal["val_loss"] = Field("val_loss", description="Reported metric to minimise.")


class TuneTabularConfig(TabularConfig):
    """A tuning run: the training config every trial starts from, plus the search."""

    tune: TuneConfig = Field(default_factory=TuneConfig, description="The hyperparameter search.")

    @model_validator(mode="after")
    def _space_keys_exist(self) -> TuneTabularConfig:
        check_space(TabularConfig, self.model_dump(exclude={"tune", "workload"}), self.tune.space)
        return self


def _trial(params: dict[str, Any], base: dict[str, Any], prepared: Any, parent_run_id: str, tracking_uri: str,
           experiment_id: str) -> None:
    """One trial (a light Tune driver): an MLflow child run around a Ray Train fit that reports to Tune."""
    import mlflow
    from ray.tune.integration.ray_train import TuneReportCallback

    from fabric.tabular.train import build_trainer, loop_config

    values = decode(params)
    cfg = TabularConfig.from_dict(merge_params(base, values), source="trial")
    with trial_run(values, parent_run_id, tracking_uri, experiment_id) as (run, name):
        trainer = build_trainer(cfg, prepared, loop_config(cfg, prepared, run.info.run_id), name=name,
                                callbacks=[TuneReportCallback()])
        result = trainer.fit()
        if result.metrics:
            mlflow.log_metrics({f"final_{k}": float(v) for k, v in result.metrics.items()
                                if isinstance(v, (int, float))})


def tune(cfg: TuneTabularConfig, run_name: str = "tune_tabular") -> dict[str, Any]:
    """Runs the search in a parent MLflow run, then logs and registers the best trial's model."""
    import mlflow
    from ray import tune as rt
    from ray.train import Checkpoint

    from fabric import data
    from fabric.tabular.models import model_kind
    from fabric.tabular.pipeline import data_tags
    from fabric.tabular.prepare import bootstrap_if_missing, prepare
    from fabric.tabular.train import finish, load_checkpoint
    from fabric.tracking import start_run
    from fabric.training import checkpoint_storage

    store = data.open_store(cfg.runtime)
    bootstrap_if_missing(cfg.data, store)
    base = TabularConfig.from_dict(cfg.model_dump(exclude={"tune", "workload"})).model_dump(mode="json")
    max_t = model_kind(cfg.model.type).rounds(cfg)
    with start_run(cfg, run_name=run_name) as run:
        prepared = prepare(cfg, store)
        mlflow.set_tags(data_tags(prepared))
        started = time.perf_counter()
        trainable = rt.with_parameters(
            _trial, base=base, prepared=prepared, parent_run_id=run.info.run_id,
            tracking_uri=mlflow.get_tracking_uri(), experiment_id=run.info.experiment_id,
        )
        grid = run_search(trainable, cfg.tune, max_t, name=f"{run_name}-{run.info.run_id[:12]}",
                          storage=checkpoint_storage(cfg.scaling), seed=cfg.data.seed)
        elapsed = time.perf_counter() - started
        outcome = summarize(grid, cfg.tune.metric, max_t)
        mlflow.log_params({f"best.{k}": v for k, v in outcome.params.items()})
        mlflow.log_metrics({**outcome.metrics(cfg.tune.metric), "tune_seconds": elapsed})
        best_cfg = TabularConfig.from_dict(merge_params(base, outcome.params), source="best trial")
        meta, model = load_checkpoint(best_cfg, prepared, Checkpoint(outcome.best.metrics["checkpoint_path"]))
        summary = finish(best_cfg, prepared, meta, model)
    summary.update(
        mlflow_run_id=run.info.run_id, trials=outcome.trials, trials_stopped_early=outcome.stopped_early,
        trials_failed=outcome.failed, best_params=outcome.params, best_val_loss=round(outcome.best_value, 6),
        tune_seconds=round(elapsed, 2),
    )
    print(f"[tune_tabular] {outcome.trials} trials in {elapsed:.1f} s ({outcome.stopped_early} stopped early by "
          f"ASHA); best {outcome.params} val_loss {summary['best_val_loss']:.4f}; MLflow run {run.info.run_id}",
          flush=True)
    return summary
