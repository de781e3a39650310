"""`fabric.monitor.check` on an inference log written by the real serving app, and its window reader and errors."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.helpers import free_ports, run_serve_app

MODEL, REPO = "monitor-bc", "monitor-bc"
SHIFTED = ["mean_radius", "mean_texture", "mean_perimeter"]  # a new device reports these x10


def _register(frame, name: str, repo: str, steps: int = 50) -> tuple[str, str]:
    """Commits ``frame`` to ``repo`` and registers a linear model tagged with that commit; returns (version, commit)."""
    from fabric import data
    from fabric.tabular.sample import register_linear

    data.init(repo)
    commit = data.write(f"lakefs://{repo}/main/table", frame, "breast cancer table")
    version = register_linear(frame, name, steps=steps, tags={
        "fabric.data.uri": f"lakefs://{repo}/{commit}/table", "fabric.data.commit": commit,
        "fabric.label_column": "label"})
    return version, commit


def _send(url: str, rows, prefix: str, size: int = 25) -> list[str]:
    ids = []
    for i in range(0, len(rows), size):
        request_id = f"{prefix}-{i // size}"
        answer = requests.post(f"{url}/invocations", json={"dataframe_records": rows.iloc[i:i + size].to_dict(
            orient="records")}, headers={"Authorization": "Bearer key", "x-request-id": request_id}, timeout=60)
        assert answer.status_code == 200, answer.text
        ids.append(request_id)
    return ids


def _logged(log_root: str, n: int):
    from fabric.serve.inference_log import read_log

    deadline = time.monotonic() + 30
    while True:
        log = read_log(MODEL, root=log_root)
        if len(log) >= n:
            return log
        assert time.monotonic() < deadline, f"the inference log holds {len(log)} rows, not {n}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def checks(ray_session, tmp_path_factory):
    """A calm window (300 rows, 100 of them labelled) checked, then a shifted one (269 rows, no labels) checked."""
    from mlflow import MlflowClient
    from ray import serve

    from fabric.monitor import check
    from fabric.runtime import setup_mlflow
    from fabric.serve.app import build_app
    from fabric.serve.config import ServeConfig
    from workloads.ingest_sklearn import load_frame

    setup_mlflow()
    frame = load_frame("breast_cancer")
    version, commit = _register(frame, MODEL, REPO)
    MlflowClient().set_registered_model_alias(MODEL, "champion", version)
    [port] = free_ports()
    log_root = str(tmp_path_factory.mktemp("inference-log"))
    cfg = ServeConfig.from_dict({"name": "monitor-serve", "port": port,
                                 "inference_log": {"path": log_root, "flush_s": 0.5},
                                 "models": [{"name": MODEL, "reload_interval_s": 3600, "num_cpus": 0.1}]})
    url = run_serve_app(build_app, cfg, "key:predict,label-key:label")
    try:
        order = np.random.default_rng(7).permutation(len(frame))
        features = frame.drop(columns=["label"])
        calm, shifted = features.iloc[order[:300]], features.iloc[order[300:]].copy()
        shifted[SHIFTED] *= 10
        ids = _send(url, calm, "calm")
        truth = frame["label"].to_numpy()[order[:100]]
        for flip in (0, 1):  # the true labels, then wrong ones later: the latest label wins
            body = {"labels": [{"request_id": ids[i // 25], "row": i % 25, "label": int(truth[i] ^ flip)}
                               for i in range(100)]}
            assert requests.post(f"{url}/v2/models/{MODEL}/labels", json=body, timeout=30,
                                 headers={"Authorization": "Bearer label-key"}).status_code == 200
            time.sleep(0.01)
        log = _logged(log_root, 300)
        calm_result = check(MODEL, last=300, log_root=log_root)
        _send(url, shifted, "shift")
        _logged(log_root, len(frame))
        shifted_result = check(MODEL, last=len(shifted), log_root=log_root)
        yield {"calm": calm_result, "shifted": shifted_result, "log": log, "ids": ids, "truth": truth,
               "version": version, "commit": commit, "log_root": log_root}
    finally:
        serve.shutdown()
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.mark.slow
def test_drift_is_found_in_the_shifted_window_only(checks):
    calm, shifted = checks["calm"], checks["shifted"]
    assert (calm.rows, shifted.rows, calm.reference_rows) == (300, 269, 569)
    assert calm.drifted_columns == [] and calm.drift_share == 0.0 and not calm.dataset_drift
    for name, column in calm.columns.items():  # K-S p-values for these small numeric samples; none below 0.05
        assert column["method"] == "K-S p_value" and column["threshold"] == 0.05, name
        assert not column["drifted"] and column["score"] >= 0.05, (name, column)
    assert not calm.prediction_drift["drifted"]

    assert shifted.drifted_columns == SHIFTED
    assert shifted.drift_share == pytest.approx(3 / 30) and not shifted.dataset_drift  # 0.1 < drift_share 0.5
    for name in SHIFTED:
        assert shifted.columns[name]["drifted"] and shifted.columns[name]["score"] < 1e-6, shifted.columns[name]
    assert all(not c["drifted"] and c["score"] >= 0.05 for n, c in shifted.columns.items() if n not in SHIFTED)
    assert shifted.data_quality["mean_radius"]["out_of_range"] > 0  # x10 leaves the reference's range
    assert shifted.data_quality["mean_smoothness"]["out_of_range"] == 0
    assert shifted.reference_commit == checks["commit"] and shifted.version == checks["version"]


@pytest.mark.slow
def test_quality_uses_only_the_rows_whose_labels_arrived(checks):
    calm, log = checks["calm"], checks["log"]
    assert calm.labelled_rows == 100 and calm.quality_note is None
    rows = {(r.request_id, r.row): r.outputs["prediction"] for r in log.itertuples()}
    predicted = np.array([rows[(checks["ids"][i // 25], i % 25)] for i in range(100)])
    flipped = checks["truth"] ^ 1  # the later, wrong labels are the ones that count
    assert calm.quality["accuracy"] == pytest.approx(float(np.mean(predicted == flipped)))
    assert calm.quality["accuracy"] < 0.5 < float(np.mean(predicted == checks["truth"]))
    assert set(calm.quality) == {"accuracy", "f1", "precision", "recall", "roc_auc"}

    shifted = checks["shifted"]
    assert shifted.quality is None and shifted.labelled_rows == 0
    assert shifted.quality_note == "0 of 269 rows labelled; quality needs at least 20"


@pytest.mark.slow
def test_each_check_is_saved_logged_and_in_the_workspace(checks, fabric_home):
    from evidently.ui.workspace import Workspace
    from mlflow import MlflowClient

    from fabric.monitor import workspace_dir

    shifted = checks["shifted"]
    assert Path(shifted.html_path).parent == fabric_home / "monitor" / "reports" / MODEL
    assert Path(shifted.html_path).name.endswith(f"-v{checks['version']}.html")
    snapshot = json.loads(Path(shifted.json_path).read_text())
    shares = [m["value"]["share"] for m in snapshot["metrics"] if m["config"]["type"].endswith(":DriftedColumnsCount")]
    assert shares == [shifted.drift_share]
    assert "<html" in Path(shifted.html_path).read_text()[:2000].lower()

    run = MlflowClient().get_run(shifted.mlflow_run_id)
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.name == "fabric-monitor"
    assert experiment.artifact_location == f"{(fabric_home / 'mlflow' / 'artifacts').as_uri()}/fabric-monitor"
    assert run.data.tags["fabric.model"] == MODEL and run.data.tags["fabric.model_version"] == checks["version"]
    assert run.data.tags["fabric.data.commit"] == checks["commit"]
    assert run.data.metrics["drift_share"] == pytest.approx(0.1) and run.data.metrics["drifted_columns"] == 3
    assert run.data.metrics["rows"] == 269 and checks["calm"].quality["accuracy"] == pytest.approx(
        MlflowClient().get_run(checks["calm"].mlflow_run_id).data.metrics["accuracy"])
    assert sorted(a.path for a in MlflowClient().list_artifacts(run.info.run_id, "report")) == sorted(
        f"report/{Path(p).name}" for p in (shifted.html_path, shifted.json_path))

    workspace = Workspace(str(workspace_dir()))
    [project] = [p for p in workspace.list_projects() if p.name == MODEL]
    assert str(project.id) == shifted.workspace_project_id and len(workspace.list_runs(project.id)) >= 2
    assert json.dumps(shifted.to_dict())  # JSON-safe


@pytest.mark.slow
def test_errors_name_what_is_missing(checks, fabric_home):
    from fabric.monitor import MonitorConfig, MonitorError, check
    from fabric.tabular.sample import register_linear
    from workloads.ingest_sklearn import load_frame

    root = checks["log_root"]
    with pytest.raises(MonitorError, match=f"unknown model 'nope'; registered models: .*{MODEL}"):
        check("nope", log_root=root)
    with pytest.raises(MonitorError, match=f"model {MODEL} has no version '99'"):
        check(MODEL, version="99", log_root=root)
    with pytest.raises(MonitorError, match=r"569 logged rows in the window \(last 1000 rows\), a check needs at "
                                           r"least 5000"):
        check(MODEL, cfg=MonitorConfig(min_rows=5000), log_root=root)
    with pytest.raises(MonitorError, match="not like 30m"):
        check(MODEL, since="soon", log_root=root)
    with pytest.raises(MonitorError, match="not both"):
        check(MODEL, last=10, since="1h", log_root=root)

    frame = load_frame("breast_cancer").head(100)
    quiet, _ = _register(frame, "monitor-quiet", "monitor-quiet", steps=2)
    with pytest.raises(MonitorError, match="model 'monitor-quiet' has no inference log yet"):
        check("monitor-quiet", version=quiet, log_root=root)
    gone, commit = _register(frame, "monitor-gone", "monitor-gone", steps=2)
    shutil.rmtree(fabric_home / "data" / "monitor-gone")
    with pytest.raises(MonitorError, match=f"commit {commit} of lakefs://monitor-gone/{commit}/table is missing"):
        check("monitor-gone", version=gone, log_root=root)
    untagged = register_linear(frame, "monitor-untagged", steps=2)
    with pytest.raises(MonitorError, match="has no fabric.data.uri tag, so its reference data is unknown"):
        check("monitor-untagged", version=untagged, log_root=root)


def test_window_reads_last_n_or_a_time_span_from_many_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fabric.monitor.window import read_labelled, read_window
    from fabric.serve.inference_log import InferenceLog, log_files, read_log, write_labels

    log = InferenceLog(str(tmp_path), flush_rows=10**9, flush_s=10**6)
    folder = tmp_path / "m" / "predictions"
    folder.mkdir(parents=True)
    legacy = [{"request_id": "old", "row": 0, "time": 1.0, "model": "m", "version": "1", "endpoint": "infer",
               "inputs": json.dumps({"a": -1.0, "b": 1.0}), "outputs": json.dumps({"prediction": 1})}]
    pq.write_table(pa.Table.from_pylist(legacy), folder / "part-00000000T000000-legacy.parquet")
    value = 0
    for f in range(12):  # 12 files; versions 1 and 2 interleaved; an extra column c nobody asks for
        for r in range(6):
            x = np.arange(value, value + 3, dtype="float64")[:, None] * [1.0, -1.0, 0.5]
            log.add(f"r{f}-{r}", "m", "1" if r % 2 == 0 else "2", "infer", ["a", "b", "c"], x,
                    {"prediction": (x[:, 0] % 2).astype("int64"), "probability_1": np.full(3, 0.5, "float32")})
            value += 3
        log.flush()
    write_labels("m", [{"request_id": "r11-4", "row": 2, "label": 1}, {"request_id": "old", "label": 0}],
                 str(tmp_path))
    _, paths = log_files("m", root=str(tmp_path))
    assert len(paths) == 13
    schema = pq.read_schema(paths[-1])
    assert schema.field("in.a").type == pa.float64() and schema.field("out.prediction").type == pa.int64()
    assert schema.field("out.probability_1").type == pa.float32() and "inputs" not in schema.names

    last = read_window("m", "1", ["a", "b"], ["prediction"], last=7, root=str(tmp_path))
    # version 1 answered requests r*-0, -2, -4 (3 rows each): the last file holds its 9 latest rows
    assert last.current["a"].tolist() == [200.0, 204.0, 205.0, 206.0, 210.0, 211.0, 212.0]
    assert last.current["b"].tolist() == [-a for a in last.current["a"]]
    assert last.columns_read == ["in.a", "in.b", "out.prediction"] and list(last.current.columns) == [
        "a", "b", "prediction"]
    assert (last.rows, last.labelled_rows, last.spec) == (7, 1, {"last": 7})
    assert last.labelled.to_dict("records") == [{"prediction": 0, "label": 1.0}]

    everything = read_window("m", "1", ["a", "b"], last=1000, root=str(tmp_path))
    assert everything.rows == 12 * 9 + 1 and -1.0 in everything.current["a"].tolist()  # the JSON-layout file too
    assert everything.labelled_rows == 2
    sampled = read_window("m", "1", ["a", "b"], last=1000, root=str(tmp_path), max_rows=5, seed=3)
    assert len(sampled.current) == 5 and sampled.rows == 109
    assert sampled.current.equals(read_window("m", "1", ["a", "b"], last=1000, root=str(tmp_path), max_rows=5,
                                              seed=3).current)

    recent = read_window("m", "2", ["a"], since="1h", root=str(tmp_path))
    assert recent.rows == 12 * 9 and recent.spec["since"] == "1h"
    assert recent.spec["to"] - recent.spec["from"] == 3600
    assert read_window("m", "2", ["a"], since="1h", root=str(tmp_path), now=time.time() + 7200).rows == 0

    # continuous training's reader: labelled rows of any version, newest last, features a file lacks as missing
    write_labels("m", [{"request_id": "r3-1", "row": 0, "label": 0}, {"request_id": "r3-1", "row": 0, "label": 1}],
                 str(tmp_path))  # the later label wins
    labelled = read_labelled("m", ["a", "c"], root=str(tmp_path))
    assert labelled.columns.tolist() == ["a", "c", "label", "time"]
    assert labelled["label"].tolist() == [0.0, 1.0, 1.0] and labelled["time"].is_monotonic_increasing
    assert np.isnan(labelled["c"].iloc[0]) and labelled["a"].tolist() == [-1.0, 57.0, 212.0]  # old, r3-1, r11-4
    assert labelled["c"].iloc[1:].tolist() == [28.5, 106.0]
    assert read_labelled("m", ["a"], last=2, root=str(tmp_path))["a"].tolist() == [57.0, 212.0]
    assert read_labelled("m", ["a"], after=1.0, root=str(tmp_path))["a"].tolist() == [57.0, 212.0]
    assert read_labelled("m", ["a"], since=time.time() + 60, root=str(tmp_path)).empty

    decoded = read_log("m", root=str(tmp_path))  # both layouts, decoded as before
    assert decoded.columns.tolist() == ["request_id", "row", "time", "model", "version", "endpoint", "inputs",
                                        "outputs", "label"]
    assert decoded["inputs"].iloc[0] == {"a": -1.0, "b": 1.0} and decoded["label"].iloc[0] == 0
    assert decoded["inputs"].iloc[1] == {"a": 0.0, "b": -0.0, "c": 0.0}
    assert decoded["outputs"].iloc[1] == {"prediction": 0, "probability_1": 0.5}


def test_config_refuses_a_contradictory_or_unreadable_window():
    from fabric.config import ConfigError
    from fabric.monitor import MonitorConfig, parse_span

    assert (parse_span("30m"), parse_span("2d"), MonitorConfig().last) == (1800, 172800, 1000)
    assert MonitorConfig.from_yaml(None, ["last=null", "since=2h"]).since == "2h"
    with pytest.raises(ConfigError, match="either last .* or since .*, not both"):
        MonitorConfig.from_dict({"since": "1h"})
    with pytest.raises(ConfigError, match="since: .*'soon' is not like 30m"):
        MonitorConfig.from_dict({"last": None, "since": "soon"})
