"""Inputs and outputs of any MLflow pyfunc model (scikit-learn, XGBoost, a custom ``PythonModel``...), for the
models that are not fabric's own: parsed with MLflow's own scoring-server functions, so ``/invocations`` takes
what ``mlflow models serve`` takes (``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``, CSV,
Parquet), checked against the model's signature when it has one, and answered as MLflow answers.

Example::

    meta = describe(mlflow.pyfunc.load_model("models:/iris@champion"))
    data = parse_mlflow(b'{"inputs": [[5.1, 3.5, 1.4, 0.2]]}', "application/json", meta)
"""

from __future__ import annotations

import functools
import io
import json
from typing import Any

import numpy as np

from fabric.serve.protocols import RequestError

__all__ = ["KIND", "Outputs", "batchable", "columns_of", "describe", "loggable", "parse_mlflow", "parse_v2"]

KIND = "pyfunc"  # meta["task"] of a model served through MLflow's pyfunc rather than fabric's fast path
V2_OF_MLFLOW = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
                "string": "BYTES", "binary": "BYTES", "datetime": "BYTES"}


def describe(pyfunc: Any) -> dict[str, Any]:
    """What the gateway needs of a model: its flavor, its signature's input names, its input schema (JSON), and
    its inputs and outputs as V2 metadata tensors (an output without a name is ``predictions``, as /infer names
    it; without an output schema, one generic ``predictions`` output of type ``BYTES``, as its type is known only
    once the model answers)."""
    schema = pyfunc.metadata.get_input_schema()
    output_schema = pyfunc.metadata.get_output_schema()
    flavors = [f for f in pyfunc.metadata.flavors if f != "python_function"]
    names = schema.input_names() if schema is not None and schema.has_input_names() else None
    outputs = [_v2_tensor(spec, "predictions") for spec in output_schema.inputs] if output_schema is not None else [
        {"name": "predictions", "datatype": "BYTES", "shape": [-1]}]
    return {"task": KIND, "model_type": flavors[0] if flavors else "python_function",
            "features": [str(n) for n in names] if names else None, "n_outputs": None,
            "schema": schema.to_json() if schema is not None else None,
            "inputs": [_v2_tensor(spec, "input") for spec in (schema.inputs if schema is not None else [])],
            "outputs": outputs}


def _v2_tensor(spec: Any, unnamed: str) -> dict[str, Any]:
    """A signature's column or tensor as V2 metadata: name, datatype, shape."""
    from mlflow.types import TensorSpec

    from fabric.serve.protocols import datatype_of

    if isinstance(spec, TensorSpec):
        return {"name": spec.name or unnamed, "datatype": datatype_of(spec.type), "shape": list(spec.shape)}
    kind = spec.type
    while hasattr(kind, "dtype") and not hasattr(kind, "name"):  # an Array column: the type of its items
        kind = kind.dtype
    return {"name": spec.name or unnamed, "datatype": V2_OF_MLFLOW.get(getattr(kind, "name", ""), "BYTES"),
            "shape": [-1]}


@functools.lru_cache(maxsize=64)
def _schema(schema_json: str | None) -> Any:
    if schema_json is None:
        return None
    from mlflow.types import Schema

    return Schema.from_json(schema_json)


def _refuse(exc: Exception) -> RequestError:
    message = getattr(exc, "message", None) or str(exc)
    return RequestError(message.split("\n\nFor more information")[0].strip() or type(exc).__name__, 422)


def parse_mlflow(body: bytes, content_type: str, meta: dict[str, Any]) -> Any:
    """The model input in an ``/invocations`` body, as ``mlflow models serve`` parses it, checked against the
    model's signature (a 422 naming what does not fit)."""
    from mlflow.pyfunc import scoring_server

    schema = _schema(meta.get("schema"))
    mime = content_type.split(";")[0].strip().lower()
    try:
        if mime == scoring_server.CONTENT_TYPE_CSV:
            data = scoring_server.parse_csv_input(io.StringIO(body.decode("utf-8")), schema=schema)
        elif mime == scoring_server.CONTENT_TYPE_PARQUET:
            data = scoring_server.parse_parquet_input(io.BytesIO(body))
        else:
            try:
                decoded = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(f"body is not valid JSON: {exc}", 400) from None
            if not isinstance(decoded, dict):
                raise RequestError("body: must be a JSON object with one of dataframe_split, dataframe_records, "
                                   "instances or inputs (MLflow's scoring format)", 422)
            fields = {k: v for k, v in decoded.items() if k in scoring_server.SUPPORTED_FORMATS}
            data = scoring_server.infer_and_parse_data(fields, schema)
    except RequestError:
        raise
    except Exception as exc:  # MLflow's parsers raise MlflowException, pandas its own: all are the request's fault
        raise _refuse(exc) from None
    return enforce(data, meta)


def enforce(data: Any, meta: dict[str, Any]) -> Any:
    """``data`` as the model's signature wants it (MLflow's own check); unchanged without a signature."""
    schema = _schema(meta.get("schema"))
    if schema is None:
        return data
    from mlflow.models.utils import _enforce_schema

    try:
        return _enforce_schema(data, schema)
    except Exception as exc:
        raise _refuse(exc) from None


