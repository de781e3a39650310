"""Tune LoRA fine-tuning with Ray Tune (ASHA on held-out loss + Optuna); each trial an MLflow child run.

    fabric run tune_lora --config configs/llm/smollm2_lora_tune_cpu.yaml
    fabric submit tune_lora --config configs/llm/llama3_8b_lora_tune_gpu.yaml

Steps: pin ``data.uri`` to its commit id and split it once, run ``tune.num_samples`` fine-tunes with LoRA rank,
alpha, learning rate and target modules drawn from ``tune.space`` (ASHA stops trials whose held-out loss lags at
an evaluation, every ``train.eval_steps`` steps), then log and register the best trial's adapter like a single
``finetune_lora`` run, with its base model and data commit.
"""

from __future__ import annotations

from typing import Any

from fabric.workload import run_module
from llm.tune import TuneLoraConfig


class Config(TuneLoraConfig):
    pass


def main(cfg: Config) -> dict[str, Any]:
    from llm.tune import tune_lora

    return tune_lora(cfg)


if __name__ == "__main__":
    run_module(__name__)
