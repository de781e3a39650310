"""Configuration of tabular training and tuning: which data, which model, how it trains, where it is registered.

One file runs anywhere: ``scaling.num_workers=8 scaling.use_gpu=true`` is all a GPU cluster needs on top of the
laptop config. Every value is checked before Ray starts (a negative learning rate, an unknown model type or a
missing data URI stop the run with a message naming the field).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from fabric.config import FabricConfig, Field
from fabric.data.uri import DatasetURI
from fabric.registry import PromotionPolicy
from fabric.training import RegistrationConfig, ScalingConfig
from fabric.workload import WorkloadConfig

__all__ = ["DataConfig", "ModelConfig", "RegistryConfig", "ScalingConfig", "TabularConfig", "TrainConfig"]

SKLEARN_SOURCES = ("sklearn:breast_cancer", "sklearn:wine", "sklearn:iris", "sklearn:digits", "sklearn:diabetes")


class DataConfig(FabricConfig):
    """Which versioned table to learn from and how it is split."""

    uri: DatasetURI = Field(..., description="Versioned table to train on (lakefs://REPO/REF/PATH); the run "
                            "records the commit id it resolves to.")
    label_column: str = Field("label", min_length=1, description="Column holding the target.")
    features: list[str] | None = Field(None, description="Feature columns. Empty: every column but the label.")
    task: Literal["classification", "regression"] = Field(
        "classification", description="classification (labels 0..k-1) or regression (a numeric target)."
    )
    validation_schema: str | None = Field(
        None, description="YAML schema (fabric data validate) the table must pass before training starts."
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of rows held out for the final evaluation.")
    valid_fraction: float = Field(
        0.15, gt=0, lt=1, description="Share of the remaining rows used for per-epoch validation (and tuning)."
    )
    seed: int = Field(0, description="Seed of the split, the initial weights and the shuffling.")
    create_from: Literal[SKLEARN_SOURCES] | None = Field(  # type: ignore[valid-type]
        None, description="Embedded demos only: when the URI's branch or path does not exist yet, create it from "
        "this bundled scikit-learn table first. Leave empty in production.",
    )


class ModelConfig(FabricConfig):
    """The model to fit."""

    type: Literal["mlp", "linear", "xgboost"] = Field(
        "mlp", description="mlp or linear (PyTorch, TorchTrainer) or xgboost (gradient-boosted trees, XGBoostTrainer)."
    )
    hidden_sizes: list[int] = Field([64, 32], description="Widths of the MLP's hidden layers.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer of the MLP.")
    max_depth: int = Field(4, ge=1, le=32, description="XGBoost: depth of each tree.")
    num_boost_round: int = Field(50, ge=1, description="XGBoost: number of trees (one checkpoint per tree).")
    eta: float = Field(0.1, gt=0, le=1, description="XGBoost: learning rate.")

    @field_validator("hidden_sizes")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("every hidden size must be at least 1")
        return value


class TrainConfig(FabricConfig):
    """How the PyTorch models are optimised."""

    epochs: int = Field(10, ge=1, description="Passes over the training split; one checkpoint each.")
    batch_size: int = Field(64, ge=1, description="Rows per gradient step on each worker.")
    lr: float = Field(0.01, gt=0, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty (AdamW's decoupled weight decay).")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd (with momentum 0.9).")
    fail_at_epoch: int | None = Field(
        None, ge=0, description="Fault-injection drill: the rank-0 worker process dies once, midway through this "
        "epoch, and the run must resume from the last checkpoint. Empty in normal runs.",
    )


class RegistryConfig(RegistrationConfig):
    """Registration of the trained model and the promotion gate."""

    promote: bool = Field(
        True, description="After registering, run the promotion gate: the new version becomes champion only if it "
        "beats the current champion on the same held-out rows by the policy's margin.",
    )
    policy: PromotionPolicy = Field(default_factory=PromotionPolicy, description="The promotion gate's rule.")


class TabularConfig(WorkloadConfig):
    """A tabular training run: data, model, optimisation, scaling, export and registry."""

    data: DataConfig = Field(..., description="The versioned table and its split.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model to fit.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation of the PyTorch models.")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="Workers, GPUs and fault tolerance.")
    export_onnx: bool = Field(
        True, description="Also export PyTorch models to ONNX and check onnxruntime gives the same outputs."
    )
    registry: RegistryConfig = Field(default_factory=RegistryConfig, description="Model registry.")
