"""Ray Tune over LoRA fine-tuning: ASHA stops trials whose held-out loss lags at an evaluation, Optuna proposes
the next LoRA rank, alpha, learning rate and target modules.

Each trial is the same Ray Train fine-tune as ``finetune_lora`` (a ``TorchTrainer`` started from a light Tune
driver function) in an MLflow child run of the tuning run, with its sampled parameters, its live loss curve and
its held-out loss at every ``train.eval_steps``. The best trial's adapter (its last checkpoint) is then logged
and registered exactly as a single fine-tune's adapter is.

Example:
    >>> cfg = TuneLoraConfig.from_yaml("configs/llm/smollm2_lora_tune_cpu.yaml")
    >>> tune_lora(cfg)   # fabric run tune_lora --config configs/llm/smollm2_lora_tune_cpu.yaml
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import model_validator

from fabric.config import Field
from fabric.tuning import SearchConfig, check_space, decode, merge_params, run_search, summarize, trial_run
from llm.finetune_config import FinetuneConfig

__all__ = ["LoraSearchConfig", "TuneLoraConfig", "tune_lora"]


def _default_space() -> dict[str, dict[str, list[Any]]]:
    return {
        "lora.r": {"choice": [4, 8, 16]},
        "lora.alpha": {"choice": [8, 16, 32]},
        "train.lr": {"loguniform": [2e-4, 5e-3]},
        "lora.target_modules": {"choice": [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]]},
    }


class LoraSearchConfig(SearchConfig):
    """The search over fine-tuning; ASHA's unit is one held-out evaluation (every ``train.eval_steps`` steps)."""

    metric: Literal["eval_loss"] = Field("eval_loss", description="Reported metric to minimise: held-out loss.")
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=_default_space,
        description="Dotted config key -> {distribution: arguments}: uniform [lo, hi], loguniform [lo, hi], "
        "randint [lo, hi), choice [options...]. Default: LoRA rank, alpha, learning rate and target modules.",
    )


class TuneLoraConfig(FinetuneConfig):
    """A tuning run: the fine-tuning config every trial starts from, plus the search."""

    tune: LoraSearchConfig = Field(default_factory=LoraSearchConfig, description="The hyperparameter search.")

    @model_validator(mode="after")
    def _space_keys_exist(self) -> TuneLoraConfig:
        check_space(FinetuneConfig, self.model_dump(exclude={"tune", "workload"}), self.tune.space)
        return self


def _trial(params: dict[str, Any], base: dict[str, Any], train_rows: list, holdout_rows: list, parent_run_id: str,
           tracking_uri: str, experiment_id: str) -> None:
    """One trial (a light Tune driver): an MLflow child run around a Ray Train fine-tune that reports to Tune."""
    import mlflow
    from ray.tune.integration.ray_train import TuneReportCallback

    from llm.finetune import build_trainer, loop_config

    values = decode(params)
    cfg = FinetuneConfig.from_dict(merge_params(base, values), source="trial")
    with trial_run(values, parent_run_id, tracking_uri, experiment_id) as (run, name):
        trainer = build_trainer(cfg, loop_config(cfg, train_rows, holdout_rows, run.info.run_id), name=name,
                                callbacks=[TuneReportCallback()])
        result = trainer.fit()
        if result.metrics and "eval_loss" in result.metrics:
            mlflow.log_metrics({"before_eval_loss": float(result.metrics["before_eval_loss"]),
                                "final_eval_loss": float(result.metrics["eval_loss"])})


def tune_lora(cfg: TuneLoraConfig, run_name: str = "tune_lora") -> dict[str, Any]:
    """Runs the search in a parent MLflow run, then logs and registers the best trial's adapter."""
    import mlflow
    from ray import tune as rt
    from ray.train import Checkpoint

    from fabric.tracking import start_run
    from fabric.training import checkpoint_storage
    from llm.finetune import final_metrics, log_checkpoint, pin_chats, prepare_base

    store = prepare_base(cfg)
    base = FinetuneConfig.from_dict(cfg.model_dump(exclude={"tune", "workload"})).model_dump(mode="json")
    max_t = cfg.train.max_steps // (cfg.train.eval_steps or cfg.train.max_steps)
    with start_run(cfg, run_name=run_name, tags={"fabric.base_model": cfg.model.source}) as run:
        pinned, train_rows, holdout_rows = pin_chats(cfg, store)
        started = time.perf_counter()
        trainable = rt.with_parameters(
            _trial, base=base, train_rows=train_rows, holdout_rows=holdout_rows, parent_run_id=run.info.run_id,
            tracking_uri=mlflow.get_tracking_uri(), experiment_id=run.info.experiment_id,
        )
        grid = run_search(trainable, cfg.tune, max_t, name=f"{run_name}-{run.info.run_id[:12]}",
                          storage=checkpoint_storage(cfg.scaling), seed=cfg.data.seed)
        elapsed = time.perf_counter() - started
        outcome = summarize(grid, cfg.tune.metric, max_t)
        mlflow.log_params({f"best.{k}": v for k, v in outcome.params.items()})
        metrics = final_metrics(outcome.best.metrics)
        mlflow.log_metrics({**outcome.metrics(cfg.tune.metric), **metrics, "tune_seconds": elapsed})
        best_cfg = FinetuneConfig.from_dict(merge_params(base, outcome.params), source="best trial")
        summary = log_checkpoint(best_cfg, Checkpoint(outcome.best.metrics["checkpoint_path"]), pinned, metrics)
    summary.update(
        mlflow_run_id=run.info.run_id, trials=outcome.trials, trials_stopped_early=outcome.stopped_early,
        trials_failed=outcome.failed, best_params=outcome.params, best_eval_loss=round(outcome.best_value, 6),
        tune_seconds=round(elapsed, 2),
    )
    print(f"[tune_lora] {outcome.trials} trials in {elapsed:.1f} s ({outcome.stopped_early} stopped early by ASHA); "
          f"best {outcome.params}: held-out loss {metrics['before_eval_loss']:.4f} -> {metrics['eval_loss']:.4f}; "
          f"MLflow run {run.info.run_id}", flush=True)
    return summary
