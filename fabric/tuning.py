"""Hyperparameter search shared by every tuning workload: a YAML search space keyed by dotted config paths,
Ray Tune with ASHA (weak trials stop early) and Optuna (TPE proposes the next trials), and the bookkeeping of a
finished search.

A workload's config embeds a :class:`SearchConfig` subclass under ``tune`` (naming the metric its trials report)
and hands each trial the base config with the sampled values set by :func:`with_value`. Lists and dicts (hidden
sizes, target modules) are valid choices: Optuna only samples scalars, so they travel as JSON text and
:func:`decode` restores them in the trial.

Example:
    >>> space = {"train.lr": {"loguniform": [1e-4, 3e-2]}, "lora.r": {"choice": [4, 8, 16]}}
    >>> grid = run_search(trainable, cfg.tune, max_t=3, name="tune-lora", storage="/tmp/ray", seed=0)
    >>> outcome = summarize(grid, cfg.tune.metric, max_t=3)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import field_validator

from fabric.config import ConfigError, FabricConfig, Field

__all__ = ["DRIVER_CPU", "SearchConfig", "SearchOutcome", "check_space", "decode", "merge_params", "param_space",
           "run_search", "summarize", "trial_run", "with_value"]

DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
JSON_PREFIX = "json:"
DRIVER_CPU = 0.05  # a trial's driver only waits on its trainer; Ray refuses an empty resource request


class SearchConfig(FabricConfig):
    """The search: how many trials, which parameters over which ranges, how weak trials stop.

    Subclasses set ``metric`` (what the trials report, minimised) and may change the default ``space``.
    """

    metric: str = Field(..., description="Reported metric to minimise.")
    num_samples: int = Field(6, ge=1, description="Trials to run.")
    max_concurrent_trials: int = Field(2, ge=1, description="Trials running at once (each needs its workers' CPUs).")
    search: Literal["optuna", "random"] = Field("optuna", description="optuna (TPE) or random search.")
    grace_period: int = Field(1, ge=1, description="ASHA: reports (epochs, rounds, evaluations) every trial gets "
                              "before it can stop.")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA: keep 1/reduction_factor of trials per rung.")
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=lambda: {"train.lr": {"loguniform": [1e-4, 3e-2]}},
        description="Dotted config key -> {distribution: arguments}: uniform [lo, hi], loguniform [lo, hi], "
        "randint [lo, hi), choice [options...].",
    )

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
        if not space:
            raise ValueError("give at least one parameter to search")
        for key, spec in space.items():
            if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
                raise ValueError(f"{key}: give exactly one of {', '.join(DISTRIBUTIONS)}, got {list(spec)}")
            kind, args = next(iter(spec.items()))
            if kind != "choice" and len(args) != 2:
                raise ValueError(f"{key}: {kind} takes [low, high], got {args}")
            if kind == "choice" and not args:
                raise ValueError(f"{key}: choice needs at least one option")
        return space


def check_space(config_cls: type[FabricConfig], base: dict[str, Any], space: dict[str, dict[str, list[Any]]]) -> None:
    """Raises ``ValueError`` naming the key when a space's key or first value does not make a valid trial config."""
    for key, spec in space.items():
        sample = next(iter(spec.values()))[0]
        try:
            config_cls.from_dict(with_value(base, key, sample), source=f"tune.space.{key}")
        except ConfigError as exc:
            raise ValueError(f"tune.space.{key}: {exc}") from None


def with_value(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with ``dotted`` set to ``value``."""
    out = copy.deepcopy(base)
    node = out
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def merge_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``base`` with every dotted key of ``params`` set."""
    for key, value in params.items():
        base = with_value(base, key, value)
    return base


def param_space(cfg: SearchConfig) -> dict[str, Any]:
    """Ray Tune's search space for ``cfg.space``."""
    from ray import tune as rt

    make = {"uniform": rt.uniform, "loguniform": rt.loguniform, "randint": rt.randint}
    space = {}
    for key, spec in cfg.space.items():
        kind, args = next(iter(spec.items()))
        space[key] = rt.choice([_encode(a) for a in args]) if kind == "choice" else make[kind](*args)
    return space


def _encode(value: Any) -> Any:
    return JSON_PREFIX + json.dumps(value) if isinstance(value, (list, dict)) else value


def decode(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled parameters with JSON-encoded choices restored to lists and dicts."""
    return {k: json.loads(v[len(JSON_PREFIX):]) if isinstance(v, str) and v.startswith(JSON_PREFIX) else v
            for k, v in params.items()}


def run_search(trainable: Any, cfg: SearchConfig, max_t: int, name: str, storage: str, seed: int) -> Any:
    """Runs ``trainable`` (a Tune function, parameters already bound) over ``cfg`` and returns the ResultGrid."""
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler

    search_alg = None
    if cfg.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=seed)
    tuner = rt.Tuner(
        rt.with_resources(trainable, {"cpu": DRIVER_CPU}),  # the trainer's workers hold the real CPUs
        param_space=param_space(cfg),
        tune_config=rt.TuneConfig(
            metric=cfg.metric, mode="min", num_samples=cfg.num_samples,
            max_concurrent_trials=cfg.max_concurrent_trials, search_alg=search_alg,
            scheduler=ASHAScheduler(max_t=max_t, grace_period=min(cfg.grace_period, max_t),
                                    reduction_factor=cfg.reduction_factor, time_attr="training_iteration"),
        ),
        run_config=rt.RunConfig(name=name, storage_path=storage, verbose=1),
    )
    return tuner.fit()


@contextmanager
def trial_run(values: dict[str, Any], parent_run_id: str, tracking_uri: str,
              experiment_id: str) -> Iterator[tuple[Any, str]]:
    """Inside a trial: an MLflow child run of the tuning run, named after the trial, with the sampled values as
    parameters. Yields the run and a name for the trial's Ray Train run."""
    import mlflow
    import ray.tune

    mlflow.set_tracking_uri(tracking_uri)
    trial_name = ray.tune.get_context().get_trial_name()
    with mlflow.start_run(experiment_id=experiment_id, run_name=trial_name,
                          tags={"mlflow.parentRunId": parent_run_id, "fabric.trial": trial_name}) as run:
        mlflow.log_params(values)
        yield run, f"{trial_name}-{run.info.run_id[:8]}"


@dataclass
class SearchOutcome:
    """What a finished search found: the best trial's result and parameters, and how the trials ended."""

    best: Any
    params: dict[str, Any]
    best_value: float
    trials: int
    stopped_early: int
    failed: int

    def metrics(self, metric: str) -> dict[str, float]:
        return {f"best_{metric}": self.best_value, "trials": self.trials, "trials_stopped_early": self.stopped_early,
                "trials_failed": self.failed}


def summarize(grid: Any, metric: str, max_t: int) -> SearchOutcome:
    """The best trial by its last ``metric`` report; raises when no trial finished with a checkpoint."""
    errors = [r for r in grid if r.error]
    best = grid.get_best_result(metric=metric, mode="min", scope="last")
    if best is None or not best.metrics or "checkpoint_path" not in best.metrics:
        raise RuntimeError(f"no trial finished with a checkpoint ({len(errors)} of {len(grid)} trials failed)")
    stopped = sum(1 for r in grid if r.metrics and r.metrics.get("training_iteration", max_t) < max_t)
    return SearchOutcome(best=best, params=decode(best.config), best_value=float(best.metrics[metric]),
                         trials=len(grid), stopped_early=stopped, failed=len(errors))
