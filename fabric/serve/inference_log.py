"""The inference log: every prediction (request id, row, time, model, version, endpoint, inputs, outputs) written
in batches to Parquet, so monitoring can read what was served; labels that arrive later are written beside it and
joined by request id and row.

Layout under the log's root (``$FABRIC_HOME/inference`` by default, or any pyarrow filesystem URI such as
``s3://bucket/inference``)::

    MODEL/predictions/part-<time>-<uuid>.parquet   request_id, row, time, model, version, endpoint,
                                                   in.<feature>..., out.<output>...
    MODEL/labels/part-<time>-<uuid>.parquet        request_id, row, time, label

One Parquet row per predicted row: each feature is its own column ``in.<feature>`` (float64 for fabric's models,
the input's own type for any other MLflow model) and each model output its own typed column ``out.<output>``
(``out.prediction``, ``out.probability_1``, ...), so a reader can fetch
only the columns and rows it needs (see :mod:`fabric.monitor.window`). Files written before this layout hold
``inputs`` and ``outputs`` as JSON text instead; :func:`read_log` reads both. ``label`` is the label as JSON text.
Example::

    frame = read_log("breast-cancer")        # predictions with their labels where known (label column)
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["INPUT_PREFIX", "OUTPUT_PREFIX", "InferenceLog", "default_root", "log_files", "read_log", "write_labels"]

INPUT_PREFIX, OUTPUT_PREFIX = "in.", "out."
KEY_COLUMNS = ["request_id", "row", "time", "model", "version", "endpoint"]
log = logging.getLogger("ray.serve")


def default_root() -> str:
    from fabric.runtime import fabric_home

    return str(fabric_home() / "inference")


def _filesystem(root: str) -> tuple[Any, str]:
    import pyarrow.fs

    if "://" in root:
        return pyarrow.fs.FileSystem.from_uri(root)
    return pyarrow.fs.LocalFileSystem(), str(Path(root).resolve())


def log_files(model: str, kind: str = "predictions", root: str | None = None) -> tuple[Any, list[str]]:
    """The pyarrow filesystem and the sorted paths of ``model``'s finished ``kind`` files (predictions or labels)."""
    import pyarrow.fs

    fs, base = _filesystem(root or default_root())
    selector = pyarrow.fs.FileSelector(f"{base}/{model}/{kind}", allow_not_found=True)
    names = [info.path for info in fs.get_file_info(selector) if info.type == pyarrow.fs.FileType.File]
    # dot files are files being written; readers never see them
    return fs, sorted(p for p in names if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith((".", "_")))


def _write(root: str, model: str, kind: str, table: Any) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, base = _filesystem(root)
    folder = f"{base}/{model}/{kind}"
    fs.create_dir(folder, recursive=True)
    path = f"{folder}/part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = f"{folder}/.{path.rsplit('/', 1)[1]}.tmp"  # dot files are invisible to dataset readers
    pq.write_table(table if isinstance(table, pa.Table) else pa.Table.from_pylist(table), tmp, filesystem=fs)
    fs.move(tmp, path)  # readers never see a half-written file
    return path


def _prediction_tables(model: str, requests: list[tuple]) -> list[Any]:
    """One Arrow table per (features, outputs) layout among ``requests``: typed ``in.*``/``out.*`` columns."""
    import numpy as np
    import pyarrow as pa

    groups: dict[tuple, list[tuple]] = {}
    for request in requests:
        groups.setdefault((tuple(request[4]), tuple(request[6])), []).append(request)
    tables = []
    for (features, outputs), group in groups.items():
        counts = np.array([len(r[5]) for r in group], dtype="int64")
        if not counts.sum():
            continue
        columns: dict[str, Any] = {
            "request_id": np.repeat(np.array([r[1] for r in group], dtype=object), counts),
            "row": np.concatenate([np.arange(n, dtype="int64") for n in counts]),
            "time": np.repeat(np.array([r[0] for r in group], dtype="float64"), counts),
            "model": np.repeat(np.array([model], dtype=object), counts.sum()),
            "version": np.repeat(np.array([r[2] for r in group], dtype=object), counts),
            "endpoint": np.repeat(np.array([r[3] for r in group], dtype=object), counts),
        }
        columns.update({f"{INPUT_PREFIX}{f}": values for f, values in _inputs(group, features, counts).items()})
        columns.update({f"{OUTPUT_PREFIX}{c}": np.concatenate([np.asarray(r[6][c]).reshape(-1) for r in group])
                        for c in outputs})
        tables.append(pa.table({name: _arrow(values) for name, values in columns.items()}))
    return tables


