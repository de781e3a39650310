"""fabric/config.py: strict keys, typed values, dotted overrides, YAML round-trip, and every shipped config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import yaml

from fabric.config import ConfigError, FabricConfig, Field, apply_override
from fabric.workload import WorkloadConfig, available_workloads, load_workload, workload_for_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = sorted((ROOT / "configs" / "data").glob("*_schema.yaml"))
SERVE_CONFIGS = sorted((ROOT / "configs" / "serve").glob("*.yaml"))
MONITOR_CONFIGS = sorted((ROOT / "configs" / "monitor").glob("*.yaml"))
FABRIC_CONFIGS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml")
    if "kuberay" not in p.parts and p not in SCHEMAS and p not in SERVE_CONFIGS and p not in MONITOR_CONFIGS
)


class Optim(FabricConfig):
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    kind: Literal["sgd", "adam"] = Field("sgd", description="Optimizer.")


class Example(WorkloadConfig):
    epochs: int = Field(3, ge=1, description="Epochs.")
    optim: Optim = Field(default_factory=Optim, description="Optimizer settings.")
    tags: list[str] = Field(default_factory=list, description="Free tags.")


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_key_names_the_field_and_the_allowed_keys(tmp_path):
    path = write(tmp_path, {"optim": {"lr": 0.1, "momentum": 0.9}})
    with pytest.raises(ConfigError) as err:
        Example.from_yaml(path)
    message = str(err.value)
    assert "optim.momentum: unknown key" in message
    assert "allowed keys here: kind, lr" in message
    assert str(path) in message


def test_bad_type_names_the_field_and_the_value(tmp_path):
    path = write(tmp_path, {"epochs": "three"})
    with pytest.raises(ConfigError) as err:
        Example.from_yaml(path)
    assert "epochs:" in str(err.value)
    assert "'three'" in str(err.value)
    assert "integer" in str(err.value)


def test_bad_choice_lists_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError) as err:
        Example.from_yaml(write(tmp_path, {"optim": {"kind": "rmsprop"}}))
    assert "optim.kind" in str(err.value) and "'sgd' or 'adam'" in str(err.value) and "'rmsprop'" in str(err.value)


def test_bad_override_names_the_field_and_the_override():
    with pytest.raises(ConfigError) as err:
        Example.from_yaml(None, ["optim.lr=-1"])
    message = str(err.value)
    assert "optim.lr" in message and "greater than 0" in message and "override 'optim.lr=-1'" in message


def test_override_to_unknown_key_is_refused():
    with pytest.raises(ConfigError, match=r"optim\.nesterov: unknown key \(from override 'optim.nesterov=true'\)"):
        Example.from_yaml(None, ["optim.nesterov=true"])


@pytest.mark.parametrize("item", ["epochs", "=3", "optim..lr=1"])
def test_malformed_override_is_refused(item):
    with pytest.raises(ConfigError, match="override"):
        Example.from_yaml(None, [item])


def test_override_into_a_value_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"epochs is a value \(2\)"):
        Example.from_yaml(write(tmp_path, {"epochs": 2}), ["epochs.x=1"])


def test_overrides_parse_yaml_values_and_win_over_the_file(tmp_path):
    path = write(tmp_path, {"epochs": 2, "optim": {"lr": 0.5}})
    cfg = Example.from_yaml(path, ["epochs=7", "optim.kind=adam", "tags=[a, b]"])
    assert (cfg.epochs, cfg.optim.lr, cfg.optim.kind, cfg.tags) == (7, 0.5, "adam", ["a", "b"])


def test_apply_override_creates_sections():
    data: dict = {}
    assert apply_override(data, "runtime.ray.num_cpus=2") == ("runtime", "ray", "num_cpus")
    assert data == {"runtime": {"ray": {"num_cpus": 2}}}


def test_to_yaml_round_trips(tmp_path):
    cfg = Example.from_yaml(None, ["epochs=5", "optim.kind=adam", "runtime.ray.num_cpus=2", "tags=[x]"])
    path = tmp_path / "saved.yaml"
    cfg.to_yaml(path)
    assert Example.from_yaml(path) == cfg


def test_missing_file_and_non_mapping_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        Example.from_yaml(tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        Example.from_yaml(listing)


def test_config_for_another_workload_is_refused(tmp_path):
    path = write(tmp_path, {"workload": "other"})
    with pytest.raises(ConfigError, match="config for workload 'other', not 'smoke'"):
        load_workload("smoke").load_config(path)


def test_shipped_configs_exist():
    assert FABRIC_CONFIGS, "configs/ holds no fabric configs"


@pytest.mark.parametrize("path", FABRIC_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    workload = workload_for_config(path)
    cfg = workload.load_config(path)
    saved = tmp_path / "saved.yaml"
    cfg.to_yaml(saved)
    assert workload.config_cls.from_yaml(saved) == cfg


def serve_config_class(path: Path) -> type[FabricConfig]:
    """What `fabric serve up` and `fabric config check` load the file as: the class of its `kind:`."""
    from fabric.config_kinds import SERVE_KINDS, config_class, kind_of

    kind = kind_of(path)
    assert kind in SERVE_KINDS, f"{path} must say its kind (kind: serve, llm or rag)"
    return config_class(kind)


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_serve_config_loads_and_round_trips(path, tmp_path):
    config_cls = serve_config_class(path)
    cfg = config_cls.from_yaml(path)
    saved = tmp_path / "saved.yaml"
    cfg.to_yaml(saved)
    assert config_cls.from_yaml(saved) == cfg


def test_serve_configs_of_both_kinds_are_shipped():
    kinds = {serve_config_class(p).__name__ for p in SERVE_CONFIGS}
    assert kinds == {"ServeConfig", "LLMServeConfig", "RagServeConfig"}


@pytest.mark.parametrize("path", MONITOR_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_monitor_spec_loads_and_round_trips(path, tmp_path):
    from fabric.config_kinds import config_class, kind_of
    from fabric.monitor.alerts import MonitorSpec

    assert kind_of(path) == "monitor" and config_class("monitor") is MonitorSpec  # what `fabric config check` reads
    spec = MonitorSpec.from_yaml(path)
    assert spec.rules
    saved = tmp_path / "saved.yaml"
    spec.to_yaml(saved)
    assert MonitorSpec.from_yaml(saved) == spec
    if spec.ct:
        assert (ROOT / spec.ct.config).is_file(), f"{path}: ct.config {spec.ct.config} does not exist"


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_every_shipped_data_schema_loads(path):
    from fabric.data import DataSchema

    assert DataSchema.from_yaml(path).columns


def test_every_yaml_under_configs_is_covered():
    kuberay = set((ROOT / "configs" / "kuberay").glob("*.yaml"))
    covered = set(FABRIC_CONFIGS) | set(SCHEMAS) | set(SERVE_CONFIGS) | set(MONITOR_CONFIGS) | kuberay
    assert set((ROOT / "configs").rglob("*.yaml")) == covered


@pytest.mark.parametrize("name", available_workloads())
def test_every_workload_config_field_is_described(name):
    def undescribed(model: type[FabricConfig], prefix: str = "") -> list[str]:
        missing = []
        for field_name, field in model.model_fields.items():
            if not field.description:
                missing.append(prefix + field_name)
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, FabricConfig):
                missing += undescribed(annotation, f"{prefix}{field_name}.")
        return missing

    assert undescribed(load_workload(name).config_cls) == []
