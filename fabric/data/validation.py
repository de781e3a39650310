"""Declarative data validation over a whole Ray Dataset, with pandera checks per batch.

A schema in YAML::

    min_rows: 100
    strict: false            # true: columns not listed here are a violation
    columns:
      age:    {type: int, nullable: false, min: 0, max: 120}
      income: {type: float, max_null_fraction: 0.05, min: 0}
      segment: {type: str, allowed: [retail, business]}
      id:     {type: int, unique: true}

Per batch (in parallel, with ``map_batches``), pandera checks types, nulls, ranges and categories and counts the
bad rows of each rule; the counts and a few examples are then added up across batches. Null shares, uniqueness
(a distributed group-by) and the row count are checked over the whole dataset.

Example:
    >>> report = validate(data.read("lakefs://iris/main/raw"), "configs/data/iris_schema.yaml")
    Traceback (most recent call last):
    DataValidationError: ... column sepal_length: min (>= 0): 3 bad rows, e.g. [-1.0, -2.5, -0.1]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from fabric.config import FabricConfig, Field
from fabric.data.store import DataError

__all__ = ["ColumnRule", "DataSchema", "DataValidationError", "ValidationReport", "Violation", "validate"]

EXAMPLES = 5
RULE_OF_CHECK = {
    "greater_than_or_equal_to": "min",
    "less_than_or_equal_to": "max",
    "isin": "allowed",
    "not_nullable": "nullable",
    "column_in_dataframe": "required",
    "type": "type",
    "column_in_schema": "strict",
}


class ColumnRule(FabricConfig):
    """Rules for one column; every rule is optional."""

    type: Literal["int", "float", "number", "str", "bool", "datetime"] | None = Field(
        None, description="Kind of values: int, float, number (int or float), str, bool or datetime."
    )
    nullable: bool = Field(True, description="Whether nulls are allowed at all.")
    max_null_fraction: float | None = Field(None, ge=0, le=1, description="Largest share of null values allowed.")
    min: float | None = Field(None, description="Smallest allowed value (inclusive).")
    max: float | None = Field(None, description="Largest allowed value (inclusive).")
    allowed: list[Any] | None = Field(None, description="The only values allowed (categories).")
    unique: bool = Field(False, description="No value may appear twice (nulls ignored).")


class DataSchema(FabricConfig):
    """A dataset's expected shape."""

    columns: dict[str, ColumnRule] = Field(default_factory=dict, description="Rules per column name.")
    min_rows: int = Field(0, ge=0, description="Fewest rows the dataset may have.")
    strict: bool = Field(False, description="Whether columns not listed in `columns` are a violation.")


@dataclass
class Violation:
    """One broken rule: which column, which rule, how many bad rows, and some of the bad values."""

    column: str | None
    rule: str
    count: int
    examples: list[Any] = field(default_factory=list)
    detail: str = ""

    def describe(self) -> str:
        where = f"column {self.column}" if self.column else "dataset"
        examples = f", e.g. {self.examples}" if self.examples else ""
        return f"{where}: {self.rule}{f' ({self.detail})' if self.detail else ''}: {self.count} bad rows{examples}"


