"""The tabular models: building, saving, loading and predicting, without MLflow (workers import this).

PyTorch models carry their own input standardisation (the training split's mean and standard deviation as
buffers), so the logged model, its ONNX export and a served endpoint all take raw feature values. Every model
answers through :class:`fabric.tabular.pyfunc.TabularPyfunc` in the same shape: a ``prediction`` column and,
for a classifier, one ``probability_<k>`` column per class (see :mod:`fabric.evaluation`).

Each ``model.type`` of a training config is one :class:`ModelKind` in :data:`KINDS`: how it trains (its Ray
trainer and the model in its checkpoints), how many rounds Tune may give it, how it is saved, loaded and asked for
outputs, and whether it exports to ONNX. Nothing else in fabric branches on the type's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["KINDS", "ModelKind", "build_torch_model", "load_model_dir", "model_kind", "predict_frame", "raw_outputs",
           "save_model_dir"]

META = "meta.json"


@runtime_checkable
class ModelKind(Protocol):
    """What fabric needs of one tabular model type."""

    exports_onnx: bool  #: training also exports ONNX (and checks onnxruntime agrees)

    def rounds(self, cfg: Any) -> int:
        """Training rounds of a :class:`~fabric.tabular.config.TabularConfig`: Tune's ``max_t``."""

    def trainer(self, **kwargs: Any) -> Any:
        """An unstarted Ray Train trainer (``train_loop_config``, ``scaling_config``, ``datasets``, ... as kwargs)."""

    def from_checkpoint(self, meta: dict[str, Any], checkpoint: Any) -> tuple[dict[str, Any], Any]:
        """The ``(meta, model)`` in one of the trainer's checkpoints, on this machine's CPU."""

    def save(self, folder: Path, model: Any) -> None:
        """Writes the model's weights into ``folder`` (``meta.json`` is written beside them)."""

    def load(self, folder: Path, meta: dict[str, Any]) -> Any:
        """The model :meth:`save` wrote, ready to predict on the CPU."""

    def outputs(self, meta: dict[str, Any], model: Any, features: Any) -> Any:
        """Class probabilities (n x k) for a classifier, predictions (n) for a regressor, as float64 numpy."""


class TorchKind:
    """``mlp`` and ``linear``: PyTorch, trained by ``TorchTrainer``; ``hidden``: the mlp's hidden layers."""

    exports_onnx = True

    def __init__(self, hidden: bool):
        self.hidden = hidden

    def rounds(self, cfg: Any) -> int:
        return cfg.train.epochs

    def trainer(self, **kwargs: Any) -> Any:
        from ray.train.torch import TorchTrainer

        from fabric.tabular.train import torch_loop

        return TorchTrainer(torch_loop, **kwargs)

    def from_checkpoint(self, meta: dict[str, Any], checkpoint: Any) -> tuple[dict[str, Any], Any]:
        with checkpoint.as_directory() as folder:
            return load_model_dir(folder)

    def save(self, folder: Path, model: Any) -> None:
        import torch

        torch.save(getattr(model, "module", model).state_dict(), folder / "model.pt")

    def load(self, folder: Path, meta: dict[str, Any]) -> Any:
        import torch

        model = build_torch_model(meta)
        model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
        return model.eval()

    def outputs(self, meta: dict[str, Any], model: Any, features: Any) -> Any:
        import torch

        with torch.no_grad():
            out = model(torch.from_numpy(features))
            if meta["task"] == "classification":
                return torch.softmax(out, dim=1).double().numpy()
            return out[:, 0].double().numpy()


class XGBoostKind:
    """``xgboost``: gradient-boosted trees, trained by ``XGBoostTrainer`` over the same shards."""

    exports_onnx = False

    def rounds(self, cfg: Any) -> int:
        return cfg.model.num_boost_round

    def trainer(self, **kwargs: Any) -> Any:
        from ray.train.xgboost import XGBoostTrainer

        from fabric.tabular.train import xgboost_loop

        return XGBoostTrainer(xgboost_loop, **kwargs)

    def from_checkpoint(self, meta: dict[str, Any], checkpoint: Any) -> tuple[dict[str, Any], Any]:
        from ray.train.xgboost import RayTrainReportCallback

        return meta, RayTrainReportCallback.get_model(checkpoint)

    def save(self, folder: Path, model: Any) -> None:
        model.save_model(str(folder / "model.ubj"))

    def load(self, folder: Path, meta: dict[str, Any]) -> Any:
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(folder / "model.ubj"))
        return booster

    def outputs(self, meta: dict[str, Any], model: Any, features: Any) -> Any:
        import numpy as np
        import xgboost

        out = model.predict(xgboost.DMatrix(features, feature_names=meta["features"]))
        if meta["task"] == "classification" and out.ndim == 1:  # binary:logistic gives P(class 1)
            out = np.stack([1 - out, out], axis=1)
        return out.astype("float64")


KINDS: dict[str, ModelKind] = {"mlp": TorchKind(hidden=True), "linear": TorchKind(hidden=False),
                               "xgboost": XGBoostKind()}


def model_kind(model_type: str) -> ModelKind:
    """The :class:`ModelKind` of a ``model.type`` (a ``meta.json``'s ``model_type``)."""
    try:
        return KINDS[model_type]
    except KeyError:
        raise ValueError(f"unknown tabular model type {model_type!r}; known: {', '.join(KINDS)}") from None


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
    for hidden in meta["hidden_sizes"] if getattr(model_kind(meta["model_type"]), "hidden", False) else []:
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
    model_kind(meta["model_type"]).save(folder, model)
    return folder


def load_model_dir(folder: str | Path) -> tuple[dict[str, Any], Any]:
    """The ``(meta, model)`` that :func:`save_model_dir` wrote; torch models come back in eval mode on the CPU."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    return meta, model_kind(meta["model_type"]).load(folder, meta)


def raw_outputs(meta: dict[str, Any], model: Any, features: Any) -> Any:
    """Class probabilities (n × k) for a classifier, predictions (n) for a regressor, as float64 numpy."""
    import numpy as np

    return model_kind(meta["model_type"]).outputs(meta, model, np.asarray(features, dtype="float32"))


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
