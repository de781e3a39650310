"""The inference log: every prediction (request id, time, model, version, inputs, outputs) written in batches to
Parquet, so monitoring can read what was served; labels that arrive later are written beside it and joined by
request id.

Layout under the log's root (``$FABRIC_HOME/inference`` by default, or any pyarrow filesystem URI such as
``s3://bucket/inference``)::

    MODEL/predictions/part-<time>-<uuid>.parquet   request_id, time, model, version, endpoint, inputs, outputs
    MODEL/labels/part-<time>-<uuid>.parquet        request_id, time, label

``inputs`` and ``outputs`` are JSON text of the row's feature values and model outputs, one row per predicted
row. Example::

    frame = read_log("breast-cancer")        # predictions with their labels where known (label column)
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["InferenceLog", "default_root", "read_log", "write_labels"]


def default_root() -> str:
    from fabric.runtime import fabric_home

    return str(fabric_home() / "inference")


def _filesystem(root: str) -> tuple[Any, str]:
    import pyarrow.fs

    if "://" in root:
        return pyarrow.fs.FileSystem.from_uri(root)
    return pyarrow.fs.LocalFileSystem(), str(Path(root).resolve())


def _write(root: str, model: str, kind: str, rows: list[dict[str, Any]]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, base = _filesystem(root)
    folder = f"{base}/{model}/{kind}"
    fs.create_dir(folder, recursive=True)
    path = f"{folder}/part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = f"{folder}/.{path.rsplit('/', 1)[1]}.tmp"  # dot files are invisible to dataset readers
    pq.write_table(pa.Table.from_pylist(rows), tmp, filesystem=fs)
    fs.move(tmp, path)  # readers never see a half-written file
    return path


class InferenceLog:
    """Buffers prediction records and writes them as one Parquet file per ``flush_rows`` rows or ``flush_s``."""

    def __init__(self, root: str | None = None, flush_rows: int = 512, flush_s: float = 5.0):
        self.root = root or default_root()
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.buffers: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.last_flush = time.monotonic()
        self.written = 0
        self.pending = 0
        threading.Thread(target=self._timer, daemon=True, name="inference-log").start()

    def add(self, request_id: str, model: str, version: str, endpoint: str, features: list[str], inputs: Any,
            outputs: dict[str, Any]) -> None:
        """Records one request: ``inputs`` a rows x features matrix, ``outputs`` columns of the same rows.

        Only a reference is kept here; rows are built when the buffer is written, off the request path.
        """
        with self.lock:
            buffer = self.buffers.setdefault(model, [])
            buffer.append((time.time(), request_id, str(version), endpoint, features, inputs, outputs))
            self.pending += len(inputs)
            full = self.pending >= self.flush_rows
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            buffers, self.buffers, self.pending = self.buffers, {}, 0
            self.last_flush = time.monotonic()
        for model, requests in buffers.items():
            rows = [
                {"request_id": request_id, "row": i, "time": at, "model": model, "version": version,
                 "endpoint": endpoint, "inputs": json.dumps(dict(zip(features, x, strict=True))),
                 "outputs": json.dumps({c: v[i] for c, v in columns.items()})}
                for at, request_id, version, endpoint, features, matrix, outputs in requests
                for columns in [{c: v.tolist() for c, v in outputs.items()}]
                for i, x in enumerate(matrix.tolist())
            ]
            if rows:
                _write(self.root, model, "predictions", rows)
                self.written += len(rows)

    def _timer(self) -> None:
        while True:
            time.sleep(min(self.flush_s, 1.0))
            if time.monotonic() - self.last_flush >= self.flush_s:
                try:
                    self.flush()
                except Exception:  # a full disk must not take serving down; the next flush retries the new rows
                    pass


def write_labels(model: str, labels: list[dict[str, Any]], root: str | None = None) -> str:
    """Writes late labels (``{"request_id", "label"}`` each) for ``model``; returns the file written."""
    now = time.time()
    rows = []
    for i, item in enumerate(labels):
        if not isinstance(item, dict) or "request_id" not in item or "label" not in item:
            raise ValueError(f"labels[{i}]: needs request_id and label")
        try:
            row = int(item.get("row", 0))
        except (TypeError, ValueError):
            raise ValueError(f"labels[{i}].row: must be an integer (the row of the request)") from None
        rows.append({"request_id": str(item["request_id"]), "row": row, "time": now,
                     "label": json.dumps(item["label"])})
    return _write(root or default_root(), model, "labels", rows)


def read_log(model: str, root: str | None = None, with_labels: bool = True) -> Any:
    """The model's predictions as a DataFrame (decoded inputs/outputs columns), with ``label`` joined by request id
    and row when ``with_labels`` (the latest label wins; missing labels are NaN)."""
    import pandas as pd
    import pyarrow.dataset as ds

    fs, base = _filesystem(root or default_root())

    def load(kind: str) -> pd.DataFrame:
        folder = f"{base}/{model}/{kind}"
        info = fs.get_file_info(folder)
        if info.type.name == "NotFound":
            return pd.DataFrame()
        return ds.dataset(folder, filesystem=fs, format="parquet").to_table().to_pandas()

    predictions = load("predictions")
    if predictions.empty:
        return predictions
    predictions = predictions.sort_values(["time", "request_id", "row"]).reset_index(drop=True)
    predictions["inputs"] = predictions["inputs"].map(json.loads)
    predictions["outputs"] = predictions["outputs"].map(json.loads)
    if with_labels:
        labels = load("labels")
        if labels.empty:
            predictions["label"] = None
        else:
            labels = labels.sort_values("time").drop_duplicates(["request_id", "row"], keep="last")
            labels["label"] = labels["label"].map(json.loads)
            predictions = predictions.merge(labels[["request_id", "row", "label"]], on=["request_id", "row"],
                                            how="left")
    return predictions
