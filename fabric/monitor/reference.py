"""A check's reference: the rows of the exact data commit a model version was trained on, read from the store.

The version's tags name the commit (``fabric.data.uri``, a pinned ``lakefs://REPO/COMMIT/PATH``, and
``fabric.data.commit``), the label column and the task; ``fabric.tabular``'s training sets them. Only the feature
and label columns are read, with pyarrow, and sampled (seeded) above ``max_rows``; no copy is kept anywhere. The
reference's predictions, needed for prediction drift, are the version's own outputs on those rows: the model is
loaded once per process and version.

Example:
    >>> ref = load_reference("breast-cancer")          # the champion
    >>> ref.version, ref.commit[:12], ref.rows, ref.outputs
    ('3', '4be1c0a1d2e3', 569, ['prediction', 'probability_0', 'probability_1'])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric.monitor.config import MonitorError

__all__ = ["Reference", "load_reference", "resolve_version"]

URI_TAG, COMMIT_TAG, LABEL_TAG, TASK_TAG = "fabric.data.uri", "fabric.data.commit", "fabric.label_column", "fabric.task"
SCHEMA_TAG, SCHEMA_PARAM = "fabric.data.validation_schema", "data.validation_schema"


@dataclass
class Reference:
    """What a version was trained on, as a check needs it."""

    model: str
    version: str
    task: str  #: classification or regression
    label: str  #: the label column
    uri: str  #: the pinned data URI
    commit: str
    features: list[str]
    outputs: list[str]  #: the model's output columns (prediction, probability_<k>...)
    frame: Any  #: pandas DataFrame: features, label and outputs of the (sampled) reference rows
    rows: int  #: reference rows before sampling
    schema: Any = None  #: fabric.data.DataSchema of the training data, when known
    schema_source: str | None = None
    limits: dict[str, tuple] = field(default_factory=dict)  #: per numeric column: (min, max) over all rows
    categories: dict[str, list] = field(default_factory=dict)  #: per non-float column: its values over all rows


def resolve_version(model: str, version: str | None = None) -> dict[str, Any]:
    """The registry entry (``fabric.registry.show``'s version dict) of ``version``, or of the ``champion``."""
    from fabric import registry

    try:
        shown = registry.show(model)
    except registry.RegistryError as exc:
        raise MonitorError(str(exc)) from None
    known = ", ".join(v["version"] for v in shown["versions"]) or "none"
    if version is None:
        version = shown["aliases"].get(registry.CHAMPION)
        if version is None:
            raise MonitorError(f"model {model} has no champion to check; give a version (versions: {known})")
    found = [v for v in shown["versions"] if v["version"] == str(version)]
    if not found:
        raise MonitorError(f"model {model} has no version {version!r}; versions: {known}")
    return found[0]


def load_reference(model: str, version: str | None = None, max_rows: int = 50_000, seed: int = 0,
                   validation_schema: str | None = None) -> Reference:
    """The reference of ``version`` (default: the champion) of ``model``; see the module docstring."""
    import numpy as np

    entry = resolve_version(model, version)
    version, tags = entry["version"], entry["tags"]
    if URI_TAG not in tags:
        raise MonitorError(f"model {model} version {version} has no {URI_TAG} tag, so its reference data is "
                           f"unknown: train it with fabric (train_tabular tags it) or set the tags {URI_TAG} "
                           f"(lakefs://REPO/COMMIT/PATH) and {COMMIT_TAG} on the version")
    from fabric.data import DataURI

    uri = tags[URI_TAG]
    commit = tags.get(COMMIT_TAG) or DataURI.parse(uri).ref
    pyfunc = _load_model(model, version)
    meta = getattr(pyfunc.unwrap_python_model(), "meta", None) or {}
    label = tags.get(LABEL_TAG) or meta.get("label_column") or "label"
    features = list(meta.get("features") or _signature_inputs(pyfunc))
    table, rows = _read(uri, commit, model, version, features, label)
    if not features:
        features = [c for c in table.column_names if c != label]
    limits, categories = _profile(table, features)
    if rows > max_rows:
        table = table.take(np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False)))
    frame = table.to_pandas()
    outputs = pyfunc.predict(frame[features])
    for column in outputs.columns:
        frame[column] = outputs[column].to_numpy()
    task = tags.get(TASK_TAG) or meta.get("task") or "classification"
    schema, source = _schema(entry, tags, validation_schema)
    return Reference(model=model, version=version, task=task, label=label, uri=uri, commit=commit, features=features,
                     outputs=list(outputs.columns), frame=frame, rows=rows, schema=schema, schema_source=source,
                     limits=limits, categories=categories)


