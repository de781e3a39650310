"""The tabular models: building, saving, loading and predicting, without MLflow (workers import this).

PyTorch models carry their own input standardisation (the training split's mean and standard deviation as
buffers), so the logged model, its ONNX export and a served endpoint all take raw feature values. Every model
answers through :class:`fabric.tabular.pyfunc.TabularPyfunc` in the same shape: a ``prediction`` column and,
for a classifier, one ``probability_<k>`` column per class (see :mod:`fabric.evaluation`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["build_torch_model", "load_model_dir", "predict_frame", "raw_outputs", "save_model_dir"]

META = "meta.json"


def build_torch_model(meta: dict[str, Any]) -> Any:
    """A fresh ``torch.nn.Module`` for ``meta``: standardisation, then linear layers (ReLU and dropout between)."""
    import torch

    class Standardize(torch.nn.Module):
        def __init__(self, n: int):
            super().__init__()
            self.register_buffer("mean", torch.zeros(n))
            self.register_buffer("std", torch.ones(n))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    n_in, n_out = len(meta["features"]), meta["n_outputs"]
    layers: list[torch.nn.Module] = [Standardize(n_in)]
    width = n_in
    for hidden in meta["hidden_sizes"] if meta["model_type"] == "mlp" else []:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        if meta.get("dropout"):
            layers.append(torch.nn.Dropout(meta["dropout"]))
        width = hidden
    layers.append(torch.nn.Linear(width, n_out))
    model = torch.nn.Sequential(*layers)
    if "mean" in meta:
        model[0].mean.copy_(torch.tensor(meta["mean"], dtype=torch.float32))
        model[0].std.copy_(torch.tensor(meta["std"], dtype=torch.float32))
    return model


def save_model_dir(folder: str | Path, meta: dict[str, Any], model: Any) -> Path:
    """Writes ``meta.json`` and the weights (``model.pt`` state dict, or XGBoost's ``model.ubj``) to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META).write_text(json.dumps(meta, indent=2))
    if meta["model_type"] == "xgboost":
        model.save_model(str(folder / "model.ubj"))
    else:
        import torch

        torch.save(getattr(model, "module", model).state_dict(), folder / "model.pt")
    return folder


def load_model_dir(folder: str | Path) -> tuple[dict[str, Any], Any]:
    """The ``(meta, model)`` that :func:`save_model_dir` wrote; torch models come back in eval mode on the CPU."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    if meta["model_type"] == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(folder / "model.ubj"))
        return meta, booster
    import torch

    model = build_torch_model(meta)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    return meta, model.eval()


def raw_outputs(meta: dict[str, Any], model: Any, features: Any) -> Any:
    """Class probabilities (n × k) for a classifier, predictions (n) for a regressor, as float64 numpy."""
    import numpy as np

    features = np.asarray(features, dtype="float32")
    if meta["model_type"] == "xgboost":
        import xgboost

        out = model.predict(xgboost.DMatrix(features, feature_names=meta["features"]))
        if meta["task"] == "classification" and out.ndim == 1:  # binary:logistic gives P(class 1)
            out = np.stack([1 - out, out], axis=1)
        return out.astype("float64")
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(features))
        if meta["task"] == "classification":
            return torch.softmax(out, dim=1).double().numpy()
        return out[:, 0].double().numpy()


def predict_frame(meta: dict[str, Any], model: Any, frame: Any) -> Any:
    """The pyfunc output for ``frame``: ``prediction`` (+ ``probability_<k>`` columns for a classifier)."""
    import pandas as pd

    missing = [c for c in meta["features"] if c not in frame.columns]
    if missing:
        raise ValueError(f"input lacks feature columns: {', '.join(missing)}")
    out = raw_outputs(meta, model, frame[meta["features"]].to_numpy(dtype="float32"))
    if meta["task"] == "regression":
        return pd.DataFrame({"prediction": out})
    result = pd.DataFrame({"prediction": out.argmax(axis=1).astype("int64")})
    for k in range(out.shape[1]):
        result[f"probability_{k}"] = out[:, k]
    return result
