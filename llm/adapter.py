"""A trained LoRA adapter as an MLflow model: a pyfunc over the adapter folder that names its base model source.

Logged with the run and registered (no promotion gate) with the tags that make it reproducible:
``fabric.base_model`` (the base model source), ``fabric.data.commit`` / ``fabric.data.uri`` (the exact chat data)
and ``fabric.metric.*`` (held-out loss before and after). Loading the pyfunc resolves the base model offline
(:func:`llm.models.resolve_model`) and puts the adapter on it; ``predict`` answers a ``messages`` or ``prompt``
column with a ``response`` column.

Example:
    >>> model = mlflow.pyfunc.load_model("models:/smollm2-arithmetic-lora/1")
    >>> model.predict(pd.DataFrame({"prompt": ["What is 12 plus 30?"]}), params={"max_new_tokens": 16})
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

__all__ = ["LoraAdapterPyfunc", "log_adapter"]


class LoraAdapterPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: base model (``model_config["base_model"]``) plus the adapter in artifact ``adapter``."""

    def load_context(self, context: Any) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llm.models import resolve_model

        base = resolve_model(context.model_config["base_model"])
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base)
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd
        import torch

        max_new_tokens = int((params or {}).get("max_new_tokens", 64))
        if "messages" in model_input.columns:
            chats = [_turns(raw) for raw in model_input["messages"]]
        else:
            chats = [[{"role": "user", "content": str(p)}] for p in model_input["prompt"]]
        responses = []
        for chat in chats:
            inputs = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                                        return_dict=True)
            with torch.no_grad():
                out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            responses.append(self.tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))
        return pd.DataFrame({"response": responses})


def _turns(raw: Any) -> list[dict[str, str]]:
    """A request's conversation: turns as given (no assistant turn needed), as plain dicts."""
    import json

    if isinstance(raw, str):
        raw = json.loads(raw)
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in list(raw)]


def log_adapter(cfg: Any, adapter: Path, prepared: Any, metrics: dict[str, float]) -> dict[str, Any]:
    """Logs the adapter (and the base tokenizer) as a pyfunc in the active run, registers it when configured."""
    from fabric import registry
    from fabric.tracking import package_versions
    from llm.finetune import copy_adapter

    with tempfile.TemporaryDirectory() as tmp:
        folder = copy_adapter(adapter, Path(tmp) / "adapter")
        versions = package_versions(["torch", "transformers", "peft", "mlflow", "pandas"])
        info = mlflow.pyfunc.log_model(
            name="adapter", python_model=LoraAdapterPyfunc(), artifacts={"adapter": str(folder)},
            model_config={"base_model": cfg.model.source},
            pip_requirements=["llmops-fabric"] + [f"{n}=={v}" for n, v in versions.items() if v],
        )
    summary: dict[str, Any] = {"model_uri": info.model_uri}
    if cfg.registry.model_name:
        tags = {
            "fabric.model_type": "lora_adapter",
            "fabric.base_model": cfg.model.source,
            "fabric.data.uri": prepared.pinned,
            "fabric.data.commit": prepared.commit,
            **{f"fabric.metric.{k}": repr(v) for k, v in metrics.items()},
        }
        version = registry.register(info.model_uri, cfg.registry.model_name, tags=tags,
                                    description=f"LoRA adapter on {cfg.model.source}",
                                    reason=f"fine-tuned on {prepared.pinned}")
        summary.update(registered_model=cfg.registry.model_name, version=version)
        print(f"[registry] registered {cfg.registry.model_name} version {version} (LoRA adapter on "
              f"{cfg.model.source}; no promotion gate)", flush=True)
    return summary
