"""fabric: a Ray-based compute fabric with LLMOps extensions.

The public surface for workload authors::

    from fabric import Field, WorkloadConfig, run_module

Heavy libraries (ray, torch, mlflow) are imported only by the functions that use them.
"""

from fabric.config import ConfigError, FabricConfig, Field
from fabric.runtime import RuntimeConfig, fabric_home, resolve_stack
from fabric.workload import Workload, WorkloadConfig, WorkloadError, load_workload, run_module

__all__ = [
    "ConfigError",
    "FabricConfig",
    "Field",
    "RuntimeConfig",
    "Workload",
    "WorkloadConfig",
    "WorkloadError",
    "fabric_home",
    "load_workload",
    "resolve_stack",
    "run_module",
]
