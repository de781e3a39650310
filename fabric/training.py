"""Ray Train settings every training workload shares: where it runs (workers, GPUs, restarts, checkpoint storage)
and under which name its model is registered, and the Ray Train configs they turn into.

Example:
    >>> scaling = ScalingConfig(num_workers=8, use_gpu=True, storage_path="s3://bucket/checkpoints")
    >>> TorchTrainer(loop, scaling_config=ray_scaling(scaling), run_config=run_config(scaling, "train-abc"))
"""

from __future__ import annotations

from typing import Any

from fabric.config import FabricConfig, Field

__all__ = ["RegistrationConfig", "ScalingConfig", "checkpoint_storage", "ray_scaling", "run_config"]


class ScalingConfig(FabricConfig):
    """Where training runs: the same config scales from a laptop to a GPU cluster."""

    num_workers: int = Field(2, ge=1, description="Data-parallel Ray Train workers.")
    use_gpu: bool = Field(False, description="Give each worker one GPU.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved for each worker (its torch threads).")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts (from the last checkpoint) before failing.")
    storage_path: str | None = Field(
        None, description="Where checkpoints go: shared storage on a cluster (s3://..., NFS). Empty: FABRIC_HOME/ray."
    )


class RegistrationConfig(FabricConfig):
    """Registration of the trained model in the MLflow registry."""

    model_name: str | None = Field(
        None, description="Registered model name. Empty: do not register (the model is still logged with the run)."
    )


def checkpoint_storage(scaling: ScalingConfig) -> str:
    """``storage_path``, or ``FABRIC_HOME/ray`` on the embedded stack."""
    from fabric.runtime import fabric_home

    return scaling.storage_path or str(fabric_home() / "ray")


def ray_scaling(scaling: ScalingConfig) -> Any:
    """Ray Train's ScalingConfig: the workers, their GPUs, and the CPUs each reserves."""
    from ray.train import ScalingConfig as RayScalingConfig

    return RayScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                            resources_per_worker={"CPU": scaling.cpus_per_worker})


def run_config(scaling: ScalingConfig, name: str, num_to_keep: int, callbacks: list[Any] | None = None) -> Any:
    """Ray Train's RunConfig: checkpoint storage and retention, restarts on failure, callbacks (Tune's reports)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(name=name, storage_path=checkpoint_storage(scaling),
                     failure_config=FailureConfig(max_failures=scaling.max_failures),
                     checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep), callbacks=callbacks)
