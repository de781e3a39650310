"""The vLLM engine's LLMConfig, checked with Ray Serve LLM's own config model (which imports without vLLM);
building the app needs vLLM and a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fabric.config import ConfigError
from llm.serving.config import LLMServeConfig
from llm.serving.vllm_engine import build_vllm_app, llm_config_dict

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIG = ROOT / "configs" / "serve" / "llm_vllm_gpu.yaml"
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_gpu_config_becomes_a_valid_ray_serve_llm_config():
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig  # importable without vLLM

    cfg = LLMServeConfig.from_yaml(GPU_CONFIG)
    data = llm_config_dict(cfg)
    assert data["model_loading_config"] == {"model_id": "llama-3.1-8b-instruct",
                                            "model_source": "meta-llama/Llama-3.1-8B-Instruct"}
    engine = data["engine_kwargs"]
    assert engine["tensor_parallel_size"] == 2 and engine["max_model_len"] == cfg.limits.max_context_tokens
    assert engine["max_num_seqs"] == cfg.limits.max_concurrent_requests
    assert engine["enable_lora"] is True and engine["enable_prefix_caching"] is True
    llm = LLMConfig(**data)
    assert llm.model_id == "llama-3.1-8b-instruct" and llm.accelerator_type == "A10G"
    assert llm.lora_config.dynamic_lora_loading_path == "s3://your-bucket/lora-adapters"
    assert llm.lora_config.max_num_adapters_per_replica == 8
    assert llm.deployment_config["autoscaling_config"]["max_replicas"] == 4


def test_engine_kwargs_from_the_yaml_win_and_no_lora_without_a_path():
    cfg = LLMServeConfig.from_yaml(GPU_CONFIG, ["vllm.lora_path=null", "vllm.engine_kwargs.max_model_len=4096"])
    data = llm_config_dict(cfg)
    assert "lora_config" not in data and "enable_lora" not in data["engine_kwargs"]
    assert data["engine_kwargs"]["max_model_len"] == 4096


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_building_without_vllm_says_what_to_install():
    with pytest.raises(ConfigError, match=r"llmops-fabric\[vllm\]"):
        build_vllm_app(LLMServeConfig.from_yaml(GPU_CONFIG))


def test_vllm_refuses_api_keys_it_cannot_check_and_listens_on_loopback_unless_asked():
    cfg = LLMServeConfig.from_yaml(GPU_CONFIG)
    assert cfg.host == "127.0.0.1" and LLMServeConfig().host == "127.0.0.1"
    assert cfg.auth.required is False  # said out loud in the YAML
    with pytest.raises(ConfigError, match=r"auth.required is true.*checks no API keys"):  # when loaded
        LLMServeConfig.from_yaml(GPU_CONFIG, ["auth.required=true"])
    with pytest.raises(ConfigError, match="auth.required"):  # the default asks for keys
        LLMServeConfig.from_dict({"engine": "vllm"})
    with pytest.raises(ConfigError, match="auth.required"):  # and a config changed after loading
        build_vllm_app(cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"required": True})}))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="needs vLLM")
def test_building_with_vllm_gives_a_serve_application():
    from ray.serve import Application

    assert isinstance(build_vllm_app(LLMServeConfig.from_yaml(GPU_CONFIG)), Application)
