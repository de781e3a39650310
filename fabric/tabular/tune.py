"""Ray Tune over tabular training: ASHA stops weak trials early, Optuna proposes the next ones.

Each trial runs the same Ray Train training as ``train_tabular`` (a ``TorchTrainer`` or ``XGBoostTrainer``
started from a light Tune driver function, as Ray's Train V2 + Tune integration prescribes) and is an MLflow
child run of the tuning run, with its sampled parameters and per-epoch metrics. The best trial's final
checkpoint is then evaluated, logged and registered exactly as a single training run's model is.
"""

from __future__ import annotations

import copy
import json
import time
from typing import Any, Literal

from pydantic import field_validator, model_validator

from fabric.config import ConfigError, FabricConfig, Field
from fabric.tabular.config import TabularConfig

__all__ = ["TuneConfig", "TuneTabularConfig", "tune"]

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
JSON_PREFIX = "json:"
DRIVER_CPU = 0.05  # Ray refuses an empty resource request


class TuneConfig(FabricConfig):
    """The search: how many trials, which parameters over which ranges, how weak trials stop."""

    num_samples: int = Field(6, ge=1, description="Trials to run.")
    max_concurrent_trials: int = Field(2, ge=1, description="Trials running at once (each needs its workers' CPUs).")
    search: Literal["optuna", "random"] = Field("optuna", description="optuna (TPE) or random search.")
    metric: Literal["val_loss"] = Field("val_loss", description="Reported metric to minimise.")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs (or rounds) every trial gets before it can stop.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor of trials per rung.")
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=lambda: {"train.lr": {"loguniform": [1e-4, 3e-2]}},
        description="Dotted config key -> {distribution: arguments}: uniform [lo, hi], loguniform [lo, hi], "
        "randint [lo, hi), choice [options...].",
    )

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        for key, spec in space.items():
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise ValueError(f"{key}: give exactly one of {', '.join(DISTRIBUTIONS)}, got {list(spec)}")
            kind, args = next(iter(spec.items()))
            if kind != "choice" and len(args) != 2:
                raise ValueError(f"{key}: {kind} takes [low, high], got {args}")
            if kind == "choice" and not args:
                raise ValueError(f"{key}: choice needs at least one option")
        return space


class TuneTabularConfig(TabularConfig):
    """A tuning run: the training config every trial starts from, plus the search."""

    tune: TuneConfig = Field(default_factory=TuneConfig, description="The hyperparameter search.")

    @model_validator(mode="after")
    def _space_keys_exist(self) -> TuneTabularConfig:
        base = self.model_dump(exclude={"tune", "workload"})
        for key, spec in self.tune.space.items():
            kind, args = next(iter(spec.items()))
            sample = args[0]
            try:
                TabularConfig.from_dict(_with(base, key, sample), source=f"tune.space.{key}")
            except ConfigError as exc:
                raise ValueError(f"tune.space.{key}: {exc}") from None
        return self


