r"""Fine-tune a LoRA adapter on a versioned chat dataset with Ray Train, log it to MLflow, register it.

    RAY_AUTH_MODE=token ray job submit --working-dir . \
        --runtime-env-json "{\"env_vars\": {\"FABRIC_HOME\": \"$FABRIC_HOME\"}}" \
        -- python -m workloads.finetune_lora --config configs/llm/smollm2_lora_cpu.yaml
    fabric run finetune_lora --config configs/llm/smollm2_lora_cpu.yaml train.max_steps=10
    fabric submit finetune_lora --config configs/llm/llama3_8b_lora_gpu.yaml

Steps: pin ``data.uri`` to its commit id (creating the embedded demo task first when ``data.create_from`` is set
and the data is missing), split off the held-out conversations, resolve the base model offline (cached), train
peft LoRA with transformers' Trainer inside ``TorchTrainer`` (loss on assistant tokens only), measure the
held-out loss and perplexity before and after, log the adapter as an MLflow pyfunc and register it with the base
model source and the data commit as tags.
"""

from __future__ import annotations

from typing import Any

from fabric.workload import run_module
from llm.finetune_config import FinetuneConfig


class Config(FinetuneConfig):
    pass


def main(cfg: Config) -> dict[str, Any]:
    from llm.finetune import finetune

    return finetune(cfg)


if __name__ == "__main__":
    run_module(__name__)
