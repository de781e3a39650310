"""The binary tensor data extension of the Open Inference Protocol v2, as Triton and KServe speak it (and as
``tritonclient`` sends by default): a JSON header, then each tensor's raw little-endian bytes.

A request with the ``Inference-Header-Content-Length: N`` header holds N bytes of JSON, then the bytes of every
input whose ``parameters.binary_data_size`` is set, in the order of ``inputs``. :func:`decode_request` turns such a
body into the plain JSON form (``data`` as a numpy array) that :func:`fabric.serve.protocols.matrix_from_v2` reads.
The response holds the outputs the request names (all when it names none), each in binary when the request asks
(``outputs[i].parameters.binary_data``, or ``parameters.binary_data_output`` when it names none), as Triton does:
:func:`encode_response` writes it so, with the same header.
Pure functions, no Ray.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from fabric.serve.protocols import RequestError

__all__ = ["HEADER", "decode_request", "encode_response", "requested_outputs"]

HEADER = "inference-header-content-length"
DTYPES = {"BOOL": np.bool_, "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


def decode_request(body: bytes, header_length: str | None) -> dict[str, Any]:
    """The V2 request in ``body`` as a dict; binary inputs get their ``data`` from the bytes after the header."""
    if header_length is None:
        head, rest = body, b""
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise RequestError(f"Inference-Header-Content-Length: {header_length!r} is not a length within the "
                               f"body's {len(body)} bytes", 400)
        head, rest = body[:int(header_length)], body[int(header_length):]
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not valid JSON: {exc}", 400) from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        if rest:
            raise RequestError("inputs: binary data came with no list of input tensors", 400)
        return request
    offset = 0
    for i, tensor in enumerate(request["inputs"]):
        size = tensor.get("parameters", {}).get("binary_data_size") if isinstance(tensor, dict) \
            and isinstance(tensor.get("parameters"), dict) else None
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(rest):
            raise RequestError(f"inputs[{i}].parameters.binary_data_size: {size!r} bytes are not in the body "
                               f"({len(rest) - offset} left after the header)", 400)
        tensor["data"] = _from_bytes(rest[offset:offset + size], tensor.get("datatype"), f"inputs[{i}]")
        offset += size
    if offset != len(rest):
        raise RequestError(f"body: {len(rest) - offset} bytes after the header belong to no input's "
                           "binary_data_size", 400)
    return request


def _from_bytes(raw: bytes, datatype: Any, where: str) -> np.ndarray:
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise RequestError(f"{where}: a BYTES element's 4-byte length is cut off", 400)
            (n,) = struct.unpack_from("<I", raw, offset)
            items.append(raw[offset + 4:offset + 4 + n])
            offset += 4 + n
        if offset != len(raw):
            raise RequestError(f"{where}: the last BYTES element is cut off", 400)
        return np.array(items, dtype=object)
    if datatype not in DTYPES:
        raise RequestError(f"{where}.datatype: {datatype!r} cannot be sent as binary data here "
                           f"({', '.join([*DTYPES, 'BYTES'])})", 422)
    dtype = np.dtype(DTYPES[datatype])
    if len(raw) % dtype.itemsize:
        raise RequestError(f"{where}: {len(raw)} bytes is not a whole number of {datatype} values", 400)
    return np.frombuffer(raw, dtype=dtype)


def requested_outputs(request: Any) -> tuple[list[str] | None, set[str], bool]:
    """The outputs the request names (None: all), those it wants in binary, and whether the others default to
    binary (``parameters.binary_data_output``)."""
    if not isinstance(request, dict):
        return None, set(), False
    parameters = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    default = parameters.get("binary_data_output") is True
    named: list[str] | None = None
    binary: set[str] = set()
    if isinstance(request.get("outputs"), list) and request["outputs"]:
        named = []
        for i, output in enumerate(request["outputs"]):
            if not isinstance(output, dict) or "name" not in output:
                raise RequestError(f"outputs[{i}]: must be an object with a name", 400)
            named.append(str(output["name"]))
            asked = output["parameters"].get("binary_data") if isinstance(output.get("parameters"), dict) else None
            if asked is True or (asked is None and default):  # an output's own parameter overrides the default
                binary.add(str(output["name"]))
    return named, binary, default


def encode_response(response: dict[str, Any], named: list[str] | None, binary: set[str],
                    default: bool) -> tuple[bytes, int | None]:
    """The response body with only the ``named`` outputs (all when None), and, when any of them is binary, the
    length of its JSON header (else None)."""
    by_name = {o["name"]: o for o in response["outputs"]}
    unknown = [n for n in named or [] if n not in by_name]
    if unknown:
        raise RequestError(f"outputs: {', '.join(unknown)} not among the model's outputs "
                           f"({', '.join(by_name)})", 400)
    chunks: list[bytes] = []
    outputs = []
    for output in [by_name[n] for n in named] if named is not None else response["outputs"]:
        if output["name"] in binary or (default and named is None):
            raw = _to_bytes(np.asarray(output["data"]), output["datatype"])
            chunks.append(raw)
            output = {k: v for k, v in output.items() if k != "data"}
            output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
        outputs.append(output)
    head = json.dumps({**response, "outputs": outputs}).encode()
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]
        return b"".join(struct.pack("<I", len(v)) + v for v in items)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
