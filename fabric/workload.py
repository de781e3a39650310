"""Workloads: a module with a ``Config`` class and a ``main(cfg)``, run the same way from every entry point.

A workload is either a module of the ``workloads`` package, named by its short name (``smoke``), or any Python
file of the user's (``path/to/my_job.py``). Both need only two things::

    class Config(WorkloadConfig):
        rows: int = Field(100, description="How many rows to make.")

    def main(cfg: Config) -> dict:
        ...  # Ray is up and MLflow points at the configured store
        return {"rows": cfg.rows}

    if __name__ == "__main__":
        run_module(__name__)

The three entry points share :meth:`Workload.run`:

* ``python -m workloads.smoke --config configs/smoke.yaml train.epochs=2``
* ``fabric run smoke --config configs/smoke.yaml train.epochs=2``
* ``ray job submit --working-dir . --runtime-env-json '{"env_vars": {"FABRIC_HOME": "/abs/home"}}' -- python -m
  workloads.smoke --config configs/smoke.yaml`` (a job must be told its home: see :func:`Workload.run`)

Each prints the JSON of ``main``'s result as its last line of output.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from fabric.cluster import SharedStorageError, check_shared_storage
from fabric.config import ConfigError, FabricConfig, Field, load_yaml
from fabric.runtime import RuntimeConfig, init_ray, resolve_stack, setup_mlflow

__all__ = [
    "Workload",
    "WorkloadConfig",
    "WorkloadError",
    "available_workloads",
    "load_workload",
    "run_module",
    "workload_for_config",
]

WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"


class WorkloadError(ValueError):
    """A workload reference does not name a usable workload."""


class WorkloadConfig(FabricConfig):
    """Base of every workload's config: which workload it is for, and where it runs."""

    workload: str | None = Field(
        None, description="Workload this config belongs to, so `fabric config check FILE` knows its schema."
    )
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="Where the work runs.")


@dataclass(frozen=True)
class Workload:
    """A loaded workload: its name, config class and entry function."""

    name: str
    ref: str
    config_cls: type[FabricConfig]
    main: Callable[[Any], Any]

    def load_config(self, path: str | Path | None, overrides: Iterable[str] = ()) -> FabricConfig:
        """Reads and validates the config; a config written for another workload is refused."""
        cfg = self.config_cls.from_yaml(path, list(overrides))
        declared = getattr(cfg, "workload", None)
        if declared and declared not in (self.name, self.ref):
            raise ConfigError(f"{path} is a config for workload {declared!r}, not {self.name!r}")
        return cfg

    def run(self, cfg: FabricConfig) -> Any:
        """Checks where the stack lives, starts or joins Ray, points MLflow at its store, then calls ``main(cfg)``.

        Inside a Ray job without ``FABRIC_HOME`` this fails first (:class:`fabric.runtime.JobHomeError`), before
        anything is written to the job's temporary working directory; on a cluster of several nodes, an embedded
        store that some node cannot see fails next (:class:`fabric.cluster.SharedStorageError`), before any work.
        """
        runtime = getattr(cfg, "runtime", None) or RuntimeConfig()
        stack = resolve_stack(runtime)
        init_ray(runtime.ray)
        check_shared_storage(stack)
        setup_mlflow(runtime.mlflow)
        return self.main(cfg)


def available_workloads() -> list[str]:
    """Short names of the workloads shipped in the ``workloads`` package."""
    return sorted(p.stem for p in WORKLOADS_DIR.glob("*.py") if not p.stem.startswith("_"))


def is_path_ref(ref: str) -> bool:
    """Whether ``ref`` names a file of the user's rather than a shipped workload."""
    return ref.endswith(".py") or "/" in ref or "\\" in ref


def load_workload(ref: str) -> Workload:
    """Imports a workload by short name (``smoke``) or by file path (``jobs/my_job.py``)."""
    if is_path_ref(ref):
        module = _import_file(Path(ref))
        name = Path(ref).stem
    else:
        if ref not in available_workloads():
            raise WorkloadError(f"unknown workload {ref!r}; available: {', '.join(available_workloads())}")
        module = importlib.import_module(f"workloads.{ref}")
        name = ref
    return from_module(module, name=name, ref=ref)


def from_module(module: ModuleType, name: str, ref: str) -> Workload:
    """Checks that ``module`` declares ``Config`` and ``main`` and wraps them."""
    config_cls = getattr(module, "Config", None)
    main = getattr(module, "main", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, FabricConfig)):
        raise WorkloadError(f"workload {ref!r} must define `class Config(WorkloadConfig)` (a FabricConfig subclass)")
    if not callable(main):
        raise WorkloadError(f"workload {ref!r} must define `def main(cfg: Config)`")
    return Workload(name=name, ref=ref, config_cls=config_cls, main=main)


def run_module(module_name: str, argv: list[str] | None = None) -> Any:
    """Entry point for ``python -m workloads.NAME --config FILE [key=value ...]``."""
    module = sys.modules[module_name]
    spec = getattr(module, "__spec__", None)
    name = spec.name.rsplit(".", 1)[-1] if spec else Path(module.__file__).stem
    prog = f"python -m {spec.name}" if spec else f"python {Path(module.__file__).name}"
    parser = argparse.ArgumentParser(prog=prog, description=(module.__doc__ or "").strip().split("\n")[0])
    parser.add_argument("--config", help="YAML config file; defaults apply when omitted")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    workload = from_module(module, name=name, ref=name)
    try:
        cfg = workload.load_config(args.config, args.overrides)
        resolve_stack(getattr(cfg, "runtime", None))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        result = workload.run(cfg)
    except SharedStorageError as exc:  # found once Ray is up, still before any work
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print_result(result)
    return result


def print_result(result: Any) -> None:
    """Prints a workload's result as one JSON line, the last line of its output."""
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise WorkloadError(f"workload file not found: {path}")
    module_name = f"fabric_user_workload_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path.resolve())
    if spec is None or spec.loader is None:
        raise WorkloadError(f"cannot import {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    # Ray workers cannot import a file outside any package: ship its functions and classes by value.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module


def workload_for_config(path: str | Path, explicit: str | None = None) -> Workload:
    """The workload a config file belongs to: ``explicit``, else its ``workload:`` key, else its file name."""
    ref = explicit or load_yaml(path).get("workload")
    if not ref and Path(path).stem in available_workloads():
        ref = Path(path).stem
    if not ref:
        raise WorkloadError(
            f"cannot tell which workload {path} is for: add `workload: NAME` to it or pass --workload NAME "
            "(other configs say their kind: `kind: serve`, `kind: llm`, `kind: monitor`)"
        )
    return load_workload(str(ref))
