"""A drift check over 1,000,000 logged rows of 30 features: `fabric.monitor.check` next to Evidently alone.

    python bench/monitor.py [--rows 1000000] [--features 30] [--file-rows 20000] [--reference-rows 100000]

Setup (not timed), in a throw-away FABRIC_HOME: commit a reference table (``--reference-rows`` rows, 30 float
features and a label) to the local versioned store; register a linear classifier trained on it whose version tags
point at that commit; write an inference log of ``--rows`` rows exactly as the serving gateway writes it
(`InferenceLog.add` per 100-row request, one Parquet file per ``--file-rows`` rows, typed ``in.*``/``out.*``
columns), where the last 30% of the traffic has 3 features on another scale; labels arrive for 5% of requests.
One untimed warm-up check loads the libraries and the model.

Then, in the same process, each ``--repeats`` times, alternating:

* fabric: ``check(MODEL, last=ROWS)``: the whole log is the window. It includes resolving the champion in the
  MLflow registry, reading the reference commit (feature + label columns) and predicting on it with the model
  (loaded once per process, so a warm check does not reload it), reading the log window (pass 1: the time,
  request_id and row columns of all 1M rows, and the labels; pass 2: the feature and output columns of each file
  holding sampled rows, keeping only those rows), sampling both sides to ``max_rows`` (50,000), the Evidently
  run, saving the HTML and JSON, logging the MLflow run, and adding the snapshot to the Evidently workspace.
* evidently: the same Evidently calls on the same in-memory pandas frames the check analysed (the same seeded
  samples): ``Dataset.from_pandas`` (column types inferred from the reference, as the check does) + ``Report(
  [DataDriftPreset(...), ValueDrift("prediction"), missing / out-of-range / new-category counts per column],
  include_tests=True).run(current, reference)``, the quality
  ``Report`` on the labelled rows, and ``snapshot.dict()`` of both ("compute"); then ``save_html`` + ``save_json``
  of the drift snapshot ("files") and ``Workspace.add_run`` ("workspace"), timed apart.

Prints the medians and the ratios. The headline ratio (target: at most 1.25) compares like with like: fabric's check
against Evidently producing the same things from the same frames, computing the report, saving it as HTML and JSON
and adding it to a workspace (fabric also logs an MLflow run, which Evidently alone does not). Beside it: fabric
against Evidently computing and saving only, and computing only; the fastest runs of each; and the seconds of
fabric's own steps inside the check (registry and reference, log window, MLflow; timed by the check itself, so
less disturbed by other load on a shared machine than the wall-clock ratios). Also the peak RSS of the process
during the fabric checks and its growth over the RSS before them, and as its last line one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import threading
import time

HOME = tempfile.mkdtemp(prefix="fabric-bench-monitor-")
os.environ["FABRIC_HOME"] = HOME  # before fabric is imported: never touch the user's data
for _name in ("LAKEFS_ENDPOINT", "LAKECTL_SERVER_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
    os.environ.pop(_name, None)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402

MODEL, REPO = "bench-monitor", "bench-monitor"
TARGET_RATIO = 1.25
SHIFTED = 3  # features on another scale in the last 30% of the traffic


def make_reference(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=rng.uniform(-5, 5, features), scale=rng.uniform(0.5, 3, features), size=(rows, features))
    frame = pd.DataFrame(x, columns=[f"f{i:02d}" for i in range(features)])
    weights = rng.normal(size=features) / np.sqrt(features)
    logits = ((x - x.mean(0)) / x.std(0)) @ weights
    frame["label"] = (rng.random(rows) < 1 / (1 + np.exp(-2 * logits))).astype("int64")
    return frame


def write_log(reference: pd.DataFrame, rows: int, file_rows: int, pyfunc: object, version: str) -> int:
    """The gateway's way: ``InferenceLog.add`` per 100-row request; returns the number of labels written."""
    from fabric.serve.inference_log import InferenceLog, write_labels

    rng = np.random.default_rng(1)
    features = [c for c in reference.columns if c != "label"]
    base, truth = reference[features].to_numpy(), reference["label"].to_numpy()
    log = InferenceLog(flush_rows=file_rows, flush_s=10**6)
    labels, batch = [], 100
    chunk = 100_000
    for start in range(0, rows, chunk):
        take = rng.integers(0, len(base), min(chunk, rows - start))
        x = base[take] + rng.normal(scale=0.05, size=(len(take), len(features)))
        if start >= 0.7 * rows:
            x[:, :SHIFTED] *= 3.0  # a new device reports these features on another scale
        out = pyfunc.predict(pd.DataFrame(x, columns=features))
        columns = {c: out[c].to_numpy() for c in out.columns}
        for i in range(0, len(x), batch):
            request_id = f"req-{start + i:08d}"
            log.add(request_id, MODEL, version, "infer", features, x[i:i + batch],
                    {c: v[i:i + batch] for c, v in columns.items()})
            if rng.random() < 0.05:
                labels += [{"request_id": request_id, "row": r, "label": int(truth[take[i + r]])}
                           for r in range(len(x[i:i + batch]))]
    log.flush()
    for i in range(0, len(labels), 10_000):
        write_labels(MODEL, labels[i:i + 10_000])
    return len(labels)


