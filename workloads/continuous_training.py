r"""Continuous training: retrain a registered model on its champion's data plus newly labelled production rows,
judge it against the champion on the most recent rows, release it through a canary, promote it.

    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.continuous_training --config configs/ct/breast_cancer.yaml
    fabric ct run --config configs/ct/breast_cancer.yaml
    fabric run continuous_training --config configs/ct/breast_cancer.yaml gate.margin=0.01

Steps: snapshot (a commit on ct-MODEL-RUN: the champion's training rows plus the labelled rows of the inference
log, the newest held out), validate, train (train_tabular's code, or tune_tabular's with tune: true), evaluate
challenger and champion on the held-out rows, register, gate, canary through the serving app, observe, finish
(or roll back). Run again after a kill, it continues from the step it was in; `fabric ct status` shows the steps.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from fabric.ct import CTConfig
from fabric.workload import run_module


class Config(CTConfig):
    pass


def main(cfg: Config) -> dict[str, Any]:
    from fabric.ct import CTError, run_pipeline

    # An alert action that starts this module in its own process says why through these two variables.
    trigger, reason = os.environ.get("FABRIC_CT_TRIGGER") or "manual", os.environ.get("FABRIC_CT_REASON")
    try:
        return run_pipeline(cfg, trigger=trigger, reason=reason)
    except CTError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    run_module(__name__)
