"""The settings of a monitoring check (the ``check:`` section of a monitor YAML) and its one error type.

Example:
    >>> cfg = MonitorConfig.from_yaml(None, ["last=null", "since=2h", "column_methods.mean_radius=psi"])
    >>> parse_span(cfg.since)
    7200.0
"""

from __future__ import annotations

import re

from pydantic import field_validator, model_validator

from fabric.config import FabricConfig, Field

__all__ = ["MonitorConfig", "MonitorError", "parse_span"]

SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class MonitorError(ValueError):
    """A check cannot run: unknown model or version, no inference log yet, too few rows, reference data missing.

    The message names what is missing and what exists instead.
    """


def parse_span(text: str) -> float:
    """Seconds in a time span such as ``30m``, ``1h``, ``2d`` (units s, m, h, d, w)."""
    match = SPAN.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise MonitorError(f"time span {text!r} is not like 30m, 1h or 2d (a positive number and one of s, m, h, d, w)")
    return float(match.group(1)) * SECONDS[match.group(2)]


class MonitorConfig(FabricConfig):
    """What a drift and quality check reads and how Evidently judges it."""

    last: int | None = Field(1000, ge=1, description="Window: the last N logged rows of the model version.")
    since: str | None = Field(None, description="Window: the rows logged in this time span up to now, like 30m, "
                              "1h or 2d (set last to null to use it; the two exclude each other).")
    max_rows: int = Field(50_000, ge=100, description="Current and reference rows are each sampled (seeded) "
                          "down to this many when larger, before Evidently sees them.")
    seed: int = Field(0, description="Seed of that sampling.")
    min_rows: int = Field(30, ge=1, description="Fewest window rows a check accepts; fewer is an error.")
    min_labelled_rows: int = Field(20, ge=1, description="Fewest labelled window rows needed for quality "
                                   "metrics; with fewer the result says so instead.")
    drift_share: float = Field(0.5, gt=0, le=1, description="Share of drifted feature columns at which Evidently "
                               "calls the whole dataset drifted.")
    method: str | None = Field(None, description="Evidently stattest for every column (e.g. ks, psi, "
                               "wasserstein, chisquare). Empty: Evidently's default per column type and size.")
    column_methods: dict[str, str] = Field(default_factory=dict, description="Stattest per column, overriding "
                                           "`method`; the key `prediction` sets the prediction drift test.")
    threshold: float | None = Field(None, gt=0, description="Stattest threshold (a p-value or a distance, "
                                    "depending on the method). Empty: the method's default.")
    validation_schema: str | None = Field(None, description="Data-quality rules (a `fabric data validate` YAML). "
                                          "Empty: the schema the version's training run validated against, "
                                          "else the reference's own min/max and categories.")

    @field_validator("since")
    @classmethod
    def _span(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_span(value)
            except MonitorError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_window(self) -> MonitorConfig:
        if self.last is not None and self.since is not None:
            raise ValueError("set either last (rows) or since (a time span), not both; set the other to null")
        if self.last is None and self.since is None:
            raise ValueError("set last (rows) or since (a time span) to choose the window")
        return self

    def window(self, last: int | None = None, since: str | None = None) -> MonitorConfig:
        """A copy whose window is ``last`` rows or ``since`` a span when either is given (they exclude each other)."""
        if last is not None and since is not None:
            raise MonitorError("give either last (rows) or since (a time span), not both")
        if last is None and since is None:
            return self
        if last is not None and last < 1:
            raise MonitorError(f"last must be at least 1 row, got {last}")
        if since is not None:
            parse_span(since)
        return self.model_copy(update={"last": last, "since": since})
