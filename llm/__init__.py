"""LLM model sources, LoRA fine-tuning and chat data.

Importing this package is cheap; torch, transformers and peft load inside the functions that use them::

    from llm import resolve_model
    folder = resolve_model()   # SmolLM2-135M-Instruct, converted once into $FABRIC_HOME/models (fabric llm pull)
"""

from llm.models import DEFAULT_MODEL, ModelSourceError, convert_gguf, model_cache, resolve_model

__all__ = ["DEFAULT_MODEL", "ModelSourceError", "convert_gguf", "model_cache", "resolve_model"]
