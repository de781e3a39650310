"""LoRA supervised fine-tuning end to end: pin the chat data, train with transformers' Trainer on Ray Train,
measure the held-out loss before and after, log the adapter to MLflow and register it.

Each Ray Train worker resolves the base model itself (cached per node), renders the conversations with the
tokenizer's chat template (loss on assistant tokens only), evaluates the held-out split, trains, and evaluates
again. :class:`RayTrainReportCallback` hands the final adapter checkpoint and metrics back to the driver; rank 0
prints and logs every logging step to the MLflow run live.

Example:
    >>> cfg = FinetuneConfig.from_yaml("configs/llm/smollm2_lora_cpu.yaml", ["train.max_steps=5"])
    >>> finetune(cfg)   # fabric run finetune_lora --config configs/llm/smollm2_lora_cpu.yaml train.max_steps=5
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from llm.finetune_config import FinetuneConfig

__all__ = ["Lineage", "build_trainer", "final_metrics", "finetune", "load_chats", "log_checkpoint", "loop_config",
           "lora_loop", "pin_chats", "prepare_base"]


class Lineage:
    """The data lineage of a run, shaped like the tabular pipeline's ``Prepared`` for :func:`data_tags`."""

    def __init__(self, uri: str, pinned: str, commit: str):
        self.uri, self.pinned, self.commit = uri, pinned, commit


QUIET_KEYS = ("epoch", "_runtime", "_per_second", "_preparation_time", "total_flos")  # timings: not a curve
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def finetune(cfg: FinetuneConfig, run_name: str = "finetune_lora") -> dict[str, Any]:
    """Fine-tunes a LoRA adapter in a new MLflow run and returns a summary (losses, run id, registered version)."""
    import mlflow

    from fabric.tracking import start_run

    store = prepare_base(cfg)
    with start_run(cfg, run_name=run_name, tags={"fabric.base_model": cfg.model.source}) as run:
        pinned, train_rows, holdout_rows = pin_chats(cfg, store)
        started = time.perf_counter()
        trainer = build_trainer(cfg, loop_config(cfg, train_rows, holdout_rows, run.info.run_id),
                                name=f"{run_name}-{run.info.run_id[:12]}")
        result = trainer.fit()
        elapsed = time.perf_counter() - started
        metrics = final_metrics(result.metrics or {})
        mlflow.log_metrics({**metrics, "train_seconds": elapsed})
        summary = log_checkpoint(cfg, result.checkpoint, pinned, metrics)
    summary.update(mlflow_run_id=run.info.run_id, train_seconds=round(elapsed, 2))
    print(f"[finetune_lora] done in {elapsed:.1f} s: held-out loss {metrics['before_eval_loss']:.4f} -> "
          f"{metrics['eval_loss']:.4f} (perplexity {metrics['before_perplexity']:.2f} -> {metrics['perplexity']:.2f})"
          f"; MLflow run {run.info.run_id}", flush=True)
    return summary


def prepare_base(cfg: FinetuneConfig) -> Any:
    """Before any run starts: the data store, the embedded demo data when configured and missing, and the base
    model resolved (fails before Ray Train starts, and fills this node's cache once)."""
    from fabric import data
    from llm.models import resolve_model

    store = data.open_store(cfg.runtime)
    _bootstrap_if_missing(cfg, store)
    resolve_model(cfg.model.source)
    return store


def pin_chats(cfg: FinetuneConfig, store: Any) -> tuple[Lineage, list, list]:
    """Pins ``data.uri`` to its commit, tags the active run with it, and splits the conversations."""
    import mlflow

    from fabric import data
    from fabric.tabular.pipeline import data_tags

    pinned = data.pin(cfg.data.uri, store=store)
    chats = load_chats(pinned, cfg.data.messages_column, store)
    train_rows, holdout_rows = _split(chats, cfg)
    lineage = Lineage(uri=cfg.data.uri, pinned=pinned, commit=data.DataURI.parse(pinned).ref)
    mlflow.set_tags(data_tags(lineage))
    mlflow.log_params({"data.train_rows": len(train_rows), "data.holdout_rows": len(holdout_rows)})
    print(f"[data] {pinned}: {len(train_rows)} training and {len(holdout_rows)} held-out conversations", flush=True)
    return lineage, train_rows, holdout_rows


