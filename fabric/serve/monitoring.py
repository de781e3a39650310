"""Scheduled monitoring inside the serving app: the ``monitor:`` section of a serve config.

When a serve config has a ``monitor:`` section, ``build_app`` adds a ``Monitor`` deployment to the application:
it checks each watched model every ``interval_s`` (an Evidently check of the inference log against the
training data, :func:`fabric.monitor.check`), evaluates the alert rules (:mod:`fabric.monitor.alerts`), and
exports the figures as Prometheus gauges on the node's metrics endpoint:

=============================== ========================================= ==================================
gauge                           tags                                      value
=============================== ========================================= ==================================
``fabric_drift_share``          model, version                            share of drifted features
``fabric_column_drift_score``   model, version, column                    the column's drift test score
``fabric_column_drifted``       model, version, column                    1 when the column drifted, else 0
``fabric_model_quality``        model, version, metric                    accuracy, f1, ... on labelled rows
``fabric_monitor_rows``         model, version                            rows in the checked window
=============================== ========================================= ==================================

The gateway reports every request's outcome to it (for ``error_rate_above`` rules) and shows the last check at
``GET /admin/monitor`` and ``GET /admin/models/NAME/monitor``; ``POST /admin/models/NAME/monitor/check`` runs
one now. There is no separate daemon to remember: the checks live and die with the app.

Example serve config section::

    monitor:
      interval_s: 300
      specs:
        - configs/monitor/breast_cancer.yaml     # a monitor spec file, or the same mapping inline
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from ray import serve

from fabric.monitor.alerts import MonitorSpec

__all__ = ["Monitor", "RequestTally"]

log = logging.getLogger("ray.serve")


@serve.deployment(num_replicas=1)
class Monitor:
    """Runs each spec's check every ``interval_s``, fires its rules, keeps the last outcome, exports gauges."""

    def __init__(self, specs: list[dict], interval_s: float, first_check_s: float, tracking_uri: str,
                 log_root: str | None):
        import mlflow
        from ray.serve.metrics import Counter, Gauge

        mlflow.set_tracking_uri(tracking_uri)
        self.specs = {spec["model"]: MonitorSpec(**spec) for spec in specs}
        self.interval_s, self.log_root = interval_s, log_root
        self.last: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, list[int]] = {}  # model -> [requests, server errors] since its last check
        self.locks = {model: threading.Lock() for model in self.specs}
        self.gauges = {
            "drift_share": Gauge("fabric_drift_share", description="Share of drifted features in the last check.",
                                 tag_keys=("model", "version")),
            "column_score": Gauge("fabric_column_drift_score", description="A feature's drift test score.",
                                  tag_keys=("model", "version", "column")),
            "column_drifted": Gauge("fabric_column_drifted", description="1 when a feature drifted, else 0.",
                                    tag_keys=("model", "version", "column")),
            "quality": Gauge("fabric_model_quality", description="Quality on the labelled rows of the last check.",
                             tag_keys=("model", "version", "metric")),
            "rows": Gauge("fabric_monitor_rows", description="Rows in the last check's window.",
                          tag_keys=("model", "version")),
        }
        self.alerts = Counter("fabric_alerts_fired", description="Alerts fired, by model and rule.",
                              tag_keys=("model", "rule"))
        threading.Thread(target=self._schedule, args=(first_check_s,), daemon=True, name="fabric-monitor").start()

    def _schedule(self, first_check_s: float) -> None:
        time.sleep(first_check_s)
        while True:
            for model in self.specs:
                self.check_now(model)
            time.sleep(self.interval_s)

    def check_now(self, model: str) -> dict[str, Any]:
        """Checks ``model`` now, fires its due rules, updates the gauges; returns the outcome (or the error)."""
        from fabric.monitor import MonitorError
        from fabric.monitor.alerts import run_spec

        with self.locks[model]:
            total, errors = self.requests.pop(model, [0, 0])
            error_rate = errors / total if total else None
            try:
                outcome = run_spec(self.specs[model], error_rate=error_rate, log_root=self.log_root)
            except MonitorError as exc:  # too few rows yet, no log yet: normal early on
                outcome = {"error": str(exc)}
            except Exception as exc:  # a failing check must not end the schedule; it is shown at the admin route
                log.warning("fabric monitor: checking %s failed: %s", model, exc)
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
            outcome.update(model=model, time=time.time(), error_rate=error_rate, requests=total)
            self.last[model] = outcome
            if "check" in outcome:
                self._export(outcome)
            return outcome

    def _export(self, outcome: dict[str, Any]) -> None:
        check = outcome["check"]
        tags = {"model": check["model"], "version": str(check["version"])}
        self.gauges["drift_share"].set(check["drift_share"], tags=tags)
        self.gauges["rows"].set(check["rows"], tags=tags)
        for column, stats in check["columns"].items():
            self.gauges["column_score"].set(float(stats.get("score") or 0.0), tags={**tags, "column": column})
            self.gauges["column_drifted"].set(float(bool(stats.get("drifted"))), tags={**tags, "column": column})
        for metric, value in (check.get("quality") or {}).items():
            if isinstance(value, (int, float)):
                self.gauges["quality"].set(float(value), tags={**tags, "metric": metric})
        for alert in outcome["alerts"]:
            self.alerts.inc(tags={"model": check["model"], "rule": alert["rule"]})

    def add_requests(self, counts: dict[str, list[int]]) -> None:
        """The gateway's request outcomes since its last report: ``{model: [requests, server errors]}``."""
        for model, (total, errors) in counts.items():
            seen = self.requests.setdefault(model, [0, 0])
            seen[0] += total
            seen[1] += errors

    def status(self, model: str | None = None) -> dict[str, Any]:
        """The last check of ``model`` (None: of every watched model), with the schedule."""
        if model is not None:
            return {"model": model, "watched": model in self.specs, "interval_s": self.interval_s,
                    "last": self.last.get(model)}
        return {"interval_s": self.interval_s, "models": sorted(self.specs), "last": self.last}


class RequestTally:
    """The gateway's side: counts outcomes per model and sends them to the Monitor every few seconds."""

    def __init__(self, monitor: Any, every_s: float = 5.0):
        self.monitor, self.every_s = monitor, every_s
        self.counts: dict[str, list[int]] = {}
        self.task: asyncio.Task | None = None

    def add(self, model: str, status: int) -> None:
        seen = self.counts.setdefault(model, [0, 0])
        seen[0] += 1
        seen[1] += int(status >= 500)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._push())

    async def _push(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.flush()

    async def flush(self) -> None:
        """Sends the outcomes counted so far (also before a check asked for through the admin route)."""
        counts, self.counts = self.counts, {}
        if counts:
            try:
                await self.monitor.add_requests.remote(counts)
            except Exception as exc:  # the monitor restarting must not disturb serving
                log.warning("fabric monitor: could not report request outcomes: %s", exc)
