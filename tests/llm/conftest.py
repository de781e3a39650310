"""LLM fixtures: SmolLM2-135M-Instruct converted once per test session into the throwaway model cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """The embedded default model, de-quantized from its GGUF file (about 40 s, once per session)."""
    from llm.models import resolve_model

    return resolve_model()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's tokenizer with its chat template, read straight from the GGUF file (no conversion)."""
    from transformers import AutoTokenizer

    from llm.models import smollm2_gguf

    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="session")
def tiny(smollm2_tokenizer):
    """A tiny random Llama with SmolLM2's vocabulary: decodes in milliseconds, says nothing meaningful."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(config).eval(), smollm2_tokenizer