class PeakRSS:
    """Samples this process's RSS every 5 ms while active."""

    def __init__(self) -> None:
        self.process, self.peak, self.running = psutil.Process(), 0, False

    def __enter__(self) -> PeakRSS:
        self.running, self.peak = True, self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()


def evidently_alone(plan: object, current: pd.DataFrame, reference: pd.DataFrame, labelled: pd.DataFrame | None,
                    folder: str) -> dict[str, float]:
    """The Evidently calls of a check, on ready frames; seconds of compute, files and workspace."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.ui.workspace import Workspace

    started = time.perf_counter()
    columns = [*plan.features, "prediction"]
    reference_dataset = Dataset.from_pandas(reference[columns], data_definition=DataDefinition())  # infers types
    drift = Report(plan.drift_metrics, include_tests=True).run(
        Dataset.from_pandas(current[columns], data_definition=reference_dataset.data_definition), reference_dataset)
    drift.dict()
    if labelled is not None:
        quality = Report(plan.quality_metrics, include_tests=True).run(
            Dataset.from_pandas(labelled[plan.quality_columns], data_definition=plan.quality_definition),
            Dataset.from_pandas(reference[plan.quality_columns], data_definition=plan.quality_definition))
        quality.dict()
    compute = time.perf_counter()
    drift.save_html(os.path.join(folder, "alone.html"))
    drift.save_json(os.path.join(folder, "alone.json"))
    files = time.perf_counter()
    workspace = Workspace(os.path.join(folder, "workspace"))
    project = next(iter(workspace.list_projects()), None) or workspace.create_project("alone")
    workspace.add_run(project.id, drift, include_data=False)
    done = time.perf_counter()
    return {"compute": compute - started, "files": files - compute, "workspace": done - files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="logged rows (the check's window)")
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--file-rows", type=int, default=20_000, help="rows per inference-log file")
    parser.add_argument("--reference-rows", type=int, default=100_000, help="rows of the reference commit")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each side")
    args = parser.parse_args()

    import mlflow

    from fabric import data
    from fabric.monitor import MonitorConfig, analysis, check
    from fabric.monitor.check import _labels_for
    from fabric.monitor.reference import load_reference
    from fabric.monitor.window import read_window
    from fabric.runtime import setup_mlflow
    from fabric.serve.inference_log import log_files
    from fabric.tabular.sample import register_linear

    try:
        setup_mlflow()
        reference = make_reference(args.reference_rows, args.features)
        data.init(REPO)
        commit = data.write(f"lakefs://{REPO}/main/reference", reference, "bench reference")
        version = register_linear(reference, MODEL, steps=30, tags={
            "fabric.data.uri": f"lakefs://{REPO}/{commit}/reference", "fabric.data.commit": commit,
            "fabric.label_column": "label"})
        mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", version)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
        labels = write_log(reference, args.rows, args.file_rows, pyfunc, version)
        fs, paths = log_files(MODEL)
        log_mb = sum(fs.get_file_info(p).size for p in paths) / 1e6
        del reference, pyfunc
        gc.collect()

        cfg = MonitorConfig(last=args.rows)
        check(MODEL, cfg=cfg)  # warm-up: imports, the model, the page cache
        ref = load_reference(MODEL, None, cfg.max_rows, cfg.seed)  # the frames the check analyses (same seeds)
        window = read_window(MODEL, ref.version, ref.features, ref.outputs, last=cfg.last, max_rows=cfg.max_rows,
                             seed=cfg.seed)
        labelled = _labels_for(window.labelled, ref) if window.labelled_rows >= cfg.min_labelled_rows else None
        scratch = tempfile.mkdtemp(dir=HOME)

        fabric_s, alone, results = [], [], []
        baseline = psutil.Process().memory_info().rss
        peak = 0
        for repeat in range(args.repeats):
            for side in ("fabric", "evidently") if repeat % 2 == 0 else ("evidently", "fabric"):
                gc.collect()
                if side == "fabric":
                    with PeakRSS() as rss:
                        started = time.perf_counter()
                        results.append(check(MODEL, cfg=cfg))
                        fabric_s.append(time.perf_counter() - started)
                    peak = max(peak, rss.peak)
                else:  # fresh metric objects each time, as the check makes (Evidently resolves them in place)
                    plan = analysis.plan(ref, cfg, labelled is not None)
                    alone.append(evidently_alone(plan, window.current, ref.frame, labelled, scratch))
    finally:
        shutil.rmtree(HOME, ignore_errors=True)

    result = results[-1]
    fabric = statistics.median(fabric_s)
    parts = {k: statistics.median(a[k] for a in alone) for k in ("compute", "files", "workspace")}
    compute_files = parts["compute"] + parts["files"]
    every = compute_files + parts["workspace"]
    best = min(fabric_s) / min(a["compute"] + a["files"] + a["workspace"] for a in alone)
    print(f"{args.rows:,} logged rows in {len(paths)} files ({log_mb:.0f} MB), {labels:,} labels; reference "
          f"{args.reference_rows:,} rows; both sides sampled to {cfg.max_rows:,} rows; median of {args.repeats}")
    print(f"check found: drift share {result.drift_share:.3f}, drifted {', '.join(result.drifted_columns) or '-'}; "
          f"{result.labelled_rows:,} labelled rows; accuracy {(result.quality or {}).get('accuracy')}")
    steps = {k: round(statistics.median(r.timings.get(k, 0.0) for r in results), 3) for k in results[-1].timings}
    print(f"fabric check (registry + reference commit + log window + Evidently + HTML/JSON + MLflow + workspace): "
          f"{fabric:.2f} s; by step: " + ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
    print(f"Evidently alone: compute {parts['compute']:.2f} s, HTML+JSON files {parts['files']:.2f} s, "
          f"workspace add_run {parts['workspace']:.2f} s")
    print(f"ratio fabric / Evidently producing the same report, files and workspace entry: {fabric / every:.3f} "
          f"(target {TARGET_RATIO}); fastest / fastest {best:.3f}; vs computing and saving the files only "
          f"{fabric / compute_files:.3f}; vs computing only {fabric / parts['compute']:.3f}")
    outside = sum(steps.get(k, 0.0) for k in ("reference", "window", "mlflow"))
    estimate = (every + outside) / every
    print(f"fabric's own steps (registry + reference, log window, MLflow) took {outside:.2f} s: Evidently's time "
          f"plus these is {estimate:.3f}x Evidently alone (less noisy than the wall-clock ratio on a shared machine)")
    print(f"peak RSS during the fabric checks {peak / 1e6:.0f} MB ({(peak - baseline) / 1e6:.0f} MB above the "
          "RSS before them)")
    print(json.dumps({
        "bench": "monitor",
        "rows": args.rows,
        "features": args.features,
        "files": len(paths),
        "log_mb": round(log_mb, 1),
        "labels": labels,
        "reference_rows": args.reference_rows,
        "max_rows": cfg.max_rows,
        "repeats": args.repeats,
        "fabric_check_s": round(fabric, 3),
        "fabric_first_check_s": round(fabric_s[0], 3),
        "fabric_steps_s": steps,
        "evidently_compute_s": round(parts["compute"], 3),
        "evidently_files_s": round(parts["files"], 3),
        "evidently_workspace_s": round(parts["workspace"], 3),
        "ratio": round(fabric / every, 3),
        "ratio_vs_compute_files": round(fabric / compute_files, 3),
        "ratio_vs_compute_only": round(fabric / parts["compute"], 3),
        "ratio_of_fastest": round(best, 3),
        "fabric_own_steps_s": round(outside, 3),
        "ratio_estimate_from_steps": round(estimate, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": fabric / every <= TARGET_RATIO,
        "check_peak_rss_mb": round(peak / 1e6),
        "check_rss_growth_mb": round((peak - baseline) / 1e6),
        "drift_share": round(result.drift_share, 4),
        "drifted_columns": result.drifted_columns,
        "fabric_includes": "registry, reference commit read + model predictions on it, log window read (1M rows), "
                           "sampling, Evidently run, HTML+JSON, MLflow run, workspace add_run",
    }))


if __name__ == "__main__":
    main()