def log_checkpoint(cfg: FinetuneConfig, checkpoint: Any, pinned: Lineage,
                   metrics: dict[str, float]) -> dict[str, Any]:
    """Logs the adapter of a Ray Train checkpoint to the active run, registers it, and returns the summary."""
    from llm.adapter import log_adapter

    with checkpoint.as_directory() as folder:
        summary = log_adapter(cfg, _adapter_folder(Path(folder)), pinned, metrics)
    summary.update(data_uri=pinned.pinned, data_commit=pinned.commit, base_model=cfg.model.source, **metrics)
    return summary


def _bootstrap_if_missing(cfg: FinetuneConfig, store: Any) -> str | None:
    """Embedded demos: writes ``data.create_from``'s chat task to the URI when its ref or path is missing."""
    from fabric import data
    from llm.tasks import chat_frame

    d = cfg.data
    if not d.create_from:
        return None
    return data.create_if_missing(
        d.uri, lambda: chat_frame(d.create_from, d.create_rows, d.seed), f"Create {data.DataURI.parse(d.uri).path} "
        f"from the offline chat task {d.create_from} ({d.create_rows} conversations)",
        {"source": f"llm.tasks.{d.create_from}"}, store)


def load_chats(uri: str, column: str = "messages", store: Any = None) -> list[list[dict[str, str]]]:
    """Every conversation of a versioned chat table, as plain lists of {role, content}."""
    from fabric import data
    from llm.chat import normalize_messages

    frame = data.read(uri, store=store).to_pandas()
    if column not in frame.columns:
        raise data.DataError(f"chat column {column!r} is not in {uri}; columns: {', '.join(frame.columns)}")
    return [normalize_messages(raw) for raw in frame[column]]


def _split(chats: list, cfg: FinetuneConfig) -> tuple[list, list]:
    order = list(range(len(chats)))
    random.Random(cfg.data.seed).shuffle(order)
    n_holdout = max(1, round(len(chats) * cfg.data.holdout_fraction))
    holdout = [chats[i] for i in order[:n_holdout]][: cfg.data.max_holdout_rows or None]
    train = [chats[i] for i in order[n_holdout:]]
    if not train:
        raise ValueError(f"{cfg.data.uri} has {len(chats)} conversations: none left to train on after the holdout")
    return train, holdout


def loop_config(cfg: FinetuneConfig, train_rows: list, holdout_rows: list, run_id: str) -> dict[str, Any]:
    """Everything a worker needs, as plain data; the conversations travel once, through the object store."""
    import mlflow
    import ray

    return {
        "model": cfg.model.model_dump(), "lora": cfg.lora.model_dump(), "train": cfg.train.model_dump(),
        "max_length": cfg.data.max_length, "seed": cfg.data.seed, "use_gpu": cfg.scaling.use_gpu,
        "train_rows": ray.put(train_rows), "holdout_rows": ray.put(holdout_rows),
        "mlflow_tracking_uri": mlflow.get_tracking_uri(), "mlflow_run_id": run_id,
    }


def build_trainer(cfg: FinetuneConfig, config: dict[str, Any], name: str,
                  callbacks: list[Any] | None = None) -> Any:
    """An unstarted ``TorchTrainer`` running :func:`lora_loop` on ``cfg.scaling``'s workers; each evaluation
    reports the held-out loss with the adapter as a checkpoint."""
    from ray.train.torch import TorchTrainer

    from fabric.training import ray_scaling, run_config

    return TorchTrainer(lora_loop, train_loop_config=config, scaling_config=ray_scaling(cfg.scaling),
                        run_config=run_config(cfg.scaling, name, num_to_keep=1, callbacks=callbacks))


