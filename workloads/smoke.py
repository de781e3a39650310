r"""Smoke workload: Ray Data + Ray Train on a scikit-learn dataset, logged to MLflow.

Runs the same code three ways:

    python -m workloads.smoke --config configs/smoke.yaml train.epochs=2
    fabric run smoke --config configs/smoke.yaml train.epochs=2
    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.smoke --config configs/smoke.yaml train.epochs=2

Steps: load the dataset into Ray Data, split it (seeded), standardise it with statistics of the training split,
train a softmax classifier with ``TorchTrainer`` (a checkpoint per epoch), score the held-out split, and log the
config, per-epoch metrics, test accuracy and the final checkpoint to MLflow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from fabric.config import FabricConfig, Field
from fabric.runtime import fabric_home
from fabric.workload import WorkloadConfig, run_module


class DataConfig(FabricConfig):
    dataset: Literal["breast_cancer", "wine", "iris", "digits"] = Field(
        "breast_cancer", description="scikit-learn bundled dataset to train on when `uri` is empty."
    )
    uri: str | None = Field(
        None, description="Versioned dataset to train on instead (lakefs://REPO/REF/PATH); its commit id is recorded."
    )
    label_column: str = Field("label", description="Column holding the class (0..k-1) in the versioned dataset.")
    validation_schema: str | None = Field(
        None, description="YAML schema the versioned dataset must pass before training starts."
    )
    test_fraction: float = Field(0.25, gt=0, lt=1, description="Share of rows held out for evaluation.")
    seed: int = Field(0, description="Seed of the split, the weight initialisation and the shuffling.")


class TrainConfig(FabricConfig):
    epochs: int = Field(3, ge=1, description="Passes over the training split; one checkpoint each.")
    batch_size: int = Field(64, ge=1, description="Rows per gradient step on each worker.")
    lr: float = Field(0.05, gt=0, description="SGD learning rate.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel).")
    use_gpu: bool = Field(False, description="Give each worker a GPU.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved for each Ray Train worker.")
    storage_path: str | None = Field(
        None, description="Where Ray Train keeps checkpoints (shared storage on a cluster). Empty: FABRIC_HOME/ray."
    )


class Config(WorkloadConfig):
    data: DataConfig = Field(default_factory=DataConfig, description="Which data, and how it is split.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="How the model is trained.")


def main(cfg: Config) -> dict[str, Any]:
    import mlflow

    from fabric import data
    from fabric.tracking import start_run

    store = data.open_store(cfg.runtime)
    source = data.pin(cfg.data.uri, store=store) if cfg.data.uri else None
    tags = {"fabric.data.uri": source, "fabric.data.commit": data.DataURI.parse(source).ref} if source else {}
    with start_run(cfg, run_name="smoke", tags=tags) as run:
        dataset = read_source(cfg, source, store)
        train_ds, test_ds, n_features, n_classes = split_and_scale(dataset, cfg.data)
        print(f"[smoke] {source or cfg.data.dataset}: {train_ds.count()} train rows, {test_ds.count()} test rows",
              flush=True)
        result = build_trainer(cfg, train_ds, n_features, n_classes).fit()
        for step, row in enumerate(result.metrics_dataframe.to_dict("records")):
            mlflow.log_metric("train_loss", row["loss"], step=step)
        accuracy = evaluate(result.checkpoint, test_ds, n_features, n_classes)
        mlflow.log_metric("test_accuracy", accuracy)
        mlflow.log_artifacts(result.checkpoint.path, "checkpoint")
    summary = {
        "dataset": source or cfg.data.dataset,
        "train_rows": train_ds.count(),
        "test_rows": test_ds.count(),
        "epochs": cfg.train.epochs,
        "final_train_loss": round(float(result.metrics["loss"]), 6),
        "test_accuracy": round(accuracy, 6),
        "mlflow_run_id": run.info.run_id,
    }
    print(f"[smoke] done: test accuracy {accuracy:.4f} after {cfg.train.epochs} epochs; MLflow run "
          f"{run.info.run_id}", flush=True)
    return summary


def read_source(cfg: Config, source: str | None, store: Any) -> Any:
    """The training table as a Ray Dataset: the pinned versioned dataset (validated first) or a scikit-learn set."""
    import pandas as pd
    import ray.data
    from sklearn import datasets

    from fabric import data

    if source:
        dataset = data.read(source, store=store)
        if cfg.data.validation_schema:
            report = data.validate(dataset, cfg.data.validation_schema, source=source, raise_on_error=False)
            report.log_to_mlflow()
            if not report.ok:
                raise data.DataValidationError(report)
        if cfg.data.label_column != "label":
            dataset = dataset.rename_columns({cfg.data.label_column: "label"})
        return dataset
    bunch = getattr(datasets, f"load_{cfg.data.dataset}")()
    frame = pd.DataFrame(bunch.data.astype("float32"), columns=[f"x{i}" for i in range(bunch.data.shape[1])])
    frame["label"] = bunch.target.astype("int64")
    return ray.data.from_pandas(frame)


def split_and_scale(dataset: Any, cfg: DataConfig) -> tuple[Any, Any, int, int]:
    """Two standardised Ray Datasets with ``features`` (float32 vector) and ``label`` columns."""
    import numpy as np
    import pandas as pd

    train, test = dataset.train_test_split(test_size=cfg.test_fraction, shuffle=True, seed=cfg.seed)
    columns = [c for c in dataset.schema().names if c != "label"]
    stats = train.to_pandas()[columns].agg(["mean", "std"])
    mean, std = stats.loc["mean"].to_numpy("float32"), stats.loc["std"].replace(0, 1).to_numpy("float32")

    def to_features(batch: pd.DataFrame) -> dict[str, np.ndarray]:
        values = (batch[columns].to_numpy("float32") - mean) / std
        return {"features": values, "label": batch["label"].to_numpy("int64")}

    # Materialised before training starts: the Train workers then hold every CPU without starving Ray Data.
    return (
        train.map_batches(to_features, batch_format="pandas").materialize(),
        test.map_batches(to_features, batch_format="pandas").materialize(),
        len(columns),
        int(max(train.max("label"), test.max("label"))) + 1,
    )


def build_trainer(cfg: Config, train_ds: Any, n_features: int, n_classes: int) -> Any:
    """An unstarted ``TorchTrainer`` over the training split."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage = cfg.train.storage_path or str(fabric_home() / "ray")
    return TorchTrainer(
        train_loop,
        train_loop_config={**cfg.train.model_dump(), "seed": cfg.data.seed, "n_features": n_features,
                           "n_classes": n_classes},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(storage_path=storage, checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": train_ds},
    )


def train_loop(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker: SGD over this worker's shard, one report and checkpoint per epoch."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import prepare_model

    torch.manual_seed(config["seed"])
    model = prepare_model(torch.nn.Linear(config["n_features"], config["n_classes"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(config["epochs"]):
        total, rows = 0.0, 0
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"]):
            loss = torch.nn.functional.cross_entropy(model(batch["features"]), batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, rows = total + loss.item() * len(batch["label"]), rows + len(batch["label"])
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                state = getattr(model, "module", model).state_dict()
                torch.save(state, Path(tmp) / "model.pt")
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report({"epoch": epoch, "loss": total / max(rows, 1)}, checkpoint=checkpoint)


def evaluate(checkpoint: Any, test_ds: Any, n_features: int, n_classes: int) -> float:
    """Accuracy of the checkpointed model on the held-out split."""
    import numpy as np
    import torch

    model = torch.nn.Linear(n_features, n_classes)
    with checkpoint.as_directory() as folder:
        model.load_state_dict(torch.load(Path(folder) / "model.pt"))
    test = test_ds.to_pandas()
    features = torch.from_numpy(np.stack(test["features"].to_numpy()).astype("float32"))
    with torch.no_grad():
        predicted = model(features).argmax(dim=1).numpy()
    return float((predicted == test["label"].to_numpy()).mean())


if __name__ == "__main__":
    run_module(__name__)
