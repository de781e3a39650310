"""Configuration of LoRA fine-tuning: which chat data, which base model, the adapter, optimisation, scaling, registry.

The same file scales from a laptop to a GPU cluster: ``scaling.num_workers=8 scaling.use_gpu=true`` plus a 7-8B
``model.source`` is all ``configs/llm/llama3_8b_lora_gpu.yaml`` changes. Every value is checked before Ray starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from fabric.config import FabricConfig, Field
from fabric.data.uri import DatasetURI
from fabric.training import RegistrationConfig, ScalingConfig
from fabric.workload import WorkloadConfig
from llm.models import DEFAULT_MODEL

__all__ = ["BaseModelConfig", "ChatDataConfig", "FinetuneConfig", "LoraSettings", "LoraTrainConfig",
           "LoraScalingConfig", "AdapterRegistryConfig"]


class ChatDataConfig(FabricConfig):
    """The versioned chat dataset and its held-out split."""

    uri: DatasetURI = Field(..., description="Versioned chat table (lakefs://REPO/REF/PATH, Parquet) with a column "
                            "of conversations [{role, content}, ...]; the run records the commit id it resolves to.")
    messages_column: str = Field("messages", min_length=1, description="Column holding each row's conversation.")
    holdout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of rows held out to measure the loss "
                                    "before and after training.")
    max_holdout_rows: int | None = Field(
        None, ge=1, description="Cap on held-out rows (evaluation runs twice). Empty: all of the held-out share."
    )
    max_length: int = Field(256, ge=8, description="Tokens per rendered conversation; longer ones are truncated.")
    seed: int = Field(0, description="Seed of the split, the LoRA initialisation and the shuffling.")
    create_from: Literal["arithmetic"] | None = Field(
        None, description="Embedded demos only: when the URI's branch or path does not exist yet, create it from "
        "this offline chat task (see llm.tasks). Leave empty in production.",
    )
    create_rows: int = Field(600, ge=10, description="Rows written when the dataset is created from create_from.")


class BaseModelConfig(FabricConfig):
    """The base model the adapter is trained on."""

    source: str = Field(DEFAULT_MODEL, min_length=1, description=f"{DEFAULT_MODEL!r} (embedded), a local Hugging "
                        "Face folder, a .gguf file or an MLflow URI (models:/NAME/VERSION); never fetched from a hub.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype. auto: bfloat16 on GPU, float32 on CPU."
    )
    quantization: Literal["auto", "none", "4bit"] = Field(
        "auto", description="4bit: QLoRA (NF4 base weights, needs a GPU and bitsandbytes). auto: 4bit when on GPU "
        "and bitsandbytes is installed, else none.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (large models on GPU).")


class LoraSettings(FabricConfig):
    """The LoRA adapter (peft)."""

    r: int = Field(8, ge=1, description="Rank of the update matrices.")
    alpha: int = Field(16, ge=1, description="Scaling numerator (updates are scaled by alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, description="Module names that get adapters."
    )


class LoraTrainConfig(FabricConfig):
    """Optimisation (transformers' Trainer)."""

    max_steps: int = Field(30, ge=1, description="Optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Conversations per step on each worker.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    eval_batch_size: int = Field(16, ge=1, description="Conversations per evaluation batch on each worker.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (linear decay after warmup).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    logging_steps: int = Field(1, ge=1, description="Log (print and MLflow) the training loss every N steps.")
    eval_steps: int | None = Field(
        None, ge=1, description="Measure the held-out loss and checkpoint the adapter every N steps (must divide "
        "max_steps). Empty: once, at the end. Tuning's ASHA judges trials at each of these evaluations.",
    )


class LoraScalingConfig(ScalingConfig):
    """Where fine-tuning runs; one worker and no restarts unless asked (a restart trains from the start)."""

    num_workers: int = Field(1, ge=1, description="Data-parallel Ray Train workers.")
    max_failures: int = Field(0, ge=0, description="Worker-group restarts (training starts over) before failing.")


class AdapterRegistryConfig(RegistrationConfig):
    """Registration of the trained adapter (no promotion gate: adapters are judged by their held-out loss)."""


class FinetuneConfig(WorkloadConfig):
    """A LoRA supervised fine-tuning run."""

    data: ChatDataConfig = Field(..., description="The versioned chat dataset.")
    model: BaseModelConfig = Field(default_factory=BaseModelConfig, description="The base model.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="The adapter.")
    train: LoraTrainConfig = Field(default_factory=LoraTrainConfig, description="Optimisation.")
    scaling: LoraScalingConfig = Field(default_factory=LoraScalingConfig, description="Workers and GPUs.")
    registry: AdapterRegistryConfig = Field(default_factory=AdapterRegistryConfig, description="Model registry.")

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneConfig:
        if self.model.quantization == "4bit" and not self.scaling.use_gpu:
            raise ValueError("model.quantization=4bit (QLoRA) needs scaling.use_gpu=true")
        if self.model.dtype in ("bfloat16", "float16") and not self.scaling.use_gpu:
            raise ValueError(f"model.dtype={self.model.dtype} trains on GPU only: use float32 or auto on CPU")
        t = self.train
        if t.eval_steps is not None and t.max_steps % t.eval_steps:
            raise ValueError(f"train.eval_steps={t.eval_steps} must divide train.max_steps={t.max_steps}, so that "
                             "the last step is evaluated")
        return self
