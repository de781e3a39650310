"""What the gateway's predict routes call: a request's body and headers in, the model's input out; the model's
output columns in, the response out. Picks the path by protocol and by the model:

* a fabric model (``meta["task"]`` classification or regression) gets a float64 feature matrix. V2 JSON and
  MLflow's ``dataframe_split``/``dataframe_records`` are read without pandas (:mod:`fabric.serve.protocols`);
  ``instances``, ``inputs``, CSV and Parquet through MLflow's own scoring-server parser.
* any other MLflow model (``meta["task"] == "pyfunc"``) gets what MLflow's scoring server would hand it, checked
  against its signature (:mod:`fabric.serve.pyfunc_io`).

V2 requests may use the binary tensor data extension (:mod:`fabric.serve.v2_binary`); the outputs the request asks
for in binary are answered so. An ``/invocations`` Content-Type that ``mlflow models serve`` refuses is refused
the same way (415, its message).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request, Response

from fabric.serve import pyfunc_io, v2_binary
from fabric.serve.protocols import RequestError, matrix_from_data, matrix_from_mlflow, matrix_from_v2

__all__ = ["decode_mlflow", "decode_v2", "encode_v2", "mlflow_content_type"]

FAST_MLFLOW = ("dataframe_split", "dataframe_records")
MLFLOW_TYPES = ("text/csv", "application/json", "application/vnd.apache.parquet")  # scoring_server.CONTENT_TYPES


def decode_v2(body: bytes, meta: dict[str, Any], request: Request) -> Any:
    """The model input of a V2 infer request (JSON, or JSON header plus binary tensors); remembers on
    ``request.state`` which outputs to answer in binary."""
    decoded = v2_binary.decode_request(body, request.headers.get(v2_binary.HEADER))
    request.state.v2_outputs = v2_binary.requested_outputs(decoded)
    if meta["task"] == pyfunc_io.KIND:
        return pyfunc_io.parse_v2(decoded, meta)
    return matrix_from_v2(decoded, meta["features"])


def encode_v2(response: dict[str, Any], request: Request) -> dict[str, Any] | Response:
    """The V2 response with the outputs the request named, as JSON, or as JSON header plus binary outputs when
    the request asked for them."""
    named, binary, default = getattr(request.state, "v2_outputs", (None, set(), False))
    if named is None and not default:
        return response
    content, header_length = v2_binary.encode_response(response, named, binary, default)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


def mlflow_content_type(header: str | None) -> str:
    """The media type of an ``/invocations`` request (JSON when it has none), refused with 415 and the message of
    ``mlflow models serve`` when that refuses it: a type other than JSON, CSV or Parquet, a charset other than
    UTF-8, a parameter other than charset."""
    if not header:
        return "application/json"
    parts = [part.strip() for part in header.split(";")]
    mime, params = parts[0].lower(), dict(part.partition("=")[::2] for part in parts[1:] if part)
    if mime in MLFLOW_TYPES and set(params) <= {"charset"} and params.get("charset", "utf-8").lower() == "utf-8":
        return mime
    from mlflow.pyfunc import scoring_server

    if params.get("charset", "utf-8").lower() != "utf-8":
        raise RequestError("The scoring server only supports UTF-8", 415)
    if set(params) - {"charset"}:
        raise RequestError(f"Unrecognized content type parameters: {', '.join(sorted(set(params) - {'charset'}))}. "
                           f"{scoring_server.SCORING_PROTOCOL_CHANGE_INFO}", 415)
    raise RequestError(f"This predictor only supports the following content types: Types: "
                       f"{scoring_server.CONTENT_TYPES}. Got '{header}'.", 415)


def decode_mlflow(body: bytes, meta: dict[str, Any], request: Request) -> Any:
    """The model input of an ``/invocations`` request, in any format ``mlflow models serve`` accepts."""
    content_type = mlflow_content_type(request.headers.get("content-type"))
    if meta["task"] == pyfunc_io.KIND:
        return pyfunc_io.parse_mlflow(body, content_type, meta)
    features = meta["features"]
    if content_type == "application/json":
        try:
            decoded = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"body is not valid JSON: {exc}", 400) from None
        if not isinstance(decoded, dict) or any(k in decoded for k in FAST_MLFLOW):
            return matrix_from_mlflow(decoded, features)
    # instances, inputs, CSV, Parquet: MLflow's parser, without a signature (a fabric model checks its own)
    return matrix_from_data(pyfunc_io.parse_mlflow(body, content_type, {"schema": None}), features)
