"""The wire formats and API keys, without Ray: every malformed request is a 4xx naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from fabric.serve.keys import KeyError_, Keyring, hash_key
from fabric.serve.protocols import (
    RequestError,
    matrix_from_mlflow,
    matrix_from_v2,
    mlflow_response,
    output_columns,
    v2_response,
)

FEATURES = ["a", "b"]


def test_v2_accepts_one_tensor_per_column_or_one_matrix():
    by_column = matrix_from_v2({"inputs": [
        {"name": "b", "shape": [2], "datatype": "FP64", "data": [3, 4]},
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
    ]}, FEATURES)
    matrix = matrix_from_v2({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 3, 2, 4]}]},
                            FEATURES)
    np.testing.assert_array_equal(by_column, matrix)
    assert by_column[:, 1].tolist() == [3.0, 4.0]  # column b, in the model's order


@pytest.mark.parametrize(("body", "status", "names"), [
    ({}, 422, "inputs"),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP64"}]}, 422, "inputs[0].data"),
    ({"inputs": [{"name": "a", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]}]}, 422, "inputs[0].datatype"),
    ({"inputs": [{"name": "a", "shape": [3], "datatype": "FP64", "data": [1, 2]}]}, 422, "inputs[0].data"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1]}]}, 422, "b"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}, 422, "2 columns"),
    ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": ["nan"]},
                 {"name": "b", "shape": [1], "datatype": "FP64", "data": [1]}]}, 422, "finite"),
])
def test_v2_errors_name_the_field(body, status, names):
    with pytest.raises(RequestError, match=names.replace("[", r"\[").replace("]", r"\]")) as caught:
        matrix_from_v2(body, FEATURES)
    assert caught.value.status == status


def test_mlflow_split_and_records_agree_and_errors_name_the_field():
    split = matrix_from_mlflow({"dataframe_split": {"columns": ["b", "a"], "data": [[3, 1], [4, 2]]}}, FEATURES)
    records = matrix_from_mlflow({"dataframe_records": [{"a": 1, "b": 3}, {"a": 2, "b": 4}]}, FEATURES)
    np.testing.assert_array_equal(split, records)
    assert split.tolist() == [[1.0, 3.0], [2.0, 4.0]]
    with pytest.raises(RequestError, match="missing feature column.*b"):
        matrix_from_mlflow({"dataframe_records": [{"a": 1}]}, FEATURES)
    with pytest.raises(RequestError, match=r"dataframe_split.data\[0\]"):
        matrix_from_mlflow({"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}, FEATURES)
    with pytest.raises(RequestError, match="dataframe_records.a"):
        matrix_from_mlflow({"dataframe_records": [{"a": "one", "b": 2}]}, FEATURES)
    with pytest.raises(RequestError, match="dataframe_split or dataframe_records"):
        matrix_from_mlflow({"instances": []}, FEATURES)


def test_responses_follow_each_protocol():
    output = output_columns("classification", np.array([[0.2, 0.8], [0.9, 0.1]]))
    v2 = v2_response("m", "3", output, "req-1")
    assert v2["model_version"] == "3" and v2["id"] == "req-1"
    assert v2["outputs"][0] == {"name": "prediction", "shape": [2], "datatype": "INT64", "data": [1, 0]}
    assert mlflow_response(output)["predictions"][0] == {"prediction": 1, "probability_0": 0.2, "probability_1": 0.8}


def test_keys_are_kept_hashed_with_roles(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops keys\nsha256:{hash_key('ops-secret')}:admin\n")
    ring = Keyring.load(str(keys_file), env="user-secret:predict")
    assert "user-secret" not in repr(ring.hashed) and len(ring) == 2
    assert ring.role("user-secret") == "predict" and ring.role("ops-secret") == "admin"
    assert ring.role("wrong") is None and ring.role(None) is None
    assert Keyring.allows("admin", "predict") and not Keyring.allows("predict", "admin")
    assert Keyring.allows("admin", "label") and not Keyring.allows("label", "predict")
    assert not Keyring.allows("predict", "label") and Keyring.load(None, env="k:label:ann").role("k") == "label"
    with pytest.raises(KeyError_, match="entry 1") as caught:
        Keyring.load(None, env="user-secret:root")
    assert "user-secret" not in str(caught.value)
