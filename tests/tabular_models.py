"""Registered fabric tabular models made in a second, without Ray: for serving and batch-inference tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np


def register_linear(frame, name: str, steps: int, extra_feature: str | None = None) -> str:
    """Trains fabric's linear tabular model for ``steps`` full-batch steps and registers it; returns the version."""
    import mlflow
    import torch

    from fabric import registry
    from fabric.tabular.models import build_torch_model, save_model_dir
    from fabric.tabular.pyfunc import TabularPyfunc

    features = [c for c in frame.columns if c != "label"]
    x = frame[features].to_numpy("float32")
    if extra_feature:  # a broken candidate: it expects a column no request has, so every prediction fails
        features, x = [*features, extra_feature], np.hstack([x, np.zeros((len(x), 1), "float32")])
    meta = {"model_type": "linear", "task": "classification", "features": features, "label_column": "label",
            "n_outputs": 2, "hidden_sizes": [], "dropout": 0.0, "mean": x.mean(0).tolist(),
            "std": (x.std(0) + 1e-6).tolist()}
    torch.manual_seed(0)
    model = build_torch_model(meta)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    labels = torch.from_numpy(frame["label"].to_numpy())
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with mlflow.start_run(), tempfile.TemporaryDirectory() as tmp:
        folder = save_model_dir(Path(tmp) / "model", meta, model.eval())
        info = mlflow.pyfunc.log_model(name="model", python_model=TabularPyfunc(),
                                       artifacts={"model_dir": str(folder)}, pip_requirements=["llmops-fabric"])
    return registry.register(info.model_uri, name, tags={"fabric.task": "classification"})
