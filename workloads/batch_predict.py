"""Batch inference: score a versioned dataset with a registered model on a Ray Data actor pool, and commit the
predictions to a branch.

    fabric run batch_predict --config configs/tabular/batch_predict.yaml
    fabric submit batch_predict --config configs/tabular/batch_predict.yaml actors=8 model.num_gpus=1

Steps: pin ``data.uri`` to its commit, resolve the model alias to a version, ``map_batches`` a predictor class
over the dataset on ``actors`` actors (each loads the MLflow pyfunc once), then write the input columns plus the
model's output columns as one commit on ``output.uri``'s branch (created from ``output.from_ref`` if new), with
the model version and input commit in the commit's metadata and in the MLflow run.
"""

from __future__ import annotations

from typing import Any

from pydantic import field_validator

from fabric.config import FabricConfig, Field
from fabric.workload import WorkloadConfig, run_module


class DataConfig(FabricConfig):
    uri: str = Field(..., description="Dataset to score (lakefs://REPO/REF/PATH); pinned to its commit id.")
    drop_columns: list[str] = Field(default_factory=list, description="Input columns not sent to the model "
                                    "(e.g. the label); they are still written beside the predictions.")


class ModelConfig(FabricConfig):
    name: str = Field(..., min_length=1, description="Registered model name.")
    alias: str = Field("champion", description="Alias to score with (ignored when version is set).")
    version: str | None = Field(None, description="A fixed version instead of the alias.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per predictor actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per predictor actor.")


class OutputConfig(FabricConfig):
    uri: str = Field(..., description="Where predictions go: lakefs://REPO/BRANCH/PATH (one new commit).")
    from_ref: str = Field("main", description="Ref a new output branch starts from.")
    message: str = Field("Batch predictions", min_length=1, description="Commit message.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        from fabric.data import DataURI

        DataURI.parse(value)
        return value


class Config(WorkloadConfig):
    data: DataConfig = Field(..., description="What to score.")
    model: ModelConfig = Field(..., description="Which registered model scores it.")
    output: OutputConfig = Field(..., description="Where the predictions are committed.")
    actors: int = Field(2, ge=1, description="Predictor actors (each holds one copy of the model).")
    batch_size: int = Field(1024, ge=1, description="Rows per model call.")


class Predictor:
    """One actor: loads the pyfunc once, then appends its output columns to each batch. Any MLflow model: a
    fabric model's pyfunc answers with its fast path; another's input is checked against its signature by MLflow."""

    def __init__(self, model_uri: str, tracking_uri: str, drop: list[str]):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        self.model = mlflow.pyfunc.load_model(model_uri)
        self.drop = drop

    def __call__(self, batch: Any) -> Any:
        import pandas as pd

        from fabric.serve.pyfunc_io import columns_of

        features = batch.drop(columns=[c for c in self.drop if c in batch.columns])
        columns = {}  # any pyfunc's output (frame, series, array, dict) as columns; an array is "prediction"
        for name, values in columns_of(self.model.predict(features)).items():
            name = "prediction" if name == "predictions" else name
            if values.ndim == 2:  # e.g. class probabilities: one column each
                columns.update({f"{name}_{k}": values[:, k] for k in range(values.shape[1])})
            else:
                columns[name] = list(values) if values.ndim > 2 else values
        output = pd.DataFrame(columns, index=batch.index)
        clashes = [c for c in output.columns if c in batch.columns]
        return pd.concat([batch, output.rename(columns={c: f"predicted_{c}" for c in clashes})], axis=1)


def main(cfg: Config) -> dict[str, Any]:
    import mlflow
    import ray.data
    from mlflow import MlflowClient

    from fabric import data
    from fabric.tracking import start_run

    store = data.open_store(cfg.runtime)
    pinned = data.pin(cfg.data.uri, store=store)
    commit = data.DataURI.parse(pinned).ref
    version = cfg.model.version or str(
        MlflowClient().get_model_version_by_alias(cfg.model.name, cfg.model.alias).version)
    target = data.DataURI.parse(cfg.output.uri)
    try:
        data.resolve(f"lakefs://{target.repo}/{target.ref}", store=store)
    except data.NotFoundError:
        data.branch(target.repo, target.ref, source=cfg.output.from_ref, store=store)
    tags = {"fabric.data.uri": pinned, "fabric.data.commit": commit, "fabric.model.name": cfg.model.name,
            "fabric.model.version": version}
    with start_run(cfg, run_name="batch_predict", tags=tags) as run:
        scored = data.read(pinned, store=store).map_batches(
            Predictor,
            fn_constructor_kwargs={"model_uri": f"models:/{cfg.model.name}/{version}",
                                   "tracking_uri": mlflow.get_tracking_uri(), "drop": cfg.data.drop_columns},
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            batch_size=cfg.batch_size, batch_format="pandas",
            num_cpus=cfg.model.num_cpus, num_gpus=cfg.model.num_gpus or None,
        )
        out_commit = data.write(cfg.output.uri, scored, cfg.output.message, store=store, metadata={
            "model": cfg.model.name, "model_version": version, "input": pinned})
        mlflow.set_tags({"fabric.output.uri": cfg.output.uri, "fabric.output.commit": out_commit})
    output_uri = f"lakefs://{target.repo}/{out_commit}/{target.path}"
    first = data.head(output_uri, n=1, store=store)
    summary = {"input": pinned, "model": cfg.model.name, "version": version, "output_commit": out_commit,
               "output_uri": output_uri, "columns": list(first.columns), "mlflow_run_id": run.info.run_id}
    print(f"[batch_predict] {pinned} scored by {cfg.model.name} v{version}; predictions committed to "
          f"{cfg.output.uri} as {out_commit}", flush=True)
    return summary


if __name__ == "__main__":
    run_module(__name__)