def _inputs(group: list[tuple], features: tuple, counts: Any) -> dict[str, Any]:
    """The feature columns of a group of requests: float64 from matrices (fabric's models, one conversion for the
    whole group), each column's own type from DataFrames (any MLflow model served through its pyfunc)."""
    import numpy as np

    if not any(hasattr(r[5], "columns") for r in group):
        matrix = np.concatenate([np.asarray(r[5], dtype="float64").reshape(n, len(features))
                                 for r, n in zip(group, counts, strict=True)])
        return {f: matrix[:, j] for j, f in enumerate(features)}
    parts: dict[str, list[Any]] = {f: [] for f in features}
    for r, n in zip(group, counts, strict=True):
        for j, f in enumerate(features):
            parts[f].append(r[5][f].to_numpy() if hasattr(r[5], "columns") else
                            np.asarray(r[5], dtype="float64").reshape(n, len(features))[:, j])
    return {f: np.concatenate(values) for f, values in parts.items()}


def _arrow(values: Any) -> Any:
    """An Arrow array of ``values``; a column whose requests disagree on its type is kept as text."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


class InferenceLog:
    """Buffers prediction records and writes them as one Parquet file per ``flush_rows`` rows or ``flush_s``.

    Writing happens on a background thread, never on the request path: :meth:`add` only appends. A write that
    fails (a full disk, an object store down) keeps its rows and is retried with a growing pause; each failure is
    logged and counted (``failed_writes``, ``last_error``). :meth:`close` writes what is left (the gateway calls it
    when its replica drains or shuts down).
    """

    def __init__(self, root: str | None = None, flush_rows: int = 512, flush_s: float = 5.0):
        self.root = root or default_root()
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.buffers: dict[str, list[tuple]] = {}
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()  # one writer at a time: the timer, flush() or close()
        self.last_flush = time.monotonic()
        self.written = 0
        self.pending = 0
        self.failed_writes = 0
        self.last_error: str | None = None
        self.retry_at = 0.0
        self.wake = threading.Event()
        self.closed = False
        threading.Thread(target=self._timer, daemon=True, name="inference-log").start()

    def add(self, request_id: str, model: str, version: str, endpoint: str, features: list[str], inputs: Any,
            outputs: dict[str, Any]) -> None:
        """Records one request: ``inputs`` a rows x features matrix (or a pandas DataFrame holding the
        ``features`` columns, each logged with its own type), ``outputs`` columns of the same rows.

        Only a reference is kept here; the columns are built and written on the log's thread.
        """
        with self.lock:
            buffer = self.buffers.setdefault(model, [])
            buffer.append((time.time(), request_id, str(version), endpoint, features, inputs, outputs))
            self.pending += len(inputs)
            full = self.pending >= self.flush_rows
        if full:
            self.wake.set()

    def flush(self) -> None:
        """Writes every buffered row now; rows whose write fails go back to the buffer and the error is raised."""
        with self.write_lock:
            with self.lock:
                buffers, self.buffers, self.pending = self.buffers, {}, 0
                self.last_flush = time.monotonic()
            failed: list[tuple[str, list[tuple], Exception]] = []
            for model, requests in buffers.items():
                for group in _layouts(requests):
                    try:
                        for table in _prediction_tables(model, group):
                            _write(self.root, model, "predictions", table)
                            self.written += table.num_rows
                    except Exception as exc:
                        failed.append((model, group, exc))
            if failed:
                self._keep(failed)
                raise failed[0][2]
            self.retry_at = 0.0

    def _keep(self, failed: list[tuple[str, list[tuple], Exception]]) -> None:
        """Puts the rows of failed writes back at the front of the buffer and reports the failure."""
        with self.lock:
            for model, group, _ in failed:
                self.buffers[model] = group + self.buffers.get(model, [])
                self.pending += sum(len(r[5]) for r in group)
        self.failed_writes += 1
        self.last_error = f"{type(failed[0][2]).__name__}: {failed[0][2]}"
        pause = min(60.0, 0.5 * 2 ** min(self.failed_writes, 7))
        self.retry_at = time.monotonic() + pause
        log.warning("fabric: inference log write to %s failed (%s); %d rows kept, retrying in %.1f s", self.root,
                    self.last_error, self.pending, pause)

    def close(self, attempts: int = 3) -> None:
        """Writes what is buffered (retrying ``attempts`` times) and stops the thread; rows that still cannot be
        written are logged as lost."""
        self.closed = True
        self.wake.set()
        for attempt in range(attempts):
            try:
                self.flush()
                return
            except Exception:
                time.sleep(0.2 * (attempt + 1))
        log.error("fabric: inference log closed with %d rows it could not write to %s: %s", self.pending, self.root,
                  self.last_error)

    def _timer(self) -> None:
        while not self.closed:
            self.wake.wait(min(self.flush_s, 1.0))
            self.wake.clear()
            if self.closed or time.monotonic() < self.retry_at or not self.pending:
                continue
            if self.pending >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_s:
                try:
                    self.flush()
                except Exception:  # kept and reported by flush; serving goes on
                    pass


def _layouts(requests: list[tuple]) -> list[list[tuple]]:
    """``requests`` grouped by (features, outputs), one write each, so one bad group does not hold up the rest."""
    groups: dict[tuple, list[tuple]] = {}
    for request in requests:
        groups.setdefault((tuple(request[4]), tuple(request[6])), []).append(request)
    return list(groups.values())


def write_labels(model: str, labels: list[dict[str, Any]], root: str | None = None) -> str:
    """Writes late labels (``{"request_id", "label"}`` each, ``row`` 0 unless given) for ``model``; returns the
    file written."""
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
    and row when ``with_labels`` (the latest label wins; missing labels are NaN).

    Reads every file whole: for large logs read a window with :func:`fabric.monitor.window.read_window`.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    fs, paths = log_files(model, "predictions", root)
    if not paths:
        return pd.DataFrame()
    predictions = pd.concat([_decoded(pq.read_table(path, filesystem=fs).to_pandas()) for path in paths],
                            ignore_index=True)
    predictions = predictions.sort_values(["time", "request_id", "row"]).reset_index(drop=True)
    if with_labels:
        fs, paths = log_files(model, "labels", root)
        if not paths:
            predictions["label"] = None
        else:
            labels = pd.concat([pq.read_table(p, filesystem=fs).to_pandas() for p in paths], ignore_index=True)
            labels = labels.sort_values("time", kind="stable").drop_duplicates(["request_id", "row"], keep="last")
            labels["label"] = labels["label"].map(json.loads)
            predictions = predictions.merge(labels[["request_id", "row", "label"]], on=["request_id", "row"],
                                            how="left")
    return predictions


def _decoded(frame: Any) -> Any:
    """One file's rows with ``inputs``/``outputs`` as dicts, whichever layout the file has."""
    if "inputs" in frame.columns:  # a file of the JSON-text layout
        frame["inputs"] = frame["inputs"].map(json.loads)
        frame["outputs"] = frame["outputs"].map(json.loads)
        return frame[[*KEY_COLUMNS, "inputs", "outputs"]]
    decoded = frame[KEY_COLUMNS].copy()
    for column, prefix in (("inputs", INPUT_PREFIX), ("outputs", OUTPUT_PREFIX)):
        names = [c for c in frame.columns if c.startswith(prefix)]
        values = [frame[c].tolist() for c in names]
        keys = [c[len(prefix):] for c in names]
        decoded[column] = [dict(zip(keys, row, strict=True)) for row in zip(*values, strict=True)] if names else [
            {} for _ in range(len(frame))]
    return decoded
