"""A window of the inference log for one model version, read column by column and sampled before decoding.

Two passes over the prediction files, both with pyarrow and a filter on ``version`` (and ``time`` for a span, so
row groups outside it are skipped by their statistics):

1. only ``time`` (and ``request_id``/``row`` when labels exist) is read, to find the window's rows, count them
   and join the labels; the rows to analyse are then chosen (a seeded sample above ``max_rows``);
2. only the files that hold chosen rows are read again, with just the feature and output columns, and only the
   chosen rows are kept (file by file, so memory stays near one file plus the sample).

Files of the older JSON-text layout are read the same way; their ``inputs``/``outputs`` text is decoded for the
chosen rows only.

Example:
    >>> w = read_window("breast-cancer", "3", ["mean_radius", "mean_texture"], last=1000)
    >>> w.current.columns.tolist(), w.rows, w.labelled_rows
    (['mean_radius', 'mean_texture', 'prediction', 'probability_0', 'probability_1'], 1000, 212)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from fabric.monitor.config import MonitorError, parse_span
from fabric.serve.inference_log import INPUT_PREFIX, OUTPUT_PREFIX, log_files

__all__ = ["Window", "read_labelled", "read_window"]


@dataclass
class Window:
    """The chosen rows of a window: features and outputs by their plain names; ``labelled`` adds ``label``."""

    current: Any  #: pandas DataFrame: a sample of at most max_rows window rows (features + outputs)
    labelled: Any  #: pandas DataFrame: the labelled window rows (at most max_rows; outputs + label)
    rows: int  #: window rows before sampling
    labelled_rows: int  #: labelled window rows before sampling
    spec: dict[str, Any] = field(default_factory=dict)  #: {"last": N} or {"since": "1h", "from": t0, "to": t1}
    columns_read: list[str] = field(default_factory=list)  #: the Parquet columns pass 2 read


def read_window(model: str, version: str, features: list[str], outputs: list[str] | None = None, *,
                last: int | None = None, since: str | None = None, max_rows: int = 50_000, seed: int = 0,
                root: str | None = None, now: float | None = None) -> Window:
    """The last ``last`` rows, or the rows of the past ``since``, that ``version`` of ``model`` answered.

    ``outputs`` names the output columns to read (default: every ``out.*`` column in the log).

    Raises:
        MonitorError: the model has no inference log yet.
    """
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fs, paths = log_files(model, "predictions", root)
    if not paths:
        raise MonitorError(f"model {model!r} has no inference log yet under {root or 'the default log root'}: "
                           "serve it with the inference log on and send some requests first")
    dataset = ds.dataset(paths, filesystem=fs, format="parquet")
    fragments = list(dataset.get_fragments())
    schemas = [f.physical_schema for f in fragments]
    predicate = pc.field("version") == str(version)
    spec: dict[str, Any] = {"last": last}
    if since is not None:
        to = time.time() if now is None else now
        spec = {"since": since, "from": to - parse_span(since), "to": to}
        predicate = predicate & (pc.field("time") >= spec["from"]) & (pc.field("time") <= to)
    _, label_paths = log_files(model, "labels", root)
    keys = ["time", "request_id", "row"] if label_paths else ["time"]
    found = [f.to_table(columns=keys, filter=predicate) for f in fragments]  # pass 1
    counts = np.array([t.num_rows for t in found], dtype="int64")
    times = np.concatenate([t["time"].to_numpy() for t in found]) if found else np.empty(0)
    chosen = np.arange(len(times))
    if last is not None and len(times) > last:
        chosen = np.sort(np.argsort(times, kind="stable")[-last:])  # ties: the later file, the later row
    labelled, labels = _labelled(found, chosen, fs, label_paths)
    rng = np.random.default_rng(seed)
    sample = _sample(chosen, max_rows, rng)
    labelled_sample = _sample(labelled, max_rows, rng)
    wanted = np.union1d(sample, labelled_sample)
    if outputs is None:
        outputs = sorted({n[len(OUTPUT_PREFIX):] for s in schemas for n in s.names if n.startswith(OUTPUT_PREFIX)})
    columns = [f"{INPUT_PREFIX}{f}" for f in features] + [f"{OUTPUT_PREFIX}{o}" for o in outputs]
    table = _take(fragments, schemas, counts, wanted, columns, predicate)  # pass 2
    frame = table.to_pandas()
    frame.columns = [c.split(".", 1)[1] if c.startswith((INPUT_PREFIX, OUTPUT_PREFIX)) else c for c in frame.columns]
    in_sample, in_labelled = np.isin(wanted, sample), np.isin(wanted, labelled_sample)
    labelled_frame = frame.loc[in_labelled, outputs].reset_index(drop=True)
    labelled_frame["label"] = labels[np.searchsorted(labelled, labelled_sample)] if len(labelled_sample) else []
    return Window(current=frame.loc[in_sample].reset_index(drop=True), labelled=labelled_frame,
                  rows=len(chosen), labelled_rows=len(labelled), spec=spec, columns_read=columns)


def read_labelled(model: str, features: list[str], *, after: float | None = None, since: float | None = None,
                  last: int | None = None, root: str | None = None) -> Any:
    """The logged rows of ``model`` (any version) whose labels arrived, as ``features`` + ``label`` + ``time``,
    in log order: those logged after ``after`` and at or after ``since`` (unix times), the newest ``last`` of them.

    The same two passes as :func:`read_window`: keys and times first (joined with the labels), then only the
    ``features`` of the chosen rows from the files that hold them; a feature a file lacks reads as missing.
    Continuous training builds its snapshot from this, so a log of millions of rows is never decoded whole.

    Raises:
        MonitorError: the model has no inference log yet.
    """
    import numpy as np
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fs, paths = log_files(model, "predictions", root)
    if not paths:
        raise MonitorError(f"model {model!r} has no inference log yet under {root or 'the default log root'}")
    fragments = list(ds.dataset(paths, filesystem=fs, format="parquet").get_fragments())
    schemas = [f.physical_schema for f in fragments]
    predicate = pc.field("time") > (-np.inf if after is None else after)
    if since is not None:
        predicate = predicate & (pc.field("time") >= since)
    found = [f.to_table(columns=["time", "request_id", "row"], filter=predicate) for f in fragments]  # pass 1
    counts = np.array([t.num_rows for t in found], dtype="int64")
    _, label_paths = log_files(model, "labels", root)
    positions, labels = _labelled(found, np.arange(counts.sum()), fs, label_paths)
    times = np.concatenate([t["time"].to_numpy() for t in found])[positions] if len(positions) else np.empty(0)
    order = np.argsort(times, kind="stable")  # ties: the later file, the later row
    if last is not None:
        order = order[-last:] if last > 0 else order[:0]
    chosen = np.sort(positions[order])
    columns = [f"{INPUT_PREFIX}{f}" for f in features]
    frame = _take(fragments, schemas, counts, chosen, columns, predicate).to_pandas()  # pass 2
    frame.columns = list(features)
    by_position = np.searchsorted(positions, chosen)
    frame["label"] = pd.Series(labels[by_position] if len(chosen) else [], dtype=labels.dtype)
    frame["time"] = times[by_position] if len(chosen) else np.empty(0)
    return frame.sort_values("time", kind="stable").reset_index(drop=True)


def _sample(positions: Any, max_rows: int, rng: Any) -> Any:
    """``positions`` itself, or a sorted seeded sample of ``max_rows`` of them."""
    import numpy as np

    if len(positions) <= max_rows:
        return positions
    return np.sort(rng.choice(positions, size=max_rows, replace=False))


def _labelled(found: list[Any], chosen: Any, fs: Any, label_paths: list[str]) -> tuple[Any, Any]:
    """Positions (into pass 1's rows) of the chosen rows that have a label, and their latest labels."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not label_paths or not len(chosen):
        return np.empty(0, dtype="int64"), np.empty(0)
    keys = pa.concat_tables([t.select(["request_id", "row"]) for t in found]).take(pa.array(chosen))
    keys = keys.append_column("position", pa.array(chosen))
    labels = pa.concat_tables([pq.read_table(p, filesystem=fs, columns=["request_id", "row", "time", "label"])
                               for p in label_paths], promote_options="permissive")
    latest = labels.to_pandas().sort_values("time", kind="stable").drop_duplicates(["request_id", "row"], keep="last")
    joined = keys.join(pa.Table.from_pandas(latest[["request_id", "row", "label"]], preserve_index=False),
                       ["request_id", "row"], join_type="inner").sort_by("position")
    return joined["position"].to_numpy(), _decode_labels(joined["label"])


def _decode_labels(text: Any) -> Any:
    """JSON label texts as numbers (float64) when they all are, else as Python values."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.array([json.loads(t) for t in text.to_pylist()], dtype=object)


def _take(fragments: list[Any], schemas: list[Any], counts: Any, wanted: Any, columns: list[str],
          predicate: Any) -> Any:
    """The ``wanted`` rows (positions in pass 1's order) with ``columns``, reading only the files that hold them."""
    import numpy as np
    import pyarrow as pa

    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for i, fragment in enumerate(fragments):
        lo, hi = np.searchsorted(wanted, [starts[i], starts[i + 1]])
        if lo == hi:
            continue
        local = pa.array(wanted[lo:hi] - starts[i])
        if "inputs" in schemas[i].names:  # the JSON-text layout
            rows = fragment.to_table(columns=["inputs", "outputs"], filter=predicate).take(local)
            parts.append(_from_json(rows, columns))
            continue
        present = [c for c in columns if c in schemas[i].names]
        rows = fragment.to_table(columns=present, filter=predicate).take(local)
        for name in columns:
            if name not in present:  # a column this file lacks reads as missing values
                rows = rows.append_column(name, pa.nulls(rows.num_rows, pa.float64()))
        parts.append(rows.select(columns))
    if not parts:
        return pa.table({c: pa.array([], pa.float64()) for c in columns})
    return pa.concat_tables(parts, promote_options="permissive")


def _from_json(rows: Any, columns: list[str]) -> Any:
    import pyarrow as pa

    inputs = [json.loads(t) for t in rows["inputs"].to_pylist()]
    outputs = [json.loads(t) for t in rows["outputs"].to_pylist()]
    data = {}
    for name in columns:
        source, key = (inputs, name[len(INPUT_PREFIX):]) if name.startswith(INPUT_PREFIX) else (
            outputs, name[len(OUTPUT_PREFIX):])
        data[name] = pa.array([row.get(key) for row in source])
    return pa.table(data)
