"""finetune_lora on the embedded stack: a few LoRA steps on SmolLM2 lower the held-out loss and register an
adapter carrying its base model and data commit; both configs load; contradictory settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from fabric.config import ConfigError
from fabric.workload import load_workload

ROOT = Path(__file__).resolve().parents[2]
CPU_CONFIG = ROOT / "configs" / "llm" / "smollm2_lora_cpu.yaml"
GPU_CONFIG = ROOT / "configs" / "llm" / "llama3_8b_lora_gpu.yaml"
TINY = ["data.uri=lakefs://ci-chat/main/arithmetic", "data.create_rows=120", "data.max_holdout_rows=12",
        "data.max_length=48", "train.max_steps=3", "train.batch_size=4", "train.eval_batch_size=12",
        "train.warmup_steps=0", "scaling.num_workers=1", "scaling.cpus_per_worker=2", "registry.model_name=ci-lora"]


def test_both_configs_load_and_validate():
    workload = load_workload("finetune_lora")
    cpu = workload.load_config(CPU_CONFIG)
    assert cpu.model.source == "smollm2-135m-instruct" and not cpu.scaling.use_gpu
    gpu = workload.load_config(GPU_CONFIG)
    assert gpu.scaling.num_workers == 8 and gpu.scaling.use_gpu and gpu.model.quantization == "auto"
    with pytest.raises(ConfigError, match="needs scaling.use_gpu=true"):
        workload.load_config(CPU_CONFIG, ["model.quantization=4bit"])
    with pytest.raises(ConfigError, match="data.uri"):
        workload.load_config(CPU_CONFIG, ["data.uri=s3://bucket/chat"])


@pytest.mark.slow
def test_finetune_lowers_heldout_loss_and_registers_the_adapter(ray_session, smollm2_folder):
    import mlflow
    import pandas as pd

    workload = load_workload("finetune_lora")
    result = workload.run(workload.load_config(CPU_CONFIG, TINY))

    assert result["eval_loss"] < result["before_eval_loss"]
    assert result["perplexity"] < result["before_perplexity"]
    commit = result["data_commit"]
    assert result["data_uri"] == f"lakefs://ci-chat/{commit}/arithmetic"

    client = mlflow.MlflowClient()
    version = client.get_model_version("ci-lora", result["version"])
    assert version.tags["fabric.base_model"] == "smollm2-135m-instruct"
    assert version.tags["fabric.data.commit"] == commit
    assert float(version.tags["fabric.metric.eval_loss"]) == pytest.approx(result["eval_loss"])
    aliases = client.get_registered_model("ci-lora").aliases
    assert {k: str(v) for k, v in aliases.items()} == {"challenger": result["version"]}  # no gate ran

    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.tags["fabric.data.commit"] == commit
    assert run.data.tags["fabric.data.uri"] == result["data_uri"]
    assert run.data.metrics["before_eval_loss"] > run.data.metrics["eval_loss"]
    curve = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in curve) == [1, 2, 3]  # one point per logging step, logged live by rank 0

    model = mlflow.pyfunc.load_model(f"models:/ci-lora/{result['version']}")
    answer = model.predict(pd.DataFrame({"prompt": ["What is 12 plus 30?"]}), params={"max_new_tokens": 8})
    assert isinstance(answer["response"][0], str) and answer["response"][0]


TUNE_CPU_CONFIG = ROOT / "configs" / "llm" / "smollm2_lora_tune_cpu.yaml"
TUNE_GPU_CONFIG = ROOT / "configs" / "llm" / "llama3_8b_lora_tune_gpu.yaml"


def test_tune_configs_load_and_refuse_bad_searches():
    workload = load_workload("tune_lora")
    cpu = workload.load_config(TUNE_CPU_CONFIG)
    assert cpu.tune.metric == "eval_loss" and cpu.train.max_steps % cpu.train.eval_steps == 0
    assert set(cpu.tune.space) == {"lora.r", "lora.alpha", "train.lr", "lora.target_modules"}
    gpu = workload.load_config(TUNE_GPU_CONFIG)
    assert gpu.scaling.use_gpu and gpu.tune.num_samples >= 8
    with pytest.raises(ConfigError, match="eval_steps=5 must divide train.max_steps=16"):
        workload.load_config(TUNE_CPU_CONFIG, ["train.eval_steps=5"])
    with pytest.raises(ConfigError, match="tune.space.lora.rank"):
        workload.load_config(TUNE_CPU_CONFIG, ['tune.space={"lora.rank": {"choice": [4]}}'])


@pytest.mark.slow
def test_tune_runs_each_trial_as_a_child_run_and_registers_the_best_adapter(ray_session, smollm2_folder):
    import mlflow

    workload = load_workload("tune_lora")
    cfg = workload.load_config(TUNE_CPU_CONFIG, [
        *TINY, "data.uri=lakefs://ci-chat-tune/main/arithmetic", "registry.model_name=ci-lora-tuned",
        "train.max_steps=4", "train.eval_steps=2", "train.logging_steps=2", "scaling.cpus_per_worker=0.9",
        "tune.num_samples=2", 'tune.space={"lora.r": {"choice": [2, 4]}, "train.lr": {"loguniform": [0.002, 0.01]}, '
        '"lora.target_modules": {"choice": [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]]}}',
    ])
    result = workload.run(cfg)

    assert result["trials"] == 2 and result["trials_failed"] == 0
    assert set(result["best_params"]) == {"lora.r", "train.lr", "lora.target_modules"}
    assert isinstance(result["best_params"]["lora.target_modules"], list)  # JSON-encoded choice decoded back
    assert result["eval_loss"] < result["before_eval_loss"]
    assert result["best_eval_loss"] == pytest.approx(result["eval_loss"], abs=1e-6)

    client = mlflow.MlflowClient()
    children = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'",
                                  output_format="list")
    assert len(children) == 2
    for child in children:
        assert child.data.params["lora.r"] in ("2", "4")
        evals = client.get_metric_history(child.info.run_id, "eval_loss")
        assert [m.step for m in evals][:1] == [2]  # the held-out loss at each evaluation, live, for ASHA
    version = client.get_model_version("ci-lora-tuned", result["version"])
    assert version.run_id == result["mlflow_run_id"]
    assert version.tags["fabric.data.commit"] == result["data_commit"]
    assert version.tags["fabric.base_model"] == "smollm2-135m-instruct"
    adapter = mlflow.artifacts.download_artifacts(f"models:/ci-lora-tuned/{result['version']}")
    import json

    saved = json.loads(next(Path(adapter).rglob("adapter_config.json")).read_text())
    assert saved["r"] == result["best_params"]["lora.r"]  # the registered adapter is the best trial's
