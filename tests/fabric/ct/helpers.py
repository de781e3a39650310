"""Inference-log rows with late labels, and pipeline configs, for the continuous-training tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
TRAIN = str(ROOT / "configs" / "tabular" / "train.yaml")
# A small but real training: the MLP of train.yaml on one Ray Train worker for three epochs.
TINY = ["train.epochs=3", "scaling.num_workers=1", "export_onnx=false"]
# Three features a new measuring device reports ten times larger: the champion's decisions break.
SHIFT_A = ["mean_smoothness", "mean_compactness", "mean_concavity"]
SHIFT_B = ["worst_smoothness", "worst_compactness", "worst_concavity"]


def log_labelled_rows(model: str, root: str, frame: Any, n: int, seed: int, prefix: str,
                      shift: list[str] | None = None, factor: float = 10.0) -> list[str]:
    """Writes ``n`` rows of ``frame`` (``shift`` columns times ``factor``) to the inference log as served requests,
    then their labels, with fabric.serve.inference_log as the serving app does; returns the request ids."""
    import numpy as np

    from fabric.serve.inference_log import InferenceLog, write_labels

    rows = frame.sample(n, random_state=seed).reset_index(drop=True)
    for column in shift or []:
        rows[column] = rows[column] * factor
    features = [c for c in frame.columns if c != "label"]
    log = InferenceLog(root, flush_rows=10**9, flush_s=3600)
    ids = [f"{prefix}-{i}" for i in range(n)]
    for request_id, (_, row) in zip(ids, rows.iterrows(), strict=True):
        log.add(request_id, model, "1", "invocations", features, row[features].to_numpy("float64")[None, :],
                {"prediction": np.array([0]), "probability_1": np.array([0.5])})
    log.flush()
    write_labels(model, [{"request_id": i, "row": 0, "label": int(y)} for i, y in zip(ids, rows["label"], strict=True)],
                 root)
    return ids


def ct_dict(name: str, model: str, log_root: str, url: str | None, **sections: Any) -> dict[str, Any]:
    """A pipeline config (as YAML would hold it) for the tests' tiny training; ``sections`` replace whole keys."""
    return {"workload": "continuous_training", "name": name, "model": model, "train_config": TRAIN,
            "train_overrides": list(TINY), "labels": {"log_root": log_root, "min_rows": 50},
            "gate": {"metric": "accuracy", "margin": 0.0}, "serving": {"url": url}, **sections}
