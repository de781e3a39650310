"""Tune a tabular model with Ray Tune (ASHA + Optuna) over Ray Train; each trial an MLflow child run.

    fabric run tune_tabular --config configs/tabular/tune.yaml
    fabric submit tune_tabular --config configs/tabular/tune.yaml tune.num_samples=32 scaling.use_gpu=true

Steps: pin and validate the data once, run ``tune.num_samples`` trials of the same training as
``train_tabular`` with parameters drawn from ``tune.space`` (ASHA stops weak trials after ``grace_period``
epochs), then evaluate, log, register and gate the best trial's model like a single training run.
"""

from __future__ import annotations

from typing import Any

from fabric.tabular.tune import TuneTabularConfig
from fabric.workload import run_module


class Config(TuneTabularConfig):
    pass


def main(cfg: Config) -> dict[str, Any]:
    from fabric.tabular.tune import tune

    return tune(cfg)


if __name__ == "__main__":
    run_module(__name__)
