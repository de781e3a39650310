"""Ray Train for tabular models: the per-worker loops, the trainers, and what happens to the result.

* PyTorch (``mlp``, ``linear``): ``TorchTrainer``; each worker streams its shard with ``get_dataset_shard``,
  reports train and validation loss once per epoch with a checkpoint (weights + optimiser state), and after a
  failure the restarted workers resume from the last checkpoint (``FailureConfig``).
* XGBoost: ``XGBoostTrainer`` (distributed trees over the same shards), a checkpoint per boosting round.

Rank 0 logs each epoch's metrics to the MLflow run live. :func:`finish` then evaluates the final model on the
held-out rows, checks its outputs are finite, logs it as a pyfunc (signature, input example), loads it back and
checks it predicts exactly what the trained model does, exports ONNX and checks onnxruntime agrees, and
registers it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fabric.tabular.config import TabularConfig
from fabric.tabular.models import model_kind
from fabric.tabular.prepare import Prepared
from fabric.training import checkpoint_storage

__all__ = ["ParityError", "build_trainer", "finish", "load_checkpoint", "loop_config", "torch_loop", "version_tags",
           "xgboost_loop"]

STATE = "train_state.pt"
# Ray Data hands each worker windows of up to this many batches (and at most WINDOW_BYTES of features), which the
# worker shuffles and slices: Ray Data's per-batch overhead is paid once per window (bench/train_overhead.py).
SHUFFLE_WINDOW = 512
WINDOW_BYTES = 64 * 1024**2


class ParityError(AssertionError):
    """A reloaded or exported model does not predict what the trained model does."""


def loop_config(cfg: TabularConfig, prepared: Prepared, mlflow_run_id: str | None) -> dict[str, Any]:
    """Everything a worker needs, as plain data (it travels to every worker)."""
    import mlflow

    storage = checkpoint_storage(cfg.scaling)
    return {
        "meta": prepared.meta(cfg),
        "train": cfg.train.model_dump(),
        "model": cfg.model.model_dump(),
        "seed": cfg.data.seed,
        "mlflow_tracking_uri": mlflow.get_tracking_uri() if mlflow_run_id else None,
        "mlflow_run_id": mlflow_run_id,
        "fault_marker": str(Path(storage) / f".fault-injected-{mlflow_run_id or 'run'}"),
    }


def build_trainer(cfg: TabularConfig, prepared: Prepared, config: dict[str, Any], name: str,
                  callbacks: list[Any] | None = None) -> Any:
    """An unstarted Torch or XGBoost trainer over the prepared shards, checkpointing and fault tolerant."""
    from ray.train import DataConfig

    from fabric.training import ray_scaling, run_config

    kwargs = dict(
        train_loop_config=config,
        scaling_config=ray_scaling(cfg.scaling),
        run_config=run_config(cfg.scaling, name, num_to_keep=2, callbacks=callbacks),
        datasets={"train": prepared.train, "valid": prepared.valid},
        dataset_config=DataConfig(datasets_to_split=["train"]),  # every worker validates on all validation rows
    )
    return model_kind(cfg.model.type).trainer(**kwargs)


def _mlflow_logger(config: dict[str, Any]) -> Any:
    """A function logging a dict of metrics at a step to the run, on rank 0 only (a no-op elsewhere)."""
    import ray.train

    if not config["mlflow_run_id"] or ray.train.get_context().get_world_rank() != 0:
        return lambda metrics, step: None
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(config["mlflow_tracking_uri"])

    def log(metrics: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        client.log_batch(config["mlflow_run_id"], metrics=[
            Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))
        ])

    return log


def _maybe_die(config: dict[str, Any], epoch: int) -> None:
    """Fault-injection drill: the rank-0 process exits once, at the configured epoch."""
    import ray.train

    marker = Path(config["fault_marker"])
    if (config["train"].get("fail_at_epoch") == epoch and ray.train.get_context().get_world_rank() == 0
            and not marker.exists()):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"killed at epoch {epoch}\n")
        # Ray Train collects reports when it polls the workers (every 2 s by default): let it collect the last
        # epoch's checkpoint first, as it would have in any run that had been going for a while.
        time.sleep(2.5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0)))
        print(f"[train] fault drill: worker process {os.getpid()} dies now, in epoch {epoch}", flush=True)
        os._exit(1)


def torch_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: resume from the last checkpoint if any, then an epoch per report and checkpoint."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    from fabric.tabular.models import build_torch_model, save_model_dir

    meta, hp = config["meta"], config["train"]
    torch.manual_seed(config["seed"])
    model = build_torch_model(meta)
    optimizer = (torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
                 if hp["optimizer"] == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=0.9, weight_decay=hp["weight_decay"]))
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            model.load_state_dict(torch.load(Path(folder) / "model.pt", weights_only=True))
            state = torch.load(Path(folder) / STATE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"] + 1
        print(f"[train] resumed from the checkpoint of epoch {state['epoch']}", flush=True)
    model = prepare_model(model)
    device = get_device()
    classify = meta["task"] == "classification"
    loss_fn = torch.nn.functional.cross_entropy if classify else (
        lambda out, y: torch.nn.functional.mse_loss(out[:, 0], y))
    log = _mlflow_logger(config)
    rank = ray.train.get_context().get_world_rank()
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")

    world = ray.train.get_context().get_world_size()
    window_rows = max(hp["batch_size"], min(hp["batch_size"] * SHUFFLE_WINDOW,
                                            WINDOW_BYTES // (4 * len(meta["features"]))))
    for epoch in range(start, hp["epochs"]):
        model.train()
        total, rows = 0.0, 0
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(config["seed"] * 1000 + epoch * 10 + rank)
        # Ray Data hands over windows of many batches; they are shuffled and cut into batches here, on the device:
        # a local shuffle (like ``local_shuffle_buffer_size``) without Ray Data's per-batch overhead.
        for w, window in enumerate(train_shard.iter_torch_batches(
                batch_size=window_rows, prefetch_batches=2, device=device)):
            x, y = window["features"], window["label"]
            order = torch.randperm(len(y), generator=generator).to(y.device)
            for i in range(0, len(y), hp["batch_size"]):
                if w == 0 and i == 2 * hp["batch_size"]:
                    _maybe_die(config, epoch)
                idx = order[i:i + hp["batch_size"]]
                loss = loss_fn(model(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, rows = total + loss.detach() * len(idx), rows + len(idx)
        # Throughput of the training steps alone (shards are equal, so the world processed rows * world).
        samples_per_s = rows * world / (time.perf_counter() - started)
        metrics = {"epoch": epoch, "train_loss": float(total) / max(rows, 1),
                   **_validate(model, valid_shard, meta, device), "samples_per_s": samples_per_s}
        print(f"[train] epoch {epoch + 1}/{hp['epochs']} rank {rank}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("epoch", "samples_per_s"))
            + f", {samples_per_s:,.0f} samples/s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_model_dir(tmp, meta, model)
                torch.save({"epoch": epoch, "optimizer": optimizer.state_dict()}, Path(tmp) / STATE)
                checkpoint = Checkpoint.from_directory(tmp)
                log(metrics, epoch)
            ray.train.report(metrics, checkpoint=checkpoint)


def _validate(model: Any, shard: Any, meta: dict[str, Any], device: Any) -> dict[str, float]:
    """Loss (and accuracy or RMSE) of ``model`` on the validation rows."""
    import torch

    model.eval()
    loss_sum, correct, rows = 0.0, 0, 0
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=1024, device=device):
            out, y = model(batch["features"]), batch["label"]
            if meta["task"] == "classification":
                loss_sum += torch.nn.functional.cross_entropy(out, y, reduction="sum").item()
                correct += int((out.argmax(dim=1) == y).sum())
            else:
                loss_sum += torch.nn.functional.mse_loss(out[:, 0], y, reduction="sum").item()
            rows += len(y)
    loss = loss_sum / max(rows, 1)
    if meta["task"] == "classification":
        return {"val_loss": loss, "val_accuracy": correct / max(rows, 1)}
    return {"val_loss": loss, "val_rmse": loss**0.5}


def xgboost_loop(config: dict[str, Any]) -> None:
    """One XGBoost worker: boosts over its shard (the trainer wires up the collective), a checkpoint per round."""
    import numpy as np
    import ray.train
    import xgboost
    from ray.train.xgboost import RayTrainReportCallback

    meta, hp = config["meta"], config["model"]

    def matrix(shard: Any) -> Any:
        parts = list(shard.iter_batches(batch_size=None, batch_format="numpy"))
        x = np.concatenate([p["features"] for p in parts]) if parts else np.zeros((0, len(meta["features"])))
        y = np.concatenate([p["label"] for p in parts]) if parts else np.zeros(0)
        return xgboost.DMatrix(x, label=y, feature_names=meta["features"])

    dtrain = matrix(ray.train.get_dataset_shard("train"))
    dvalid = matrix(ray.train.get_dataset_shard("valid"))
    if meta["task"] == "regression":
        params, metric = {"objective": "reg:squarederror", "eval_metric": ["rmse"]}, "rmse"
    elif meta["n_outputs"] == 2:
        params, metric = {"objective": "binary:logistic", "eval_metric": ["logloss", "error"]}, "logloss"
    else:
        params = {"objective": "multi:softprob", "num_class": meta["n_outputs"], "eval_metric": ["mlogloss", "merror"]}
        metric = "mlogloss"
    params.update(max_depth=hp["max_depth"], eta=hp["eta"], seed=config["seed"], nthread=1, tree_method="hist")

    booster, done = None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        booster = RayTrainReportCallback.get_model(checkpoint)
        done = booster.num_boosted_rounds()
        print(f"[train] resumed from the checkpoint after round {done}", flush=True)
    log = _mlflow_logger(config)

    class Progress(xgboost.callback.TrainingCallback):
        def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
            step = done + epoch
            metrics = {"train_loss": evals_log["train"][metric][-1], "val_loss": evals_log["valid"][metric][-1]}
            log(metrics, step)
            if (step + 1) % 10 == 0 or step + 1 == hp["num_boost_round"]:
                print(f"[train] round {step + 1}/{hp['num_boost_round']}: train_loss {metrics['train_loss']:.4f}, "
                      f"val_loss {metrics['val_loss']:.4f}", flush=True)
            _maybe_die(config, step)
            return False

    xgboost.train(
        params, dtrain, num_boost_round=hp["num_boost_round"] - done, xgb_model=booster,
        evals=[(dtrain, "train"), (dvalid, "valid")], verbose_eval=False,
        callbacks=[Progress(), RayTrainReportCallback(
            metrics={"train_loss": f"train-{metric}", "val_loss": f"valid-{metric}"}, frequency=1)],
    )


def load_checkpoint(cfg: TabularConfig, prepared: Prepared, checkpoint: Any) -> tuple[dict[str, Any], Any]:
    """The ``(meta, model)`` of a trainer's checkpoint, on this machine's CPU."""
    return model_kind(cfg.model.type).from_checkpoint(prepared.meta(cfg), checkpoint)


def finish(cfg: TabularConfig, prepared: Prepared, meta: dict[str, Any], model: Any) -> dict[str, Any]:
    """Evaluates, logs, checks and registers the trained model in the active MLflow run; returns a summary."""
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from fabric import evaluation, registry
    from fabric.tabular.models import predict_frame, save_model_dir
    from fabric.tabular.pyfunc import TabularPyfunc
    from fabric.tracking import package_versions

    holdout = prepared.holdout
    x = holdout[prepared.features]
    output = predict_frame(meta, model, x)
    metrics = evaluation.score(meta["task"], holdout[cfg.data.label_column].to_numpy(), output)  # checks finiteness
    mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
    with tempfile.TemporaryDirectory() as tmp:
        holdout.to_parquet(Path(tmp) / "holdout.parquet", index=False)
        mlflow.log_artifact(str(Path(tmp) / "holdout.parquet"), "eval")
        folder = save_model_dir(Path(tmp) / "model_dir", meta, model)
        versions = package_versions(["torch", "xgboost", "mlflow", "pandas", "numpy", "scikit-learn"])
        info = mlflow.pyfunc.log_model(
            name="model", python_model=TabularPyfunc(), artifacts={"model_dir": str(folder)},
            signature=infer_signature(x, output), input_example=x.head(3),
            pip_requirements=["llmops-fabric"] + [f"{n}=={v}" for n, v in versions.items() if v],
        )
        # Training/serving parity: the logged model, loaded back, must answer exactly as the trained one.
        reloaded = mlflow.pyfunc.load_model(info.model_uri).predict(x)
        parity = float(np.abs(reloaded.to_numpy("float64") - output.to_numpy("float64")).max())
        mlflow.log_metric("pyfunc_parity_max_abs_diff", parity)
        if parity > 1e-6:
            raise ParityError(f"the logged pyfunc differs from the trained model by up to {parity:g}")
        onnx_diff = None
        if cfg.export_onnx and model_kind(meta["model_type"]).exports_onnx:
            onnx_diff = export_onnx(model, x.to_numpy("float32"), Path(tmp) / "model.onnx")
            mlflow.log_artifact(str(Path(tmp) / "model.onnx"), "onnx")
            mlflow.log_metric("onnx_parity_max_abs_diff", onnx_diff)
    summary: dict[str, Any] = {
        "data_uri": prepared.pinned,
        "data_commit": prepared.commit,
        "model_type": meta["model_type"],
        "test_metrics": {k: round(v, 6) for k, v in metrics.items()},
        "pyfunc_parity_max_abs_diff": parity,
        "onnx_parity_max_abs_diff": onnx_diff,
        "model_uri": info.model_uri,
    }
    tags = version_tags(cfg, prepared, meta, metrics)
    summary["version_tags"] = tags  # for a caller that registers the model itself (the continuous-training pipeline)
    if cfg.registry.model_name:
        version = registry.register(info.model_uri, cfg.registry.model_name, tags=tags, policy=cfg.registry.policy,
                                    reason=f"trained on {prepared.pinned}")
        summary.update(registered_model=cfg.registry.model_name, version=version)
        print(f"[registry] registered {cfg.registry.model_name} version {version}", flush=True)
        if cfg.registry.promote:
            try:
                outcome = registry.promote(cfg.registry.model_name, version, reason="promotion gate after training")
                summary["promotion"] = outcome.get("status", "promoted")
            except registry.PromotionRefused as exc:
                summary["promotion"] = "refused"
                summary["promotion_message"] = str(exc)
            print(f"[registry] promotion of version {version}: {summary['promotion']}"
                  + (f" ({summary['promotion_message']})" if "promotion_message" in summary else ""), flush=True)
    return summary


def version_tags(cfg: TabularConfig, prepared: Prepared, meta: dict[str, Any],
                 metrics: dict[str, float]) -> dict[str, str]:
    """The tags a registered version of this model carries: task, label, the exact data commit, held-out metrics.

    The registry's promotion gate and the monitors read them (``fabric.data.commit`` is the monitors' reference).
    """
    return {
        "fabric.task": meta["task"],
        "fabric.label_column": cfg.data.label_column,
        "fabric.data.uri": prepared.pinned,
        "fabric.data.commit": prepared.commit,
        "fabric.model_type": meta["model_type"],
        **{f"fabric.metric.{k}": repr(v) for k, v in metrics.items()},
    }


def export_onnx(model: Any, sample: Any, path: Path) -> float:
    """Exports a torch model to ONNX (dynamic batch size) and returns onnxruntime's max deviation on ``sample``."""
    import numpy as np
    import onnxruntime
    import torch

    model = getattr(model, "module", model).eval().cpu()
    example = torch.from_numpy(sample[:2])
    torch.onnx.export(model, (example,), str(path), input_names=["features"], output_names=["output"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"features": sample})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(sample)).numpy()
    diff = float(np.abs(got - expected).max())
    if diff > 1e-4:
        raise ParityError(f"onnxruntime differs from the trained PyTorch model by up to {diff:g}")
    return diff