def _profile(table: Any, features: list[str]) -> tuple[dict[str, tuple], dict[str, list]]:
    """Min/max of the numeric features and the values of the others, over every reference row (before
    sampling), so out-of-range and new-category counts do not depend on the sample."""
    import pyarrow as pa
    import pyarrow.compute as pc

    limits, categories = {}, {}
    for name in features:
        column = table[name]
        if pa.types.is_integer(column.type) or not (pa.types.is_floating(column.type)
                                                     or pa.types.is_decimal(column.type)):
            values = pc.unique(column.drop_null())
            if len(values) <= 1000:
                categories[name] = sorted(values.to_pylist())
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            low_high = pc.min_max(column)
            limits[name] = (low_high["min"].as_py(), low_high["max"].as_py())
    return limits, categories


@functools.lru_cache(maxsize=8)
def _cached_model(tracking_uri: str, model: str, version: str) -> Any:
    import mlflow

    return mlflow.pyfunc.load_model(f"models:/{model}/{version}")


def _load_model(model: str, version: str) -> Any:
    import mlflow

    return _cached_model(mlflow.get_tracking_uri(), model, version)


def _signature_inputs(pyfunc: Any) -> list[str]:
    inputs = pyfunc.metadata.get_input_schema() if pyfunc.metadata else None
    return inputs.input_names() if inputs is not None and inputs.has_input_names() else []


def _read(uri: str, commit: str, model: str, version: str, features: list[str], label: str) -> tuple[Any, int]:
    """The feature and label columns of the commit's files (a pyarrow Table) and their row count."""
    import pyarrow.dataset as ds
    from fsspec.implementations.local import LocalFileSystem

    from fabric.data import DataError, DataURI, open_store

    target = DataURI.parse(uri)
    try:
        fs, paths = open_store().read_paths(target.repo, commit, target.path)
    except DataError as exc:
        raise MonitorError(f"the reference data of {model} version {version} cannot be read: commit {commit} of "
                           f"{uri} is missing ({exc})") from None
    if not paths:
        raise MonitorError(f"the reference data of {model} version {version} cannot be read: commit {commit} of "
                           f"{uri} has no files under {target.path!r}")
    if isinstance(fs, LocalFileSystem):  # pyarrow's own local filesystem reads without a Python layer
        import pyarrow.fs

        fs = pyarrow.fs.LocalFileSystem()
    dataset = ds.dataset(paths, filesystem=fs, format="parquet")
    names = dataset.schema.names
    missing = [c for c in features if c not in names]
    if missing:
        raise MonitorError(f"the reference data {uri} lacks the model's feature columns: {', '.join(missing)}")
    columns = (features or [c for c in names if c != label]) + ([label] if label in names else [])
    return dataset.to_table(columns=columns), dataset.count_rows()


def _schema(entry: dict[str, Any], tags: dict[str, str], override: str | None) -> tuple[Any, str | None]:
    """The validation schema the training data was held to: the override, the version's tag, or the training
    run's ``data.validation_schema`` parameter; None when none is known or its file is gone."""
    from fabric.data import DataSchema

    path = override or tags.get(SCHEMA_TAG) or _run_param(entry.get("run_id"), SCHEMA_PARAM)
    if not path or path == "None":
        return None, None
    if not Path(path).is_file():
        if override:
            raise MonitorError(f"validation schema {path} does not exist")
        return None, None
    return DataSchema.from_yaml(path), str(path)


def _run_param(run_id: str | None, name: str) -> str | None:
    import mlflow

    if not run_id:
        return None
    try:
        return mlflow.MlflowClient().get_run(run_id).data.params.get(name)
    except mlflow.exceptions.MlflowException:
        return None