def parse_v2(request: dict[str, Any], meta: dict[str, Any]) -> Any:
    """The model input of a V2 request: a DataFrame of the 1-D tensors (one per column), or of one 2-D tensor
    whose columns are the signature's inputs in order; the tensor itself (or a dict of them) for a model whose
    signature is made of tensors."""
    import pandas as pd

    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("inputs: a V2 request needs a non-empty list of input tensors")
    tensors: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not all(k in tensor for k in ("name", "shape", "datatype", "data")):
            raise RequestError(f"inputs[{i}]: must be an object with name, shape, datatype and data")
        shape = tensor["shape"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise RequestError(f"inputs[{i}].shape: must be a list of non-negative integers")
        data = np.asarray(tensor["data"], dtype=object if tensor["datatype"] == "BYTES" else None)
        if data.dtype == object:
            data = np.array([v.decode() if isinstance(v, bytes) else v for v in data.reshape(-1)], dtype=object)
        if data.size != int(np.prod(shape)):
            raise RequestError(f"inputs[{i}].data: holds {data.size} values but shape {shape} needs "
                               f"{int(np.prod(shape))}")
        tensors[str(tensor["name"])] = data.reshape(shape)
    schema = _schema(meta.get("schema"))
    if schema is not None and schema.is_tensor_spec():
        data = next(iter(tensors.values())) if len(tensors) == 1 and not schema.has_input_names() else tensors
    elif len(tensors) == 1 and next(iter(tensors.values())).ndim == 2:
        matrix = next(iter(tensors.values()))
        names = meta.get("features") or list(range(matrix.shape[1]))
        if len(names) != matrix.shape[1]:
            raise RequestError(f"inputs[0].shape: a 2-D input needs {len(names)} columns (the model's inputs "
                               f"{', '.join(map(str, names))}), got {matrix.shape[1]}")
        data = pd.DataFrame(matrix, columns=names)
    else:
        if any(t.ndim != 1 for t in tensors.values()) or len({len(t) for t in tensors.values()}) > 1:
            raise RequestError("inputs: give one 1-D tensor per column, all of one length, or one 2-D tensor")
        data = pd.DataFrame(tensors)
    return enforce(data, meta)


def batchable(items: list[Any]) -> bool:
    """Whether these inputs can go to the model as one call: DataFrames with the same columns."""
    import pandas as pd

    return len(items) > 1 and all(isinstance(d, pd.DataFrame) for d in items) and \
        len({tuple(d.columns) for d in items}) == 1


class Outputs(dict):
    """A pyfunc's output as named columns (V2's output tensors) that remembers what the model returned, so that
    ``/invocations`` answers as MLflow's scoring server does (its ``predictions_to_json``): ``frame`` (a
    DataFrame: one object per row), ``series`` (one object per row, keyed by the Series' name, ``"0"`` when it
    has none), ``dict`` (the dict itself), ``values`` (an array, a list or a scalar: the values)."""

    def __init__(self, columns: dict[str, np.ndarray], kind: str, label: str | None = None):
        super().__init__(columns)
        self.kind, self.label = kind, label

    def __reduce__(self) -> Any:  # crosses Ray process boundaries with its kind
        return Outputs, (dict(self), self.kind, self.label)

    def split(self, sizes: list[int]) -> list[Outputs] | None:
        """The outputs of consecutive row blocks of ``sizes`` rows; None for a dict (MLflow answers it as it is,
        so it is not known to hold rows) and when some column is not one value per row."""
        total = sum(sizes)
        if self.kind == "dict" or not all(np.ndim(v) >= 1 and len(v) == total for v in self.values()):
            return None
        bounds = np.cumsum([0, *sizes])
        return [Outputs({c: v[a:b] for c, v in self.items()}, self.kind, self.label)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def predictions(self) -> Any:
        """What MLflow's scoring server puts under ``predictions`` for this output."""
        from fabric.serve.protocols import records

        if self.kind == "frame":
            return records(self)
        values = {c: v.tolist() for c, v in self.items()}
        if self.kind == "series":
            return [{self.label: value} for value in next(iter(values.values()))]
        return values if self.kind == "dict" else values["predictions"]


def columns_of(raw: Any) -> Outputs:
    """A pyfunc's output as named columns (V2 output tensors): a DataFrame's columns, a Series by its name, an
    array, a list or an unnamed Series as ``predictions``, a dict's entries."""
    import pandas as pd

    if isinstance(raw, pd.DataFrame):
        return Outputs({str(c): raw[c].to_numpy() for c in raw.columns}, "frame")
    if isinstance(raw, pd.Series):  # named as its signature names it
        name = "predictions" if raw.name is None else str(raw.name)
        return Outputs({name: raw.to_numpy()}, "series", "0" if raw.name is None else str(raw.name))
    if isinstance(raw, dict):
        return Outputs({str(k): _array(v) for k, v in raw.items()}, "dict")
    return Outputs({"predictions": _array(raw)}, "values")


def _array(values: Any) -> np.ndarray:
    """``values`` as an array; a ragged list as a 1-D array of its items."""
    try:
        return np.asarray(values)
    except ValueError:
        array = np.empty(len(values), dtype=object)
        array[:] = list(values)
        return array


def loggable(data: Any, meta: dict[str, Any], columns: dict[str, np.ndarray]) -> tuple[list[str], Any, dict] | None:
    """What the inference log keeps of a request answered through a pyfunc: the features (the signature's input
    columns when it has them, else the DataFrame's columns), the input rows as a DataFrame of those columns, and
    the outputs with one value per row (a 2-D output as ``NAME_0``, ``NAME_1``...; others left out). None for an
    input that is not a table (tensors), which the columnar log cannot hold."""
    import pandas as pd

    if not isinstance(data, pd.DataFrame) or not len(data):
        return None
    frame = data.set_axis([str(c) for c in data.columns], axis=1)
    features = [f for f in meta.get("features") or list(frame.columns) if f in frame.columns]
    outputs: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        values = np.asarray(values)
        if values.ndim == 1 and len(values) == len(frame):
            outputs[name] = values
        elif values.ndim == 2 and len(values) == len(frame):
            outputs.update({f"{name}_{k}": values[:, k] for k in range(values.shape[1])})
    return features, frame[features].reset_index(drop=True), outputs
