"""Configuration of a continuous-training pipeline: which model, how it retrains, how the challenger is judged and
released, and what starts the pipeline.

One YAML file per pipeline (``configs/ct/breast_cancer.yaml``). The training itself is the existing tabular
config (``train_config`` plus ``train_overrides``); the pipeline sets its data URI to the snapshot commit and does
the registration itself. Every value is checked before a run starts, the training config included.

Example:
    >>> cfg = CTConfig.from_yaml("configs/ct/breast_cancer.yaml", ["gate.margin=0.01"])
    >>> cfg.training_config("lakefs://demo/0123abcd/breast_cancer").data.create_from is None
    True
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import field_validator, model_validator

from fabric.config import ConfigError, FabricConfig, Field, apply_override, load_yaml
from fabric.data.uri import DatasetURI
from fabric.workload import WorkloadConfig

__all__ = ["CTConfig", "GateConfig", "LabelsConfig", "ServingConfig", "TriggersConfig", "parse_duration"]

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``90``, ``"90s"``, ``"30m"``, ``"6h"`` or ``"7d"``; ValueError naming the accepted forms."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
        if not match:
            raise ValueError(f"{text!r} is not a duration; write seconds or a number with s, m, h or d (e.g. 6h)")
        seconds = float(match.group(1)) * UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return seconds


class LabelsConfig(FabricConfig):
    """Which newly labelled production rows the snapshot adds: a window of the inference log."""

    log_root: str | None = Field(
        None, description="Root of the inference log the serving app writes (a folder or pyarrow URI). Empty: "
        "FABRIC_HOME/inference, the serving app's default.",
    )
    last: int | None = Field(None, ge=1, description="Use only the newest N labelled rows. Empty: all in the window.")
    since: str | None = Field(
        None, description="Use only rows predicted within this span before the run: seconds or 30m, 6h, 7d. Empty: "
        "no time limit (rows a previous pipeline run already committed are always left out).",
    )
    min_rows: int = Field(
        50, ge=2, description="Fewest newly labelled rows a run needs; with fewer the snapshot step fails and says so.",
    )

    @field_validator("since")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class GateConfig(FabricConfig):
    """How the challenger is judged against the champion on the recent held-out rows."""

    mode: Literal["auto", "approval"] = Field(
        "auto", description="auto: a challenger that wins is released. approval: it waits, tagged pending, until "
        "`fabric models approve NAME VERSION` (which makes it champion).",
    )
    metric: str | None = Field(
        None, description="Metric compared. Empty: the model's promotion policy metric (roc_auc / rmse by default).",
    )
    margin: float | None = Field(
        None, ge=0, description="How much better the challenger must be, in the metric's units. Empty: the model's "
        "promotion policy margin.",
    )
    approval_timeout_s: float = Field(
        3600.0, gt=0, description="approval mode: how long to wait for the approval before the run ends "
        "approval_timeout (the version stays pending and can still be approved by hand).",
    )
    poll_s: float = Field(5.0, gt=0, description="approval mode: seconds between checks for the approval.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        from fabric.evaluation import known_metric

        return known_metric(value)


class ServingConfig(FabricConfig):
    """The running serving app whose rollout API releases the challenger (canary, observe, finish)."""

    url: str | None = Field(
        "http://127.0.0.1:8000", description="Base URL of the serving app (fabric serve up). Empty, or nothing "
        "answering there: canary and observe are skipped and the gate's decision stands.",
    )
    admin_key_env: str = Field(
        "FABRIC_ADMIN_KEY", min_length=1, description="Environment variable holding an admin API key of the app.",
    )
    canary_percent: float = Field(10.0, gt=0, le=100, description="Share of requests the canary sends to the "
                                  "challenger.")
    observe_s: float = Field(60.0, ge=0, description="Seconds the canary runs at least before it is judged.")
    min_requests: int = Field(
        20, ge=1, description="Challenger requests needed before the canary is judged (and before the app may "
        "roll it back automatically).",
    )
    observe_timeout_s: float = Field(
        900.0, gt=0, description="With too little traffic to judge after this long, the canary is rolled back.",
    )
    poll_s: float = Field(1.0, gt=0, description="Seconds between reads of the rollout's state while observing.")
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of each call to the app's admin API.")

    @model_validator(mode="after")
    def _window_fits(self) -> ServingConfig:
        if self.observe_timeout_s < self.observe_s:
            raise ValueError(f"observe_timeout_s ({self.observe_timeout_s:g}) must be at least observe_s "
                             f"({self.observe_s:g})")
        return self


class TriggersConfig(FabricConfig):
    """What starts the pipeline besides a person and an alert; `fabric ct watch --config FILE` acts on them."""

    schedule_s: float | None = Field(
        None, gt=0, description="Run every this many seconds (counted from the last run's start). Empty: no schedule.",
    )
    data_branch: DatasetURI | None = Field(
        None, description="Run when this branch gets a new commit (lakefs://REPO/BRANCH/PATH); that run's reference "
        "data is the new commit instead of the champion's. Empty: watch no branch.",
    )
    poll_s: float = Field(30.0, gt=0, description="Seconds between the watcher's checks.")


class CTConfig(WorkloadConfig):
    """A continuous-training pipeline: snapshot, validate, train, evaluate, register, gate, canary, observe, finish."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Pipeline name (lowercase letters, "
                      "digits, '-'); its runs live under FABRIC_HOME/ct/NAME/.")
    model: str = Field(..., min_length=1, description="Registered model to retrain; it needs a champion.")
    train_config: str = Field(
        ..., min_length=1, description="Tabular training config the challenger trains with (configs/tabular/"
        "train.yaml, or a tune config with tune: true). The pipeline sets its data.uri to the snapshot commit, "
        "clears data.create_from and registers the model itself.",
    )
    train_overrides: list[str] = Field(
        default_factory=list, description="Dotted key=value overrides applied to train_config, e.g. train.epochs=4.",
    )
    tune: bool = Field(False, description="Run the tune_tabular search (train_config is a tune config) instead of "
                       "one training.")
    labels: LabelsConfig = Field(default_factory=LabelsConfig, description="Newly labelled production rows.")
    recent_holdout_fraction: float = Field(
        0.3, gt=0, lt=1, description="Share of the newest labelled rows held out to compare challenger and champion; "
        "never trained on.",
    )
    gate: GateConfig = Field(default_factory=GateConfig, description="How the challenger is judged.")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="Release through the serving app.")
    triggers: TriggersConfig = Field(default_factory=TriggersConfig, description="Schedule and watched data branch.")
    ingest: list[str] = Field(
        default_factory=list, description="ingest_docs configs (configs/rag/python_docs.yaml) re-run as the run's "
        "first step, so the RAG indexes the model's app retrieves from follow their documents' newest commit; each "
        "is a no-op when that commit's collection is already live. Empty: no ingest step.",
    )

    def ingest_configs(self) -> list[Any]:
        """The ingestion settings of each ``ingest`` entry, run on this pipeline's runtime.

        Raises:
            ConfigError: an ingest config is missing or wrong; the message names the file and the field.
        """
        from rag.ingest import IngestSettings

        configs = []
        for path in self.ingest:
            data = load_yaml(path)
            data.pop("workload", None)
            data.pop("runtime", None)
            try:
                configs.append(IngestSettings.from_dict(data, source=f"{path} (ingest)"))
            except ConfigError as exc:
                raise ConfigError(f"{exc}\n  (ingest of pipeline {self.name})") from None
        return configs

    def training_config(self, data_uri: str | None = None) -> Any:
        """The tabular (or tuning) config the challenger trains with, on ``data_uri`` when given.

        Raises:
            ConfigError: the training config or an override is wrong; the message names the field.
        """
        from fabric.tabular.config import TabularConfig
        from fabric.tabular.tune import TuneTabularConfig

        data = load_yaml(self.train_config)
        origins = {apply_override(data, item): item for item in self.train_overrides}
        forced = ["data.create_from=null", "registry.model_name=null"]
        if data_uri:
            forced.append(f"data.uri={data_uri}")
        for item in forced:
            apply_override(data, item)
        data["runtime"] = self.runtime.model_dump(mode="json")
        data.pop("workload", None)
        if not self.tune:
            data.pop("tune", None)
        config_cls = TuneTabularConfig if self.tune else TabularConfig
        try:
            return config_cls.from_dict(data, source=f"{self.train_config} (train_config)", origins=origins)
        except ConfigError as exc:
            raise ConfigError(f"{exc}\n  (train_config of pipeline {self.name})") from None