def _with(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``dotted`` set to ``value``."""
    out = copy.deepcopy(base)
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def _param_space(cfg: TuneConfig) -> dict[str, Any]:
    from ray import tune as rt

    make = {"uniform": rt.uniform, "loguniform": rt.loguniform, "randint": rt.randint}
    space = {}
    for key, spec in cfg.space.items():
        kind, args = next(iter(spec.items()))
        # Optuna's choices must be scalars: lists (e.g. hidden sizes) travel as JSON text, decoded in the trial.
        space[key] = rt.choice([_encode(a) for a in args]) if kind == "choice" else make[kind](*args)
    return space


def _encode(value: Any) -> Any:
    return JSON_PREFIX + json.dumps(value) if isinstance(value, (list, dict)) else value


def _decode(params: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v[len(JSON_PREFIX):]) if isinstance(v, str) and v.startswith(JSON_PREFIX) else v
            for k, v in params.items()}


def _trial(params: dict[str, Any], base: dict[str, Any], prepared: Any, parent_run_id: str, tracking_uri: str,
           experiment_id: str) -> None:
    """One trial (a light Tune driver): an MLflow child run around a Ray Train fit that reports to Tune."""
    import mlflow
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from fabric.tabular.train import build_trainer, loop_config

    values = _decode(params)
    merged = base
    for key, value in values.items():
        merged = _with(merged, key, value)
    cfg = TabularConfig.from_dict(merged, source="trial")
    mlflow.set_tracking_uri(tracking_uri)
    trial_name = ray.tune.get_context().get_trial_name()
    with mlflow.start_run(experiment_id=experiment_id, run_name=trial_name,
                          tags={"mlflow.parentRunId": parent_run_id, "fabric.trial": trial_name}) as run:
        mlflow.log_params(values)
        trainer = build_trainer(cfg, prepared, loop_config(cfg, prepared, run.info.run_id),
                                name=f"{trial_name}-{run.info.run_id[:8]}", callbacks=[TuneReportCallback()])
        result = trainer.fit()
        if result.metrics:
            mlflow.log_metrics({f"final_{k}": float(v) for k, v in result.metrics.items()
                                if isinstance(v, (int, float))})


def tune(cfg: TuneTabularConfig, run_name: str = "tune_tabular") -> dict[str, Any]:
    """Runs the search in a parent MLflow run, then logs and registers the best trial's model."""
    import mlflow
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler

    from fabric import data
    from fabric.tabular.pipeline import data_tags
    from fabric.tabular.prepare import bootstrap_if_missing, prepare
    from fabric.tabular.train import finish, load_checkpoint
    from fabric.tracking import start_run

    store = data.open_store(cfg.runtime)
    bootstrap_if_missing(cfg.data, store)
    base = TabularConfig.from_dict(cfg.model_dump(exclude={"tune", "workload"})).model_dump(mode="json")
    max_t = cfg.model.num_boost_round if cfg.model.type == "xgboost" else cfg.train.epochs
    with start_run(cfg, run_name=run_name) as run:
        prepared = prepare(cfg, store)
        mlflow.set_tags(data_tags(prepared))
        search_alg = None
        if cfg.tune.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=cfg.data.seed)
        started = time.perf_counter()
        trainable = rt.with_parameters(
            _trial, base=base, prepared=prepared, parent_run_id=run.info.run_id,
            tracking_uri=mlflow.get_tracking_uri(), experiment_id=run.info.experiment_id,
        )
        tuner = rt.Tuner(
            # The trial driver only waits on its trainer: a token CPU share, the workers hold the real CPUs.
            rt.with_resources(trainable, {"cpu": DRIVER_CPU}),
            param_space=_param_space(cfg.tune),
            tune_config=rt.TuneConfig(
                metric=cfg.tune.metric, mode="min", num_samples=cfg.tune.num_samples,
                max_concurrent_trials=cfg.tune.max_concurrent_trials, search_alg=search_alg,
                scheduler=ASHAScheduler(max_t=max_t, grace_period=min(cfg.tune.grace_period, max_t),
                                        reduction_factor=cfg.tune.reduction_factor, time_attr="training_iteration"),
            ),
            run_config=rt.RunConfig(name=f"{run_name}-{run.info.run_id[:12]}", storage_path=str(_storage(cfg)),
                                    verbose=1),
        )
        grid = tuner.fit()
        elapsed = time.perf_counter() - started
        errors = [r for r in grid if r.error]
        best = grid.get_best_result(metric=cfg.tune.metric, mode="min", scope="last")
        if best is None or not best.metrics or "checkpoint_path" not in best.metrics:
            raise RuntimeError(f"no trial finished with a checkpoint ({len(errors)} of {len(grid)} trials failed)")
        params = _decode(best.config)
        stopped = sum(1 for r in grid if r.metrics and r.metrics.get("training_iteration", max_t) < max_t)
        mlflow.log_params({f"best.{k}": v for k, v in params.items()})
        mlflow.log_metrics({"best_val_loss": float(best.metrics[cfg.tune.metric]), "trials": len(grid),
                            "trials_stopped_early": stopped, "trials_failed": len(errors), "tune_seconds": elapsed})
        best_cfg = TabularConfig.from_dict(_merge_params(base, params), source="best trial")
        from ray.train import Checkpoint

        meta, model = load_checkpoint(best_cfg, prepared, Checkpoint(best.metrics["checkpoint_path"]))
        summary = finish(best_cfg, prepared, meta, model)
    summary.update(
        mlflow_run_id=run.info.run_id, trials=len(grid), trials_stopped_early=stopped, trials_failed=len(errors),
        best_params=params, best_val_loss=round(float(best.metrics[cfg.tune.metric]), 6),
        tune_seconds=round(elapsed, 2),
    )
    print(f"[tune_tabular] {len(grid)} trials in {elapsed:.1f} s ({stopped} stopped early by ASHA); best {params} "
          f"val_loss {summary['best_val_loss']:.4f}; MLflow run {run.info.run_id}", flush=True)
    return summary


def _merge_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    for key, value in params.items():
        base = _with(base, key, value)
    return base


def _storage(cfg: TabularConfig) -> str:
    from fabric.runtime import fabric_home

    return cfg.scaling.storage_path or str(fabric_home() / "ray")
