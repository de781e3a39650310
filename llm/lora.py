"""The model a LoRA fine-tune trains: the base model (4-bit NF4 for QLoRA when configured) with a fresh peft
adapter, and its tokenizer. Only torch, transformers and peft: what each Ray Train worker runs, and what the GPU
checks run without Ray (``tests/llm/test_gpu_paths.py``).

Example:
    >>> model, tokenizer = load_lora_model(folder, {"model": {"dtype": "auto", "quantization": "none",
    ...     "gradient_checkpointing": False}, "lora": {"r": 8, "alpha": 16, "dropout": 0.05,
    ...     "target_modules": ["q_proj", "v_proj"]}, "use_gpu": False, "seed": 0})
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_lora_model", "quantize"]


def load_lora_model(path: Path, config: dict[str, Any]) -> tuple[Any, Any]:
    """The base model (quantized for QLoRA when configured) with a fresh LoRA adapter, and its tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m, use_gpu = config["model"], config["use_gpu"]
    dtype = {"auto": torch.bfloat16 if use_gpu else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[m["dtype"]]
    kwargs: dict[str, Any] = {"dtype": dtype}
    if quantize(m["quantization"], use_gpu):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
        kwargs["device_map"] = {"": _gpu_index()}
    torch.manual_seed(config["seed"])
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if "quantization_config" in kwargs:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=m["gradient_checkpointing"])
    lora = config["lora"]
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=lora["r"], lora_alpha=lora["alpha"],
                                             lora_dropout=lora["dropout"], target_modules=lora["target_modules"]))
    return model, AutoTokenizer.from_pretrained(path)


def _gpu_index() -> int:
    """This worker's GPU: Ray Train's choice inside a training run, else the current CUDA device."""
    import torch

    try:
        from ray.train.torch import get_device

        return get_device().index or 0
    except (ImportError, RuntimeError):  # no Ray, or not inside a Ray Train worker
        return torch.cuda.current_device()


def quantize(setting: str, use_gpu: bool) -> bool:
    """Whether to load the base in 4 bits: ``4bit`` (needs bitsandbytes), or ``auto`` on GPU when it is installed."""
    if setting == "none" or not use_gpu:
        return False
    import importlib.util

    available = importlib.util.find_spec("bitsandbytes") is not None
    if setting == "4bit" and not available:
        raise RuntimeError("model.quantization=4bit needs bitsandbytes on the workers: pip install bitsandbytes")
    return available
