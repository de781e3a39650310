"""Tabular training on versioned data: Ray Train (PyTorch or XGBoost), Ray Tune, MLflow logging and registry.

The workloads ``train_tabular`` and ``tune_tabular`` are thin over this package::

    from fabric.tabular import TabularConfig, train_model

    cfg = TabularConfig.from_yaml("configs/tabular/train.yaml", ["scaling.num_workers=1"])
    summary = train_model(cfg)   # needs Ray and MLflow set up (fabric run does both)
"""

from fabric.tabular.config import TabularConfig
from fabric.tabular.pipeline import train_model

__all__ = ["TabularConfig", "train_model"]
