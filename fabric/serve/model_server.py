"""The model deployment: one registered model, the version behind its alias, batched predictions, hot reload.

``ModelServer`` loads the version its alias points at, follows the alias when it moves (hot reload, no restart),
and answers with dynamic batching (``@serve.batch``): concurrent requests are merged into one model call. With
``placement: replicas`` it is a deployment of its own (scales out, takes GPUs); with ``placement: gateway`` it runs
inside the gateway's process (:class:`InProcess`), a hop fewer. A fabric-trained model answers through its own
arrays (the fast path); any other MLflow model through its pyfunc (:mod:`fabric.serve.pyfunc_io`).
"""

import asyncio
import logging
import threading
import time
from collections import OrderedDict
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
        self.models: OrderedDict[str, tuple[dict[str, Any], Any]] = OrderedDict()  # least recently used first
        self.pinned: set[str] = set()  # a rollout's candidate: never unloaded
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
            self.models.move_to_end(version)
            return
        from fabric.serve.pyfunc_io import describe

        pyfunc = mlflow.pyfunc.load_model(f"models:/{self.route.name}/{version}")
        try:
            inner = pyfunc.unwrap_python_model()
        except Exception:  # a flavor's own pyfunc wrapper (scikit-learn, XGBoost...): not a PythonModel
            inner = None
        if hasattr(inner, "meta") and hasattr(inner, "model"):  # a fabric model: the fast path, arrays in and out
            self.models[version] = (inner.meta, inner.model)
        else:  # any other MLflow model: through its pyfunc, inputs checked against its signature
            self.models[version] = (describe(pyfunc), pyfunc)
        self._evict(keep=version)

    def _evict(self, keep: str) -> None:
        """Unloads the least recently used versions beyond ``max_loaded_versions``; never the live version, a
        rollout's candidate, or ``keep`` (the one just loaded)."""
        for version in [v for v in self.models if v not in {self.live, keep, *self.pinned}]:
            if len(self.models) <= self.route.max_loaded_versions:
                break
            del self.models[version]
            log.info("fabric: unloaded %s version %s (least recently used)", self.route.name, version)

    def _registry_state(self) -> tuple[str, set[str]]:
        """The version behind the alias and the candidate of the rollout the gateway saved (fabric.rollout)."""
        import json

        from mlflow import MlflowClient

        from fabric.serve.rollout import ROLLOUT_TAG

        model = MlflowClient().get_registered_model(self.route.name)
        saved = json.loads(model.tags.get(ROLLOUT_TAG) or "null")
        return str(model.aliases[self.route.alias]), {str(saved["request"]["version"])} if saved else set()

    def _follow_alias(self) -> None:
        while True:
            time.sleep(self.route.reload_interval_s)
            try:
                self.reload()
            except Exception as exc:  # a registry hiccup must not kill the replica; the live model stays
                log.warning("fabric: could not check alias %s@%s: %s", self.route.name, self.route.alias, exc)

    def reload(self) -> dict[str, str]:
        """Loads the version the alias points at now and makes it live (a no-op if unchanged)."""
        version, self.pinned = self._registry_state()
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
        """What the gateway validates requests against: the features and task of ``version`` (and the signature
        of a model served through its pyfunc)."""
        self._load(str(version))
        return _public(self.models[str(version)][0])

    def info(self) -> dict[str, Any]:
        meta, _ = self.models[self.live]
        return {"name": self.route.name, "alias": self.route.alias, "live": self.live, "loaded": sorted(self.models),
                "meta": _public(meta)}

    async def predict(self, matrix: Any, version: str | None = None) -> tuple[str, Any]:
        """The raw outputs (class probabilities, or predictions) for ``matrix``'s rows, and the version used; for a
        model served through its pyfunc, its output as named columns."""
        used, output = await self._batched((version or self.live, matrix))
        if isinstance(output, Exception):
            raise output
        return used, output

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
        from fabric.tabular.models import raw_outputs

        results: list[Any] = [None] * len(items)
        for version in {v for v, _ in items}:
            self._load(version)  # loads it if missing; marks it used
            meta, model = self.models[version]
            positions = [i for i, (v, _) in enumerate(items) if v == version]
            matrices = [items[i][1] for i in positions]
            if meta["task"] == "pyfunc":
                for i, answer in zip(positions, _pyfunc_batch(meta, model, matrices), strict=True):
                    results[i] = (version, answer)
                self.batch_sizes.observe(len(matrices), tags={"model": self.route.name, "version": version})
                continue
            output = raw_outputs(meta, model, np.concatenate(matrices))
            self.batch_sizes.observe(len(output), tags={"model": self.route.name, "version": version})
            start = 0
            for i, matrix in zip(positions, matrices, strict=True):
                results[i] = (version, output[start:start + len(matrix)])
                start += len(matrix)
        return results


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    keys = ("features", "task", "n_outputs", "model_type", "schema", "inputs", "outputs")
    return {k: meta[k] for k in keys if k in meta}


def _pyfunc_batch(meta: dict[str, Any], pyfunc: Any, inputs: list[Any]) -> list[Any]:
    """One model call for inputs that merge (DataFrames of the same columns) whose output splits back by rows
    (see pyfunc_io.Outputs.split); else one call each. A failing input gets its exception (a 422), not its
    neighbours."""
    from fabric.serve.pyfunc_io import batchable, columns_of

    if batchable(inputs) and not meta.get("unsplit"):
        import pandas as pd

        try:
            answers = columns_of(pyfunc.predict(pd.concat(inputs, ignore_index=True))).split([len(d) for d in inputs])
            if answers is not None:
                return answers
            meta["unsplit"] = True  # its output does not split into rows: never merge its inputs again
        except Exception:  # one bad input fails the merged call: answer each on its own below
            pass
    answers = []
    for data in inputs:
        try:
            answers.append(columns_of(pyfunc.predict(data)))
        except Exception as exc:
            from fabric.serve.protocols import RequestError

            answers.append(RequestError(f"the model could not score this input: {type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}", 422))
    return answers


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
