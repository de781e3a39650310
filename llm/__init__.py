"""LLM model sources, PEFT/LoRA fine-tuning helpers and OpenAI-compatible serving engines (vLLM, transformers)."""

__all__: list[str] = []