def lora_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: load base + LoRA, evaluate the holdout, train, evaluate again, report the adapter."""
    import mlflow
    import ray
    import torch
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from llm.chat import collate, render_chat
    from llm.lora import load_lora_model
    from llm.models import resolve_model

    mlflow.set_tracking_uri(config["mlflow_tracking_uri"])  # an MLflow model source resolves on this node too
    path = resolve_model(config["model"]["source"])
    model, tokenizer = load_lora_model(path, config)
    rendered = {split: [render_chat(tokenizer, chat, config["max_length"]) for chat in ray.get(config[split])]
                for split in ("train_rows", "holdout_rows")}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    hp = config["train"]
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir, max_steps=hp["max_steps"], per_device_train_batch_size=hp["batch_size"],
            per_device_eval_batch_size=hp["eval_batch_size"], gradient_accumulation_steps=hp["grad_accum"],
            learning_rate=hp["lr"], warmup_steps=hp["warmup_steps"], weight_decay=hp["weight_decay"],
            lr_scheduler_type="linear", logging_steps=hp["logging_steps"], eval_strategy="steps",
            eval_steps=hp["eval_steps"] or hp["max_steps"], save_strategy="steps",
            save_steps=hp["eval_steps"] or hp["max_steps"], save_only_model=True,
            report_to=[], disable_tqdm=True, seed=config["seed"], data_seed=config["seed"],
            use_cpu=not config["use_gpu"], bf16=model.dtype == torch.bfloat16, remove_unused_columns=False,
            activation_checkpointing=config["model"]["gradient_checkpointing"], ddp_find_unused_parameters=False,
            dataloader_num_workers=0,
        )
        progress = _progress_callback(config)
        trainer = Trainer(model=model, args=args, train_dataset=rendered["train_rows"],
                          eval_dataset=rendered["holdout_rows"], data_collator=lambda batch: collate(batch, pad_id),
                          callbacks=[progress, RayTrainReportCallback()])
        trainer.remove_callback(PrinterCallback)  # _progress_callback prints each step, once
        trainer = prepare_trainer(trainer)
        before = trainer.evaluate(metric_key_prefix="before_eval")
        progress.before = {"before_eval_loss": before["before_eval_loss"]}
        trainer.train()


def _rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


def _progress_callback(config: dict[str, Any]) -> Any:
    """A TrainerCallback that prints each logging step and logs it to the MLflow run (rank 0), and hands the
    before-training held-out loss to :class:`RayTrainReportCallback` through the log history."""
    from transformers import TrainerCallback

    log, max_steps = _mlflow_logger(config), config["train"]["max_steps"]

    class Progress(TrainerCallback):
        before: dict[str, float] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            state.log_history.append(dict(self.before))  # the report merges the history: keep "before" in it

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            logs = dict(logs or {})
            if "train_runtime" in logs:  # the end-of-training summary: its train_loss is the mean, not a step's
                logs["train_loss_mean"] = logs.pop("train_loss", None)
            metrics = {("train_loss" if k == "loss" else k): float(v) for k, v in logs.items()
                       if isinstance(v, (int, float)) and not k.endswith(QUIET_KEYS)}
            for key in [k for k in metrics if k.endswith("eval_loss")]:
                metrics[key.replace("eval_loss", "perplexity")] = math.exp(metrics[key])
            if not metrics or not state.is_world_process_zero:
                return
            log(metrics, state.global_step)
            print(f"[finetune] step {state.global_step}/{max_steps}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)

    return Progress()


def _mlflow_logger(config: dict[str, Any]) -> Any:
    """Logs a dict of metrics at a step to the run, on rank 0 only (a no-op elsewhere)."""
    if not config["mlflow_run_id"] or _rank() != 0:
        return lambda metrics, step: None
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(config["mlflow_tracking_uri"])

    def log(metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(config["mlflow_run_id"], metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    return log


def final_metrics(reported: dict[str, Any]) -> dict[str, float]:
    """Before and after held-out loss and perplexity from the last report."""
    if "eval_loss" not in reported or "before_eval_loss" not in reported:
        raise RuntimeError(f"the training run reported no held-out losses; got {sorted(reported)}")
    after, before = float(reported["eval_loss"]), float(reported["before_eval_loss"])
    return {"before_eval_loss": before, "eval_loss": after, "before_perplexity": math.exp(before),
            "perplexity": math.exp(after), "eval_loss_delta": after - before}


def _adapter_folder(checkpoint: Path) -> Path:
    """The folder holding the adapter in a RayTrainReportCallback checkpoint (``checkpoint/``)."""
    hits = sorted(p.parent for p in checkpoint.rglob("adapter_config.json"))
    if not hits:
        raise RuntimeError(f"the final checkpoint has no LoRA adapter (adapter_config.json) under {checkpoint}")
    return hits[0]


def copy_adapter(source: Path, target: Path) -> Path:
    """Copies only the adapter's own files (not optimizer or trainer state) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
    return target
