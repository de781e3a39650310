"""llm.models: the embedded GGUF converted once and reused, MLflow URIs, local folders, clear errors; the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabric.runtime import cached_models
from llm.models import DEFAULT_MODEL, SOURCE_FILE, ModelSourceError, resolve_model

ROOT = Path(__file__).resolve().parents[2]


def _fabric(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fabric", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def _tiny_hf_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


@pytest.mark.slow
def test_gguf_is_converted_once_then_reused(smollm2_folder, fabric_home):
    assert smollm2_folder == fabric_home / "models" / "gguf" / DEFAULT_MODEL
    names = {p.name for p in smollm2_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_FILE} <= names
    assert json.loads((smollm2_folder / SOURCE_FILE).read_text())["kind"] == "gguf"
    weights = smollm2_folder / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert resolve_model(DEFAULT_MODEL) == smollm2_folder
    assert time.perf_counter() - started < 2  # no second conversion
    assert weights.stat().st_mtime_ns == stamp
    assert f"gguf/{DEFAULT_MODEL}" in cached_models()
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.slow
def test_cli_pull_prints_the_cached_folder(smollm2_folder, cli_env):
    out = _fabric("llm", "pull", "--json", env=cli_env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == str(smollm2_folder)
    plain = _fabric("llm", "pull", str(smollm2_folder), env=cli_env)  # a local folder is used in place
    assert plain.returncode == 0 and plain.stdout.strip() == str(smollm2_folder)


def test_missing_sources_are_named_in_the_error(tmp_path, cli_env):
    with pytest.raises(ModelSourceError, match="'meta-llama/Llama-3.1-8B' not found.*offline"):
        resolve_model("meta-llama/Llama-3.1-8B", cache=tmp_path)
    with pytest.raises(ModelSourceError, match="without config.json"):
        resolve_model(str(tmp_path), cache=tmp_path)
    with pytest.raises(ModelSourceError, match="missing.gguf"):
        resolve_model(str(tmp_path / "missing.gguf"), cache=tmp_path)
    out = _fabric("llm", "pull", str(tmp_path / "nowhere"), env=cli_env)
    assert out.returncode == 2 and "nowhere" in out.stderr and "not found" in out.stderr


def test_local_folder_is_used_in_place(tmp_path):
    folder = _tiny_hf_folder(tmp_path / "hf")
    assert resolve_model(str(folder), cache=tmp_path / "cache") == folder
    assert not (tmp_path / "cache").exists()


def test_mlflow_uris_are_downloaded_once(tmp_path):
    import mlflow

    from fabric.runtime import setup_mlflow

    setup_mlflow()
    folder = _tiny_hf_folder(tmp_path / "hf")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "base")
        info = mlflow.pyfunc.log_model(name="model", python_model=_echo_model(), artifacts={"hf": str(folder)},
                                       pip_requirements=[])
    version = mlflow.register_model(info.model_uri, "tiny-base").version
    mlflow.MlflowClient().set_registered_model_alias("tiny-base", "prod", version)
    cache = tmp_path / "cache"

    from_run = resolve_model(f"runs:/{run.info.run_id}/base", cache=cache)
    assert (from_run / "config.json").is_file() and from_run.is_relative_to(cache / "mlflow")
    registered = resolve_model(f"models:/tiny-base/{version}", cache=cache)
    assert json.loads((registered / "config.json").read_text())["model_type"] == "llama"
    assert resolve_model("models:/tiny-base@prod", cache=cache) == registered  # the alias's version, cached once
    with pytest.raises(ModelSourceError, match="'models:/tiny-base/99'"):
        resolve_model("models:/tiny-base/99", cache=cache)


def _echo_model():
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    return Echo()
