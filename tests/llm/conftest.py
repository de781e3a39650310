"""LLM fixtures: SmolLM2-135M-Instruct converted once per test session into the throwaway model cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """The embedded default model, de-quantized from its GGUF file (about 40 s, once per session)."""
    from llm.models import resolve_model

    return resolve_model()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's tokenizer with its chat template, read straight from the GGUF file (no conversion)."""
    from transformers import AutoTokenizer

    from llm.models import smollm2_gguf

    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
