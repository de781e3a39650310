"""The wire formats a model answers in, as pure functions (no Ray, no pandas on the request path): KServe's Open
Inference Protocol v2 and MLflow's scoring format. Every malformed request becomes a :class:`RequestError` with a
4xx status and a message naming the field.

V2 (``POST /v2/models/NAME/infer``): either one 1-D tensor per feature column (``name`` = column, ``shape``
``[n]``), or one 2-D tensor ``[n, n_features]`` with the columns in the model's order. The response has one
output tensor per output column (``prediction``, ``probability_<k>``).

MLflow (``POST /invocations``): ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}`` or
``{"dataframe_records": [{...}, ...]}``; the answer is ``{"predictions": [{column: value, ...}, ...]}``, as
``mlflow models serve`` answers for a DataFrame-returning pyfunc.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["RequestError", "datatype_of", "matrix_from_data", "matrix_from_mlflow", "matrix_from_v2",
           "mlflow_response", "output_columns", "records", "v2_metadata", "v2_response"]

V2_TYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
            "FP64"}


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status (400, 413, 422...), ``headers`` any the answer
    needs (``Allow`` of a 405)."""

    def __init__(self, message: str, status: int = 422, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def datatype_of(dtype: Any) -> str:
    """The V2 datatype of a numpy dtype (strings and other objects are ``BYTES``)."""
    kind = np.dtype(dtype)
    if kind.kind in "OUSMm":
        return "BYTES"
    if kind == np.bool_:
        return "BOOL"
    if np.issubdtype(kind, np.integer):
        return f"{'U' if np.issubdtype(kind, np.unsignedinteger) else ''}INT{kind.itemsize * 8}"
    return {2: "FP16", 4: "FP32"}.get(kind.itemsize, "FP64")


def _numbers(values: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype="float64")
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{where}: every value must be a number") from None
    if not np.isfinite(array).all():
        raise RequestError(f"{where}: values must be finite numbers (no NaN or infinity)")
    return array


def _matrix(names: list[str], values: Any, features: list[str], where: str) -> np.ndarray:
    """The model's feature matrix (rows x features, float64) from named columns; 422 naming what is wrong."""
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    if repeated:
        raise RequestError(f"{where}: column(s) given more than once: {', '.join(repeated)}")
    missing = [c for c in features if c not in names]
    if missing:
        raise RequestError(f"{where}: missing feature column(s) {', '.join(missing)}; the model needs "
                           f"{len(features)} columns: {', '.join(features)}")
    index = [names.index(c) for c in features]
    try:
        matrix = np.asarray(values, dtype="float64")[:, index]
        if not np.isfinite(matrix).all():
            raise ValueError
    except (TypeError, ValueError, OverflowError, IndexError):
        # The fast path failed: find the first bad column and name it.
        for c, i in zip(features, index, strict=True):
            _numbers([row[i] for row in values], f"{where}.{c}")
        raise RequestError(f"{where}: rows must hold one number per column") from None
    if not len(matrix):
        raise RequestError(f"{where}: no rows")
    return matrix


def matrix_from_v2(body: Any, features: list[str]) -> np.ndarray:
    """The feature matrix of a V2 inference request."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise RequestError("inputs: a V2 request needs a non-empty list of input tensors")
    tensors: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(body["inputs"]):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise RequestError(f"{where}: must be an object with name, shape, datatype and data")
        for key in ("name", "shape", "datatype", "data"):
            if key not in tensor:
                raise RequestError(f"{where}.{key}: required")
        name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
        if datatype not in V2_TYPES:
            raise RequestError(f"{where}.datatype: {datatype!r} is not a numeric V2 type "
                               f"({', '.join(sorted(V2_TYPES))})")
        if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise RequestError(f"{where}.shape: must be a list of non-negative integers")
        data = _numbers(tensor["data"], f"{where}.data").reshape(-1)
        if data.size != math.prod(shape):
            raise RequestError(f"{where}.data: holds {data.size} values but shape {shape} needs {math.prod(shape)}")
        if str(name) in tensors:
            raise RequestError(f"inputs: tensor {name!r} given more than once")
        tensors[str(name)] = data.reshape(shape)
    if len(tensors) == 1:
        (name, array), = tensors.items()
        if array.ndim == 2:
            if array.shape[1] != len(features):
                raise RequestError(f"inputs[0].shape: a 2-D input needs {len(features)} columns (the model's "
                                   f"features), got {array.shape[1]}")
            if not len(array):
                raise RequestError("inputs: no rows")
            return array
    for name, array in tensors.items():
        if array.ndim != 1:
            raise RequestError(f"inputs.{name}.shape: one tensor per column must be 1-D, got {list(array.shape)}")
    lengths = {len(a) for a in tensors.values()}
    if len(lengths) > 1:
        raise RequestError(f"inputs: column tensors differ in length ({sorted(lengths)})")
    names = list(tensors)
    missing = [c for c in features if c not in tensors]
    if missing:
        raise RequestError(f"inputs: missing feature column(s) {', '.join(missing)}; the model needs "
                           f"{len(features)} columns: {', '.join(features)}")
    matrix = np.column_stack([tensors[c] for c in features]) if names else np.zeros((0, len(features)))
    if not len(matrix):
        raise RequestError("inputs: no rows")
    return matrix


def matrix_from_mlflow(body: Any, features: list[str]) -> np.ndarray:
    """The feature matrix of an MLflow scoring request (``dataframe_split`` or ``dataframe_records``)."""
    if not isinstance(body, dict):
        raise RequestError("body: must be a JSON object with dataframe_split or dataframe_records")
    if "dataframe_split" in body:
        split = body["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("columns"), list) \
                or not isinstance(split.get("data"), list):
            raise RequestError("dataframe_split: needs columns (a list) and data (a list of rows)")
        columns = split["columns"]
        for i, row in enumerate(split["data"]):
            if not isinstance(row, list) or len(row) != len(columns):
                raise RequestError(f"dataframe_split.data[{i}]: must be a list of {len(columns)} values")
        if not split["data"]:
            raise RequestError("dataframe_split: no rows")
        return _matrix([str(c) for c in columns], split["data"], features, "dataframe_split")
    if "dataframe_records" in body:
        records = body["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise RequestError("dataframe_records: must be a list of objects, one per row")
        if not records:
            raise RequestError("dataframe_records: no rows")
        missing = sorted({c for r in records for c in features if c not in r}, key=features.index)
        if missing:
            raise RequestError(f"dataframe_records: missing feature column(s) {', '.join(missing)}; the model "
                               f"needs {len(features)} columns: {', '.join(features)}")
        return _matrix(features, [[r[c] for c in features] for r in records], features, "dataframe_records")
    raise RequestError("body: give dataframe_split or dataframe_records (MLflow's scoring format)")


def matrix_from_data(data: Any, features: list[str], where: str = "body") -> np.ndarray:
    """The feature matrix of a request that MLflow's own parser read (``instances``, ``inputs``, CSV): a DataFrame
    or a dict of columns, named; a 2-D array, with the columns in the model's order."""
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a pandas DataFrame
        names = [str(c) for c in data.columns]
        return _matrix(names, data.to_numpy(dtype=object).tolist(), features, where)
    if isinstance(data, dict):
        columns = {str(k): np.asarray(v, dtype=object).reshape(-1) for k, v in data.items()}
        if len({len(v) for v in columns.values()}) > 1:
            raise RequestError(f"{where}: columns differ in length")
        names = list(columns)
        return _matrix(names, [list(row) for row in zip(*columns.values(), strict=True)], features, where)
    array = np.asarray(data, dtype=object) if isinstance(data, (list, np.ndarray)) else None
    if array is None or array.ndim != 2 or array.shape[1] != len(features):
        shape = list(array.shape) if array is not None else type(data).__name__
        raise RequestError(f"{where}: give named columns or rows of {len(features)} values (the model's features "
                           f"in order: {', '.join(features)}); got {shape}")
    return _matrix(features, array.tolist(), features, where)


def output_columns(task: str, raw: np.ndarray) -> dict[str, np.ndarray]:
    """A model's raw output as named columns: ``prediction`` (+ ``probability_<k>`` for a classifier); the
    columns themselves for a model served through its pyfunc (they come named)."""
    if isinstance(raw, dict):
        return raw
    if task == "regression":
        return {"prediction": raw}
    columns = {"prediction": raw.argmax(axis=1).astype("int64")}
    for k in range(raw.shape[1]):
        columns[f"probability_{k}"] = raw[:, k]
    return columns


def records(columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Output columns as one dict per row."""
    names, values = list(columns), [columns[c].tolist() for c in columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def v2_response(name: str, version: str, columns: dict[str, np.ndarray], request_id: str | None) -> dict[str, Any]:
    outputs = [
        {"name": c, "shape": list(v.shape), "datatype": datatype_of(v.dtype),
         "data": v.reshape(-1).tolist() if v.dtype.kind not in "Mm" else v.astype(str).reshape(-1).tolist()}
        for c, v in columns.items()
    ]
    response: dict[str, Any] = {"model_name": name, "model_version": str(version), "outputs": outputs}
    if request_id:
        response["id"] = request_id
    return response


def mlflow_response(columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{"predictions": ...}`` as ``mlflow models serve`` answers: one object per row for a fabric model (its
    pyfunc returns a DataFrame); for any other model, what MLflow's scoring server makes of its output (one object
    per row of a DataFrame or Series, a dict as it is, an array's values; see pyfunc_io.Outputs)."""
    if hasattr(columns, "predictions"):
        return {"predictions": columns.predictions()}
    return {"predictions": records(columns)}


def v2_metadata(name: str, versions: list[str], meta: dict[str, Any]) -> dict[str, Any]:
    if meta["task"] == "pyfunc":  # any MLflow model: its signature's inputs and outputs (pyfunc_io.describe)
        return {"name": name, "versions": versions, "platform": f"mlflow_{meta['model_type']}",
                "inputs": meta["inputs"], "outputs": meta.get("outputs") or []}
    outputs = [{"name": "prediction", "datatype": "INT64" if meta["task"] == "classification" else "FP64",
                "shape": [-1]}]
    if meta["task"] == "classification":
        outputs += [{"name": f"probability_{k}", "datatype": "FP64", "shape": [-1]} for k in range(meta["n_outputs"])]
    return {
        "name": name,
        "versions": versions,
        "platform": "mlflow_pyfunc",
        "inputs": [{"name": f, "datatype": "FP64", "shape": [-1]} for f in meta["features"]],
        "outputs": outputs,
    }
