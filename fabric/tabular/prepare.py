"""From a versioned table to training-ready Ray Datasets: pin, validate, split, standardise.

The URI is pinned to the commit it points at first, so everything after reads the same rows even if the branch
moves meanwhile, and the run records that commit. Splits are seeded; standardisation uses statistics of the
training split only (computed with Ray Data aggregations), and travels inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fabric.tabular.config import DataConfig, TabularConfig

__all__ = ["Prepared", "bootstrap_if_missing", "prepare"]


@dataclass
class Prepared:
    """The pinned source and its three splits."""

    uri: str  #: the URI as configured
    pinned: str  #: the URI at the commit id it resolved to
    commit: str
    features: list[str]
    task: str
    n_outputs: int  #: classes of a classifier, 1 for a regressor
    mean: list[float]
    std: list[float]
    train: Any  #: materialised Ray Dataset: ``features`` (float32 vectors) and ``label``
    valid: Any  #: the same columns, for per-epoch validation
    holdout: Any  #: pandas DataFrame: raw feature columns and the label column, for the final evaluation

    def meta(self, cfg: TabularConfig) -> dict[str, Any]:
        """What a saved model needs to rebuild itself and name its inputs."""
        return {
            "model_type": cfg.model.type,
            "task": self.task,
            "features": self.features,
            "label_column": cfg.data.label_column,
            "n_outputs": self.n_outputs,
            "hidden_sizes": cfg.model.hidden_sizes,
            "dropout": cfg.model.dropout,
            "mean": self.mean,
            "std": self.std,
            "data_uri": self.pinned,
        }


def bootstrap_if_missing(cfg: DataConfig, store: Any) -> str | None:
    """Embedded demos: creates the URI's table from ``create_from`` when its ref or path is missing.

    Returns the new commit id, or None when the data was already there (or no ``create_from`` is set).
    """
    from fabric import data
    from fabric.tabular.tables import load_frame

    if not cfg.create_from:
        return None
    dataset = cfg.create_from.split(":", 1)[1]
    return data.create_if_missing(cfg.uri, lambda: load_frame(dataset), f"Create {data.DataURI.parse(cfg.uri).path} "
                                  f"from scikit-learn's {dataset} table", {"source": f"sklearn.{dataset}"}, store)


def prepare(cfg: TabularConfig, store: Any, log_validation: bool = True) -> Prepared:
    """Pins, reads, validates (raising DataValidationError), splits and standardises the configured table."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import ray
    from ray.data.aggregate import Max, Mean, Min, Std

    from fabric import data

    d = cfg.data
    pinned = data.pin(d.uri, store=store)
    commit = data.DataURI.parse(pinned).ref
    dataset = data.read(pinned, store=store)
    names = dataset.schema().names
    if d.label_column not in names:
        raise data.DataError(f"label column {d.label_column!r} is not in {d.uri}; columns: {', '.join(names)}")
    features = d.features or [c for c in names if c != d.label_column]
    missing = [c for c in features if c not in names]
    if missing:
        raise data.DataError(f"feature columns not in {d.uri}: {', '.join(missing)}")
    if d.validation_schema:
        report = data.validate(dataset, d.validation_schema, source=pinned, raise_on_error=False)
        if log_validation:
            report.log_to_mlflow()
        if not report.ok:
            raise data.DataValidationError(report)
    dataset = dataset.select_columns([*features, d.label_column])
    rest, test = dataset.train_test_split(test_size=d.test_fraction, shuffle=True, seed=d.seed)
    train, valid = rest.train_test_split(test_size=d.valid_fraction, shuffle=True, seed=d.seed + 1)

    # One aggregation for every statistic: each separate one costs seconds of start-up, whatever the data size.
    label = d.label_column
    stats = train.aggregate(*[Mean(c) for c in features], *[Std(c) for c in features], Min(label), Max(label))
    mean = [float(stats[f"mean({c})"]) for c in features]
    std = [float(stats[f"std({c})"]) or 1.0 for c in features]
    holdout = pa.concat_tables(ray.get(test.to_arrow_refs())).to_pandas()
    if d.task == "classification":
        labels = pd.concat([holdout[label], pd.Series([stats[f"min({label})"], stats[f"max({label})"]])])
        if (labels < 0).any() or not np.allclose(labels, labels.round()):
            raise data.DataError(f"label column {d.label_column!r} must hold class indices 0..k-1 for classification")
        n_outputs = int(max(labels.max(), valid.max(d.label_column))) + 1
    else:
        n_outputs = 1
    label_type = "int64" if d.task == "classification" else "float32"

    def to_tensors(batch: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"features": batch[features].to_numpy("float32"), "label": batch[d.label_column].to_numpy(label_type)}

    # Materialised before training: Train workers then hold every CPU without starving Ray Data of one.
    train_ready = train.map_batches(to_tensors, batch_format="pandas").materialize()
    valid_ready = valid.map_batches(to_tensors, batch_format="pandas").materialize()
    for ready in (train_ready, valid_ready):  # iterated again every epoch on the workers: no progress bars there
        ready.context.enable_progress_bars = False
    print(f"[data] {pinned}: {train_ready.count()} train, {valid_ready.count()} validation, {len(holdout)} "
          f"held-out rows; {len(features)} features", flush=True)
    return Prepared(uri=d.uri, pinned=pinned, commit=commit, features=features, task=d.task, n_outputs=n_outputs,
                    mean=mean, std=std, train=train_ready, valid=valid_ready, holdout=holdout)
