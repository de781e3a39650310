"""The `fabric` command: help, lazy imports, doctor, config check/show."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fabric(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fabric", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_help_lists_every_command(cli_env):
    out = fabric("--help", env=cli_env)
    assert out.returncode == 0
    for command in ("run", "submit", "doctor", "config"):
        assert command in out.stdout


def test_cli_import_leaves_heavy_libraries_unloaded(cli_env):
    code = (
        "import sys, fabric.cli, fabric.runtime, fabric.workload, fabric.jobs, fabric.doctor, fabric.tracking;"
        "print([m for m in ('ray', 'torch', 'mlflow', 'transformers', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env, check=True)
    assert out.stdout.strip() == "[]"


def test_doctor_reports_the_embedded_stack(cli_env, fabric_home):
    out = fabric("doctor", "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ray"]["mode"] == "embedded" and report["ray"]["address"] is None
    assert report["ray"]["version"] == "2.60.0" and report["ray"]["cpus"] >= 1
    assert report["ray"]["gpus"] == _gpus()  # what this machine has: 0 here, the devices on a GPU machine
    assert report["mlflow"]["mode"] == "embedded"
    assert report["mlflow"]["tracking_uri"] == f"sqlite:///{fabric_home}/mlflow/mlflow.db"
    assert report["data"] == {"backend": "local", "location": str(fabric_home / "data")}
    assert report["qdrant"] == {"mode": "local", "location": str(fabric_home / "qdrant")}
    assert report["models"]["cache"] == str(fabric_home / "models")
    assert (report["home"], report["home_source"]) == (str(fabric_home), "FABRIC_HOME is set")
    assert report["vllm"]["importable"] is (importlib.util.find_spec("vllm") is not None)


def _gpus() -> int:
    from fabric.doctor import _local_gpus  # nvidia-smi's count, as the doctor reads it

    return _local_gpus()


def test_doctor_says_which_home_and_why_from_a_subfolder(cli_env, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "FABRIC_HOME"}
    (tmp_path / ".fabric").mkdir()
    (tmp_path / "notebooks").mkdir()
    out = fabric("doctor", env=env, cwd=tmp_path / "notebooks")
    assert out.returncode == 0, out.stderr
    assert f"home: {tmp_path / '.fabric'}\n" in out.stdout
    assert "home_source: found in the current folder or an enclosing one" in out.stdout


def test_doctor_text_and_config_runtime(cli_env, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("runtime:\n  qdrant_url: http://qdrant.internal:6333\n")
    out = fabric("doctor", "--config", str(config), env=cli_env)
    assert out.returncode == 0, out.stderr
    assert "mode: server" in out.stdout and "http://qdrant.internal:6333" in out.stdout


def test_config_check_accepts_a_good_config(cli_env):
    out = fabric("config", "check", "configs/smoke.yaml", "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "ok": True, "file": "configs/smoke.yaml", "workload": "smoke", "config_class": "Config"
    }


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epoch=3", "train.epoch: unknown key"),
        ("train.epochs=abc", "train.epochs: Input should be a valid integer"),
        ("data.dataset=mnist", "data.dataset: Input should be 'breast_cancer', 'wine', 'iris' or 'digits'"),
    ],
)
def test_config_check_names_the_bad_field(cli_env, override, expected):
    out = fabric("config", "check", "configs/smoke.yaml", override, env=cli_env)
    assert out.returncode == 2
    assert expected in out.stderr
    as_json = json.loads(fabric("config", "check", "configs/smoke.yaml", override, "--json", env=cli_env).stdout)
    assert as_json["ok"] is False and expected in as_json["error"]


def test_config_check_needs_to_know_the_workload(cli_env, tmp_path):
    config = tmp_path / "anonymous.yaml"
    config.write_text("train:\n  epochs: 1\n")
    out = fabric("config", "check", str(config), env=cli_env)
    assert out.returncode == 2 and "--workload" in out.stderr
    assert fabric("config", "check", str(config), "--workload", "smoke", env=cli_env).returncode == 0


def test_config_show_resolves_defaults_and_overrides(cli_env):
    out = fabric("config", "show", "configs/smoke.yaml", "train.epochs=9", "--json", env=cli_env)
    shown = json.loads(out.stdout)
    assert shown["train"]["epochs"] == 9
    assert shown["runtime"]["mlflow"]["experiment"] == "fabric"
    text = fabric("config", "show", "configs/smoke.yaml", "train.lr=0.5", env=cli_env).stdout
    assert "lr: 0.5" in text and "runtime:" in text


def test_run_refuses_unknown_workload_and_bad_config_before_starting_ray(cli_env):
    out = fabric("run", "nope", env=cli_env)
    assert out.returncode == 2 and "unknown workload 'nope'" in out.stderr and "smoke" in out.stderr
    out = fabric("run", "smoke", "--config", "configs/smoke.yaml", "train.lr=-1", env=cli_env)
    assert out.returncode == 2 and "train.lr" in out.stderr
    assert "Started a local Ray instance" not in out.stderr + out.stdout


def test_submit_to_an_unreachable_cluster_is_a_clear_error(cli_env):
    out = fabric("submit", "smoke", "--config", "configs/smoke.yaml", "--address", "http://127.0.0.1:9", env=cli_env)
    assert out.returncode == 2
    assert "cannot reach the Ray dashboard at http://127.0.0.1:9" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("path", "config_class"), [("configs/serve/tabular.yaml", "ServeConfig"),
                                                    ("configs/serve/llm.yaml", "LLMServeConfig")])
def test_config_check_and_show_take_serve_configs(cli_env, path, config_class):
    out = fabric("config", "check", path, "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    kind = "llm" if config_class == "LLMServeConfig" else "serve"
    assert json.loads(out.stdout) == {"ok": True, "file": path, "kind": kind, "config_class": config_class}
    out = fabric("config", "check", path, "port=0", "auth.requird=false", env=cli_env)
    assert out.returncode == 2
    assert "port: Input should be greater than or equal to 1" in out.stderr
    assert "auth.requird: unknown key" in out.stderr
    out = fabric("config", "show", path, "port=8123", env=cli_env)
    assert out.returncode == 0, out.stderr
    assert f"kind: {kind}\n" in out.stdout and "port: 8123\n" in out.stdout
