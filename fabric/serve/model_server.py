"""The model deployment: one registered model, the version behind its alias, batched predictions, hot reload.

``ModelServer`` loads the version its alias points at, follows the alias when it moves (hot reload, no restart),
and answers with dynamic batching (``@serve.batch``): concurrent requests are merged into one model call. With
``placement: replicas`` it is a deployment of its own (scales out, takes GPUs); with ``placement: gateway`` it runs
inside the gateway's process (:class:`InProcess`), a hop fewer.
"""

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
from ray import serve

from fabric.serve.config import ModelRoute

__all__ = ["InProcess", "ModelServer"]

log = logging.getLogger("ray.serve")


@serve.deployment
class ModelServer:
    """One registered model: the version behind its alias, batched predictions, hot reload on alias moves."""

    def __init__(self, route: dict, tracking_uri: str):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        self.route = ModelRoute(**route)
        self.models: dict[str, tuple[dict[str, Any], Any]] = {}
        self.live = self._alias_version()
        self._load(self.live)
        self._batched.set_max_batch_size(self.route.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.route.batch_wait_timeout_s)
        from ray.serve.metrics import Histogram

        self.batch_sizes = Histogram("fabric_batch_size", description="Rows merged into one model call.",
                                     boundaries=[1, 2, 4, 8, 16, 32, 64, 128], tag_keys=("model", "version"))
        threading.Thread(target=self._follow_alias, daemon=True, name="follow-alias").start()

    def _alias_version(self) -> str:
        from mlflow import MlflowClient

        return str(MlflowClient().get_model_version_by_alias(self.route.name, self.route.alias).version)

    def _load(self, version: str) -> None:
        import mlflow.pyfunc

        if version in self.models:
            return
        pyfunc = mlflow.pyfunc.load_model(f"models:/{self.route.name}/{version}")
        inner = pyfunc.unwrap_python_model()
        if not hasattr(inner, "meta"):
            raise TypeError(f"{self.route.name} version {version} is not a fabric tabular model")
        self.models[version] = (inner.meta, inner.model)

    def _follow_alias(self) -> None:
        while True:
            time.sleep(self.route.reload_interval_s)
            try:
                self.reload()
            except Exception as exc:  # a registry hiccup must not kill the replica; the live model stays
                log.warning("fabric: could not check alias %s@%s: %s", self.route.name, self.route.alias, exc)

    def reload(self) -> dict[str, str]:
        """Loads the version the alias points at now and makes it live (a no-op if unchanged)."""
        version = self._alias_version()
        if version != self.live:
            self._load(version)
            previous, self.live = self.live, version
            log.info("fabric: %s@%s moved from version %s to %s", self.route.name, self.route.alias, previous, version)
        return {"model": self.route.name, "alias": self.route.alias, "version": self.live}

    def load(self, version: str) -> dict[str, Any]:
        """Loads ``version`` now (a rollout's candidate), so its first request does not pay for it."""
        self._load(str(version))
        return {"model": self.route.name, "version": str(version), "loaded": sorted(self.models)}

    def meta(self, version: str) -> dict[str, Any]:
        """What the gateway validates requests against: the features and task of ``version``."""
        self._load(str(version))
        meta, _ = self.models[str(version)]
        return {k: meta[k] for k in ("features", "task", "n_outputs", "model_type")}

    def info(self) -> dict[str, Any]:
        meta, _ = self.models[self.live]
        return {"name": self.route.name, "alias": self.route.alias, "live": self.live, "loaded": sorted(self.models),
                "meta": {k: meta[k] for k in ("features", "task", "n_outputs", "model_type")}}

    async def predict(self, matrix: np.ndarray, version: str | None = None) -> tuple[str, np.ndarray]:
        """The raw outputs (class probabilities, or predictions) for ``matrix``'s rows, and the version used."""
        return await self._batched((version or self.live, matrix))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
        from fabric.tabular.models import raw_outputs

        results: list[Any] = [None] * len(items)
        for version in {v for v, _ in items}:
            if version not in self.models:
                self._load(version)
            meta, model = self.models[version]
            positions = [i for i, (v, _) in enumerate(items) if v == version]
            matrices = [items[i][1] for i in positions]
            output = raw_outputs(meta, model, np.concatenate(matrices))
            self.batch_sizes.observe(len(output), tags={"model": self.route.name, "version": version})
            start = 0
            for i, matrix in zip(positions, matrices, strict=True):
                results[i] = (version, output[start:start + len(matrix)])
                start += len(matrix)
        return results


class InProcess:
    """A :class:`ModelServer` inside the gateway's own process, called like a DeploymentHandle
    (``await model.predict.remote(...)``): one hop fewer per request, for small CPU models
    (``placement: gateway``). Blocking calls (loading from the registry) run in a worker thread."""

    def __init__(self, route: dict, tracking_uri: str):
        self.server = ModelServer.func_or_class(route, tracking_uri)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.server, name)
        call = method if asyncio.iscoroutinefunction(method) else lambda *args: asyncio.to_thread(method, *args)
        bound = _InProcessMethod(call)
        setattr(self, name, bound)  # later lookups find it without __getattr__ (predict is on every request)
        return bound


class _InProcessMethod:
    def __init__(self, call: Any):
        self.remote = call
