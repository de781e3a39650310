"""A registered fabric linear model trained in about a second without Ray, for demos, benchmarks and tests.

It is the model ``train_tabular`` logs for ``model_type: linear`` (same folder, same pyfunc), trained full-batch in
this process instead of by Ray Train::

    from fabric.tabular.sample import register_linear
    from fabric.tabular.tables import load_frame

    version = register_linear(load_frame("breast_cancer"), "demo-bc", steps=100)   # MLflow set up
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

__all__ = ["register_linear"]


def register_linear(frame: Any, name: str, steps: int, extra_feature: str | None = None,
                    input_example: bool = False, tags: dict[str, str] | None = None) -> str:
    """Trains fabric's linear classifier on ``frame`` for ``steps`` full-batch Adam steps and registers it as ``name``.

    Args:
        frame: a pandas frame of numeric feature columns and an integer ``label`` column of classes 0 and 1.
        name: the registered model; the new version becomes its ``challenger``.
        steps: training steps (seeded, so the same frame and steps give the same model).
        extra_feature: a column the model also expects though ``frame`` lacks it (trained as zeros): a broken
            candidate whose every prediction fails, for tests of rollouts and reloads.
        input_example: log the first 2 rows of ``frame``'s features as the model's input example.
        tags: more version tags, e.g. ``fabric.data.uri``/``fabric.data.commit`` naming the data it was trained on
            (what monitoring reads its reference from).

    Returns:
        The registered version.
    """
    import mlflow
    import numpy as np
    import torch

    from fabric import registry
    from fabric.tabular.models import build_torch_model, save_model_dir
    from fabric.tabular.pyfunc import TabularPyfunc

    features = [c for c in frame.columns if c != "label"]
    example = frame[features].head(2) if input_example else None
    x = frame[features].to_numpy("float32")
    if extra_feature:
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
        info = mlflow.pyfunc.log_model(name="model", python_model=TabularPyfunc(), artifacts={"model_dir": str(folder)},
                                       input_example=example, pip_requirements=["llmops-fabric"])
    return registry.register(info.model_uri, name, tags={"fabric.task": "classification", **(tags or {})})
