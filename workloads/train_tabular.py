"""Train a tabular model on a versioned dataset with Ray Train, log everything to MLflow, register it.

    fabric run train_tabular --config configs/tabular/train.yaml
    fabric run train_tabular --config configs/tabular/train.yaml model.type=xgboost
    fabric submit train_tabular --config configs/tabular/train.yaml scaling.num_workers=8 scaling.use_gpu=true

Steps: pin ``data.uri`` to its commit id, validate it against ``data.validation_schema``, split it (seeded),
train (PyTorch MLP/linear with ``TorchTrainer``, or XGBoost with ``XGBoostTrainer``; a checkpoint per epoch and
resumption after worker failures), evaluate on the held-out rows, log the model as an MLflow pyfunc (plus ONNX),
check both reproduce the trained model's outputs, register it and run the promotion gate.
"""

from __future__ import annotations

from typing import Any

from fabric.tabular.config import TabularConfig
from fabric.workload import run_module


class Config(TabularConfig):
    pass


def main(cfg: Config) -> dict[str, Any]:
    from fabric.tabular import train_model

    return train_model(cfg)


if __name__ == "__main__":
    run_module(__name__)
