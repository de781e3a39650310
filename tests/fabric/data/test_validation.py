"""fabric/data/validation.py: every rule type, counted over a whole multi-block Ray Dataset."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from fabric.config import ConfigError
from fabric.data import DataSchema, DataValidationError, validate

SCHEMA = {
    "min_rows": 10,
    "columns": {
        "id": {"type": "int", "unique": True, "nullable": False},
        "age": {"type": "int", "min": 0, "max": 120},
        "income": {"type": "float", "max_null_fraction": 0.1},
        "segment": {"type": "str", "allowed": ["retail", "business"]},
    },
}


def clean(rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "id": np.arange(rows),
        "age": rng.integers(18, 90, rows),
        "income": rng.normal(50_000, 10_000, rows),
        "segment": rng.choice(["retail", "business"], rows),
    })


def dataset(frame: pd.DataFrame, blocks: int = 4):
    import ray.data

    return ray.data.from_pandas(frame).repartition(blocks)


def test_clean_data_passes(ray_session):
    report = validate(dataset(clean()), DataSchema.from_dict(SCHEMA), source="clean")
    assert report.ok and report.rows == 400 and "all rules pass" in report.summary()


def test_every_rule_is_caught_counted_and_named(ray_session):
    frame = clean()
    frame.loc[[3, 150, 390], "age"] = [-1, 130, 200]                 # min: 1, max: 2
    frame.loc[frame.index[:80], "income"] = np.nan                    # 20% null > 10%
    frame.loc[[7, 250], "segment"] = ["wholesale", "gov"]             # allowed: 2
    frame.loc[[10, 300], "id"] = [5, 5]                               # id 5 three times
    with pytest.raises(DataValidationError) as err:
        validate(dataset(frame), DataSchema.from_dict(SCHEMA))
    found = {(v.column, v.rule): v for v in err.value.report.violations}
    assert found[("age", "min")].count == 1 and found[("age", "min")].examples == [-1]
    assert found[("age", "max")].count == 2 and sorted(found[("age", "max")].examples) == [130, 200]
    assert found[("income", "max_null_fraction")].count == 80
    assert found[("segment", "allowed")].count == 2
    assert sorted(found[("segment", "allowed")].examples) == ["gov", "wholesale"]
    assert found[("id", "unique")].count == 3 and found[("id", "unique")].examples == [5]
    message = str(err.value)
    assert "column age: max" in message and "2 bad rows" in message
    assert "column income: max_null_fraction" in message and "20.0% null" in message


def test_types_nulls_row_count_and_columns(ray_session):
    frame = pd.DataFrame({"id": [1, 2, None], "age": ["x", "y", "z"], "income": [1.0, 2.0, 3.0]})
    schema = DataSchema.from_dict({**SCHEMA, "strict": True})
    frame["extra"] = 1
    report = validate(dataset(frame, blocks=2), schema, raise_on_error=False)
    found = {(v.column, v.rule): v.count for v in report.violations}
    assert found[("id", "nullable")] == 1
    assert found[("id", "type")] == 3          # ints with a null arrive as floats: the type rule says so
    assert found[("age", "type")] == 3
    assert found[("segment", "required")] == 3
    assert found[("extra", "strict")] == 3
    assert found[(None, "min_rows")] == 3
    assert not report.ok


def test_schema_file_errors_name_the_field(tmp_path):
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump({"columns": {"age": {"type": "integer", "minimum": 0}}}))
    with pytest.raises(ConfigError) as err:
        DataSchema.from_yaml(path)
    assert "columns.age.type" in str(err.value) and "columns.age.minimum: unknown key" in str(err.value)


def test_report_saves_as_json(ray_session, tmp_path):
    frame = clean(20)
    frame.loc[0, "age"] = -5
    report = validate(dataset(frame, blocks=1), DataSchema.from_dict(SCHEMA), raise_on_error=False)
    saved = json.loads(report.save(tmp_path / "report.json").read_text())
    assert saved["ok"] is False and saved["violations"][0]["rule"] == "min" and saved["rows"] == 20


@pytest.mark.slow
def test_cli_validate_exits_1_listing_violations(cli_env, tmp_path):
    env = {**cli_env, "FABRIC_HOME": str(tmp_path / "home")}
    frame = clean(50)
    frame.loc[1, "segment"] = "unknown"
    frame.to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(SCHEMA))

    def fabric(*args):
        return subprocess.run([sys.executable, "-m", "fabric", "data", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    assert fabric("init", "val").returncode == 0
    assert fabric("put", "lakefs://val/main/t", "data.csv", "-m", "d").returncode == 0
    out = fabric("validate", "lakefs://val/main/t", "--schema", "schema.yaml", "--json")
    assert out.returncode == 1, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["source"].startswith("lakefs://val/") and len(report["source"].split("/")[3]) == 64
    assert [(v["column"], v["rule"], v["count"]) for v in report["violations"]] == [("segment", "allowed", 1)]
