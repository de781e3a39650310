"""The request and response paths of fabric/serve/wire.py without Ray: tritonclient's binary tensors, every input
format of ``mlflow models serve``, and any MLflow model's signature."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fabric.serve.protocols import RequestError, output_columns, v2_response
from fabric.serve.wire import decode_mlflow, decode_v2, encode_v2

FABRIC = {"task": "classification", "features": ["a", "b"], "n_outputs": 2, "model_type": "linear"}


def _request(**headers: str) -> SimpleNamespace:
    return SimpleNamespace(headers={k.lower().replace("_", "-"): v for k, v in headers.items()},
                           state=SimpleNamespace())


def test_tritonclient_default_binary_request_and_response_round_trip():
    import tritonclient.http as triton

    x = np.array([[1.5, 2.5], [3.0, -4.0]])
    tensor = triton.InferInput("x", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x)  # binary_data=True: tritonclient's default
    a = triton.InferInput("a", [2], "FP32")
    a.set_data_from_numpy(x[:, 0].astype("float32"))
    b = triton.InferInput("b", [2], "INT64")
    b.set_data_from_numpy(np.array([3, 4]))
    for inputs, outputs in (([tensor], [triton.InferRequestedOutput("prediction"),
                                        triton.InferRequestedOutput("probability_1", binary_data=False)]),
                            ([b, a], None)):
        body, json_size = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
        assert json_size is not None  # the binary extension is what the client sends
        request = _request(inference_header_content_length=str(json_size))
        matrix = decode_v2(body, FABRIC, request)
        assert matrix.shape == (2, 2) and matrix.dtype == np.float64
        raw = np.array([[0.25, 0.75], [0.9, 0.1]])
        answer = encode_v2(v2_response("m", "1", output_columns("classification", raw), "r1"), request)
        header = answer.headers.get("inference-header-content-length")
        assert header is not None
        result = triton.InferenceServerClient.parse_response_body(answer.body, header_length=int(header))
        assert result.as_numpy("prediction").tolist() == [1, 0]
        np.testing.assert_array_equal(result.as_numpy("probability_1"), raw[:, 1])
        binary = {o["name"]: "binary_data_size" in o.get("parameters", {}) for o in result.get_response()["outputs"]}
        assert binary["prediction"] and (binary["probability_1"] is (outputs is None))
        assert list(binary) == (["prediction", "probability_0", "probability_1"] if outputs is None
                                else ["prediction", "probability_1"])  # only the outputs asked for, as Triton
    np.testing.assert_array_equal(_decode_binary([b, a], FABRIC), [[1.5, 3], [3.0, 4]])


def _decode_binary(inputs, meta):
    import tritonclient.http as triton

    body, json_size = triton.InferenceServerClient.generate_request_body(inputs)
    return decode_v2(body, meta, _request(inference_header_content_length=str(json_size)))


def test_binary_requests_that_do_not_add_up_are_400s_naming_the_field():
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64",
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    with pytest.raises(RequestError, match="binary_data_size") as caught:
        decode_v2(header + b"\0" * 8, FABRIC, _request(inference_header_content_length=str(len(header))))
    assert caught.value.status == 400
    with pytest.raises(RequestError, match="belong to no input"):
        decode_v2(header + b"\0" * 24, FABRIC, _request(inference_header_content_length=str(len(header))))
    with pytest.raises(RequestError, match="Inference-Header-Content-Length"):
        decode_v2(header, FABRIC, _request(inference_header_content_length="9999"))
    plain = decode_v2(header + np.array([1.0, 2.0]).tobytes(), FABRIC,
                      _request(inference_header_content_length=str(len(header))))
    assert plain.tolist() == [[1.0, 2.0]]
    assert encode_v2({"outputs": []}, _request()) == {"outputs": []}  # JSON in, JSON out


ROWS = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})


@pytest.mark.parametrize(("body", "content_type"), [
    ({"dataframe_split": ROWS.to_dict(orient="split")}, "application/json"),
    ({"dataframe_records": ROWS.to_dict(orient="records")}, "application/json"),
    ({"instances": ROWS.to_dict(orient="records")}, "application/json"),
    ({"instances": [[1.0, 3.0], [2.0, 4.0]]}, "application/json"),
    ({"inputs": {"a": [1.0, 2.0], "b": [3, 4]}}, "application/json"),
    ({"inputs": [[1.0, 3.0], [2.0, 4.0]]}, "application/json; charset=utf-8"),
    (ROWS[["b", "a"]].to_csv(index=False), "text/csv"),
])
def test_every_mlflow_input_format_gives_the_same_matrix(body, content_type):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    matrix = decode_mlflow(raw, FABRIC, _request(content_type=content_type))
    np.testing.assert_array_equal(matrix, [[1.0, 3.0], [2.0, 4.0]])


@pytest.mark.parametrize(("body", "message"), [
    (b'{"instances": [{"a": 1}]}', "missing feature column"),
    (b'{"inputs": [[1, 2, 3]]}', "2 values"),
    (b'{"nothing": 1}', "dataframe_split"),
    (b'{"inputs": [["x", "y"]]}', "number"),
    (b"[1, 2]", "dataframe_split"),
])
def test_mlflow_formats_refuse_with_a_4xx_naming_the_problem(body, message):
    with pytest.raises(RequestError, match=message) as caught:
        decode_mlflow(body, FABRIC, _request(content_type="application/json"))
    assert 400 <= caught.value.status < 500


def test_any_mlflow_model_is_parsed_by_mlflow_and_checked_against_its_signature():
    from mlflow.models import infer_signature

    from fabric.serve.pyfunc_io import columns_of

    schema = infer_signature(pd.DataFrame({"a": [1.0], "city": ["x"]})).inputs
    meta = {"task": "pyfunc", "features": ["a", "city"], "schema": schema.to_json(), "model_type": "sklearn"}
    csv = decode_mlflow(b"a,city\n1.5,Paris\n", meta, _request(content_type="text/csv"))
    assert csv.to_dict(orient="records") == [{"a": 1.5, "city": "Paris"}]
    frame = decode_mlflow(b'{"dataframe_records": [{"a": 2, "city": "Oslo"}]}', meta, _request())
    assert frame["a"].dtype == np.float64
    with pytest.raises(RequestError, match="city") as caught:
        decode_mlflow(b'{"dataframe_records": [{"a": 2}]}', meta, _request())
    assert caught.value.status == 422
    import tritonclient.http as triton

    a, city = triton.InferInput("a", [2], "FP64"), triton.InferInput("city", [2], "BYTES")
    a.set_data_from_numpy(np.array([1.0, 2.0]))
    city.set_data_from_numpy(np.array(["Rome", "Lima"], dtype=object))
    v2 = _decode_binary([a, city], meta)
    assert v2.to_dict(orient="list") == {"a": [1.0, 2.0], "city": ["Rome", "Lima"]}
    assert list(columns_of(np.array([1, 0]))) == ["predictions"]
    assert list(columns_of(pd.DataFrame({"p": [1], "q": ["x"]}))) == ["p", "q"]


def test_v2_metadata_of_any_mlflow_model_lists_the_outputs_infer_returns():
    from mlflow.models import infer_signature

    from fabric.serve.protocols import v2_metadata
    from fabric.serve.pyfunc_io import columns_of, describe

    x = pd.DataFrame({"a": [1.0, 2.0]})
    outputs = [pd.DataFrame({"label": [1, 0], "score": [0.5, 0.25]}), np.array([1, 0]), np.ones((2, 3)),
               {"total": np.array([1.0, 2.0]), "tag": ["x", "y"]}, pd.Series([0.5, 1.5], name="y")]
    for output in outputs:
        signature = infer_signature(x, output)
        metadata = SimpleNamespace(get_input_schema=lambda s=signature: s.inputs,
                                   get_output_schema=lambda s=signature: s.outputs,
                                   flavors={"sklearn": {}, "python_function": {}})
        listed = v2_metadata("m", ["1"], describe(SimpleNamespace(metadata=metadata)))["outputs"]
        answered = v2_response("m", "1", columns_of(output), None)["outputs"]  # what /infer returns
        assert [(o["name"], o["datatype"]) for o in listed] == [(o["name"], o["datatype"]) for o in answered]
        assert all(len(o["shape"]) == len(a["shape"]) for o, a in zip(listed, answered, strict=True))
    unsigned = SimpleNamespace(get_input_schema=lambda: None, get_output_schema=lambda: None, flavors={})
    assert v2_metadata("m", ["1"], describe(SimpleNamespace(metadata=unsigned)))["outputs"] == [
        {"name": "predictions", "datatype": "BYTES", "shape": [-1]}]


def test_invocations_answer_any_model_output_as_mlflows_scoring_server():
    """What /invocations answers (split per request when merged) is what MLflow's predictions_to_json writes."""
    import io

    from mlflow.pyfunc.scoring_server import predictions_to_json

    from fabric.serve.model_server import _pyfunc_batch
    from fabric.serve.protocols import mlflow_response
    from fabric.serve.pyfunc_io import columns_of

    def mlflow_answer(raw):
        out = io.StringIO()
        predictions_to_json(raw, out)
        return json.loads(out.getvalue())

    outputs = {
        "frame": lambda d: pd.DataFrame({"label": d["x"] > 0, "score": d["x"] * 2}),
        "series": lambda d: d["x"] * 2,
        "unnamed series": lambda d: pd.Series(d["x"].to_numpy() * 2),
        "array": lambda d: (d["x"] * 2).to_numpy(),
        "2-D array": lambda d: np.column_stack([d["x"], d["x"] * 2]),
        "list": lambda d: [f"row {x}" for x in d["x"]],
        "dict": lambda d: {"total": (d["x"] * 2).tolist(), "n": len(d), "name": "sum"},
        "dict of rows": lambda d: {"double": d["x"].to_numpy() * 2},
    }
    inputs = [pd.DataFrame({"x": [1.0, -2.0]}), pd.DataFrame({"x": [3.5]})]
    for kind, predict in outputs.items():
        pyfunc, meta = SimpleNamespace(predict=predict), {}
        for _ in range(2):  # the second time, a model that did not split is not merged again
            answers = _pyfunc_batch(meta, pyfunc, inputs)
            assert [mlflow_response(a) for a in answers] == [mlflow_answer(predict(d)) for d in inputs], kind
        assert mlflow_response(columns_of(predict(inputs[0]))) == mlflow_answer(predict(inputs[0])), kind


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/json; format=pandas-split",
                                          "text/csv; charset=latin-1"])
def test_a_content_type_mlflow_refuses_is_a_415_with_its_message(content_type):
    from mlflow.pyfunc import scoring_server

    theirs = scoring_server.invocations(b'{"inputs": [[1, 2]]}', content_type, None, None)
    for meta in (FABRIC, {"task": "pyfunc", "features": None, "schema": None}):
        with pytest.raises(RequestError) as caught:
            decode_mlflow(b'{"inputs": [[1, 2]]}', meta, _request(content_type=content_type))
        assert (caught.value.status, str(caught.value)) == (theirs.status, theirs.response) == (415, theirs.response)
    assert decode_mlflow(b'{"inputs": [[1, 2]]}', FABRIC, _request()).tolist() == [[1.0, 2.0]]  # no header: JSON
