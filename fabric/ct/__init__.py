"""Continuous training: a model retrains on its champion's data plus newly labelled production rows, proves it is
better on the most recent rows, and replaces the champion through a canary, every step on the record.

Python, with the CLI equivalent under each line::

    from fabric.ct import CTConfig, pipeline_status, run_pipeline

    cfg = CTConfig.from_yaml("configs/ct/breast_cancer.yaml")
    result = run_pipeline(cfg, trigger="manual")   # Ray and MLflow set up (fabric ct run does both)
    #   fabric ct run --config configs/ct/breast_cancer.yaml
    pipeline_status("breast-cancer-ct")
    #   fabric ct status breast-cancer-ct
    #   fabric ct watch --config configs/ct/breast_cancer.yaml   (schedule and watched data branch)

Steps: snapshot, validate, train (or tune), evaluate, register, gate, canary, observe, finish. A run killed at any
step continues from that step when started again, and never registers or promotes twice.
"""

from fabric.ct.config import CTConfig
from fabric.ct.pipeline import pipeline_status, run_pipeline
from fabric.ct.state import CTError
from fabric.ct.watch import due, watch

__all__ = ["CTConfig", "CTError", "due", "pipeline_status", "run_pipeline", "watch"]