@dataclass
class ValidationReport:
    """What validation found over the whole dataset."""

    rows: int
    violations: list[Violation]
    source: str | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "ok": self.ok,
                "violations": [asdict(v) for v in self.violations]}

    def summary(self) -> str:
        head = f"{self.source or 'dataset'}: {self.rows} rows, "
        if self.ok:
            return head + "all rules pass"
        return head + f"{len(self.violations)} rules violated:\n" + "\n".join(
            f"  {v.describe()}" for v in self.violations
        )

    def save(self, path: str | Path) -> Path:
        """Writes the report as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return Path(path)

    def log_to_mlflow(self) -> None:
        """Saves the report with the active MLflow run (``validation.json``, ``validation_ok`` metric)."""
        import mlflow

        mlflow.log_dict(json.loads(json.dumps(self.to_dict(), default=str)), "validation.json")
        mlflow.log_metric("validation_ok", float(self.ok))
        mlflow.log_metric("validation_rows", self.rows)


class DataValidationError(DataError):
    """The dataset broke its schema. ``report`` lists every violated rule with counts and examples."""

    def __init__(self, report: ValidationReport):
        super().__init__(f"data validation failed: {report.summary()}")
        self.report = report


def validate(dataset: Any, schema: DataSchema | str | Path, source: str | None = None,
             raise_on_error: bool = True) -> ValidationReport:
    """Checks every row of a Ray Dataset against ``schema`` (a DataSchema or a YAML path).

    Raises :class:`DataValidationError` when a rule is broken (unless ``raise_on_error`` is False).
    """
    if not isinstance(schema, DataSchema):
        schema = DataSchema.from_yaml(schema)
    stats = dataset.map_batches(_BatchChecker(schema), batch_format="pandas", batch_size=65536).take_all()
    rows = sum(int(s["rows"]) for s in stats)
    violations = _merge_batch_violations(stats) + _null_share_violations(schema, stats, rows)
    violations += _unique_violations(dataset, schema)
    if rows < schema.min_rows:
        violations.append(Violation(None, "min_rows", rows, [], f"needs at least {schema.min_rows}, has {rows}"))
    report = ValidationReport(rows=rows, violations=sorted(violations, key=lambda v: (v.column or "", v.rule)),
                              source=source)
    if raise_on_error and not report.ok:
        raise DataValidationError(report)
    return report


class _BatchChecker:
    """Runs the pandera schema on one batch and returns one row of counts (a callable for ``map_batches``)."""

    def __init__(self, schema: DataSchema):
        self.schema = schema

    def __call__(self, batch: Any) -> Any:
        import pandas as pd
        import pandera.pandas as pa

        found: dict[tuple[str | None, str], dict[str, Any]] = {}
        try:
            _pandera_schema(self.schema).validate(batch, lazy=True)
        except pa.errors.SchemaErrors as errors:
            for case in errors.failure_cases.to_dict("records"):
                _count_case(found, case, len(batch))
        nulls = {name: int(batch[name].isna().sum()) for name in self.schema.columns if name in batch}
        return pd.DataFrame([{"rows": len(batch), "nulls": json.dumps(nulls),
                              "found": json.dumps([{"key": list(k), **v} for k, v in found.items()], default=str)}])


def _pandera_schema(schema: DataSchema) -> Any:
    import pandera.pandas as pa

    columns = {}
    for name, rule in schema.columns.items():
        checks = [pa.Check(_type_check(rule.type), name="type")] if rule.type else []
        if rule.min is not None:
            checks.append(pa.Check.ge(rule.min))
        if rule.max is not None:
            checks.append(pa.Check.le(rule.max))
        if rule.allowed is not None:
            checks.append(pa.Check.isin(rule.allowed))
        columns[name] = pa.Column(checks=checks, nullable=rule.nullable, required=True)
    return pa.DataFrameSchema(columns, strict=schema.strict)


def _type_check(kind: str) -> Any:
    from pandas.api import types

    tests = {
        "int": types.is_integer_dtype,
        "float": types.is_float_dtype,
        "number": lambda d: types.is_numeric_dtype(d) and not types.is_bool_dtype(d),
        "str": lambda d: types.is_string_dtype(d) or types.is_object_dtype(d),
        "bool": types.is_bool_dtype,
        "datetime": types.is_datetime64_any_dtype,
    }
    return lambda series: bool(tests[kind](series.dtype))


def _count_case(found: dict, case: dict[str, Any], batch_rows: int) -> None:
    check = str(case["check"])
    rule = RULE_OF_CHECK.get(check.split("(")[0], check)
    column = case["column"] if case["schema_context"] == "Column" else case["failure_case"]
    if rule in ("min", "max") and "TypeError" in str(case["failure_case"]):
        return  # the column's type is wrong; the type rule reports it
    detail = {"min": ">= ", "max": "<= "}.get(rule, "") + check.split("(", 1)[-1].rstrip(")") if "(" in check else ""
    entry = found.setdefault((column, rule), {"count": 0, "examples": [], "detail": detail})
    column_level = case["index"] is None or rule in ("type", "required", "strict")
    entry["count"] = batch_rows if column_level else entry["count"] + 1
    if not column_level and len(entry["examples"]) < EXAMPLES:
        entry["examples"].append(case["failure_case"])


def _merge_batch_violations(stats: list[dict[str, Any]]) -> list[Violation]:
    merged: dict[tuple[str | None, str], Violation] = {}
    for stat in stats:
        for entry in json.loads(stat["found"]):
            column, rule = entry["key"]
            violation = merged.setdefault((column, rule), Violation(column, rule, 0, [], entry["detail"]))
            violation.count += entry["count"]
            violation.examples += entry["examples"][: EXAMPLES - len(violation.examples)]
    for violation in merged.values():
        if violation.rule in ("required", "strict"):
            violation.detail = "column missing" if violation.rule == "required" else "column not in schema"
    return list(merged.values())


def _null_share_violations(schema: DataSchema, stats: list[dict[str, Any]], rows: int) -> list[Violation]:
    violations = []
    for name, rule in schema.columns.items():
        if rule.max_null_fraction is None or not rows:
            continue
        nulls = sum(json.loads(s["nulls"]).get(name, 0) for s in stats)
        if nulls / rows > rule.max_null_fraction:
            detail = f"{nulls / rows:.1%} null, at most {rule.max_null_fraction:.1%} allowed"
            violations.append(Violation(name, "max_null_fraction", nulls, [], detail))
    return violations


def _partitions() -> int:
    """Hash partitions for the uniqueness group-by: one per CPU of the cluster, not Ray's default of 200."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _unique_violations(dataset: Any, schema: DataSchema) -> list[Violation]:
    violations = []
    for name, rule in schema.columns.items():
        if not rule.unique or name not in dataset.schema().names:
            continue
        counts = dataset.select_columns([name]).groupby(name, num_partitions=_partitions()).count()
        duplicates = counts.filter(lambda row, name=name: row["count()"] > 1 and row[name] is not None).take_all()
        if duplicates:
            total = sum(int(row["count()"]) for row in duplicates)
            examples = [row[name] for row in duplicates[:EXAMPLES]]
            violations.append(Violation(name, "unique", total, examples, f"{len(duplicates)} values repeat"))
    return violations
